"""Hugging Face ``config.json`` to our configs and back.

A single-model ``config.json`` (``model_type: bert``) becomes a :class:`PartSpec`: the
registered architecture, its validated config, and the fields we carry but do not use
(written back on save). A composite's (``model_type: encoder-decoder``) holds two such
objects under ``encoder`` and ``decoder`` and the composition's own fields at the top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..config import GenerationSettings
from ..errors import CheckpointError, ConfigError
from ..registry import Architecture, Registry, Role
from ..weights import WeightMap, rule
from .jsonio import CONFIG_JSON, GENERATION_CONFIG_JSON, read_json

__all__ = [
    "COMPOSITE_MODEL_TYPE",
    "CONFIG_JSON",
    "ROLE_FIELDS",
    "TOKEN_FIELDS",
    "TOP_FIELDS",
    "PartSpec",
    "architecture_of",
    "composite_config",
    "dtype_of",
    "generation_config",
    "hf_config",
    "part_of",
    "read_generation_config",
    "split_hf_config",
    "weight_map_of",
]

#: Fields of a part's config.json that say which role it plays; the composer sets them.
ROLE_FIELDS = ("is_decoder", "add_cross_attention")
COMPOSITE_MODEL_TYPE = "encoder-decoder"
#: The composition's token ids, at the top of a composite's config.json and in generation_config.json.
TOKEN_FIELDS = ("decoder_start_token_id", "pad_token_id", "eos_token_id")
#: Top-level fields of a composite's config.json that we read or write ourselves; the rest is carried.
TOP_FIELDS = frozenset({"encoder", "decoder", "model_type", "is_encoder_decoder", "architectures",
                        *TOKEN_FIELDS, "tie_encoder_decoder", "dtype", "seqweave_version",
                        "transformers_version"})


@dataclass
class PartSpec:
    """A part's architecture, config and the config.json fields we carry but do not use."""

    arch: Architecture
    config: Any
    extra: dict[str, Any] = field(default_factory=dict)


def architecture_of(data: Mapping[str, Any], where: str, registry: Registry) -> Architecture:
    """The registered architecture a ``config.json`` object's ``model_type`` names.

    Raises:
        CheckpointError: no ``model_type``, or one that no plugin registers (the message lists them).
    """
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{where}: no model_type field, so the architecture is unknown")
    if model_type not in registry:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not a registered architecture; "
            f"registered: {', '.join(registry.names()) or 'none'} (see `seqweave plugins`)"
        )
    return registry.get(model_type)


def split_hf_config(
    arch: Architecture, data: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None
) -> PartSpec:
    """A single-model ``config.json`` object as our config (with ``overrides``) and the fields carried aside.

    Raises:
        ConfigError: a field is invalid for the architecture; the message names ``source`` and the field.
    """
    known = arch.config.model_fields
    values = {k: v for k, v in data.items() if k in known}
    extra = {k: v for k, v in data.items() if k not in known and k not in ROLE_FIELDS and k != "model_type"}
    config = arch.make_config(values, source=source)
    if overrides:
        config = arch.make_config({**config.model_dump(), **overrides}, source=source)
    return PartSpec(arch, config, extra)


def composite_config(
    data: Mapping[str, Any], where: str, registry: Registry
) -> tuple[dict[str, PartSpec], dict[str, Any], dict[str, Any]]:
    """A composite ``config.json``: its two parts, the model's arguments and the top-level fields carried.

    Returns:
        The parts by role; ``decoder_start_token_id``, ``pad_token_id``, ``eos_token_id`` and
        ``tie_encoder_decoder`` as keyword arguments of the model; the unknown top-level fields.

    Raises:
        CheckpointError: not a composite (the message points to ``from_pretrained_parts``), a
            part object missing, an unregistered architecture, or a ``tie_encoder_decoder`` that
            is not a JSON boolean.
    """
    if data.get("model_type") != COMPOSITE_MODEL_TYPE:
        raise CheckpointError(
            f"{where}: model_type is {data.get('model_type')!r}, not {COMPOSITE_MODEL_TYPE!r}; "
            "to warm-start from single-model checkpoints use EncoderDecoder.from_pretrained_parts"
        )
    parts: dict[str, PartSpec] = {}
    for role in ("encoder", "decoder"):
        sub = data.get(role)
        if not isinstance(sub, dict):
            raise CheckpointError(f"{where}: no {role!r} object")
        source = f"{where}: {role}"
        parts[role] = split_hf_config(architecture_of(sub, source, registry), sub, source)
    kwargs = {k: data.get(k) for k in TOKEN_FIELDS}
    tie = data.get("tie_encoder_decoder", False)
    if tie is not None and not isinstance(tie, bool):  # bool("false") is True: a string must not tie weights
        raise CheckpointError(f"{where}: tie_encoder_decoder must be true or false, found {tie!r}")
    kwargs["tie_encoder_decoder"] = bool(tie)
    return parts, kwargs, {k: v for k, v in data.items() if k not in TOP_FIELDS}


def part_of(model: nn.Module, role: Role) -> PartSpec:
    """The architecture, config and carried fields of ``model``'s encoder or decoder.

    Raises:
        ConfigError: the part was not built from a registered architecture, so it has no
            Hugging Face layout.
    """
    module = getattr(model, role)
    arch = getattr(module, "seqweave_architecture", None)
    if arch is None or getattr(module, "config", None) is None:
        raise ConfigError(
            f"the {role} ({type(module).__name__}) was not built from a registered architecture, so it has "
            f"no Hugging Face layout to save in; build it with seqweave.build_{role}(...)"
        )
    return PartSpec(arch, module.config, model.hf_extra[role])


def weight_map_of(model: nn.Module) -> WeightMap:
    """The two-way map between an :class:`~seqweave.EncoderDecoder`'s state dict and the composite layout."""
    enc, dec = part_of(model, "encoder"), part_of(model, "decoder")
    wmap = enc.arch.weight_map(enc.config, "encoder").prefixed("encoder.", "encoder.")
    wmap = wmap + dec.arch.weight_map(dec.config, "decoder").prefixed("decoder.", "decoder.")
    if model.enc_to_dec_proj is not None:
        wmap = wmap + WeightMap((rule("enc_to_dec_proj.weight"), rule("enc_to_dec_proj.bias")))
    # A module the composite does not use may have been left out at loading (BERT's pooler, absent
    # from the checkpoint): its rules have nothing to save.
    present = set(model.state_dict())
    return replace(wmap, rules=tuple(r for r in wmap.rules if r.ours in present))


def hf_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` transformers' ``EncoderDecoderModel`` reads, for an ``EncoderDecoder``."""
    parts = {}
    for role in ("encoder", "decoder"):
        p = part_of(model, role)
        parts[role] = {
            **p.extra,
            **p.config.model_dump(mode="json"),
            "model_type": p.arch.name,
            "is_decoder": role == "decoder",
            "add_cross_attention": role == "decoder",
        }
    dtype = next(model.parameters()).dtype
    return {
        **model.hf_extra["top"],
        "architectures": ["EncoderDecoderModel"],
        "model_type": COMPOSITE_MODEL_TYPE,
        "is_encoder_decoder": True,
        "encoder": parts["encoder"],
        "decoder": parts["decoder"],
        **{k: getattr(model, k) for k in TOKEN_FIELDS},
        "tie_encoder_decoder": model.tie_encoder_decoder,
        "dtype": str(dtype).removeprefix("torch."),
        "seqweave_version": __version__,
    }


def generation_config(model: nn.Module) -> dict[str, Any]:
    """The ``generation_config.json`` we write: the generation defaults and the token ids."""
    return {**model.generation_settings.model_dump(), **{k: getattr(model, k) for k in TOKEN_FIELDS}}


def read_generation_config(model: nn.Module, folder: Path, legacy: Mapping[str, Any] | None = None) -> None:
    """Take generation defaults, and token ids the model lacks, from ``folder``'s generation_config.json.

    Without that file, the generation fields of ``legacy`` (the composite's ``config.json``) are
    read instead, as transformers' ``GenerationConfig.from_model_config`` does: checkpoints saved
    before transformers 4.27 keep ``num_beams``, ``max_length``, ``no_repeat_ngram_size``... at
    the top level, and the decoder's object fills the fields the top level leaves unset (token
    ids excepted: those stay the composite's own). ``max_length`` / ``min_length`` count the start
    token, as transformers counts them (see :class:`~seqweave.GenerationSettings`).

    Fields transformers writes that we do not know are skipped; an absent file changes nothing.

    Raises:
        CheckpointError: the file is not valid JSON, or a known field's value is invalid.
    """
    path = folder / GENERATION_CONFIG_JSON
    data = read_json(path, missing_ok=True)
    if not path.is_file() and legacy:
        path = folder / CONFIG_JSON
        decoder = legacy.get("decoder") if isinstance(legacy.get("decoder"), dict) else {}
        data = {k: v for k, v in legacy.items() if v is not None and k not in ("encoder", "decoder")}
        data.update({k: v for k, v in decoder.items() if k not in data and k not in TOKEN_FIELDS
                     and v is not None})
    if not data:
        return
    # The token ids stay the model's own (filled below when unset), not generation overrides of them.
    known = GenerationSettings.model_fields.keys() - TOKEN_FIELDS
    values = {k: v for k, v in data.items() if k in known and v is not None}
    try:
        model.generation_settings = GenerationSettings.model_validate(
            {**model.generation_settings.model_dump(), **values}
        )
    except Exception as e:
        raise CheckpointError(f"{path}: {e}") from None
    for key in TOKEN_FIELDS:
        if getattr(model, key) is None and data.get(key) is not None:
            setattr(model, key, data[key])


def dtype_of(checkpoints: list[Mapping[str, torch.Tensor]]) -> torch.dtype:
    """The dtype of the first floating tensor of the checkpoints (the default dtype when there is none)."""
    return next((t.dtype for sd in checkpoints for t in sd.values() if t.is_floating_point()),
                torch.get_default_dtype())

