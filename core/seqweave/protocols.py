"""What the composer needs of an encoder and a decoder.

Any ``nn.Module`` with these attributes and this ``forward`` composes, whether a
registered plugin built it or someone wrote it by hand. Modules built from the
registry also carry ``architecture`` (the registered name) and ``config`` (the
architecture's pydantic config), which saving in Hugging Face layout needs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .cache import Cache
from .outputs import DecoderOutput, EncoderOutput

__all__ = ["Decoder", "Encoder"]


@runtime_checkable
class Encoder(Protocol):
    """Maps source tokens to hidden states.

    ``token_type_ids`` and ``inputs_embeds`` are optional: the composer passes them only when the
    caller gives them, so an encoder without them composes: all-zero token types are then dropped,
    anything else is a :class:`~seqweave.ConfigError` naming the argument.
    """

    hidden_size: int

    def __call__(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """``input_ids`` [b, s] (or ``inputs_embeds`` [b, s, d_emb]) and ``attention_mask`` [b, s]
        (1 = token, 0 = padding) to [b, s, d]; ``token_type_ids`` [b, s] for encoders with token types."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Maps target tokens and the encoder's hidden states to next-token logits.

    ``cross_attention_hidden_size`` is the width of the encoder states the decoder's
    cross-attention takes; the composer projects the encoder output when it differs.

    A decoder given a :class:`~seqweave.Cache` changes it only through its methods, as
    :class:`~seqweave.transformer.TransformerDecoder` does: ``begin(t)``, then per layer
    ``append`` (and ``store_cross`` for a new source), ``set_source`` and ``advance(t)``.
    Setting ``supports_static_cache = True`` tells generation it also handles a
    :class:`~seqweave.cache.StaticCache` (position on the device, whole buffer under a mask).

    ``token_type_ids`` and ``inputs_embeds`` (forward's ``decoder_token_type_ids`` and
    ``decoder_inputs_embeds``) are optional in the same way as the encoder's.
    """

    hidden_size: int
    vocab_size: int
    cross_attention_hidden_size: int
    num_layers: int

    def __call__(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """``input_ids`` [b, t] (continuing ``cache`` if given) to logits [b, t, vocab]."""
        ...
