"""Training pairs: reading the files, tokenizing, and the seeded, length-grouped global batches.

The order of an epoch is a function of ``(seed, epoch)`` alone, and step ``s`` reads the
``s``-th global batch of ``batch_size`` pairs of that order. So the data position of a run is
its step (``step * batch_size`` pairs consumed): a resumed run, or one on another number of
processes, reads exactly the pairs the uninterrupted one would have. Each process takes its
share of every global batch (:meth:`Batches.micro_batches`), padded to its own longest row.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from ..errors import ConfigError
from ..tokenizer import TextTokenizer

__all__ = ["Batch", "Batches", "Pairs", "eval_batches", "label_ids", "read_pairs", "tokenize_pairs"]

#: Global batches sorted by length together: long enough to group lengths, short enough to stay random.
WINDOW = 50


def read_pairs(path: str | Path, source_field: str, target_field: str) -> list[tuple[str, str]]:
    """The (source, target) texts of a .jsonl, .csv or .tsv file (CSV and TSV need a header row).

    Raises:
        ConfigError: the file is missing or unreadable, or a row lacks a field or holds no text
            there; the message names ``file:line`` and the field.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file (train.data)")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            pairs = (
                _read_jsonl(f, path, (source_field, target_field))
                if suffix == ".jsonl"
                else _read_table(f, path, (source_field, target_field), "\t" if suffix == ".tsv" else ",")
            )
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if not pairs:
        raise ConfigError(f"{path}: no pairs in the file")
    return pairs


def _text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field {field!r} must be text (got {value!r})")
    return value


def _read_jsonl(f: TextIO, path: Path, fields: tuple[str, str]) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: not a JSON object (got {type(row).__name__})")
        for field in fields:
            if field not in row:
                raise ConfigError(
                    f"{where}: no field {field!r} (fields: {', '.join(map(repr, row)) or 'none'})"
                )
        pairs.append((_text(row[fields[0]], where, fields[0]), _text(row[fields[1]], where, fields[1])))
    return pairs


def _read_table(f: TextIO, path: Path, fields: tuple[str, str], delimiter: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(f, delimiter=delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise ConfigError(f"{path}:1: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    for field in fields:
        if field not in header:
            raise ConfigError(
                f"{path}:1: no column {field!r} in the header (columns: "
                f"{', '.join(map(repr, header)) or 'none'})"
            )
    pairs = []
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise ConfigError(f"{where}: more values than the header has columns")
            if all(v in (None, "") for v in row.values()):
                continue
            for field in fields:
                if row[field] is None:
                    raise ConfigError(f"{where}: no value for column {field!r}")
            pairs.append((row[fields[0]], row[fields[1]]))
    except csv.Error as e:
        raise ConfigError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    return pairs


# ----------------------------------------------------------------------------------------
# Tokens


def label_ids(
    ids: Sequence[int], decoder_start: int | None, eos: int | None, max_length: int | None
) -> list[int]:
    """The labels of one target: its ids without the decoder start token, ending in ``eos``.

    The model prepends the start token itself (labels shifted right), so a tokenizer that
    opens every text with it (BERT's ``[CLS]`` for bert2bert, RoBERTa's ``<s>``) has it
    dropped; one that adds no closing token (GPT-2's) gets ``eos`` appended, so that the
    model learns to stop. ``max_length`` cuts the text, never the closing ``eos``.
    """
    out = list(ids)
    if out and decoder_start is not None and out[0] == decoder_start:
        out = out[1:]
    if eos is not None and (not out or out[-1] != eos):
        out.append(eos)
    if max_length is not None and len(out) > max_length:
        out = [*out[: max_length - 1], out[-1]] if eos is not None else out[:max_length]
    return out


@dataclass
class Pairs:
    """Tokenized pairs: source ids (with the tokenizer's special tokens), labels, and the target texts."""

    sources: list[list[int]]
    labels: list[list[int]]
    targets: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.sources)


def _encode(tokenizer: TextTokenizer, texts: list[str], max_length: int | None) -> list[list[int]]:
    tok = tokenizer.tokenizer
    if max_length is not None:
        tok.enable_truncation(max_length)
    try:
        return [e.ids for e in tok.encode_batch(texts)]
    finally:
        if max_length is not None:
            tok.no_truncation()


def tokenize_pairs(
    pairs: Sequence[tuple[str, str]],
    source_tokenizer: TextTokenizer,
    target_tokenizer: TextTokenizer,
    *,
    decoder_start: int | None,
    eos: int | None,
    max_source_length: int | None,
    max_target_length: int | None,
) -> Pairs:
    """Source ids and :func:`label_ids` of every pair."""
    texts = [s for s, _ in pairs]
    targets = [t for _, t in pairs]
    sources = _encode(source_tokenizer, texts, max_source_length)
    labels = [
        label_ids(ids, decoder_start, eos, max_target_length)
        for ids in _encode(target_tokenizer, targets, None)
    ]
    return Pairs(sources=sources, labels=labels, targets=targets, texts=texts)


@dataclass
class Batch:
    """One micro-batch, padded on the right to its longest row.

    Attributes:
        input_ids: [b, s] source ids (``pad`` beyond each row).
        attention_mask: [b, s] 1 for source tokens.
        labels: [b, t] target ids, -100 beyond each row (and for rows that only pad the batch).
        decoder_attention_mask: [b, t] 1 for the decoder inputs (the start token and labels but the last).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    decoder_attention_mask: torch.Tensor

    @property
    def tokens(self) -> int:
        """Source and target tokens (no padding): what tokens/s counts."""
        return int(self.attention_mask.sum()) + int(self.decoder_attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device, non_blocking=True)
                for t in (self.input_ids, self.attention_mask, self.labels, self.decoder_attention_mask)
            )
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            "decoder_attention_mask": self.decoder_attention_mask,
        }


def collate(pairs: Pairs, indices: Sequence[int], pad: int, dummy: Sequence[bool] = ()) -> Batch:
    """The :class:`Batch` of ``pairs`` at ``indices``; rows marked in ``dummy`` count no label."""
    b = len(indices)
    s = max((len(pairs.sources[i]) for i in indices), default=1)
    t = max((len(pairs.labels[i]) for i in indices), default=1)
    input_ids = torch.full((b, s), pad, dtype=torch.long)
    attention = torch.zeros((b, s), dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    dec_mask = torch.zeros((b, t), dtype=torch.long)
    for row, i in enumerate(indices):
        src, lab = pairs.sources[i], pairs.labels[i]
        input_ids[row, : len(src)] = torch.tensor(src, dtype=torch.long)
        attention[row, : len(src)] = 1
        dec_mask[row, : len(lab)] = 1
        if not (dummy and dummy[row]):
            labels[row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return Batch(input_ids, attention, labels, dec_mask)


class Batches:
    """The global batches of every epoch of a run, and each process's share of them.

    Args:
        pairs: the tokenized training pairs.
        batch_size: pairs per optimizer step over all processes and accumulation steps.
        seed: with the epoch, decides the order.
        pad: the source padding id.
    """

    def __init__(self, pairs: Pairs, batch_size: int, seed: int, pad: int) -> None:
        if len(pairs) < batch_size:
            raise ConfigError(f"train.batch_size: {batch_size} is more than the {len(pairs)} training pairs")
        self.pairs, self.batch_size, self.seed, self.pad = pairs, batch_size, seed, pad
        self.steps_per_epoch = len(pairs) // batch_size  # the last, incomplete batch of an epoch is dropped
        self._epoch: int | None = None
        self._order: list[list[int]] = []

    def order(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches: a seeded shuffle, sorted by length within windows of
        :data:`WINDOW` batches, cut into batches, and the batches shuffled."""
        if epoch != self._epoch:
            rng = random.Random(self.seed + epoch)
            ids = list(range(len(self.pairs)))
            rng.shuffle(ids)
            ids = ids[: self.steps_per_epoch * self.batch_size]
            size = len(ids[: WINDOW * self.batch_size]) or 1
            batches = []
            for start in range(0, len(ids), size):
                window = sorted(ids[start : start + size], key=self._length)
                batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
            rng.shuffle(batches)
            self._epoch, self._order = epoch, batches
        return self._order

    def _length(self, i: int) -> int:
        return len(self.pairs.sources[i]) + len(self.pairs.labels[i])

    def global_batch(self, step: int) -> list[int]:
        """The pairs of optimizer step ``step`` (0-based), over all processes."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[k]

    def micro_batches(self, step: int, rank: int, world: int, accumulation: int) -> list[Batch]:
        """This process's ``accumulation`` micro-batches of step ``step``.

        Micro-batch ``j`` of rank ``r`` holds slice ``j * world + r`` of the global batch, cut
        into ``world * accumulation`` equal slices (the batch is sorted by length, so each
        slice's rows have similar lengths and little padding).
        """
        batch = sorted(self.global_batch(step), key=self._length)
        m = self.batch_size // (world * accumulation)
        return [
            collate(self.pairs, batch[(j * world + rank) * m : (j * world + rank + 1) * m], self.pad)
            for j in range(accumulation)
        ]


def eval_batches(pairs: Pairs, batch_size: int, rank: int, world: int, pad: int) -> list[Batch]:
    """This process's evaluation batches: every process gets as many, of one size (FSDP needs
    each process to run the same forwards); rows past the end repeat pair 0 and count no label."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs.sources[i]) + len(pairs.labels[i]))
    per_step = batch_size * world
    steps = -(-len(order) // per_step)
    out = []
    for s in range(steps):
        chunk = order[s * per_step : (s + 1) * per_step]
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        dummy = [False] * len(mine) + [True] * (batch_size - len(mine))
        out.append(collate(pairs, mine + [0] * (batch_size - len(mine)), pad, dummy))
    return out
