"""benchmarks/host_ops.py: what the host launches per decode step outside the recorded step.

On CUDA each such operation is a launch of its own between replays; the decode graph is meant to
leave the host the stop flag (and, for sampling, the noise) and nothing else.
"""

from __future__ import annotations

import seqweave as sw
import torch
from conftest import load_benchmark


def test_a_decode_step_leaves_the_host_only_the_stop_flag(monkeypatch, tmp_path):
    bench = load_benchmark("host_ops", monkeypatch)
    bench.build_composite(tmp_path, "gpt2", True)
    model = sw.EncoderDecoder.from_pretrained(tmp_path).eval()
    ids = torch.randint(1000, 2000, (2, 6), generator=torch.Generator().manual_seed(0))
    counts = {name: bench.per_step(model, ids, options) for name, options in bench.CASES}
    outside = {name: round(out, 1) for name, (out, _) in counts.items()}
    # greedy: the stop flag read and the view of the picked tokens; sampling: also the noise drawn
    assert outside["greedy"] <= 2 and outside["greedy, repetition_penalty + no_repeat_ngram_size"] <= 2
    assert outside["sampling, top_p"] <= 4
    assert outside["beam 4, bookkeeping in the step"] <= 1
    assert outside["beam 4, bookkeeping after each step"] > 20  # the count does see what runs outside
    assert all(inside > 50 for _, inside in counts.values())  # ... and what runs inside (the decoder)
