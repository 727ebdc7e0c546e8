"""Assembling a composition: parts of registered architectures built at random, protocol checks,
encoder and decoder weights shared, and labels shifted into decoder inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry, Role, default_registry
from .weights import init_weights

__all__ = ["build_decoder", "build_encoder", "check_parts", "shift_tokens_right", "tie_encoder_to_decoder"]


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """Decoder inputs from labels [b, t]: start token first, labels shifted right, -100 turned into pad."""
    if decoder_start_token_id is None:
        raise ConfigError("decoder_start_token_id is not set: pass it to the model or set it in the config")
    if pad_token_id is None:
        raise ConfigError("pad_token_id is not set: pass it to the model or set it in the config")
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


def build_encoder(architecture: str, *, registry: Registry | None = None, **config: Any) -> nn.Module:
    """A randomly initialised encoder of a registered architecture, e.g. ``build_encoder("bert", hidden_size=256)``."""
    return _build(architecture, "encoder", config, registry)


def build_decoder(architecture: str, *, registry: Registry | None = None, **config: Any) -> nn.Module:
    """A randomly initialised decoder (with cross-attention) of a registered architecture."""
    return _build(architecture, "decoder", config, registry)


def _build(name: str, role: Role, values: Mapping[str, Any], registry: Registry | None) -> nn.Module:
    arch = (registry or default_registry()).get(name)
    module = arch.build_module(arch.make_config(values, source=f"{role} config ({name})"), role)
    init_weights(module, module.config.initializer_range)
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    return module


def check_parts(encoder: nn.Module, decoder: nn.Module) -> None:
    """Raise :class:`ConfigError` naming what an encoder or decoder lacks of its protocol."""
    for role, module, attrs in (
        ("encoder", encoder, ("hidden_size",)),
        ("decoder", decoder, ("hidden_size", "vocab_size", "cross_attention_hidden_size", "num_layers")),
    ):
        lacking = [a for a in attrs if not hasattr(module, a)]
        if lacking or not callable(module):
            raise ConfigError(f"the {role} ({type(module).__name__}) lacks {', '.join(lacking) or '__call__'}; "
                              f"see the seqweave.{role.capitalize()} protocol")


def tie_encoder_to_decoder(encoder: nn.Module, decoder: nn.Module) -> list[str]:
    """Point encoder modules' parameters at the same-named decoder modules' ones; return the names tied.

    Raises :class:`ConfigError` when no module can be shared.

    A module is shared when the decoder has a module of the same name whose own
    parameters have the same names and shapes: a Linear's weight and bias go together,
    so a pair of different widths never ends up with only its biases shared. The
    encoder's attribute is pointed at the decoder's parameter, as transformers 4.x's
    ``_tie_encoder_decoder_weights`` did, so the decoder's values win when both are
    loaded and the decoder's own ties (head to embeddings) stay intact.
    """
    decoder_modules = dict(decoder.named_modules())
    tied = []
    for name, module in encoder.named_modules():
        ours = dict(module.named_parameters(recurse=False))
        other = decoder_modules.get(name)
        if not ours or other is None:
            continue
        theirs = dict(other.named_parameters(recurse=False))
        if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
            continue
        for leaf, p in theirs.items():
            if ours[leaf] is not p:
                setattr(module, leaf, p)
            tied.append(f"{name}.{leaf}" if name else leaf)
    if not tied:
        raise ConfigError(
            "tie_encoder_decoder is set, but no encoder module has a decoder counterpart with parameters "
            "of the same names and shapes "
            f"(encoder hidden size {encoder.hidden_size}, decoder {decoder.hidden_size})"
        )
    return tied
