"""The searches: greedy search and sampling (one step per ``yield``) and beam search.

Both run a decode step (tokens [B, 1] -> logits [B, V]) over ``B = b * g`` rows
(source-major: rows ``i*g ... i*g + g-1`` belong to source ``i``) against resolved
:class:`~seqweave.GenerationSettings` (start and pad ids set), and match transformers 5.24's
``_sample`` / ``_beam_search`` token for token. ``topk`` and ``argmax`` are the block-wise
CPU versions of torch's, same results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..cache import Cache
from ..config import GenerationSettings
from ..fast import argmax, topk  # block-wise CPU searches
from .processors import Processor

__all__ = ["GraphBeams", "argmax", "beam_search", "graph_beam_search", "greedy_search", "topk"]


class _StopCheck:
    """Whether every row has finished.

    On the CPU this reads the flag right away. On CUDA, reading it would make the host
    wait for the device every step; instead the flag is copied to pinned memory without
    blocking and read one step later, so the device always has the next step queued.
    The step run after the last one is then thrown away (all its rows are padding).
    ``lagged`` forces the mode (None: lagged on CUDA); lagged on the CPU, for tests, the flag
    is a plain tensor read without an event.
    """

    def __init__(self, device: torch.device, lagged: bool | None = None) -> None:
        self.lagged = device.type == "cuda" if lagged is None else lagged
        if self.lagged:
            cuda = device.type == "cuda"
            self.host = torch.zeros((), dtype=torch.bool, pin_memory=cuda)
            self.event = torch.cuda.Event() if cuda else None
            self.pending = False

    def finished_before(self) -> bool:
        """Lagged mode: whether the previous step had already finished every row."""
        if not self.lagged or not self.pending:
            return False
        if self.event is not None:
            self.event.synchronize()
        return bool(self.host)

    def finished(self, unfinished: torch.Tensor | None, done: torch.Tensor | None = None) -> bool:
        """Whether no row is left (immediate mode); lagged mode records the flag and returns False.

        ``done``: that flag, when the step computed it already (``~unfinished.any()``).
        """
        if done is None:
            assert unfinished is not None
            done = ~unfinished.any()
        if not self.lagged:
            return bool(done)
        self.host.copy_(done, non_blocking=True)
        if self.event is not None:
            self.event.record()
        self.pending = True
        return False


def greedy_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    settings: GenerationSettings,
    processors: Sequence[Processor],
    scores: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    prompt_length: int = 1,
    step_scores: list[torch.Tensor] | None = None,
    step_logits: list[torch.Tensor] | None = None,
    each_column: bool = True,
) -> Iterator[torch.Tensor]:
    """Greedy search or sampling; yields each step's new tokens [B] as they are chosen.

    Args:
        step: the decode step (tokens [B, 1] -> logits [B, V]).
        out: [B, L] the output buffer, its first ``prompt_length`` columns holding the decoder
            prompt (the start token, or ``decoder_input_ids``); filled in place. When the
            iterator ends, ``out[:, : prompt_length + number of tokens yielded]`` is the result.
        settings: the resolved settings (the pad id set when there is an eos).
        processors: logits processors, applied in order.
        scores: [B] if given, accumulates each row's log-probability of its tokens under the
            distribution they were chosen from (after the processors), up to its eos.
        generator: the random generator sampling draws from (the global one if None).
        prompt_length: the prompt's length; the first step runs the decoder on all of it.
        step_scores, step_logits: if given, each step's processed scores [B, V] (what the
            token was chosen from) and raw logits [B, V] (float32) are appended, as
            transformers' ``output_scores`` / ``output_logits`` give them.
        each_column: whether ``out`` must hold each yielded column when it is yielded (a
            stream). False: a step that picks its tokens inside a decode graph leaves them
            there, and ``out`` is filled when the iterator ends, with one copy.
    """
    rows, length = out.shape
    device = out.device
    eos_ids, pad_id = settings.eos_ids, settings.pad_token_id
    eos = None if eos_ids is None else torch.tensor(eos_ids, device=device)
    # resolution makes the pad id the first eos id when there is an eos and no pad id
    pad = torch.tensor(pad_id if pad_id is not None else 0, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    stop = _StopCheck(device)
    lagged = stop.lagged
    # A graph step that picks its tokens itself (GraphStep.picks_tokens) runs every step after the
    # first as one call (see _picked).
    picks = getattr(step, "picks_tokens", False)
    for cur in range(prompt_length, length):
        stepped = step(out[:, cur - 1 : cur] if cur > prompt_length else out[:, :cur]).float()
        logits = stepped
        raw = logits.clone() if step_logits is not None else None
        for process in processors:
            logits = process(out[:, :cur], logits)
        if settings.do_sample:
            probs = F.softmax(logits, dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
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
        if step_scores is not None:
            # without a processor these are the step's own output: a CUDA graph's static buffer,
            # which the next replay overwrites
            step_scores.append(logits.clone() if logits is stepped else logits)
        if step_logits is not None and raw is not None:
            step_logits.append(raw)
        yield tokens
        if eos is not None and stop.finished(unfinished):
            return
        if picks:
            step.prime(out[:, : cur + 1], unfinished, eos_ids, pad_id if pad_id is not None else 0,  # type: ignore[attr-defined]
                       logits.shape[-1], processors)
            yield from _picked(step, out, cur + 1, stop, eos is not None, each_column)
            return


def _picked(step: Any, out: torch.Tensor, start: int, stop: _StopCheck, has_eos: bool,
            each_column: bool) -> Iterator[torch.Tensor]:
    """:func:`greedy_search` from column ``start`` on, over a graph step that picks the tokens (``GraphStep``).

    Each step is one call (on CUDA one replay): the decoder, the pick, the padding of finished
    rows and their flags, the token written into the graph's output and its "every row
    finished" flag, which is all the host reads (one step late on CUDA). ``out`` gets each
    column as it is yielded (``each_column``), or all of them, in one copy, at the end.
    """
    end = start  # out[:, :end] is the result so far
    try:
        for cur in range(start, out.shape[1]):
            tokens = step.next_tokens()
            if each_column:
                out.select(1, cur).copy_(tokens)
            if stop.lagged and stop.finished_before():
                return  # the previous step finished every row: this one is discarded
            end = cur + 1
            yield out[:, cur] if each_column else tokens
            if has_eos and stop.finished(None, step.done):
                return
    finally:
        if not each_column and end > start:
            out[:, start:end].copy_(step.columns(start, end))


def beam_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    cache: Cache,
    batch_size: int,
    settings: GenerationSettings,
    processors: Sequence[Processor],
    device: torch.device,
    *,
    generator: torch.Generator | None = None,
    prompt: torch.Tensor | None = None,
    step_scores: list[torch.Tensor] | None = None,
    step_logits: list[torch.Tensor] | None = None,
    beam_indices: list[torch.Tensor] | None = None,
    lagged: bool | None = None,
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
        settings: the resolved settings (the start id set).
        processors: applied to the log-probabilities, in order.
        device: where the bookkeeping tensors live.
        generator: the random generator beam sampling draws from (the global one if None).
        prompt: [b, P] the decoder prompt (``decoder_input_ids``); None: the start token.
        step_scores, step_logits: if given, each step's processed log-probabilities [b * n, V]
            and raw logits [b * n, V] are appended (transformers' ``output_scores`` /
            ``output_logits``).
        beam_indices: if given, the returned hypotheses' beam indices
            [b * num_return_sequences, generated] are appended (transformers' ``beam_indices``:
            at each step, the row ``source * num_beams + beam`` the token was chosen from;
            -1 after a hypothesis ended).
        lagged: None: lagged on CUDA. Lagged, the host never waits for the device within a
            step: the merge of finished hypotheses always runs, and the stop check is read one
            step late (see :class:`_StopCheck`), the step run after the last one discarded;
            the results are the same.

    Returns:
        The sequences [b * num_return_sequences, 1 + longest] (best first within a source)
        and their scores [b * num_return_sequences].
    """
    s, eos_ids = settings, settings.eos_ids
    assert s.decoder_start_token_id is not None, "resolved settings carry the start token"
    b, n = batch_size, s.num_beams
    assert s.max_length is not None, "resolved settings carry max_length"
    length = s.max_length  # the prompt included
    prompt_ids = prompt
    prompt = 1 if prompt_ids is None else prompt_ids.shape[1]  # the decoder prompt's length
    eos = None if eos_ids is None else torch.tensor(eos_ids, device=device)
    keep = max(2, 1 + (0 if eos_ids is None else len(eos_ids))) * n
    # transformers fills unwritten positions with ``pad_token_id or eos_token_id[0]`` when there
    # is an eos (so a pad id of 0 falls through to eos), else -1.
    fill = (s.pad_token_id or eos_ids[0]) if eos_ids is not None else -1
    lp, es = s.length_penalty, s.early_stopping

    running = torch.full((b, n, length), fill, dtype=torch.long, device=device)
    if prompt_ids is None:
        running[:, :, 0] = s.decoder_start_token_id
    else:
        running[:, :, :prompt] = prompt_ids[:, None, :]
    sequences = running.clone()  # finished hypotheses
    track = beam_indices is not None
    if track:  # transformers' running_beam_indices / beam_indices: -1 where nothing was chosen yet
        running_beams = torch.full((b, n, length - prompt), -1, dtype=torch.int32, device=device)
        done_beams = running_beams.clone()
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
    stop = _StopCheck(device, lagged)
    lagged = stop.lagged
    # Lagged, whether a merge found a finished hypothesis is not read back; worst_finished's
    # torch.where gives -1e9 anyway while none is.
    any_finished = lagged

    cur = prompt
    while True:
        inputs = running[:, :, cur - 1 : cur] if cur > prompt else running[:, :, :cur]
        logits = step(inputs.reshape(b * n, inputs.shape[-1])).float()
        log_probs = F.log_softmax(logits, dim=-1)
        if processors:
            history = running[:, :, :cur].reshape(b * n, cur)
            for process in processors:
                log_probs = process(history, log_probs)
        vocab = log_probs.shape[-1]
        accumulated = (log_probs.view(b, n, vocab) + running_scores[:, :, None]).view(b, n * vocab)

        # Top-K continuations over all beams of a source (or K sampled without replacement).
        if s.do_sample:
            picked = torch.multinomial(F.softmax(accumulated, dim=-1), num_samples=keep, generator=generator)
            top_scores = accumulated.gather(1, picked)
            top_scores, order = top_scores.sort(dim=-1, descending=True)
            picked = picked.gather(1, order)
        else:
            top_scores, picked = topk(accumulated, keep)
        parent = picked // vocab  # [b, K] beam each continuation extends
        candidates = running.gather(1, parent[:, :, None].expand(b, keep, length))
        candidates[:, :, cur] = picked % vocab
        if track:
            candidate_beams = running_beams.gather(1, parent[:, :, None].expand(b, keep, length - prompt))
            candidate_beams[:, :, cur - prompt] = (parent + row_offset).to(torch.int32)
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
        if track:
            running_beams = candidate_beams.gather(1, chosen[:, :, None].expand(b, n, length - prompt))
        cache.reorder((parent.gather(1, chosen) + row_offset).view(-1))
        if lagged and stop.finished_before():
            # the previous step ended the search: this step is discarded before it touches the
            # finished hypotheses (its running beams and cache order no longer matter)
            break
        if step_logits is not None:
            step_logits.append(logits.clone())  # a CUDA graph's static buffer: the next replay overwrites it
        if step_scores is not None:
            step_scores.append(log_probs.clone())

        # Finished continuations among the top num_beams join the finished hypotheses if good enough.
        # When none of them just finished the merge can be skipped: every other candidate then scores
        # -1e9 or less (log-probabilities are <= 0), no better than an empty slot, and the first
        # finished hypothesis, at the latest at max_length, displaces whatever a tie let in.
        # Lagged, it always runs: knowing would make the host wait for the device.
        just_finished = hits & top_n
        last = cur + 1 >= length  # max_length: every candidate "hits"
        if last or lagged or bool(just_finished.any()):
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
            if track:
                done_beams = torch.cat((done_beams, candidate_beams), dim=1).gather(
                    1, best[:, :, None].expand(b, n, length - prompt)
                )
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
        going = improvable if es is not True else improvable.any() & ~finished.all()
        if stop.finished(going):
            break

    r = s.num_return_sequences
    longest = prompt + int(new_tokens[:, :r].max())
    if beam_indices is not None:
        beam_indices.append(done_beams[:, :r, : longest - prompt].reshape(b * r, longest - prompt))
    return sequences[:, :r, :longest].reshape(b * r, longest), beam_scores[:, :r].reshape(b * r)



class GraphBeams:
    """Beam search's state inside a decode graph: fixed shapes, updated in place by :meth:`advance`.

    :func:`beam_search` keeps its state in tensors it replaces every step, and reads Python
    numbers (the step, the length penalty's divisor) into its arithmetic. A recorded step
    cannot: here every tensor has the bucket's shape (``sources`` padded, ``capacity``
    positions) and lives in one place, and the step's numbers come from the device position
    and from tables made per call. :meth:`advance` is the same arithmetic as
    :func:`beam_search`'s loop, as its lagged mode does it (the merge of finished
    hypotheses on every step), so the results are the same bit for bit (tested against
    transformers on the CPU's static path), with two differences in form:

    * a Python number ``d`` divides a float32 tensor as ``x / d``, which CUDA computes as
      ``x * (1 / float32(d))`` (``div_true_kernel_cuda``: a multiplication by the float32
      reciprocal of a CPU scalar) and the CPU as ``x / float32(d)``; the tables hold
      ``float32(d)`` and that reciprocal, and :meth:`advance` does what the device would;
    * a step after the search ended (the host reads the stop flag one step late) changes
      nothing: every update is taken only while :attr:`done` was False.
    """

    def __init__(self, sources: int, beams: int, capacity: int, eos: int, early_stopping: bool | str,
                 device: torch.device) -> None:
        s, n, c = sources, beams, capacity
        self.sources, self.beams, self.capacity = s, n, c
        self.keep = max(2, 1 + eos) * n
        self.early_stopping = early_stopping
        long, f32 = dict(dtype=torch.long, device=device), dict(dtype=torch.float32, device=device)
        self.running = torch.zeros(s, n, c, **long)
        self.sequences = torch.zeros(s, n, c, **long)
        self.running_scores = torch.zeros(s, n, **f32)
        self.beam_scores = torch.zeros(s, n, **f32)
        self.finished = torch.zeros(s, n, dtype=torch.bool, device=device)
        self.new_tokens = torch.zeros(s, n, **long)
        self.improvable = torch.ones(s, 1, dtype=torch.bool, device=device)
        self.real = torch.zeros(s, 1, dtype=torch.bool, device=device)  # the call's sources (not padding)
        self.eos = torch.full((eos,), -1, **long)
        self.length = torch.zeros((), **long)  # the call's max_length
        self.prompt = torch.zeros((), **long)
        # per position c: the divisor of a hypothesis finished there and of the best running beam
        self.done_div, self.done_inv = torch.ones(c, **f32), torch.ones(c, **f32)
        self.run_div, self.run_inv = torch.ones(c, **f32), torch.ones(c, **f32)
        self.done = torch.zeros((), dtype=torch.bool, device=device)
        self.top_n = torch.arange(self.keep, device=device) < n
        self.row_offset = torch.arange(s, device=device)[:, None] * n

    def load(self, settings: GenerationSettings, batch_size: int, prompt: torch.Tensor | None) -> None:
        """A call's starting state: ``batch_size`` sources, the decoder prompt [b, P] (None: the start token)."""
        s, eos_ids = settings, settings.eos_ids
        assert s.max_length is not None and s.decoder_start_token_id is not None, "resolved settings"
        length, p = s.max_length, 1 if prompt is None else prompt.shape[1]
        fill = (s.pad_token_id or eos_ids[0]) if eos_ids is not None else -1
        self.running.fill_(fill)
        if prompt is None:
            self.running[:, :, 0] = s.decoder_start_token_id
        else:
            self.running[:batch_size, :, :p] = prompt[:, None, :]
        self.sequences.copy_(self.running)
        self.running_scores.zero_()
        self.running_scores[:, 1:] = -1e9
        self.beam_scores.fill_(-1e9)
        self.finished.zero_()
        self.new_tokens.zero_()
        self.improvable.fill_(True)
        self.real.zero_()
        self.real[:batch_size] = True
        if eos_ids:
            self.eos.copy_(torch.tensor(eos_ids, dtype=torch.long))
        self.length.fill_(length)
        self.prompt.fill_(p)
        self.done.zero_()
        lp, es = s.length_penalty, s.early_stopping
        done_div, run_div = [1.0] * self.capacity, [1.0] * self.capacity
        for c in range(p, length):  # the positions beam search generates at
            done_div[c] = float((c + 1 - p) ** lp)
            run_div[c] = float(((length - p) if es == "never" and lp > 0.0 else (c + 1 - p)) ** lp)
        for div, inv, values in ((self.done_div, self.done_inv, done_div), (self.run_div, self.run_inv, run_div)):
            as_float = torch.tensor(values, dtype=torch.float32)  # float32(d), as a kernel reads a scalar
            div.copy_(as_float)
            inv.copy_(1.0 / as_float)  # in float32, as div_true_kernel_cuda's reciprocal

    def _divide(self, x: torch.Tensor, div: torch.Tensor, inv: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``x / d`` as the device divides by a Python number ``d`` (see the class docstring)."""
        at = at.view(1)  # index_select: indexing with a 0-d tensor could read it back to the host
        return x * inv.index_select(0, at) if x.device.type == "cuda" else x / div.index_select(0, at)

    def advance(self, logits: torch.Tensor, cur: torch.Tensor, processors: Sequence[Processor]) -> torch.Tensor:
        """One step of beam search on ``logits`` [sources * beams, V] generating position ``cur`` (0-d).

        Updates the state in place and returns the cache's reorder index [sources * beams].
        """
        s, n, keep, c = self.sources, self.beams, self.keep, self.capacity
        log_probs = F.log_softmax(logits.float(), dim=-1)
        history = self.running.view(s * n, c)
        for process in processors:
            log_probs = process(history, log_probs, length=cur)
        vocab = log_probs.shape[-1]
        accumulated = (log_probs.view(s, n, vocab) + self.running_scores[:, :, None]).view(s, n * vocab)
        top_scores, picked = topk(accumulated, keep)
        parent = picked // vocab
        token = picked % vocab
        candidates = self.running.gather(1, parent[:, :, None].expand(s, keep, c))
        candidates.index_copy_(2, cur.view(1), token[:, :, None])
        last = cur + 1 >= self.length
        hits = (token[..., None] == self.eos).any(dim=-1) | last  # isin's sorting path would read the device

        running_candidates = top_scores + hits.to(torch.float32) * -1.0e9
        chosen = torch.topk(running_candidates, k=n)[1]
        running = candidates.gather(1, chosen[:, :, None].expand(s, n, c))
        running_scores = running_candidates.gather(1, chosen)
        index = (parent.gather(1, chosen) + self.row_offset).view(-1)

        just_finished = hits & self.top_n
        done_scores = self._divide(top_scores, self.done_div, self.done_inv, cur)
        full = self.finished.all(dim=-1, keepdim=True) & (self.early_stopping is True)
        done_scores += full.to(torch.float32) * -1.0e9
        done_scores += (~self.improvable).to(torch.float32) * -1.0e9
        done_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((self.beam_scores, done_scores), dim=1)
        best = torch.topk(merged_scores, k=n)[1]
        sequences = torch.cat((self.sequences, candidates), dim=1).gather(1, best[:, :, None].expand(s, n, c))
        beam_scores = merged_scores.gather(1, best)
        generated = (cur + 1 - self.prompt).expand(s, keep)
        new_tokens = torch.cat((self.new_tokens, generated), 1).gather(1, best)
        finished = torch.cat((self.finished, just_finished), dim=1).gather(1, best)

        # Can a running beam still beat the worst finished hypothesis (-1e9 while there is none)?
        best_running = self._divide(running_scores[:, :1], self.run_div, self.run_inv, cur)
        worst_finished = torch.where(finished, beam_scores.min(dim=1, keepdim=True)[0], -1.0e9)
        improvable = self.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        going = (improvable & self.real).any()  # padded sources count for nothing
        if self.early_stopping is True:
            going = going & ~(finished | ~self.real).all()
        ended = self.done | ~going | last

        keep_old = self.done  # a step after the end changes nothing
        for old, new in ((self.running, running), (self.running_scores, running_scores), (self.sequences, sequences),
                         (self.beam_scores, beam_scores), (self.new_tokens, new_tokens), (self.finished, finished),
                         (self.improvable, improvable)):
            old.copy_(torch.where(keep_old, old, new))
        self.done.copy_(ended)
        return index

    def result(self, batch_size: int, returned: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The best ``returned`` hypotheses of each of the call's sources and their scores (as :func:`beam_search`)."""
        b, r = batch_size, returned
        longest = int(self.prompt) + int(self.new_tokens[:b, :r].max())
        return (self.sequences[:b, :r, :longest].reshape(b * r, longest).clone(),
                self.beam_scores[:b, :r].reshape(b * r).clone())


def graph_beam_search(step: Any, settings: GenerationSettings, processors: Sequence[Processor], batch_size: int,
                      prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`beam_search` over a decode graph whose step also does the bookkeeping (a ``"beam"`` bucket).

    The first step (the decoder prompt) runs as the graph's first step, then its bookkeeping
    eagerly (:meth:`GraphBeams.advance`, the code the recorded step runs); every later step
    is one call of the graph (on CUDA one replay), and the host reads only the stop flag,
    one step late on CUDA. Same arguments and results as :func:`beam_search` (without
    per-step scores or beam indices).
    """
    graph, s = step.graph, settings
    assert s.max_length is not None, "resolved settings carry max_length"
    graph.prime_beams(s, batch_size, prompt, processors)
    beams: GraphBeams = graph.beams
    p = 1 if prompt is None else prompt.shape[1]
    first = step(beams.running[:batch_size].reshape(batch_size * s.num_beams, -1)[:, :p])
    padded = first.new_zeros(graph.bucket.rows, first.shape[-1])
    padded[: first.shape[0]] = first  # padded sources' rows decode nothing that is kept
    graph.beam_update(padded)
    stop = _StopCheck(beams.done.device)
    ended = stop.finished(None, beams.done)
    for _ in range(p + 1, s.max_length):
        if ended:
            break
        graph.run()
        if stop.lagged and stop.finished_before():
            break  # the step before ended the search: this one changed nothing (see GraphBeams)
        ended = stop.finished(None, beams.done)
    return beams.result(batch_size, s.num_return_sequences)
