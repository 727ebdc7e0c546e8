"""The BERT plugin: BERT as encoder (``BertModel``) and as decoder (``BertLMHeadModel``).

BERT is post-LayerNorm with absolute positions and a token-type table; its decoder head
is a transform (dense, activation, LayerNorm) and a projection tied to the word
embeddings. Everything else is the core's shared blocks. :func:`bert_family` is the whole
recipe, parametrised so that close relatives (RoBERTa) are data, not copies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

import seqweave as sw
from seqweave.layers import ACTIVATIONS, Embeddings, LMHead, TransformerLayer
from seqweave.transformer import TransformerDecoder, TransformerEncoder
from seqweave.weights import Rule, WeightMap, rule

__all__ = ["BertConfig", "bert_family", "seqweave_register_architectures"]


class BertConfig(sw.ArchitectureConfig):
    """BERT's fields, with the names and defaults of transformers' ``BertConfig``."""

    vocab_size: int = Field(30522, ge=1, description="Rows of the token embedding table.")
    hidden_size: int = Field(768, ge=1, description="Model width.")
    num_hidden_layers: int = Field(12, ge=0, description="Number of transformer layers.")
    num_attention_heads: int = Field(12, ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(3072, ge=1, description="Width of the feed-forward block.")
    hidden_act: str = Field("gelu", description=f"Activation: one of {', '.join(sorted(ACTIVATIONS))}.")
    hidden_dropout_prob: float = Field(0.1, ge=0, le=1, description="Dropout on embeddings and residuals.")
    attention_probs_dropout_prob: float = Field(0.1, ge=0, le=1, description="Dropout on attention probabilities.")
    max_position_embeddings: int = Field(512, ge=1, description="Rows of the position table (longest input).")
    type_vocab_size: int = Field(2, ge=0, description="Rows of the token-type table (type 0 is used).")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of new weights.")
    layer_norm_eps: float = Field(1e-12, gt=0, description="LayerNorm epsilon.")
    pad_token_id: int | None = Field(0, ge=0, description="Padding token id (its embedding gets no gradient).")
    bos_token_id: int | None = Field(None, ge=0, description="Beginning-of-sequence token id.")
    eos_token_id: int | None = Field(None, ge=0, description="End-of-sequence token id.")
    tie_word_embeddings: bool = Field(True, description="Decoder head shares the word embedding matrix.")
    use_cache: bool = Field(True, description="Kept for compatibility with transformers' config.json.")
    classifier_dropout: float | None = Field(None, description="Unused here; kept for compatibility.")

    @model_validator(mode="after")
    def _check(self) -> BertConfig:
        # FieldError puts the problem at the field the user most likely has to change.
        if self.hidden_size % self.num_attention_heads:
            raise sw.FieldError(
                "num_attention_heads", f"must divide hidden_size ({self.hidden_size})", self.num_attention_heads
            )
        if self.hidden_act not in ACTIVATIONS:
            raise sw.FieldError("hidden_act", f"must be one of {', '.join(sorted(ACTIVATIONS))}", self.hidden_act)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and value >= self.vocab_size:
                raise sw.FieldError(name, f"must be below vocab_size ({self.vocab_size})", value)
        return self


_LAYER = [
    rule("layers.{}.self_attn.qkv_proj.weight", *(f"encoder.layer.{{}}.attention.self.{n}.weight" for n in "query key value".split())),
    rule("layers.{}.self_attn.qkv_proj.bias", *(f"encoder.layer.{{}}.attention.self.{n}.bias" for n in "query key value".split())),
    rule("layers.{}.self_attn.out_proj.weight", "encoder.layer.{}.attention.output.dense.weight"),
    rule("layers.{}.self_attn.out_proj.bias", "encoder.layer.{}.attention.output.dense.bias"),
    rule("layers.{}.attn_norm.weight", "encoder.layer.{}.attention.output.LayerNorm.weight"),
    rule("layers.{}.attn_norm.bias", "encoder.layer.{}.attention.output.LayerNorm.bias"),
    rule("layers.{}.ffn.fc_in.weight", "encoder.layer.{}.intermediate.dense.weight"),
    rule("layers.{}.ffn.fc_in.bias", "encoder.layer.{}.intermediate.dense.bias"),
    rule("layers.{}.ffn.fc_out.weight", "encoder.layer.{}.output.dense.weight"),
    rule("layers.{}.ffn.fc_out.bias", "encoder.layer.{}.output.dense.bias"),
    rule("layers.{}.ffn_norm.weight", "encoder.layer.{}.output.LayerNorm.weight"),
    rule("layers.{}.ffn_norm.bias", "encoder.layer.{}.output.LayerNorm.bias"),
]
# Absent from a plain BERT checkpoint: created and initialised when warm-starting a decoder.
_CROSS = [
    rule("layers.{}.cross_attn.q_proj.weight", "encoder.layer.{}.crossattention.self.query.weight", new_ok=True),
    rule("layers.{}.cross_attn.q_proj.bias", "encoder.layer.{}.crossattention.self.query.bias", new_ok=True),
    rule("layers.{}.cross_attn.kv_proj.weight", *(f"encoder.layer.{{}}.crossattention.self.{n}.weight" for n in ("key", "value")), new_ok=True),
    rule("layers.{}.cross_attn.kv_proj.bias", *(f"encoder.layer.{{}}.crossattention.self.{n}.bias" for n in ("key", "value")), new_ok=True),
    rule("layers.{}.cross_attn.out_proj.weight", "encoder.layer.{}.crossattention.output.dense.weight", new_ok=True),
    rule("layers.{}.cross_attn.out_proj.bias", "encoder.layer.{}.crossattention.output.dense.bias", new_ok=True),
    rule("layers.{}.cross_norm.weight", "encoder.layer.{}.crossattention.output.LayerNorm.weight", new_ok=True),
    rule("layers.{}.cross_norm.bias", "encoder.layer.{}.crossattention.output.LayerNorm.bias", new_ok=True),
]
_EMBEDDINGS = [
    rule("embeddings.tokens.weight", "embeddings.word_embeddings.weight"),
    rule("embeddings.positions.weight", "embeddings.position_embeddings.weight"),
    rule("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
    rule("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
]


def _prefixed(rules: list[Rule], prefix: str) -> list[Rule]:
    return [Rule(r.ours, tuple(prefix + h for h in r.hf), r.transpose, r.new_ok) for r in rules]


def bert_family(
    name: str,
    config_model: type[BertConfig],
    *,
    positions: Literal["absolute", "after_padding"],
    prefix: str,
    head_prefix: str,
    head_names: dict[str, str],
    reference: dict[str, str],
    description: str,
    tiny_config: dict[str, object],
    head_act: str | None = None,
) -> sw.Architecture:
    """The :class:`seqweave.Architecture` of a BERT-like model.

    Args:
        name: the architecture name (the Hugging Face ``model_type``).
        config_model: its config model (a :class:`BertConfig` with other defaults).
        positions: the position-id scheme (see :class:`seqweave.layers.Embeddings`).
        prefix: where the head model keeps the base model (``"bert."``).
        head_prefix: where the head model keeps its LM head (``"cls.predictions."``).
        head_names: Hugging Face names of the head's parts, relative to ``head_prefix``:
            keys ``dense``, ``norm``, ``bias``, ``proj`` (the projection's weight).
        reference: the transformers class for each role.
        description: one line for ``seqweave plugins``.
        tiny_config: fields of a tiny model, for the contract tests.
        head_act: the LM head transform's activation; None uses the config's ``hidden_act``
            (BERT does; RoBERTa's head always uses exact GELU, whatever ``hidden_act`` says).
    """

    def build(cfg: BertConfig, role: sw.Role) -> nn.Module:
        d = cfg.hidden_size
        embeddings = Embeddings(
            cfg.vocab_size,
            d,
            cfg.max_position_embeddings,
            type_vocab_size=cfg.type_vocab_size,
            norm_eps=cfg.layer_norm_eps,
            dropout=cfg.hidden_dropout_prob,
            padding_idx=cfg.pad_token_id,
            positions=positions,
        )
        layers = [
            TransformerLayer(
                d,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                cfg.hidden_act,
                norm_first=False,
                eps=cfg.layer_norm_eps,
                cross_attention=role == "decoder",
                dropout=cfg.hidden_dropout_prob,
                attn_dropout=cfg.attention_probs_dropout_prob,
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        if role == "encoder":
            return TransformerEncoder(embeddings, layers, pooler=nn.Linear(d, d))
        head = LMHead(d, cfg.vocab_size, transform_act=head_act or cfg.hidden_act, norm_eps=cfg.layer_norm_eps)
        return TransformerDecoder(embeddings, layers, head, tie_word_embeddings=cfg.tie_word_embeddings)

    def weight_map(cfg: BertConfig, role: sw.Role) -> WeightMap:
        embeddings = list(_EMBEDDINGS)
        if cfg.type_vocab_size:
            embeddings.append(rule("embeddings.token_types.weight", "embeddings.token_type_embeddings.weight"))
        ignore = [r".*position_ids", r".*token_type_ids"]  # buffers that old checkpoints saved
        if role == "encoder":
            top = [*embeddings, rule("pooler.weight", "pooler.dense.weight", new_ok=True),
                   rule("pooler.bias", "pooler.dense.bias", new_ok=True)]
            ignore.append(r"cls\..*|lm_head\..*|classifier\..*|qa_outputs\..*")  # heads of other tasks
            return WeightMap.build(top, _LAYER, cfg.num_hidden_layers, ignore=ignore, base_prefix=prefix)
        hp = head_prefix
        head = [
            rule("head.dense.weight", f"{hp}{head_names['dense']}.weight", new_ok=True),
            rule("head.dense.bias", f"{hp}{head_names['dense']}.bias", new_ok=True),
            rule("head.norm.weight", f"{hp}{head_names['norm']}.weight", new_ok=True),
            rule("head.norm.bias", f"{hp}{head_names['norm']}.bias", new_ok=True),
        ]
        proj, own_bias = f"{hp}{head_names['proj']}", f"{hp}{head_names['bias']}"
        if cfg.tie_word_embeddings:
            # transformers 5.x ties the projection to the word embeddings and its bias to the head's
            # own bias: read the bias under the head's name, and drop the tied copies some files store.
            head.append(rule("head.proj.bias", own_bias, new_ok=True))
            ignore += [re.escape(f"{proj}.weight"), re.escape(f"{proj}.bias")]
        else:
            # Untied, transformers 5.x ties neither: the forward uses the projection's own weight and
            # bias, and the head's separate bias parameter is unused (we do not keep it).
            head += [rule("head.proj.weight", f"{proj}.weight", new_ok=True),
                     rule("head.proj.bias", f"{proj}.bias", new_ok=True)]
            ignore.append(re.escape(own_bias))
        ignore += [re.escape(f"{prefix}pooler.") + ".*", r"cls\.seq_relationship\..*"]
        return WeightMap.build(
            [*_prefixed(embeddings, prefix), *head],
            _prefixed(_LAYER + _CROSS, prefix),
            cfg.num_hidden_layers,
            ignore=ignore,
            base_prefix=prefix,
        )

    return sw.Architecture(
        name=name,
        config=config_model,
        build=build,
        weight_map=weight_map,
        reference=reference,
        description=description,
        tiny_config=tiny_config,
    )


BERT = bert_family(
    "bert",
    BertConfig,
    positions="absolute",
    prefix="bert.",
    head_prefix="cls.predictions.",
    head_names={"dense": "transform.dense", "norm": "transform.LayerNorm", "bias": "bias", "proj": "decoder"},
    reference={"encoder": "BertModel", "decoder": "BertLMHeadModel"},
    description="BERT (post-LayerNorm, absolute positions); decoder = BertLMHeadModel",
    tiny_config={"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 37, "max_position_embeddings": 64},
)


@sw.hookimpl
def seqweave_register_architectures(register: Callable[[sw.Architecture], None]) -> None:
    """Register BERT."""
    register(BERT)
