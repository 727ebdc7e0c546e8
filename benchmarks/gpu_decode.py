"""Decode speed on a GPU: transformers' dynamic and static caches against seqweave (issue 12's table).

One process builds a BERT-base-sized encoder (``transformers.BertConfig()``) and a GPT-2-small
decoder with cross-attention (``GPT2Config()``), random weights, saves them once as a transformers
``EncoderDecoderModel`` folder, and loads that folder in both libraries, in each dtype asked for.
Sources are random token ids (fixed seed, no padding), ``--source-length`` long (128); every call
generates up to ``--max-new-tokens`` (128). The decoder's eos / pad id is GPT-2's 50256, so a row
may stop early: times are divided by the steps actually generated (output length - 1).

Rows (cases): batch 1 greedy; batch 64 greedy; batch 4 x beam 4; batch 1 sampling (no top-k, the
global generator seeded with 0 before every call of every column, so the draws, hence the tokens,
can be compared).

Columns, per dtype (bf16, then fp32 with TF32 matmuls off):

* ``tf dynamic``: ``EncoderDecoderModel.generate`` with its default dynamic cache; the reference
  tokens every other column is compared with;
* ``tf static``: the same with ``cache_implementation="static"`` and ``disable_compile=True``
  (transformers would otherwise compile the forward by itself on CUDA; with ``--hf-compile`` a
  ``tf static+compile`` column tries ``torch.compile(forward, mode="reduce-overhead")`` in a
  subprocess, so that a crash there cannot end this run; that column is not alternated);
* ``seqweave``: ``model.generate(ids, mask, ...)`` as a user calls it (a CUDA graph on CUDA);
* ``seqweave compile=True``: the decode step compiled with inductor before it is captured.
  ``n/a`` when this seqweave has no ``compile`` argument yet. It uses its own model instance.

Figures per cell:

* ms per step: the median of ``--repeats`` timed calls (after ``--warmups`` untimed ones; CUDA
  synchronised around each), divided by the steps generated. The timed calls of one row alternate
  the columns (dynamic, static, seqweave, compile, dynamic, ...) so machine drift hits all alike;
* ``tf static / seqweave``: the ratio of those figures (above 1: seqweave is faster);
* ``equal``: ``yes`` when the column's tokens are exactly transformers-dynamic's (torch.equal);
* ``MiB``: peak memory above what was allocated before the column's FIRST call (so it includes the
  caches and CUDA-graph pools a column keeps for later calls, and excludes the loaded weights);
  CUDA only;
* the last row, ``fixed cost per generate call``: for seqweave (default and compile=True), batch 1
  greedy, ``t_s - s * (t_n - t_s) / (n - s)`` from warm timed calls of s = 8 and n = 128 new
  tokens: the time of a call that generates nothing.

A cell that fails prints ``FAILED: <reason>`` and the run goes on; past ``--budget-s`` seconds the
remaining cells print ``skipped (budget)`` (a cell already started finishes; a column whose last
warm-up took longer than the time left is skipped too). Rows print, and ``--json`` is rewritten, as
they finish.

``--profile`` runs the PyTorch profiler over seqweave's decode (default and ``compile=True``), batch 1
greedy (``--profile-cases`` picks others), in the first dtype: the kernels of a 2-token call
subtracted from those of a 12-token call (both warm) give the kernels per decode step and the top 10
kernels by total GPU time (on the CPU: top-level aten ops).

    python benchmarks/gpu_decode.py                          # CUDA, bf16 and fp32, ~3-4 minutes
    python benchmarks/gpu_decode.py --dtypes bfloat16 --only "batch 1" --profile
    python benchmarks/gpu_decode.py --device cpu --tiny --max-new-tokens 8 --source-length 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generate import build_composite, load_pair, timed

CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("batch 1 greedy", 1, {}),
    ("batch 64 greedy", 64, {}),
    ("batch 4 x beam 4", 4, {"num_beams": 4}),
    ("batch 1 sampling", 1, {"do_sample": True, "top_k": 0}),
]
COLUMNS = {  # key: header; "hf_compile" only with --hf-compile
    "hf_dynamic": "tf dynamic",
    "hf_static": "tf static",
    "sw": "seqweave",
    "sw_compile": "seqweave compile=True",
    "hf_compile": "tf static+compile",
}
REFERENCE = "hf_dynamic"
SEQWEAVE = ("sw", "sw_compile")
MEMORY = ("hf_static", "sw", "sw_compile")  # the columns whose memory the table shows
FIXED_COST = "fixed cost per generate call (ms)"


class NotAvailable(Exception):
    """This seqweave does not accept the argument a column needs (printed as ``n/a``)."""


@dataclass
class Cell:
    """One (dtype, case, column) measurement; ``note`` replaces the figures when set."""

    times: list[float] = field(default_factory=list)
    steps: int | None = None
    equal: bool | None = None
    mib_first: float | None = None  # peak above allocated, first call (the table's figure)
    mib_warm: float | None = None  # the same for the last warm-up call
    note: str | None = None

    @property
    def ms(self) -> float | None:
        if self.note is not None or not self.times or not self.steps:
            return None
        return 1000 * statistics.median(self.times) / self.steps


@dataclass
class Budget:
    """The run's time limit, and what each column's warm-up cost last time (to skip one that cannot fit)."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    warmup_s: dict[str, float] = field(default_factory=dict)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, column: str) -> bool:
        """Time is left for this column's warm-up (compiling, capturing), as long as its last one took."""
        return self.left() > self.warmup_s.get(column, 0.0)


def failure(exc: BaseException) -> str:
    """``FAILED: <reason>``, short and safe inside a Markdown cell."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
    return "FAILED: " + text.replace("|", "/")[:100]


def unknown_argument(exc: BaseException) -> bool:
    text = str(exc)
    return "unknown argument" in text or "unexpected keyword" in text


# ------------------------------------------------------------------------------------------
# Model, inputs, the callables each column times


def encoder_config(tiny: bool) -> Any:
    """BERT-base (random weights) or 2 layers 64 wide; the decoder is generate.py's GPT-2 of that kind."""
    import transformers

    if tiny:
        return transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
        )
    return transformers.BertConfig()


def save_model(folder: Path, tiny: bool) -> None:
    """The transformers EncoderDecoderModel folder both libraries load (GPT-2's token ids as specials)."""
    build_composite(folder, "gpt2", tiny, encoder_config=encoder_config(tiny))


def source(batch: int, length: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, length] random source ids (a fixed seed per batch size) and an all-ones mask."""
    gen = torch.Generator().manual_seed(1000 + batch)
    ids = torch.randint(1000, 20000, (batch, length), generator=gen)  # clear of BERT's special ids
    return ids.to(device), torch.ones_like(ids, device=device)


def hf_runner(hf: Any, ids: torch.Tensor, mask: torch.Tensor, kw: dict[str, Any], static: bool) -> Callable:
    extra = {"cache_implementation": "static", "disable_compile": True} if static else {}
    return lambda: hf.generate(input_ids=ids, attention_mask=mask, **kw, **extra)


def sw_runner(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, kw: dict[str, Any], compiled: bool | str
) -> Callable:
    from seqweave import ConfigError

    extra = {"compile": compiled} if compiled else {}

    def run() -> torch.Tensor:
        try:
            return model.generate(ids, mask, **kw, **extra)
        except (TypeError, ConfigError) as exc:
            if compiled and unknown_argument(exc):
                raise NotAvailable("n/a") from exc
            raise

    return run


def load_models(folder: Path, dtype: torch.dtype, device: str, columns: list[str]) -> dict[str, Any]:
    import seqweave as sw

    hf, ours = load_pair(folder, dtype, device)
    models = {"hf": hf, "sw": ours}
    if "sw_compile" in columns:  # its own instance: no graph or cache shared with the default column
        models["sw_compile"] = sw.EncoderDecoder.from_pretrained(folder, dtype=dtype, device=device)
    return models


def runners_for(models: dict[str, Any], columns: list[str], batch: int, kw: dict[str, Any], args) -> dict:
    ids, mask = source(batch, args.source_length, args.device)
    kw = {"max_new_tokens": args.max_new_tokens, **kw}
    make = {
        "hf_dynamic": lambda: hf_runner(models["hf"], ids, mask, kw, static=False),
        "hf_static": lambda: hf_runner(models["hf"], ids, mask, kw, static=True),
        "sw": lambda: sw_runner(models["sw"], ids, mask, kw, compiled=False),
        "sw_compile": lambda: sw_runner(models.get("sw_compile"), ids, mask, kw, compiled=args.compile_mode or True),
    }
    runners = {c: make[c]() for c in columns if c in make}
    if kw.get("do_sample"):  # every column draws from the global generator, seeded alike before each call
        runners = {c: seeded(fn) for c, fn in runners.items()}
    return runners


def seeded(fn: Callable) -> Callable:
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        return fn()

    return run


# ------------------------------------------------------------------------------------------
# Measuring


def first_calls(fn: Callable, cell: Cell, warmups: int, device: str) -> torch.Tensor:
    """The warm-up calls; the first and last one's peak memory above what was allocated before."""
    out = None
    for i in range(max(1, warmups)):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            mib = (torch.cuda.max_memory_allocated() - before) / 2**20
            if i == 0:
                cell.mib_first = mib
            cell.mib_warm = mib
    return out


def measure_row(runners: dict[str, Callable], cells: dict[str, Cell], args, budget: Budget) -> dict:
    """Warm every column up, then time them alternately; returns each column's tokens."""
    outs: dict[str, torch.Tensor] = {}
    live: dict[str, Callable] = {}
    for key, fn in runners.items():
        cell, column = cells[key], key.split("/")[0]
        if not budget.fits(column):
            cell.note = "skipped (budget)"
            continue
        start = time.perf_counter()
        try:
            outs[key] = first_calls(fn, cell, args.warmups, args.device)
            budget.warmup_s[column] = time.perf_counter() - start
            cell.steps = outs[key].shape[1] - 1  # the decoder's start token is not a step
            live[key] = fn
        except NotAvailable:
            cell.note = "n/a"
        except Exception as exc:  # noqa: BLE001 (one failing column must not end the run)
            cell.note = failure(exc)
    for _ in range(args.repeats):
        if not live:
            break
        round_start = time.perf_counter()
        for key, fn in list(live.items()):
            try:
                t, out = timed(fn, args.device)
            except Exception as exc:  # noqa: BLE001 (a FAILED cell, and the run goes on)
                cells[key].note = failure(exc)
                del live[key]
                continue
            cells[key].times.append(t)
            if not torch.equal(out, outs[key]):  # a column must repeat its own tokens
                cells[key].equal = False
        if budget.left() < time.perf_counter() - round_start:  # no time for another round
            break
    ref = outs.get(REFERENCE)
    for key, out in outs.items():
        if key != REFERENCE and cells[key].equal is None:
            cells[key].equal = ref is not None and torch.equal(out, ref)
    return outs


def fixed_cost(models: dict[str, Any], columns: list[str], args, budget: Budget) -> dict[str, Cell]:
    """seqweave's time per call beyond its steps: batch 1 greedy, s = 8 and n new tokens, taken to 0."""
    n = args.max_new_tokens
    s = 8 if n > 8 else max(1, n // 2)
    result: dict[str, Cell] = {}
    runners: dict[str, Callable] = {}
    for key in (c for c in SEQWEAVE if c in columns):
        result[key] = Cell()
        for length in (s, n):
            args_n = argparse.Namespace(**{**vars(args), "max_new_tokens": length})
            runners[f"{key}/{length}"] = runners_for(models, [key], 1, {}, args_n)[key]
    cells = {k: Cell() for k in runners}
    measure_row(runners, cells, args, budget)
    for key, cell in result.items():
        short, long = cells[f"{key}/{s}"], cells[f"{key}/{n}"]
        cell.note = short.note or long.note
        if cell.note is None and s < n:
            t_s, t_n = statistics.median(short.times), statistics.median(long.times)
            if long.steps == short.steps:
                cell.note = "FAILED: both calls stopped after the same step"
            else:
                cell.times = [t_s - short.steps * (t_n - t_s) / (long.steps - short.steps)]
                cell.steps = 1
    return result


def hf_compile_column(
    folder: Path, dtype: str, cases: list, refs: dict, args, budget: Budget
) -> dict[str, Cell]:
    """transformers static cache + torch.compile(reduce-overhead), in a subprocess (it may segfault)."""
    cells = {name: Cell() for name, _, _ in cases}
    timeout = budget.left()
    if timeout <= 5:
        for c in cells.values():
            c.note = "skipped (budget)"
        return cells
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--hf-compile-worker",
            str(folder),
            "--json",
            str(out),
            "--dtypes",
            dtype,
            "--device",
            args.device,
            "--only",
            ",".join(n for n, _, _ in cases),
            "--repeats",
            str(args.repeats),
            "--warmups",
            str(args.warmups),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--source-length",
            str(args.source_length),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            reason = f"exit code {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            reason = "over the budget"
        got = json.loads(out.read_text()) if out.exists() else {}
        for name, cell in cells.items():
            if name not in got:
                cell.note = "FAILED: " + reason.replace("|", "/")[:100]
                continue
            cell.times, cell.steps, cell.note = got[name]["times"], got[name]["steps"], got[name]["note"]
            tokens = Path(tmp) / got[name]["tokens"] if got[name]["tokens"] else None
            if tokens is not None and name in refs:
                cell.equal = torch.equal(torch.load(tokens), refs[name].cpu())
    return cells


def hf_compile_worker(args) -> None:
    """The subprocess of ``hf_compile_column``: writes {case: times, steps, note, tokens file}."""
    import transformers

    dtype = getattr(torch, args.dtypes[0])
    hf = (
        transformers.EncoderDecoderModel.from_pretrained(args.hf_compile_worker, dtype=dtype)
        .to(args.device)
        .eval()
    )
    hf.forward = torch.compile(hf.forward, mode="reduce-overhead")
    result: dict[str, Any] = {}
    out_dir = Path(args.json).parent
    with torch.inference_mode():
        for i, (name, batch, kw) in enumerate(selected_cases(args.only)):
            ids, mask = source(batch, args.source_length, args.device)
            kw = {"max_new_tokens": args.max_new_tokens, **kw}
            fn = hf_runner(hf, ids, mask, kw, static=True)  # static cache; the explicit compile above
            cell = Cell()
            try:
                out = first_calls(fn, cell, args.warmups, args.device)
                cell.times = [timed(fn, args.device)[0] for _ in range(args.repeats)]
                torch.save(out.cpu(), out_dir / f"tokens{i}.pt")
                result[name] = {
                    "times": cell.times,
                    "steps": out.shape[1] - 1,
                    "note": None,
                    "tokens": f"tokens{i}.pt",
                }
            except Exception as exc:  # noqa: BLE001 (a FAILED cell, and the run goes on)
                result[name] = {"times": [], "steps": None, "note": failure(exc), "tokens": None}
            Path(args.json).write_text(json.dumps(result))  # after each case: a later crash keeps these


# ------------------------------------------------------------------------------------------
# The profile


def profile(
    models: dict[str, Any], args, column: str = "sw", case: tuple[str, int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Kernels per decode step and the top 10 by total time: a 12-token call minus a 2-token call.

    ``case``: one of :data:`CASES` (default: the first, batch 1 greedy).
    """
    case_name, batch, kw = case or CASES[0]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tables, steps = [], []
    for n in (2, 12):
        run = runners_for(models, [column], batch, kw, argparse.Namespace(**{**vars(args), "max_new_tokens": n}))[
            column
        ]
        run(), run()  # warm: graphs captured, caches allocated
        with torch_profile(activities=activities) as prof:
            out = run()
            if cuda:
                torch.cuda.synchronize()
        steps.append(out.shape[1] - 1)
        tables.append(kernel_table(prof, cuda))
    if steps[1] == steps[0]:
        raise RuntimeError("both profiled calls stopped after the same step")
    per_step = steps[1] - steps[0]
    diff = {}
    for name, (count, us) in tables[1].items():
        c0, us0 = tables[0].get(name, (0, 0.0))
        if count - c0 > 0:
            diff[name] = (count - c0, us - us0)
    total_count = sum(c for c, _ in diff.values())
    total_us = sum(us for _, us in diff.values())
    top = sorted(diff.items(), key=lambda kv: -kv[1][1])[:10]
    return {
        "case": case_name,
        "decode_steps": per_step,
        "kernels_per_step": total_count / per_step,
        "us_per_step": total_us / per_step,
        "unit": "CUDA kernels" if cuda else "top-level CPU ops",
        "top10": [{"name": n, "count": c, "total_us": us} for n, (c, us) in top],
    }


def host_profile(models: dict[str, Any], args, calls: int = 20) -> list[dict[str, Any]]:
    """Where the host time of a warm 1-token call goes (cProfile, by own time): the fixed cost's parts."""
    import cProfile
    import pstats

    run = runners_for(models, ["sw"], 1, {}, argparse.Namespace(**{**vars(args), "max_new_tokens": 1}))["sw"]
    run(), run()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        run()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    return [
        {"function": f"{Path(f).name}:{line}({name})", "calls_per_call": nc / calls, "own_us_per_call": 1e6 * tt / calls,
         "cumulative_us_per_call": 1e6 * ct / calls}
        for (f, line, name), (_, nc, tt, ct, _) in top
    ]


def kernel_table(prof: Any, cuda: bool) -> dict[str, tuple[int, float]]:
    """{name: (count, total microseconds)} of the GPU kernels (CUDA) or the top-level CPU ops."""
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    table: dict[str, tuple[int, float]] = {}
    for e in prof.events():
        if e.device_type != kind or (not cuda and e.cpu_parent is not None):
            continue
        count, us = table.get(e.name, (0, 0.0))
        table[e.name] = (count + 1, us + e.time_range.elapsed_us())
    return table


# ------------------------------------------------------------------------------------------
# Printing


def ms_text(cell: Cell) -> str:
    return cell.note if cell.note is not None else (f"{cell.ms:.3f}" if cell.ms is not None else "-")


def ratio_text(a: Cell, b: Cell) -> str:
    return f"{a.ms / b.ms:.2f}x" if a.ms is not None and b.ms is not None else "-"


def header(columns: list[str]) -> list[str]:
    cols = ["case"] + [COLUMNS[c] + " ms" for c in columns]
    cols += [f"tf static / {COLUMNS[c]}" for c in SEQWEAVE if c in columns and "hf_static" in columns]
    cols += [f"equal: {COLUMNS[c]}" for c in columns if c != REFERENCE]
    cols += [f"MiB: {COLUMNS[c]}" for c in MEMORY if c in columns]
    return cols


def row_text(name: str, cells: dict[str, Cell], columns: list[str]) -> str:
    vals = [name] + [ms_text(cells[c]) if c in cells else "" for c in columns]
    if "hf_static" in columns:
        vals += [
            ratio_text(cells["hf_static"], cells[c]) if "hf_static" in cells and c in cells else ""
            for c in SEQWEAVE
            if c in columns
        ]
    vals += [
        ("" if c not in cells or cells[c].equal is None else "yes" if cells[c].equal else "no")
        for c in columns
        if c != REFERENCE
    ]
    vals += [
        (f"{cells[c].mib_first:.1f}" if c in cells and cells[c].mib_first is not None else "-")
        for c in MEMORY
        if c in columns
    ]
    return "| " + " | ".join(vals) + " |"


def print_profile(result: dict[str, Any], what: str = "seqweave default") -> None:
    print(
        f"\n# profile: {what}, {result.get('case', CASES[0][0])}, {result['dtype']}: "
        f"{result['kernels_per_step']:.1f} {result['unit']} per decode step, "
        f"{result['us_per_step']:.1f} us of their time per step (12-token call minus 2-token call)"
    )
    if result["kernels_per_step"] < 1:  # e.g. a profiler that does not trace kernels inside graph replays
        print("# (no kernels were traced in the decode steps: the figures above do not count them)")
    print("| kernel | count | total us |\n|---|---|---|")
    for k in result["top10"]:
        print(f"| {k['name'][:120].replace('|', '/')} | {k['count']} | {k['total_us']:.1f} |")


# ------------------------------------------------------------------------------------------


def selected_cases(only: str | None) -> list[tuple[str, int, dict[str, Any]]]:
    terms = [t for t in (only or "").split(",") if t]
    return [c for c in CASES if not terms or any(t in c[0] for t in terms)]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtypes",
        default="bfloat16,float32",
        help="comma-separated; the first also gets the fixed cost and the profile",
    )
    p.add_argument("--tiny", action="store_true", help="2-layer, 64-wide encoder and decoder (a smoke run)")
    p.add_argument("--only", default=None, help="comma-separated: the cases whose name contains one of these")
    p.add_argument(
        "--columns",
        default="hf_dynamic,hf_static,sw,sw_compile",
        help=f"comma-separated, of {', '.join(COLUMNS)}",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (the median is taken)")
    p.add_argument("--warmups", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--source-length", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=220.0, help="skip the cells not started by then")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--hf-compile", action="store_true", help="add the tf static+compile column (a subprocess)"
    )
    p.add_argument("--no-fixed-cost", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--profile-cases",
        default=CASES[0][0],
        help="comma-separated: with --profile, profile the cases whose name contains one of these "
        f"(default {CASES[0][0]!r}; 'batch' gives every case)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--compile-mode", default=None,
                   help="the seqweave compile=True column passes this mode instead (max-autotune-no-cudagraphs)")
    p.add_argument("--hf-compile-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for d in args.dtypes:
        if not isinstance(getattr(torch, d, None), torch.dtype):
            p.error(f"--dtypes: {d!r} is not a torch dtype (bfloat16, float32, float16)")
    args.columns = [c for c in args.columns.split(",") if c]
    if args.hf_compile and "hf_compile" not in args.columns:
        args.columns.append("hf_compile")
    unknown = sorted(set(args.columns) - set(COLUMNS))
    if unknown or REFERENCE not in args.columns:
        p.error(
            f"--columns: unknown {unknown}; the list must include {REFERENCE}; known: {', '.join(COLUMNS)}"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.hf_compile_worker:
        hf_compile_worker(args)
        return {}
    budget = Budget(args.budget_s)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    # fp32 means fp32: no TF32 matmuls on either side (bf16 is unaffected)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import transformers

    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    model_name = "2-layer 64-wide BERT + GPT-2" if args.tiny else "BERT-base + GPT-2-small"
    print(
        f"# {name}; torch {torch.__version__}, transformers {transformers.__version__}; {model_name}, "
        f"source {args.source_length} tokens, {args.max_new_tokens} new tokens; ms per decode step, "
        f"median of {args.repeats} alternating calls; budget {args.budget_s:.0f} s"
        + (f"; the compile=True column passes compile={args.compile_mode!r}" if args.compile_mode else ""),
        flush=True,
    )
    results: dict[str, Any] = {
        "meta": {
            "device": name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model": model_name,
            **{k: v for k, v in vars(args).items() if k != "hf_compile_worker"},
        },
        "tables": {},
        "profile": None,
    }
    save = (
        (lambda: Path(args.json).write_text(json.dumps(plain(results), indent=1)))
        if args.json
        else (lambda: None)
    )
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        folder = Path(tmp) / "model"
        save_model(folder, args.tiny)
        for i, dtype_name in enumerate(args.dtypes):
            results["tables"][dtype_name] = {}
            run_dtype(folder, dtype_name, i == 0, args, budget, results, save)
            if cuda:
                torch.cuda.empty_cache()
    print(f"\n# {time.perf_counter() - budget.start:.0f} s in all", flush=True)
    save()
    return plain(results)


def run_dtype(
    folder: Path, dtype_name: str, first: bool, args, budget: Budget, results: dict, save: Callable
) -> None:
    """One dtype's table, printed row by row; the first dtype also gets the fixed cost and the profile."""
    columns, cases, table = args.columns, selected_cases(args.only), results["tables"][dtype_name]
    print(f"\n## {dtype_name}\n")
    print("| " + " | ".join(header(columns)) + " |")
    print("|" + "---|" * len(header(columns)), flush=True)
    if budget.left() <= 0:
        print(f"(skipped: over the {args.budget_s:.0f} s budget)", flush=True)
        return
    try:
        models = load_models(folder, getattr(torch, dtype_name), args.device, columns)
    except Exception as exc:  # noqa: BLE001 (the next dtype may still load)
        print(f"| all | {failure(exc)} |", flush=True)
        return
    refs: dict[str, torch.Tensor] = {}
    for case_name, batch, kw in cases:
        cells = table[case_name] = {c: Cell() for c in columns}
        try:
            runners = runners_for(models, columns, batch, kw, args)
            refs[case_name] = measure_row(runners, cells, args, budget).get(REFERENCE)
        except Exception as exc:  # noqa: BLE001 (e.g. out of memory making the inputs)
            for c in cells.values():
                c.note = c.note or failure(exc)
        if "hf_compile" not in columns:  # else printed once that column is in
            print(row_text(case_name, cells, columns), flush=True)
        save()
    if "hf_compile" in columns:
        extra = hf_compile_column(folder, dtype_name, cases, refs, args, budget)
        for case_name, cells in table.items():
            cells["hf_compile"] = extra[case_name]
            print(row_text(case_name, cells, columns), flush=True)
    if first and not args.no_fixed_cost and any(c in columns for c in SEQWEAVE):
        try:
            fixed = fixed_cost(models, columns, args, budget)
        except Exception as exc:  # noqa: BLE001 (a FAILED cell, and the run goes on)
            fixed = {c: Cell(note=failure(exc)) for c in SEQWEAVE if c in columns}
        table[FIXED_COST] = fixed
        print(row_text(FIXED_COST, fixed, columns), flush=True)
        save()
    if first and args.profile:
        for n, case in enumerate(selected_cases(args.profile_cases)):
            key = "" if n == 0 else f" {case[0]}"  # the first keeps the key "profile"
            for column, what in (("sw", "seqweave default"), ("sw_compile", "seqweave compile=True")):
                if column != "sw" and (column not in columns or models.get(column) is None):
                    continue
                name = ("profile" if column == "sw" else "profile_compile") + key
                try:
                    if budget.left() <= 0:
                        raise TimeoutError(f"skipped: over the {args.budget_s:.0f} s budget")
                    results[name] = {"dtype": dtype_name, **profile(models, args, column, case)}
                    print_profile(results[name], what)
                except Exception as exc:  # noqa: BLE001 (the profile is optional)
                    results[name] = {"dtype": dtype_name, "case": case[0], "note": failure(exc)}
                    print(f"\n# profile, {what}, {case[0]}: {failure(exc)}", flush=True)
        try:
            results["host_profile"] = host_profile(models, args)
            print("\n# host time of a warm 1-token call (seqweave default, batch 1), by own time")
            print("| function | calls | own us | cumulative us |\n|---|---|---|---|")
            for r in results["host_profile"]:
                print(f"| {r['function']} | {r['calls_per_call']:.0f} | {r['own_us_per_call']:.0f} | "
                      f"{r['cumulative_us_per_call']:.0f} |")
        except Exception as exc:  # noqa: BLE001
            print(f"\n# host profile: {failure(exc)}", flush=True)
        save()


def plain(results: dict[str, Any]) -> dict[str, Any]:
    """The results as JSON data: each cell's fields and its ms per step."""
    tables = {
        d: {
            case: {c: {**asdict(cell), "ms_per_step": cell.ms} for c, cell in row.items()}
            for case, row in t.items()
        }
        for d, t in results["tables"].items()
    }
    return {**results, "tables": tables}


if __name__ == "__main__":
    main()
