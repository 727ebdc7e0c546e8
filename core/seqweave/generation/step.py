"""One decode step: the decoder on the newest token of every row, eagerly or replayed from a CUDA graph."""

from __future__ import annotations

import torch

from ..cache import Cache
from ..protocols import Decoder

__all__ = ["CudaGraphStep", "DecodeStep"]


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

