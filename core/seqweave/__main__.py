"""``python -m seqweave``: the same command line as the ``seqweave`` script."""

from .cli import main

raise SystemExit(main())
