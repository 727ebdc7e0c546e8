"""A call's generation options, resolved against a model's defaults.

Every option is a field of :class:`~seqweave.GenerationSettings`; nothing here lists them
again. :func:`resolve` applies the call's options to the model's defaults (one pydantic
validation, so a bad value is a :class:`~seqweave.ConfigError` naming the option), then
makes the checks that need the decoder: the start and pad fallbacks transformers uses,
token ids below the decoder's vocabulary (:func:`~seqweave.config.check_token_ids`, the
one range check) and positions the decoder can embed.

:class:`Seq2SeqModel` is all generation needs of a model; :class:`seqweave.EncoderDecoder`
has it. Generation never imports the composer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from ..config import GenerationSettings, check_token_ids
from ..errors import ConfigError
from ..outputs import Encoded
from ..protocols import Decoder

__all__ = ["RUNTIME_ARGUMENTS", "Seq2SeqModel", "resolve"]

#: Keyword arguments of ``generate`` that belong to one call and are not settings: they are
#: objects (a generator, a callback) or say how to run (CUDA graph, static cache), never
#: what to generate, so they have no place in a config file or ``generation_config.json``.
RUNTIME_ARGUMENTS = ("generator", "streamer", "cuda_graph", "static_cache")


class Seq2SeqModel(Protocol):
    """What generation needs of a model: its decoder, ``encode`` and its generation defaults."""

    @property
    def decoder(self) -> Decoder:
        """The decoder; generation runs it one step at a time against a cache."""
        ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Encoded:
        """The source [b, s] as the decoder's cross-attention takes it."""
        ...

    def generation_defaults(self) -> GenerationSettings:
        """Every option's default for this model, token ids included."""
        ...

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The model's parameters (the first one says where inputs go)."""
        ...


def resolve(
    defaults: GenerationSettings, options: Mapping[str, Any], decoder: Any, source: str = "generate()"
) -> GenerationSettings:
    """``defaults`` with the call's ``options`` (None = not given) applied and checked.

    As in transformers, the start token falls back to the decoder's ``bos_token_id`` and the
    pad token to the (first) eos token; in the result both are set (pad unless there is no eos).

    Args:
        defaults: the model's defaults (:meth:`Seq2SeqModel.generation_defaults`).
        options: the call's keyword options, field names of :class:`~seqweave.GenerationSettings`.
        decoder: the decoder, for its ``vocab_size``, ``max_length`` and ``config.bos_token_id``.
        source: how errors name the caller.

    Raises:
        ConfigError: an unknown option, a value out of range or an unsupported combination;
            the message names the option and the allowed values.
    """
    unknown = sorted(set(options) - set(GenerationSettings.model_fields))
    if unknown:
        allowed = sorted({*GenerationSettings.model_fields, *RUNTIME_ARGUMENTS})
        raise ConfigError(
            f"{source}: unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    s = defaults.merged(options, source)
    start, pad, eos = s.decoder_start_token_id, s.pad_token_id, s.eos_ids
    if start is None:
        start = getattr(getattr(decoder, "config", None), "bos_token_id", None)
    if start is None:
        raise ConfigError(
            f"{source}: decoder_start_token_id is not set: pass it, or set it (or the decoder's "
            "bos_token_id) in the model's config"
        )
    if pad is None and eos is not None:
        pad = eos[0]
    if start != s.decoder_start_token_id or pad != s.pad_token_id:
        s = s.merged({"decoder_start_token_id": start, "pad_token_id": pad}, source)
    vocab = getattr(decoder, "vocab_size", None)
    check_token_ids(dict(s), vocab if isinstance(vocab, int) else None, source)
    limit = getattr(decoder, "max_length", None)
    if isinstance(limit, int) and 1 + s.max_new_tokens > limit:
        raise ConfigError(
            f"{source}: max_new_tokens={s.max_new_tokens} makes {1 + s.max_new_tokens} decoder positions, "
            f"but the decoder embeds at most {limit}; allowed: max_new_tokens <= {limit - 1}"
        )
    return s
