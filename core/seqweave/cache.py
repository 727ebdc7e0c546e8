"""The decoder's key/value cache.

Self-attention keys/values live in per-layer buffers allocated once and written in
place at an explicit position counter (never guessed from the data); cross-attention
keys/values are computed once per source sequence and kept as they are, together with
the source padding mask.

Rows and sources: the self-attention buffers have one row per decoded sequence
(``b * g`` rows when each of ``b`` sources is decoded ``g`` times, as beam search does),
the cross-attention keys/values one row per *source* (``b``). :class:`~seqweave.layers.Attention`
folds the ``g`` sequences of a source into the query length of one attention call, so
the source side is never copied per beam.

Two modes:

* dynamic (default): the position is a Python int; attention reads the buffers up to
  the current length. Cheapest on the CPU.
* static (``static=True``): the position is also a device tensor, keys/values are written
  with ``index_copy_`` at that tensor and attention always reads the whole buffer under a
  mask. No shape or Python value changes from one step to the next, so a CUDA graph
  captured once replays every later step.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["Cache", "LayerCache"]


class LayerCache:
    """One decoder layer's cache: self-attention buffers and the cross-attention keys/values."""

    def __init__(self, owner: Cache) -> None:
        self._owner = owner
        self.k: torch.Tensor | None = None  # [b*g, h, capacity, hd]
        self.v: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None  # ([b, h, s, hd], [b, h, s, hd])

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` [b, h, t, hd] at the cache position; return the keys/values to attend to.

        Dynamic mode returns views of the positions written so far (``[b, h, length + t, hd]``);
        static mode returns the whole buffers (``[b, h, capacity, hd]``), which the caller
        masks with :meth:`Cache.self_attention_mask`.
        """
        owner = self._owner
        if owner.static:
            if self.k is None:
                self._allocate(k, owner.capacity)
            self.k.index_copy_(2, owner.write_index, k)
            self.v.index_copy_(2, owner.write_index, v)
            return self.k, self.v
        start, t = owner.length, k.shape[2]
        if self.k is None or start + t > self.k.shape[2]:
            self._grow(k, start + t)
        # narrow + copy_ rather than slice assignment: the same copy, a few microseconds less
        # Python per call, and this runs twice per layer per generated token.
        self.k.narrow(2, start, t).copy_(k)
        self.v.narrow(2, start, t).copy_(v)
        return self.k.narrow(2, 0, start + t), self.v.narrow(2, 0, start + t)

    def _allocate(self, like: torch.Tensor, capacity: int) -> None:
        b, h, _, hd = like.shape
        # Zeros, not empty: static mode reads unwritten positions (masked out, but a NaN
        # left in memory would still poison ``0 * NaN`` in the attention product).
        self.k = like.new_zeros(b, h, capacity, hd)
        self.v = like.new_zeros(b, h, capacity, hd)

    def _grow(self, like: torch.Tensor, needed: int) -> None:
        old_k, old_v = self.k, self.v
        capacity = max(needed, self._owner.capacity, 2 * (0 if old_k is None else old_k.shape[2]))
        self._allocate(like, capacity)
        if old_k is not None:
            n = self._owner.length
            self.k[:, :, :n] = old_k[:, :, :n]
            self.v[:, :, :n] = old_v[:, :, :n]


class Cache:
    """Key/value cache for every layer of a decoder.

    Args:
        num_layers: number of decoder layers.
        capacity: the number of positions to allocate up front (prompt length +
            ``max_new_tokens``). Dynamic buffers grow by doubling if more are written;
            static buffers cannot grow.
        static: keep the position in a device tensor and attend over the whole buffer
            (see the module docstring); needs ``capacity`` and ``device``.
        device: where the position tensor of a static cache lives.

    The position counter :attr:`length` is advanced by the decoder once per forward
    call, after every layer has written its keys/values at the same position.

    Attributes:
        source_mask: the boolean cross-attention mask [b, 1, 1, s] (True = token; None: no
            source padding), made once when the cross-attention keys/values are.
        has_source: whether the cross-attention keys/values (and ``source_mask``) are filled.
    """

    def __init__(
        self,
        num_layers: int,
        capacity: int = 0,
        *,
        static: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if static and capacity <= 0:
            raise ConfigError(f"a static cache needs a capacity > 0 (got {capacity})")
        self.capacity = capacity
        self.length = 0
        self.static = static
        self.layers = [LayerCache(self) for _ in range(num_layers)]
        self.source_mask: torch.Tensor | None = None
        self.has_source = False
        self.position: torch.Tensor | None = None  # static only: [] long, == length
        self.write_index: torch.Tensor | None = None  # static only: [t] positions this forward writes
        if static:
            self.position = torch.zeros((), dtype=torch.long, device=device)
            self._arange = torch.arange(capacity, device=device)

    def __len__(self) -> int:
        return self.length

    @property
    def past(self) -> int | torch.Tensor:
        """Positions already written: an int (dynamic) or a 0-d device tensor (static)."""
        return self.position if self.static else self.length

    def begin(self, t: int) -> None:
        """Prepare a forward of ``t`` new positions (static mode: the positions to write)."""
        if self.static:
            if self.length + t > self.capacity:
                raise ConfigError(
                    f"the static cache holds {self.capacity} positions; {self.length} + {t} do not fit"
                )
            self.write_index = self.position + self._arange[:t]

    def self_attention_mask(self, t: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Static mode: boolean mask [b or 1, 1, t, capacity] (True = attend) over the whole buffer.

        Query ``i`` (at position ``past + i``) sees the keys at positions up to its own,
        and of those only the ones ``attention_mask`` [b, <= capacity] keeps.
        """
        keep = (self._arange[None, :] <= self.write_index[:, None])[None, None]  # [1, 1, t, capacity]
        if attention_mask is not None:
            padded = attention_mask.new_ones(attention_mask.shape[0], self.capacity)
            padded[:, : attention_mask.shape[1]] = attention_mask
            keep = keep & padded.bool()[:, None, None, :]
        return keep

    def advance(self, n: int) -> None:
        """Move the position counter past ``n`` newly written positions."""
        self.length += n
        if self.static:
            self.position.add_(n)

    def reorder(self, index: torch.Tensor) -> None:
        """Reorder the rows of the self-attention buffers in place (beam search).

        Args:
            index: [b*g] for each new row, the row it continues. Cross-attention keys/values
                are per source and stay as they are.
        """
        n = self.length
        for layer in self.layers:
            if layer.k is not None:
                layer.k[:, :, :n] = layer.k[:, :, :n].index_select(0, index)
                layer.v[:, :, :n] = layer.v[:, :, :n].index_select(0, index)
