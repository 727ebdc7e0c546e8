"""The GPT-2 plugin: GPT-2 as decoder (``GPT2LMHeadModel``) and as encoder (``GPT2Model``).

GPT-2 is pre-LayerNorm with a final ``ln_f``, learned absolute positions, no token
types, and a plain LM head tied to ``wte``. All of it is the core's shared blocks set up
from the config; the rest of this module is config translation and the weight map.

Checkpoint layout: transformers' ``Conv1D`` stores weights as ``[in, out]``, so every
weight is transposed on the way in and back on the way out. Self-attention's fused
``c_attn`` [d, 3d] is our fused ``qkv_proj`` after the transpose; cross-attention's
``q_attn`` [d, d] and ``c_attn`` [d, 2d] (keys and values of the encoder states) are our
``q_proj`` and ``kv_proj``. A plain GPT-2 checkpoint has no cross-attention: those
tensors are created when it warm-starts a decoder.

``reorder_and_upcast_attn`` is implemented as the core attention's ``upcast``: scores,
softmax and the weighted sum in float32 for half-precision inputs (a no-op in float32,
where transformers' default SDPA attention ignores the option too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import seqweave as sw
from pydantic import Field, model_validator
from seqweave.modules import (
    ACTIVATIONS,
    Embeddings,
    LMHead,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLayer,
    WeightMap,
    conv1d_rules,
    pair_rules,
    prefixed,
    rule,
)
from torch import nn

__all__ = ["GPT2", "GPT2Config", "seqweave_register_architectures"]

#: transformers' ``GPT2Config.attribute_map``: generic names accepted for GPT-2's own.
ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


class GPT2Config(sw.ArchitectureConfig):
    """GPT-2's fields, with the names and defaults of transformers' ``GPT2Config``.

    The generic names ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` and
    ``max_position_embeddings`` are accepted on input (transformers' ``attribute_map``) and
    readable as properties; they are stored and saved under GPT-2's names.
    """

    vocab_size: int = Field(50257, ge=1, description="Rows of the token embedding table (wte).")
    n_positions: int = Field(1024, ge=1, description="Rows of the position table (wpe): the longest input.")
    n_embd: int = Field(768, ge=1, description="Model width.")
    n_layer: int = Field(12, ge=0, description="Number of transformer blocks.")
    n_head: int = Field(12, ge=1, description="Attention heads; must divide n_embd.")
    n_inner: int | None = Field(None, ge=1, description="Feed-forward width; None means 4 * n_embd.")
    activation_function: str = Field(
        "gelu_new", description=f"Feed-forward activation: one of {', '.join(sorted(ACTIVATIONS))}."
    )
    resid_pdrop: float = Field(0.1, ge=0, le=1, description="Dropout on each block's residual branch.")
    embd_pdrop: float = Field(0.1, ge=0, le=1, description="Dropout on the embeddings.")
    attn_pdrop: float = Field(0.1, ge=0, le=1, description="Dropout on attention probabilities.")
    layer_norm_epsilon: float = Field(1e-5, gt=0, description="LayerNorm epsilon.")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of new weights.")
    scale_attn_weights: bool = Field(
        True, strict=True, description="Scale attention scores by 1/sqrt(head width); else by 1."
    )
    scale_attn_by_inverse_layer_idx: bool = Field(
        False, strict=True, description="Also divide layer i's attention scores by i + 1."
    )
    reorder_and_upcast_attn: bool = Field(
        False, strict=True,
        description="Compute attention in float32 for half-precision inputs (no-op in float32).",
    )
    bos_token_id: int | None = Field(
        50256, description="Beginning-of-sequence token id: generation's start token when none is set."
    )
    eos_token_id: int | list[int] | None = Field(
        50256, description="End-of-sequence token id(s); unused here."
    )
    pad_token_id: int | None = Field(
        None, description="Padding token id (GPT-2 has none by default); unused here."
    )
    tie_word_embeddings: bool = Field(True, strict=True, description="The LM head shares wte.")
    use_cache: bool = Field(
        True, strict=True, description="Kept for compatibility with transformers' config.json."
    )
    summary_type: str = Field(
        "cls_index", description="Unused here (GPT2DoubleHeadsModel); kept for compatibility."
    )
    summary_use_proj: bool = Field(True, strict=True, description="Unused here; kept for compatibility.")
    summary_activation: str | None = Field(None, description="Unused here; kept for compatibility.")
    summary_proj_to_labels: bool = Field(
        True, strict=True, description="Unused here; kept for compatibility."
    )
    summary_first_dropout: float = Field(0.1, description="Unused here; kept for compatibility.")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for generic, own in ALIASES.items():
            if generic in data:
                if own in data and data[own] != data[generic]:
                    raise ValueError(
                        f"{generic} ({data[generic]}) and {own} ({data[own]}) name the same field"
                    )
                data[own] = data.pop(generic)
        return data

    @model_validator(mode="after")
    def _check(self) -> GPT2Config:
        if self.n_embd % self.n_head:
            # FieldError: the error is reported at the field (decoder.config.n_head), with its value.
            raise sw.FieldError("n_head", f"must divide n_embd ({self.n_embd})", self.n_head)
        if self.activation_function not in ACTIVATIONS:
            raise sw.FieldError(
                "activation_function", f"must be one of {', '.join(sorted(ACTIVATIONS))}", self.activation_function
            )
        # bos/eos/pad are not checked against vocab_size here: GPT-2's modules use none of them (no
        # padding_idx), and GPT2Config's defaults (50256) stay in config.json files with smaller
        # vocabularies that transformers loads. The ids a composite uses are checked where they are
        # used (generation's options, the labels shift).
        return self

    @property
    def hidden_size(self) -> int:
        """The model width (``n_embd``)."""
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        """The number of blocks (``n_layer``)."""
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        """The number of heads (``n_head``)."""
        return self.n_head

    @property
    def max_position_embeddings(self) -> int:
        """The longest input (``n_positions``)."""
        return self.n_positions


def attention_scale(cfg: GPT2Config, layer_idx: int) -> float:
    """The factor on ``q @ k^T`` in block ``layer_idx``, as ``GPT2Attention.scaling`` computes it."""
    scale = (cfg.n_embd // cfg.n_head) ** -0.5 if cfg.scale_attn_weights else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
        scale /= float(layer_idx + 1)
    return scale


def build(cfg: GPT2Config, role: sw.Role) -> nn.Module:
    """``GPT2Model`` (encoder, causal as in transformers) or ``GPT2LMHeadModel`` with cross-attention."""
    d = cfg.n_embd
    # No padding_idx and no token-type table: given token types are embedded by wte, as in transformers.
    embeddings = Embeddings(cfg.vocab_size, d, cfg.n_positions, dropout=cfg.embd_pdrop, types_from_tokens=True)
    layers = [
        TransformerLayer(
            d,
            cfg.n_head,
            cfg.n_inner or 4 * d,
            cfg.activation_function,
            norm_first=True,
            eps=cfg.layer_norm_epsilon,
            cross_attention=role == "decoder",
            attn_scale=attention_scale(cfg, i),
            dropout=cfg.resid_pdrop,
            attn_dropout=cfg.attn_pdrop,
            attn_upcast=cfg.reorder_and_upcast_attn,
        )
        for i in range(cfg.n_layer)
    ]
    ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_epsilon)
    if role == "encoder":
        return TransformerEncoder(embeddings, layers, final_norm=ln_f, causal=True)
    head = LMHead(d, cfg.vocab_size, bias=False)
    return TransformerDecoder(
        embeddings, layers, head, final_norm=ln_f, tie_word_embeddings=cfg.tie_word_embeddings
    )


_TOP = [
    rule("embeddings.tokens.weight", "wte.weight"),
    rule("embeddings.positions.weight", "wpe.weight"),
    *pair_rules("final_norm", "ln_f"),
]
_LAYER = [
    *pair_rules("layers.{}.attn_norm", "h.{}.ln_1"),
    *conv1d_rules("layers.{}.self_attn.qkv_proj", "h.{}.attn.c_attn"),
    *conv1d_rules("layers.{}.self_attn.out_proj", "h.{}.attn.c_proj"),
    *pair_rules("layers.{}.ffn_norm", "h.{}.ln_2"),
    *conv1d_rules("layers.{}.ffn.fc_in", "h.{}.mlp.c_fc"),
    *conv1d_rules("layers.{}.ffn.fc_out", "h.{}.mlp.c_proj"),
]
# Absent from a plain GPT-2 checkpoint: created and initialised when warm-starting a decoder.
_CROSS = [
    *pair_rules("layers.{}.cross_norm", "h.{}.ln_cross_attn", new_ok=True),
    *conv1d_rules("layers.{}.cross_attn.q_proj", "h.{}.crossattention.q_attn", new_ok=True),
    *conv1d_rules("layers.{}.cross_attn.kv_proj", "h.{}.crossattention.c_attn", new_ok=True),
    *conv1d_rules("layers.{}.cross_attn.out_proj", "h.{}.crossattention.c_proj", new_ok=True),
]
#: Where GPT2LMHeadModel keeps GPT2Model; GPT2Model (and the original OpenAI files) has no prefix.
PREFIX = "transformer."
# Harmless extras: the causal-mask buffers (``bias``, ``masked_bias``) that older files carry (the original
# OpenAI conversion among them), and the heads of GPT2DoubleHeadsModel / GPT2ForSequenceClassification.
_IGNORE = [
    r"(?:.*\.)?h\.\d+\.(?:attn|crossattention)\.(?:masked_)?bias",
    r"multiple_choice_head\..*",
    r"score\..*",
]


def weight_map(cfg: GPT2Config, role: sw.Role) -> WeightMap:
    """The two-way map to ``GPT2Model`` (encoder) or ``GPT2LMHeadModel`` (decoder) names."""
    if role == "encoder":
        ignore = [*_IGNORE, r"lm_head\..*"]
        return WeightMap.build(_TOP, _LAYER, cfg.n_layer, ignore=ignore, base_prefix=PREFIX)
    ignore = list(_IGNORE)
    top = prefixed(_TOP, PREFIX)
    if cfg.tie_word_embeddings:
        ignore.append(r"lm_head\.weight")  # the tied copy some checkpoints store
    else:
        top.append(rule("head.proj.weight", "lm_head.weight", new_ok=True))
    return WeightMap.build(
        top, prefixed(_LAYER + _CROSS, PREFIX), cfg.n_layer, ignore=ignore, base_prefix=PREFIX
    )


GPT2 = sw.Architecture(
    name="gpt2",
    config=GPT2Config,
    build=build,
    weight_map=weight_map,
    reference={"encoder": "GPT2Model", "decoder": "GPT2LMHeadModel"},
    description="GPT-2 (pre-LayerNorm, Conv1D weights, ln_f); decoder = GPT2LMHeadModel, encoder = GPT2Model",
    tiny_config={
        "vocab_size": 99,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "bos_token_id": 98,
        "eos_token_id": 98,
    },
)


@sw.hookimpl
def seqweave_register_architectures(register: Callable[[sw.Architecture], None]) -> None:
    """Register GPT-2."""
    register(GPT2)
