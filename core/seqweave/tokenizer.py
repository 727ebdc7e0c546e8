"""Tokenizers for the text-to-text tools, loaded with the ``tokenizers`` library (no transformers).

A folder holds one of three formats, tried in this order: ``tokenizer.json`` (any
tokenizer transformers' fast tokenizers save), BERT's ``vocab.txt`` (WordPiece) or
GPT-2's ``vocab.json`` + ``merges.txt`` (byte-level BPE). For the last two,
``tokenizer_config.json`` and ``special_tokens_map.json`` say how (lower-casing, the
special tokens, RoBERTa's ``<s> ... </s>``); they are data, never code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint.jsonio import read_json
from .errors import CheckpointError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["TextTokenizer", "has_tokenizer_files", "load_tokenizer"]

TOKENIZER_JSON = "tokenizer.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def has_tokenizer_files(folder: Path) -> bool:
    """True when ``folder`` holds a tokenizer in one of the three formats."""
    return (
        (folder / TOKENIZER_JSON).is_file()
        or (folder / "vocab.txt").is_file()
        or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
    )


class TextTokenizer:
    """Text to padded batches of ids and back, around a :class:`tokenizers.Tokenizer`.

    Args:
        tokenizer: the ``tokenizers`` object; its own padding is turned off (batches are
            padded here, to the longest row).
        source: where it came from, for messages.
        pad_token_id: the id that pads batches; None when the vocabulary has no pad token.
    """

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, *, source: str = "tokenizer", pad_token_id: int | None = None
    ):
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.source = source
        self.pad_token_id = pad_token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None."""
        return self.tokenizer.token_to_id(token)

    def encode(
        self, texts: Sequence[str], *, max_length: int | None = None, pad_token_id: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [b, s] padded on the right to the longest text, and the attention mask [b, s].

        Args:
            texts: the texts, with the special tokens the tokenizer adds (``[CLS] ... [SEP]``).
            max_length: cut longer texts (keeping the closing special token) to this many ids.
            pad_token_id: pads with this when the tokenizer has no pad token of its own.
        """
        if max_length is not None:
            self.tokenizer.enable_truncation(max_length)
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        finally:
            if max_length is not None:
                self.tokenizer.no_truncation()
        pad = self.pad_token_id if self.pad_token_id is not None else (pad_token_id or 0)
        width = max((len(e.ids) for e in encodings), default=0)
        ids = torch.full((len(encodings), max(width, 1)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[row, : len(e.ids)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of one row of ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` (every format is saved as this one file) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / TOKENIZER_JSON
        self.tokenizer.save(str(path))
        if self.pad_token_id is not None:
            # tokenizer.json records no pad id unless padding is on; keep it for the next load.
            (folder / "tokenizer_config.json").write_text(
                json.dumps({"pad_token": self.tokenizer.id_to_token(self.pad_token_id)}, indent=2) + "\n"
            )
        return path


def _read_json(path: Path) -> dict[str, Any]:
    """A tokenizer config: ``{}`` when absent or not an object; invalid JSON is a :class:`CheckpointError`."""
    return read_json(path, missing_ok=True, object_only=False)


def _special_tokens(folder: Path) -> dict[str, str]:
    """``{"pad_token": "[PAD]", ...}`` from tokenizer_config.json and special_tokens_map.json."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        for key, value in _read_json(folder / name).items():
            if key in _SPECIAL_KEYS:
                text = value.get("content") if isinstance(value, dict) else value
                if isinstance(text, str):
                    found[key] = text
    return found


def _load_wordpiece(folder: Path, config: dict[str, Any], specials: dict[str, str]) -> tokenizers.Tokenizer:
    from tokenizers import BertWordPieceTokenizer

    names = {k: specials.get(f"{k}_token", f"[{k.upper()}]") for k in ("unk", "sep", "cls", "pad", "mask")}
    try:
        return BertWordPieceTokenizer(
            str(folder / "vocab.txt"),
            lowercase=bool(config.get("do_lower_case", True)),  # transformers' BertTokenizer default
            strip_accents=config.get("strip_accents"),
            **{f"{k}_token": v for k, v in names.items()},
        )._tokenizer
    except Exception as e:  # tokenizers reports a token missing from the vocabulary as TypeError/Exception
        raise CheckpointError(f"{folder / 'vocab.txt'}: not a usable WordPiece vocabulary: {e}") from None


def _load_byte_level(folder: Path, config: dict[str, Any], specials: dict[str, str]) -> tokenizers.Tokenizer:
    """A byte-level BPE; fills in ``specials`` with the defaults it applies."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    try:
        wrapper = ByteLevelBPETokenizer.from_file(
            str(folder / "vocab.json"),
            str(folder / "merges.txt"),
            add_prefix_space=bool(config.get("add_prefix_space", False)),
        )
    except Exception as e:
        raise CheckpointError(f"{folder}: vocab.json and merges.txt are not a byte-level BPE: {e}") from None
    tok = wrapper._tokenizer
    roberta = str(config.get("tokenizer_class", "")).startswith("Roberta")
    if roberta:  # transformers' RobertaTokenizer defaults, for files that leave them out
        for key, token in (
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
            ("pad_token", "<pad>"),
            ("mask_token", "<mask>"),
        ):
            specials.setdefault(key, token)
    elif not specials and tok.token_to_id("<|endoftext|>") is not None:
        specials["eos_token"] = "<|endoftext|>"  # GPT-2 ships no special-token files in old repos
    present = [t for t in dict.fromkeys(specials.values()) if tok.token_to_id(t) is not None]
    tok.add_special_tokens(present)  # already in the vocabulary: only marks them special
    if roberta:
        bos, eos = specials.get("bos_token", "<s>"), specials.get("eos_token", "</s>")
        tok.post_processor = RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)))
    return tok


def load_tokenizer(source: str | Path, revision: str | None = None) -> TextTokenizer:
    """The tokenizer in a folder or a Hub repository (only tokenizer files are fetched).

    Raises:
        CheckpointError: no tokenizer files, or unreadable ones; the message names the folder.
    """
    from .hub import resolve

    folder = resolve(source, revision, kind="tokenizer")
    config = _read_json(folder / "tokenizer_config.json")
    specials = _special_tokens(folder)
    if (folder / TOKENIZER_JSON).is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(folder / TOKENIZER_JSON))
        except Exception as e:
            raise CheckpointError(f"{folder / TOKENIZER_JSON}: not a tokenizers file: {e}") from None
    elif (folder / "vocab.txt").is_file():
        tok = _load_wordpiece(folder, config, specials)
        specials.setdefault("pad_token", "[PAD]")  # BertWordPieceTokenizer's default, checked present
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = _load_byte_level(folder, config, specials)
    else:
        raise CheckpointError(
            f"{folder}: no tokenizer files; expected tokenizer.json, vocab.txt, or vocab.json with merges.txt"
        )
    pad = (tok.padding or {}).get("pad_id")
    if pad is None and "pad_token" in specials:
        pad = tok.token_to_id(specials["pad_token"])
    return TextTokenizer(tok, source=str(folder), pad_token_id=pad)
