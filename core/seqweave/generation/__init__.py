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
   against the cache; :class:`GraphStep` runs it over a :class:`DecodeGraph`, the static
   buffers of a shape bucket kept per model across calls, whose first step and decode
   step are recorded once in CUDA graphs and replayed.
4. :mod:`.search`: :func:`greedy_search` (greedy and sampling, one step per ``yield``) and
   :func:`beam_search` (transformers' vectorised ``_beam_search``, step for step).
5. :mod:`.outputs`: what ``return_dict_in_generate=True`` returns, transformers' output
   classes with its ``ModelOutput`` semantics.
6. Here: :func:`generate` / :func:`generate_stream`: resolve the options, encode once
   (``model.encode``), set up the cache, run a search.

Semantics follow transformers 5.24's ``GenerationMixin.generate`` for an encoder-decoder
model (DESIGN.md section 7): the output starts with the decoder start token, finished rows
are padded, generation stops when every row is done, and beam search keeps transformers'
scoring and early-stop heuristic. What differs is the cost: the encoder runs once per
source and its cross-attention keys/values are projected once (then copied to the rows of
its beams or samples, as transformers computes on); the self-attention cache is
preallocated and reordered in place; the output is one preallocated buffer.

Shapes: ``b`` sources, ``g`` rows decoded per source (beams or returned sequences),
``B = b * g`` decoder rows (source-major: rows ``i*g ... i*g + g-1`` belong to source ``i``),
``V`` vocabulary, ``P`` the decoder prompt's length (1, the start token, unless
``decoder_input_ids`` is given), ``L = max_length = P + max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..cache import Cache
from ..config import GenerationSettings
from ..errors import ConfigError
from .options import RUNTIME_ARGUMENTS, Seq2SeqModel, config_options, resolve
from .outputs import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput
from .processors import (
    Processor,
    bad_words,
    forced_token,
    logits_processors,
    min_length,
    min_new_tokens,
    no_repeat_ngram,
    repetition_penalty,
    temperature,
    top_k,
    top_p,
)
from .search import argmax, beam_search, graph_beam_search, greedy_search, topk
from . import step as step_module
from .step import (
    BUCKET_MULTIPLE,
    MAX_GRAPHS,
    Bucket,
    DecodeGraph,
    DecodeStep,
    GraphStep,
    checkout,
    clear_graphs,
    release,
    releasing,
)

__all__ = [
    "BUCKET_MULTIPLE",
    "MAX_GRAPHS",
    "RUNTIME_ARGUMENTS",
    "Bucket",
    "DecodeGraph",
    "DecodeStep",
    "GraphStep",
    "GenerateBeamEncoderDecoderOutput",
    "GenerateEncoderDecoderOutput",
    "Generated",
    "Processor",
    "Seq2SeqModel",
    "argmax",
    "bad_words",
    "beam_search",
    "clear_graphs",
    "config_options",
    "forced_token",
    "generate",
    "generate_stream",
    "greedy_search",
    "logits_processors",
    "min_length",
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
    prompt: torch.Tensor | None  # [b, P] decoder_input_ids (the start token prepended), or None
    graph: DecodeGraph | None  # the static path's graph, to release when the call ends

    def release(self) -> None:
        if self.graph is not None:
            release(self.graph)


def _prepare(
    model: Seq2SeqModel,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    options: Mapping[str, Any],
    cuda_graph: bool | None,
    static_cache: bool | None = None,
    generator: torch.Generator | None = None,
    *,
    generation_config: Any = None,
    decoder_input_ids: torch.Tensor | None = None,
    encoder_outputs: Any = None,
    token_type_ids: torch.Tensor | None = None,
    compile: bool | str = False,
    return_scores: bool = False,
) -> _Prepared:
    decoder = model.decoder
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(
            f"generate(): generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    device = next(model.parameters()).device
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        # transformers' second positional parameter is generation_config; ours is attention_mask
        raise ConfigError(
            f"generate(): attention_mask (the second positional argument) must be a tensor, got "
            f"{type(attention_mask).__name__}; pass generation_config=... by keyword"
        )
    if encoder_outputs is not None:
        states = _last_hidden_state(encoder_outputs)
        b, s_len = states.shape[:2]
        if input_ids is not None:
            _check_ids("input_ids", input_ids)
    else:
        if input_ids is None:
            raise ConfigError("generate(): pass input_ids, or encoder_outputs")
        _check_ids("input_ids", input_ids)
        b, s_len = input_ids.shape
        input_ids = input_ids.to(device)
    for name, extra in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if extra is not None and (not isinstance(extra, torch.Tensor) or tuple(extra.shape) != (b, s_len)):
            shape = list(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__
            raise ConfigError(f"generate(): {name} has shape {shape}; the source is {[b, s_len]}: they must match")
    if token_type_ids is not None:
        token_type_ids = token_type_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: attention needs no mask at all
    prompt = None
    if decoder_input_ids is not None:
        _check_ids("decoder_input_ids", decoder_input_ids)
        check_tokens("decoder_input_ids", decoder_input_ids, vocab_of(decoder))
        if decoder_input_ids.shape[0] != b:
            raise ConfigError(
                f"generate(): decoder_input_ids has {decoder_input_ids.shape[0]} rows, the source {b}; they must match"
            )
        prompt = decoder_input_ids.to(device)
    # The start token is known only after resolution, which needs the prompt's length: resolve
    # once for it (the prompt gains the start token unless every row starts with it, as in
    # transformers), then with the final length.
    defaults = model.generation_defaults()
    settings = resolve(defaults, options, decoder, generation_config=generation_config)
    if prompt is not None:
        start = settings.decoder_start_token_id
        if bool((prompt[:, 0] != start).all()):
            prompt = torch.cat((prompt.new_full((b, 1), start), prompt), dim=1)
        settings = resolve(defaults, options, decoder, prompt_length=prompt.shape[1],
                           generation_config=generation_config)
    # A static cache needs a decoder that reads its position from the cache and masks the
    # whole buffer (TransformerDecoder does); a hand-written one may not.
    supports_static = bool(getattr(decoder, "supports_static_cache", False))
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and static_cache is not False and supports_static
    if cuda_graph and device.type != "cuda":
        raise ConfigError(f"generate(): cuda_graph=True needs the model on a CUDA device; it is on {device}")
    if cuda_graph and static_cache is False:
        raise ConfigError("generate(): cuda_graph=True needs static_cache=True (or None)")
    if not isinstance(compile, bool) and compile not in step_module.COMPILE_MODES:
        modes = ", ".join(repr(m) for m in step_module.COMPILE_MODES)
        raise ConfigError(f"generate(): compile must be True, False or a torch.compile mode without CUDA graphs "
                          f"({modes}: generation records its own), got {compile!r}")
    if compile and static_cache is False:
        raise ConfigError("generate(): compile=True compiles the static decode step: it needs static_cache=True "
                          "(or None)")
    static = cuda_graph or bool(static_cache) or compile
    if static and not supports_static:
        raise ConfigError(
            f"generate(): static_cache/cuda_graph need a decoder with supports_static_cache = True; "
            f"{type(decoder).__name__} does not declare it"
        )

    # once per source, however many beams decode it; on the static path the graph's first step
    # runs the encoder (on the source ids padded to its bucket) when only ids are given
    encodes = (static and step_module.ENCODE_IN_GRAPH and input_ids is not None and encoder_outputs is None
               and token_type_ids is None)
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    if encodes:
        assert input_ids is not None
        check_tokens("input_ids", input_ids, vocab_of(getattr(model, "encoder", None)))  # what encode checks
        check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
        ids_or_states, mask = input_ids, attention_mask
    else:
        if encoder_outputs is not None:  # the states are all generation uses of an encoder output
            states = _last_hidden_state(encoder_outputs).to(device)
            source = model.encode(None, attention_mask, encoder_outputs=states, **extra)
        else:
            source = model.encode(input_ids, attention_mask, **extra)
        ids_or_states, mask = source.states, source.mask
    rows = b * (settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences)
    assert settings.max_length is not None, "resolved settings carry max_length"
    prompt_length = 1 if prompt is None else prompt.shape[1]
    procs = logits_processors(settings, prompt_length=prompt_length, device=device)
    graph = None
    if static:  # the bucket's graph, kept across calls (see step.py)
        # An output object holds the cache: that call's graph is its own. Greedy search and sampling
        # pick their tokens inside the graph, processors included, unless something needs each
        # step's scores. The bucket keeps the processors by value: made on the CPU, where reading
        # their tensors back waits for nothing.
        as_dict = settings.return_dict_in_generate and not return_scores
        keep_graph = not as_dict
        wants_scores = return_scores or (as_dict and (settings.output_scores or settings.output_logits))
        key = step_module.processors_key(
            logits_processors(settings, prompt_length=prompt_length, device=torch.device("cpu")) if procs else ()
        )
        picks = not wants_scores and settings.num_beams == 1 and key is not None
        # beam search's bookkeeping runs in the step where it divides as eager code does (CPU, CUDA)
        beams = (step_module.BEAMS_IN_GRAPH and settings.num_beams > 1 and not settings.do_sample and not as_dict
                 and key is not None and device.type in ("cpu", "cuda"))
        kind = "beam" if beams else ("sample" if settings.do_sample else "greedy") if picks else "logits"
        eos = settings.eos_ids or []
        bucket = Bucket.of(kind, b, rows // b, settings.max_length, ids_or_states.shape[1],
                           len(eos) if picks or beams else 0, padding=mask is not None, encodes=encodes,
                           source_padding=step_module.source_padding(model) if encodes else None,
                           processors=(key or ()) if picks or beams else (),
                           early_stopping=settings.early_stopping if beams else False)
        graph = checkout(model, decoder, bucket, device, cuda_graph=cuda_graph, compile=compile, keep=keep_graph)
        step: DecodeStep = GraphStep(decoder, ids_or_states, mask, graph, rows, generator)
        cache = graph.cache
    else:
        cache = Cache(decoder.num_layers, settings.max_length)
        step = DecodeStep(decoder, ids_or_states, mask, cache)
    return _Prepared(settings, generator, step, cache, b, rows, procs, device, prompt, graph)


def vocab_of(part: Any) -> int | None:
    """The number of token ids a part's embeddings take (None when it does not say)."""
    size = getattr(part, "vocab_size", None)
    if isinstance(size, int):
        return size
    embeddings = getattr(part, "get_input_embeddings", None)
    table = embeddings() if callable(embeddings) else None
    if table is None:  # seqweave's own parts: embeddings.tokens
        table = getattr(getattr(part, "embeddings", None), "tokens", None)
    size = getattr(table, "num_embeddings", None)
    return size if isinstance(size, int) else None


def check_tokens(name: str, ids: Any, vocab: int | None, *, ignore: int | None = None) -> None:
    """A clean error for an empty id tensor or ids outside ``[0, vocab)`` (``ignore`` allowed too).

    One reduction per tensor, at entry: never per decoding step. Skipped while compiling (no graph break).
    """
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point():
        return
    if ids.numel() == 0:
        raise ConfigError(f"{name} is empty (shape {list(ids.shape)}): a batch needs at least one token per row")
    if vocab is None or torch.compiler.is_compiling() or _capturing(ids):
        return
    outside = ids.lt(0) | ids.ge(vocab)
    if ignore is not None:
        outside &= ids.ne(ignore)
    if outside.any():
        bad = ids[outside]
        allowed = f"[0, {vocab})" + (f" or {ignore}" if ignore is not None else "")
        raise ConfigError(
            f"{name} holds ids outside {allowed} (min {int(bad.min())}, max {int(bad.max())}): "
            f"the vocabulary has {vocab} tokens"
        )


def check_mask(name: str, mask: Any, shape: tuple[int, ...] | None = None) -> None:
    """A clean error for a mask of another shape than its ids, or a mask that is not 0/1."""
    if not isinstance(mask, torch.Tensor):
        return
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ConfigError(f"{name} has shape {list(mask.shape)}; the ids have {list(shape)}: they must match")
    if (mask.dtype != torch.bool and not torch.compiler.is_compiling() and not _capturing(mask)
            and (mask.ne(0) & mask.ne(1)).any()):
        hint = " (an additive 0/-inf mask? pass (mask == 0).long() instead)" if mask.is_floating_point() else ""
        raise ConfigError(f"{name} must hold 1 for tokens and 0 for padding; this mask holds other values{hint}")


def _capturing(tensor: torch.Tensor) -> bool:
    """Whether a CUDA graph is being recorded: no check may read the device then (a decode graph's
    capture runs ``model.encode``; generation checks each call's own inputs before it replays)."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_ids(name: str, ids: Any) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        shape = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ConfigError(f"generate(): {name} must be an integer tensor [batch, length], got {shape}")


def _last_hidden_state(encoder_outputs: Any) -> torch.Tensor:
    """The encoder states of an ``encoder_outputs=`` argument (ours, transformers', a tuple or a tensor)."""
    if isinstance(encoder_outputs, torch.Tensor):
        states = encoder_outputs
    elif isinstance(encoder_outputs, (tuple, list)) and encoder_outputs:
        states = encoder_outputs[0]
    else:
        states = getattr(encoder_outputs, "last_hidden_state", None)
    if not isinstance(states, torch.Tensor) or states.dim() != 3:
        raise ConfigError(
            "generate(): encoder_outputs must be an encoder output (with last_hidden_state [b, s, d]), "
            f"a tuple starting with it, or that tensor; got {type(encoder_outputs).__name__}"
        )
    return states


def _run(p: _Prepared, scores: torch.Tensor | None, step_scores: list[torch.Tensor] | None = None,
         step_logits: list[torch.Tensor] | None = None, *,
         each_column: bool = True) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    s = p.settings
    assert s.max_length is not None, "resolved settings carry max_length"
    out = torch.full(
        (p.rows, s.max_length),
        s.pad_token_id if s.pad_token_id is not None else 0,
        dtype=torch.long,
        device=p.device,
    )
    prompt_length = 1
    if p.prompt is None:
        out[:, 0] = s.decoder_start_token_id
    else:
        prompt_length = p.prompt.shape[1]
        out[:, :prompt_length] = p.prompt.repeat_interleave(p.rows // p.batch_size, dim=0)
    steps = greedy_search(p.step, out, s, p.processors, scores, generator=p.generator,
                          prompt_length=prompt_length, step_scores=step_scores, step_logits=step_logits,
                          each_column=each_column)
    return out, steps


@torch.no_grad()
def generate(
    model: Seq2SeqModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    return_scores: bool = False,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    compile: bool | str = False,
    generation_config: Any = None,
    decoder_input_ids: torch.Tensor | None = None,
    encoder_outputs: Any = None,
    token_type_ids: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor | Generated | GenerateEncoderDecoderOutput | GenerateBeamEncoderDecoderOutput:
    """Generate for ``input_ids`` [b, s]; see :meth:`seqweave.EncoderDecoder.generate` for the arguments.

    ``options`` are :class:`~seqweave.GenerationSettings` fields (None = the model's
    default, or ``generation_config``'s); the other keyword arguments belong to this call only
    (:data:`RUNTIME_ARGUMENTS`).
    ``static_cache=True`` decodes with a static cache (see :class:`~seqweave.Cache`) even
    without a CUDA graph: slower on the CPU, but the same code path the graph captures.
    ``compile=True`` compiles that step with ``torch.compile`` (implies the static cache); a mode
    name (``"max-autotune-no-cudagraphs"``) is passed to it.

    Returns:
        [b * num_return_sequences, prompt + generated] token ids; a :class:`Generated` with
        ``return_scores=True``; with ``return_dict_in_generate`` a
        :class:`GenerateEncoderDecoderOutput` (greedy search, sampling) or
        :class:`GenerateBeamEncoderDecoderOutput` (beam search), as transformers returns them.
    """
    p = _prepare(model, input_ids, attention_mask, options, cuda_graph, static_cache, generator,
                 generation_config=generation_config, decoder_input_ids=decoder_input_ids,
                 encoder_outputs=encoder_outputs, token_type_ids=token_type_ids, compile=compile,
                 return_scores=return_scores)
    try:
        return _generate(p, streamer, return_scores)
    finally:
        p.release()


def _generate(
    p: _Prepared, streamer: Callable[[torch.Tensor], None] | None, return_scores: bool
) -> torch.Tensor | Generated | GenerateEncoderDecoderOutput | GenerateBeamEncoderDecoderOutput:
    s = p.settings
    as_dict = s.return_dict_in_generate and not return_scores
    step_scores: list[torch.Tensor] | None = [] if as_dict and s.output_scores else None
    step_logits: list[torch.Tensor] | None = [] if as_dict and s.output_logits else None
    if s.num_beams > 1:
        if streamer is not None:
            raise ConfigError(
                "generate(): streamer works with greedy search and sampling, not with num_beams > 1"
            )
        indices: list[torch.Tensor] | None = [] if as_dict else None
        if p.graph is not None and p.graph.bucket.kind == "beam":  # the bookkeeping is in the graph's step
            sequences, beam_scores = graph_beam_search(p.step, s, p.processors, p.batch_size, p.prompt)
        else:
            sequences, beam_scores = beam_search(
                p.step, p.cache, p.batch_size, s, p.processors, p.device, generator=p.generator,
                prompt=p.prompt, step_scores=step_scores, step_logits=step_logits, beam_indices=indices,
            )
        if as_dict:
            return GenerateBeamEncoderDecoderOutput(
                sequences=sequences,
                sequences_scores=beam_scores if s.output_scores else None,
                scores=None if step_scores is None else tuple(step_scores),
                logits=None if step_logits is None else tuple(step_logits),
                beam_indices=indices[0] if indices else None,
                cache=p.cache,
            )
        return Generated(sequences, beam_scores) if return_scores else sequences
    scores = torch.zeros(p.rows, device=p.device) if return_scores else None
    out, steps = _run(p, scores, step_scores, step_logits, each_column=streamer is not None)
    n = 0
    for tokens in steps:
        n += 1
        if streamer is not None:
            streamer(tokens)
    prompt_length = 1 if p.prompt is None else p.prompt.shape[1]
    sequences = out[:, : prompt_length + n]
    if as_dict:
        return GenerateEncoderDecoderOutput(
            sequences=sequences,
            scores=None if step_scores is None else tuple(step_scores),
            logits=None if step_logits is None else tuple(step_logits),
            cache=p.cache,
        )
    return Generated(sequences, scores) if scores is not None else sequences


def generate_stream(
    model: Seq2SeqModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    compile: bool | str = False,
    generation_config: Any = None,
    decoder_input_ids: torch.Tensor | None = None,
    encoder_outputs: Any = None,
    token_type_ids: torch.Tensor | None = None,
    **options: Any,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens [b * num_return_sequences] (pad for finished rows) as they are chosen.

    Greedy search and sampling only. The arguments are checked (and the encoder run) at
    the call, before the first token is asked for. Concatenated after the decoder prompt
    (the start token, or ``decoder_input_ids``), the yielded columns are exactly what
    :func:`generate` returns.
    """
    with torch.no_grad():
        p = _prepare(model, input_ids, attention_mask, options, cuda_graph, static_cache, generator,
                     generation_config=generation_config, decoder_input_ids=decoder_input_ids,
                     encoder_outputs=encoder_outputs, token_type_ids=token_type_ids, compile=compile)
    problem = None
    if p.settings.num_beams > 1:
        problem = "generate_stream(): streaming works with greedy search and sampling, not num_beams > 1"
    elif p.settings.return_dict_in_generate:
        problem = "generate_stream(): return_dict_in_generate does not apply: it yields tokens"
    if problem is not None:
        p.release()
        raise ConfigError(problem)
    _, steps = _run(p, None)
    return _no_grad_iter(releasing(p.graph, steps))


def _no_grad_iter(steps: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    # The consumer's code runs between steps, so grad mode is switched off per step, not around the loop.
    while True:
        with torch.no_grad():
            tokens = next(steps, None)
        if tokens is None:
            return
        yield tokens
