"""Logits processors: plain functions ``(tokens [B, t] so far, scores [B, V]) -> new scores [B, V]``.

:func:`logits_processors` chooses and orders them from the settings exactly as transformers
orders its processors and warpers. Beam search applies them to log-probabilities, greedy
search and sampling to logits, as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ..config import GenerationSettings

__all__ = [
    "Processor",
    "logits_processors",
    "min_new_tokens",
    "no_repeat_ngram",
    "repetition_penalty",
    "temperature",
    "top_k",
    "top_p",
]

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def logits_processors(
    settings: GenerationSettings, *, prompt_length: int, device: torch.device
) -> list[Processor]:
    """The processors ``settings`` ask for, in transformers' order (penalties, then sampling warpers).

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
    if s.min_new_tokens > 0 and eos_ids is not None:
        eos = torch.tensor(eos_ids, device=device)
        procs.append(
            partial(min_new_tokens, eos=eos, prompt_length=prompt_length, minimum=s.min_new_tokens)
        )
    if s.do_sample:
        keep = (len(eos_ids) + 1 if eos_ids else 2) if s.num_beams > 1 else 1
        if s.temperature != 1.0:
            procs.append(partial(temperature, value=s.temperature))
        if s.top_k:
            procs.append(partial(top_k, k=max(s.top_k, keep)))
        if s.top_p is not None and s.top_p < 1.0:
            procs.append(partial(top_p, p=s.top_p, keep=keep))
    return procs

