"""Tiny random models and inputs for the contract checks (no pytest, no network)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint.load import on_meta
from ..registry import Architecture, Role
from ..weights import WeightMap, load_module_weights

__all__ = ["build_tiny", "load_hf_state_dict", "pad_id", "randomize", "source_states", "tokens"]


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Give every parameter a visible random value (default inits make logits too small to compare).

    Norm scales (1-d ``weight``) become ``1 + noise``; everything else ``noise``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype) * std
            is_norm_scale = name.endswith("weight") and p.dim() == 1
            p.copy_(1.0 + noise if is_norm_scale else noise)
    return model


def build_tiny(arch: Architecture, role: Role, seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomized module of ``arch``'s ``tiny_config`` (plus ``overrides``) for ``role``, in eval mode."""
    cfg = arch.make_config({**arch.tiny_config, **overrides}, source=f"{arch.name}.tiny_config")
    return randomize(arch.build_module(cfg, role), seed).eval()


def pad_id(module: nn.Module) -> int:
    """A token id to pad with: the config's pad token, or 0 when it has none (GPT-2)."""
    pad = getattr(module.config, "pad_token_id", None)
    return 0 if pad is None else pad


def tokens(module: nn.Module, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Random ids [b, t] that avoid the pad token and low special ids: padding is only where we put it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, module.config.vocab_size - 1, shape, generator=g)
    return ids.masked_fill(ids == pad_id(module), 3)


def source_states(decoder: nn.Module, b: int, s: int, seed: int = 5) -> torch.Tensor:
    """Random encoder states [b, s, d_src] of the width the decoder's cross-attention takes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, decoder.cross_attention_hidden_size, generator=g)


def load_hf_state_dict(
    arch: Architecture, role: Role, config: Any, state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[nn.Module, WeightMap]:
    """Build ``arch`` on ``meta`` and load a Hugging Face state dict through its weight map.

    Raises:
        AssertionError: the map needs a tensor the state dict lacks, or leaves one unused
            that no ``ignore`` pattern covers.
    """
    with on_meta():
        module = arch.build_module(config, role)
    wmap = arch.weight_map(config, role)
    sd = {k: v.detach().clone() for k, v in state_dict.items()}
    ours, missing, unexpected = wmap.from_hf(wmap.normalize_prefix(sd))
    assert not missing, f"the weight map needs tensors the checkpoint lacks: {[r.hf for r in missing]}"
    assert not unexpected, f"checkpoint tensors that no rule uses and no ignore pattern covers: {unexpected}"
    load_module_weights(module, ours, source=source, weight_map=wmap)
    return module.eval(), wmap
