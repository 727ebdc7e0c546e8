"""Write the example's corpus: English number words -> their digits, deterministically.

    python examples/train/make_data.py          # rewrites data/train.jsonl and data/eval.jsonl

Numbers from 1 to 9,999 in words ("four thousand two hundred seven", "ninety-one") and their
digits, space-separated so that each digit is one WordPiece token ("4 2 0 7"). 600 training
and 100 evaluation pairs, drawn without replacement with a fixed seed: no evaluation number
is in the training set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

N_TRAIN = 600
N_EVAL = 100
SEED = 11

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def words(n: int) -> str:
    """``n`` (1 to 9,999) in English words, without "and"."""
    parts = []
    if n >= 1000:
        parts += [ONES[n // 1000], "thousand"]
    if n % 1000 >= 100:
        parts += [ONES[n % 1000 // 100], "hundred"]
    rest = n % 100
    if rest >= 20:
        parts.append(TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else ""))
    elif rest:
        parts.append(ONES[rest])
    return " ".join(parts)


def pairs() -> dict[str, list[dict[str, str]]]:
    """The training and evaluation pairs, ``{"source": words, "target": digits}``."""
    numbers = random.Random(SEED).sample(range(1, 10_000), N_TRAIN + N_EVAL)
    rows = [{"source": words(n), "target": " ".join(str(n))} for n in numbers]
    return {"train": rows[:N_TRAIN], "eval": rows[N_TRAIN:]}


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs().items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    write(Path(__file__).parent / "data")
