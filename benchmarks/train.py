"""seqweave vs transformers training: tokens/s and peak memory, same weights, data and batch, one process.

One transformers ``EncoderDecoderModel`` is saved (random weights, dropout off); transformers
and seqweave both load that folder. Both train with AdamW (lr 1e-4, weight decay 0.01 on
matrices only), gradient clipping at 1.0, bf16 autocast on CUDA and float32 on the CPU, on the
same batches: random token ids with ragged lengths, padded (``training.data.Batch``: source
mask, labels -100 past each row, decoder attention mask), kept on the CPU and moved to the
device each step as a trainer does.

* seqweave: the trainer's own step (``seqweave.training.loop``: per-step dropout seeding,
  label count, ``num_items_in_batch``, clipping, AdamW, scheduler), on a fixed list of batches;
* transformers: a plain loop over ``EncoderDecoderModel`` (forward with ``labels``, backward,
  clipping, AdamW step, ``zero_grad(set_to_none=True)``).

AdamW is the fused one on both sides, on CUDA and the CPU (the trainer's ``build_optimizer``;
transformers' Trainer defaults to ``adamw_torch_fused`` with torch >= 2.8).

Dropout is off so that the two sides can be compared step for step: they start from the same
weights and see the same data, so the losses of the first steps must agree (1e-4 relative in
float32, 3e-2 in bf16) or the benchmark stops; the table shows the largest difference over
every step. Timed runs alternate (transformers, seqweave, transformers, ...) so that drift in
the machine's speed hits both sides alike; figures are medians over runs. Tokens are the
unpadded source and target tokens of a step. Peak memory on CUDA is each side's own: the
peak allocated during its run less what the other side holds (weights and AdamW state), so
both figures count weights, gradients, optimizer state and activations. On the CPU (Linux) each side
runs alone in a fresh process and the figure is the rise of its peak RSS over the steps.

Cases: BERT-base encoder + GPT-2-small decoder (random weights, cross-attention), source 128,
target 64, batch 8 and 32. ``--quick`` (for the CPU): a 2-layer 128-wide bert2gpt2 with a
1,024-token vocabulary, source 64, target 32, batch 4 and 8.

    python benchmarks/train.py --quick                 # CPU, 2 threads
    python benchmarks/train.py --device cuda           # the issue's figures (bf16 autocast)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
# The same decoder configs, special tokens, timer and medians as the generation benchmark.
import seqweave as sw
from generate import decoder_config, median_ms, special_tokens, timed
from seqweave.training.data import Batch

LR = 1e-4
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
CHECK_STEPS = 3


@dataclass
class Sizes:
    name: str
    source: int
    target: int
    batches: tuple[int, ...]
    vocab: int | None  # None: the architectures' own (BERT 30,522, GPT-2 50,257)
    small: bool


FULL = Sizes("bert-base+gpt2-small", 128, 64, (8, 32), None, small=False)
QUICK = Sizes("bert2gpt2 2x128", 64, 32, (4, 8), 1024, small=True)


def build_composite(folder: Path, sizes: Sizes) -> dict[str, int]:
    """Save a random-weight transformers EncoderDecoderModel; return its special tokens."""
    import transformers

    torch.manual_seed(0)
    if sizes.small:
        enc_cfg = transformers.BertConfig(
            vocab_size=sizes.vocab,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=128,
        )
        dec_cfg = transformers.GPT2Config(
            vocab_size=sizes.vocab,
            n_embd=128,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=sizes.vocab - 1,
            eos_token_id=sizes.vocab - 1,
            pad_token_id=sizes.vocab - 1,
            is_decoder=True,
            add_cross_attention=True,
        )
        tokens = dict.fromkeys(("decoder_start_token_id", "pad_token_id", "eos_token_id"), sizes.vocab - 1)
    else:
        enc_cfg = transformers.BertConfig()
        dec_cfg = decoder_config("gpt2", small=False)
        tokens = special_tokens("gpt2")
    for cfg in (enc_cfg, dec_cfg):  # dropout off: the two sides' losses are compared step for step
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "resid_pdrop",
            "embd_pdrop",
            "attn_pdrop",
        ):
            if hasattr(cfg, name):
                setattr(cfg, name, 0.0)
    model = transformers.EncoderDecoderModel(
        encoder=transformers.BertModel(enc_cfg, add_pooling_layer=False),
        decoder=transformers.GPT2LMHeadModel(dec_cfg),
    )
    for k, v in tokens.items():
        setattr(model.config, k, v)
        setattr(model.generation_config, k, v)
    model.save_pretrained(folder)
    return tokens


def make_batches(n: int, batch: int, sizes: Sizes, vocab: tuple[int, int], pad: int) -> list[Batch]:
    """``n`` batches of random ids, ragged lengths (half to full), padded to the longest row, on the CPU."""
    g = torch.Generator().manual_seed(batch)
    out = []
    for _ in range(n):
        src_len = torch.randint(sizes.source // 2, sizes.source + 1, (batch,), generator=g)
        tgt_len = torch.randint(sizes.target // 2, sizes.target + 1, (batch,), generator=g)
        src = torch.randint(5, vocab[0] - 1, (batch, int(src_len.max())), generator=g)
        tgt = torch.randint(5, vocab[1] - 1, (batch, int(tgt_len.max())), generator=g)
        src_mask = torch.arange(src.shape[1]) < src_len[:, None]
        tgt_mask = torch.arange(tgt.shape[1]) < tgt_len[:, None]
        out.append(
            Batch(
                src.masked_fill(~src_mask, pad),
                src_mask.long(),
                tgt.masked_fill(~tgt_mask, -100),
                tgt_mask.long(),
            )
        )
    return out


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only, as the trainer (and transformers' Trainer) do."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, device: str, autocast):
    """transformers' side: one optimizer step of a plain loop; returns the loss (on the device)."""
    with autocast():
        loss = model(**batch.to(device).model_inputs()).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class _FixedBatches:
    """The trainer's view of the data (``micro_batches``), over a fixed list: step ``s`` reads batch ``s``."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches, self.steps_per_epoch = batches, len(batches)

    def micro_batches(self, step: int, rank: int, world: int, accumulation: int) -> list[Batch]:
        assert world == 1 and accumulation == 1
        return [self.batches[step]]


def trainer_steps(model: sw.EncoderDecoder, batches: list[Batch], device: str, cuda: bool):
    """seqweave's side: the trainer's step function on ``model``; returns (step(i) -> loss, optimizer).

    The trainer's own code from ``seqweave.training.loop``: ``prepare_run`` wraps the model and makes
    its (fused) optimizer and schedule, as ``train()`` does from a config; ``run_step`` is one step.
    """
    from seqweave.training import distributed as D
    from seqweave.training import loop as L
    from seqweave.training.config import TrainSettings

    settings = TrainSettings(
        data={"train": "unused.jsonl"},
        max_steps=len(batches),
        batch_size=batches[0].input_ids.shape[0],
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        lr_schedule="constant",
        precision="bf16" if cuda else "fp32",
        device=device,
    )
    dist = D.setup("none", device)
    run = L.prepare_run(model, settings, dist, _FixedBatches(batches), len(batches))
    return (lambda i: L.run_step(run, i)[0]), run.optimizer


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights and optimizer state (what a side holds between steps; gradients are freed)."""
    tensors = list(model.parameters()) + [
        t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    ]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_memory_supported() -> bool:
    """Peak RSS can be reset (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    return Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists()


def memory_child(args: argparse.Namespace) -> None:
    """One side alone in this process: print the rise of peak RSS (MiB) over its training steps.

    The weights and the data are loaded first and not counted; what is counted is what a step
    adds: gradients, AdamW state (made at the first step), activations and the allocator's slack.
    """
    import transformers

    side, folder = args.memory_child
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    steps = CHECK_STEPS + (args.steps or 4)
    batch_size = args.batch[0]
    config = transformers.AutoConfig.from_pretrained(folder)  # the same batches as the timed runs
    vocab = (config.encoder.vocab_size, config.decoder.vocab_size)
    if side == "hf":
        model = transformers.EncoderDecoderModel.from_pretrained(folder).train()
        optimizer = torch.optim.AdamW(param_groups(model), lr=LR, fused=True)
    else:
        model = sw.EncoderDecoder.from_pretrained(folder)
    data = make_batches(steps, batch_size, sizes, vocab, config.pad_token_id)
    if side == "hf":
        def step(i: int) -> torch.Tensor:
            return plain_step(model, optimizer, data[i], "cpu", contextlib.nullcontext)
    else:
        step, _ = trainer_steps(model, data, "cpu", False)
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    for i in range(steps):
        step(i)
    print((_status_kib("VmHWM") - base) / 1024)


def cpu_peaks(folder: Path, batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Each side's peak RSS rise over its steps, each in a fresh process (one allocator each)."""
    import subprocess

    out = {}
    for side in ("hf", "sw"):
        cmd = [sys.executable, __file__, "--memory-child", side, str(folder), "--batch", str(batch_size),
               "--threads", str(args.threads)] + ["--quick"] * args.quick
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[side] = float(done.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the small pair and sizes (a CPU run)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 10, quick 4)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: the case's)")
    parser.add_argument("--verbose", action="store_true", help="also print the losses of the first steps")
    parser.add_argument("--memory-child", nargs=2, metavar=("SIDE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    import transformers

    transformers.utils.logging.disable_progress_bar()
    # Its note on how labels became decoder inputs (v4.12), printed on every forward with labels.
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    steps = args.steps or (4 if args.quick else 10)
    cuda = args.device.startswith("cuda")
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    )
    tol = 3e-2 if cuda else 1e-4

    where = (
        f"cuda {torch.cuda.get_device_name()}, bf16 autocast"
        if cuda
        else (f"{args.device}, float32, {torch.get_num_threads()} threads")
    )
    print(
        f"# {where}, torch {torch.__version__}, transformers {transformers.__version__}; {sizes.name}, "
        f"source {sizes.source}, target {sizes.target}; AdamW, clipping, dropout off; "
        f"medians of {args.runs} alternating runs of {steps} steps"
    )
    print(
        "# seqweave: the trainer's step (seqweave.training.loop); transformers: a plain loop over "
        "EncoderDecoderModel"
    )
    header = (
        "| case | batch | tokens/step | transformers tok/s | seqweave tok/s | seqweave / transformers "
        "| transformers peak MiB | seqweave peak MiB | seqweave / transformers memory | max loss diff |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "composite"
        tokens = build_composite(folder, sizes)
        for batch_size in args.batch or sizes.batches:
            print(*case(folder, tokens, sizes, batch_size, args, steps, autocast, tol), sep="\n", flush=True)
            if cuda:
                torch.cuda.empty_cache()  # the case's models are gone
    if not cuda and cpu_memory_supported():
        print("# CPU peak memory: the rise of peak RSS over the steps, each side alone in a fresh process "
              "(gradients, AdamW state, activations; weights and data not counted)")
    elif not cuda:
        print("# peak memory: CUDA, or Linux's /proc for the CPU, only")


def case(folder, tokens, sizes, batch_size, args, steps, autocast, tol) -> list[str]:
    """Check the losses, time both sides; the table row (and with --verbose, the losses first)."""
    import transformers

    cuda = args.device.startswith("cuda")
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).to(args.device)
    ours = sw.EncoderDecoder.from_pretrained(folder, device=args.device)
    vocab = (hf.config.encoder.vocab_size, hf.config.decoder.vocab_size)
    n = CHECK_STEPS + args.runs * steps
    data = make_batches(n, batch_size, sizes, vocab, tokens["pad_token_id"])
    hf_opt = torch.optim.AdamW(param_groups(hf), lr=LR, fused=True)  # transformers' Trainer default (torch >= 2.8)
    hf.train()
    sw_step, sw_opt = trainer_steps(ours, data, args.device, cuda)
    steppers = {"hf": lambda i: plain_step(hf, hf_opt, data[i], args.device, autocast), "sw": sw_step}
    models, opts = {"hf": hf, "sw": ours}, {"hf": hf_opt, "sw": sw_opt}

    # Same weights, same data: the losses of the first (untimed) steps must agree.
    losses: dict[str, list[float]] = {
        k: [float(f(i)) for i in range(CHECK_STEPS)] for k, f in steppers.items()
    }
    diff = max(abs(a - b) / abs(a) for a, b in zip(losses["hf"], losses["sw"], strict=True))
    if diff > tol:
        sys.exit(f"batch {batch_size}: losses differ: transformers {losses['hf']}, seqweave {losses['sw']}")
    lines = [
        f"# batch {batch_size} first losses: transformers {losses['hf']}, seqweave {losses['sw']}"
    ] * args.verbose

    times: dict[str, list[float]] = {k: [] for k in steppers}
    peaks: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(args.runs):
        indices = range(
            CHECK_STEPS + r * steps, CHECK_STEPS + (r + 1) * steps
        )  # both sides: the same batches
        for k, f in steppers.items():
            if cuda:
                torch.cuda.synchronize()
                others = torch.cuda.memory_allocated() - static_bytes(models[k], opts[k])
                torch.cuda.reset_peak_memory_stats()

            def run(f=f, indices=indices) -> torch.Tensor:
                return torch.stack([f(i) for i in indices]).float()

            t, out = timed(run, args.device)
            losses[k] += out.tolist()
            times[k].append(t / steps)
            if cuda:
                peaks[k].append((torch.cuda.max_memory_allocated() - others) / 2**20)
    diff = max(abs(a - b) / abs(a) for a, b in zip(losses["hf"], losses["sw"], strict=True))
    n_tok = statistics.mean(b.tokens for b in data[CHECK_STEPS:])
    tps = {k: n_tok / (median_ms(v) / 1000) for k, v in times.items()}
    mem = {k: statistics.median(v) if v else float("nan") for k, v in peaks.items()}
    if not cuda and cpu_memory_supported():
        mem = cpu_peaks(folder, batch_size, args)
    measured = cuda or cpu_memory_supported()
    mem_cells = f"{mem['hf']:.0f} | {mem['sw']:.0f} | {mem['sw'] / mem['hf']:.2f}x" if measured else "n/a | n/a | n/a"
    lines.append(
        f"| {sizes.name} | {batch_size} | {n_tok:.0f} | {tps['hf']:.0f} | {tps['sw']:.0f} | "
        f"{tps['sw'] / tps['hf']:.2f}x | {mem_cells} | {diff:.1e} |"
    )
    return lines


if __name__ == "__main__":
    main()
