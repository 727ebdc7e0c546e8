"""benchmarks/train.py runs: its smallest case trains both libraries (seqweave through the trainer's step)."""

from __future__ import annotations

import re

import torch
from conftest import load_benchmark


def test_quick_benchmark_prints_a_row_with_equal_losses(capsys, monkeypatch):
    bench = load_benchmark("train", monkeypatch)
    threads = torch.get_num_threads()
    try:
        bench.main(
            ["--quick", "--device", "cpu", "--threads", "1", "--runs", "1", "--steps", "1", "--batch", "2"]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "seqweave: the trainer's step" in out  # the trainer's code, not a loop of the benchmark's own
    rows = [line for line in out.splitlines() if line.startswith("| bert2gpt2")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "2" and float(cells[3]) > 0 and float(cells[4]) > 0
    assert re.fullmatch(r"\d+\.\d\dx", cells[5])
    if bench.cpu_memory_supported():  # each side alone in a fresh process: a peak RSS rise, in MiB
        assert float(cells[6]) > 0 and float(cells[7]) > 0 and re.fullmatch(r"\d+\.\d\dx", cells[8])
    assert float(cells[-1]) <= 1e-4  # same weights and data: the first losses agree in float32
