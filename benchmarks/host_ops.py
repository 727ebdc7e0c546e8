"""What the host launches per decode step outside the recorded step (the static path, on the CPU).

On CUDA a decode graph replays its recorded step (``DecodeGraph._step``) as one launch; every
PyTorch operation the host runs between replays is a launch of its own, and the GPU waits for
them when they are many. This counts, on the CPU's static path (``static_cache=True``, the same
objects a CUDA graph records, run eagerly), the operations dispatched per decode step outside
``_step`` and inside it, for greedy search, greedy search with logits processors, sampling and
beam search (with ``BEAMS_IN_GRAPH`` off and on). The per-step figure is the difference between a
long and a short call divided by the steps between them, so the per-call work cancels out.

The model is the 2-layer 64-wide bert2gpt2 of ``benchmarks/generate.py`` (random weights); no
row ends early (the eos id is one the model does not produce in these calls).

    python benchmarks/host_ops.py
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from generate import build_composite  # noqa: E402

import seqweave as sw  # noqa: E402
from seqweave.generation import step as step_module  # noqa: E402

CASES: list[tuple[str, dict[str, Any]]] = [
    ("greedy", {}),
    ("greedy, repetition_penalty + no_repeat_ngram_size", {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}),
    ("sampling, top_p", {"do_sample": True, "top_p": 0.9}),
    ("beam 4, bookkeeping after each step", {"num_beams": 4, "_beams_in_graph": False}),
    ("beam 4, bookkeeping in the step", {"num_beams": 4, "_beams_in_graph": True}),
]


class _Count(TorchDispatchMode):
    """Counts dispatched operations, apart for those inside ``DecodeGraph._step``."""

    inside_step = False

    def __init__(self) -> None:
        super().__init__()
        self.outside = self.inside = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if _Count.inside_step:
            self.inside += 1
        else:
            self.outside += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _marked(beams_in_graph: bool) -> Iterator[None]:
    """``DecodeGraph._step`` tells :class:`_Count` when it runs; ``BEAMS_IN_GRAPH`` set (both put back after)."""
    recorded, flag = step_module.DecodeGraph._step, step_module.BEAMS_IN_GRAPH

    def step(self: Any) -> torch.Tensor:
        _Count.inside_step = True
        try:
            return recorded(self)
        finally:
            _Count.inside_step = False

    step_module.DecodeGraph._step, step_module.BEAMS_IN_GRAPH = step, beams_in_graph
    try:
        yield
    finally:
        step_module.DecodeGraph._step, step_module.BEAMS_IN_GRAPH = recorded, flag
        step_module.clear_graphs()


def per_step(model: sw.EncoderDecoder, ids: torch.Tensor, options: dict[str, Any]) -> tuple[float, float]:
    """(outside, inside) operations per decode step."""
    options = dict(options)
    common = {"static_cache": True, "eos_token_id": model.decoder.vocab_size - 1, "min_new_tokens": 0}
    counts, lengths = [], []
    with _marked(options.pop("_beams_in_graph", True)):
        step_module.clear_graphs(model)
        model.generate(ids, max_new_tokens=24, **common, **options)  # the bucket's graph, made
        for new in (4, 24):
            with torch.no_grad(), _Count() as count:
                out = model.generate(ids, max_new_tokens=new, generator=torch.Generator().manual_seed(0),
                                     **common, **options)
            counts.append(count)
            lengths.append(out.shape[1])
    steps = lengths[1] - lengths[0]
    return (counts[1].outside - counts[0].outside) / steps, (counts[1].inside - counts[0].inside) / steps


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        build_composite(Path(folder), "gpt2", True)
        model = sw.EncoderDecoder.from_pretrained(folder).eval()
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(0))
    print(f"# operations dispatched per decode step, static path on the CPU, torch {torch.__version__}")
    print("| case | outside the recorded step | inside it |")
    print("|---|---|---|")
    for name, options in CASES:
        outside, inside = per_step(model, ids, options)
        print(f"| {name} | {outside:.1f} | {inside:.1f} |")


if __name__ == "__main__":
    main()
