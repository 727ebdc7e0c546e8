"""The BERT plugin: BERT as encoder (``BertModel``) and as decoder (``BertLMHeadModel``).

BERT is post-LayerNorm with absolute positions and a token-type table; its decoder head
is a transform (dense, activation, LayerNorm) and a projection tied to the word
embeddings. Everything else is the core's shared blocks. :func:`bert_family` is the whole
recipe, public and parametrised so that close relatives (RoBERTa here, ELECTRA in a
third-party plugin) are data, not copies; its rule lists are public too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import seqweave as sw
from pydantic import Field, model_validator
from seqweave.modules import (
    ACTIVATIONS,
    Embeddings,
    LMHead,
    Rule,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLayer,
    WeightMap,
    pair_rules,
    prefixed,
    rule,
)
from torch import nn

__all__ = [
    "BERT",
    "CROSS_RULES",
    "EMBEDDING_RULES",
    "LAYER_RULES",
    "OTHER_HEADS",
    "BertConfig",
    "bert_family",
    "embedding_width",
    "seqweave_register_architectures",
]

SELF = "encoder.layer.{}.attention.self"


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
    bos_token_id: int | None = Field(
        None, description="Beginning-of-sequence token id: generation's start token when none is set."
    )
    eos_token_id: int | list[int] | None = Field(None, description="End-of-sequence token id(s); unused here.")
    position_embedding_type: str = Field(
        "absolute", description='Position embeddings: only "absolute" (the only kind transformers 5 has).'
    )
    tie_word_embeddings: bool = Field(
        True, strict=True, description="Decoder head shares the word embedding matrix."
    )
    use_cache: bool = Field(
        True, strict=True, description="Kept for compatibility with transformers' config.json."
    )
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
        # Only pad_token_id is checked here: it is the embedding's padding_idx (and RoBERTa's position
        # offset). bos/eos are unused by the modules, and transformers loads config.json files whose
        # defaults lie beyond a smaller vocabulary; the ids a composite uses are checked where used.
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise sw.FieldError(
                "pad_token_id", f"must be below vocab_size ({self.vocab_size})", self.pad_token_id
            )
        if self.position_embedding_type != "absolute":
            # transformers 4.x built distance tables for these; 5.x ignores the field and runs such a
            # checkpoint with absolute positions only, which is not the trained model: refuse instead.
            raise sw.FieldError(
                "position_embedding_type",
                'must be "absolute": relative position embeddings (relative_key, relative_key_query) '
                "are not supported",
                self.position_embedding_type,
            )
        return self


#: BERT's per-layer rules (``{}`` is the layer index), relative to the base model: self-attention
#: (query, key and value fused into ``qkv_proj``), its output and LayerNorm, the feed-forward block.
LAYER_RULES: list[Rule] = [
    *(
        rule(f"layers.{{}}.self_attn.qkv_proj.{w}", *(f"{SELF}.{q}.{w}" for q in ("query", "key", "value")))
        for w in ("weight", "bias")
    ),
    *pair_rules("layers.{}.self_attn.out_proj", "encoder.layer.{}.attention.output.dense"),
    *pair_rules("layers.{}.attn_norm", "encoder.layer.{}.attention.output.LayerNorm"),
    *pair_rules("layers.{}.ffn.fc_in", "encoder.layer.{}.intermediate.dense"),
    *pair_rules("layers.{}.ffn.fc_out", "encoder.layer.{}.output.dense"),
    *pair_rules("layers.{}.ffn_norm", "encoder.layer.{}.output.LayerNorm"),
]
#: BERT's cross-attention rules. Absent from a plain BERT checkpoint (``new_ok``): created and
#: initialised when warm-starting a decoder.
CROSS_RULES: list[Rule] = [
    *pair_rules("layers.{}.cross_attn.q_proj", "encoder.layer.{}.crossattention.self.query", new_ok=True),
    rule("layers.{}.cross_attn.kv_proj.weight",
         *(f"encoder.layer.{{}}.crossattention.self.{n}.weight" for n in ("key", "value")), new_ok=True),
    rule("layers.{}.cross_attn.kv_proj.bias",
         *(f"encoder.layer.{{}}.crossattention.self.{n}.bias" for n in ("key", "value")), new_ok=True),
    *pair_rules("layers.{}.cross_attn.out_proj", "encoder.layer.{}.crossattention.output.dense", new_ok=True),
    *pair_rules("layers.{}.cross_norm", "encoder.layer.{}.crossattention.output.LayerNorm", new_ok=True),
]
#: BERT's embedding rules, relative to the base model (the token-type table is added when the
#: config has one).
EMBEDDING_RULES: list[Rule] = [
    rule("embeddings.tokens.weight", "embeddings.word_embeddings.weight"),
    rule("embeddings.positions.weight", "embeddings.position_embeddings.weight"),
    *pair_rules("embeddings.norm", "embeddings.LayerNorm"),
]
#: Heads of other tasks a BERT-like checkpoint may carry, ignored by the encoder.
OTHER_HEADS: tuple[str, ...] = (r"cls\..*", r"lm_head\..*", r"classifier\..*", r"qa_outputs\..*")


def embedding_width(cfg: BertConfig) -> int:
    """The width of the embedding tables: the config's ``embedding_size`` if set, else ``hidden_size``."""
    return getattr(cfg, "embedding_size", None) or cfg.hidden_size


def bert_family(
    name: str,
    config_model: type[sw.ArchitectureConfig],
    *,
    positions: Literal["absolute", "after_padding"],
    prefix: str,
    head_prefix: str,
    head_names: Mapping[str, str | None],
    reference: Mapping[str, str],
    description: str,
    tiny_config: Mapping[str, object],
    head_act: str | None = None,
    pooler: bool = True,
    projection_name: str = "embeddings_project",
    encoder_ignore: Sequence[str] = OTHER_HEADS,
    roles: tuple[sw.Role, ...] = ("encoder", "decoder"),
) -> sw.Architecture:
    """The :class:`seqweave.Architecture` of a BERT-like model: the public recipe of the BERT family.

    Post-LayerNorm layers with BERT's checkpoint names (:data:`LAYER_RULES`,
    :data:`CROSS_RULES`, :data:`EMBEDDING_RULES`), an encoder with an optional pooler, a
    decoder with a transform + tied projection head. Everything that tells relatives apart
    is a parameter or a config field:

    - a config with an ``embedding_size`` field that differs from ``hidden_size`` (ELECTRA,
      ALBERT) gets tables of that width and a projection to ``hidden_size``, stored as
      ``{prefix}{projection_name}``, and a head whose transform maps back to that width;
    - ``type_vocab_size`` 0, or a config without that field, drops the token-type table.

    Args:
        name: the architecture name (the Hugging Face ``model_type``).
        config_model: its config model (a :class:`BertConfig`, with other defaults or more fields;
            or any config with BERT's field names, ``type_vocab_size`` optional).
        positions: the position-id scheme (see :class:`seqweave.modules.Embeddings`).
        prefix: where the head model keeps the base model (``"bert."``).
        head_prefix: where the head model keeps its LM head (``"cls.predictions."``).
        head_names: Hugging Face names of the head's parts, relative to ``head_prefix``:
            ``dense`` and ``norm`` (the transform; both None, or absent, for a head without
            one: BertGeneration's is the projection alone), ``proj`` (the projection to the
            vocabulary) and ``bias``: the head's own bias parameter, which transformers ties to
            the projection's bias (BERT's ``cls.predictions.bias``), or None (or absent) when the
            projection keeps its own bias (ELECTRA's ``generator_lm_head``).
        reference: the transformers class for each role.
        description: one line for ``seqweave plugins``.
        tiny_config: fields of a tiny model, for the contract checks.
        head_act: the LM head transform's activation; None uses the config's ``hidden_act``
            (BERT does; RoBERTa's and ELECTRA's heads always use exact GELU).
        pooler: the encoder has BERT's pooler (``pooler.dense``); ELECTRA has none.
        projection_name: the Hugging Face name of the embedding projection, after ``prefix``.
        encoder_ignore: patterns of other heads a checkpoint may carry, ignored by the encoder.
        roles: the roles to register.

    Returns:
        The architecture, ready for ``register(...)``.
    """

    transform = bool(head_names.get("dense"))

    def build(cfg: BertConfig, role: sw.Role) -> nn.Module:
        d, e = cfg.hidden_size, embedding_width(cfg)
        embeddings = Embeddings(
            cfg.vocab_size,
            e,
            cfg.max_position_embeddings,
            type_vocab_size=getattr(cfg, "type_vocab_size", 0),
            norm_eps=cfg.layer_norm_eps,
            dropout=cfg.hidden_dropout_prob,
            padding_idx=cfg.pad_token_id,
            positions=positions,
            project_to=d if e != d else None,
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
            return TransformerEncoder(embeddings, layers, pooler=nn.Linear(d, d) if pooler else None)
        act = (head_act or cfg.hidden_act) if transform else None
        head = LMHead(d, cfg.vocab_size, transform_act=act, norm_eps=cfg.layer_norm_eps, transform_dim=e)
        return TransformerDecoder(embeddings, layers, head, tie_word_embeddings=cfg.tie_word_embeddings)

    def weight_map(cfg: BertConfig, role: sw.Role) -> WeightMap:
        embeddings = list(EMBEDDING_RULES)
        if getattr(cfg, "type_vocab_size", 0):
            embeddings.append(rule("embeddings.token_types.weight", "embeddings.token_type_embeddings.weight"))
        if embedding_width(cfg) != cfg.hidden_size:
            embeddings += pair_rules("embeddings.project", projection_name)
        ignore = [r".*position_ids", r".*token_type_ids"]  # buffers that old checkpoints saved
        if role == "encoder":
            top = list(embeddings)
            if pooler:
                top += pair_rules("pooler", "pooler.dense", new_ok=True)
            return WeightMap.build(
                top, LAYER_RULES, cfg.num_hidden_layers, ignore=[*ignore, *encoder_ignore], base_prefix=prefix
            )
        hp = head_prefix
        head = [
            *pair_rules("head.dense", f"{hp}{head_names['dense']}", new_ok=True),
            *pair_rules("head.norm", f"{hp}{head_names['norm']}", new_ok=True),
        ] if transform else []
        proj = f"{hp}{head_names['proj']}"
        own_bias = f"{hp}{head_names['bias']}" if head_names.get("bias") else None
        if cfg.tie_word_embeddings and own_bias:
            # transformers 5.x ties the projection to the word embeddings and its bias to the head's
            # own bias: read the bias under the head's name, and drop the tied copies some files store.
            head.append(rule("head.proj.bias", own_bias, new_ok=True))
            ignore += [re.escape(f"{proj}.weight"), re.escape(f"{proj}.bias")]
        elif cfg.tie_word_embeddings:
            # The projection keeps its own bias; its weight is the word embeddings (a tied copy).
            head.append(rule("head.proj.bias", f"{proj}.bias", new_ok=True))
            ignore.append(re.escape(f"{proj}.weight"))
        else:
            # Untied, transformers 5.x ties neither: the forward uses the projection's own weight and
            # bias, and the head's separate bias parameter (if any) is unused (we do not keep it).
            head += pair_rules("head.proj", proj, new_ok=True)
            if own_bias:
                ignore.append(re.escape(own_bias))
        ignore += [re.escape(f"{prefix}pooler.") + ".*", r"cls\.seq_relationship\..*"]
        return WeightMap.build(
            [*prefixed(embeddings, prefix), *head],
            prefixed(LAYER_RULES + CROSS_RULES, prefix),
            cfg.num_hidden_layers,
            ignore=ignore,
            base_prefix=prefix,
        )

    return sw.Architecture(
        name=name,
        config=config_model,
        build=build,
        weight_map=weight_map,
        roles=roles,
        reference=dict(reference),
        description=description,
        tiny_config=dict(tiny_config),
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
