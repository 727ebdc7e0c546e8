"""Logits processors: plain functions ``(tokens [B, t] so far, scores [B, V]) -> new scores [B, V]``.

:func:`logits_processors` chooses and orders them from the settings exactly as transformers
orders its processors and warpers. Beam search applies them to log-probabilities, greedy
search and sampling to logits, as transformers does.

Inside a decode graph every step must run the same kernels on the same shapes, so each
processor also takes ``length=``: then ``tokens`` is the whole fixed buffer [B, T] and
``length`` a 0-d device tensor, the number of its positions that hold tokens so far. The
processors that read the tokens or the step mask by it instead of slicing (a position past
``length``, or a window that does not fit, points at an extra score column that is dropped)
and choose with ``torch.where`` instead of returning early: the result is the sliced
version's, bit for bit (tested against transformers on the static path).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ..config import GenerationSettings

__all__ = [
    "IN_GRAPH",
    "Processor",
    "bad_words",
    "forced_token",
    "logits_processors",
    "min_length",
    "min_new_tokens",
    "no_repeat_ngram",
    "repetition_penalty",
    "temperature",
    "top_k",
    "top_p",
]

Processor = Callable[..., torch.Tensor]  # (tokens, scores, *, length=None) -> scores


def _held(tokens: torch.Tensor, length: torch.Tensor, vocab: int) -> torch.Tensor:
    """``tokens`` [B, T] with every position at or past ``length`` replaced by ``vocab`` (no token)."""
    return tokens.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) >= length, vocab)


def _last(tokens: torch.Tensor, length: torch.Tensor, k: int) -> torch.Tensor:
    """The last ``k`` tokens so far [B, k] (clamped to position 0 while fewer are held)."""
    return tokens.index_select(1, (length - k + torch.arange(k, device=tokens.device)).clamp(min=0))


def repetition_penalty(tokens: torch.Tensor, scores: torch.Tensor, *, penalty: float,
                       length: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL's penalty on every token already in ``tokens``: negative scores times ``penalty``, positive ones divided."""
    vocab = scores.shape[-1]
    if length is not None:  # positions past length point at an extra column, dropped at the end
        tokens, scores = _held(tokens, length, vocab), torch.nn.functional.pad(scores, (0, 1))
    seen = scores.gather(1, tokens)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, tokens, seen)[:, :vocab]


def no_repeat_ngram(tokens: torch.Tensor, scores: torch.Tensor, *, n: int,
                    length: torch.Tensor | None = None) -> torch.Tensor:
    """Forbid (score -inf) every token that would complete an n-gram already in ``tokens``."""
    t = tokens.shape[1]
    if t < n:
        return scores
    windows = tokens.unfold(1, n, 1)  # [B, t-n+1, n]: every n-gram (with a length: in the buffer)
    if length is None:
        prefix = tokens[:, t + 1 - n :]  # [B, n-1]: the n-gram being started
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    else:  # the windows that end before length; none while fewer than n tokens are held
        prefix = _last(tokens, length, n - 1)
        fits = torch.arange(t - n + 1, device=tokens.device) <= length - n
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1) & fits
    vocab = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
    # Non-matching windows point at the extra column vocab, which is dropped.
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -float("inf"))


def min_new_tokens(
    tokens: torch.Tensor, scores: torch.Tensor, *, eos: torch.Tensor, prompt_length: int, minimum: int,
    length: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forbid the eos token(s) ``eos`` [n] until ``minimum`` tokens follow the ``prompt_length`` start tokens."""
    return min_length(tokens, scores, eos=eos, minimum=prompt_length + minimum, length=length)


def bad_words(tokens: torch.Tensor, scores: torch.Tensor, *, single: torch.Tensor,
              groups: list[tuple[torch.Tensor, torch.Tensor]], length: torch.Tensor | None = None) -> torch.Tensor:
    """Forbid the last token of every bad word whose other tokens end ``tokens``.

    ``single`` [n]: the one-token bad words, always forbidden; ``groups``: per prefix length
    ``k``, the prefixes [m, k] and the last tokens [m] of the longer ones (transformers'
    ``NoBadWordsLogitsProcessor``, which matches the prefix against the start token too).
    """
    vocab = scores.shape[-1]
    banned = torch.zeros_like(scores, dtype=torch.bool)
    if len(single):
        banned[:, single] = True
    for prefixes, last in groups:
        k = prefixes.shape[1]
        if k > tokens.shape[1]:
            continue
        if length is None:
            matching = (tokens[:, None, -k:] == prefixes).all(dim=-1)  # [B, m]
            rows, which = matching.nonzero(as_tuple=True)
            banned[rows, last[which]] = True
        else:  # no nonzero() (it reads the device): unmatched words point at an extra column
            matching = (_last(tokens, length, k)[:, None] == prefixes).all(dim=-1) & (length >= k)
            hits = banned.new_zeros(banned.shape[0], vocab + 1).scatter_(1, torch.where(matching, last, vocab), True)
            banned |= hits[:, :vocab]
    return scores.masked_fill(banned, -float("inf"))


def min_length(tokens: torch.Tensor, scores: torch.Tensor, *, eos: torch.Tensor, minimum: int,
               length: torch.Tensor | None = None) -> torch.Tensor:
    """Forbid the eos token(s) ``eos`` [n] while the sequence (start token and prompt included) is shorter than ``minimum``."""
    if length is not None:
        return torch.where(length < minimum, scores.index_fill(1, eos, -float("inf")), scores)
    if tokens.shape[1] >= minimum:
        return scores
    return scores.index_fill(1, eos, -float("inf"))


def forced_token(tokens: torch.Tensor, scores: torch.Tensor, *, ids: torch.Tensor, at: int,
                 length: torch.Tensor | None = None) -> torch.Tensor:
    """At sequence length ``at``: only ``ids`` are allowed (score 0), everything else -inf."""
    if length is None and tokens.shape[1] != at:
        return scores
    forced = torch.full_like(scores, -float("inf"))
    forced[:, ids] = 0
    return forced if length is None else torch.where(length == at, forced, scores)


def temperature(tokens: torch.Tensor, scores: torch.Tensor, *, value: float,
                length: torch.Tensor | None = None) -> torch.Tensor:
    """Divide by the temperature (sampling only)."""
    return scores / value


def top_k(tokens: torch.Tensor, scores: torch.Tensor, *, k: int, length: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``k`` highest scores (ties with the k-th included); the rest become -inf."""
    k = min(k, scores.shape[-1])
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))


def top_p(tokens: torch.Tensor, scores: torch.Tensor, *, p: float, keep: int,
          length: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least ``keep`` tokens)."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - p)
    remove[..., -keep:] = 0
    return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))


#: Every processor :func:`logits_processors` makes: each takes ``length=`` (see the module
#: docstring), so a decode graph runs them inside its recorded step (see generation/step.py).
IN_GRAPH = (repetition_penalty, no_repeat_ngram, bad_words, min_length, min_new_tokens, forced_token,
            temperature, top_k, top_p)


def logits_processors(
    settings: GenerationSettings, *, prompt_length: int, device: torch.device
) -> list[Processor]:
    """The processors ``settings`` ask for, in transformers' order.

    That is ``_get_logits_processor``'s: repetition penalty, no-repeat n-grams, bad words,
    minimum length, forced bos, forced eos, then the sampling warpers (temperature, top-k,
    top-p). ``settings`` are resolved (:func:`~.options.resolve`: ``max_length`` set);
    ``prompt_length`` is the decoder prompt's length.

    Beam search applies them to log-probabilities, greedy search and sampling to logits, as
    transformers does. The sampling warpers keep at least ``len(eos) + 1`` tokens in beam
    search, so that a beam can always continue.
    """
    s, eos_ids = settings, settings.eos_ids
    procs: list[Processor] = []
    if s.repetition_penalty != 1.0:
        procs.append(partial(repetition_penalty, penalty=s.repetition_penalty))
    if s.no_repeat_ngram_size > 0:
        procs.append(partial(no_repeat_ngram, n=s.no_repeat_ngram_size))
    if s.bad_words_ids:
        # as transformers: a one-token bad word equal to an eos id is dropped
        words = [w for w in s.bad_words_ids if not (len(w) == 1 and eos_ids and w[0] in eos_ids)]
        single = torch.tensor([w[0] for w in words if len(w) == 1], dtype=torch.long, device=device)
        by_length: dict[int, list[list[int]]] = {}
        for w in words:
            if len(w) > 1:
                by_length.setdefault(len(w) - 1, []).append(w)
        groups = [
            (torch.tensor([w[:-1] for w in ws], device=device), torch.tensor([w[-1] for w in ws], device=device))
            for ws in by_length.values()
        ]
        if len(single) or groups:
            procs.append(partial(bad_words, single=single, groups=groups))
    # transformers turns min_new_tokens into min_length = prompt + min_new_tokens (min_new_tokens
    # wins) and runs both processors, which then forbid the same tokens: one does it here.
    minimum = prompt_length + s.min_new_tokens if s.min_new_tokens > 0 else s.min_length
    if minimum > 0 and eos_ids is not None:
        eos = torch.tensor(eos_ids, device=device)
        procs.append(partial(min_length, eos=eos, minimum=minimum))
    if s.forced_bos_token_id is not None:
        procs.append(partial(forced_token, ids=torch.tensor([s.forced_bos_token_id], device=device), at=1))
    if s.forced_eos_token_id is not None:
        assert s.max_length is not None, "resolved settings carry max_length"
        forced = s.forced_eos_token_id
        ids = torch.tensor(forced if isinstance(forced, list) else [forced], device=device)
        procs.append(partial(forced_token, ids=ids, at=s.max_length - 1))
    if s.do_sample:
        keep = (len(eos_ids) + 1 if eos_ids else 2) if s.num_beams > 1 else 1
        if s.temperature != 1.0:
            procs.append(partial(temperature, value=s.temperature))
        if s.top_k:
            procs.append(partial(top_k, k=max(s.top_k, keep)))
        if s.top_p is not None and s.top_p < 1.0:
            procs.append(partial(top_p, p=s.top_p, keep=keep))
    return procs

