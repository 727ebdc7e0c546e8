"""benchmarks/gpu_decode.py on the CPU (--tiny): every row and column of issue 12's table is printed.

On a GPU the script runs once under a hard time limit, so a failing column must print FAILED and
let the rest go on, and a spent budget must skip cells rather than run over.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_benchmark

SMOKE = [
    "--device",
    "cpu",
    "--tiny",
    "--max-new-tokens",
    "4",
    "--source-length",
    "8",
    "--repeats",
    "1",
    "--warmups",
    "1",
    "--threads",
    "1",
]


@pytest.fixture
def bench(monkeypatch):
    module = load_benchmark("gpu_decode", monkeypatch)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def table_rows(out: str, dtype: str) -> list[list[str]]:
    """The cells of the Markdown table printed under ``## dtype`` (header first)."""
    block = out.split(f"## {dtype}\n", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def test_smoke_prints_every_row_and_column(bench, capsys, tmp_path):
    result = bench.main(
        [*SMOKE, "--dtypes", "bfloat16,float32", "--profile", "--json", str(tmp_path / "r.json")]
    )
    out = capsys.readouterr().out
    columns = ["hf_dynamic", "hf_static", "sw", "sw_compile"]
    for dtype in ("bfloat16", "float32"):
        rows = table_rows(out, dtype)
        assert rows[0] == bench.header(columns)
        names = [r[0] for r in rows[1:]]
        expected = [name for name, _, _ in bench.CASES]
        assert names == expected + ([bench.FIXED_COST] if dtype == "bfloat16" else []), out
        for row in rows[1:4]:
            assert len(row) == len(rows[0])
            assert all(float(row[i]) > 0 for i in (1, 2, 3)), row  # dynamic, static, seqweave: ms per step
            assert row[4] == "n/a" or float(row[4]) > 0  # compile=True: n/a until generate accepts it
            assert row[5].endswith("x")  # tf static / seqweave
            equal = dict(zip(rows[0], row))
            assert equal["equal: tf static"] == "yes" and equal["equal: seqweave"] == "yes", row
        if dtype == "bfloat16":  # the fixed cost: an intercept, a number (noise on the CPU may make it < 0)
            fixed = dict(zip(rows[0], rows[4]))
            float(fixed["seqweave ms"])
    assert "per decode step" in out and "aten::linear" in out  # the profile's top ops
    assert result["profile"]["kernels_per_step"] > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    cell = saved["tables"]["float32"]["batch 4 x beam 4"]["sw"]
    assert cell["ms_per_step"] > 0 and cell["equal"] is True and cell["steps"] == 4


def test_a_failing_column_and_a_spent_budget_do_not_end_the_run(bench, capsys, monkeypatch):
    real = bench.sw_runner

    def broken(model, ids, mask, kw, compiled):
        if compiled:

            def fail():
                raise RuntimeError("CUDA error: an illegal memory access | was encountered")

            return fail
        return real(model, ids, mask, kw, compiled)

    monkeypatch.setattr(bench, "sw_runner", broken)
    bench.main([*SMOKE, "--dtypes", "float32", "--only", "beam", "--no-fixed-cost"])
    out = capsys.readouterr().out
    rows = table_rows(out, "float32")
    assert [r[0] for r in rows[1:]] == ["batch 4 x beam 4"]
    row = dict(zip(rows[0], rows[1]))
    assert (
        row["seqweave compile=True ms"]
        == "FAILED: RuntimeError: CUDA error: an illegal memory access / was encountered"
    )
    assert float(row["seqweave ms"]) > 0 and row["equal: seqweave"] == "yes"

    bench.main([*SMOKE, "--dtypes", "float32", "--budget-s", "0"])
    assert "skipped: over the 0 s budget" in capsys.readouterr().out


def test_measure_row_steps_equality_and_budget(bench):
    """Times divide by the steps generated; tokens compare with tf dynamic; a column whose warm-up
    cannot fit in the time left is skipped, not started."""
    args = bench.parse(["--device", "cpu", "--repeats", "3", "--warmups", "1"])
    tokens = torch.tensor([[0, 5, 6, 7]])
    runners = {
        "hf_dynamic": lambda: tokens,
        "sw": lambda: tokens.clone(),
        "hf_static": lambda: tokens + 1,
        "sw_compile": lambda: tokens,
    }
    cells = {c: bench.Cell() for c in runners}
    budget = bench.Budget(60.0, warmup_s={"sw_compile": 3600.0})
    bench.measure_row(runners, cells, args, budget)
    assert cells["sw"].steps == 3 and len(cells["sw"].times) == 3 and cells["sw"].equal is True
    assert cells["sw"].ms == pytest.approx(1000 * sorted(cells["sw"].times)[1] / 3)
    assert cells["hf_static"].equal is False
    assert cells["sw_compile"].note == "skipped (budget)" and cells["sw_compile"].ms is None


def test_profile_cases_profile_the_batched_and_beam_steps_too(bench, capsys):
    """--profile-cases: the batch-64 and beam steps get a profile of their own (the first keeps "profile")."""
    result = bench.main(
        [*SMOKE, "--dtypes", "float32", "--only", "batch 1", "--no-fixed-cost", "--columns", "hf_dynamic,sw",
         "--profile", "--profile-cases", "batch 1,beam"]
    )
    out = capsys.readouterr().out
    assert "# profile: seqweave default, batch 1 greedy, float32" in out
    assert "# profile: seqweave default, batch 4 x beam 4, float32" in out
    assert result["profile"]["case"] == "batch 1 greedy"
    beam = result["profile batch 4 x beam 4"]
    assert beam["case"] == "batch 4 x beam 4" and beam["kernels_per_step"] > result["profile"]["kernels_per_step"]
