"""The composer: any encoder and any decoder woven into one sequence-to-sequence model."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, generation
from .cache import Cache
from .config import TOKEN_ID_FIELDS, CompositionConfig, GenerationSettings, PartConfig, load_config
from .errors import CheckpointError, ConfigError
from .generation import Generated
from .hub import resolve
from .outputs import Encoded, EncoderOutput, Seq2SeqOutput
from .registry import Architecture, Registry, Role, default_registry
from .weights import SAFETENSORS, WeightMap, init_weights, load_module_weights, read_state_dict, rule

__all__ = ["EncoderDecoder", "LoadReport", "build_decoder", "build_encoder", "shift_tokens_right"]

logger = logging.getLogger("seqweave")

#: Fields of a part's config.json that say which role it plays; the composer sets them.
ROLE_FIELDS = ("is_decoder", "add_cross_attention")
COMPOSITE_MODEL_TYPE = "encoder-decoder"


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """Decoder inputs from labels [b, t]: start token first, labels shifted right, -100 turned into pad."""
    if decoder_start_token_id is None:
        raise ConfigError("decoder_start_token_id is not set: pass it to the model or set it in the config")
    if pad_token_id is None:
        raise ConfigError("pad_token_id is not set: pass it to the model or set it in the config")
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


def build_encoder(architecture: str, *, registry: Registry | None = None, **config: Any) -> nn.Module:
    """A randomly initialised encoder of a registered architecture, e.g. ``build_encoder("bert", hidden_size=256)``."""
    return _build(architecture, "encoder", config, registry)


def build_decoder(architecture: str, *, registry: Registry | None = None, **config: Any) -> nn.Module:
    """A randomly initialised decoder (with cross-attention) of a registered architecture."""
    return _build(architecture, "decoder", config, registry)


def _build(name: str, role: Role, values: Mapping[str, Any], registry: Registry | None) -> nn.Module:
    arch = (registry or default_registry()).get(name)
    module = arch.build_module(arch.make_config(values, source=f"{role} config ({name})"), role)
    init_weights(module, module.config.initializer_range)
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    return module


def summarize_names(names: list[str]) -> list[str]:
    """Group tensor names that differ only in a layer index: ``layers.{0-11}.x``."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        key = n if m is None else n[: m.start()] + ".{}." + n[m.end() :]
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m is not None:
            groups[key].append(int(m.group(1)))
    out = []
    for key in order:
        idx = sorted(groups[key])
        if not idx:
            out.append(key)
            continue
        span = f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1 else ",".join(map(str, idx))
        out.append(key.replace("{}", "{" + span + "}" if len(idx) > 1 else span))
    return out


@dataclass
class LoadReport:
    """What loading did: which tensors were created (not in any checkpoint) and which were skipped.

    Attributes:
        new: our parameter names that were initialised randomly.
        unused: checkpoint tensors that no rule maps (from single-model checkpoints only).
        sources: the weight files read, by part.
    """

    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    """A part's architecture, config and the config.json fields we carry but do not use."""

    arch: Architecture
    config: Any
    extra: dict[str, Any]


def _split_hf_config(arch: Architecture, data: Mapping[str, Any], source: str) -> _Part:
    known = arch.config.model_fields
    values = {k: v for k, v in data.items() if k in known}
    extra = {k: v for k, v in data.items() if k not in known and k not in ROLE_FIELDS and k != "model_type"}
    return _Part(arch, arch.make_config(values, source=source), extra)


def _read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this a model folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level")
    return data


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy every tensor that is the same memory as one already seen (tied encoder and decoder weights).

    safetensors refuses to write shared memory, and transformers 5.x, which does not tie
    encoder to decoder, needs each name present. Disjoint slices of one storage (the
    chunks of a fused projection) are not shared and are left alone.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def _architecture_of(data: Mapping[str, Any], where: str, registry: Registry) -> Architecture:
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{where}: no model_type field, so the architecture is unknown")
    if model_type not in registry:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not a registered architecture; "
            f"registered: {', '.join(registry.names()) or 'none'} (see `seqweave plugins`)"
        )
    return registry.get(model_type)


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
        for role, module, attrs in (
            ("encoder", encoder, ("hidden_size",)),
            ("decoder", decoder, ("hidden_size", "vocab_size", "cross_attention_hidden_size", "num_layers")),
        ):
            lacking = [a for a in attrs if not hasattr(module, a)]
            if lacking or not callable(module):
                raise ConfigError(f"the {role} ({type(module).__name__}) lacks {', '.join(lacking) or '__call__'}; "
                                  f"see the seqweave.{role.capitalize()} protocol")
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
        if tie_encoder_decoder and not self.tied_parameters:
            raise ConfigError(
                "tie_encoder_decoder is set, but no encoder module has a decoder counterpart with parameters "
                "of the same names and shapes "
                f"(encoder hidden size {encoder.hidden_size}, decoder {decoder.hidden_size})"
            )
        self.generation_settings = GenerationSettings.model_validate(dict(generation or {}))
        self.tokenizer_source = tokenizer
        self.decoder_tokenizer_source = decoder_tokenizer
        self.load_report = LoadReport()
        self._extra: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}, "top": {}}

    def tie_weights(self) -> None:
        """Share encoder modules' parameters with the same-named decoder modules, if ``tie_encoder_decoder``.

        A module is shared when the decoder has a module of the same name whose own
        parameters have the same names and shapes: a Linear's weight and bias go together,
        so a pair of different widths never ends up with only its biases shared. Called
        again after every load (``assign=True`` replaces parameter objects). The encoder's
        attribute is pointed at the decoder's parameter, as transformers 4.x's
        ``_tie_encoder_decoder_weights`` did, so the decoder's values win when both are
        loaded and the decoder's own ties (head to embeddings) stay intact.
        """
        if not self.tie_encoder_decoder:
            return
        decoder_modules = dict(self.decoder.named_modules())
        tied = []
        for name, module in self.encoder.named_modules():
            ours = dict(module.named_parameters(recurse=False))
            other = decoder_modules.get(name)
            if not ours or other is None:
                continue
            theirs = dict(other.named_parameters(recurse=False))
            if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
                continue
            for leaf, p in theirs.items():
                if ours[leaf] is not p:
                    setattr(module, leaf, p)
                tied.append(f"{name}.{leaf}" if name else leaf)
        self.tied_parameters = tied

    # ------------------------------------------------------------------------------------
    # Forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_outputs: EncoderOutput | tuple | torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Seq2SeqOutput:
        """Run the encoder (unless ``encoder_outputs`` is given) and the decoder.

        Args:
            input_ids: source tokens [b, s].
            attention_mask: [b, s], 1 for tokens, 0 for padding.
            decoder_input_ids: target inputs [b, t]; made from ``labels`` when absent.
            decoder_attention_mask: [b, past + t]; made from the pad token when labels are shifted.
            labels: [b, t] target tokens, -100 where no loss is wanted.
            encoder_outputs: reuse an earlier encoder result (or its last hidden state).
            cache: continue incremental decoding from this cache.
            use_cache: return a cache (a new one when ``cache`` is None).

        Returns:
            A :class:`Seq2SeqOutput` with ``loss`` (when labels are given) and ``logits`` [b, t, vocab].
        """
        if encoder_outputs is None and input_ids is None:
            raise ConfigError("pass input_ids or encoder_outputs")
        source = self.encode(
            input_ids,
            attention_mask,
            encoder_outputs=encoder_outputs,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.pad_token_id, self.decoder_start_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = decoder_input_ids.ne(self.pad_token_id).long()
        if decoder_input_ids is None:
            raise ConfigError("pass decoder_input_ids or labels")
        if use_cache and cache is None:
            cache = Cache(self.decoder.num_layers)
        out = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            encoder_hidden_states=source.states,
            encoder_attention_mask=source.mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
        return Seq2SeqOutput(
            loss=loss,
            logits=out.logits,
            cache=cache if use_cache or cache is not None else None,
            decoder_hidden_states=out.hidden_states,
            decoder_attentions=out.attentions,
            cross_attentions=out.cross_attentions,
            encoder_last_hidden_state=source.encoder.last_hidden_state,
            encoder_hidden_states=source.encoder.hidden_states,
            encoder_attentions=source.encoder.attentions,
        )

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_outputs: EncoderOutput | tuple | torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Encoded:
        """Run the encoder and bring its states to the width the decoder's cross-attention takes.

        Used by :meth:`forward` and by generation (once per source, however many beams).

        Args:
            input_ids: source tokens [b, s] (unless ``encoder_outputs`` is given).
            attention_mask: [b, s], 1 for tokens, 0 for padding; passed on as the source mask.
            encoder_outputs: reuse an earlier encoder result (an :class:`EncoderOutput`, a
                tuple in its field order, or its last hidden state [b, s, d_enc]).
            output_attentions, output_hidden_states: ask the encoder for them.

        Returns:
            An :class:`~seqweave.outputs.Encoded`: ``states`` [b, s, d_cross] (projected by
            ``enc_to_dec_proj`` when the widths differ), ``mask`` and the encoder's own output.
        """
        if encoder_outputs is None:
            if input_ids is None:
                raise ConfigError("pass input_ids or encoder_outputs")
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        cuda_graph: bool | None = None,
        static_cache: bool | None = None,
        **options: Any,
    ) -> Generated:
        """:meth:`generate`, also returning each sequence's score (see :class:`seqweave.Generated`)."""
        return generation.generate(self, input_ids, attention_mask, return_scores=True, generator=generator,
                                   cuda_graph=cuda_graph, static_cache=static_cache, **options)

    def generate_stream(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        cuda_graph: bool | None = None,
        static_cache: bool | None = None,
        **options: Any,
    ) -> Iterator[torch.Tensor]:
        """Like :meth:`generate` (greedy search or sampling), yielding each step's new tokens [b * r] as they come.

        The arguments are checked and the encoder runs when this is called; the yielded
        columns, after the start token, are exactly what :meth:`generate` returns.
        """
        return generation.generate_stream(self, input_ids, attention_mask, generator=generator,
                                          cuda_graph=cuda_graph, static_cache=static_cache, **options)

    # ------------------------------------------------------------------------------------
    # The Hugging Face layout

    def _part(self, role: Role) -> _Part:
        module = getattr(self, role)
        arch = getattr(module, "seqweave_architecture", None)
        if arch is None or getattr(module, "config", None) is None:
            raise ConfigError(
                f"the {role} ({type(module).__name__}) was not built from a registered architecture, so it has "
                f"no Hugging Face layout to save in; build it with seqweave.build_{role}(...)"
            )
        return _Part(arch, module.config, self._extra[role])

    def weight_map(self) -> WeightMap:
        """The two-way map between this model's state dict and transformers' ``EncoderDecoderModel`` layout."""
        enc, dec = self._part("encoder"), self._part("decoder")
        wmap = enc.arch.weight_map(enc.config, "encoder").prefixed("encoder.", "encoder.")
        wmap = wmap + dec.arch.weight_map(dec.config, "decoder").prefixed("decoder.", "decoder.")
        if self.enc_to_dec_proj is not None:
            wmap = wmap + WeightMap((rule("enc_to_dec_proj.weight"), rule("enc_to_dec_proj.bias")))
        return wmap

    def hf_config(self) -> dict[str, Any]:
        """The ``config.json`` transformers' ``EncoderDecoderModel`` reads."""
        parts = {}
        for role in ("encoder", "decoder"):
            p = self._part(role)
            parts[role] = {
                **p.extra,
                **p.config.model_dump(mode="json"),
                "model_type": p.arch.name,
                "is_decoder": role == "decoder",
                "add_cross_attention": role == "decoder",
            }
        dtype = next(self.parameters()).dtype
        return {
            **self._extra["top"],
            "architectures": ["EncoderDecoderModel"],
            "model_type": COMPOSITE_MODEL_TYPE,
            "is_encoder_decoder": True,
            "encoder": parts["encoder"],
            "decoder": parts["decoder"],
            "decoder_start_token_id": self.decoder_start_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_encoder_decoder": self.tie_encoder_decoder,
            "dtype": str(dtype).removeprefix("torch."),
            "seqweave_version": __version__,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json``, ``generation_config.json`` and ``model.safetensors``.

        transformers' ``EncoderDecoderModel.from_pretrained`` loads the folder. Every file
        is written to a temporary name first and renamed into place only when all are
        complete, so a failed save leaves an earlier checkpoint in the folder intact.
        """
        from safetensors.torch import save_file

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = _untie(self.weight_map().to_hf(self.state_dict()))
        generation = {
            **self.generation_settings.model_dump(),
            "decoder_start_token_id": self.decoder_start_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
        }
        staged: list[tuple[Path, Path]] = []
        try:
            for name, write in (
                (SAFETENSORS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})),
                ("config.json", lambda p: p.write_text(json.dumps(self.hf_config(), indent=2) + "\n")),
                ("generation_config.json", lambda p: p.write_text(json.dumps(generation, indent=2) + "\n")),
            ):
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
                os.close(fd)
                staged.append((Path(tmp), folder / name))
                write(Path(tmp))
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)

    # ------------------------------------------------------------------------------------
    # Loading

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
        registry = registry or default_registry()
        folder = resolve(name_or_path, revision)
        data = _read_config_json(folder)
        where = str(folder / "config.json")
        if data.get("model_type") != COMPOSITE_MODEL_TYPE:
            raise CheckpointError(
                f"{where}: model_type is {data.get('model_type')!r}, not {COMPOSITE_MODEL_TYPE!r}; "
                "to warm-start from single-model checkpoints use EncoderDecoder.from_pretrained_parts"
            )
        parts: dict[str, _Part] = {}
        for role in ("encoder", "decoder"):
            sub = data.get(role)
            if not isinstance(sub, dict):
                raise CheckpointError(f"{where}: no {role!r} object")
            parts[role] = _split_hf_config(_architecture_of(sub, f"{where}: {role}", registry), sub, f"{where}: {role}")
        top_known = {"encoder", "decoder", "model_type", "is_encoder_decoder", "architectures", "decoder_start_token_id",
                     "pad_token_id", "eos_token_id", "tie_encoder_decoder", "dtype", "seqweave_version",
                     "transformers_version"}
        with torch.device("meta"):
            model = cls(
                parts["encoder"].arch.build_module(parts["encoder"].config, "encoder"),
                parts["decoder"].arch.build_module(parts["decoder"].config, "decoder"),
                decoder_start_token_id=data.get("decoder_start_token_id"),
                pad_token_id=data.get("pad_token_id"),
                eos_token_id=data.get("eos_token_id"),
                tie_encoder_decoder=bool(data.get("tie_encoder_decoder", False)),
            )
        model._extra = {"encoder": parts["encoder"].extra, "decoder": parts["decoder"].extra,
                        "top": {k: v for k, v in data.items() if k not in top_known}}
        model._read_generation_config(folder)
        sd, source = read_state_dict(folder)
        wmap = model.weight_map()
        ours, missing, unexpected = wmap.from_hf(sd)
        # transformers 4.x saved a tied model with only the decoder's copy of each shared tensor;
        # tying fills the encoder's from it.
        tied = {f"encoder.{n}" for n in model.tied_parameters}
        missing = [
            r for r in missing if not (r.ours in tied and "decoder" + r.ours.removeprefix("encoder") in ours)
        ]
        if missing:
            names = [h for r in missing for h in r.hf if h not in sd]
            raise CheckpointError(
                f"{source}: missing {len(names)} tensor(s) the config needs, e.g. {', '.join(names[:3])}"
            )
        if unexpected:
            raise CheckpointError(
                f"{source}: {len(unexpected)} tensor(s) that a {parts['encoder'].arch.name}2"
                f"{parts['decoder'].arch.name} model with this config.json does not have, e.g. "
                f"{', '.join(unexpected[:3])}"
            )
        load_module_weights(model, ours, source=source, weight_map=wmap, dtype=dtype, device=device)
        model.load_report.sources = {"model": str(source)}
        return model.eval()

    def _read_generation_config(self, folder: Path) -> None:
        path = folder / "generation_config.json"
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not valid JSON: {e}") from None
        # The token ids stay the model's own (filled below when unset), not generation overrides of them.
        known = GenerationSettings.model_fields.keys() - TOKEN_ID_FIELDS
        values = {k: v for k, v in data.items() if k in known and v is not None}
        try:
            self.generation_settings = GenerationSettings.model_validate(
                {**self.generation_settings.model_dump(), **values}
            )
        except Exception as e:
            raise CheckpointError(f"{path}: {e}") from None
        for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            if getattr(self, key) is None and data.get(key) is not None:
                setattr(self, key, data[key])

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
        registry = registry or default_registry()
        part_overrides: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}}
        for key, value in overrides.items():
            role, _, fieldname = key.partition("_")
            if role not in part_overrides or not fieldname:
                raise ConfigError(f"unknown argument {key!r}: part overrides start with encoder_ or decoder_")
            part_overrides[role][fieldname] = value
        specs = {
            "encoder": PartConfig.model_construct(architecture="", pretrained=str(encoder), revision=encoder_revision,
                                                  config=part_overrides["encoder"]),
            "decoder": PartConfig.model_construct(architecture="", pretrained=str(decoder), revision=decoder_revision,
                                                  config=part_overrides["decoder"]),
        }
        return cls._compose(specs, registry, dtype=dtype, device=device, decoder_start_token_id=decoder_start_token_id,
                            pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                            tie_encoder_decoder=tie_encoder_decoder)

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
        registry = registry or default_registry()
        cfg = load_config(config, overrides, registry=registry)
        model = cls._compose(
            {"encoder": cfg.encoder, "decoder": cfg.decoder},
            registry,
            dtype=dtype,
            device=device,
            decoder_start_token_id=cfg.decoder_start_token_id,
            pad_token_id=cfg.pad_token_id,
            eos_token_id=cfg.eos_token_id,
            tie_encoder_decoder=cfg.tie_encoder_decoder,
            generation=cfg.generation,
            tokenizer=cfg.tokenizer,
            decoder_tokenizer=cfg.decoder_tokenizer,
        )
        # load_config checks these only when the decoder's vocabulary is known without loading.
        vocab = model.decoder.vocab_size
        for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(cfg, name)
            if any(v is not None and v >= vocab for v in (value if isinstance(value, list) else [value])):
                where = f"{config}: " if isinstance(config, (str, os.PathLike)) else ""
                raise ConfigError(f"{where}{name}: must be below the decoder's vocab_size ({vocab}) (got {value!r})")
        return model

    @classmethod
    def _compose(
        cls,
        specs: dict[str, PartConfig],
        registry: Registry,
        *,
        dtype: torch.dtype | None,
        device: torch.device | str,
        **kwargs: Any,
    ) -> EncoderDecoder:
        parts: dict[str, _Part] = {}
        checkpoints: dict[str, tuple[dict[str, torch.Tensor], Path]] = {}
        for role, spec in specs.items():
            if spec.pretrained is None:
                arch = registry.get(spec.architecture)
                parts[role] = _Part(arch, arch.make_config(spec.config, source=f"{role}.config"), {})
                continue
            folder = resolve(spec.pretrained, spec.revision)
            data = _read_config_json(folder)
            where = str(folder / "config.json")
            arch = _architecture_of(data, where, registry)
            if spec.architecture and spec.architecture != arch.name:
                raise ConfigError(
                    f"{role}.architecture is {spec.architecture!r} but {where} says model_type {arch.name!r}"
                )
            part = _split_hf_config(arch, data, where)
            if spec.config:
                part.config = arch.make_config({**part.config.model_dump(), **spec.config}, source=f"{role}.config")
            parts[role] = part
            checkpoints[role] = read_state_dict(folder)
        with torch.device("meta"):
            model = cls(
                parts["encoder"].arch.build_module(parts["encoder"].config, "encoder"),
                parts["decoder"].arch.build_module(parts["decoder"].config, "decoder"),
                **kwargs,
            )
        model._extra = {"encoder": parts["encoder"].extra, "decoder": parts["decoder"].extra, "top": {}}
        if dtype is None:
            dtype = next(
                (t.dtype for sd, _ in checkpoints.values() for t in sd.values() if t.is_floating_point()),
                torch.get_default_dtype(),
            )
        report = model.load_report
        for role in ("encoder", "decoder"):
            part, module = parts[role], getattr(model, role)
            std = part.config.initializer_range
            if role not in checkpoints:
                load_module_weights(module, {}, source=f"{role} (random init)", weight_map=WeightMap(()),
                                    new=[n for n, _ in module.named_parameters()], std=std, dtype=dtype, device=device)
                continue
            sd, source = checkpoints[role]
            wmap = part.arch.weight_map(part.config, role)
            sd = wmap.normalize_prefix(sd)
            ours, missing, unexpected = wmap.from_hf(sd)
            required = [h for r in missing if not r.new_ok for h in r.hf if h not in sd]
            if required:
                raise CheckpointError(
                    f"{source}: missing {len(required)} tensor(s) a {part.arch.name} {role} needs, "
                    f"e.g. {', '.join(required[:3])}"
                )
            new = [r.ours for r in missing]
            load_module_weights(module, ours, source=source, weight_map=wmap, new=new, std=std, dtype=dtype,
                                device=device)
            report.new += [f"{role}.{n}" for n in new]
            report.unused += [f"{role}:{k}" for k in unexpected]
            report.sources[role] = str(source)
        model.tie_weights()  # the parts were loaded one by one: share their tensors again
        if model.enc_to_dec_proj is not None:
            names = [n for n, _ in model.enc_to_dec_proj.named_parameters()]
            load_module_weights(model.enc_to_dec_proj, {}, source="enc_to_dec_proj", weight_map=WeightMap(()),
                                new=names, std=parts["decoder"].config.initializer_range, dtype=dtype, device=device)
            report.new += [f"enc_to_dec_proj.{n}" for n in names]
        if checkpoints and report.new:
            logger.warning("newly initialised tensors (train before use): %s", ", ".join(summarize_names(report.new)))
        if report.unused:
            logger.info("unused checkpoint tensors: %s", ", ".join(report.unused))
        return model.eval() if checkpoints else model
