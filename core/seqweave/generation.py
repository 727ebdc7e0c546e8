"""Generation: greedy search, sampling and beam search over a cached decoder.

Read top to bottom:

1. :func:`resolve_arguments` merges the call's arguments with the model's defaults and
   checks them (a bad value is a :class:`~seqweave.ConfigError` naming the argument).
2. Logits processors: plain functions ``(tokens [B, t], scores [B, V]) -> scores``, chosen
   and ordered by :func:`logits_processors` exactly as transformers orders them.
3. :class:`DecodeStep` runs the decoder for the newest token of every row against the
   cache; :class:`CudaGraphStep` captures that step once in a CUDA graph and replays it.
4. :func:`greedy_search` (greedy and sampling, one step per ``yield``) and
   :func:`beam_search` (transformers' vectorised ``_beam_search``, step for step).
5. :func:`generate` / :func:`generate_stream`: encode once, set up the cache, run a search.

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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from .cache import Cache
from .config import GenerationSettings, format_validation_error
from .errors import ConfigError
from .fast import argmax, topk  # block-wise CPU searches; re-exported from here

if TYPE_CHECKING:
    from .composer import EncoderDecoder
    from .protocols import Decoder

__all__ = [
    "CudaGraphStep",
    "DecodeStep",
    "GenerateOptions",
    "Generated",
    "GenerationArgs",
    "argmax",
    "beam_search",
    "generate",
    "generate_stream",
    "greedy_search",
    "logits_processors",
    "min_new_tokens",
    "no_repeat_ngram",
    "repetition_penalty",
    "resolve_arguments",
    "temperature",
    "top_k",
    "top_p",
    "topk",
]

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# 1. Arguments


@dataclass(frozen=True)
class GenerationArgs:
    """Every generation argument, resolved: the call's value, else the model's default.

    The fields of :class:`~seqweave.GenerationSettings`, plus the special tokens (``eos``
    as a tuple of ids, or None) and the random generator for sampling.
    """

    max_new_tokens: int
    min_new_tokens: int
    num_beams: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    no_repeat_ngram_size: int
    length_penalty: float
    early_stopping: bool | str
    num_return_sequences: int
    eos: tuple[int, ...] | None
    pad: int | None
    start: int
    generator: torch.Generator | None


_ARGUMENTS = {
    *GenerationSettings.model_fields,
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "generator",
}


def _token_id(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"generate(): {name} must be a non-negative int, got {value!r}")
    return value


def resolve_arguments(model: EncoderDecoder, given: dict[str, Any]) -> GenerationArgs:
    """Merge ``given`` (the call's keyword arguments; None = not given) with the model's defaults.

    Defaults: the model's :attr:`~seqweave.EncoderDecoder.generation_settings` (the config's
    ``generation:`` block) and its ``decoder_start_token_id``, ``pad_token_id`` and
    ``eos_token_id``. As in transformers, the start token falls back to the decoder's
    ``bos_token_id`` and the pad token to the (first) eos token.

    Raises:
        ConfigError: a value is out of range or the combination is not supported; the
            message names the argument and the allowed values.
    """
    unknown = sorted(set(given) - _ARGUMENTS)
    if unknown:
        raise ConfigError(
            f"generate(): unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ARGUMENTS))}"
        )
    settings = model.generation_settings
    overrides = {k: v for k, v in given.items() if k in GenerationSettings.model_fields and v is not None}
    if overrides:
        try:
            settings = GenerationSettings.model_validate({**settings.model_dump(), **overrides})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "generate()", model=GenerationSettings)) from None
    s = settings

    eos = given.get("eos_token_id")
    eos = model.eos_token_id if eos is None else eos
    if eos is not None:
        ids = [eos] if isinstance(eos, int) else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        eos = tuple(_token_id("eos_token_id", i) for i in ids) or None
    start = given.get("decoder_start_token_id")
    if start is None:
        start = model.decoder_start_token_id
    if start is None:
        start = getattr(getattr(model.decoder, "config", None), "bos_token_id", None)
    if start is None:
        raise ConfigError(
            "generate(): decoder_start_token_id is not set: pass it, or set it (or the decoder's bos_token_id) "
            "in the model's config"
        )
    pad = given.get("pad_token_id")
    pad = model.pad_token_id if pad is None else pad
    if pad is None and eos is not None:
        pad = eos[0]
    start = _token_id("decoder_start_token_id", start)
    pad = None if pad is None else _token_id("pad_token_id", pad)
    vocab = getattr(model.decoder, "vocab_size", None)
    for name, value in (("decoder_start_token_id", start), ("pad_token_id", pad)):
        if isinstance(vocab, int) and value is not None and value >= vocab:  # both are fed to the decoder
            raise ConfigError(
                f"generate(): {name} must be below the decoder's vocab_size ({vocab}), got {value}"
            )

    if s.num_beams == 1 and not s.do_sample and s.num_return_sequences > 1:
        raise ConfigError(
            f"generate(): num_return_sequences={s.num_return_sequences} needs num_beams >= num_return_sequences "
            "or do_sample=True; greedy search returns one sequence per input"
        )
    if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
        raise ConfigError(
            f"generate(): num_return_sequences ({s.num_return_sequences}) must be <= num_beams ({s.num_beams})"
        )
    if s.min_new_tokens > s.max_new_tokens:
        raise ConfigError(
            f"generate(): min_new_tokens ({s.min_new_tokens}) must be <= max_new_tokens ({s.max_new_tokens})"
        )
    limit = getattr(model.decoder, "max_length", None)
    if isinstance(limit, int) and 1 + s.max_new_tokens > limit:
        raise ConfigError(
            f"generate(): max_new_tokens={s.max_new_tokens} makes {1 + s.max_new_tokens} decoder positions, but the "
            f"decoder embeds at most {limit}; allowed: max_new_tokens <= {limit - 1}"
        )
    generator = given.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(
            f"generate(): generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return GenerationArgs(
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=s.min_new_tokens,
        num_beams=s.num_beams,
        do_sample=s.do_sample,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        no_repeat_ngram_size=s.no_repeat_ngram_size,
        length_penalty=s.length_penalty,
        early_stopping=s.early_stopping,
        num_return_sequences=s.num_return_sequences,
        eos=eos,
        pad=pad,
        start=start,
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------
# 2. Logits processors: (tokens [B, t] so far, scores [B, V]) -> new scores [B, V]


def repetition_penalty(tokens: torch.Tensor, scores: torch.Tensor, *, penalty: float) -> torch.Tensor:
    """CTRL's penalty on every token already in ``tokens``: negative scores times ``penalty``, positive ones divided."""
    seen = scores.gather(1, tokens)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, tokens, seen)


def no_repeat_ngram(tokens: torch.Tensor, scores: torch.Tensor, *, n: int) -> torch.Tensor:
    """Forbid (score -inf) every token that would complete an n-gram already in ``tokens``."""
    t = tokens.shape[1]
    if t < n:
        return scores
    prefix = tokens[:, t + 1 - n :]  # [B, n-1]: the n-gram being started
    windows = tokens.unfold(1, n, 1)  # [B, t-n+1, n]: every n-gram so far
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    vocab = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
    # Non-matching windows point at the extra column vocab, which is dropped.
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -float("inf"))


def min_new_tokens(
    tokens: torch.Tensor, scores: torch.Tensor, *, eos: torch.Tensor, prompt_length: int, minimum: int
) -> torch.Tensor:
    """Forbid the eos token(s) ``eos`` [n] until ``minimum`` tokens follow the ``prompt_length`` start tokens."""
    if tokens.shape[1] - prompt_length >= minimum:
        return scores
    return scores.index_fill(1, eos, -float("inf"))


def temperature(tokens: torch.Tensor, scores: torch.Tensor, *, value: float) -> torch.Tensor:
    """Divide by the temperature (sampling only)."""
    return scores / value


def top_k(tokens: torch.Tensor, scores: torch.Tensor, *, k: int) -> torch.Tensor:
    """Keep the ``k`` highest scores (ties with the k-th included); the rest become -inf."""
    k = min(k, scores.shape[-1])
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))


def top_p(tokens: torch.Tensor, scores: torch.Tensor, *, p: float, keep: int) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least ``keep`` tokens)."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - p)
    remove[..., -keep:] = 0
    return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))


def logits_processors(args: GenerationArgs, *, prompt_length: int, device: torch.device) -> list[Processor]:
    """The processors ``args`` asks for, in transformers' order (penalties, then sampling warpers).

    Beam search applies them to log-probabilities, greedy search and sampling to logits, as
    transformers does. The sampling warpers keep at least ``len(eos) + 1`` tokens in beam
    search, so that a beam can always continue.
    """
    procs: list[Processor] = []
    if args.repetition_penalty != 1.0:
        procs.append(partial(repetition_penalty, penalty=args.repetition_penalty))
    if args.no_repeat_ngram_size > 0:
        procs.append(partial(no_repeat_ngram, n=args.no_repeat_ngram_size))
    if args.min_new_tokens > 0 and args.eos is not None:
        eos = torch.tensor(args.eos, device=device)
        procs.append(
            partial(min_new_tokens, eos=eos, prompt_length=prompt_length, minimum=args.min_new_tokens)
        )
    if args.do_sample:
        keep = (len(args.eos) + 1 if args.eos else 2) if args.num_beams > 1 else 1
        if args.temperature != 1.0:
            procs.append(partial(temperature, value=args.temperature))
        if args.top_k:
            procs.append(partial(top_k, k=max(args.top_k, keep)))
        if args.top_p is not None and args.top_p < 1.0:
            procs.append(partial(top_p, p=args.top_p, keep=keep))
    return procs


# ---------------------------------------------------------------------------------------------
# 3. One decode step


class DecodeStep:
    """Runs the decoder on the newest token of every row: tokens [B, 1] -> logits [B, V].

    The first call also gives the decoder the encoder states, from which every layer
    computes its cross-attention keys/values into the cache; later calls read them there.

    Args:
        decoder: any module satisfying :class:`seqweave.Decoder`.
        source: the encoder states [b, s, d_cross] (already projected to the decoder's width).
        source_mask: [b, s] 1 for tokens and 0 for padding, or None for no padding.
        cache: the cache to continue (empty before the first call).
    """

    def __init__(
        self, decoder: Decoder, source: torch.Tensor, source_mask: torch.Tensor | None, cache: Cache
    ) -> None:
        self.decoder = decoder
        self.source: torch.Tensor | None = source
        self.source_mask = source_mask
        self.cache = cache

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.source is not None:
            logits = self.decoder(
                tokens,
                encoder_hidden_states=self.source,
                encoder_attention_mask=self.source_mask,
                cache=self.cache,
            ).logits
            self.source = self.source_mask = None  # the cache holds what the decoder needs from them now
        else:
            logits = self.decoder(tokens, cache=self.cache).logits
        return logits[:, -1]


class CudaGraphStep(DecodeStep):
    """:class:`DecodeStep` whose steps after the first two replay one captured CUDA graph.

    Needs a static cache (:class:`~seqweave.Cache` with ``static=True``): the step then
    reads its position from a device tensor and attends over the whole buffer, so the same
    kernels with the same arguments serve every step. Step 0 runs eagerly (it fills the
    cross-attention cache), step 1 runs eagerly on a side stream (it warms up the kernels
    and the allocator, as graph capture requires), then the step is captured into a graph
    with static token and logits buffers and replayed from then on.
    """

    def __init__(
        self, decoder: Decoder, source: torch.Tensor, source_mask: torch.Tensor | None, cache: Cache
    ) -> None:
        assert cache.static, "CUDA graphs need a static cache"
        super().__init__(decoder, source, source_mask, cache)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tokens: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return super().__call__(tokens)
        if self.calls == 2:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logits = super().__call__(tokens)
            torch.cuda.current_stream().wait_stream(side)
            return logits
        if self.graph is None or self.tokens is None or self.logits is None:
            self.tokens = tokens.clone()
            self.graph = torch.cuda.CUDAGraph()
            # Capturing runs the Python once (advancing the cache's Python counter) and
            # records the kernels (writing at, and advancing, the device position) without
            # running them; the replay below runs them, so both counters end one step on.
            with torch.cuda.graph(self.graph):
                self.logits = self.decoder(self.tokens, cache=self.cache).logits[:, -1]
        else:
            self.tokens.copy_(tokens)
            self.cache.advance_after_replay()  # the replay advances the device position by itself
        self.graph.replay()
        return self.logits


# ---------------------------------------------------------------------------------------------
# 4. Searches


class _StopCheck:
    """Whether every row has finished.

    On the CPU this reads the flag right away. On CUDA, reading it would make the host
    wait for the device every step; instead the flag is copied to pinned memory without
    blocking and read one step later, so the device always has the next step queued.
    The step run after the last one is then thrown away (all its rows are padding).
    """

    def __init__(self, device: torch.device) -> None:
        self.lagged = device.type == "cuda"
        if self.lagged:
            self.host = torch.zeros((), dtype=torch.bool).pin_memory()
            self.event = torch.cuda.Event()
            self.pending = False

    def finished_before(self) -> bool:
        """Lagged mode: whether the previous step had already finished every row."""
        if not self.lagged or not self.pending:
            return False
        self.event.synchronize()
        return bool(self.host)

    def finished(self, unfinished: torch.Tensor) -> bool:
        """Whether no row is left (immediate mode); lagged mode records the flag and returns False."""
        if not self.lagged:
            return not bool(unfinished.any())
        self.host.copy_(~unfinished.any(), non_blocking=True)
        self.event.record()
        self.pending = True
        return False


def greedy_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    args: GenerationArgs,
    processors: Sequence[Processor],
    scores: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Greedy search or sampling; yields each step's new tokens [B] as they are chosen.

    Args:
        step: the decode step (tokens [B, 1] -> logits [B, V]).
        out: [B, L] the output buffer, column 0 holding the start token; filled in place.
            When the iterator ends, ``out[:, : 1 + number of tokens yielded]`` is the result.
        args: the resolved arguments.
        processors: logits processors, applied in order.
        scores: [B] if given, accumulates each row's log-probability of its tokens under the
            distribution they were chosen from (after the processors), up to its eos.
    """
    rows, length = out.shape
    device = out.device
    eos = None if args.eos is None else torch.tensor(args.eos, device=device)
    # resolve_arguments makes the pad id the first eos id when there is an eos and no pad id
    pad = torch.tensor(args.pad if args.pad is not None else 0, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    stop = _StopCheck(device)
    lagged = stop.lagged
    for cur in range(1, length):
        logits = step(out[:, cur - 1 : cur]).float()
        for process in processors:
            logits = process(out[:, :cur], logits)
        if args.do_sample:
            probs = F.softmax(logits, dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=args.generator).squeeze(1)
        else:
            tokens = argmax(logits)
        if scores is not None:
            chosen = logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
            scores += chosen.masked_fill_(~unfinished, 0.0)
        if eos is not None:
            tokens = torch.where(unfinished, tokens, pad)  # finished rows get padding
            unfinished &= (tokens != eos) if len(eos) == 1 else ~torch.isin(tokens, eos)
        out.select(1, cur).copy_(tokens)
        if lagged and stop.finished_before():
            return  # lagged check: the previous step finished every row, so this one is discarded
        yield tokens
        if eos is not None and stop.finished(unfinished):
            return


def beam_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    cache: Cache,
    batch_size: int,
    args: GenerationArgs,
    processors: Sequence[Processor],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search, with transformers' vectorised ``_beam_search`` semantics step for step.

    Every step keeps the ``K = max(2, 1 + number of eos ids) * num_beams`` best continuations
    of each source; those ending in eos (or at the maximum length) become finished
    hypotheses scored ``sum_logprobs / new_tokens ** length_penalty`` (new tokens counting
    the eos), the best ``num_beams`` of the others keep running. Generation stops when no
    running beam can still beat a finished one (``early_stopping``: False compares the best
    running beam scored at the current length with the worst finished one; "never" scores
    it at the maximum length when ``length_penalty > 0``; True stops once ``num_beams``
    hypotheses are finished), or at the maximum length.

    Only the self-attention cache is reordered (in place), never the encoder output or the
    cross-attention keys/values. The one case where the result can differ from
    transformers': processors giving every continuation of a source a score of -inf, where
    transformers' own result depends on the order ``torch.topk`` gives equal scores.

    Args:
        step: the decode step over ``batch_size * num_beams`` rows.
        cache: the step's cache, reordered as beams are chosen.
        batch_size: ``b``, the number of sources.
        args: the resolved arguments.
        processors: applied to the log-probabilities, in order.
        device: where the bookkeeping tensors live.

    Returns:
        The sequences [b * num_return_sequences, 1 + longest] (best first within a source)
        and their scores [b * num_return_sequences].
    """
    b, n = batch_size, args.num_beams
    length = 1 + args.max_new_tokens  # transformers' max_length
    prompt = 1  # the decoder prompt is the start token
    eos = None if args.eos is None else torch.tensor(args.eos, device=device)
    keep = max(2, 1 + (0 if args.eos is None else len(args.eos))) * n
    # transformers fills unwritten positions with ``pad_token_id or eos_token_id[0]`` when there
    # is an eos (so a pad id of 0 falls through to eos), else -1.
    fill = (args.pad or args.eos[0]) if args.eos is not None else -1
    lp, es = args.length_penalty, args.early_stopping

    running = torch.full((b, n, length), fill, dtype=torch.long, device=device)
    running[:, :, 0] = args.start
    sequences = running.clone()  # finished hypotheses
    running_scores = torch.zeros(b, n, device=device)
    running_scores[:, 1:] = -1e9  # only beam 0 may start, or all beams would pick the same tokens
    beam_scores = torch.full((b, n), -1e9, device=device)
    finished = torch.zeros(b, n, dtype=torch.bool, device=device)
    # transformers counts a hypothesis's generated tokens through its beam indices; the count
    # is all that the output length needs, so it is kept directly.
    new_tokens = torch.zeros(b, n, dtype=torch.long, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    top_n = torch.arange(keep, device=device) < n  # [K]: candidates that may become finished
    row_offset = torch.arange(b, device=device)[:, None] * n  # [b, 1]
    any_finished = False

    cur = prompt
    while True:
        logits = step(running[:, :, cur - 1].reshape(b * n, 1)).float()
        log_probs = F.log_softmax(logits, dim=-1)
        if processors:
            history = running[:, :, :cur].reshape(b * n, cur)
            for process in processors:
                log_probs = process(history, log_probs)
        vocab = log_probs.shape[-1]
        accumulated = (log_probs.view(b, n, vocab) + running_scores[:, :, None]).view(b, n * vocab)

        # Top-K continuations over all beams of a source (or K sampled without replacement).
        if args.do_sample:
            picked = torch.multinomial(
                F.softmax(accumulated, dim=-1), num_samples=keep, generator=args.generator
            )
            top_scores = accumulated.gather(1, picked)
            top_scores, order = top_scores.sort(dim=-1, descending=True)
            picked = picked.gather(1, order)
        else:
            top_scores, picked = topk(accumulated, keep)
        parent = picked // vocab  # [b, K] beam each continuation extends
        candidates = running.gather(1, parent[:, :, None].expand(b, keep, length))
        candidates[:, :, cur] = picked % vocab
        if cur + 1 >= length:
            hits = torch.ones(b, keep, dtype=torch.bool, device=device)
        elif eos is not None:
            hits = torch.isin(candidates[:, :, cur], eos)
        else:
            hits = torch.zeros(b, keep, dtype=torch.bool, device=device)

        # The best num_beams continuations that did not just finish keep running.
        running_candidates = top_scores + hits.to(torch.float32) * -1.0e9
        chosen = torch.topk(running_candidates, k=n)[1]
        running = candidates.gather(1, chosen[:, :, None].expand(b, n, length))
        running_scores = running_candidates.gather(1, chosen)
        cache.reorder((parent.gather(1, chosen) + row_offset).view(-1))

        # Finished continuations among the top num_beams join the finished hypotheses if good enough.
        # When none of them just finished the merge is skipped: every other candidate then scores
        # -1e9 or less (log-probabilities are <= 0), no better than an empty slot, and the first
        # finished hypothesis, at the latest at max_length, displaces whatever a tie let in.
        just_finished = hits & top_n
        last = cur + 1 >= length  # max_length: every candidate "hits"
        if last or bool(just_finished.any()):
            done_scores = top_scores / ((cur + 1 - prompt) ** lp)
            full = finished.all(dim=-1, keepdim=True) & (es is True)
            done_scores += full.to(torch.float32) * -1.0e9
            done_scores += (~improvable).to(torch.float32) * -1.0e9
            done_scores += (~just_finished) * -1.0e9
            merged_scores = torch.cat((beam_scores, done_scores), dim=1)
            best = torch.topk(merged_scores, k=n)[1]
            sequences = torch.cat((sequences, candidates), dim=1).gather(
                1, best[:, :, None].expand(b, n, length)
            )
            beam_scores = merged_scores.gather(1, best)
            new_tokens = torch.cat((new_tokens, new_tokens.new_full((b, keep), cur + 1 - prompt)), 1).gather(
                1, best
            )
            finished = torch.cat((finished, just_finished), dim=1).gather(1, best)
            any_finished = True

        cur += 1
        if last:  # every candidate hit max_length: nothing can continue
            break
        # Can a running beam still beat the worst finished hypothesis (-1e9 while there is none)?
        best_length = length - prompt if es == "never" and lp > 0.0 else cur - prompt
        best_running = running_scores[:, :1] / (best_length**lp)
        worst_finished = (
            torch.where(finished, beam_scores.min(dim=1, keepdim=True)[0], -1.0e9) if any_finished else -1.0e9
        )
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        if not bool(improvable.any()) or (es is True and any_finished and bool(finished.all())):
            break

    r = args.num_return_sequences
    longest = prompt + int(new_tokens[:, :r].max())
    return sequences[:, :r, :longest].reshape(b * r, longest), beam_scores[:, :r].reshape(b * r)


# ---------------------------------------------------------------------------------------------
# 5. Entry points


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`seqweave.EncoderDecoder.generate`; None or absent = the model's default."""

    max_new_tokens: int | None
    num_beams: int | None
    do_sample: bool | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    repetition_penalty: float | None
    no_repeat_ngram_size: int | None
    min_new_tokens: int | None
    length_penalty: float | None
    early_stopping: bool | str | None
    num_return_sequences: int | None
    eos_token_id: int | list[int] | None
    pad_token_id: int | None
    decoder_start_token_id: int | None
    generator: torch.Generator | None
    cuda_graph: bool | None
    static_cache: bool | None


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
    args: GenerationArgs
    step: DecodeStep
    cache: Cache
    batch_size: int
    rows: int
    processors: list[Processor]
    device: torch.device


def _prepare(
    model: EncoderDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    given: dict[str, Any],
    cuda_graph: bool | None,
    static_cache: bool | None = None,
) -> _Prepared:
    args = resolve_arguments(model, given)
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
    param = next(model.parameters())
    device = param.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: attention needs no mask at all
    # A static cache needs a decoder that reads its position from the cache and masks the
    # whole buffer (TransformerDecoder does); a hand-written one may not.
    supports_static = bool(getattr(model.decoder, "supports_static_cache", False))
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
            f"{type(model.decoder).__name__} does not declare it"
        )

    # [b, s, d_enc]: once per source, however many beams or samples decode it
    encoder_states = model.encoder(input_ids, attention_mask).last_hidden_state
    if model.enc_to_dec_proj is not None:
        encoder_states = model.enc_to_dec_proj(encoder_states)
    b = input_ids.shape[0]
    rows = b * (args.num_beams if args.num_beams > 1 else args.num_return_sequences)
    capacity = 1 + args.max_new_tokens
    decoder = cast("Decoder", model.decoder)  # the composer checked it has the protocol's attributes
    cache = Cache(decoder.num_layers, capacity, static=static, device=device)
    step_type = CudaGraphStep if cuda_graph else DecodeStep
    step = step_type(decoder, encoder_states, attention_mask, cache)
    procs = logits_processors(args, prompt_length=1, device=device)
    return _Prepared(args, step, cache, b, rows, procs, device)


def _run(p: _Prepared, scores: torch.Tensor | None) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    out = torch.full(
        (p.rows, 1 + p.args.max_new_tokens),
        p.args.pad if p.args.pad is not None else 0,
        dtype=torch.long,
        device=p.device,
    )
    out[:, 0] = p.args.start
    return out, greedy_search(p.step, out, p.args, p.processors, scores)


@torch.no_grad()
def generate(
    model: EncoderDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    streamer: Callable[[torch.Tensor], None] | None = None,
    return_scores: bool = False,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    **given: Any,
) -> torch.Tensor | Generated:
    """Generate for ``input_ids`` [b, s]; see :meth:`seqweave.EncoderDecoder.generate` for the arguments.

    ``static_cache=True`` decodes with a static cache (see :class:`~seqweave.Cache`) even
    without a CUDA graph: slower on the CPU, but the same code path the graph captures.

    Returns:
        [b * num_return_sequences, 1 + generated] token ids, or a :class:`Generated` with
        ``return_scores=True``.
    """
    p = _prepare(model, input_ids, attention_mask, given, cuda_graph, static_cache)
    if p.args.num_beams > 1:
        if streamer is not None:
            raise ConfigError(
                "generate(): streamer works with greedy search and sampling, not with num_beams > 1"
            )
        sequences, beam_scores = beam_search(p.step, p.cache, p.batch_size, p.args, p.processors, p.device)
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
    model: EncoderDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    cuda_graph: bool | None = None,
    static_cache: bool | None = None,
    **given: Any,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens [b * num_return_sequences] (pad for finished rows) as they are chosen.

    Greedy search and sampling only. The arguments are checked (and the encoder run) at
    the call, before the first token is asked for. Concatenated after the start token,
    the yielded columns are exactly what :func:`generate` returns.
    """
    with torch.no_grad():
        p = _prepare(model, input_ids, attention_mask, given, cuda_graph, static_cache)
    if p.args.num_beams > 1:
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
