"""The BertGeneration plugin: ``bert-generation`` as encoder and as decoder.

transformers' ``BertGenerationEncoder`` and ``BertGenerationDecoder`` are BERT without
token types or pooler, with a head that is the tied projection alone (no transform); Google's
bert2bert and roberta2roberta checkpoints (``google/bert2bert_L-24_wmt_en_de``,
``google/roberta2roberta_L-24_bbc``) use them on both sides. It is built with
:func:`seqweave_bert.bert_family`: only the data that tells it apart from BERT.

Checkpoint names: the encoder is the base model itself (``embeddings.word_embeddings``,
``encoder.layer.N...``); the decoder keeps it under ``bert.`` with its head at
``lm_head.decoder`` (tied to the word embeddings) and ``lm_head.bias`` (tied to the
projection's bias).
"""

from __future__ import annotations

from collections.abc import Callable

import seqweave as sw
from pydantic import Field, model_validator
from seqweave.modules import ACTIVATIONS
from seqweave_bert import OTHER_HEADS, bert_family

__all__ = ["BERT_GENERATION", "BertGenerationConfig", "seqweave_register_architectures"]


class BertGenerationConfig(sw.ArchitectureConfig):
    """BertGeneration's fields: the names and defaults of transformers' ``BertGenerationConfig``.

    There is no ``type_vocab_size``: a ``config.json`` converted from a BERT checkpoint may
    still carry one (transformers ignores it), and the loader carries it aside like any
    other field the model does not use. ``bos_token_id`` and ``eos_token_id`` are not
    checked here: the model never reads them; generation checks the ids it uses.
    """

    vocab_size: int = Field(50358, ge=1, description="Rows of the token embedding table.")
    hidden_size: int = Field(1024, ge=1, description="Model width.")
    num_hidden_layers: int = Field(24, ge=0, description="Number of transformer layers.")
    num_attention_heads: int = Field(16, ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(4096, ge=1, description="Width of the feed-forward block.")
    hidden_act: str = Field("gelu", description=f"Activation: one of {', '.join(sorted(ACTIVATIONS))}.")
    hidden_dropout_prob: float = Field(0.1, ge=0, le=1, description="Dropout on embeddings and residuals.")
    attention_probs_dropout_prob: float = Field(0.1, ge=0, le=1, description="Dropout on attention probabilities.")
    max_position_embeddings: int = Field(512, ge=1, description="Rows of the position table (longest input).")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of new weights.")
    layer_norm_eps: float = Field(1e-12, gt=0, description="LayerNorm epsilon.")
    pad_token_id: int | None = Field(0, ge=0, description="Padding token id (its embedding gets no gradient).")
    bos_token_id: int | None = Field(2, ge=0, description="Beginning-of-sequence token id.")
    eos_token_id: int | None = Field(1, ge=0, description="End-of-sequence token id.")
    tie_word_embeddings: bool = Field(
        True, strict=True, description="Decoder head shares the word embedding matrix."
    )
    use_cache: bool = Field(
        True, strict=True, description="Kept for compatibility with transformers' config.json."
    )

    @model_validator(mode="after")
    def _check(self) -> BertGenerationConfig:
        if self.hidden_size % self.num_attention_heads:
            raise sw.FieldError(
                "num_attention_heads", f"must divide hidden_size ({self.hidden_size})", self.num_attention_heads
            )
        if self.hidden_act not in ACTIVATIONS:
            raise sw.FieldError("hidden_act", f"must be one of {', '.join(sorted(ACTIVATIONS))}", self.hidden_act)
        # The embedding table's padding row: used by the model, as by transformers' nn.Embedding.
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise sw.FieldError("pad_token_id", f"must be below vocab_size ({self.vocab_size})", self.pad_token_id)
        return self


BERT_GENERATION = bert_family(
    "bert-generation",
    BertGenerationConfig,
    positions="absolute",
    prefix="bert.",
    head_prefix="lm_head.",
    # BertGenerationOnlyLMHead: the projection ``decoder`` (tied to the word embeddings) and
    # ``bias`` (tied to the projection's bias); no transform.
    head_names={"dense": None, "norm": None, "bias": "bias", "proj": "decoder"},
    pooler=False,
    # A decoder checkpoint's head (lm_head.*) is ignored by the encoder, like BERT's other heads.
    encoder_ignore=OTHER_HEADS,
    reference={"encoder": "BertGenerationEncoder", "decoder": "BertGenerationDecoder"},
    description="BertGeneration (BERT without token types or pooler); decoder = BertGenerationDecoder",
    tiny_config={
        "vocab_size": 99,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
    },
)


@sw.hookimpl
def seqweave_register_architectures(register: Callable[[sw.Architecture], None]) -> None:
    """Register BertGeneration."""
    register(BERT_GENERATION)
