"""DistilBERT as a seqweave encoder: an example of a plugin that lives outside seqweave.

DistilBERT is a post-LayerNorm BERT without token types, with its own field and tensor
names. The plugin is only data over seqweave's shared blocks: a config model with
transformers' ``DistilBertConfig`` names, a builder, and a weight map. transformers has
no DistilBERT decoder (no cross-attention), so the plugin offers the encoder role only.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field, model_validator
from torch import nn

import seqweave as sw
from seqweave.modules import (
    ACTIVATIONS,
    Embeddings,
    FieldError,
    TransformerEncoder,
    TransformerLayer,
    WeightMap,
    pair_rules,
    rule,
)

__all__ = ["DISTILBERT", "DistilBertConfig", "seqweave_register_architectures"]


class DistilBertConfig(sw.ArchitectureConfig):
    """transformers' ``DistilBertConfig`` fields and defaults."""

    vocab_size: int = Field(30522, ge=1, description="Rows of the token embedding table.")
    max_position_embeddings: int = Field(512, ge=1, description="Rows of the position table (longest input).")
    sinusoidal_pos_embds: bool = Field(False, description="The table is stored in the checkpoint either way.")
    n_layers: int = Field(6, ge=0, description="Number of transformer layers.")
    n_heads: int = Field(12, ge=1, description="Attention heads; must divide dim.")
    dim: int = Field(768, ge=1, description="Model width.")
    hidden_dim: int = Field(3072, ge=1, description="Width of the feed-forward block.")
    dropout: float = Field(0.1, ge=0, le=1, description="Dropout on embeddings and residuals.")
    attention_dropout: float = Field(0.1, ge=0, le=1, description="Dropout on attention probabilities.")
    activation: str = Field("gelu", description="Feed-forward activation (a Hugging Face activation name).")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of new weights.")
    qa_dropout: float = Field(0.1, description="Unused here; kept for compatibility.")
    seq_classif_dropout: float = Field(0.2, description="Unused here; kept for compatibility.")
    pad_token_id: int | None = Field(0, ge=0, description="Padding token id.")
    bos_token_id: int | None = Field(None, description="Beginning-of-sequence token id.")
    eos_token_id: int | None = Field(None, description="End-of-sequence token id.")
    tie_word_embeddings: bool = Field(True, description="Kept for compatibility (an encoder has no head).")

    @property
    def hidden_size(self) -> int:
        return self.dim

    @model_validator(mode="after")
    def _check(self) -> DistilBertConfig:
        # FieldError: the user's error names the field (encoder.config.n_heads) and its value.
        if self.dim % self.n_heads:
            raise FieldError("n_heads", f"must divide dim ({self.dim})", self.n_heads)
        if self.activation not in ACTIVATIONS:
            raise FieldError("activation", f"must be one of {', '.join(sorted(ACTIVATIONS))}", self.activation)
        return self


def build(cfg: DistilBertConfig, role: sw.Role) -> nn.Module:
    embeddings = Embeddings(cfg.vocab_size, cfg.dim, cfg.max_position_embeddings, norm_eps=1e-12,
                            dropout=cfg.dropout, padding_idx=cfg.pad_token_id)
    layers = [
        TransformerLayer(cfg.dim, cfg.n_heads, cfg.hidden_dim, cfg.activation, norm_first=False, eps=1e-12,
                         dropout=cfg.dropout, attn_dropout=cfg.attention_dropout)
        for _ in range(cfg.n_layers)
    ]
    return TransformerEncoder(embeddings, layers)


def weight_map(cfg: DistilBertConfig, role: sw.Role) -> WeightMap:
    top = [
        rule("embeddings.tokens.weight", "embeddings.word_embeddings.weight"),
        rule("embeddings.positions.weight", "embeddings.position_embeddings.weight"),
        *pair_rules("embeddings.norm", "embeddings.LayerNorm"),
    ]
    p = "transformer.layer.{}."
    per_layer = [
        *(rule(f"layers.{{}}.self_attn.qkv_proj.{w}", *(f"{p}attention.{n}_lin.{w}" for n in "qkv"))
          for w in ("weight", "bias")),
        *pair_rules("layers.{}.self_attn.out_proj", f"{p}attention.out_lin"),
        *pair_rules("layers.{}.attn_norm", f"{p}sa_layer_norm"),
        *pair_rules("layers.{}.ffn.fc_in", f"{p}ffn.lin1"),
        *pair_rules("layers.{}.ffn.fc_out", f"{p}ffn.lin2"),
        *pair_rules("layers.{}.ffn_norm", f"{p}output_layer_norm"),
    ]
    ignore = [r".*position_ids", r"vocab_.*|qa_outputs\..*|pre_classifier\..*|classifier\..*"]
    return WeightMap.build(top, per_layer, cfg.n_layers, ignore=ignore, base_prefix="distilbert.")


DISTILBERT = sw.Architecture(
    name="distilbert",
    config=DistilBertConfig,
    build=build,
    weight_map=weight_map,
    roles=("encoder",),
    reference={"encoder": "DistilBertModel"},
    description="DistilBERT encoder (example out-of-tree plugin)",
    tiny_config={"vocab_size": 99, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
                 "max_position_embeddings": 64},
)


@sw.hookimpl
def seqweave_register_architectures(register: Callable[[sw.Architecture], None]) -> None:
    """Register DistilBERT."""
    register(DISTILBERT)
