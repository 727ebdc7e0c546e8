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

from ..config import DEFAULT_NEW_TOKENS, GenerationSettings, check_token_ids
from ..errors import ConfigError
from ..outputs import Encoded
from ..protocols import Decoder

__all__ = ["RUNTIME_ARGUMENTS", "Seq2SeqModel", "config_options", "resolve"]

#: Keyword arguments of ``generate`` that belong to one call and are not settings: they are
#: objects (a generator, a callback) or say how to run (CUDA graph, static cache), never
#: what to generate, so they have no place in a config file or ``generation_config.json``.
#: The inputs among them keep transformers' names: ``generation_config`` (settings for this
#: call, applied under the keyword options), ``decoder_input_ids`` (a forced decoder prefix),
#: ``encoder_outputs`` (skip the encoder) and ``token_type_ids`` (passed to the encoder).
RUNTIME_ARGUMENTS = (
    "generator",
    "streamer",
    "cuda_graph",
    "static_cache",
    "compile",
    "generation_config",
    "decoder_input_ids",
    "encoder_outputs",
    "token_type_ids",
    # transformers' callers pass these too (Seq2SeqTrainer: the whole batch, and synced_gpus);
    # EncoderDecoder.generate takes them and generation never sees them
    "labels",
    "synced_gpus",
)


class Seq2SeqModel(Protocol):
    """What generation needs of a model: its decoder, ``encode`` and its generation defaults."""

    @property
    def decoder(self) -> Decoder:
        """The decoder; generation runs it one step at a time against a cache."""
        ...

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_outputs: Any = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> Encoded:
        """The source [b, s] (or an earlier encoder output) as the decoder's cross-attention takes it."""
        ...

    def generation_defaults(self) -> GenerationSettings:
        """Every option's default for this model, token ids included."""
        ...

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The model's parameters (the first one says where inputs go)."""
        ...


def resolve(
    defaults: GenerationSettings,
    options: Mapping[str, Any],
    decoder: Any,
    source: str = "generate()",
    *,
    prompt_length: int = 1,
    generation_config: Any = None,
) -> GenerationSettings:
    """``defaults`` with ``generation_config``'s fields, then the call's ``options`` (None = not given), applied and checked.

    As in transformers, the start token falls back to the decoder's ``bos_token_id`` and the
    pad token to the (first) eos token; in the result both are set (pad unless there is no eos).
    The lengths are resolved as transformers resolves them for an encoder-decoder model:
    ``max_new_tokens`` is set in the result (given, else ``max_length - prompt_length``,
    else 20) and ``max_length`` is ``prompt_length + max_new_tokens``.

    Args:
        defaults: the model's defaults (:meth:`Seq2SeqModel.generation_defaults`).
        options: the call's keyword options, field names of :class:`~seqweave.GenerationSettings`.
        decoder: the decoder, for its ``vocab_size``, ``max_length`` and ``config.bos_token_id``.
        source: how errors name the caller.
        prompt_length: the decoder prompt's length (1: the start token; more with ``decoder_input_ids``).
        generation_config: a transformers ``GenerationConfig`` (anything with ``to_dict()``), a
            dict of fields or a :class:`~seqweave.GenerationSettings`; see :func:`config_options`.

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
    from_config, bos = config_options(generation_config, source)
    s = defaults.merged(from_config, f"{source}: generation_config").merged(options, source)
    start, pad, eos = s.decoder_start_token_id, s.pad_token_id, s.eos_ids
    if start is None:
        start = bos
    if start is None:
        start = getattr(getattr(decoder, "config", None), "bos_token_id", None)
    if start is None:
        raise ConfigError(
            f"{source}: decoder_start_token_id is not set: pass it, or set it (or the decoder's "
            "bos_token_id) in the model's config"
        )
    if pad is None and eos is not None:
        pad = eos[0]
    new = s.max_new_tokens
    if new is None and s.max_length is not None:
        new = s.max_length - prompt_length
        if new < 1:
            raise ConfigError(
                f"{source}: max_length={s.max_length} leaves no room to generate after the decoder prompt "
                f"of {prompt_length} token(s); allowed: max_length > {prompt_length}"
            )
    elif new is None:
        new = DEFAULT_NEW_TOKENS  # transformers' default: 20 new tokens
    s = s.merged(
        {
            "decoder_start_token_id": start,
            "pad_token_id": pad,
            "max_new_tokens": new,
            "max_length": prompt_length + new,
        },
        source,
    )
    vocab = getattr(decoder, "vocab_size", None)
    vocab = vocab if isinstance(vocab, int) else None
    check_token_ids(dict(s), vocab, source)
    if vocab is not None:
        more = {
            "forced_bos_token_id": s.forced_bos_token_id,
            "forced_eos_token_id": s.forced_eos_token_id,
            "bad_words_ids": [t for w in s.bad_words_ids or () for t in w] or None,
        }
        for name, value in more.items():
            ids = value if isinstance(value, list) else [value]
            if any(v is not None and v >= vocab for v in ids):
                raise ConfigError(
                    f"{source}: {name}: must be below the decoder's vocab_size ({vocab}) (got {value})"
                )
    limit = getattr(decoder, "max_length", None)
    if isinstance(limit, int) and s.max_length > limit:
        raise ConfigError(
            f"{source}: max_new_tokens={s.max_new_tokens} after a decoder prompt of {prompt_length} makes "
            f"{s.max_length} decoder positions, but the decoder embeds at most {limit}; "
            f"allowed: max_new_tokens <= {limit - prompt_length}"
        )
    return s


#: Fields of a transformers ``GenerationConfig`` that change nothing we compute, whatever their
#: value (``use_cache``: we always decode with a cache, which gives the same tokens), or that
#: are inert at the value given here (the neutral values older transformers wrote out).
_INERT = {"use_cache": None, "output_attentions": False, "output_hidden_states": False,
          "renormalize_logits": False, "remove_invalid_values": False, "num_beam_groups": 1,
          "diversity_penalty": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
          "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "guidance_scale": 1.0,
          "low_memory": False, "token_healing": False, "is_assistant": False, "disable_compile": False,
          "transformers_version": None}


def config_options(generation_config: Any, source: str = "generate()") -> tuple[dict[str, Any], int | None]:
    """The options a ``generation_config=`` argument sets, and its ``bos_token_id`` (a start-token fallback).

    Takes a :class:`~seqweave.GenerationSettings` (the fields it sets to other than their
    defaults), a dict of its fields, or a transformers ``GenerationConfig`` (duck-typed:
    anything with ``to_dict()``; ``to_diff_dict()`` is read where it exists), whose fields
    left at None (transformers' "not set") are skipped, as are fields that change nothing we
    compute; ``bos_token_id`` is the start token when ``decoder_start_token_id`` is set nowhere.

    Raises:
        ConfigError: a field we do not support set to a value that would change the result,
            or a dict key that is not an option; the message names them.
    """
    if generation_config is None:
        return {}, None
    if isinstance(generation_config, GenerationSettings):
        return generation_config.model_dump(exclude_defaults=True), None
    if isinstance(generation_config, Mapping):
        data, strict = dict(generation_config), True
    elif callable(getattr(generation_config, "to_dict", None)):
        # to_diff_dict (the fields that differ from GenerationConfig()'s) where there is one:
        # transformers before 5 filled its defaults in (max_length=20, top_k=50, ...)
        as_dict = getattr(generation_config, "to_diff_dict", None) or generation_config.to_dict
        data, strict = dict(as_dict()), False
    else:
        raise ConfigError(
            f"{source}: generation_config must be a transformers GenerationConfig, a dict or a "
            f"seqweave.GenerationSettings, got {type(generation_config).__name__}"
        )
    bos = data.pop("bos_token_id", None)
    fields = GenerationSettings.model_fields
    unknown = sorted(k for k in data if k not in fields and not k.startswith("_"))
    if not strict:
        unknown = [
            k for k in unknown
            if data[k] is not None and not (k in _INERT and (_INERT[k] is None or data[k] == _INERT[k]))
        ]
    if unknown:
        shown = ", ".join(f"{k}={data[k]!r}" for k in unknown)
        raise ConfigError(
            f"{source}: generation_config sets option(s) seqweave does not support: {shown}; "
            f"supported: {', '.join(sorted(fields))}"
        )
    return {k: v for k, v in data.items() if k in fields and v is not None}, bos
