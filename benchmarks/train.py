"""seqweave vs transformers training: tokens/s and peak memory, same weights, data and batch, one process.

One transformers ``EncoderDecoderModel`` is saved (random weights); transformers and seqweave
both load that folder. Each side trains with AdamW (lr 1e-4, weight decay 0.01) on the same
batches: random token ids with ragged lengths (padding masked, padded label positions -100),
bf16 autocast on CUDA, float32 on the CPU. A step is forward with ``labels``, backward,
optimizer step, ``zero_grad(set_to_none=True)``.

Before timing, both sides take the same first steps with dropout off and their losses are
compared (they start from the same weights and see the same data, so they must agree: to
1e-4 relative in float32, 3e-2 in bf16); the benchmark stops if they do not. The timed runs
then train with dropout on, alternating (transformers, seqweave, transformers, ...) so that
drift in the machine's speed hits both sides alike. Figures are medians over runs; tokens
are the unpadded source and target tokens of a step. Peak memory (CUDA only) is this side's
own: the peak allocated during its run, less what the other side holds (weights and AdamW
state), so both figures count weights, gradients, optimizer state and activations.

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

LR = 1e-4
WEIGHT_DECAY = 0.01
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
    model = transformers.EncoderDecoderModel(
        encoder=transformers.BertModel(enc_cfg, add_pooling_layer=False),
        decoder=transformers.GPT2LMHeadModel(dec_cfg),
    )
    for k, v in tokens.items():
        setattr(model.config, k, v)
        setattr(model.generation_config, k, v)
    model.save_pretrained(folder)
    return tokens


def make_batches(
    n: int, batch: int, sizes: Sizes, vocab: tuple[int, int], pad: int, device: str
) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random ids, ragged lengths (half to full), padded to the longest row."""
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
            {
                "input_ids": src.masked_fill(~src_mask, pad).to(device),
                "attention_mask": src_mask.long().to(device),
                "labels": tgt.masked_fill(~tgt_mask, -100).to(device),
                "tokens": int(src_len.sum() + tgt_len.sum()),
            }
        )
    return out


def plain_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, autocast
) -> torch.Tensor:
    """One optimizer step; the same code for both libraries (both take transformers' keywords)."""
    with autocast():
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights and optimizer state (what a side holds between steps; gradients are freed)."""
    tensors = list(model.parameters()) + [
        t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    ]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the small pair and sizes (a CPU run)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per side (default 7)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 10, quick 4)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: the case's)")
    parser.add_argument("--verbose", action="store_true", help="also print the compared losses")
    args = parser.parse_args(argv)

    import transformers

    transformers.utils.logging.disable_progress_bar()
    # Its note on how labels became decoder inputs (v4.12), printed on every forward with labels.
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)

    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or 7
    steps = args.steps or (4 if args.quick else 10)
    cuda = args.device.startswith("cuda")
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    )
    tol = 3e-2 if cuda else 1e-4

    print(
        f"# {args.device}{' ' + torch.cuda.get_device_name() if cuda else ''}, "
        f"{'bf16 autocast' if cuda else f'float32, {torch.get_num_threads()} threads'}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {sizes.name}, source {sizes.source}, target {sizes.target}; "
        f"AdamW; medians of {runs} alternating runs of {steps} steps"
    )
    print("# seqweave side: a plain loop over EncoderDecoder (the same step code as the transformers side)")
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
            hf = transformers.EncoderDecoderModel.from_pretrained(folder).to(args.device)
            ours = sw.EncoderDecoder.from_pretrained(folder, device=args.device)
            vocab = (hf.config.encoder.vocab_size, hf.config.decoder.vocab_size)
            data = make_batches(
                CHECK_STEPS + steps, batch_size, sizes, vocab, tokens["pad_token_id"], args.device
            )
            models = {"hf": hf, "sw": ours}
            opts = {
                k: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
                for k, m in models.items()
            }

            # Same weights, same data, dropout off: the losses of the first steps must agree.
            losses: dict[str, list[float]] = {}
            for k, m in models.items():
                m.eval()
                losses[k] = [float(plain_step(m, opts[k], b, autocast)) for b in data[:CHECK_STEPS]]
                m.train()
            if args.verbose:
                print(
                    f"# batch {batch_size} first losses: transformers {losses['hf']}, seqweave {losses['sw']}"
                )
            diff = max(abs(a - b) / abs(a) for a, b in zip(losses["hf"], losses["sw"], strict=True))
            if diff > tol:
                sys.exit(
                    f"batch {batch_size}: losses differ: transformers {losses['hf']}, seqweave {losses['sw']}"
                )

            times: dict[str, list[float]] = {k: [] for k in models}
            peaks: dict[str, list[float]] = {k: [] for k in models}
            timed_data = data[CHECK_STEPS:]
            for _ in range(runs):
                for k, m in models.items():
                    if cuda:
                        torch.cuda.synchronize()
                        others = torch.cuda.memory_allocated() - static_bytes(m, opts[k])
                        torch.cuda.reset_peak_memory_stats()

                    def run(m=m, opt=opts[k], data=timed_data) -> None:
                        for b in data:
                            plain_step(m, opt, b, autocast)

                    t, _ = timed(run, args.device)
                    times[k].append(t / len(timed_data))
                    if cuda:
                        peaks[k].append((torch.cuda.max_memory_allocated() - others) / 2**20)
            n_tok = statistics.mean(b["tokens"] for b in timed_data)
            tps = {k: n_tok / (median_ms(v) / 1000) for k, v in times.items()}
            mem = {k: statistics.median(v) if v else float("nan") for k, v in peaks.items()}
            mem_cells = (
                f"{mem['hf']:.0f} | {mem['sw']:.0f} | {mem['sw'] / mem['hf']:.2f}x"
                if cuda
                else "n/a | n/a | n/a"
            )
            print(
                f"| {sizes.name} | {batch_size} | {n_tok:.0f} | {tps['hf']:.0f} | {tps['sw']:.0f} | "
                f"{tps['sw'] / tps['hf']:.2f}x | {mem_cells} | {diff:.1e} |",
                flush=True,
            )
            del hf, ours, models, opts
            if cuda:
                torch.cuda.empty_cache()
    if not cuda:
        print("# peak memory is measured on CUDA only (one process holds both sides)")


if __name__ == "__main__":
    main()
