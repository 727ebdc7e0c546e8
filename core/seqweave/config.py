"""Configuration models: the composition file format and the base of every architecture's config.

A composition file (YAML, TOML or JSON) is read into :class:`CompositionConfig`. Each
part's ``config:`` block is validated by the pydantic model its architecture's plugin
contributes, so errors name the exact field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from .errors import ConfigError

__all__ = [
    "ArchitectureConfig",
    "CompositionConfig",
    "GenerationSettings",
    "PartConfig",
    "format_validation_error",
    "load_config",
]


def format_validation_error(e: ValidationError, source: str) -> str:
    """One line per problem: ``source: dotted.location: message (got value)``."""
    lines = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


class ArchitectureConfig(BaseModel):
    """Base of every architecture's config model.

    Fields carry the Hugging Face names of that ``model_type``. Subclasses must provide
    (as fields or properties) ``hidden_size``, ``vocab_size``, ``initializer_range`` and
    ``tie_word_embeddings``. Unknown keys are errors: fields of a checkpoint's
    ``config.json`` that a model does not know are kept aside by the loader and written
    back on save instead.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class GenerationSettings(BaseModel):
    """Defaults for :meth:`seqweave.EncoderDecoder.generate` (the config file's ``generation:`` block)."""

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


class PartConfig(BaseModel):
    """One side of the composition: an architecture, optionally warm-started from a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(description="A registered architecture name (`seqweave plugins` lists them).")
    pretrained: str | None = Field(None, description="Hub id or local folder to load weights from.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The architecture's own fields (Hugging Face names); override the checkpoint's."
    )

    @model_validator(mode="after")
    def _check_architecture(self, info: ValidationInfo) -> PartConfig:
        from .registry import default_registry

        registry = (info.context or {}).get("registry") or default_registry()
        arch = registry.get(self.architecture)  # ConfigError lists the registered names
        try:
            arch.config.model_validate(self.config)
        except ValidationError as e:
            # Re-raise with locations under this part's ``config``, as pydantic would report them.
            msgs = [f"config.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors(include_url=False)]
            raise ValueError("; ".join(msgs)) from None
        return self


class CompositionConfig(BaseModel):
    """A whole encoder-decoder composition (DESIGN.md section 3)."""

    model_config = ConfigDict(extra="forbid")

    encoder: PartConfig
    decoder: PartConfig
    decoder_start_token_id: int | None = Field(None, ge=0, description="First token of every decoder input.")
    pad_token_id: int | None = Field(None, ge=0, description="Padding token; -100 labels become this.")
    eos_token_id: int | list[int] | None = Field(None, description="End-of-sequence token id(s).")
    tie_encoder_decoder: bool = Field(False, description="Share encoder and decoder weights where shapes match.")
    tokenizer: str | None = Field(None, description="Folder or hub id with tokenizer files.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)  # safe: no python/object tags, no code runs
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except Exception as e:  # each parser has its own error types; all mean "not valid syntax"
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")


def _apply_override(data: dict[str, Any], override: str, source: str) -> None:
    import yaml

    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: override {override!r} must look like key.sub=value")
    # The value is parsed as a YAML scalar/flow value (safe loader), so numbers, booleans,
    # null and lists get their types; the schema then checks them.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: override {override!r}: value is not valid: {e}") from None
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {override!r}: {p} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_config(
    source: str | Path | Mapping[str, Any] | CompositionConfig,
    overrides: Sequence[str] = (),
    *,
    registry: Any = None,
) -> CompositionConfig:
    """Read a composition config from a file, a dict or a config, applying ``key.sub=value`` overrides.

    Raises:
        ConfigError: the file is missing or malformed, or a field is invalid; the message
            names the file, the dotted location and the value.
    """
    if isinstance(source, CompositionConfig):
        data: Any = source.model_dump()
        name = "config"
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source))  # a deep copy that overrides may edit
        name = "config"
    else:
        path = Path(source)
        data = _read_file(path)
        name = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, found {type(data).__name__}")
    for o in overrides:
        _apply_override(data, o, name)
    try:
        return CompositionConfig.model_validate(data, context={"registry": registry})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, name)) from None
