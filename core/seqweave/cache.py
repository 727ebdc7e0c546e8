"""The decoder's key/value cache.

Self-attention keys/values live in per-layer buffers allocated once and written in
place at an explicit position counter (never guessed from the data); cross-attention
keys/values are computed once per source sequence and kept as they are.
"""

from __future__ import annotations

import torch

__all__ = ["Cache", "LayerCache"]


class LayerCache:
    """One decoder layer's cache: self-attention buffers and the cross-attention keys/values."""

    def __init__(self, owner: Cache) -> None:
        self._owner = owner
        self.k: torch.Tensor | None = None  # [b, h, capacity, hd]
        self.v: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None  # ([b, h, s, hd], [b, h, s, hd])

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` [b, h, t, hd] at the cache position; return all keys/values so far."""
        start = self._owner.length
        end = start + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            self._grow(k, end)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, like: torch.Tensor, needed: int) -> None:
        capacity = max(needed, self._owner.capacity, 2 * (0 if self.k is None else self.k.shape[2]))
        b, h, _, hd = like.shape
        k = like.new_empty(b, h, capacity, hd)
        v = like.new_empty(b, h, capacity, hd)
        if self.k is not None:
            n = self._owner.length
            k[:, :, :n] = self.k[:, :, :n]
            v[:, :, :n] = self.v[:, :, :n]
        self.k, self.v = k, v


class Cache:
    """Key/value cache for every layer of a decoder.

    Args:
        num_layers: number of decoder layers.
        capacity: the number of positions to allocate up front (e.g. prompt length +
            ``max_new_tokens``); buffers grow by doubling if more are written.

    The position counter :attr:`length` is advanced by the decoder once per forward
    call, after every layer has written its keys/values at the same position.
    """

    def __init__(self, num_layers: int, capacity: int = 0) -> None:
        self.capacity = capacity
        self.length = 0
        self.layers = [LayerCache(self) for _ in range(num_layers)]

    def __len__(self) -> int:
        return self.length

    def advance(self, n: int) -> None:
        """Move the position counter past ``n`` newly written positions."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Reorder the batch rows of the self-attention buffers in place (beam search)."""
        n = self.length
        for layer in self.layers:
            if layer.k is not None:
                layer.k[:, :, :n] = layer.k[:, :, :n].index_select(0, index)
                layer.v[:, :, :n] = layer.v[:, :, :n].index_select(0, index)
