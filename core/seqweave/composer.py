"""The composer: any encoder and any decoder woven into one sequence-to-sequence model.

:class:`EncoderDecoder` is the model and its entry points; reading and writing checkpoints
lives in :mod:`seqweave.checkpoint`, composition files in :mod:`seqweave.composition`.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import generation
from .assembly import build_decoder, build_encoder, check_parts, shift_tokens_right, tie_encoder_to_decoder
from .cache import Cache
from .checkpoint import hf_config as hf_layout
from .checkpoint import load, save
from .checkpoint.report import LoadReport
from .composition import compose
from .config import TOKEN_ID_FIELDS, CompositionConfig, GenerationSettings
from .errors import ConfigError
from .generation import Generated
from .modelconfig import ModelConfigView
from .outputs import Encoded, EncoderOutput, Seq2SeqOutput
from .registry import Registry, default_registry
from .weights import WeightMap

__all__ = ["EncoderDecoder", "LoadReport", "build_decoder", "build_encoder", "shift_tokens_right"]

logger = logging.getLogger("seqweave")


class EncoderDecoder(nn.Module):
    """An encoder and a decoder composed into one sequence-to-sequence model.

    Works like transformers' ``EncoderDecoderModel``: ``labels`` become decoder inputs by
    shifting right, the loss is the mean cross-entropy over labels that are not -100, and
    ``enc_to_dec_proj`` maps the encoder's width to the decoder's when they differ.

    Args:
        encoder: any module satisfying :class:`seqweave.Encoder`.
        decoder: any module satisfying :class:`seqweave.Decoder`.
        decoder_start_token_id: first token of every decoder input.
        pad_token_id: padding token; -100 in labels becomes this in decoder inputs.
        eos_token_id: end-of-sequence token id(s), the default for generation.
        tie_encoder_decoder: share every encoder module's parameters with the decoder module of
            the same name where names and shapes match (transformers 4.x's ``tie_encoder_decoder``);
            the encoder takes the decoder's parameter objects, so the decoder's values win. See
            docs/tying.md.
        generation: defaults for :meth:`generate`.
        tokenizer: a folder or Hub id with tokenizer files, for the text-to-text tools.
        decoder_tokenizer: the target side's tokenizer when it differs from ``tokenizer``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        decoder_start_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        tie_encoder_decoder: bool = False,
        generation: GenerationSettings | Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        decoder_tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        check_parts(encoder, decoder)
        self.encoder = encoder
        self.decoder = decoder
        self.enc_to_dec_proj: nn.Linear | None = None
        if encoder.hidden_size != decoder.cross_attention_hidden_size:
            self.enc_to_dec_proj = nn.Linear(encoder.hidden_size, decoder.cross_attention_hidden_size)
        self.decoder_start_token_id = decoder_start_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.tie_encoder_decoder = tie_encoder_decoder
        #: encoder parameter names shared with the decoder (empty unless tie_encoder_decoder)
        self.tied_parameters: list[str] = []
        self.tie_weights()
        self.generation_settings = GenerationSettings.model_validate(dict(generation or {}))
        self.tokenizer_source = tokenizer
        self.decoder_tokenizer_source = decoder_tokenizer
        #: what loading did; assembled from modules, every tensor is new (the loaders replace the report)
        self.load_report = LoadReport(new=[n for n, _ in self.named_parameters()],
                                      tied=[f"encoder.{n}" for n in self.tied_parameters])
        #: config.json fields we carry but do not use, by part and at the top ("top"), written back on save
        self.hf_extra: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}, "top": {}}

    @property
    def config(self) -> ModelConfigView:
        """transformers' ``model.config``: a live view of this model (see :class:`~seqweave.modelconfig.ModelConfigView`).

        ``model.config.decoder_start_token_id = 101`` sets :attr:`decoder_start_token_id`, which
        forward, generate and save use; ``model.config.decoder.vocab_size`` reads the decoder's config.
        """
        return ModelConfigView(self)

    def tie_weights(self) -> None:
        """Share encoder modules' parameters with the same-named decoder modules, if ``tie_encoder_decoder``.

        Called again after every load (``assign=True`` replaces parameter objects); see
        :func:`seqweave.assembly.tie_encoder_to_decoder` for which modules are shared.
        """
        if self.tie_encoder_decoder:
            self.tied_parameters = tie_encoder_to_decoder(self.encoder, self.decoder)

    # ------------------------------------------------------------------------------------
    # Forward

    #: transformers' Trainer passes ``num_items_in_batch`` to a model that says it takes it.
    accepts_loss_kwargs = True
    main_input_name = "input_ids"

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: EncoderOutput | tuple | torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        past_key_values: Cache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqOutput | tuple:
        """Run the encoder (unless ``encoder_outputs`` is given) and the decoder.

        The arguments, their order and their routing are transformers' ``EncoderDecoderModel.forward``'s,
        so ``model(**tokenizer(texts, return_tensors="pt"), labels=labels)`` works.

        Args:
            input_ids: source tokens [b, s].
            attention_mask: [b, s], 1 for tokens, 0 for padding.
            decoder_input_ids: target inputs [b, t]; made from ``labels`` when absent.
            decoder_attention_mask: [b, past + t]; made from the pad token when labels are shifted.
            encoder_outputs: reuse an earlier encoder result (or its last hidden state).
            cache: continue incremental decoding from this :class:`~seqweave.Cache`.
            inputs_embeds: [b, s, d] source token embeddings instead of ``input_ids``.
            decoder_inputs_embeds: [b, t, d] target token embeddings instead of ``decoder_input_ids``.
            labels: [b, t] target tokens, -100 where no loss is wanted.
            use_cache: return a cache (a new one when ``cache`` is None); default: when ``cache`` is given,
                else ``model.config.use_cache`` (False unless set).
            output_attentions, output_hidden_states: return every layer's attentions / hidden states;
                default ``model.config``'s (False unless set).
            return_dict: False returns :meth:`Seq2SeqOutput.to_tuple` (fields that are not None, loss first).
            past_key_values: transformers' older name of ``cache``.
            num_items_in_batch: normalise the loss as transformers' Trainer asks: the sum of the token
                losses divided by this (the labels counted over a whole gradient-accumulation step).
            kwargs: as in transformers, ``decoder_<name>`` goes to the decoder as ``<name>``, every
                other name to the encoder. Both take ``token_type_ids``; a name neither uses is
                ignored, and a log line says so once.

        Returns:
            A :class:`Seq2SeqOutput` with ``loss`` (when labels are given) and ``logits`` [b, t, vocab].

        Raises:
            ConfigError: neither ``decoder_input_ids``, ``decoder_inputs_embeds`` nor ``labels``; both
                ``cache`` and ``past_key_values``; a cache that is not a :class:`~seqweave.Cache`;
                an argument the model would use but does not support (``position_ids``, ``head_mask``).
        """
        cache = _one_cache(cache, past_key_values)
        enc_kwargs, dec_kwargs = _route(kwargs)
        if None in (use_cache, output_attentions, output_hidden_states):  # model.config's, as in transformers
            top = self.hf_extra["top"]
            use_cache = top.get("use_cache") if use_cache is None and cache is None else use_cache
            output_attentions = bool(top.get("output_attentions") if output_attentions is None else output_attentions)
            output_hidden_states = bool(
                top.get("output_hidden_states") if output_hidden_states is None else output_hidden_states
            )
        source = self.encode(
            input_ids,
            attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **enc_kwargs,
        )
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(labels, self.pad_token_id, self.decoder_start_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = decoder_input_ids.ne(self.pad_token_id).long()
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ConfigError("pass decoder_input_ids, decoder_inputs_embeds or labels")
        if use_cache and cache is None:
            cache = Cache(self.decoder.num_layers)
        dec_kwargs = _for_part(self.decoder, "decoder", {**dec_kwargs, "inputs_embeds": decoder_inputs_embeds})
        out = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            encoder_hidden_states=source.states,
            encoder_attention_mask=source.mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **dec_kwargs,
        )
        loss = None
        if labels is not None:
            flat_logits, flat_labels = out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1)
            if num_items_in_batch is None:
                loss = F.cross_entropy(flat_logits, flat_labels)
            else:
                loss = F.cross_entropy(flat_logits, flat_labels, reduction="sum") / num_items_in_batch
        result = Seq2SeqOutput(
            loss=loss,
            logits=out.logits,
            cache=cache if use_cache or (use_cache is None and cache is not None) else None,
            decoder_hidden_states=out.hidden_states,
            decoder_attentions=out.attentions,
            cross_attentions=out.cross_attentions,
            encoder_last_hidden_state=source.encoder.last_hidden_state,
            encoder_hidden_states=source.encoder.hidden_states,
            encoder_attentions=source.encoder.attentions,
        )
        return result if return_dict is None or return_dict else result.to_tuple()

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_outputs: EncoderOutput | tuple | torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Encoded:
        """Run the encoder and bring its states to the width the decoder's cross-attention takes.

        Used by :meth:`forward` and by generation (once per source, however many beams).

        Args:
            input_ids: source tokens [b, s] (unless ``inputs_embeds`` or ``encoder_outputs`` is given).
            attention_mask: [b, s], 1 for tokens, 0 for padding; passed on as the source mask.
            token_type_ids: [b, s] token types (BERT's segments), for encoders that have them.
            inputs_embeds: [b, s, d] token embeddings instead of ``input_ids``.
            encoder_outputs: reuse an earlier encoder result (an :class:`EncoderOutput`, a
                tuple in its field order, or its last hidden state [b, s, d_enc]).
            output_attentions, output_hidden_states: ask the encoder for them.

        Returns:
            An :class:`~seqweave.outputs.Encoded`: ``states`` [b, s, d_cross] (projected by
            ``enc_to_dec_proj`` when the widths differ), ``mask`` and the encoder's own output.
        """
        if encoder_outputs is None:
            if input_ids is None and inputs_embeds is None:
                raise ConfigError("pass input_ids, inputs_embeds or encoder_outputs")
            extra = _for_part(self.encoder, "encoder", {"token_type_ids": token_type_ids,
                                                        "inputs_embeds": inputs_embeds})
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                **extra,
            )
        elif isinstance(encoder_outputs, torch.Tensor):
            encoder_outputs = EncoderOutput(encoder_outputs)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = EncoderOutput(*encoder_outputs)
        states = encoder_outputs.last_hidden_state
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        return Encoded(states, attention_mask, encoder_outputs)

    # ------------------------------------------------------------------------------------
    # Generation

    def generation_defaults(self) -> GenerationSettings:
        """Every generation option's default for this model, as :meth:`generate` resolves its options against.

        :attr:`generation_settings` (the config's ``generation:`` block), whose token ids left at
        None are the model's own ``decoder_start_token_id``, ``pad_token_id`` and ``eos_token_id``.
        """
        ids = {k: getattr(self, k) for k in TOKEN_ID_FIELDS if getattr(self.generation_settings, k) is None}
        return self.generation_settings.merged(ids, type(self).__name__)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        cuda_graph: bool | None = None,
        static_cache: bool | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Generate target token ids for the sources ``input_ids`` [b, s].

        Greedy search (default), sampling (``do_sample=True``) or beam search
        (``num_beams > 1``), with the semantics of transformers' ``generate`` for an
        encoder-decoder model.

        Args:
            input_ids: [b, s] source token ids.
            attention_mask: [b, s] 1 for tokens, 0 for padding (padded sources).
            options: the fields of :class:`~seqweave.GenerationSettings`, each documented
                there (``max_new_tokens``, ``num_beams``, ``do_sample``, ``temperature``,
                ``top_k``, ``top_p``, ``eos_token_id``, ...; docs/generation.md has the table).
                An option left out or None takes the model's default,
                :meth:`generation_defaults`: the config's ``generation:`` block, then the
                model's token ids; the start token falls back to the decoder's ``bos_token_id``
                and the pad token to the (first) eos id, as in transformers.

            These belong to this call only and are not settings:

            generator: the random generator sampling draws from (the global one if None).
            streamer: called with each step's new tokens [b * num_return_sequences] as
                they are chosen (greedy search and sampling).
            cuda_graph: capture the decode step in a CUDA graph and replay it (default: on CUDA).
            static_cache: decode with a static cache (fixed shapes, device-side position);
                the default is True exactly when ``cuda_graph`` is. On the CPU it is slower
                and useful to test the code path the graph captures.

        Returns:
            [b * num_return_sequences, 1 + n] token ids: the start token, then the
            generated tokens; rows that end early are padded with ``pad_token_id``, and
            ``n`` is the longest row's length (``max_new_tokens`` unless every row ended).

        Raises:
            ConfigError: an option is unknown, out of range or unsupported in this combination.
        """
        return generation.generate(self, input_ids, attention_mask, generator=generator, streamer=streamer,
                                   cuda_graph=cuda_graph, static_cache=static_cache, **options)

    def generate_with_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options: Any
    ) -> Generated:
        """:meth:`generate` (same arguments but ``streamer``), also returning each sequence's score.

        See :class:`seqweave.Generated`.
        """
        return generation.generate(self, input_ids, attention_mask, return_scores=True, **options)

    def generate_stream(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options: Any
    ) -> Iterator[torch.Tensor]:
        """Like :meth:`generate` (greedy search or sampling), yielding each step's new tokens [b * r] as they come.

        Same arguments as :meth:`generate` but ``streamer``. The arguments are checked and the
        encoder runs when this is called; the yielded columns, after the start token, are
        exactly what :meth:`generate` returns.
        """
        return generation.generate_stream(self, input_ids, attention_mask, **options)

    # ------------------------------------------------------------------------------------
    # The Hugging Face layout (seqweave.checkpoint does the work)

    def weight_map(self) -> WeightMap:
        """The two-way map between this model's state dict and transformers' ``EncoderDecoderModel`` layout."""
        return hf_layout.weight_map_of(self)

    def hf_config(self) -> dict[str, Any]:
        """The ``config.json`` transformers' ``EncoderDecoderModel`` reads."""
        return hf_layout.hf_config(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json``, ``generation_config.json`` and ``model.safetensors``.

        transformers' ``EncoderDecoderModel.from_pretrained`` loads the folder. Every file
        is written to a temporary name first and renamed into place only when all are
        complete, so a failed save leaves an earlier checkpoint in the folder intact.
        """
        save.save_pretrained(self, save_directory)

    # ------------------------------------------------------------------------------------
    # Loading (seqweave.checkpoint.load does the work)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        registry: Registry | None = None,
    ) -> EncoderDecoder:
        """Load a composite checkpoint: a transformers ``EncoderDecoderModel`` folder, or ours.

        Args:
            name_or_path: a local folder or a Hugging Face Hub id.
            revision: the Hub revision to pin.
            dtype: cast floating weights to this; None keeps the checkpoint's dtype.
            device: where the weights go.
            registry: the architecture registry (the installed plugins by default).

        Raises:
            CheckpointError: missing files, an unregistered architecture, missing or
                misshapen tensors; the message names the file and the tensor or field.
        """
        return load.load_pretrained(cls, name_or_path, revision, dtype=dtype, device=device,
                                    registry=registry or default_registry())

    @classmethod
    def from_pretrained_parts(
        cls,
        encoder: str | os.PathLike,
        decoder: str | os.PathLike,
        *,
        decoder_start_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        tie_encoder_decoder: bool = False,
        encoder_revision: str | None = None,
        decoder_revision: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        registry: Registry | None = None,
        **overrides: Any,
    ) -> EncoderDecoder:
        """Warm-start from two single-model checkpoints (transformers' ``from_encoder_decoder_pretrained``).

        Tensors the decoder checkpoint lacks (cross-attention, a head) and
        ``enc_to_dec_proj`` are created and initialised; :attr:`load_report` lists them
        and one log line names them.

        Args:
            encoder: folder or Hub id of the encoder checkpoint.
            decoder: folder or Hub id of the decoder checkpoint.
            tie_encoder_decoder: share same-name, same-shape weights after loading (the
                decoder checkpoint's values win), as transformers 4.x's keyword of that name did.
            overrides: ``encoder_<field>=...`` / ``decoder_<field>=...`` change a part's
                config field (e.g. ``decoder_num_hidden_layers=2``).
        """
        specs = load.part_specs(encoder, decoder, {"encoder": encoder_revision, "decoder": decoder_revision},
                                overrides)
        return load.load_composition(cls, specs, registry or default_registry(), dtype=dtype, device=device,
                                     decoder_start_token_id=decoder_start_token_id, pad_token_id=pad_token_id,
                                     eos_token_id=eos_token_id, tie_encoder_decoder=tie_encoder_decoder)

    @classmethod
    def from_config(
        cls,
        config: CompositionConfig | Mapping[str, Any] | str | os.PathLike,
        *,
        overrides: list[str] | tuple[str, ...] = (),
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        registry: Registry | None = None,
    ) -> EncoderDecoder:
        """Build the model a composition config describes; pretrained parts are loaded, the rest initialised."""
        return compose(cls, config, overrides, registry=registry or default_registry(), dtype=dtype, device=device)


#: keyword arguments transformers' parts would use but ours do not support: refused, not ignored
_UNSUPPORTED = ("position_ids", "head_mask", "cross_attn_head_mask")
#: keyword arguments of the parts that we take (after routing)
_PART_KWARGS = ("token_type_ids",)
_ignored_logged: set[str] = set()


def _route(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split forward's extra keywords as transformers does: ``decoder_x`` to the decoder as ``x``, the rest to the encoder.

    Keeps the ones our parts take (when not None); refuses those the parts would use but ours
    cannot; logs once the names that are ignored, as transformers' parts ignore them.
    """
    routed: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    ignored = []
    for key, value in kwargs.items():
        side, name = (1, key.removeprefix("decoder_")) if key.startswith("decoder_") else (0, key)
        if name in _PART_KWARGS:
            if value is not None:
                routed[side][name] = value
        elif name in _UNSUPPORTED:
            if value is not None:
                raise ConfigError(f"{key}: not supported by seqweave's {('encoder', 'decoder')[side]}; leave it None")
        else:
            ignored.append(key)
    new = sorted(set(ignored) - _ignored_logged)
    if new:
        _ignored_logged.update(new)
        logger.warning("EncoderDecoder.forward: ignored the argument(s) %s (no part uses them)", ", ".join(new))
    return routed


def _for_part(module: nn.Module, role: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The optional keywords given (not None) that ``module`` takes.

    A part written to the protocol before these keywords existed still composes: all-zero token
    types (what every BERT tokenizer returns) are dropped for it; anything else it cannot take
    is a ConfigError naming it.
    """
    given = {k: v for k, v in kwargs.items() if v is not None}
    if not given:
        return given
    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return given
    out = {}
    for key, value in given.items():
        if key in params:
            out[key] = value
        elif not (key == "token_type_ids" and not value.any()):
            prefix = "decoder_" if role == "decoder" else ""
            raise ConfigError(f"{prefix}{key}: the {role} ({type(module).__name__}) does not take {key}")
    return out


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """``cache``, or transformers' older name for it, checked to be ours."""
    if past_key_values is not None:
        if cache is not None:
            raise ConfigError("pass cache or past_key_values (its older name), not both")
        cache = past_key_values
    if cache is not None and not isinstance(cache, Cache):
        raise ConfigError(
            f"cache/past_key_values: expected a seqweave.Cache (as a previous output's .cache), got "
            f"{type(cache).__name__}"
        )
    return cache
