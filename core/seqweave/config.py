"""Configuration models: the composition file format and the base of every architecture's config.

A composition file (YAML, TOML or JSON) is read into :class:`CompositionConfig`. Each
part's ``config:`` block is validated by the pydantic model its architecture's plugin
contributes, so errors name the exact field: ``file.yaml: encoder.config.num_attention_heads:
must divide hidden_size (64) (got 5)``. :func:`composition_json_schema` builds the JSON
Schema of the format from the registry at run time, one variant per architecture.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

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

if typing.TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "ArchitectureConfig",
    "CompositionConfig",
    "FieldError",
    "GenerationSettings",
    "PartConfig",
    "TOKEN_ID_FIELDS",
    "check_token_ids",
    "composition_json_schema",
    "format_validation_error",
    "load_config",
    "token_id_problems",
]

#: The file types :func:`load_config` reads, by suffix.
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
_NO_VALUE = object()


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
    registry: Registry | None = None,
) -> str:
    """One line per problem: ``source: dotted.location: message (got value)``.

    Args:
        e: the error pydantic raised.
        source: the file (or "config") the values came from.
        model: the model that was validated (:class:`CompositionConfig` by default); an
            unknown key gets a "did you mean" hint from its fields.
        data: the validated input (for the hint inside a part's ``config``).
        registry: the registry the input was validated with (for the hint).
    """
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
            msg = "unknown key" + _did_you_mean(loc, model or CompositionConfig, data, registry)
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

    max_new_tokens: int = Field(20, ge=1, description="Tokens to generate after the start token.")
    min_new_tokens: int = Field(0, ge=0, description="Suppress EOS until this many tokens are generated.")
    num_beams: int = Field(1, ge=1, description="Beam width; 1 is greedy or sampling.")
    do_sample: bool = Field(False, description="Sample instead of taking the most likely token.")
    temperature: float = Field(1.0, gt=0, description="Divide logits by this before sampling.")
    top_k: int | None = Field(
        None,
        ge=0,
        description="Sample only from the k most likely tokens; None or 0: no limit (transformers' default is 50).",
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Sample from the smallest set with this mass.")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalise tokens already generated (CTRL).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating any n-gram of this size.")
    length_penalty: float = Field(1.0, description="Beam score = logprob / length ** length_penalty.")
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

    @field_validator(*TOKEN_ID_FIELDS, mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        # A token id is an int as written: not True, not 3.0, not "3" (pydantic's lax mode takes those).
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                more = "" if value is v else " or a list of them"
                raise ValueError(f"must be a token id (an int >= 0){more}")
        return list(value) if isinstance(value, tuple) else value

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
        if self.min_new_tokens > self.max_new_tokens:
            raise FieldError(
                "min_new_tokens",
                f"must be at most max_new_tokens ({self.max_new_tokens})",
                self.min_new_tokens,
            )
        return self

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


def check_token_ids(values: Mapping[str, Any], vocab_size: int | None, source: str, prefix: str = "") -> None:
    """Raise the problems :func:`token_id_problems` finds, as ``source: field: message (got value)`` lines.

    Raises:
        ConfigError: some id is not below ``vocab_size``.
    """
    problems = token_id_problems(values, vocab_size, prefix)
    if problems:
        lines = [f"{source}: {name}: {msg}{_shown(value)}" for name, msg, value in problems]
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

    Validation needs the registry (``context={"registry": ...}``, the installed plugins
    by default): each part's architecture must be registered for its role, and its
    ``config`` must satisfy that architecture's model.
    """

    model_config = ConfigDict(extra="forbid")

    encoder: PartConfig = Field(description="The encoder: architecture, optional checkpoint, own fields.")
    decoder: PartConfig = Field(description="The decoder: architecture, optional checkpoint, own fields.")
    decoder_start_token_id: int | None = Field(None, ge=0, description="First token of every decoder input.")
    pad_token_id: int | None = Field(None, ge=0, description="Padding token; -100 labels become this.")
    eos_token_id: int | list[int] | None = Field(None, description="End-of-sequence token id(s).")
    tie_encoder_decoder: bool = Field(
        False, description="Share encoder and decoder weights where shapes match."
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

    @model_validator(mode="after")
    def _check_parts(self, info: ValidationInfo) -> CompositionConfig:
        from .registry import default_registry

        context = info.context or {}
        if context.get("check_parts", True):
            problems = _part_problems(self.model_dump(), context.get("registry") or default_registry())
            if problems:
                raise _Problems(problems)
        return self


def _part_problems(data: Mapping[str, Any], registry: Registry) -> list[tuple[str, str, Any]]:
    """Each part's architecture and ``config`` block, and the token ids against the decoder's vocabulary.

    Works on the raw mapping, so that :func:`load_config` reports these problems together
    with the ones pydantic finds elsewhere; whatever is malformed here (a part that is
    not a mapping) is left to pydantic to report.
    """
    problems: list[tuple[str, str, Any]] = []
    vocab_size: int | None = None
    for role in ("encoder", "decoder"):
        part = data.get(role)
        if not isinstance(part, Mapping) or not isinstance(part.get("architecture"), str):
            continue
        name, pretrained, block = part["architecture"], part.get("pretrained"), part.get("config", {})
        if name not in registry:
            try:
                registry.get(name)
            except ConfigError as e:  # its message lists the registered names
                problems.append((f"{role}.architecture", str(e), _NO_VALUE))
            continue
        arch = registry.get(name)
        if role not in arch.roles:
            problems.append(
                (
                    f"{role}.architecture",
                    f"{name!r} cannot be the {role}; it can be: {', '.join(arch.roles)}",
                    _NO_VALUE,
                )
            )
            continue
        if not isinstance(block, Mapping):
            continue
        try:
            validated = arch.config.model_validate(dict(block))
        except ValidationError as e:
            for err in e.errors(include_url=False):
                # With a checkpoint, the block only overrides some fields: checks across fields
                # (errors of the whole block) need the merged config and run when it is loaded.
                if pretrained is not None and not err["loc"]:
                    continue
                loc = [role, "config", *map(str, err["loc"])]
                cause = (err.get("ctx") or {}).get("error")
                value = _NO_VALUE if err["type"] == "missing" else err.get("input", _NO_VALUE)
                msg = _message(err["msg"])
                if isinstance(cause, FieldError):
                    loc.append(cause.field)
                    msg, value = cause.message, cause.value
                if err["type"] == "extra_forbidden":
                    msg = "unknown key" + _suggest(loc[-1], arch.config.model_fields)
                problems.append((".".join(loc), msg, value))
            continue
        if role == "decoder" and (pretrained is None or "vocab_size" in block):
            vocab_size = getattr(validated, "vocab_size", None)
    if vocab_size is not None:
        for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            value = data.get(name)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int) and not 0 <= v < vocab_size:
                    problems.append((name, f"must be below the decoder's vocab_size ({vocab_size})", value))
                    break
    return problems


# ----------------------------------------------------------------------------------------
# The schema: one variant per registered architecture and role


def _schema_model(registry: Registry) -> type[BaseModel]:
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for role in ("encoder", "decoder"):
        variants = []
        for name in registry.names():
            arch = registry.get(name)
            if role not in arch.roles:
                continue
            variants.append(
                create_model(
                    f"{name.capitalize()}{role.capitalize()}",
                    __base__=PartConfig,
                    __doc__=f"{arch.description or name} as the {role}.",
                    architecture=(Literal[name], Field(description="A registered architecture name.")),  # type: ignore[valid-type]
                    config=(
                        arch.config,
                        Field(
                            default_factory=arch.config,
                            description=PartConfig.model_fields["config"].description,
                        ),
                    ),
                )
            )
        if not variants:
            annotation: Any = PartConfig
        elif len(variants) == 1:
            annotation = variants[0]
        else:
            annotation = typing.Annotated[Union[tuple(variants)], Field(discriminator="architecture")]  # noqa: UP007
        fields[role] = (annotation, CompositionConfig.model_fields[role])
    return create_model("CompositionConfig", __base__=CompositionConfig, **fields)


def composition_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema of the config file format, built from the registered architectures.

    Each part is a union over the architectures that can play its role, told apart by
    ``architecture``; each variant's ``config`` is that architecture's own model, so the
    schema lists every field an architecture accepts. Checks across fields (heads that
    divide the width, token ids below the vocabulary) are beyond JSON Schema; only
    :func:`load_config` makes them.
    """
    from .registry import default_registry

    schema = _schema_model(registry or default_registry()).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "seqweave composition config"
    return schema


# ----------------------------------------------------------------------------------------
# Walking the format by dotted path (typed overrides, unknown-key hints)


def _model_at(
    path: Sequence[str], data: Any, registry: Registry | None, root: type[BaseModel] | None = None
) -> type[BaseModel] | None:
    """The pydantic model whose fields live at ``path`` under ``root`` (a composition by default), or None."""
    from .registry import default_registry

    model: type[BaseModel] | None = root or CompositionConfig
    for i, key in enumerate(path):
        if model is None:
            return None
        if model is PartConfig and key == "config":
            arch_name = (
                (data or {}).get(path[i - 1], {}).get("architecture") if isinstance(data, dict) else None
            )
            reg = registry or default_registry()
            model = reg.get(arch_name).config if isinstance(arch_name, str) and arch_name in reg else None
            continue
        field = model.model_fields.get(key)
        sub = field.annotation if field is not None else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return model


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"


def _did_you_mean(loc: list[str], root: type[BaseModel], data: Any, registry: Registry | None) -> str:
    model = _model_at(loc[:-1], data, registry, root)
    return _suggest(loc[-1], model.model_fields) if model is not None and loc else ""


def _accepts_only_text(annotation: Any) -> bool:
    """True when a field's type is ``str`` (or a literal of strings), optionally ``None``."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (Union, types.UnionType)
        else (annotation,)
    )
    scalars = [a for a in args if a is not type(None)]
    if not scalars:
        return False
    return all(
        a is str or (typing.get_origin(a) is Literal and all(isinstance(v, str) for v in typing.get_args(a)))
        for a in scalars
    )


def _parse_override(override: str, data: dict[str, Any], source: str, registry: Registry | None) -> None:
    import yaml

    key, sep, raw = override.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"{source}: override {override!r} must look like key.sub=value")
    model = _model_at(parts[:-1], data, registry)
    field = model.model_fields.get(parts[-1]) if model is not None else None
    if field is not None and _accepts_only_text(field.annotation):
        # Typed by the schema: a text field keeps the text as written ("123", "yes", "null" if
        # None is not allowed), so hub ids and revisions that look like numbers survive.
        allows_none = not field.is_required() and field.default is None
        value: Any = None if allows_none and raw.strip() in ("null", "~", "") else raw
    else:
        # Everything else is parsed as a YAML flow value (safe loader): numbers, booleans,
        # null and lists get their types; validation then checks them against the schema.
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"{source}: override {override!r}: value is not valid: {_one_line(e)}"
            ) from None
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {override!r}: {p} is not a mapping")
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------------------
# Reading files


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _yaml_error(path: Path, e: Exception) -> ConfigError:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or _one_line(e)
    if "python/" in problem:
        problem += "; python tags are not allowed: configs are read with yaml.safe_load and never run code"
    return ConfigError(f"{where}: not valid YAML: {problem}")


def _read_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)  # safe: python/object tags are errors, no code runs
        except yaml.YAMLError as e:
            raise _yaml_error(path, e) from None
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {_one_line(e)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {_one_line(e)}") from None


def _relative_to(base: Path, value: str | None) -> str | None:
    """A path written in a config file means relative to that file; hub ids stay as they are."""
    if value is None:
        return None
    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and (base / candidate).exists():
        return str(base / candidate)
    return value


def _unshared(value: Any) -> Any:
    """A copy in which no two places are one object: YAML anchors (``*tiny``) alias their target,
    and an override of ``encoder.config`` must not change ``decoder.config`` too."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def load_config(
    source: str | Path | Mapping[str, Any] | CompositionConfig,
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
) -> CompositionConfig:
    """Read a composition config from a file, a dict or a config, applying ``key.sub=value`` overrides.

    Overrides are typed by the schema: ``decoder.config.num_hidden_layers=2`` sets an
    int, ``tokenizer=123`` a string. Paths in a file (``pretrained``, ``tokenizer``) are
    relative to the file's folder when something exists there.

    Raises:
        ConfigError: the file is missing or malformed, or a field is invalid; the message
            names the file, the dotted location and the value, one line per problem.
    """
    base: Path | None = None
    if isinstance(source, CompositionConfig):
        data: Any = source.model_dump()
        name = "config"
    elif isinstance(source, Mapping):
        data = dict(source)  # copied below, so that overrides never edit the caller's mapping
        name = "config"
    else:
        path = Path(source)
        data = _read_file(path)
        name, base = str(path), path.parent
    data = _unshared(data)
    if data is None:
        raise ConfigError(f"{name}: the file is empty; expected a mapping with encoder: and decoder:")
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, found {type(data).__name__}")
    for o in overrides:
        _parse_override(o, data, name, registry)
    from .registry import default_registry

    registry = registry or default_registry()
    # Parts are checked on their own here, so that one run reports every problem of the file.
    lines = [f"{name}: {loc}: {msg}{_shown(value)}" for loc, msg, value in _part_problems(data, registry)]
    try:
        cfg = CompositionConfig.model_validate(data, context={"registry": registry, "check_parts": False})
    except ValidationError as e:
        lines[:0] = format_validation_error(e, name, data=data, registry=registry).splitlines()
    if lines:
        raise ConfigError("\n".join(lines))
    if base is not None:
        for part in (cfg.encoder, cfg.decoder):
            part.pretrained = _relative_to(base, part.pretrained)
        cfg.tokenizer = _relative_to(base, cfg.tokenizer)
        cfg.decoder_tokenizer = _relative_to(base, cfg.decoder_tokenizer)
    return cfg
