"""Composition files: reading them, ``key.sub=value`` overrides, the checks against the registered
architectures, and the JSON Schema of the format.

This module sits above the registry; the models it fills (:class:`~seqweave.CompositionConfig`
and its parts) live in :mod:`seqweave.config`, below it. Importing this module installs the
registry check as :attr:`CompositionConfig.part_checker`, so that
``CompositionConfig.model_validate(data)`` is as strict as :func:`load_config`.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import torch
from pydantic import BaseModel, Field, ValidationError
from torch import nn

from .checkpoint import load
from .checkpoint.jsonio import DuplicateKey, no_duplicate_keys
from .config import (
    _NO_VALUE,
    CONFIG_SUFFIXES,
    CompositionConfig,
    FieldError,
    PartConfig,
    PartConfigOf,
    _message,
    _model_at,
    _shown,
    _suggest,
    check_token_ids,
    format_validation_error,
    token_id_problems,
)
from .errors import ConfigError
from .registry import Registry, default_registry

__all__ = ["CONFIG_SUFFIXES", "compose", "composition_json_schema", "load_config"]


def _part_config_of(registry: Registry | None) -> PartConfigOf:
    """An architecture name's config model in ``registry`` (the installed plugins by default), or None."""

    def lookup(name: str) -> type[BaseModel] | None:
        reg = registry or default_registry()
        return reg.get(name).config if name in reg else None

    return lookup


# ----------------------------------------------------------------------------------------
# The parts against the registry


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
    problems += token_id_problems(data, vocab_size)
    generation = data.get("generation")
    if isinstance(generation, Mapping):
        problems += token_id_problems(generation, vocab_size, prefix="generation.")
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
    schema = _schema_model(registry or default_registry()).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "seqweave composition config"
    return schema


# ----------------------------------------------------------------------------------------
# Typed overrides


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


_OVERRIDE_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _parse_override(override: str, data: dict[str, Any], source: str, registry: Registry | None) -> None:
    import yaml

    key, sep, raw = override.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"{source}: override {override!r} must look like key.sub=value")
    model = _model_at(parts[:-1], data, _part_config_of(registry))
    field = model.model_fields.get(parts[-1]) if model is not None else None
    if field is not None and _accepts_only_text(field.annotation):
        # Typed by the schema: a text field keeps the text as written ("123", "yes", "null" if
        # None is not allowed), so hub ids and revisions that look like numbers survive.
        allows_none = not field.is_required() and field.default is None
        value: Any = None if allows_none and raw.strip() in ("null", "~", "") else raw
    elif field is not None and field.annotation in (bool, "bool") and raw.strip().lower() in _OVERRIDE_BOOLS:
        # A boolean field on the command line takes the usual words (yes/no/on/off too); in a
        # file, and in any other field, those words are text (see :func:`_yaml_loader`).
        value = _OVERRIDE_BOOLS[raw.strip().lower()]
    else:
        # Everything else is parsed as a YAML flow value (safe loader): numbers, booleans,
        # null and lists get their types; validation then checks them against the schema.
        try:
            value = _yaml_load(raw, source) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError) as e:
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


# A config file is a few KB of settings: these bounds are far above any real one and keep a
# hostile file (a YAML "billion laughs" of aliases, thousands of nested brackets) to milliseconds.
MAX_NODES = 100_000
MAX_DEPTH = 100

_YAML_BOOL = "tag:yaml.org,2002:bool"
_YAML_INT = "tag:yaml.org,2002:int"
_YAML_FLOAT = "tag:yaml.org,2002:float"
_yaml_loader_class: Any = None


def _yaml_loader() -> Any:
    """A ``yaml.SafeLoader`` that reads like YAML 1.2 where 1.1 surprises: only ``true``/``false``
    are booleans (``yes``, ``no``, ``on``, ``off`` stay text, so an int field rejects them); numbers
    are the core schema's (``010`` is ten, ``1:30`` and ``1_000`` are text, ``1e-5`` is a float); and
    a key written twice in one mapping is an error instead of "last one wins"."""
    global _yaml_loader_class
    if _yaml_loader_class is not None:
        return _yaml_loader_class
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node: Any) -> int:
            # YAML 1.2: 010 is ten (1.1 reads eight), 0o17 octal, 0x1f hexadecimal
            text = self.construct_scalar(node)
            sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
            base = {"0x": 16, "0o": 8}.get(digits[:2], 10)
            return sign * int(digits[2:] if base != 10 else digits, base)

    Loader.add_constructor(_YAML_INT, Loader.construct_yaml_int)
    replaced = (_YAML_BOOL, _YAML_INT, _YAML_FLOAT)
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    # YAML 1.2's core schema: no sexagesimal 1:30 (5400 in 1.1), no 1_000, and 1e-5 is a number
    # (in 1.1 a float needs a dot, so 1e-5 is text).
    Loader.add_implicit_resolver(
        _YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    Loader.add_implicit_resolver(
        _YAML_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
    )
    Loader.add_implicit_resolver(
        _YAML_FLOAT,
        re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+.0123456789"),
    )
    _yaml_loader_class = Loader
    return Loader


def _bounds_error(where: str, what: str) -> ConfigError:
    if what == "size":
        return ConfigError(
            f"{where}: refusing to read a config with more than {MAX_NODES:,} values "
            "(after expanding YAML aliases)"
        )
    return ConfigError(f"{where}: refusing to read a config nested deeper than {MAX_DEPTH} levels")


def _check_yaml_node(node: Any, where: str) -> None:
    """Counts the nodes of a composed YAML document as construction would copy them (each alias
    as many times as it is used), stopping at the bounds: linear in the bound, not in the expansion."""
    import yaml

    count, stack = 0, [(node, 1)]
    while stack:
        n, depth = stack.pop()
        count += 1
        mark = f"{where}:{n.start_mark.line + 1}"
        if count > MAX_NODES:
            raise _bounds_error(mark, "size")
        if depth > MAX_DEPTH:
            raise _bounds_error(mark, "depth")
        if isinstance(n, yaml.SequenceNode):
            stack.extend((c, depth + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend(((k, depth + 1), (v, depth + 1)))


def _check_data(data: Any, where: str) -> None:
    """The same bounds on data already read (JSON, TOML, a mapping given in Python)."""
    count, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _bounds_error(where, "size")
        if depth > MAX_DEPTH:
            raise _bounds_error(where, "depth")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _yaml_load(text: str, where: str) -> Any:
    """One YAML document read with :func:`_yaml_loader`, within the bounds.

    Raises:
        ConfigError: too deep or too large once aliases are expanded.
        yaml.YAMLError: not valid YAML (the caller adds the file's name).
    """
    import yaml

    # The composer recurses once per level: count the levels on the (iterative) parser's events
    # first, so that thousands of brackets are refused in milliseconds, not by a RecursionError.
    depth, events = 0, _yaml_loader()(text)
    try:
        while events.check_event():
            event = events.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _bounds_error(f"{where}:{event.start_mark.line + 1}", "depth")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        events.dispose()
    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_node(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _json_duplicate_line(text: str, key: str) -> str:
    """Where a JSON key is written the second time (the first match that repeats an earlier one)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    matches = list(pattern.finditer(text))
    if len(matches) < 2:
        return ""
    return f":{text.count(chr(10), 0, matches[1].start()) + 1}"


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
    too_deep = ConfigError(f"{path}: refusing to read a config nested deeper than {MAX_DEPTH} levels")
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return _yaml_load(text, str(path))  # safe loader: python/object tags are errors, no code runs
        except yaml.YAMLError as e:
            raise _yaml_error(path, e) from None
        except RecursionError:
            raise too_deep from None
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {_one_line(e)}") from None
        except RecursionError:
            raise too_deep from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=no_duplicate_keys)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {_one_line(e)}") from None
        except DuplicateKey as e:
            raise ConfigError(
                f"{path}{_json_duplicate_line(text, e.key)}: not valid JSON: duplicate key {e.key!r}"
            ) from None
        except RecursionError:
            raise too_deep from None
    _check_data(data, str(path))
    return data


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
    relative to the file's folder when something exists there; ``train.data`` files always are.

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
        _check_data(data, name)
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
    registry = registry or default_registry()
    # Parts are checked on their own here, so that one run reports every problem of the file.
    lines = [f"{name}: {loc}: {msg}{_shown(value)}" for loc, msg, value in _part_problems(data, registry)]
    try:
        cfg = CompositionConfig.model_validate(data, context={"registry": registry, "check_parts": False})
    except ValidationError as e:
        hints = _part_config_of(registry)
        lines[:0] = format_validation_error(e, name, data=data, part_config=hints).splitlines()
    if lines:
        raise ConfigError("\n".join(lines))
    if base is not None:
        for part in (cfg.encoder, cfg.decoder):
            part.pretrained = _relative_to(base, part.pretrained)
        cfg.tokenizer = _relative_to(base, cfg.tokenizer)
        cfg.decoder_tokenizer = _relative_to(base, cfg.decoder_tokenizer)
        if cfg.train is not None:  # data files are never hub ids: always relative to the file
            cfg.train.data = cfg.train.data.resolved(base)
    return cfg


CompositionConfig.part_checker = lambda data, registry: _part_problems(data, registry or default_registry())


def compose(
    factory: Callable[..., nn.Module],
    config: CompositionConfig | Mapping[str, Any] | str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    registry: Registry,
    dtype: torch.dtype | None,
    device: torch.device | str,
) -> nn.Module:
    """``factory(encoder, decoder, ...)`` as a composition config describes it (see ``EncoderDecoder.from_config``).

    Pretrained parts are loaded, the rest initialised; the token ids are checked against the
    decoder's vocabulary, which :func:`load_config` knows only when no checkpoint is needed for it.
    """
    cfg = load_config(config, overrides, registry=registry)
    fields = cfg.model_dump(include={"decoder_start_token_id", "pad_token_id", "eos_token_id",
                                     "tie_encoder_decoder", "tokenizer", "decoder_tokenizer"})
    model = load.load_composition(factory, {"encoder": cfg.encoder, "decoder": cfg.decoder}, registry,
                                  dtype=dtype, device=device, generation=cfg.generation, **fields)
    source = str(config) if isinstance(config, (str, os.PathLike)) else None
    check_token_ids(cfg.model_dump(), model.decoder.vocab_size, source)
    check_token_ids(cfg.generation.model_dump(), model.decoder.vocab_size, source, prefix="generation.")
    return model
