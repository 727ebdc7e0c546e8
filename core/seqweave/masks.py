"""Every attention mask the stacks and the cache build, in one place.

All masks are boolean, True where a query may attend to a key, and broadcast against
attention scores [b, h, t, s]. Boolean, not additive: a query that sees no key at all
(the first position when the start token is also the pad token, GPT-2 style) then gets
a zero attention output, which is what SDPA gives for such a row and what transformers
computes by default. An additive mask filled with the dtype's minimum would instead
attend uniformly to every key, the future ones included.
"""

from __future__ import annotations

import torch

__all__ = ["buffer_bias", "buffer_mask", "causal_mask", "padding_mask"]


def causal_mask(t: int, past: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean mask [b or 1, 1, t, past + t]: query i sees keys up to ``past + i`` that are not padding.

    Args:
        t: the number of queries (new positions).
        past: the number of keys before the first query's own position (cached positions).
        attention_mask: [b, past + t] 1 for tokens and 0 for padding, or None.
        device: where to build the mask.
    """
    keep = torch.ones(t, past + t, dtype=torch.bool, device=device).tril(past)[None, None]
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[:, None, None, :]
    return keep


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean mask [b, 1, 1, s] (True = token) from a [b, s] mask of ones and zeros; None stays None."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


def buffer_mask(
    positions: torch.Tensor, slots: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """A static cache's mask over its whole buffer: [b or 1, 1, t, capacity].

    Query ``i``, written at ``positions[i]``, sees the buffer slots up to its own position,
    and of those only the ones ``attention_mask`` keeps. Nothing here depends on a Python
    value that changes from step to step, so the same kernels serve every step (CUDA graphs).

    Args:
        positions: [t] the buffer positions the queries are written at (a device tensor).
        slots: [capacity] ``arange(capacity)`` on the same device.
        attention_mask: [b, <= capacity] 1 for tokens and 0 for padding, or None.
    """
    keep = (slots[None, :] <= positions[:, None])[None, None]  # [1, 1, t, capacity]
    if attention_mask is not None:
        padded = attention_mask.new_ones(attention_mask.shape[0], slots.shape[0])
        padded[:, : attention_mask.shape[1]] = attention_mask
        keep = keep & padded.bool()[:, None, None, :]
    return keep


def buffer_bias(positions: torch.Tensor, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`buffer_mask` without padding, as an additive mask: [1, 1, t, capacity], 0 or -inf in ``dtype``.

    Every query sees its own slot, so no row is all -inf. Made once per forward and read by
    every layer: SDPA would otherwise turn the boolean mask into these floats in every layer.
    """
    keep = slots[None, :] <= positions[:, None]  # [t, capacity]
    return torch.full(keep.shape, -float("inf"), dtype=dtype, device=keep.device).masked_fill_(keep, 0.0)[None, None]
