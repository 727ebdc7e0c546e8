"""Generation: greedy search, sampling and beam search over a cached decoder.

The package, read in this order:

1. :mod:`.options`: a call's options (fields of :class:`~seqweave.GenerationSettings`, the
   one list of them) resolved against the model's defaults and checked; a bad value is a
   :class:`~seqweave.ConfigError` naming the option. :class:`Seq2SeqModel` is what
   generation needs of a model.
2. :mod:`.processors`: logits processors, plain functions ``(tokens [B, t], scores [B, V])
   -> scores``, chosen and ordered by :func:`logits_processors` exactly as transformers
   orders them.
3. :mod:`.step`: :class:`DecodeStep` runs the decoder for the newest token of every row
   against the cache; :class:`CudaGraphStep` captures that step once in a CUDA graph and
   replays it.
4. :mod:`.search`: :func:`greedy_search` (greedy and sampling, one step per ``yield``) and
   :func:`beam_search` (transformers' vectorised ``_beam_search``, step for step).
5. Here: :func:`generate` / :func:`generate_stream`: resolve the options, encode once
   (``model.encode``), set up the cache, run a search.

Semantics follow transformers 5.24's ``GenerationMixin.generate`` for an encoder-decoder
model (DESIGN.md section 7): the output starts with the decoder start token, finished rows
are padded, generation stops when every row is done, and beam search keeps transformers'
scoring and early-stop heuristic. What differs is the cost: the encoder runs once per
source and its output and cross-attention keys/values are shared by all beams (or
samples) of that source; the self-attention cache is preallocated and reordered in place;
the output is one preallocated buffer.

Shapes: ``b`` sources, ``g`` rows decoded per source (beams or returned sequences),
``B = b * g`` decoder rows (source-major: rows ``i*g ... i*g + g-1`` belong to source ``i``),
``V`` vocabulary, ``L = 1 + max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..cache import Cache
from ..config import GenerationSettings
from ..errors import ConfigError
from .options import RUNTIME_ARGUMENTS, Seq2SeqModel, resolve
from .processors import (
    Processor,
    logits_processors,
    min_new_tokens,
    no_repeat_ngram,
    repetition_penalty,
    temperature,
    top_k,
    top_p,
)
from .search import argmax, beam_search, greedy_search, topk
from .step import CudaGraphStep, DecodeStep

__all__ = [
    "RUNTIME_ARGUMENTS",
    "CudaGraphStep",
    "DecodeStep",
    "Generated",
    "Processor",
    "Seq2SeqModel",
    "argmax",
    "beam_search",
    "generate",
    "generate_stream",
    "greedy_search",
    "logits_processors",
    "min_new_tokens",
    "no_repeat_ngram",
    "repetition_penalty",
    "resolve",
    "temperature",
    "top_k",
    "top_p",
    "topk",
]


@dataclass
class Generated:
    """What :meth:`~seqweave.EncoderDecoder.generate_with_scores` returns.

    Attributes:
        sequences: [b * num_return_sequences, 1 + generated] the same tensor ``generate`` returns.
        scores: [b * num_return_sequences] beam search: each hypothesis's score,
            ``sum of log-probabilities / new_tokens ** length_penalty`` (transformers'
            ``sequences_scores``); greedy search and sampling: the sum of the log-probabilities
            of each row's tokens up to and including its eos, under the distribution they
            were chosen from (the model's, when no processor or warper changes it).
    """

    sequences: torch.Tensor
    scores: torch.Tensor



@dataclass
class _Prepared:
    settings: GenerationSettings
    generator: torch.Generator | None
    step: DecodeStep
    cache: Cache
    batch_size: int
    rows: int
    processors: list[Processor]
    device: torch.device


def _prepare(
    model: Seq2SeqModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    options: Mapping[str, Any],
    cuda_graph: bool | None,
    static_cache: bool | None = None,
    generator: torch.Generator | None = None,
) -> _Prepared:
    decoder = model.decoder
    settings = resolve(model.generation_defaults(), options, decoder)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(
            f"generate(): generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ConfigError(
            f"generate(): input_ids must be an integer tensor [batch, source_length], got {shape}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ConfigError(
            f"generate(): attention_mask has shape {list(attention_mask.shape)}, "
            f"input_ids {list(input_ids.shape)}; they must match"
        )
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: attention needs no mask at all
    # A static cache needs a decoder that reads its position from the cache and masks the
    # whole buffer (TransformerDecoder does); a hand-written one may not.
    supports_static = bool(getattr(decoder, "supports_static_cache", False))
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and static_cache is not False and supports_static
    if cuda_graph and device.type != "cuda":
        raise ConfigError(f"generate(): cuda_graph=True needs the model on a CUDA device; it is on {device}")
    if cuda_graph and static_cache is False:
        raise ConfigError("generate(): cuda_graph=True needs static_cache=True (or None)")
    static = cuda_graph or bool(static_cache)
    if static and not supports_static:
        raise ConfigError(
            f"generate(): static_cache/cuda_graph need a decoder with supports_static_cache = True; "
            f"{type(decoder).__name__} does not declare it"
        )

    source = model.encode(input_ids, attention_mask)  # once per source, however many beams decode it
    b = input_ids.shape[0]
    rows = b * (settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences)
    cache = Cache(decoder.num_layers, 1 + settings.max_new_tokens, static=static, device=device)
    step_type = CudaGraphStep if cuda_graph else DecodeStep  # looked up here, so tests can swap it
    step = step_type(decoder, source.states, source.mask, cache)
    procs = logits_processors(settings, prompt_length=1, device=device)
    return _Prepared(settings, generator, step, cache, b, rows, procs, device)


def _run(p: _Prepared, scores: torch.Tensor | None) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    s = p.settings
    out = torch.full(
        (p.rows, 1 + s.max_new_tokens),
        s.pad_token_id if s.pad_token_id is not None else 0,
        dtype=torch.long,
        device=p.device,
    )
    out[:, 0] = s.decoder_start_token_id
    return out, greedy_search(p.step, out, s, p.processors, scores, generator=p.generator)


@torch.no_grad()
def generate(
    model: Seq2SeqModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    return_scores: bool = False,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    **options: Any,
) -> torch.Tensor | Generated:
    """Generate for ``input_ids`` [b, s]; see :meth:`seqweave.EncoderDecoder.generate` for the arguments.

    ``options`` are :class:`~seqweave.GenerationSettings` fields (None = the model's
    default); the other keyword arguments belong to this call only (:data:`RUNTIME_ARGUMENTS`).
    ``static_cache=True`` decodes with a static cache (see :class:`~seqweave.Cache`) even
    without a CUDA graph: slower on the CPU, but the same code path the graph captures.

    Returns:
        [b * num_return_sequences, 1 + generated] token ids, or a :class:`Generated` with
        ``return_scores=True``.
    """
    p = _prepare(model, input_ids, attention_mask, options, cuda_graph, static_cache, generator)
    if p.settings.num_beams > 1:
        if streamer is not None:
            raise ConfigError(
                "generate(): streamer works with greedy search and sampling, not with num_beams > 1"
            )
        sequences, beam_scores = beam_search(
            p.step, p.cache, p.batch_size, p.settings, p.processors, p.device, generator=p.generator
        )
        return Generated(sequences, beam_scores) if return_scores else sequences
    scores = torch.zeros(p.rows, device=p.device) if return_scores else None
    out, steps = _run(p, scores)
    n = 0
    for tokens in steps:
        n += 1
        if streamer is not None:
            streamer(tokens)
    sequences = out[:, : 1 + n]
    return Generated(sequences, scores) if scores is not None else sequences


def generate_stream(
    model: Seq2SeqModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    **options: Any,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens [b * num_return_sequences] (pad for finished rows) as they are chosen.

    Greedy search and sampling only. The arguments are checked (and the encoder run) at
    the call, before the first token is asked for. Concatenated after the start token,
    the yielded columns are exactly what :func:`generate` returns.
    """
    with torch.no_grad():
        p = _prepare(model, input_ids, attention_mask, options, cuda_graph, static_cache, generator)
    if p.settings.num_beams > 1:
        raise ConfigError(
            "generate_stream(): streaming works with greedy search and sampling, not num_beams > 1"
        )
    _, steps = _run(p, None)
    return _no_grad_iter(steps)


def _no_grad_iter(steps: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    # The consumer's code runs between steps, so grad mode is switched off per step, not around the loop.
    while True:
        with torch.no_grad():
            tokens = next(steps, None)
        if tokens is None:
            return
        yield tokens
