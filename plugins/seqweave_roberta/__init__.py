"""The RoBERTa plugin: RoBERTa as encoder (``RobertaModel``) and as decoder (``RobertaForCausalLM``).

RoBERTa is BERT with other defaults, positions counted from ``pad_token_id + 1`` over
non-pad tokens, and its own LM head names. It is built with
:func:`seqweave_bert.bert_family`: no layer, attention or embedding code of its own, only
the data that tells it apart from BERT.

XLM-RoBERTa (``xlm-roberta``) and CamemBERT (``camembert``) are RoBERTa's architecture
under other model types, with the same checkpoint names; they are registered as its
aliases (:attr:`seqweave.Architecture.aliases`), with their own defaults and reference classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import seqweave as sw
from pydantic import Field
from seqweave_bert import BertConfig, bert_family

__all__ = ["ROBERTA", "CamembertConfig", "RobertaConfig", "XLMRobertaConfig", "seqweave_register_architectures"]


class RobertaConfig(BertConfig):
    """RoBERTa's fields: transformers' ``RobertaConfig`` names and defaults.

    Only the defaults differ from :class:`seqweave_bert.BertConfig`. The released
    checkpoints override some of them in their ``config.json`` (``type_vocab_size`` 1,
    ``layer_norm_eps`` 1e-5, ``max_position_embeddings`` 514), as they do for transformers.
    """

    vocab_size: int = Field(50265, ge=1, description="Rows of the token embedding table.")
    pad_token_id: int | None = Field(
        1, ge=0, description="Padding token id; positions are counted from pad_token_id + 1."
    )
    bos_token_id: int | None = Field(0, ge=0, description="Beginning-of-sequence token id (<s>).")
    eos_token_id: int | None = Field(2, ge=0, description="End-of-sequence token id (</s>).")


class XLMRobertaConfig(RobertaConfig):
    """XLM-RoBERTa's fields: transformers' ``XLMRobertaConfig``, RoBERTa's but for the vocabulary size."""

    vocab_size: int = Field(30522, ge=1, description="Rows of the token embedding table.")


class CamembertConfig(RobertaConfig):
    """CamemBERT's fields: transformers' ``CamembertConfig``, RoBERTa's but for the vocabulary size."""

    vocab_size: int = Field(30522, ge=1, description="Rows of the token embedding table.")


_ROBERTA = bert_family(
    "roberta",
    RobertaConfig,
    # create_position_ids_from_input_ids: cumsum over non-pad tokens (+ the cached length) + pad.
    positions="after_padding",
    prefix="roberta.",
    head_prefix="lm_head.",
    # RobertaLMHead: dense, gelu, layer_norm, decoder (tied to the word embeddings), bias.
    head_names={"dense": "dense", "norm": "layer_norm", "bias": "bias", "proj": "decoder"},
    # RobertaLMHead calls transformers' exact ``gelu`` directly, not ``config.hidden_act``.
    head_act="gelu",
    reference={"encoder": "RobertaModel", "decoder": "RobertaForCausalLM"},
    description="RoBERTa (BERT with positions after padding_idx); decoder = RobertaForCausalLM",
    tiny_config={
        "vocab_size": 99,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    },
)
ROBERTA = dataclasses.replace(
    _ROBERTA,
    aliases={
        "xlm-roberta": {
            "config": XLMRobertaConfig,
            "reference": {"encoder": "XLMRobertaModel", "decoder": "XLMRobertaForCausalLM"},
            "description": "XLM-RoBERTa (RoBERTa's architecture); decoder = XLMRobertaForCausalLM",
        },
        "camembert": {
            "config": CamembertConfig,
            "reference": {"encoder": "CamembertModel", "decoder": "CamembertForCausalLM"},
            "description": "CamemBERT (RoBERTa's architecture); decoder = CamembertForCausalLM",
        },
    },
)


@sw.hookimpl
def seqweave_register_architectures(register: Callable[[sw.Architecture], None]) -> None:
    """Register RoBERTa (and, as its aliases, XLM-RoBERTa and CamemBERT)."""
    register(ROBERTA)
