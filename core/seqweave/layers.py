"""Transformer building blocks shared by every architecture.

No architecture is named here. BERT, RoBERTa and GPT-2 (and any third-party plugin)
differ only in how they set these blocks up: post- or pre-LayerNorm, the activation,
the embeddings and the head. Shapes use ``[b, t, d]`` notation: batch, time, model width;
``h`` heads of width ``hd``; ``s`` source (key) length.

The blocks are plain PyTorch. Two things come from :mod:`seqweave.fast`, where every CPU
speed trick lives behind its guards: :class:`~seqweave.fast.Linear` (an ``nn.Linear``)
and :func:`~seqweave.fast.call` (``module(...)``, minus ``nn.Module.__call__``'s
bookkeeping when nothing needs it). Both act exactly as their plain counterparts under
``torch.compile``, autograd, hooks and tracing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .fast import Linear, call
from .masks import causal_mask

if TYPE_CHECKING:
    from .cache import LayerCache

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "Embeddings",
    "FeedForward",
    "LMHead",
    "Linear",
    "TransformerLayer",
    "activation",
    "call",
]


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation, written as transformers writes it (``NewGELUActivation``).
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_python(x: torch.Tensor) -> torch.Tensor:
    # ``GELUActivation(use_gelu_python=True)``: exact GELU through erf, rounded unlike F.gelu.
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    # ``FastGELUActivation``: gelu_new's curve, rounded differently; kept apart for exact parity.
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    # ``LaplaceActivation`` (MEGA), with transformers' constants.
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


#: Activation functions by the names Hugging Face configs use (``hidden_act``, ``activation_function``):
#: every parameter-free entry of transformers' ``ACT2FN``, each computed as transformers computes it.
#: (``prelu`` and ``xielu`` carry learnable weights, so they are not plain functions and are left out.)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_python": _gelu_python,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_accurate": _gelu_new,  # ``AccurateGELUActivation``: the same expression as gelu_new
    "gelu_python_tanh": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10.0, 10.0),
    "quick_gelu": _quick_gelu,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "leaky_relu": F.leaky_relu,  # nn.LeakyReLU's default slope, 0.01
    "mish": F.mish,
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation called ``name``; raise :class:`ConfigError` naming the allowed ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}") from None


class Attention(nn.Module):
    """Multi-head attention for self-attention (fused ``qkv``) or cross-attention (``q`` + fused ``kv``).

    One ``forward`` serves self-attention, cached self-attention and cross-attention
    whose keys/values are projected once per source and kept in the cache.

    Args:
        dim: model width ``d``.
        num_heads: number of heads ``h``; must divide ``dim``.
        source_dim: width of the sequence attended to (cross-attention only).
        cross: build a cross-attention block.
        scale: the factor applied to ``q @ k^T``; defaults to ``1 / sqrt(hd)``.
        dropout: dropout on the attention probabilities (training only).
        bias: whether the projections have biases.
        upcast: compute scores, softmax and the weighted sum in float32 when the inputs are
            half precision, and cast the result back (a no-op in float32).

    Masks are boolean (True = may attend) or additive floats. A query whose row of a
    boolean mask has no True key gets a zero output, as ``scaled_dot_product_attention``
    gives with a boolean mask and as transformers' default (SDPA) attention computes it;
    such a row reaches the kernel attending to every key and is zeroed after, so that
    its gradients are zero on every backend (cuDNN's would be NaN).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        source_dim: int | None = None,
        cross: bool = False,
        scale: float | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        upcast: bool = False,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ConfigError(f"the number of attention heads ({num_heads}) must divide the hidden size ({dim})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale if scale is not None else self.head_dim**-0.5
        self.dropout = dropout
        self.cross = cross
        self.upcast = upcast
        if cross:
            self.q_proj = Linear(dim, dim, bias=bias)
            self.kv_proj = Linear(source_dim or dim, 2 * dim, bias=bias)
        else:
            self.qkv_proj = Linear(dim, 3 * dim, bias=bias)
        self.out_proj = Linear(dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [b, h, t, hd]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        source: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` [b, t, d] to itself or to ``source`` [b (or b / g), s, d_src].

        Args:
            x: the queries' input.
            mask: broadcastable to [b, h, t, s]: boolean (True = attend) or additive float; or None.
            source: the sequence cross-attention attends to, [b, s, d_src] or [b / g, s, d_src]
                (see :meth:`_cross`); may be None when the cache already holds its keys/values.
            cache: this layer's cache; self-attention writes the new keys/values into it
                in place, cross-attention reads (or fills) the per-source keys/values.
            is_causal: let SDPA apply a causal mask itself (only with ``mask=None``).
            need_weights: also return the attention probabilities [b, h, t, s].

        Returns:
            The output [b, t, d] and the probabilities (or None).
        """
        if self.cross:
            return self._cross(x, mask, source, cache, need_weights)
        b, t, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        if t == 1:  # decoding: [b, 1, 3, h, hd] is laid out as [b, 3, h, 1, hd], no permute needed
            q, k, v = call(self.qkv_proj, x).view(b, 3, h, 1, hd).unbind(1)
        else:
            q, k, v = call(self.qkv_proj, x).view(b, t, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each [b, h, t, hd]
        if cache is not None:
            k, v = cache.append(k, v)
        out, weights = self._attend(q, k, v, mask, is_causal, need_weights)
        return call(self.out_proj, self._merge(out, b, t)), weights

    @staticmethod
    def _merge(out: torch.Tensor, rows: int, t: int) -> torch.Tensor:
        """[rows, h, t, hd] -> [rows, t, h*hd]; for one query a view of the same memory."""
        if t == 1:
            return out.view(rows, 1, -1) if out.is_contiguous() else out.reshape(rows, 1, -1)
        return out.transpose(1, 2).reshape(rows, t, -1)

    def _cross(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        source: torch.Tensor | None,
        cache: LayerCache | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention from ``x`` [b, t, d] to a source of b rows, or of ``b / g`` rows each decoded g times.

        A source decoded g times (beams, several samples: rows ``i*g ... i*g + g-1`` decode
        source ``i``) has its keys/values projected once and then copied per row, once (into
        the cache when there is one). Attention then runs on transformers' shapes, one query
        row against one copy, and its results are the same bit for bit. The g queries folded
        into one call against a single copy would read less memory, but SDPA rounds that call
        differently, and in bfloat16 that changed beam search's tokens.
        """
        b, t, _ = x.shape
        if source is None:
            assert cache is not None and cache.cross is not None, "cross-attention needs a source or a filled cache"
            k, v = cache.cross
        else:  # a new source (a static cache copies its keys/values into the buffers of the last one)
            k, v = (self._heads(t) for t in call(self.kv_proj, source).chunk(2, dim=-1))  # [b_src, h, s, hd]
            assert b % k.shape[0] == 0, f"{b} decoder rows cannot share {k.shape[0]} sources"
            if cache is not None:
                cache.store_cross(k, v, b // k.shape[0])
                k, v = cache.cross
            elif k.shape[0] != b:
                k, v = k.repeat_interleave(b // k.shape[0], 0), v.repeat_interleave(b // k.shape[0], 0)
        if t == 1:  # one query: [b, 1, d] is laid out as [b, h, 1, hd]
            q = call(self.q_proj, x).view(b, self.num_heads, 1, self.head_dim)
        else:
            q = self._heads(call(self.q_proj, x))  # [b, h, t, hd]
        out, weights = self._attend(q, k, v, mask, False, need_weights)
        return call(self.out_proj, self._merge(out, b, t)), weights

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``softmax(q k^T * scale + mask) v`` for q [b, h, t, hd], k/v [b, h, s, hd]; SDPA unless weights are wanted.

        Returns the output [b, h, t, hd] in the inputs' dtype and the probabilities (or None).
        """
        p = self.dropout if self.training else 0.0
        dtype = q.dtype
        if self.upcast:  # e.g. GPT-2's reorder_and_upcast_attn; .float() is free in float32
            q, k, v = q.float(), k.float(), v.float()
            if mask is not None and mask.is_floating_point():
                mask = mask.float()
        if need_weights:
            out, weights = self._explicit(q, k, v, mask, is_causal, p)
            return out.to(dtype), weights.to(dtype)
        alive = None
        if mask is not None and mask.dtype == torch.bool:
            # A query row with no key at all never reaches the kernel that way: some backends (cuDNN)
            # give NaN gradients for it. It attends to every key instead, and its output is zeroed below,
            # which is the value SDPA and transformers give such a row in the forward.
            alive = mask.any(dim=-1, keepdim=True)  # [b, 1, t, 1]
            mask = mask | ~alive
        out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=p, is_causal=is_causal, scale=self.scale)
        if alive is not None:
            out = out * alive
        return (out.to(dtype) if self.upcast else out), None  # no call at all on the per-token path

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        p: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What SDPA computes, written out so the probabilities [b, h, t, s] can be returned."""
        scores = (q @ k.transpose(-1, -2)) * self.scale  # [b, h, t, s]
        keep = None
        if is_causal:
            t, s = scores.shape[-2:]
            keep = causal_mask(t, s - t, None, q.device)  # [1, 1, t, s]
        if mask is not None and mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        elif mask is not None:
            scores = scores + mask
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        if keep is not None:  # a query with no key it may see attends to nothing: zeros, as SDPA
            weights = weights.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
        weights = F.dropout(weights, p, self.training)
        return weights @ v, weights


class FeedForward(nn.Module):
    """``fc_out(act(fc_in(x)))``: the position-wise feed-forward block."""

    def __init__(self, dim: int, hidden_dim: int, act: str, *, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = Linear(dim, hidden_dim, bias=bias)
        self.fc_out = Linear(hidden_dim, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return call(self.fc_out, self.act(call(self.fc_in, x)))


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention and feed-forward, each with a residual.

    With ``norm_first=False`` (post-LayerNorm, BERT) each sub-block is
    ``norm(x + drop(f(x)))``; with ``norm_first=True`` (pre-LayerNorm, GPT-2) it is
    ``x + drop(f(norm(x)))``. The norms are called ``attn_norm``, ``cross_norm`` and
    ``ffn_norm`` in both cases: which side of the block they sit on is the config's business.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        act: str,
        *,
        norm_first: bool,
        eps: float,
        cross_attention: bool = False,
        source_dim: int | None = None,
        attn_scale: float | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        bias: bool = True,
        attn_upcast: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = Attention(
            dim, num_heads, scale=attn_scale, dropout=attn_dropout, bias=bias, upcast=attn_upcast
        )
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn: Attention | None = None
        self.cross_norm: nn.LayerNorm | None = None
        if cross_attention:
            self.cross_attn = Attention(
                dim,
                num_heads,
                source_dim=source_dim,
                cross=True,
                scale=attn_scale,
                dropout=attn_dropout,
                bias=bias,
                upcast=attn_upcast,
            )
            self.cross_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, act, bias=bias)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def _close(self, x: torch.Tensor, y: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """The residual: ``x + drop(y)``, then the norm when it sits after the block (post-LayerNorm)."""
        x = x + (self.drop(y) if self.training else y)
        return x if self.norm_first else call(norm, x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return the layer output [b, t, d] and the self- and cross-attention probabilities (or None).

        ``source`` [b_src, s, d_src] may have fewer rows than ``x``: see :meth:`Attention._cross`.
        """
        # Spelled out block by block (no helper taking closures): this runs once per layer per
        # generated token, and on a small model the Python time is most of a decode step.
        pre = self.norm_first
        y, self_w = call(
            self.self_attn,
            call(self.attn_norm, x) if pre else x,
            mask,
            cache=cache,
            is_causal=is_causal,
            need_weights=need_weights,
        )
        x = self._close(x, y, self.attn_norm)
        cross_w = None
        if self.cross_attn is not None and (source is not None or (cache is not None and cache.cross is not None)):
            y, cross_w = call(
                self.cross_attn,
                call(self.cross_norm, x) if pre else x,
                source_mask,
                source=source,
                cache=cache,
                need_weights=need_weights,
            )
            x = self._close(x, y, self.cross_norm)
        x = self._close(x, call(self.ffn, call(self.ffn_norm, x) if pre else x), self.ffn_norm)
        return x, self_w, cross_w


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, then optional LayerNorm, dropout and projection.

    Args:
        vocab_size: rows of the token table.
        dim: width of the tables (the model width, unless ``project_to`` is given).
        max_positions: rows of the position table.
        type_vocab_size: rows of the token-type table; 0 for none. ``forward`` takes token types
            (``token_type_ids``; type 0 everywhere when None); with no table it ignores them, as
            transformers' models without a type table (BertGeneration) do.
        types_from_tokens: embed given token types with the token table (GPT-2's ``wte(token_type_ids)``),
            instead of a token-type table; None types add nothing.
        norm_eps: add a LayerNorm with this epsilon; None for no LayerNorm.
        dropout: dropout after the sum (and norm).
        padding_idx: the pad token id, passed to ``nn.Embedding`` (its row gets no gradient).
        positions: ``"absolute"`` counts positions 0, 1, ... from the start of the sequence;
            ``"after_padding"`` counts ``padding_idx + 1, ...`` over non-pad tokens only and
            gives pad tokens position ``padding_idx`` (RoBERTa's scheme).
        project_to: the model width, when it differs from the tables' width ``dim``: a
            ``Linear(dim, project_to)`` (``project``) is applied last (ELECTRA's
            ``embeddings_project``, ALBERT's ``embedding_hidden_mapping_in``). None: no projection.

    Attributes:
        output_dim: the width of what ``forward`` returns (``project_to`` or ``dim``).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_positions: int,
        *,
        type_vocab_size: int = 0,
        norm_eps: float | None = None,
        dropout: float = 0.0,
        padding_idx: int | None = None,
        positions: Literal["absolute", "after_padding"] = "absolute",
        project_to: int | None = None,
        types_from_tokens: bool = False,
    ) -> None:
        super().__init__()
        if types_from_tokens and type_vocab_size:
            raise ConfigError("types_from_tokens=True embeds token types with the token table: give no type_vocab_size")
        if positions == "after_padding" and padding_idx is None:
            raise ConfigError("positions='after_padding' needs a padding_idx (the pad token id)")
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        # With positions after padding, pad tokens sit at position padding_idx: that row is the pad
        # position, zero at init and never trained (transformers gives RoBERTa's table this padding_idx).
        self.positions = nn.Embedding(
            max_positions, dim, padding_idx=padding_idx if positions == "after_padding" else None
        )
        self.token_types = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm_eps is not None else None
        self.drop = nn.Dropout(dropout)
        self.project = Linear(dim, project_to) if project_to is not None else None
        self.output_dim = project_to if project_to is not None else dim
        self.padding_idx = padding_idx
        self.position_scheme = positions
        self.types_from_tokens = types_from_tokens

    def position_ids(self, input_ids: torch.Tensor, past_length: int | torch.Tensor = 0) -> torch.Tensor:
        """Position ids [b, t] (or [1, t]) for ``input_ids`` [b, t] that follow ``past_length`` cached tokens.

        ``past_length`` may be a 0-d tensor (a static cache's position), so that nothing
        here depends on a Python value that changes from step to step.
        """
        if self.position_scheme == "after_padding":
            keep = input_ids.ne(self.padding_idx).int()
            return ((keep.cumsum(1) + past_length) * keep).long() + self.padding_idx
        t = input_ids.shape[1]
        if isinstance(past_length, torch.Tensor):
            return (past_length + torch.arange(t, device=input_ids.device)).unsqueeze(0)
        return torch.arange(past_length, past_length + t, device=input_ids.device).unsqueeze(0)

    def _token_types(self, token_type_ids: torch.Tensor) -> torch.Tensor:
        """The token-type rows for ``token_type_ids``, checked against the table (one host sync)."""
        if self.types_from_tokens:
            return call(self.tokens, token_type_ids)
        rows = self.token_types.num_embeddings
        top = int(token_type_ids.max()) if token_type_ids.numel() else 0
        low = int(token_type_ids.min()) if token_type_ids.numel() else 0
        if low < 0 or top >= rows:
            raise ConfigError(f"token_type_ids: type {top if top >= rows else low} is outside [0, {rows}) "
                              f"(type_vocab_size {rows})")
        return self.token_types(token_type_ids)

    @property
    def max_length(self) -> int:
        """The longest sequence the position table can embed."""
        offset = self.padding_idx + 1 if self.position_scheme == "after_padding" else 0
        return self.positions.num_embeddings - offset

    def forward(
        self,
        input_ids: torch.Tensor | None,
        past_length: int | torch.Tensor = 0,
        *,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``input_ids`` [b, t] into [b, t, d] (d = ``output_dim``).

        Args:
            input_ids: token ids [b, t]; None when ``inputs_embeds`` is given.
            past_length: tokens already cached before these (their positions follow).
            token_type_ids: [b, t] token types (BERT's segments); None means type 0 everywhere.
            inputs_embeds: [b, t, dim] rows to use instead of looking ``input_ids`` up in the token
                table (transformers' ``inputs_embeds``); positions and types are added as usual.

        Raises:
            ConfigError: non-zero token types without a token-type table, or types beyond the table.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("pass input_ids or inputs_embeds")
            x = call(self.tokens, input_ids)
        else:
            x = inputs_embeds
            if input_ids is None:
                input_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
                if self.position_scheme == "after_padding":  # transformers: sequential, past the pad position
                    input_ids = input_ids + self.padding_idx + 1
        if token_type_ids is not None and (self.token_types is not None or self.types_from_tokens):
            x = x + self._token_types(token_type_ids)
        elif self.token_types is not None:  # token type 0 everywhere; summed in transformers' order
            x = x + self.token_types.weight[0]
        end = past_length + input_ids.shape[1]
        if self.position_scheme == "absolute" and isinstance(end, int):
            # Rows past ... past + t of the table: a view, cheaper per decode step than ids + lookup.
            if end > self.positions.num_embeddings:
                raise ConfigError(
                    f"position {end - 1} is beyond the position table ({self.positions.num_embeddings} positions)"
                )
            x = x + self.positions.weight[past_length:end]
        else:
            x = x + self.positions(self.position_ids(input_ids, past_length))
        if self.norm is not None:
            x = self.norm(x)
        x = self.drop(x) if self.training else x
        return x if self.project is None else call(self.project, x)


class LMHead(nn.Module):
    """Projects hidden states to vocabulary logits, optionally after a transform.

    The transform (dense, activation, LayerNorm) is BERT's ``BertPredictionHeadTransform``;
    without it the head is a plain (usually tied) projection as in GPT-2. ``transform_dim``
    is the transform's output width when it differs from ``dim``: ELECTRA's generator head
    maps the model width back to the (smaller) embedding width before the tied projection.
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        *,
        transform_act: str | None = None,
        norm_eps: float = 1e-12,
        bias: bool = True,
        transform_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.dense: Linear | None = None
        self.norm: nn.LayerNorm | None = None
        width = dim
        if transform_act is not None:
            width = transform_dim or dim
            self.dense = Linear(dim, width)
            self.act = activation(transform_act)
            self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.proj = Linear(width, vocab_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            x = call(self.norm, self.act(call(self.dense, x)))
        return call(self.proj, x)
