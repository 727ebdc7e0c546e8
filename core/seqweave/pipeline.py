"""Text in, text out: :func:`pipeline` wraps a model and its tokenizers, batching and padding for the caller.

The same path serves ``seqweave generate`` and Python::

    summarize = seqweave.pipeline("out")                 # a model folder, hub id or config file
    summarize("some text", num_beams=4)                   # -> str
    summarize(["one", "two"], max_new_tokens=32)          # -> list[str]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import CONFIG_SUFFIXES, GenerationSettings
from .errors import ConfigError
from .progress import progress

if TYPE_CHECKING:
    import tokenizers

    from .composer import EncoderDecoder
    from .tokenizer import TextTokenizer

__all__ = ["GENERATION_OPTIONS", "TASKS", "TaskPipeline", "TextToText", "load_model", "pipeline", "resolve_tokenizers"]

#: The subfolder of a model folder that holds the target side's tokenizer when it differs.
DECODER_TOKENIZER_DIR = "decoder_tokenizer"
#: Keyword options a pipeline call takes besides the :class:`GenerationSettings` fields: ``seed``
#: makes the call's random generator (a generate-time argument, not a setting).
EXTRA_OPTIONS = ("seed",)
#: Every keyword option a pipeline call takes: the settings' fields, then :data:`EXTRA_OPTIONS`.
GENERATION_OPTIONS = (*GenerationSettings.model_fields, *EXTRA_OPTIONS)


def load_model(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    overrides: Sequence[str] = (),
) -> tuple[EncoderDecoder, Path | None]:
    """A model from a checkpoint folder, a Hub id or a config file, and its folder (None for a config).

    A config file (``.yaml``, ``.yml``, ``.toml``, ``.json`` that exists) is composed with
    :meth:`EncoderDecoder.from_config` and ``overrides``; anything else is a checkpoint.
    """
    from .composer import EncoderDecoder
    from .hub import resolve

    path = Path(model).expanduser()
    if path.suffix.lower() in CONFIG_SUFFIXES and path.is_file():
        if revision is not None:
            raise ConfigError(f"{path}: --revision applies to checkpoints; pin revisions in the config file")
        return EncoderDecoder.from_config(path, overrides=overrides, dtype=dtype, device=device), None
    if overrides:
        raise ConfigError(f"{model}: key=value overrides apply to config files, not to checkpoints")
    folder = resolve(model, revision)
    return EncoderDecoder.from_pretrained(folder, dtype=dtype, device=device), folder


def _as_tokenizer(value: Any) -> TextTokenizer:
    from .tokenizer import TextTokenizer, load_tokenizer

    if isinstance(value, TextTokenizer):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_tokenizer(value)
    import tokenizers

    if isinstance(value, tokenizers.Tokenizer):
        return TextTokenizer(value)
    raise ConfigError(
        f"tokenizer must be a folder, a Hub id or a tokenizers.Tokenizer, not {type(value).__name__}"
    )


def resolve_tokenizers(
    model: EncoderDecoder,
    folder: Path | None = None,
    tokenizer: str | os.PathLike | TextTokenizer | tokenizers.Tokenizer | None = None,
    decoder_tokenizer: str | os.PathLike | TextTokenizer | tokenizers.Tokenizer | None = None,
) -> tuple[TextTokenizer, TextTokenizer]:
    """The source and target tokenizers of ``model``, first found wins.

    Source: ``tokenizer``; the model folder (``folder``, or the one the model was loaded
    from); the config's ``tokenizer``; the encoder's
    pretrained checkpoint. Target: ``decoder_tokenizer``; the folder's
    ``decoder_tokenizer/``; the config's ``decoder_tokenizer``; the decoder's pretrained
    checkpoint when the source came from the encoder's; else the source tokenizer.

    Raises:
        ConfigError: no tokenizer anywhere; the message says where it looked.
        CheckpointError: a tokenizer folder without usable files.
    """
    from .tokenizer import has_tokenizer_files

    report = getattr(model, "load_report", None)
    if folder is None and "model" in getattr(report, "sources", {}):
        folder = Path(report.sources["model"]).parent  # loaded from a folder: its tokenizer files count
    # The folders the parts were warm-started from often carry their tokenizers (bert2gpt2).
    part_folders = {
        role: Path(f).parent
        for role, f in getattr(report, "sources", {}).items()
        if role in ("encoder", "decoder") and has_tokenizer_files(Path(f).parent)
    }
    source_tok: Any = tokenizer
    if source_tok is None and folder is not None and has_tokenizer_files(folder):
        source_tok = folder
    if source_tok is None:
        source_tok = getattr(model, "tokenizer_source", None)
    from_parts = source_tok is None
    if from_parts:
        source_tok = part_folders.get("encoder")
    if source_tok is None:
        where = (
            f"{folder} has no tokenizer files (tokenizer.json, vocab.txt, vocab.json + merges.txt), "
            if folder
            else ""
        )
        raise ConfigError(f"no tokenizer: {where}the config names none; pass --tokenizer (or tokenizer=)")
    target_tok: Any = decoder_tokenizer
    if target_tok is None and folder is not None and has_tokenizer_files(folder / DECODER_TOKENIZER_DIR):
        target_tok = folder / DECODER_TOKENIZER_DIR
    if target_tok is None:
        target_tok = getattr(model, "decoder_tokenizer_source", None)
    if target_tok is None and from_parts:
        target_tok = part_folders.get("decoder")
    enc = _as_tokenizer(source_tok)
    return enc, (enc if target_tok is None or target_tok == source_tok else _as_tokenizer(target_tok))


def _max_source_length(encoder: torch.nn.Module) -> int | None:
    """How many source positions the encoder's position table holds, if it has one."""
    from .layers import Embeddings

    emb = getattr(encoder, "embeddings", None)
    if not isinstance(emb, Embeddings):
        return None
    rows = emb.positions.num_embeddings
    # RoBERTa's scheme spends the rows up to padding_idx on nothing.
    return rows - emb.padding_idx - 1 if emb.position_scheme == "after_padding" else rows


@dataclass
class TextToText:
    """A model with its tokenizers: ``(texts, **generation_options) -> strings``.

    Attributes:
        model: the encoder-decoder (put in eval mode).
        tokenizer: turns source text into ids.
        decoder_tokenizer: turns generated ids into text (often the same object).
        batch_size: inputs per generate call.
        device: where inputs go (the model's device).
    """

    model: EncoderDecoder
    tokenizer: TextTokenizer
    decoder_tokenizer: TextTokenizer
    batch_size: int = 8
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.model.eval()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (got {self.batch_size})")
        # A tokenizer with more ids than the embedding table is the wrong tokenizer; say so
        # now rather than fail with an index error on the first text that uses a high id.
        for side, tok, vocab in (
            (
                "encoder",
                self.tokenizer,
                getattr(getattr(self.model.encoder, "config", None), "vocab_size", None),
            ),
            ("decoder", self.decoder_tokenizer, self.model.decoder.vocab_size),
        ):
            if vocab is not None and tok.vocab_size > vocab:
                raise ConfigError(
                    f"{tok.source}: the tokenizer has {tok.vocab_size} tokens but the {side}'s vocab_size is "
                    f"{vocab}; use the tokenizer the model was trained with"
                    + (" (--decoder-tokenizer sets the target side's)" if side == "decoder" else "")
                )

    def settings(self, **options: Any) -> dict[str, Any]:
        """The model's generation defaults with ``options`` applied and checked, plus the generator.

        Raises:
            ConfigError: an unknown option (with a "did you mean"), an invalid value, or
                ``return_dict_in_generate`` (the pipeline returns text).
        """
        import difflib

        unknown = [k for k in options if k not in GENERATION_OPTIONS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], GENERATION_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(GENERATION_OPTIONS)}"
            raise ConfigError(f"unknown generation option {unknown[0]!r}{hint}")
        seed = options.pop("seed", None)
        merged = self.model.generation_defaults().merged(options, "generation options").model_dump()
        if merged["return_dict_in_generate"]:
            raise ConfigError(
                "generation options: return_dict_in_generate: the pipeline returns text; call "
                "model.generate for an output object with scores (got True)"
            )
        if seed is not None:
            merged["generator"] = torch.Generator(device=self.device).manual_seed(int(seed))
        return merged

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **settings: Any
    ) -> torch.Tensor:
        """``model.generate``: [b * n, t] ids."""
        return self.model.generate(input_ids, attention_mask, **settings)

    def decode(self, ids: torch.Tensor, settings: dict[str, Any]) -> list[str]:
        """Text of each generated row: the start token, everything from the first EOS, and padding dropped."""
        eos = settings.get("eos_token_id")
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = settings.get("pad_token_id")
        texts = []
        for row in ids[:, 1:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
            texts.append(self.decoder_tokenizer.decode([t for t in row[:cut] if t != pad]).strip())
        return texts

    def batches(self, texts: Sequence[str], batch_size: int | None = None) -> Iterator[list[str]]:
        """``texts`` in chunks of ``batch_size``."""
        size = batch_size or self.batch_size
        for i in range(0, len(texts), size):
            yield list(texts[i : i + size])

    def __call__(
        self, texts: str | Sequence[str], *, batch_size: int | None = None, **options: Any
    ) -> str | list[str] | list[list[str]]:
        """Generate text for one text or many.

        Args:
            texts: a string, or a sequence of strings (batched and padded here).
            batch_size: inputs per generate call (default: :attr:`batch_size`).
            options: generation options (:class:`GenerationSettings` fields, ``seed``,
                ``eos_token_id``, ``pad_token_id``, ``decoder_start_token_id``); the
                model's configured defaults fill the rest.

        Returns:
            A string for a string; a list of strings for a list. With
            ``num_return_sequences`` > 1, each input gives a list of that many strings.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        out = list(self.iter_generate(items, batch_size=batch_size, **options))
        return out[0] if single else out

    def iter_generate(
        self, texts: Sequence[str], *, batch_size: int | None = None, **options: Any
    ) -> Iterator[str | list[str]]:
        """Like calling the pipeline, but yields each input's result as soon as its batch is done."""
        settings = self.settings(**options)
        n = settings["num_return_sequences"]
        size = batch_size or self.batch_size
        limit = _max_source_length(self.model.encoder)
        total = -(-len(texts) // size)
        for chunk in progress(
            self.batches(texts, size), total=total, desc="generating", enabled=None if total > 1 else False
        ):
            ids, mask = self.tokenizer.encode(chunk, max_length=limit, pad_token_id=settings["pad_token_id"])
            generated = self.generate_ids(ids.to(self.device), mask.to(self.device), **settings)
            decoded = self.decode(generated.cpu(), settings)
            for i in range(len(chunk)):
                yield decoded[i] if n == 1 else decoded[i * n : (i + 1) * n]


#: transformers' text-to-text pipeline tasks and the key each result dict uses
TASKS = {"summarization": "summary_text", "translation": "translation_text", "text2text-generation": "generated_text"}


@dataclass
class TaskPipeline(TextToText):
    """:class:`TextToText` that answers as transformers' pipeline of ``task`` does: ``[{key: text}, ...]``.

    ``pipeline("summarization", model=...)`` makes one; ``key`` is ``summary_text``,
    ``translation_text`` or ``generated_text``. A string gives a list with one dict; a list
    of strings gives one dict per input (a list of dicts per input with ``num_return_sequences``).
    """

    key: str = "generated_text"

    def __call__(self, texts: str | Sequence[str], *, batch_size: int | None = None, **options: Any) -> list:
        items = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for result in self.iter_generate(items, batch_size=batch_size, **options):
            rows = [{self.key: r} for r in ([result] if isinstance(result, str) else result)]
            out.append(rows[0] if isinstance(result, str) else rows)
        return out


def _task_key(task: str) -> str:
    key = TASKS.get(task) or ("translation_text" if task.startswith("translation_") else None)
    if key is None:
        raise ConfigError(
            f"pipeline: task {task!r} is not a text-to-text task; seqweave's pipelines are "
            f"{', '.join(TASKS)} (and translation_xx_to_yy)"
        )
    return key


def _device(device: torch.device | str | int | None) -> torch.device | str:
    """transformers' ``device=`` spellings: an index (-1 is the CPU), a name or a torch.device."""
    if device is None:
        return "cpu"
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu" if device < 0 else f"cuda:{device}"
    return device


def pipeline(
    task_or_model: EncoderDecoder | str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | TextTokenizer | tokenizers.Tokenizer | None = None,
    *,
    model: EncoderDecoder | str | os.PathLike | None = None,
    decoder_tokenizer: str | os.PathLike | TextTokenizer | tokenizers.Tokenizer | None = None,
    revision: str | None = None,
    device: torch.device | str | int | None = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int = 8,
) -> TextToText:
    """A text-to-text callable: ``pipeline(model)``, or transformers' ``pipeline(task, model=...)``.

    Args:
        task_or_model: the model (an :class:`EncoderDecoder`, or a checkpoint folder, Hub id or
            config file); or, with ``model=`` given, transformers' task name (``"summarization"``,
            ``"translation"``, ``"translation_xx_to_yy"``, ``"text2text-generation"``).
        tokenizer: source tokenizer (folder, Hub id or object); found from the model when None
            (see :func:`resolve_tokenizers`).
        model: the model, when the first argument names a task.
        decoder_tokenizer: target tokenizer when the decoder has its own vocabulary.
        revision: Hub revision of ``model``.
        device: where the model runs (a name, a ``torch.device``, or transformers' index: -1 the CPU).
        dtype: cast the weights to this when loading.
        batch_size: inputs per generate call.

    Returns:
        ``TextToText``: call it with a string (returns a string) or a list of strings; with a
        task, a :class:`TaskPipeline` that returns transformers' ``[{"summary_text": ...}]``.
    """
    key = None
    if model is not None:
        if not isinstance(task_or_model, str):
            raise ConfigError("pipeline: with model=..., the first argument is the task, e.g. 'summarization'")
        key = _task_key(task_or_model)
    else:
        model = task_or_model
    if model is None:
        raise ConfigError("pipeline: pass the model (a folder, Hub id, config file or EncoderDecoder)")
    device = _device(device)
    folder = None
    if isinstance(model, (str, os.PathLike)):
        model, folder = load_model(model, revision=revision, device=device, dtype=dtype)
    else:
        model = model.to(device)
    enc, dec = resolve_tokenizers(model, folder, tokenizer, decoder_tokenizer)
    if key is not None:
        return TaskPipeline(model, enc, dec, batch_size=batch_size, device=device, key=key)
    return TextToText(model, enc, dec, batch_size=batch_size, device=device)
