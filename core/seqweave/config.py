"""Configuration models: the composition file format and the base of every architecture's config.

Pure pydantic models, below the registry (this module imports no registry): a composition
file (YAML, TOML or JSON) is read into :class:`CompositionConfig`, and each part's
``config:`` block is validated by the pydantic model its architecture's plugin
contributes, so errors name the exact field: ``file.yaml: encoder.config.num_attention_heads:
must divide hidden_size (64) (got 5)``. Reading files, overrides, the checks against the
registered architectures and the JSON Schema live above the registry, in
:mod:`seqweave.composition`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .training.config import TrainSettings

__all__ = [
    "ArchitectureConfig",
    "CompositionConfig",
    "FieldError",
    "GenerationSettings",
    "PartConfig",
    "TOKEN_ID_FIELDS",
    "check_token_ids",
    "format_validation_error",
    "token_id_problems",
]

#: The file types :func:`seqweave.load_config` reads, by suffix.
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
_NO_VALUE = object()
#: An architecture name to its config model (None when not registered): how the did-you-mean
#: hints see inside a part's ``config`` block without this module importing the registry.
PartConfigOf = Callable[[str], "type[BaseModel] | None"]


class FieldError(ValueError):
    """A check across fields that one field fails; errors are reported at that field.

    Raise it from a ``model_validator`` so that the message names the field and its
    value (``encoder.config.num_attention_heads ... (got 5)``) rather than the whole block.

    Args:
        field: the field's name (a dotted path for nested fields).
        message: what is wrong and what is allowed.
        value: the value found.
    """

    def __init__(self, field: str, message: str, value: Any = _NO_VALUE) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.value = value


class _Problems(ValueError):
    """Several located problems found by one validator (the composition's cross-part checks)."""

    def __init__(self, problems: list[tuple[str, str, Any]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg, _ in problems))
        self.problems = problems


def _shown(value: Any) -> str:
    if value is _NO_VALUE or isinstance(value, (dict, BaseModel)):
        return ""  # a whole block says nothing the location does not
    return f" (got {value!r})"


def _message(msg: str) -> str:
    # pydantic prefixes errors raised by validators; the location already says where.
    return msg.removeprefix("Value error, ")


def format_validation_error(
    e: ValidationError,
    source: str,
    *,
    model: type[BaseModel] | None = None,
    data: Any = None,
    part_config: PartConfigOf | None = None,
    registry: Any = None,
) -> str:
    """One line per problem: ``source: dotted.location: message (got value)``.

    Args:
        e: the error pydantic raised.
        source: the file (or "config") the values came from.
        model: the model that was validated (:class:`CompositionConfig` by default); an
            unknown key gets a "did you mean" hint from its fields.
        data: the validated input (for the hint inside a part's ``config``).
        part_config: an architecture name's config model (for the hint inside a part's
            ``config``); :mod:`seqweave.composition` passes the registry's.
        registry: instead of ``part_config``, a :class:`seqweave.Registry` (used as it is;
            this module does not import the registry).
    """
    if part_config is None and registry is not None:
        part_config = lambda name: registry.get(name).config if name in registry else None  # noqa: E731
    lines = []
    for err in e.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            prefix = ".".join(loc)
            for where, msg, value in cause.problems:
                lines.append(f"{source}: {'.'.join(filter(None, (prefix, where)))}: {msg}{_shown(value)}")
            continue
        msg, value = _message(err["msg"]), err.get("input", _NO_VALUE)
        if isinstance(cause, FieldError):
            loc.append(cause.field)
            msg, value = cause.message, cause.value
        if err["type"] == "missing":
            value = _NO_VALUE
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(loc, model or CompositionConfig, data, part_config)
        lines.append(f"{source}: {'.'.join(loc) or '(top level)'}: {msg}{_shown(value)}")
    return "\n".join(lines)


class ArchitectureConfig(BaseModel):
    """Base of every architecture's config model.

    Fields carry the Hugging Face names of that ``model_type``. Subclasses must provide
    (as fields or properties) ``hidden_size``, ``vocab_size``, ``initializer_range`` and
    ``tie_word_embeddings``. Unknown keys are errors: fields of a checkpoint's
    ``config.json`` that a model does not know are kept aside by the loader and written
    back on save instead. Checks across fields belong in a ``model_validator`` that
    raises :class:`FieldError`, so errors name the field.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


#: The generation options that are token ids: checked against the decoder's vocabulary by
#: :func:`token_id_problems`, and on a model defaulting to its own ids of the same names.
TOKEN_ID_FIELDS = ("decoder_start_token_id", "pad_token_id", "eos_token_id")


#: New tokens generated when neither ``max_new_tokens`` nor ``max_length`` is set (transformers' default).
DEFAULT_NEW_TOKENS = 20


class GenerationSettings(BaseModel):
    """Every generation option, with its default and its checks: the one list of them.

    The config file's ``generation:`` block, a checkpoint's ``generation_config.json``, the
    keyword options of :meth:`seqweave.EncoderDecoder.generate` (and ``generate_with_scores``,
    ``generate_stream``), the pipeline's options and ``seqweave generate``'s flags are all
    these fields (docs/generation.md: "To add an option"). A field left at None means "the
    default": for a token id, the model's own id of that name. Arguments of one call that
    are not settings (``generator``, ``streamer``, ``cuda_graph``, ``static_cache``) are
    keyword arguments of ``generate`` and not listed here.

    Checks that need the decoder (token ids below its vocabulary, positions it can embed)
    run when a call's options are resolved against a model (:func:`token_id_problems`).
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens to generate after the decoder prompt (the start token, or decoder_input_ids); "
        "null: max_length minus the prompt when max_length is set, else 20. Wins over max_length.",
    )
    max_length: int | None = Field(
        None,
        ge=1,
        description="Total decoder length, the prompt included (transformers' max_length); "
        "used when max_new_tokens is not set.",
    )
    min_new_tokens: int = Field(
        0, ge=0, description="Suppress EOS until this many tokens are generated; when > 0 it wins over min_length."
    )
    min_length: int = Field(
        0, ge=0, description="Suppress EOS while the decoder sequence, the prompt included, is shorter than this."
    )
    num_beams: int = Field(1, ge=1, description="Beam width; 1 is greedy or sampling.")
    do_sample: bool = Field(False, strict=True, description="Sample instead of taking the most likely token.")
    temperature: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="Divide logits by this before sampling."
    )
    top_k: int | None = Field(
        None,
        ge=0,
        description="Sample only from the k most likely tokens; None or 0: no limit (transformers' default is 50).",
    )
    top_p: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="Sample from the smallest set with this mass."
    )
    repetition_penalty: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="Penalise tokens already generated (CTRL)."
    )
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating any n-gram of this size.")
    length_penalty: float = Field(
        1.0, allow_inf_nan=False, description="Beam score = logprob / length ** length_penalty."
    )
    early_stopping: bool | Literal["never"] = Field(
        False,
        description="Beam search: True stops once num_beams hypotheses are done; False stops when the best running "
        "beam (scored at the current length) cannot beat the worst finished one; 'never' scores it at max length.",
    )
    num_return_sequences: int = Field(1, ge=1, description="Sequences returned per input (<= num_beams).")
    decoder_start_token_id: int | None = Field(
        None, ge=0, description="First decoder token; null: the model's, else the decoder's bos_token_id."
    )
    pad_token_id: int | None = Field(
        None, ge=0, description="Fills finished rows; null: the model's, else the first eos id."
    )
    eos_token_id: int | list[int] | None = Field(
        None, description="End-of-sequence id(s): a row ends at the first; null: the model's."
    )
    bad_words_ids: list[list[int]] | None = Field(
        None,
        description="Token sequences never to generate: the last token of each is forbidden after the others "
        "(a one-token sequence always; one equal to an eos id is dropped, as transformers does).",
    )
    forced_bos_token_id: int | None = Field(
        None, ge=0, description="Force this token as the first generated one (after the start token)."
    )
    forced_eos_token_id: int | list[int] | None = Field(
        None, description="Force this token (the first of a list) as the last one when max_length is reached."
    )
    output_scores: bool = Field(
        False,
        strict=True,
        description="With return_dict_in_generate: return each step's processed scores "
        "(beam search: its processed log-probabilities) and, for beam search, sequences_scores.",
    )
    output_logits: bool = Field(
        False, strict=True, description="With return_dict_in_generate: return each step's raw logits."
    )
    return_dict_in_generate: bool = Field(
        False,
        strict=True,
        description="Return an output object (sequences, scores, logits, sequences_scores, beam_indices) "
        "instead of the sequences tensor.",
    )

    @field_validator(*TOKEN_ID_FIELDS, "forced_bos_token_id", "forced_eos_token_id", mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        # A token id is an int as written: not True, not 3.0, not "3" (pydantic's lax mode takes those).
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                more = "" if value is v else " or a list of them"
                raise ValueError(f"must be a token id (an int >= 0){more}")
        return list(value) if isinstance(value, tuple) else value

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping(cls, value: Any) -> Any:
        # strict: True, False or "never" (not "yes", 1, "false" ...), as the other booleans here
        if not isinstance(value, bool) and value != "never":
            raise ValueError(f"must be true, false or 'never' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _check(self) -> GenerationSettings:
        # transformers refuses the same combinations: beam search has only num_beams hypotheses,
        # and greedy search returns one sequence per input.
        if self.num_return_sequences > self.num_beams and (self.num_beams > 1 or not self.do_sample):
            unless = "" if self.num_beams > 1 else " unless do_sample is true"
            raise FieldError(
                "num_return_sequences",
                f"must be at most num_beams ({self.num_beams}){unless}",
                self.num_return_sequences,
            )
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise FieldError(
                "min_new_tokens",
                f"must be at most max_new_tokens ({self.max_new_tokens})",
                self.min_new_tokens,
            )
        return self

    @field_validator("bad_words_ids", mode="before")
    @classmethod
    def _bad_words(cls, value: Any) -> Any:
        # transformers' NoBadWordsLogitsProcessor: a non-empty list of non-empty lists of token ids.
        if value is None:
            return value
        if not isinstance(value, (list, tuple)) or not value or any(
            not isinstance(w, (list, tuple)) or not w for w in value
        ):
            raise ValueError("must be a non-empty list of non-empty lists of token ids")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for w in value for t in w):
            raise ValueError("must hold token ids (ints >= 0)")
        return [list(w) for w in value]

    @property
    def eos_ids(self) -> tuple[int, ...] | None:
        """``eos_token_id`` as a tuple of ids, or None when there is none."""
        eos = self.eos_token_id
        ids = (eos,) if isinstance(eos, int) else tuple(eos or ())
        return ids or None

    def merged(self, values: Mapping[str, Any], source: str) -> GenerationSettings:
        """These settings with ``values`` (field -> value; None = not given) applied, all checked again.

        Raises:
            ConfigError: a value is invalid, or the combination is; one line per problem,
                ``source: field: message (got value)``; an unknown name too.
        """
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **given})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source, model=type(self))) from None


def token_id_problems(
    values: Mapping[str, Any], vocab_size: int | None, prefix: str = ""
) -> list[tuple[str, str, Any]]:
    """The token ids among ``values`` that the decoder's vocabulary lacks, as ``(field, message, value)``.

    The one range check of token ids, wherever they are written: the config file (its top
    level and its ``generation:`` block), a model's ids, a call's options. Each field of
    :data:`TOKEN_ID_FIELDS` present in ``values`` may be None, an id, or a list of ids.

    Args:
        values: field name -> value (other keys are ignored).
        vocab_size: the decoder's vocabulary size; None (unknown) finds no problem.
        prefix: put before each field's name (``"generation."`` for that block of a config file).
    """
    problems: list[tuple[str, str, Any]] = []
    if vocab_size is None:
        return problems
    for name in TOKEN_ID_FIELDS:
        value = values.get(name)
        ids = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not 0 <= v < vocab_size for v in ids):
            problems.append((prefix + name, f"must be below the decoder's vocab_size ({vocab_size})", value))
    return problems


def check_token_ids(
    values: Mapping[str, Any], vocab_size: int | None, source: str | None, prefix: str = ""
) -> None:
    """Raise the problems :func:`token_id_problems` finds, as ``source: field: message (got value)`` lines.

    ``source`` (the file, or the caller) may be None when there is nothing to name.

    Raises:
        ConfigError: some id is not below ``vocab_size``.
    """
    problems = token_id_problems(values, vocab_size, prefix)
    if problems:
        where = f"{source}: " if source is not None else ""
        lines = [f"{where}{name}: {msg}{_shown(value)}" for name, msg, value in problems]
        raise ConfigError("\n".join(lines))


class PartConfig(BaseModel):
    """One side of the composition: an architecture, optionally warm-started from a checkpoint.

    ``config`` stays the mapping the user wrote: with ``pretrained`` it holds only the
    fields that override the checkpoint's ``config.json``. :class:`CompositionConfig`
    validates it against the architecture's own model.
    """

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(description="A registered architecture name (`seqweave plugins` lists them).")
    pretrained: str | None = Field(
        None,
        description="Hub id or local folder to load weights from (relative to the config file's folder).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The architecture's own fields (Hugging Face names); with `pretrained`, they override "
        "the checkpoint's.",
    )


class CompositionConfig(BaseModel):
    """A whole encoder-decoder composition (DESIGN.md section 3).

    Validation checks the parts against the registry (``context={"registry": ...}``, the
    installed plugins by default): each part's architecture must be registered for its
    role, and its ``config`` must satisfy that architecture's model. That check is
    :attr:`part_checker`, which :mod:`seqweave.composition` (above the registry) installs.
    """

    model_config = ConfigDict(extra="forbid")

    encoder: PartConfig = Field(description="The encoder: architecture, optional checkpoint, own fields.")
    decoder: PartConfig = Field(description="The decoder: architecture, optional checkpoint, own fields.")
    decoder_start_token_id: int | None = Field(None, ge=0, description="First token of every decoder input.")
    pad_token_id: int | None = Field(None, ge=0, description="Padding token; -100 labels become this.")
    eos_token_id: int | list[int] | None = Field(None, description="End-of-sequence token id(s).")
    tie_encoder_decoder: bool = Field(
        False, strict=True, description="Share encoder and decoder weights where shapes match."
    )
    tokenizer: str | None = Field(
        None,
        description="Folder or hub id with tokenizer files (source text, and target text unless "
        "`decoder_tokenizer` is set).",
    )
    decoder_tokenizer: str | None = Field(
        None,
        description="Folder or hub id of the target side's tokenizer when the decoder has its own "
        "vocabulary (bert2gpt2).",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Defaults for generation (`seqweave generate`)."
    )
    train: TrainSettings | None = Field(
        None,
        description="A fine-tuning run (`seqweave train`; docs/training.md); null: none. Building or loading the "
        "model ignores it.",
    )

    #: ``(data, registry or None) -> [(location, message, value), ...]``: the parts' problems.
    #: Set by :mod:`seqweave.composition` (imported by ``import seqweave``); this module is
    #: below the registry and may not import it. ``context={"check_parts": False}`` skips it.
    part_checker: ClassVar[Callable[[Mapping[str, Any], Any], list[tuple[str, str, Any]]] | None] = None

    @model_validator(mode="after")
    def _check_parts(self, info: ValidationInfo) -> CompositionConfig:
        context = info.context or {}
        checker = CompositionConfig.part_checker
        if checker is not None and context.get("check_parts", True):
            problems = checker(self.model_dump(), context.get("registry"))
            if problems:
                raise _Problems(problems)
        return self



# ----------------------------------------------------------------------------------------
# Walking the format by dotted path (unknown-key hints, typed overrides)


def _model_at(
    path: Sequence[str], data: Any, part_config: PartConfigOf | None, root: type[BaseModel] | None = None
) -> type[BaseModel] | None:
    """The pydantic model whose fields live at ``path`` under ``root`` (a composition by default), or None.

    Inside a part's ``config`` it is the architecture's model, which ``part_config`` gives
    (None without it).
    """
    model: type[BaseModel] | None = root or CompositionConfig
    for i, key in enumerate(path):
        if model is None:
            return None
        if model is PartConfig and key == "config":
            arch_name = (
                (data or {}).get(path[i - 1], {}).get("architecture") if isinstance(data, dict) else None
            )
            model = part_config(arch_name) if isinstance(arch_name, str) and part_config is not None else None
            continue
        field = model.model_fields.get(key)
        sub = _optional_model(field.annotation) if field is not None else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return model


def _optional_model(annotation: Any) -> Any:
    """``M`` for an annotation ``M | None`` (the ``train:`` block), else the annotation itself."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"


def _did_you_mean(loc: list[str], root: type[BaseModel], data: Any, part_config: PartConfigOf | None) -> str:
    model = _model_at(loc[:-1], data, part_config, root)
    return _suggest(loc[-1], model.model_fields) if model is not None and loc else ""
