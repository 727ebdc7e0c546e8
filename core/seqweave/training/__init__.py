"""Fine-tuning: ``seqweave train`` and :func:`seqweave.train` (docs/training.md).

This package's ``__init__`` stays light and low in the layering (tests/test_layering.py):
:mod:`seqweave.config` imports :mod:`seqweave.training.config` through it, so it holds only
the ``train:`` block's models. The trainer itself is :func:`seqweave.training.loop.train`,
exported as :func:`seqweave.train`; :mod:`seqweave.training.data` reads and batches the pairs
and :mod:`seqweave.training.distributed` runs across processes.
"""

from __future__ import annotations

from .config import TrainData, TrainSettings

__all__ = ["TrainData", "TrainSettings"]
