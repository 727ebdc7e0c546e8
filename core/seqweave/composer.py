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
from .config import TOKEN_ID_FIELDS, GenerationSettings, PartConfig
from .errors import ConfigError
from .generation import Generated
from .hub import resolve
from .modelconfig import GenerationConfigView, ModelConfigView
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
        config: instead of ``encoder`` and ``decoder``, a transformers ``EncoderDecoderConfig``
            (or its dict): both parts are built from its part configs and initialised at random,
            as ``EncoderDecoderModel(config=...)`` does; its token ids are the defaults of the
            keywords above.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        *,
        config: Any = None,
        decoder_start_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        tie_encoder_decoder: bool = False,
        generation: GenerationSettings | Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        decoder_tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        carried = None
        if config is not None:  # transformers' EncoderDecoderModel(config=...): random parts of that config
            if encoder is not None or decoder is not None:
                raise ConfigError("pass either config or encoder and decoder, not both")
            encoder, decoder, fields, carried = _parts_of_hf_config(config)
            decoder_start_token_id = decoder_start_token_id if decoder_start_token_id is not None \
                else fields.get("decoder_start_token_id")
            pad_token_id = pad_token_id if pad_token_id is not None else fields.get("pad_token_id")
            eos_token_id = eos_token_id if eos_token_id is not None else fields.get("eos_token_id")
            tie_encoder_decoder = tie_encoder_decoder or bool(fields.get("tie_encoder_decoder"))
        if encoder is None or decoder is None:
            raise ConfigError("EncoderDecoder needs an encoder and a decoder (or config=, an EncoderDecoderConfig)")
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
        self.hf_extra: dict[str, dict[str, Any]] = carried or {"encoder": {}, "decoder": {}, "top": {}}
        self._register_state_dict_hook(_distinct_tensors)

    @property
    def config(self) -> ModelConfigView:
        """transformers' ``model.config``: a live view of this model (see :class:`~seqweave.modelconfig.ModelConfigView`).

        ``model.config.decoder_start_token_id = 101`` sets :attr:`decoder_start_token_id`, which
        forward, generate and save use; ``model.config.decoder.vocab_size`` reads the decoder's config.
        """
        return ModelConfigView(self)

    @property
    def generation_config(self) -> GenerationConfigView:
        """transformers' ``model.generation_config``: a live view of the generation defaults.

        Reading gives the options ``generate`` uses when a call leaves them out; setting a field
        (``model.generation_config.num_beams = 4``) or assigning a whole transformers
        ``GenerationConfig``, a dict or a :class:`~seqweave.GenerationSettings` changes
        :attr:`generation_settings`. See :class:`~seqweave.modelconfig.GenerationConfigView`.
        """
        return GenerationConfigView(self)

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        options, _ = generation.config_options(value, "generation_config")
        self.generation_settings = GenerationSettings.model_validate(options)

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
            The loss is the mean cross-entropy over the labels that are not -100; when every label is
            -100 it is 0 with zero gradients (transformers gives NaN).

        Raises:
            ConfigError: an empty batch or sequence; ids outside ``[0, vocab_size)`` of their part (labels
                may also be -100); an ``attention_mask`` of another shape than ``input_ids``, or a mask that
                is not 0/1 (an additive 0/-inf mask, a 2 for a token); ``num_items_in_batch`` that is not a
                count; neither ``decoder_input_ids``,
                ``decoder_inputs_embeds`` nor ``labels``; both
                ``cache`` and ``past_key_values``; a cache that is not a :class:`~seqweave.Cache`;
                an argument the model would use but does not support (``position_ids``, ``head_mask``).
        """
        cache = _one_cache(cache, past_key_values)
        enc_kwargs, dec_kwargs = _route(kwargs)
        vocab = generation.vocab_of(self.decoder)
        generation.check_tokens("decoder_input_ids", decoder_input_ids, vocab)
        generation.check_tokens("labels", labels, vocab, ignore=-100)
        generation.check_mask("decoder_attention_mask", decoder_attention_mask)
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
                # the mean over the labels that count; 0 (with zero gradients), not NaN, when none counts
                counted = flat_labels.ne(-100).sum().clamp(min=1)  # no host sync: stays on the device
                loss = F.cross_entropy(flat_logits, flat_labels, reduction="sum") / counted
            else:
                loss = F.cross_entropy(flat_logits, flat_labels, reduction="sum") / _items(num_items_in_batch)
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
            if input_ids is not None:
                generation.check_tokens("input_ids", input_ids, generation.vocab_of(self.encoder))
            ids_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            generation.check_mask("attention_mask", attention_mask, ids_shape)
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
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        cuda_graph: bool | None = None,
        static_cache: bool | None = None,
        compile: bool | str = False,
        generation_config: Any = None,
        decoder_input_ids: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        synced_gpus: bool | None = None,
        **options: Any,
    ) -> Any:
        """Generate target token ids for the sources ``input_ids`` [b, s].

        Greedy search (default), sampling (``do_sample=True``) or beam search
        (``num_beams > 1``), with the semantics of transformers' ``generate`` for an
        encoder-decoder model.

        A tokenizer's whole output can be passed as keyword arguments
        (``model.generate(**tokenizer(texts, return_tensors="pt"))``).

        Args:
            input_ids: [b, s] source token ids (unless ``encoder_outputs`` is given).
            attention_mask: [b, s] 1 for tokens, 0 for padding (padded sources).
            options: the fields of :class:`~seqweave.GenerationSettings`, each documented
                there (``max_new_tokens``, ``max_length``, ``num_beams``, ``do_sample``,
                ``bad_words_ids``, ``eos_token_id``, ``return_dict_in_generate``, ...;
                docs/generation.md has the table). An option left out or None takes
                ``generation_config``'s value, else the model's default,
                :meth:`generation_defaults`: the config's ``generation:`` block, then the
                model's token ids; the start token falls back to the decoder's ``bos_token_id``
                and the pad token to the (first) eos id, as in transformers.
            generation_config: a transformers ``GenerationConfig``, a dict of options or a
                :class:`~seqweave.GenerationSettings`: its fields apply under the keyword
                options (transformers' precedence); a transformers field we do not support,
                set, is a :class:`~seqweave.ConfigError` naming it.
            decoder_input_ids: [b, P] a forced decoder prefix: generation continues after it
                (the start token is prepended unless every row starts with it, as in
                transformers); the output starts with it.
            encoder_outputs: an earlier encoder result (ours, transformers', a tuple or the
                last hidden state [b, s, d]): the encoder does not run.
            token_type_ids: [b, s] segment ids, passed to the encoder (BERT's token types).

            These belong to this call only and are not settings:

            generator: the random generator sampling draws from (the global one if None).
            streamer: called with each step's new tokens [b * num_return_sequences] as
                they are chosen (greedy search and sampling).
            cuda_graph: capture the decode step in a CUDA graph and replay it (default: on CUDA).
                The graph is kept for later calls whose shapes fall in the same bucket
                (docs/generation.md, "CUDA"); ``seqweave.generation.clear_graphs()`` frees them.
            static_cache: decode with a static cache (fixed shapes, device-side position);
                the default is True exactly when ``cuda_graph`` or ``compile`` is. On the CPU it
                is slower and useful to test the code path the graph captures.
            compile: compile the static decode step with ``torch.compile`` (inductor) before
                capturing it: fewer, fused kernels per token, after a compilation of tens of
                seconds on the first call of a bucket. A mode name
                (``"max-autotune-no-cudagraphs"``: autotuned matrix products, minutes to compile)
                is passed on; the modes with CUDA graphs are refused, generation records its own.
            labels: ignored, as transformers' ``generate`` ignores them
                (``Seq2SeqTrainer(predict_with_generate=True)`` passes the whole batch).
            synced_gpus: transformers' flag to keep every rank stepping until all are done
                (DeepSpeed ZeRO-3, FSDP); each process here generates on its own, so it is
                accepted when False or when no process group is running, and refused otherwise.

        Returns:
            [b * num_return_sequences, P + n] token ids: the decoder prompt (the start token),
            then the generated tokens; rows that end early are padded with ``pad_token_id``,
            and ``n`` is the longest row's length (``max_new_tokens`` unless every row
            ended). With ``return_dict_in_generate=True``, transformers' output object
            (:class:`~seqweave.generation.GenerateEncoderDecoderOutput`, or
            :class:`~seqweave.generation.GenerateBeamEncoderDecoderOutput` for beam search)
            holding ``sequences`` and, as asked, ``scores``, ``logits``,
            ``sequences_scores`` and ``beam_indices``.

        Raises:
            ConfigError: an option is unknown, out of range or unsupported in this combination.
        """
        if synced_gpus and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ConfigError("generate(): synced_gpus=True is not supported: each process generates on its own")
        return generation.generate(self, input_ids, attention_mask, generator=generator, streamer=streamer,
                                   cuda_graph=cuda_graph, static_cache=static_cache, compile=compile,
                                   generation_config=generation_config, decoder_input_ids=decoder_input_ids,
                                   encoder_outputs=encoder_outputs, token_type_ids=token_type_ids, **options)

    def generate_with_scores(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **options: Any
    ) -> Generated:
        """:meth:`generate` (same arguments but ``streamer``), also returning each sequence's score.

        See :class:`seqweave.Generated`.
        """
        return generation.generate(self, input_ids, attention_mask, return_scores=True, **options)

    def generate_stream(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **options: Any
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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        *,
        max_shard_size: int | str = save.DEFAULT_MAX_SHARD_SIZE,
        safe_serialization: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json``, ``generation_config.json`` and the weights, as transformers writes them.

        transformers' ``EncoderDecoderModel.from_pretrained`` loads the folder. The files go
        to a sibling folder that replaces this one only when all are complete and synced, so the
        folder holds the whole old or new checkpoint, even if the process dies; other files stay.

        Args:
            save_directory: the folder (created if needed).
            is_main_process: False writes nothing (the other ranks of a distributed run).
            state_dict: the tensors to write, by this model's names; its own when None.
            max_shard_size: past this size (bytes, or text such as ``"500MB"``) the weights are
                split into shards plus ``model.safetensors.index.json``, named as transformers names them.
            safe_serialization: safetensors (default) or ``torch.save``'s zip ``pytorch_model.bin``.
            kwargs: transformers' ``push_to_hub``, ``variant``, ``token``, ``save_peft_format``,
                ``save_original_format`` at values that change nothing; others are a :class:`ConfigError`.
        """
        _check_save_kwargs(kwargs)
        if is_main_process:
            save.save_pretrained(self, save_directory, state_dict=state_dict, max_shard_size=max_shard_size,
                                 safe_serialization=safe_serialization)

    # ------------------------------------------------------------------------------------
    # Loading (seqweave.checkpoint.load does the work)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: Any = None,
        attn_implementation: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        config: Any = None,
        registry: Registry | None = None,
        **kwargs: Any,
    ) -> EncoderDecoder:
        """Load a composite checkpoint: a transformers ``EncoderDecoderModel`` folder, or ours.

        The keyword arguments are transformers' ``from_pretrained`` ones, with the same meaning.

        Args:
            name_or_path: a local folder or a Hugging Face Hub id.
            revision: the Hub revision to pin.
            dtype: cast floating weights to this (a ``torch.dtype`` or its name); None or
                ``"auto"`` keeps the checkpoint's dtype. ``torch_dtype`` is the older name.
            device: where the weights go (default ``"cpu"``).
            device_map: transformers' spelling of ``device``: one device (``"cuda:0"``, ``0``, a
                ``torch.device``, ``{"": "cpu"}``) or ``"auto"`` (CUDA if available, else the
                CPU). A map that spreads the model over several devices is a :class:`ConfigError`:
                a seqweave model lives on one device.
            attn_implementation: ``"sdpa"`` or ``"eager"`` (the same computation here; see
                docs/migrating.md), or ``"flash_attention_2"``/``"flash_attention_3"``/``"flex_attention"``,
                accepted with one log line: torch's SDPA, which picks flash kernels itself on GPUs
                that have them, computes the same function.
            cache_dir, local_files_only, token: passed to ``huggingface_hub``
                (see :func:`seqweave.hub.resolve`).
            config: a transformers ``EncoderDecoderConfig`` (or its dict, or ``model.config``)
                to use instead of the folder's ``config.json``, as transformers' ``config=``.
            registry: the architecture registry (the installed plugins by default).
            kwargs: ``decoder_start_token_id``, ``pad_token_id``, ``eos_token_id`` set those fields
                after loading, as transformers sets config fields from keyword arguments; a few of
                transformers' loading switches that change nothing here (``low_cpu_mem_usage``,
                ``use_safetensors``, ...) are logged as ignored; anything else is a :class:`ConfigError`.

        Raises:
            CheckpointError: missing files, an unregistered architecture, missing or
                misshapen tensors; the message names the file and the tensor or field.
            ConfigError: an argument is invalid; the message names it.
        """
        dtype, device = _placement(dtype, torch_dtype, device, device_map)
        attn = _attn_implementation(attn_implementation)
        fields = _top_fields(kwargs, "from_pretrained")
        folder = resolve(name_or_path, revision, cache_dir=cache_dir, local_files_only=local_files_only,
                         token=token)
        if config is not None:
            config = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
            if not isinstance(config, Mapping):
                raise ConfigError(f"from_pretrained: config must be an EncoderDecoderConfig or a dict, not "
                                  f"{type(config).__name__}")
        model = load.load_pretrained(cls, folder, None, dtype=dtype, device=device,
                                     registry=registry or default_registry(), config=config)
        for key, value in fields.items():
            setattr(model, key, value)
        model.attn_implementation = attn
        return model

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
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: Any = None,
        attn_implementation: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
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
            dtype, torch_dtype, device, device_map, attn_implementation, cache_dir,
                local_files_only, token: as in :meth:`from_pretrained`, for both parts;
                ``encoder_cache_dir=`` / ``decoder_token=`` ... set the Hub ones of one part.
            overrides: ``encoder_<field>=...`` / ``decoder_<field>=...`` change a part's
                config field (e.g. ``decoder_num_hidden_layers=2``).
        """
        dtype, device = _placement(dtype, torch_dtype, device, device_map)
        attn = _attn_implementation(attn_implementation)
        folders = {}
        for role, path, revision in (("encoder", encoder, encoder_revision),
                                     ("decoder", decoder, decoder_revision)):
            hub = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
            hub.update({k: overrides.pop(f"{role}_{k}") for k in list(hub) if f"{role}_{k}" in overrides})
            folders[role] = resolve(path, revision, **hub)
        specs = load.part_specs(folders["encoder"], folders["decoder"], {}, overrides)
        model = load.load_composition(cls, specs, registry or default_registry(), dtype=dtype, device=device,
                                      decoder_start_token_id=decoder_start_token_id,
                                      pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                      tie_encoder_decoder=tie_encoder_decoder)
        model.attn_implementation = attn
        return model

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        decoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        *model_args: Any,
        **kwargs: Any,
    ) -> EncoderDecoder:
        """transformers' name for :meth:`from_pretrained_parts`, with its keyword conventions.

        ``encoder_<field>=`` / ``decoder_<field>=`` change a part's config field
        (``decoder_num_hidden_layers=2``) or set a part's Hub argument (``encoder_revision=``,
        ``decoder_cache_dir=``, ``encoder_token=``, ``decoder_local_files_only=``); the
        others are the composite's (``decoder_start_token_id``, ``pad_token_id``,
        ``eos_token_id``, ``tie_encoder_decoder``, ``dtype``/``torch_dtype``, ``device_map``,
        ``attn_implementation``, ``cache_dir``, ``token``, ``local_files_only``).

        Differs from transformers on purpose (docs/migrating.md): ``decoder_start_token_id=``
        sets the composite's start token (transformers files it in the decoder's config as
        ``start_token_id``, where nothing reads it); ``torch_dtype`` and ``device_map`` place
        the whole model; positional ``model_args`` and ``encoder_model=`` / ``decoder_model=``
        (ready modules) are not taken: compose modules with ``EncoderDecoder(encoder, decoder)``.

        Raises:
            ConfigError: a checkpoint path is missing, or an argument is not one of the above.
        """
        if model_args:
            raise ConfigError(
                f"from_encoder_decoder_pretrained: {len(model_args)} positional model argument(s) given; "
                "pass part settings as encoder_<field>= / decoder_<field>= keyword arguments"
            )
        for role, path in (("encoder", encoder_pretrained_model_name_or_path),
                           ("decoder", decoder_pretrained_model_name_or_path)):
            if f"{role}_model" in kwargs:
                raise ConfigError(
                    f"from_encoder_decoder_pretrained: {role}_model= (a ready module) is not taken; "
                    f"compose ready modules with seqweave.EncoderDecoder(encoder, decoder)"
                )
            if path is None:
                raise ConfigError(
                    f"from_encoder_decoder_pretrained: {role}_pretrained_model_name_or_path is required"
                )
        # transformers sets these itself whatever is passed (with a log line): the role decides them
        roles = sorted(k for k in kwargs if k.partition("_")[2] in hf_layout.ROLE_FIELDS
                       and k.partition("_")[0] in ("encoder", "decoder"))
        if roles:
            logger.info("from_encoder_decoder_pretrained: ignored %s (the part's role sets them)", ", ".join(roles))
            kwargs = {k: v for k, v in kwargs.items() if k not in roles}
        return cls.from_pretrained_parts(encoder_pretrained_model_name_or_path,
                                         decoder_pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        overrides: list[str] | tuple[str, ...] = (),
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        registry: Registry | None = None,
    ) -> EncoderDecoder:
        """Build the model a config describes; pretrained parts are loaded, the rest initialised.

        Args:
            config: a composition config (file, mapping or :class:`CompositionConfig`), or a
                transformers ``EncoderDecoderConfig`` (anything with ``to_dict()`` and
                ``model_type == "encoder-decoder"``) or its dict: a randomly initialised model of
                those two part configs and top-level token ids, as ``EncoderDecoderModel(config=...)``
                builds; fields of theirs that we do not use are kept and written back on save.
            overrides: ``key.sub=value`` changes to a composition config.
            dtype, torch_dtype, device: the parameters' dtype and device.
        """
        dtype, device = _placement(dtype, torch_dtype, device, None)
        registry = registry or default_registry()
        data = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
        if isinstance(data, Mapping) and data.get("model_type") == hf_layout.COMPOSITE_MODEL_TYPE:
            if overrides:
                raise ConfigError(
                    "from_config: overrides apply to composition configs, not to an EncoderDecoderConfig"
                )
            return _from_hf_config(cls, data, registry, dtype=dtype, device=device)
        return compose(cls, config, overrides, registry=registry, dtype=dtype, device=device)

    # ------------------------------------------------------------------------------------
    # Fine-tuning helpers, under transformers' names

    #: what ``from_pretrained(attn_implementation=...)`` was given; the computation is SDPA's whichever it is
    attn_implementation: str = "sdpa"
    #: transformers' flag that Trainer reads before it turns checkpointing on
    supports_gradient_checkpointing = True

    def get_encoder(self) -> nn.Module:
        """The encoder (transformers' ``get_encoder``)."""
        return self.encoder

    def get_decoder(self) -> nn.Module:
        """The decoder (transformers' ``get_decoder``)."""
        return self.decoder

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's token embedding table, as transformers' ``EncoderDecoderModel`` returns."""
        return self.encoder.embeddings.tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the encoder's token embedding table."""
        self.encoder.embeddings.tokens = value

    def get_output_embeddings(self) -> nn.Module:
        """The decoder's output projection (the vocabulary logits' ``Linear``)."""
        return self.decoder.head.proj

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the decoder's output projection; its rows are the decoder's vocabulary."""
        self.decoder.head.proj = value
        self.decoder.vocab_size = value.out_features

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters, as transformers counts them (a shared tensor once).

        Args:
            only_trainable: count only parameters with ``requires_grad``.
            exclude_embeddings: leave out the weights of ``nn.Embedding`` modules (token,
                position and token-type tables).
        """
        embeddings = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if not (exclude_embeddings and name in embeddings) and (p.requires_grad or not only_trainable)
        )

    @property
    def device(self) -> torch.device:
        """The device of the parameters (the model lives on one)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the floating parameters."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether :meth:`gradient_checkpointing_enable` is in effect (in either part)."""
        return any(getattr(m, "gradient_checkpointing", False) for m in (self.encoder, self.decoder))

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: Mapping[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute each layer's activations in the backward pass instead of keeping them (saves memory).

        Per layer, with ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: gradients
        equal those without. In effect while training (``model.train()``) without a cache; it
        does nothing in evaluation or generation.

        Args:
            activation_checkpointing_kwargs: passed to ``torch.utils.checkpoint.checkpoint``
                (``{"use_reentrant": False}`` unless given).
            every_n_layers: checkpoint every n-th layer of each stack (the first, n+1-th, ...).
            offload: keep the saved layer inputs in (pinned) CPU memory.

        Raises:
            ConfigError: a part does not support it (a module of a plugin's own making).
        """
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ConfigError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
        for role in ("encoder", "decoder"):
            part = getattr(self, role)
            if not hasattr(part, "set_gradient_checkpointing"):
                raise ConfigError(
                    f"the {role} ({type(part).__name__}) does not support gradient checkpointing"
                )
            part.set_gradient_checkpointing(True, dict(activation_checkpointing_kwargs or {}),
                                            every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """transformers' older name of :meth:`activation_checkpointing_enable` (same arguments)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        """Keep activations again (undo :meth:`activation_checkpointing_enable`)."""
        for part in (self.encoder, self.decoder):
            if hasattr(part, "set_gradient_checkpointing"):
                part.set_gradient_checkpointing(False)

    gradient_checkpointing_disable = activation_checkpointing_disable

    def enable_input_require_grads(self) -> None:
        """Make the token embeddings' outputs require gradients, even with frozen embeddings (PEFT's call).

        Reentrant checkpointing passes gradients only through inputs that require them; with
        frozen tables (adapters, LoRA) nothing would reach the layers. Hooks both parts' token
        tables (transformers hooks the encoder's, the one ``get_input_embeddings`` returns).
        """
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._input_grad_hooks = [part.embeddings.tokens.register_forward_hook(hook)
                                  for part in (self.encoder, self.decoder)]

    def disable_input_require_grads(self) -> None:
        """Undo :meth:`enable_input_require_grads`."""
        for handle in getattr(self, "_input_grad_hooks", ()):
            handle.remove()
        self._input_grad_hooks = []

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Resize the decoder's vocabulary, and the encoder's when it was the same (one tokenizer).

        transformers' ``EncoderDecoderModel.resize_token_embeddings`` raises
        ``NotImplementedError`` and asks for the parts' methods; this does what a user who added
        tokens to the shared tokenizer of a bert2bert-like model needs: the decoder's token
        table and head (the vocabulary of the loss and of generation) get ``new_num_tokens`` rows,
        and so does the encoder's table when its size equalled the decoder's before. With two
        tokenizers, resize the parts themselves: ``model.encoder.resize_token_embeddings(n)``,
        ``model.decoder.resize_token_embeddings(n)``. New rows are drawn as transformers draws
        them (see :meth:`seqweave.TransformerDecoder.resize_token_embeddings`); ties are kept
        (head to embeddings, and ``tie_encoder_decoder``'s).

        Returns:
            The decoder's token embedding module.
        """
        shared = self.encoder.embeddings.tokens.num_embeddings == self.decoder.vocab_size
        out = self.decoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if shared:  # with tie_encoder_decoder, tie_weights then shares the decoder's new table again
            self.encoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.tie_weights()
        return out


# ----------------------------------------------------------------------------------------
# transformers' loading arguments

#: transformers' ``from_pretrained`` switches that change nothing for a seqweave model (logged as ignored).
_IGNORED_LOADING = frozenset({"low_cpu_mem_usage", "use_safetensors", "trust_remote_code", "force_download",
                              "resume_download", "proxies", "weights_only", "_fast_init",
                              "output_loading_info"})
#: transformers' ``save_pretrained`` arguments taken when they change nothing, and the value that does not.
_IGNORED_SAVING = {"push_to_hub": False, "variant": None, "token": None, "save_peft_format": True,
                   "save_original_format": True, "distributed_checkpoint": False}
_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
_ATTN_LIKE_SDPA = ("flash_attention_2", "flash_attention_3", "flex_attention")


def _dtype_of(value: torch.dtype | str | None, name: str) -> torch.dtype | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"{name}={value!r} is not a floating dtype (torch.float16, 'bfloat16', 'auto')")
    return dtype


def _one_device(device_map: Any) -> torch.device:
    """The single device a transformers ``device_map`` names."""
    if isinstance(device_map, Mapping):
        devices = {str(_one_device(v)) for v in device_map.values()}
        if len(devices) != 1:
            raise ConfigError(
                f"device_map={dict(device_map)!r} places the model on {len(devices) or 'no'} devices; "
                "a seqweave "
                "model lives on one device: give one (\"cuda:0\", {\"\": \"cpu\"}) or \"auto\""
            )
        return torch.device(devices.pop())
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device_map in ("balanced", "balanced_low_0", "sequential", "disk", "meta"):
        raise ConfigError(
            f"device_map={device_map!r} spreads or offloads the model; a seqweave model lives on one device: "
            "give one (\"cuda:0\", \"cpu\") or \"auto\""
        )
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device_map={device_map!r} is not a device ('cpu', 'cuda:0', 0, 'auto')") from None


def _placement(dtype: Any, torch_dtype: Any, device: Any, device_map: Any) -> tuple[torch.dtype | None, Any]:
    """The dtype and device that ``dtype``/``torch_dtype`` and ``device``/``device_map`` ask for."""
    a, b = _dtype_of(dtype, "dtype"), _dtype_of(torch_dtype, "torch_dtype")
    if a is not None and b is not None and a != b:
        raise ConfigError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give one (dtype)")
    if device_map is not None:
        mapped = _one_device(device_map)
        if device is not None and torch.device(device) != mapped:
            raise ConfigError(f"device={device!r} and device_map={device_map!r} disagree; give one")
        device = mapped
    return a or b, "cpu" if device is None else device


def _attn_implementation(name: str | None) -> str:
    """``attn_implementation`` checked: what we compute is SDPA's function whichever is named."""
    if name is None or name in _ATTN_IMPLEMENTATIONS:
        return name or "sdpa"
    if name in _ATTN_LIKE_SDPA:
        logger.info("attn_implementation=%r: seqweave computes attention with torch's "
                    "scaled_dot_product_attention, which uses flash kernels itself where the GPU has them; "
                    "the results are the same function", name)
        return name
    raise ConfigError(
        f"attn_implementation={name!r} is unknown; "
        f"use one of {', '.join(_ATTN_IMPLEMENTATIONS + _ATTN_LIKE_SDPA)}"
    )


def _top_fields(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``from_pretrained``'s extra keyword arguments: the composite's token ids, or switches we ignore."""
    ignored = sorted(k for k in kwargs if k in _IGNORED_LOADING)
    unknown = sorted(k for k in kwargs if k not in _IGNORED_LOADING and k not in TOKEN_ID_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown argument(s) {', '.join(unknown)}; the composite's fields are "
            f"{', '.join(TOKEN_ID_FIELDS)}"
        )
    if ignored:
        logger.info("%s: ignored (no effect on a seqweave model): %s", where, ", ".join(ignored))
    return {k: v for k, v in kwargs.items() if k in TOKEN_ID_FIELDS}


def _items(num_items_in_batch: Any) -> torch.Tensor | float:
    """The divisor of a summed loss: ``num_items_in_batch`` (transformers' Trainer), at least 1 so that a batch
    with no counted label gives 0, not NaN."""
    if isinstance(num_items_in_batch, torch.Tensor):  # the Trainer's, often float; checking it would sync
        return num_items_in_batch.clamp(min=1)
    number = isinstance(num_items_in_batch, (int, float)) and not isinstance(num_items_in_batch, bool)
    if number and 0 <= num_items_in_batch < float("inf"):
        return max(num_items_in_batch, 1)
    raise ConfigError(f"num_items_in_batch must be a count of labels (a number >= 0), got {num_items_in_batch!r}")


def _check_save_kwargs(kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in kwargs if k not in _IGNORED_SAVING)
    if unknown:
        raise ConfigError(f"save_pretrained: unknown argument(s) {', '.join(unknown)}")
    changing = sorted(k for k, v in kwargs.items() if k != "token" and v != _IGNORED_SAVING[k])
    if changing:
        raise ConfigError(
            f"save_pretrained: {', '.join(f'{k}={kwargs[k]!r}' for k in changing)} is not supported; "
            "save to a folder and upload it with huggingface_hub.upload_folder"
        )


def _from_hf_config(
    cls: type[EncoderDecoder],
    data: Mapping[str, Any],
    registry: Registry,
    *,
    dtype: torch.dtype | None,
    device: Any,
) -> EncoderDecoder:
    """A randomly initialised model of a transformers ``EncoderDecoderConfig``'s dict."""
    parts, kwargs, top = hf_layout.composite_config(data, "EncoderDecoderConfig", registry)
    specs = {
        role: PartConfig.model_construct(architecture=p.arch.name, pretrained=None, revision=None,
                                         config=p.config.model_dump())
        for role, p in parts.items()
    }
    model = load.load_composition(cls, specs, registry, dtype=dtype, device=device, **kwargs)
    model.hf_extra = {"encoder": parts["encoder"].extra, "decoder": parts["decoder"].extra, "top": top}
    return model


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


def _distinct_tensors(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict()`` hook: a tied tensor's second name gets a copy, so no two entries share memory.

    Tied weights (the decoder's head and its embeddings, encoder and decoder under
    ``tie_encoder_decoder``) are one parameter under several names. ``safetensors`` refuses to
    write shared memory, and ``transformers.Trainer`` saves a model that is not a
    ``PreTrainedModel`` with ``safetensors.torch.save_file(model.state_dict())``; with this its
    checkpoints save, and ``load_state_dict`` of such a file fills the tied parameter twice with
    the same values. ``state_dict(keep_vars=True)`` (parameters, not tensors) is left as it is.
    """
    names = [k for k, v in state_dict.items() if k.startswith(prefix) and not isinstance(v, nn.Parameter)]
    state_dict.update(save.untie({k: state_dict[k] for k in names}))


def _parts_of_hf_config(config: Any) -> tuple[nn.Module, nn.Module, dict[str, Any], dict[str, dict[str, Any]]]:
    """Random encoder and decoder of a transformers ``EncoderDecoderConfig`` (or its dict).

    Returns the parts, the composite's fields (token ids, ``tie_encoder_decoder``) and the
    config.json fields carried aside (``hf_extra``).
    """
    data = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
    if not isinstance(data, Mapping) or data.get("model_type") != hf_layout.COMPOSITE_MODEL_TYPE:
        raise ConfigError(
            "config: expected a transformers EncoderDecoderConfig or its dict (model_type "
            f"{hf_layout.COMPOSITE_MODEL_TYPE!r}), got {type(config).__name__}"
        )
    parts, fields, top = hf_layout.composite_config(data, "config", default_registry())
    built = {role: build_encoder(p.arch.name, **p.config.model_dump()) if role == "encoder"
             else build_decoder(p.arch.name, **p.config.model_dump()) for role, p in parts.items()}
    return built["encoder"], built["decoder"], fields, {
        "encoder": parts["encoder"].extra, "decoder": parts["decoder"].extra, "top": top}
