"""``seqweave demo``: the main job on the embedded default, with no network.

It composes a tiny bert2bert from the config shipped in the package (``data/demo.yaml``,
with a 48-token WordPiece vocabulary), fine-tunes it for a few seconds to reverse the
word order of short sentences, saves it, loads the folder back and generates text for
inputs it has and has not seen.
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

DEFAULT_STEPS = 300
N_TRAIN = 1024
N_EVAL = 64
BATCH = 32
LEARNING_RATE = 3e-3


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

    loss_before: float = 0.0
    loss_after: float = 0.0
    steps: int = 0
    outputs: list[tuple[str, str, str]] = field(default_factory=list)  # (input, expected, generated)
    timings: dict[str, float] = field(default_factory=dict)


def _labels(tokenizer, targets: list[str]) -> torch.Tensor:
    ids, mask = tokenizer.encode(targets)
    # The decoder starts from [CLS] (decoder_start_token_id), so labels are the text and [SEP].
    return ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)


def run_demo(
    *,
    steps: int | None = None,
    seed: int = 0,
    output: Path | None = None,
    echo: Callable[[str], None] = print,
) -> DemoReport:
    """Build, fine-tune, save, reload and generate; print a short report through ``echo``.

    Args:
        steps: training steps (default :data:`DEFAULT_STEPS`).
        seed: seeds initialisation, data and order.
        output: keep the checkpoint in this folder; by default a temporary one is removed.
        echo: where report lines go.
    """
    # A 64-wide model is all per-op overhead: one thread is several times faster than two,
    # and it does not stall when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(steps or DEFAULT_STEPS, seed, output, echo)
    finally:
        torch.set_num_threads(threads)


def _run(steps: int, seed: int, output: Path | None, echo: Callable[[str], None]) -> DemoReport:
    import seqweave as sw

    from .progress import progress

    report = DemoReport(steps=steps)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = demo_config_path()
    model = sw.EncoderDecoder.from_config(config)
    pipe = sw.pipeline(model)
    report.timings["build"] = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    echo(f"seqweave demo: a tiny bert2bert from the embedded {config.name}, random weights, no network")
    echo(
        f"  model     {n_params:,} parameters ({model.encoder.config.num_hidden_layers}+"
        f"{model.decoder.config.num_hidden_layers} layers, width {model.decoder.hidden_size}), "
        f"built in {report.timings['build']:.2f} s"
    )
    echo('  task      reverse the word order: "red cat big" -> "big cat red"')

    train = make_pairs(512, rng)
    held_out = [p for p in make_pairs(64, random.Random(seed + 1)) if p not in train][:2]
    probe_src, probe_ids = pipe.tokenizer.encode([s for s, _ in train[:BATCH]])
    probe_labels = _labels(pipe.tokenizer, [t for _, t in train[:BATCH]])

    def probe_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(probe_src, attention_mask=probe_ids, labels=probe_labels).loss.item()

    report.loss_before = probe_loss()
    t = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    for _ in progress(range(steps), total=steps, desc="training"):
        batch = rng.sample(train, BATCH)
        src, mask = pipe.tokenizer.encode([s for s, _ in batch])
        loss = model(src, attention_mask=mask, labels=_labels(pipe.tokenizer, [t for _, t in batch])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    report.timings["train"] = time.perf_counter() - t
    report.loss_after = probe_loss()
    echo(
        f"  training  {steps} steps of {BATCH} pairs: "
        f"loss {report.loss_before:.3f} -> {report.loss_after:.3f} "
        f"({report.timings['train']:.1f} s)"
    )

    folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="seqweave-demo-"))
    try:
        t = time.perf_counter()
        model.save_pretrained(folder)
        pipe.tokenizer.save(folder)
        reloaded = sw.pipeline(folder)  # the folder alone: weights, config and tokenizer
        report.timings["save+load"] = time.perf_counter() - t
        files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
        echo(
            f"  saved     {folder if output is not None else 'a temporary folder'} ({files}) and loaded it "
            f"back ({report.timings['save+load']:.2f} s)"
        )
        cases = [("seen", *train[0]), ("seen", *train[1]), *[("unseen", *p) for p in held_out]]
        t = time.perf_counter()
        generated = reloaded([src for _, src, _ in cases])
        report.timings["generate"] = time.perf_counter() - t
    finally:
        if output is None:
            shutil.rmtree(folder, ignore_errors=True)
    echo(f"  generate  greedy, {len(cases)} inputs in one batch ({report.timings['generate']:.2f} s):")
    for (kind, src, want), got in zip(cases, generated, strict=True):
        report.outputs.append((src, want, got))
        mark = "ok" if got == want else f"expected {want!r}"
        echo(f"    {kind:<6} {src!r:<34} -> {got!r} ({mark})")
    report.timings["total"] = time.perf_counter() - t0
    echo(f"  total     {report.timings['total']:.1f} s")
    return report
