"""Output containers of encoders, decoders and the composite (field names as in transformers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["DecoderOutput", "Encoded", "EncoderOutput", "Seq2SeqOutput"]


@dataclass
class EncoderOutput:
    """What an encoder returns.

    Attributes:
        last_hidden_state: [b, s, d] the final hidden states.
        hidden_states: the embeddings output and every layer's output, when asked for.
        attentions: every layer's attention probabilities [b, h, s, s], when asked for.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, i: int) -> torch.Tensor:  # ``encoder_outputs[0]``, as with transformers
        return self.last_hidden_state if i == 0 else (self.hidden_states, self.attentions)[i - 1]


@dataclass
class Encoded:
    """What :meth:`seqweave.EncoderDecoder.encode` returns: the source as cross-attention takes it.

    Attributes:
        states: [b, s, d_cross] the encoder's last hidden states, projected to the decoder's
            ``cross_attention_hidden_size`` when the widths differ (``enc_to_dec_proj``).
        mask: [b, s] 1 for tokens, 0 for padding (the source's attention mask), or None.
        encoder: the encoder's own output (unprojected), with hidden states and attentions
            when they were asked for.
    """

    states: torch.Tensor
    mask: torch.Tensor | None
    encoder: EncoderOutput


@dataclass
class DecoderOutput:
    """What a decoder returns: logits [b, t, vocab] and, when asked for, the cache and intermediates."""

    logits: torch.Tensor
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Seq2SeqOutput:
    """What :class:`seqweave.EncoderDecoder` returns (transformers' ``Seq2SeqLMOutput`` fields)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
