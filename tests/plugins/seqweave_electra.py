"""ELECTRA for seqweave, written from docs/plugins.md with the public kit only.

ELECTRA is BERT with narrower embedding tables (``embedding_size``) projected to the
model width (``embeddings_project``), no pooler, and a generator head that maps the
model width back to the embedding width before the tied projection. All of that is
parameters of the BERT family's public recipe, so the plugin is data: a config model,
one ``bert_family(...)`` call and the hook. Imports: ``seqweave``, ``seqweave.modules``
and the recipe, nothing else. ``seqweave check-plugin electra --module seqweave_electra``
checks it against transformers' ``ElectraModel`` and ``ElectraForCausalLM``.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field, model_validator
from seqweave_bert import BertConfig, bert_family

from seqweave.modules import Architecture, FieldError, hookimpl

__all__ = ["ELECTRA", "ElectraConfig", "seqweave_register_architectures"]


class ElectraConfig(BertConfig):
    """transformers' ``ElectraConfig``: BERT's fields with other defaults, plus the embedding width."""

    embedding_size: int = Field(128, ge=1, description="Width of the embedding tables; projected to hidden_size.")
    hidden_size: int = Field(256, ge=1, description="Model width.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(1024, ge=1, description="Width of the feed-forward block.")
    summary_type: str = Field("first", description="Unused here (sequence summary head); kept for compatibility.")
    summary_use_proj: bool = Field(True, description="Unused here; kept for compatibility.")
    summary_activation: str | None = Field("gelu", description="Unused here; kept for compatibility.")
    summary_last_dropout: float = Field(0.1, description="Unused here; kept for compatibility.")

    @model_validator(mode="after")
    def _check_embedding_size(self) -> ElectraConfig:
        if self.embedding_size > self.hidden_size:
            raise FieldError("embedding_size", f"must not exceed hidden_size ({self.hidden_size})", self.embedding_size)
        return self


ELECTRA: Architecture = bert_family(
    "electra",
    ElectraConfig,
    positions="absolute",
    prefix="electra.",
    # ElectraGeneratorPredictions (dense to embedding_size, exact GELU, LayerNorm), then
    # generator_lm_head: a Linear tied to the word embeddings that keeps its own bias.
    head_prefix="",
    head_names={"dense": "generator_predictions.dense", "norm": "generator_predictions.LayerNorm",
                "proj": "generator_lm_head", "bias": None},
    head_act="gelu",
    pooler=False,
    projection_name="embeddings_project",
    encoder_ignore=(r"generator_.*", r"discriminator_predictions\..*", r"classifier\..*", r"qa_outputs\..*",
                    r"sequence_summary\..*"),
    reference={"encoder": "ElectraModel", "decoder": "ElectraForCausalLM"},
    description="ELECTRA (BERT with projected embeddings); decoder = ElectraForCausalLM",
    tiny_config={"vocab_size": 99, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 64},
)


@hookimpl
def seqweave_register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register ELECTRA."""
    register(ELECTRA)
