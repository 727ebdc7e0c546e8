"""One decode step: the decoder on the newest token of every row, eagerly or replayed from a CUDA graph.

:class:`DecodeStep` runs the decoder eagerly against any cache. :class:`GraphStep` runs it
against a :class:`DecodeGraph`: the static buffers of one shape bucket, kept per model
across ``generate`` calls, whose first step (the encoder, the cross-attention keys/values
and the start token) and decode step are each recorded once in a CUDA graph on CUDA, and
run eagerly over the same buffers elsewhere (which is how the CPU tests check the logic).

Buckets. A graph replays fixed shapes, so a call's shapes are padded up to a bucket: the
sources to the next power of two, the decoder positions (``max_length``) and the source
length to a multiple of :data:`BUCKET_MULTIPLE`. Padded source positions are masked out;
padded rows decode padding and are dropped. A source that needs no mask (no padding, and
a length that is already a multiple) gets a graph without one, so attention runs the
kernel it runs without a bucket. The bucket is also keyed by what the step returns
(``"logits"``; or the token each row picks, chosen inside the graph: ``"greedy"`` or
``"sample"``, with the logits processors it applies, by value; or ``"beam"``: beam
search's bookkeeping inside the step, :class:`~.search.GraphBeams`), the number of rows
decoded per source and whether the first step runs the encoder.

Picking steps. A ``"greedy"`` or ``"sample"`` step applies the logits processors (each in
its fixed-shape form, over the graph's token buffer and the device position: see
generation/processors.py), picks every row's token, pads finished rows, updates their
flags, writes the token where the next step reads it and into the token buffer, and sets
the "every row finished" flag: one token is one replay, and the host only copies that
flag (read one step late) and, when a call streams, the token. Sampling draws exactly what
``torch.multinomial`` draws for one sample: it divides the probabilities by exponential
noise and takes the argmax, with the noise drawn (one kernel, from the call's generator)
before each replay, so a graph records no random number generator and the draws are
those of the eager path, bit for bit.

Reuse. :func:`checkout` keeps up to :data:`MAX_GRAPHS` buckets per model (least recently
used first out), in the model's ``__dict__`` (collected with it; a copy or a pickle of
the model starts with none), emptied when the model's parameters move (``.to()``, a new
dtype, resized embeddings): a graph reads the weights where they were when it was
captured. In-place updates (an optimizer step, ``load_state_dict``) keep the same memory,
and a replay reads the new values. A graph in use by an unfinished call (a stream being
read) is not shared: a second call then gets one of its own. :func:`clear_graphs` frees
them. docs/generation.md ("On a GPU") has the measurements.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..cache import Cache, StaticCache
from ..fast import argmax
from ..protocols import Decoder
from .processors import IN_GRAPH, Processor
from .search import GraphBeams

__all__ = [
    "BEAMS_IN_GRAPH",
    "BUCKET_MULTIPLE",
    "COMPILE_MODES",
    "ENCODE_IN_GRAPH",
    "MAX_GRAPHS",
    "Bucket",
    "DecodeGraph",
    "DecodeStep",
    "GraphStep",
    "checkout",
    "clear_graphs",
    "kept_graphs",
    "processors_key",
    "release",
    "releasing",
    "source_padding",
]

#: Decoder positions and source lengths are padded up to a multiple of this.
BUCKET_MULTIPLE = 64
#: Buckets kept per model between calls (each holds a static cache for its shapes).
MAX_GRAPHS = 4
#: Whether a call's first step also runs the encoder, on the source ids padded to the bucket
#: (when generate gets ids alone: no ``encoder_outputs``, no ``token_type_ids``). On CUDA that
#: makes the encoder part of the recorded first step: one replay instead of its eager launches.
ENCODE_IN_GRAPH = True
#: Whether beam search's bookkeeping (choosing the beams, the finished hypotheses, the stop test)
#: runs inside the decode step (a ``"beam"`` bucket, :class:`~.search.GraphBeams`); False: eagerly
#: after each step, by :func:`~.search.beam_search` (a ``"logits"`` bucket).
BEAMS_IN_GRAPH = True
#: The ``torch.compile`` modes ``compile=`` takes besides True (``"default"``): the ones that
#: leave CUDA graphs to the caller, since a decode graph records its own.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")

Kind = Literal["logits", "greedy", "sample", "beam"]
#: A processor as a bucket keeps it: its function's name and its keyword arguments (tensors as tuples).
ProcessorKey = tuple[str, tuple[tuple[str, Any], ...]]
_IN_GRAPH = {f.__name__: f for f in IN_GRAPH}


def _frozen(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), tuple(value.flatten().tolist()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def processors_key(processors: Sequence[Processor]) -> tuple[ProcessorKey, ...] | None:
    """``processors`` by value, as a bucket keeps them; None when one of them cannot run inside a graph.

    The processors of :func:`~seqweave.generation.processors.logits_processors` all can
    (:data:`~seqweave.generation.processors.IN_GRAPH`). Make them on the CPU for this:
    their tensors are read back.
    """
    kept = []
    for p in processors:
        if not (isinstance(p, partial) and not p.args and _IN_GRAPH.get(p.func.__name__) is p.func):
            return None
        kept.append((p.func.__name__, tuple(sorted((k, _frozen(v)) for k, v in p.keywords.items()))))
    return tuple(kept)


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


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclass(frozen=True)
class Bucket:
    """The shapes one decode graph serves.

    Attributes:
        kind: ``"logits"`` (the step returns the logits [rows, V]), ``"greedy"`` or
            ``"sample"`` (it also picks each row's token, pads finished rows and updates the
            unfinished flags).
        sources: source rows (a power of two).
        per_source: decoder rows per source (beams, or sequences returned per source).
        capacity: decoder positions (a multiple of :data:`BUCKET_MULTIPLE`).
        source_length: source positions (a multiple of :data:`BUCKET_MULTIPLE`).
        eos: greedy: how many eos ids the step checks (0 for none).
        masked: whether cross-attention reads a source mask (False: no padding to mask).
        encodes: whether the graph's first step also runs the encoder (on the padded source ids).
        source_pad: the id padded source positions get when the graph encodes (the encoder's pad id).
        processors: a picking step: the logits processors it applies, by value (:func:`processors_key`).
        early_stopping: ``"beam"``: the setting (its stop test is part of the step).
    """

    kind: Kind
    sources: int
    per_source: int
    capacity: int
    source_length: int
    eos: int = 0
    masked: bool = True
    encodes: bool = False
    source_pad: int = 0
    processors: tuple[ProcessorKey, ...] = ()
    early_stopping: bool | str = False

    @property
    def picks(self) -> bool:
        """Whether the step picks the tokens itself (greedy search or sampling inside the graph)."""
        return self.kind != "logits"

    @property
    def rows(self) -> int:
        return self.sources * self.per_source

    @classmethod
    def of(
        cls,
        kind: Kind,
        sources: int,
        per_source: int,
        max_length: int,
        source_length: int,
        eos: int = 0,
        padding: bool = True,
        encodes: bool = False,
        source_padding: tuple[int, int] | None = None,
        processors: tuple[ProcessorKey, ...] = (),
        early_stopping: bool | str = False,
    ) -> Bucket:
        """The bucket for a call: ``sources`` and its lengths padded up (``padding``: the source has some).

        A bucket that ``encodes`` pads the source ids only with ``source_padding``, (the
        encoder's pad id, the longest source its positions take): without it (an encoder that
        does not say) the source length is the call's own.
        """
        padded = 1 << max(0, sources - 1).bit_length()
        length, pad = _round_up(source_length, BUCKET_MULTIPLE), 0
        if encodes:
            pad, longest = source_padding if source_padding is not None else (0, source_length)
            length = max(source_length, min(length, longest))
        return cls(kind, padded, per_source, _round_up(max_length, BUCKET_MULTIPLE), length, eos,
                   masked=padding or length != source_length, encodes=encodes, source_pad=pad,
                   processors=processors, early_stopping=early_stopping)


class DecodeGraph:
    """One bucket's static cache, the step's input and output buffers, and (on CUDA) its captured graphs.

    :meth:`run` runs the decode step on :attr:`tokens` [rows, 1]; :meth:`prefill` runs the
    first step of a call: the decoder prompt of one token per row against :attr:`states`
    (the padded encoder states), which writes the source's cross-attention keys/values into
    the cache. With ``cuda_graph`` (on CUDA) the first run of each captures it (after a
    warm-up run, as capture requires) and every later run, in this call or a later one,
    replays it; otherwise they run eagerly. With ``compile=True`` the decoder's step is
    compiled with ``torch.compile`` (inductor, whole graph) before it is captured: it fuses
    the norms, residuals and elementwise work into fewer kernels (what follows the logits
    stays eager).
    """

    def __init__(
        self,
        decoder: Decoder,
        bucket: Bucket,
        device: torch.device,
        *,
        cuda_graph: bool = True,
        compile: bool | str = False,
        model: Any = None,
    ) -> None:
        self.decoder = decoder
        self.model = model  # what encodes the source ids, when the bucket encodes
        self.bucket = bucket
        self.cuda_graph = cuda_graph and torch.device(device).type == "cuda"
        self.compiled = compile
        self.cache = StaticCache(decoder.num_layers, bucket.capacity, device=device)
        self.cache.host_counts = False  # the graph counts positions (see StaticCache.host_counts)
        rows = bucket.rows
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        # the source, padded: its encoder states (made at the first call, when their width and
        # dtype are known), or its ids and their mask when the graph runs the encoder
        self.states: torch.Tensor | None = None
        shape = (bucket.sources, bucket.source_length)
        self.source_mask = torch.ones(shape, dtype=torch.bool, device=device) if bucket.masked else None
        self.ids = torch.zeros(shape, dtype=torch.long, device=device) if bucket.encodes else None
        self.ids_mask = torch.zeros(shape, dtype=torch.long, device=device) if bucket.encodes and bucket.masked else None
        # a picking step: filled by prime() each call; the step reads and updates them
        self.unfinished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.eos = torch.full((bucket.eos,), -1, dtype=torch.long, device=device)
        self.pad = torch.zeros((), dtype=torch.long, device=device)
        # ... and writes these: the tokens so far (the call's prompt and first token copied in by
        # prime(), each step's at its position), whether every row has finished
        self.out = torch.zeros((rows, bucket.capacity) if bucket.picks else (0, 0), dtype=torch.long, device=device)
        self.done = torch.zeros((), dtype=torch.bool, device=device)
        # sampling: the exponential noise [rows, V] each step divides the probabilities by (see draw())
        self.noise: torch.Tensor | None = None
        # the first call's processors (a later call's are equal by value: the bucket's key); a
        # recorded step reads their tensors
        self.processors: list[Processor] | None = None
        # beam search inside the step: its state (loaded per call by prime_beams())
        self.beams = (GraphBeams(bucket.sources, bucket.per_source, bucket.capacity, bucket.eos,
                                 bucket.early_stopping, device) if bucket.kind == "beam" else None)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.prefill_graph: torch.cuda.CUDAGraph | None = None
        self.cuda_graph_prefill = True  # False once recording the first step failed
        self.cuda_graph_step = True  # False once recording the decode step failed
        self.output: torch.Tensor | None = None
        self.prefill_output: torch.Tensor | None = None
        self.replays = 0
        self.busy = False
        mode = compile if isinstance(compile, str) else None
        # Only the decoder is compiled: what the step does with its logits (processors, the pick,
        # beam search's bookkeeping) stays eager PyTorch inside the graph, the kernels and the
        # rounding of the eager path.
        self._decode = torch.compile(self._decoder_step, fullgraph=True, dynamic=False, mode=mode) if compile \
            else self._decoder_step

    def load_source(self, source: torch.Tensor, source_mask: torch.Tensor | None) -> None:
        """Copy a call's encoder states [b, s, d] (or source ids [b, s]) and mask [b, s] (or None) in.

        Into the padded buffers: the states, or (a bucket that encodes) the ids and their mask.
        """
        bucket = self.bucket
        b, s = source.shape[:2]
        if bucket.encodes:
            assert self.ids is not None
            self.ids.fill_(bucket.source_pad)
            self.ids[:b, :s] = source
            if self.ids_mask is not None:  # padded positions and sources: 0
                self.ids_mask.zero_()
                self.ids_mask[:b, :s] = 1 if source_mask is None else source_mask
        else:
            d = source.shape[-1]
            if self.states is None or self.states.shape[-1] != d or self.states.dtype != source.dtype:
                self.states = source.new_zeros(bucket.sources, bucket.source_length, d)
            else:
                self.states.zero_()
            self.states[:b, :s] = source
        if self.source_mask is None:  # padded sources (zeros) need no mask either: their rows are dropped
            assert source_mask is None and s == bucket.source_length, "an unmasked bucket got padding"
            return
        # padded positions are masked; padded sources see all theirs (their rows are dropped)
        self.source_mask.fill_(True)
        self.source_mask[:b, s:] = False
        if source_mask is not None:
            self.source_mask[:b, :s] = source_mask.bool()

    def encoded(self) -> torch.Tensor:
        """The padded encoder states: :attr:`states`, or (a bucket that encodes) the encoder's output."""
        if self.bucket.encodes:
            return self.model.encode(self.ids, self.ids_mask).states
        assert self.states is not None
        return self.states

    def _prefill(self) -> torch.Tensor:
        """The recorded first step: the prompt token of every row, against the padded source."""
        return self.decoder(
            self.tokens, encoder_hidden_states=self.encoded(), encoder_attention_mask=self.source_mask,
            cache=self.cache,
        ).logits[:, -1]

    def prefill(self) -> torch.Tensor:
        """The first step of a call (one prompt token per row in :attr:`tokens`); the logits [rows, V]."""
        cache = self.cache
        cache.reset()
        if not (self.cuda_graph and self.cuda_graph_prefill):
            out = self._prefill()
        elif self.prefill_graph is None:
            with _RECORDING:
                out = self._record_prefill()
        else:
            self.prefill_graph.replay()
            cache.source_written()
            out = self.prefill_output
        cache.advance_after_replay(1)  # reset() put it at 0
        assert out is not None
        return out

    def _record_prefill(self) -> torch.Tensor:
        side = _side_stream(self.tokens.device)
        _warm_up(self._prefill, side)
        self.cache.reset()  # record the same step from the same state, and replay it
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=side):
                self.prefill_output = self._prefill()
        except RuntimeError as e:  # a part reads the device while it runs (a host sync): eager then
            warnings.warn(f"the first decoding step cannot be recorded in a CUDA graph ({e}); it runs eagerly",
                          stacklevel=3)
            self.cuda_graph_prefill = False
            self.cache.reset()
            return self._prefill()
        graph.replay()
        self.prefill_graph = graph
        return self.prefill_output

    def _decoder_step(self) -> torch.Tensor:
        return self.decoder(self.tokens, cache=self.cache).logits[:, -1]

    def _step(self) -> torch.Tensor:
        """The recorded step: the decoder on :attr:`tokens`; a picking step also picks the next tokens."""
        logits = self._decode()
        if self.bucket.kind == "logits":
            return logits
        if self.bucket.kind == "beam":
            return self.beam_update(logits)
        # what greedy_search does with a step's logits, on every row at once
        scores = logits.float()
        assert self.processors is not None, "prime() sets the processors"
        for process in self.processors:  # over the tokens so far: the buffer up to the position
            scores = process(self.out, scores, length=self.cache.position)
        if self.bucket.kind == "sample":
            assert self.noise is not None, "prime() makes the noise buffer"
            # torch.multinomial(probs, 1)'s own draw: argmax(probs / q), q ~ Exp(1) (see draw())
            scores = F.softmax(scores, dim=-1) / self.noise
        tokens = torch.where(self.unfinished, argmax(scores), self.pad)
        self.unfinished &= ~(tokens[:, None] == self.eos).any(dim=-1)
        self.tokens.copy_(tokens[:, None])  # the next step's input
        self.out.index_copy_(1, self.cache.position.view(1), tokens[:, None])  # the decoder moved it to this column
        self.done.copy_(~self.unfinished.any())
        return tokens

    def prime(self, history: torch.Tensor, unfinished: torch.Tensor, eos: list[int] | None, pad: int,
              vocab: int, processors: Sequence[Processor]) -> None:
        """A picking step: load a call's state after its first step (rows past ``history``'s are padding).

        ``history`` [n, t]: the call's tokens so far (the prompt and the first step's token);
        ``vocab``: the width of the logits, which sampling's noise takes; ``processors``: the
        call's, equal by value to those the bucket was made for.
        """
        n, t = history.shape
        tokens = history[:, -1]
        self.out[:n, :t].copy_(history)
        if self.processors is None:
            self.processors = list(processors)
        self.tokens[:n, 0].copy_(tokens)
        self.tokens[n:] = pad
        self.unfinished[:n].copy_(unfinished)
        self.unfinished[n:] = False
        if eos:
            self.eos.copy_(torch.tensor(eos, dtype=torch.long))
        self.pad.fill_(pad)
        if self.bucket.kind == "sample" and (self.noise is None or self.noise.shape[1] != vocab):
            self.noise = torch.ones(self.bucket.rows, vocab, device=self.tokens.device)

    def prime_beams(self, settings: Any, batch_size: int, prompt: torch.Tensor | None,
                    processors: Sequence[Processor]) -> None:
        """Beam search: load a call's starting state (see :meth:`GraphBeams.load`) before its first step."""
        assert self.beams is not None
        self.beams.load(settings, batch_size, prompt)
        if self.processors is None:
            self.processors = list(processors)

    def beam_update(self, logits: torch.Tensor) -> torch.Tensor:
        """Beam search's bookkeeping after a step's ``logits`` [rows, V]: in the recorded step, and
        eagerly after the first one. Chooses the beams, reorders the cache, sets the next tokens."""
        assert self.beams is not None and self.processors is not None, "prime_beams() comes first"
        position = self.cache.position  # the position this step generates (the decoder moved it there)
        index = self.beams.advance(logits, position, self.processors)
        self.cache.reorder(index, whole=True)
        self.tokens.copy_(self.beams.running.view(self.bucket.rows, -1).index_select(1, position.view(1)))
        return self.beams.done

    def _mutable(self) -> list[torch.Tensor]:
        """What a step changes besides the cache position and the new keys/values (see _capture)."""
        state = [self.tokens, self.unfinished, self.out, self.done]
        if self.beams is not None:  # and it reorders every cached key/value
            b = self.beams
            state += [b.running, b.sequences, b.running_scores, b.beam_scores, b.finished, b.new_tokens,
                      b.improvable, b.done, *self.cache.self_attention_buffers()]
        return state

    def draw(self, rows: int, generator: torch.Generator | None) -> None:
        """Sampling, before each step: the noise of the first ``rows`` rows, drawn from ``generator``.

        ``torch.multinomial(probs, 1, generator=generator)`` draws ``q ~ Exp(1)`` into a new
        tensor shaped like ``probs`` ([rows, V]) and returns ``argmax(probs / q)``; this draws
        the same numbers into the same shape (the first rows of the buffer, contiguous), so the
        step's token is the eager path's (tested on the CPU) and the generator ends where it would.
        """
        assert self.noise is not None, "prime() makes the noise buffer"
        self.noise[:rows].exponential_(1.0, generator=generator)

    def run(self) -> torch.Tensor:
        """One step on :attr:`tokens` (the cache one position on); the logits, or the picked tokens [rows]."""
        if not (self.cuda_graph and self.cuda_graph_step):
            self.output = self._step()
        elif self.graph is None:
            with _RECORDING:
                self._capture()
        else:
            self.graph.replay()
            self.replays += 1
        self.cache.advance_after_replay()
        assert self.output is not None
        return self.output

    def _capture(self) -> None:
        # Warm up on a side stream (this runs the step for real: Triton autotuning, cuBLAS
        # workspaces, the allocator), put back what it changed, record the step, then replay
        # it: the replay writes the same keys/values at the same position again.
        state = self._mutable()
        saved = [t.clone() for t in state]
        side = _side_stream(self.tokens.device)
        _warm_up(self._step, side)
        self.cache.rewind(1)
        for t, s in zip(state, saved, strict=True):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        pool = None if self.prefill_graph is None else self.prefill_graph.pool()
        try:
            with torch.cuda.graph(graph, pool=pool, stream=side):
                self.output = self._step()
        except RuntimeError as e:  # a part reads the device while it runs: this graph's steps run eagerly
            # (recording ran no kernel, so the state is the restored one)
            warnings.warn(f"the decode step cannot be recorded in a CUDA graph ({e}); it runs eagerly", stacklevel=4)
            self.cuda_graph_step = False
            self.output = self._step()
            return
        graph.replay()
        self.graph = graph


def source_padding(model: Any) -> tuple[int, int] | None:
    """(pad id, longest source) of ``model.encoder`` when its embeddings say (seqweave's do), else None.

    Padded source positions need the encoder's pad id (RoBERTa counts positions over the
    tokens that are not padding) and must stay within its position table.
    """
    embeddings = getattr(getattr(model, "encoder", None), "embeddings", None)
    longest = getattr(embeddings, "max_length", None)
    if not isinstance(longest, int):
        return None
    pad = getattr(embeddings, "padding_idx", None)
    if pad is None and getattr(embeddings, "position_scheme", "absolute") != "absolute":
        return None
    return (0 if pad is None else int(pad)), longest


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
#: Held while a graph warms up and is recorded: threads share the side stream, and a recording
#: must not take in another thread's kernels.
_RECORDING = threading.Lock()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream decode graphs warm up and are recorded on, per device.

    cuBLAS keeps a workspace for every stream it runs on (PyTorch's default on Hopper: 32 MiB),
    which stays allocated: a new stream for each warm-up (as ``torch.cuda.Stream()`` gives,
    from a pool of 32) and torch's own capture stream would leave up to three behind for the
    first bucket, and more for later ones. One stream for all of it holds one.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _warm_up(fn: Callable[[], Any], side: torch.cuda.Stream) -> None:
    """Run ``fn`` once on the side stream, as CUDA-graph capture asks (lazy initialisation happens there)."""
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


class GraphStep(DecodeStep):
    """:class:`DecodeStep` over a :class:`DecodeGraph`: one call's rows and source padded into its bucket.

    The first call (the decoder prompt) writes the source's cross-attention keys/values and
    the prompt's keys/values into the graph's cache: :meth:`DecodeGraph.prefill` for a
    one-token prompt (a replay on CUDA), eagerly for a longer one (``decoder_input_ids``).
    Every later call runs the graph's decode step (a replay on CUDA). Results are the first
    ``rows`` rows. ``generator``: what a sampling graph's noise is drawn from (None: the
    global one).
    """

    def __init__(
        self,
        decoder: Decoder,
        source: torch.Tensor,
        source_mask: torch.Tensor | None,
        graph: DecodeGraph,
        rows: int,
        generator: torch.Generator | None = None,
    ) -> None:
        graph.load_source(source, source_mask)
        super().__init__(decoder, source, graph.source_mask, graph.cache)
        self.graph = graph
        self.rows = rows
        self.generator = generator

    @property
    def picks_tokens(self) -> bool:
        """Whether :meth:`next_tokens` is available: the graph picks the tokens itself (greedy search, sampling)."""
        return self.graph.bucket.picks

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        graph, n, t = self.graph, self.rows, tokens.shape[1]
        if self.source is None:
            graph.tokens[:n].copy_(tokens)
            return graph.run()[:n]
        self.source = self.source_mask = None
        if t == 1:
            graph.tokens[:n].copy_(tokens)
            return graph.prefill()[:n]
        padded = tokens.new_zeros(graph.bucket.rows, t)  # a longer prompt, eagerly
        padded[:n] = tokens
        self.cache.reset()
        logits = self.decoder(padded, encoder_hidden_states=graph.encoded(), encoder_attention_mask=graph.source_mask,
                              cache=self.cache).logits[:, -1]
        self.cache.advance_after_replay(t)  # reset() put it at 0
        return logits[:n]

    def prime(self, history: torch.Tensor, unfinished: torch.Tensor, eos: list[int] | None, pad: int,
              vocab: int, processors: Sequence[Processor]) -> None:
        """After the first step: see :meth:`DecodeGraph.prime`."""
        self.graph.prime(history, unfinished, eos, pad, vocab, processors)

    def next_tokens(self) -> torch.Tensor:
        """After :meth:`prime`: one step, the rows' new tokens [rows] (pad when finished).

        They are also in :meth:`columns` and the graph's :attr:`~DecodeGraph.done` flag is set.
        """
        graph = self.graph
        if graph.bucket.kind == "sample":
            graph.draw(self.rows, self.generator)
        return graph.run()[: self.rows]

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """The tokens the steps wrote at output positions ``start:stop`` [rows, stop - start]."""
        return self.graph.out[: self.rows, start:stop]

    @property
    def done(self) -> torch.Tensor:
        """Whether every row had finished after the last step (a 0-d bool tensor the step writes)."""
        return self.graph.done


class _Store:
    """An owner's kept graphs (in its ``__dict__``: collected with it, never copied or pickled)."""

    def __init__(self) -> None:
        self.signature: tuple[Any, ...] | None = None
        self.graphs: OrderedDict[tuple[Bucket, bool, bool | str], DecodeGraph] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Store:
        return _Store()  # a copy of the model captures its own graphs

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _Store, ()


_ATTRIBUTE = "_seqweave_decode_graphs"
_LOCK = threading.Lock()
_OWNERS: weakref.WeakSet[Any] = weakref.WeakSet()  # for clear_graphs()


def _signature(owner: Any) -> tuple[Any, ...]:
    """What a captured graph depends on: where every weight lives, its dtype, the training flag.

    Walks the module tree by hand: ``parameters()`` and ``buffers()`` (named, deduplicated
    iterators) took 0.43 ms for a GPT-2-small decoder alone, the walk 0.17 ms (0.30 ms for
    BERT-base + GPT-2-small), measured on a 2-core CPU.
    """
    found: list[int] = []
    stack = [owner]
    while stack:
        module = stack.pop()
        for group in (getattr(module, "_parameters", {}), getattr(module, "_buffers", {})):
            found.extend(t.data_ptr() for t in group.values() if t is not None)
        stack.extend(m for m in getattr(module, "_modules", {}).values() if m is not None)
    first = next(iter(owner.parameters()), None)
    where = None if first is None else (first.dtype, first.device)
    return (getattr(owner, "training", False), where, tuple(found))


def checkout(
    owner: Any,
    decoder: Decoder,
    bucket: Bucket,
    device: torch.device,
    *,
    cuda_graph: bool = True,
    compile: bool | str = False,
    keep: bool = True,
) -> DecodeGraph:
    """``owner``'s graph for ``bucket`` (made if needed), marked busy until :func:`release`.

    ``owner`` is the model (whose ``encode`` a bucket that encodes runs) or the decoder
    itself; its weights are the ones a captured graph reads. ``keep=False`` (or a kept graph
    busy with another call) gives a graph of the call's own.
    """

    def make() -> DecodeGraph:
        return DecodeGraph(decoder, bucket, device, cuda_graph=cuda_graph, compile=compile, model=owner)

    if not keep:
        return make()
    signature = _signature(owner)
    with _LOCK:  # two threads generating with one model never share a graph
        store = _store(owner)
        if store is None:
            return make()
        if store.signature != signature:  # the weights moved: every captured graph is stale
            store.graphs.clear()
            store.signature = signature
        key = (bucket, cuda_graph, compile)
        graph = store.graphs.get(key)
        if graph is not None and graph.busy:
            return make()
        if graph is None:
            graph = store.graphs[key] = make()
            while len(store.graphs) > MAX_GRAPHS:
                store.graphs.popitem(last=False)
        store.graphs.move_to_end(key)
        graph.busy = True
        return graph


def _store(owner: Any, make: bool = True) -> _Store | None:
    state = getattr(owner, "__dict__", None)
    if state is None:
        return None
    store = state.get(_ATTRIBUTE)
    if store is None and make:
        store = state[_ATTRIBUTE] = _Store()
        _OWNERS.add(owner)
    return store


def release(graph: DecodeGraph) -> None:
    """Let later calls use ``graph`` again."""
    graph.busy = False


def kept_graphs(owner: Any) -> list[DecodeGraph]:
    """The graphs kept for ``owner`` (a model, or a decoder generating alone), least recently used first."""
    store = _store(owner, make=False)
    return [] if store is None else list(store.graphs.values())


def clear_graphs(owner: Any = None) -> None:
    """Free the kept decode graphs (and their caches) of a model, or of every model."""
    for one in [owner] if owner is not None else list(_OWNERS):
        store = _store(one, make=False)
        if store is not None:
            store.graphs.clear()
            store.signature = None


def releasing(graph: DecodeGraph | None, steps: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``steps``, then (also when abandoned or failing) :func:`release` ``graph``."""
    try:
        yield from steps
    finally:
        if graph is not None:
            release(graph)
