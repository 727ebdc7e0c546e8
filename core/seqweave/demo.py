"""``seqweave demo``: the main job on the embedded default, with no network.

It trains a tiny bert2bert through :func:`seqweave.train` (the code path of ``seqweave
train``) with the config shipped in the package (``data/demo.yaml``: a 48-token WordPiece
vocabulary and a ``train:`` block), on pairs shipped beside it (``data/demo_train.jsonl``,
``data/demo_eval.jsonl``): reverse the word order of short sentences. Then it loads the
run's ``model/`` folder back, generates, and reports exact match on the held-out pairs.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

__all__ = ["DemoReport", "demo_config_path", "demo_data", "make_pairs", "run_demo", "write_demo_data"]

N_TRAIN = 1024
N_EVAL = 64


def demo_config_path() -> Path:
    """The embedded config (a real file inside the installed package)."""
    return Path(str(resources.files("seqweave") / "data" / "demo.yaml"))


def _words() -> list[str]:
    vocab = (demo_config_path().parent / "demo_tokenizer" / "vocab.txt").read_text().split()
    return [w for w in vocab if not w.startswith("[")]


def make_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` distinct (sentence, reversed sentence) pairs of 3 to 5 distinct words."""
    words = _words()
    pairs: dict[tuple[str, str], None] = {}
    while len(pairs) < n:
        sentence = rng.sample(words, rng.randint(3, 5))
        pairs[" ".join(sentence), " ".join(reversed(sentence))] = None
    return list(pairs)


def demo_data() -> dict[str, list[tuple[str, str]]]:
    """The task's pairs, as shipped in ``data/demo_train.jsonl`` and ``data/demo_eval.jsonl``.

    Deterministic (a test checks that the files hold exactly these); the evaluation pairs are
    held out: none of their sentences is in the training set.
    """
    pairs = make_pairs(N_TRAIN + N_EVAL, random.Random(0))
    return {"train": pairs[:N_TRAIN], "eval": pairs[N_TRAIN:]}


def write_demo_data(folder: Path) -> None:
    """(Re)write the task's JSON Lines files into ``folder`` (the package's ``data/``)."""
    for split, pairs in demo_data().items():
        lines = [json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs]
        (Path(folder) / f"demo_{split}.jsonl").write_text("".join(lines), encoding="utf-8")


@dataclass
class DemoReport:
    """What the demo measured (also printed)."""

    loss_before: float = 0.0  # the training loss of the first step
    loss_after: float = 0.0  # ... and of the last
    eval_loss: float = 0.0  # on the held-out pairs, after training
    steps: int = 0
    exact_match: float = 0.0  # fraction of the held-out pairs generated exactly
    outputs: list[tuple[str, str, str]] = field(default_factory=list)  # (input, expected, generated)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    *,
    steps: int | None = None,
    seed: int = 0,
    output: Path | None = None,
    echo: Callable[[str], None] = print,
) -> DemoReport:
    """Train, reload and generate; print a short report through ``echo``.

    Args:
        steps: training steps (default: the config's ``train.max_steps``).
        seed: ``train.seed``: seeds initialisation and data order.
        output: RUN_DIR, kept (it must not hold a run); by default a temporary one is removed.
        echo: where report lines go.
    """
    # A 64-wide model is all per-op overhead: one thread is several times faster than two,
    # and it does not stall when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(steps, seed, output, echo)
    finally:
        torch.set_num_threads(threads)


def _run(steps: int | None, seed: int, output: Path | None, echo: Callable[[str], None]) -> DemoReport:
    import seqweave as sw

    t0 = time.perf_counter()
    config = demo_config_path()
    overrides = [f"train.seed={seed}", *([f"train.max_steps={steps}"] if steps is not None else [])]
    cfg = sw.load_config(config, overrides)
    torch.manual_seed(seed)
    n_params = sum(p.numel() for p in sw.EncoderDecoder.from_config(cfg).parameters())
    report = DemoReport(steps=cfg.train.max_steps)
    report.timings["build"] = time.perf_counter() - t0
    enc, dec = cfg.encoder.config, cfg.decoder.config
    echo(f"seqweave demo: a tiny bert2bert from the embedded {config.name}, random weights, no network")
    echo(
        f"  model     {n_params:,} parameters ({enc['num_hidden_layers']}+{dec['num_hidden_layers']} layers, "
        f"width {dec['hidden_size']}), built in {report.timings['build']:.2f} s"
    )
    echo('  task      reverse the word order: "red cat big" -> "big cat red"')
    data = demo_data()
    echo(
        f"  data      {len(data['train']):,} training pairs, {len(data['eval'])} held out "
        f"({Path(cfg.train.data.train).name}, {Path(cfg.train.data.eval).name}, shipped in the package)"
    )

    if output is not None and Path(output).is_dir() and any(Path(output).iterdir()):
        raise sw.ConfigError(f"{output}: is not empty; the demo writes a new run: choose another folder")
    run_dir = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="seqweave-demo-"))
    try:
        t = time.perf_counter()
        result = sw.train(config, run_dir, overrides=overrides)
        report.timings["train"] = time.perf_counter() - t
        losses = [m["loss"] for m in result.metrics if "loss" in m]
        report.loss_before, report.loss_after = losses[0], losses[-1]
        report.eval_loss = (result.eval or {}).get("eval_loss", float("nan"))
        echo(
            f"  training  {report.steps} steps of {cfg.train.batch_size} pairs with seqweave.train: "
            f"loss {report.loss_before:.3f} -> {report.loss_after:.3f} ({report.timings['train']:.1f} s)"
        )
        echo(f"  eval      loss {report.eval_loss:.3f} on the {len(data['eval'])} held-out pairs")

        t = time.perf_counter()
        reloaded = sw.pipeline(result.model_dir)  # the folder alone: weights, config and tokenizer
        report.timings["load"] = time.perf_counter() - t
        files = ", ".join(sorted(p.name for p in result.model_dir.iterdir() if p.is_file()))
        where = result.model_dir if output is not None else "RUN_DIR/model (a temporary folder)"
        echo(f"  saved     {where} ({files}) and loaded it back ({report.timings['load']:.2f} s)")
        cases = [("seen", *p) for p in data["train"][:2]] + [("unseen", *p) for p in data["eval"]]
        t = time.perf_counter()
        generated = reloaded([src for _, src, _ in cases])
        report.timings["generate"] = time.perf_counter() - t
    finally:
        if output is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    echo(f"  generate  greedy, {len(cases)} inputs in one batch ({report.timings['generate']:.2f} s):")
    for (kind, src, want), got in zip(cases, generated, strict=True):
        report.outputs.append((src, want, got))
    for (kind, src, want), got in list(zip(cases, generated, strict=True))[:4]:
        mark = "ok" if got == want else f"expected {want!r}"
        echo(f"    {kind:<6} {src!r:<34} -> {got!r} ({mark})")
    held_out = report.outputs[2:]
    hits = sum(got == want for _, want, got in held_out)
    report.exact_match = hits / len(held_out)
    echo(f"  exact match  {hits}/{len(held_out)} held-out pairs ({100 * report.exact_match:.1f}%)")
    report.timings["total"] = time.perf_counter() - t0
    echo(f"  total     {report.timings['total']:.1f} s")
    return report
