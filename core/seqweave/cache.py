"""The decoder's key/value cache.

Self-attention keys/values live in per-layer buffers allocated once and written in
place at an explicit position counter, :attr:`Cache.length` (never guessed from the
data); cross-attention keys/values are computed once per source sequence and kept,
together with the source padding mask.

The cache owns its state: the decoder and its layers read it, and change it only
through its methods, in this order per forward call:

1. :meth:`Cache.begin` (``t`` new positions; returns where they start),
2. per layer, :meth:`LayerCache.append` (self-attention keys/values) and, on the first
   call for a source, :meth:`LayerCache.store_cross` (cross-attention keys/values),
3. :meth:`Cache.set_source` (the source padding mask, once per source),
4. :meth:`Cache.advance` (after every layer has written at the same position).

Beam search reorders the rows with :meth:`Cache.reorder`; a CUDA-graph replay, which
advances the device position by itself, reports it with :meth:`StaticCache.advance_after_replay`.

Rows and sources: every buffer has one row per decoded sequence (``b * g`` rows when
each of ``b`` sources is decoded ``g`` times, as beam search does). The ``g`` rows of a
source hold equal copies of its cross-attention keys/values (projected once, copied once:
see :meth:`~seqweave.layers.Attention._cross`), so reordering beams, which only moves
rows within a source, never touches them.

Two kinds, one interface (``Cache(num_layers, capacity, static=...)`` makes either):

* :class:`DynamicCache` (default): the position is a Python int; attention reads the
  buffers up to the current length, which grow by doubling when full. Cheapest on the CPU.
* :class:`StaticCache` (``static=True``): the position is also a device tensor, keys/values
  are written with ``index_copy_`` at that tensor and attention always reads the whole
  buffer under a mask. No shape or Python value changes from one step to the next, so a
  CUDA graph captured once replays every later step.

They are two classes rather than one with ``if static`` branches because they share
only the bookkeeping (length, source, reorder): how a layer writes, what a step reads,
whether the buffer may grow and which mask the decoder needs all differ, and each
layer's ``append`` runs twice per layer per generated token, where a branch per call
would be paid for nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .errors import ConfigError
from .masks import buffer_bias, buffer_mask

__all__ = ["REORDER_LAYERS", "Cache", "DynamicCache", "LayerCache", "StaticCache"]

#: Layers per gather in :meth:`Cache.reorder`: its temporary is at most this many layers' keys/values.
REORDER_LAYERS = 4
_JOINT_REORDER_ON_CPU = False  # tests set it: the reorder CUDA runs, on the CPU


class LayerCache:
    """One decoder layer's part of a cache: self-attention buffers and the cross-attention keys/values.

    Attributes (read them; they change only through the methods):
        k, v: the self-attention buffers [b*g, h, capacity, hd], None until the first write.
            Contiguous views of one buffer the cache keeps for all its layers (see
            :meth:`Cache.reorder`), unless this layer's shape differs from the others'.
        cross: the cross-attention keys and values ([b*g, h, s, hd] each), None until stored.
    """

    def __init__(self, owner: Cache, index: int = 0) -> None:
        self._owner = owner
        self._index = index
        self._joint: torch.Tensor | None = None  # the owner's buffer k and v are views of (None: their own)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` [b, h, t, hd] at the cache position; return the keys/values to attend to."""
        raise NotImplementedError

    def store_cross(self, k: torch.Tensor, v: torch.Tensor, per_source: int = 1) -> None:
        """Keep the cross-attention keys/values [b, h, s, hd] computed from the source.

        ``per_source`` > 1: each of the b sources is decoded that many times (beams), and
        each of its rows gets a copy: :attr:`cross` is then [b * per_source, h, s, hd].
        """
        self.cross = (k, v) if per_source == 1 else (k.repeat_interleave(per_source, 0), v.repeat_interleave(per_source, 0))

    def _zero_dead_sources(self, alive: torch.Tensor) -> None:
        """Zero the cross-attention values of the sources with no token (``alive`` [b, 1, 1, 1] False)."""
        if self.cross is not None:  # out of place: the values may be a view of the projection's output
            self.cross = (self.cross[0], self.cross[1].masked_fill(~alive, 0.0))

    def _allocate(self, like: torch.Tensor, capacity: int) -> None:
        # Zeros, not empty: static mode reads unwritten positions (masked out, but a NaN
        # left in memory would still poison ``0 * NaN`` in the attention product).
        self._joint = self._owner._joint_buffer(like, capacity)
        if self._joint is not None:
            self.k, self.v = self._joint[self._index].unbind(0)
        else:
            b, h, _, hd = like.shape
            self.k = like.new_zeros(b, h, capacity, hd)
            self.v = like.new_zeros(b, h, capacity, hd)


class _DynamicLayer(LayerCache):
    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write at :attr:`Cache.length`; return views of every position written [b, h, length + t, hd]."""
        start, t = self._owner.length, k.shape[2]
        if self.k is None or start + t > self.k.shape[2]:
            self._grow(k, start + t)
        # narrow + copy_ rather than slice assignment: the same copy, a few microseconds less
        # Python per call, and this runs twice per layer per generated token.
        self.k.narrow(2, start, t).copy_(k)
        self.v.narrow(2, start, t).copy_(v)
        return self.k.narrow(2, 0, start + t), self.v.narrow(2, 0, start + t)

    def _grow(self, like: torch.Tensor, needed: int) -> None:
        old_k, old_v = self.k, self.v
        capacity = max(needed, self._owner.capacity, 2 * (0 if old_k is None else old_k.shape[2]))
        self._allocate(like, capacity)
        if old_k is not None:
            n = self._owner.length
            self.k[:, :, :n] = old_k[:, :, :n]
            self.v[:, :, :n] = old_v[:, :, :n]


class _StaticLayer(LayerCache):
    def store_cross(self, k: torch.Tensor, v: torch.Tensor, per_source: int = 1) -> None:
        """Copy into the buffers of an earlier source of the same shape (a replayed graph reads those)."""
        b, h, s, hd = k.shape
        shape = (b * per_source, h, s, hd)
        if self.cross is None or self.cross[0].shape != shape or self.cross[0].dtype != k.dtype:
            self.cross = (k.new_empty(shape), v.new_empty(shape))
        # one broadcasting copy per tensor writes every row's copy, with no temporary
        self.cross[0].view(b, per_source, h, s, hd).copy_(k.unsqueeze(1))
        self.cross[1].view(b, per_source, h, s, hd).copy_(v.unsqueeze(1))

    def _zero_dead_sources(self, alive: torch.Tensor) -> None:
        if self.cross is not None:  # in place: the buffers are the cache's own
            self.cross[1].masked_fill_(~alive, 0.0)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write at the device position; return the whole buffers [b, h, capacity, hd].

        The caller masks them with :meth:`StaticCache.self_attention_mask`.
        """
        owner = self._owner
        if self.k is None:
            self._allocate(k, owner.capacity)
        self.k.index_copy_(2, owner.write_index, k)
        self.v.index_copy_(2, owner.write_index, v)
        return self.k, self.v


class Cache:
    """Key/value cache for every layer of a decoder.

    ``Cache(...)`` makes a :class:`DynamicCache`, or a :class:`StaticCache` with
    ``static=True`` (as ``pathlib.Path`` makes a ``PosixPath``); both are ``Cache`` instances.

    Args:
        num_layers: number of decoder layers.
        capacity: the number of positions to allocate up front (prompt length +
            ``max_new_tokens``). Dynamic buffers grow by doubling if more are written;
            static buffers cannot grow.
        static: keep the position in a device tensor and attend over the whole buffer
            (see the module docstring); needs ``capacity`` and ``device``.
        device: where the position tensor of a static cache lives.

    Attributes (read them; they change only through the methods):
        length: the position: how many positions every layer has written. Advanced by
            :meth:`advance` once per forward call, after every layer has written its
            keys/values at the same position.
        layers: one :class:`LayerCache` per decoder layer.
        capacity: the positions allocated up front.

    Raises:
        ConfigError: a static cache without a capacity, or a ``static`` that contradicts the class.
    """

    #: Whether this is a :class:`StaticCache` (fixed shapes, device-side position).
    static: ClassVar[bool] = False
    _layer_type: ClassVar[type[LayerCache]] = LayerCache

    def __new__(cls, *args: Any, static: bool | None = None, **kwargs: Any) -> Cache:
        # *args/**kwargs: __init__ checks them; copy and pickle call __new__(cls) with none.
        if cls is Cache:
            cls = StaticCache if static else DynamicCache
        return super().__new__(cls)

    def __init__(
        self,
        num_layers: int,
        capacity: int = 0,
        *,
        static: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if static is not None and bool(static) != self.static:
            raise ConfigError(f"{type(self).__name__} got static={static}; use Cache(..., static={static})")
        self.capacity = capacity
        self.length = 0
        self.layers = [self._layer_type(self, i) for i in range(num_layers)]
        self._joint: torch.Tensor | None = None  # [layers, 2, b*g, h, capacity, hd]: see reorder
        self._source_mask: torch.Tensor | None = None
        self._source_bias: torch.Tensor | None = None
        self._has_source = False
        self._setup(device)

    def _setup(self, device: torch.device | str | None) -> None:
        """What a kind of cache keeps besides the shared bookkeeping (called at the end of ``__init__``)."""

    def __len__(self) -> int:
        return self.length

    @property
    def source_mask(self) -> torch.Tensor | None:
        """The boolean cross-attention mask [b, 1, 1, s] (True = token; None: no source padding)."""
        return self._source_mask

    @property
    def source_bias(self) -> torch.Tensor | None:
        """The cross-attention mask as attention reads it once the cache holds the source: additive.

        [b, 1, 1, s] in the keys' dtype, 0 for tokens and -inf for padding (None: no padding).
        A source with no token at all attends to every position instead, and its cached
        values are zero, so its attention output is the zero that :attr:`source_mask` gives
        it. Every row then has a key, and attention needs no check per step (see
        :meth:`~seqweave.layers.Attention._attend`); SDPA turns a boolean mask into exactly
        this, so the results are the same bit for bit.
        """
        return self._source_bias

    @property
    def has_source(self) -> bool:
        """Whether the cross-attention keys/values (and :attr:`source_mask`) are filled."""
        return self._has_source

    def set_source(self, source_mask: torch.Tensor | None) -> None:
        """Record that the layers hold the source's keys/values, and keep its mask [b, 1, 1, s] (or None).

        Also makes :attr:`source_bias` (no host sync: it is a few kernels once per source).
        """
        self._source_mask, self._has_source = source_mask, True
        if source_mask is None:
            self._source_bias = None
            return
        alive = source_mask.any(dim=-1, keepdim=True)  # [b, 1, 1, 1]
        keys = next((layer.cross[0] for layer in self.layers if layer.cross is not None), None)
        dtype = torch.float32 if keys is None else keys.dtype
        bias = torch.zeros(source_mask.shape, dtype=dtype, device=source_mask.device)
        bias.masked_fill_(~(source_mask | ~alive), -float("inf"))
        for layer in self.layers:
            layer._zero_dead_sources(alive)
        self._source_bias = self._keep_bias(bias)

    def _keep_bias(self, bias: torch.Tensor) -> torch.Tensor:
        return bias

    def begin(self, t: int) -> int | torch.Tensor:
        """Prepare a forward of ``t`` new positions; return where they start.

        Returns:
            The position of the first new token, in the form the step reads it: an int
            (dynamic) or a 0-d device tensor (static), for position ids and masks.
        """
        raise NotImplementedError

    def advance(self, n: int) -> None:
        """Move the position past ``n`` newly written positions (once per forward, after every layer)."""
        self.length += n

    def reorder(self, index: torch.Tensor, *, whole: bool = False) -> None:
        """Reorder the rows of the self-attention buffers in place (beam search).

        Every layer's keys and values are views of one buffer [layers, 2, rows, h, capacity,
        hd]. Off the CPU a reorder is then a few large gathers over it (:data:`REORDER_LAYERS`
        layers each, which bounds the temporary): 6 kernel launches for 12 layers instead of
        48, and beam search launches them from the host every step. On the CPU, where a
        launch costs little, one gather per layer's keys and values measured as fast or faster
        (the joint gathers lose at 16 rows x 64 positions: 6.2 ms against 3.9 for GPT-2-small's
        12 layers), and a step whose beams all continue their own row copies nothing.
        Layers whose shape differs from the others' have buffers of their own.

        Args:
            index: [b*g] for each new row, the row it continues (a row of the same source).
                Cross-attention keys/values are equal across a source's rows and stay as they are.
            whole: reorder every position the buffers hold, not only the :attr:`length` written
                so far, and always: the same work at every step, as a recorded step needs.
        """
        n, r = (self.capacity if whole else self.length), index.shape[0]  # r < rows when a decode graph pads the batch
        joint = self._joint
        if index.device.type == "cpu" and not _JOINT_REORDER_ON_CPU:
            if not whole and torch.equal(index, torch.arange(r)):  # (a recorded step reads no data)
                return
        elif joint is not None and all(layer._joint is joint for layer in self.layers):
            for part in joint[:, :, :r, :, :n].split(REORDER_LAYERS):  # [<= REORDER_LAYERS, 2, r, h, n, hd]
                part.copy_(part.index_select(2, index))
            return
        for layer in self.layers:
            if layer.k is not None:
                layer.k[:r, :, :n] = layer.k[:r, :, :n].index_select(0, index)
                layer.v[:r, :, :n] = layer.v[:r, :, :n].index_select(0, index)

    def self_attention_buffers(self) -> list[torch.Tensor]:
        """The tensors that hold the self-attention keys/values: the joint buffer, or each layer's own."""
        found: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            for t in (layer._joint,) if layer._joint is not None else (layer.k, layer.v):
                if t is not None:
                    found.setdefault(id(t), t)
        return list(found.values())

    def _joint_buffer(self, like: torch.Tensor, capacity: int) -> torch.Tensor | None:
        """The buffer [layers, 2, b, h, capacity, hd] a layer writing ``like`` [b, h, t, hd] takes views of.

        Made by the first layer to allocate (zeros), and again when the buffers grow; None
        for a layer whose shape or dtype differs from the buffer's (it gets its own).
        """
        b, h, _, hd = like.shape
        joint = self._joint
        if joint is not None:
            if joint.shape[2:4] + joint.shape[5:] != (b, h, hd) or (joint.dtype, joint.device) != (like.dtype, like.device):
                return None  # a layer unlike the others: buffers of its own
            if joint.shape[4] == capacity:
                return joint
        self._joint = like.new_zeros(len(self.layers), 2, b, h, capacity, hd)  # the first layer, or growth
        return self._joint


class DynamicCache(Cache):
    """The default cache: a Python position, buffers read up to it, grown by doubling when full."""

    static = False
    _layer_type = _DynamicLayer

    def begin(self, t: int) -> int:
        return self.length


class StaticCache(Cache):
    """Fixed-shape cache for CUDA graphs: the position also lives on the device, the whole buffer is read.

    Its buffers (self-attention keys/values, the cross-attention keys/values and
    :attr:`source_bias` of a source of the same shape) are written in place, never
    replaced, so a CUDA graph that captured a step reads the same memory on every replay,
    also after :meth:`reset` for the next ``generate`` call.

    Attributes:
        write_index: [t] the buffer positions the current forward writes (set by :meth:`begin`).
        host_counts: whether :meth:`begin` and :meth:`advance` keep :attr:`length` (default). A
            decode graph sets it False and counts the positions itself: a replay runs the
            recorded kernels, never the Python, and a compiled step must not read a Python
            counter that changes every step.
    """

    static = True
    _layer_type = _StaticLayer

    def _setup(self, device: torch.device | str | None) -> None:
        if self.capacity <= 0:
            raise ConfigError(f"a static cache needs a capacity > 0 (got {self.capacity})")
        self._position = torch.zeros((), dtype=torch.long, device=device)  # == length, on the device
        self._slots = torch.arange(self.capacity, device=device)
        self.write_index: torch.Tensor | None = None
        self.host_counts = True

    def reset(self) -> None:
        """Empty the cache for a new source, keeping every buffer (and so every captured graph) valid."""
        self.length = 0
        self._position.zero_()
        self._has_source = False

    def source_written(self) -> None:
        """Record that a replayed graph has written the source's keys/values and mask into the buffers.

        The graph's capture ran :meth:`set_source` once, which made :attr:`source_mask` and
        :attr:`source_bias` the buffers its replays write; a replay runs no Python.
        """
        self._has_source = True

    def begin(self, t: int) -> torch.Tensor:
        if self.host_counts and self.length + t > self.capacity:
            raise ConfigError(
                f"the static cache holds {self.capacity} positions; {self.length} + {t} do not fit"
            )
        self.write_index = self._position + self._slots[:t]
        return self._position

    def self_attention_mask(
        self, attention_mask: torch.Tensor | None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The mask over the whole buffer for the current forward: [b or 1, 1, t, capacity].

        See :func:`seqweave.masks.buffer_mask`; ``attention_mask`` is [b, <= capacity] or None.
        Without one every query sees at least its own position, and the mask is additive
        (:func:`seqweave.masks.buffer_bias`, in ``dtype``, the queries'): attention then needs
        no check for rows with no key, and SDPA would have made the same floats from booleans.
        """
        if attention_mask is None:
            return buffer_bias(self.write_index, self._slots, dtype)
        return buffer_mask(self.write_index, self._slots, attention_mask)

    @property
    def position(self) -> torch.Tensor:
        """The position the next forward writes at, on the device (0-d; :attr:`length` on the host)."""
        return self._position

    def advance(self, n: int) -> None:
        if self.host_counts:
            self.length += n
        self._position.add_(n)

    def rewind(self, n: int) -> None:
        """Move the position back by ``n`` (the keys/values written there stay, to be overwritten).

        A decode graph's warm-up runs a step for real before the step is recorded; rewinding
        makes the recorded step, replayed, write at the same position again.
        """
        if self.host_counts:
            self.length -= n
        self._position.sub_(n)

    def advance_after_replay(self, n: int = 1) -> None:
        """Move the Python position on by ``n``: the device one was advanced without it.

        A CUDA-graph replay runs the recorded kernels (the device-side ``add_`` among them)
        and no Python; with :attr:`host_counts` False, :meth:`advance` leaves the Python
        position to the caller. Either way the host counter is moved here.
        """
        self.length += n

    def _keep_bias(self, bias: torch.Tensor) -> torch.Tensor:
        old = self._source_bias
        if old is not None and old.shape == bias.shape and old.dtype == bias.dtype:
            return old.copy_(bias)
        return bias
