"""Progress bars on a terminal, silence when piped: one switch for the whole package."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress", "show_progress"]

T = TypeVar("T")


def show_progress() -> bool:
    """True when stderr is a terminal; logs and pipes get no bars."""
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """``iterable`` with a tqdm bar on stderr when it is a terminal (or ``enabled`` says so)."""
    if not (show_progress() if enabled is None else enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm  # imported only when a bar is shown: keeps `import seqweave` light

    yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
