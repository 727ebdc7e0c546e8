"""Encoder and decoder stacks built from the shared layers.

A plugin builds one of these from its config: it chooses the embeddings, the layer
settings, an optional final LayerNorm and the head. Anything else that satisfies
:mod:`seqweave.protocols` composes just as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import Cache
from .errors import ConfigError
from .fast import call
from .layers import Embeddings, LMHead, TransformerLayer
from .masks import causal_mask, padding_mask
from .outputs import DecoderOutput, EncoderOutput

__all__ = ["TransformerDecoder", "TransformerEncoder"]


def _model_width(embeddings: nn.Module, layers: list[TransformerLayer]) -> int:
    """The stack's hidden size: the layers' width, which the embeddings must produce.

    Not the token table's width: architectures that project their embeddings (ELECTRA,
    ALBERT) keep narrower tables. A mismatch would otherwise surface only as a matmul shape
    error deep inside a forward pass.

    Raises:
        ConfigError: the embeddings' output width differs from the layers' width.
    """
    emb = getattr(embeddings, "output_dim", None) or embeddings.tokens.embedding_dim
    out_proj = getattr(getattr(layers[0], "self_attn", None), "out_proj", None) if layers else None
    if out_proj is None:  # no layers, or layers of a plugin's own making: trust the embeddings
        return emb
    width = out_proj.out_features
    if emb != width:
        raise ConfigError(
            f"the embeddings produce width {emb} but the layers take width {width}; give the "
            f"embeddings project_to={width} (a projection) or make the two widths equal"
        )
    return width


class _Stack(nn.Module):
    def __init__(self, embeddings: Embeddings, layers: list[TransformerLayer], final_norm: nn.LayerNorm | None):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.hidden_size = _model_width(embeddings, layers)
        #: recompute each layer in the backward pass instead of keeping its activations (training only)
        self.gradient_checkpointing = False
        self._checkpoint: Callable[..., Any] = functools.partial(checkpoint, use_reentrant=False)
        self._checkpoint_every = 1

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def set_gradient_checkpointing(
        self,
        enable: bool = True,
        checkpoint_kwargs: dict[str, Any] | None = None,
        *,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute layers in the backward pass (``torch.utils.checkpoint``, non-reentrant by default).

        Applies while training with gradients enabled and no cache: a cache is written as the
        layers run, and recomputing them would write it twice (transformers turns ``use_cache``
        off instead).

        Args:
            enable: on or off.
            checkpoint_kwargs: passed to ``torch.utils.checkpoint.checkpoint``
                (``{"use_reentrant": False}`` unless given).
            every_n_layers: checkpoint layers 0, n, 2n, ...
            offload: keep the saved inputs in CPU memory (``torch.autograd.graph.save_on_cpu``).
        """
        self.gradient_checkpointing = enable
        self._checkpoint_every = every_n_layers
        run = functools.partial(checkpoint, **{"use_reentrant": False, **(checkpoint_kwargs or {})})
        if offload:
            def run_offloaded(*args: Any, _run: Callable[..., Any] = run) -> Any:
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                    return _run(*args)

            self._checkpoint = run_offloaded
        else:
            self._checkpoint = run

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Give the token table (and a decoder's head) ``new_num_tokens`` rows, as transformers' method does.

        Rows that stay keep their values; new rows are drawn as transformers draws them:
        ``mean_resizing=True`` (its default) from a normal distribution with the old rows'
        mean and 1e-9 times their covariance (the mean itself when that is not positive
        definite), else normal(0, ``initializer_range``); a new head bias entry is zero, as
        in transformers' resized BERT head. A tied head stays tied; ``config.vocab_size``
        follows, so a saved model loads again. ``pad_to_multiple_of`` rounds the size up.
        None for both arguments returns the table unchanged. A ``padding_idx`` beyond
        the new size is dropped, as transformers drops it.

        Returns:
            The token embedding module.

        Raises:
            ConfigError: ``new_num_tokens`` or ``pad_to_multiple_of`` is not a positive integer,
                or a token id of the config would fall outside the smaller vocabulary.
        """
        old = self.embeddings.tokens
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = old.num_embeddings if new_num_tokens is None else new_num_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(
                f"resize_token_embeddings: new_num_tokens must be a positive integer, got {n!r}"
            )
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise ConfigError(
                    "resize_token_embeddings: pad_to_multiple_of must be a positive integer, "
                    f"got {pad_to_multiple_of!r}"
                )
            n = math.ceil(n / pad_to_multiple_of) * pad_to_multiple_of
        config = getattr(self, "config", None)
        if config is not None and getattr(config, "vocab_size", n) != n:
            values, source = {**config.model_dump(), "vocab_size": n}, f"resize_token_embeddings({n})"
            arch = getattr(self, "seqweave_architecture", None)  # parts of a registered architecture have it
            try:  # before anything changes: a token id of the config may not fit a smaller vocabulary
                arch.make_config(values, source=source) if arch else type(config).model_validate(values)
            except ConfigError:
                raise
            except ValueError as e:
                raise ConfigError(f"{source}: the {type(config).__name__} would be invalid: {e}") from None
        std = getattr(config, "initializer_range", 0.02)
        old.weight = nn.Parameter(_resized(old.weight, n, std, mean_resizing),
                                  requires_grad=old.weight.requires_grad)
        old.num_embeddings = n
        if old.padding_idx is not None and old.padding_idx >= n:
            old.padding_idx = None
        self._resize_head(n, std, mean_resizing)
        if config is not None and getattr(config, "vocab_size", n) != n:
            config.vocab_size = n
        return old

    def _resize_head(self, n: int, std: float, mean_resizing: bool) -> None:
        """The decoder resizes its head too; an encoder has none."""

    def _run(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        is_causal: bool = False,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None, tuple | None]:
        hidden, attns, cross = [], [], []
        caches = cache.layers if cache is not None else [None] * len(self.layers)
        if len(caches) != len(self.layers):  # zip would silently run only the first layers
            raise ConfigError(
                f"the cache has {len(caches)} layers but the decoder has {len(self.layers)}; "
                "make it with seqweave.Cache(decoder.num_layers, ...) or pass use_cache=True"
            )
        recompute = (self.gradient_checkpointing and self.training and cache is None
                     and torch.is_grad_enabled())
        for i, (layer, layer_cache) in enumerate(zip(self.layers, caches)):
            if output_hidden_states:
                hidden.append(x)
            args = (layer, x, mask, source, source_mask, layer_cache, is_causal, output_attentions)
            # positional only: reentrant checkpointing passes gradients only to positional tensors
            if recompute and i % self._checkpoint_every == 0:
                x, w, cw = self._checkpoint(_layer_call, *args)
            else:
                x, w, cw = _layer_call(*args)
            if output_attentions:
                attns.append(w)
                cross.append(cw)
        if self.final_norm is not None:
            x = call(self.final_norm, x)
        if output_hidden_states:
            hidden.append(x)
        return (
            x,
            tuple(hidden) if output_hidden_states else None,
            tuple(attns) if output_attentions else None,
            tuple(cross) if output_attentions and source is not None else None,
        )


def _layer_call(layer, x, mask, source, source_mask, cache, is_causal, need_weights):
    """One layer, every argument positional (see ``_Stack._run``)."""
    return call(layer, x, mask, source=source, source_mask=source_mask, cache=cache, is_causal=is_causal,
                need_weights=need_weights)


def _resized(old: torch.Tensor, n: int, std: float, mean_resizing: bool) -> torch.Tensor:
    """``old`` [v, d] with ``n`` rows: the first rows copied, new rows drawn as transformers draws them."""
    with torch.no_grad():
        new = torch.empty(n, *old.shape[1:], dtype=old.dtype, device=old.device)
        keep = min(n, old.shape[0])
        new[:keep] = old[:keep]
        added = n - keep
        if added > 0 and old.dim() == 1:  # a head's bias
            new[keep:] = 0.0  # what transformers' resized BERT head holds, with mean_resizing or without
        elif added > 0 and not mean_resizing:
            new[keep:].normal_(0.0, std)
        elif added > 0:
            w = old.float()
            mean = w.mean(0)
            centred = w - mean
            covariance = 1e-9 * (centred.T @ centred) / old.shape[0]
            if torch.distributions.constraints.positive_definite.check(covariance).all():
                dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
                new[keep:] = dist.sample((added,)).to(old.dtype)
            else:
                new[keep:] = mean.to(old.dtype)
    return new


class TransformerEncoder(_Stack):
    """Encoder: embeddings, layers, optional final norm and optional pooler.

    Bidirectional by default. ``causal=True`` makes each position see only itself and
    earlier ones: a decoder-only model used as the encoder (transformers' ``GPT2Model``
    is causal in either role). The pooler (a dense layer on the first token) is not used
    by the composite; it is kept only so that a checkpoint's pooler weights survive a
    load and a save.
    """

    def __init__(
        self,
        embeddings: Embeddings,
        layers: list[TransformerLayer],
        *,
        final_norm: nn.LayerNorm | None = None,
        pooler: nn.Linear | None = None,
        causal: bool = False,
    ) -> None:
        super().__init__(embeddings, layers, final_norm)
        self.pooler = pooler
        self.causal = causal

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode ``input_ids`` [b, s] (``attention_mask`` [b, s]: 1 token, 0 padding) into [b, s, d].

        ``token_type_ids`` [b, s] and ``inputs_embeds`` [b, s, d_emb] (instead of ``input_ids``)
        are passed to :class:`~seqweave.layers.Embeddings`.
        """
        x = self.embeddings(input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        s = x.shape[1]
        is_causal = self.causal and attention_mask is None and s > 1
        if self.causal and attention_mask is not None:
            mask = causal_mask(s, 0, attention_mask, x.device)
        else:
            mask = padding_mask(attention_mask)
        x, hidden, attns, _ = self._run(
            x,
            mask,
            is_causal=is_causal,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return EncoderOutput(x, hidden, attns)


class TransformerDecoder(_Stack):
    """Causal decoder with cross-attention in every layer and a language-model head.

    Works with both kinds of :class:`Cache`: dynamic, and static (fixed shapes for CUDA graphs).
    """

    #: Generation may give this decoder a static cache (see :class:`~seqweave.Cache`).
    supports_static_cache = True

    def __init__(
        self,
        embeddings: Embeddings,
        layers: list[TransformerLayer],
        head: LMHead,
        *,
        final_norm: nn.LayerNorm | None = None,
        tie_word_embeddings: bool = True,
    ) -> None:
        super().__init__(embeddings, layers, final_norm)
        self.head = head
        self.vocab_size = head.proj.out_features
        self.cross_attention_hidden_size = layers[0].cross_attn.kv_proj.in_features if layers else self.hidden_size
        self.tie_word_embeddings = tie_word_embeddings
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the head's projection with the token embeddings, if the config asks for it."""
        if self.tie_word_embeddings:
            self.head.proj.weight = self.embeddings.tokens.weight

    def _resize_head(self, n: int, std: float, mean_resizing: bool) -> None:
        proj = self.head.proj
        if self.tie_word_embeddings:
            proj.weight = self.embeddings.tokens.weight
        else:
            proj.weight = nn.Parameter(_resized(proj.weight, n, std, mean_resizing),
                                       requires_grad=proj.weight.requires_grad)
        if proj.bias is not None:
            proj.bias = nn.Parameter(_resized(proj.bias, n, std, mean_resizing),
                                     requires_grad=proj.bias.requires_grad)
        proj.out_features = n
        self.vocab_size = n

    @property
    def max_length(self) -> int:
        """The longest target sequence the position embeddings allow."""
        return self.embeddings.max_length

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """Logits [b, t, vocab] for ``input_ids`` [b, t].

        Args:
            input_ids: target tokens; with a cache, only the new ones.
            attention_mask: [b, past + t], 1 for tokens and 0 for padding, or None.
            encoder_hidden_states: [b_src, s, d_src], where ``b`` is a multiple ``g * b_src``
                (rows ``i*g ... i*g + g-1`` decode source ``i``, e.g. its beams; see
                :class:`~seqweave.layers.Attention`); may be None when the cache holds the
                cross-attention keys/values.
            encoder_attention_mask: [b_src, s] source padding mask, or None. With a cache it
                is read once, when the cross-attention keys/values are made, and kept there.
            cache: continue from (and write to) this cache.
            token_type_ids: [b, t] token types for embeddings that have them (BERT as decoder).
            inputs_embeds: [b, t, d_emb] token embeddings to use instead of ``input_ids`` (None then).
        """
        t = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        past = 0 if cache is None else cache.begin(t)  # an int, or a static cache's 0-d device tensor
        if token_type_ids is None and inputs_embeds is None:
            x = call(self.embeddings, input_ids, past)
        else:
            x = call(self.embeddings, input_ids, past, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        is_causal = False
        if cache is not None and cache.static:
            mask = cache.self_attention_mask(attention_mask, x.dtype)
        elif attention_mask is None and past == 0 and not output_attentions:
            mask = None
            is_causal = t > 1
        elif attention_mask is None and t == 1:
            mask = None  # one new query sees every cached key
        else:
            mask = causal_mask(t, past, attention_mask, x.device)
        source = encoder_hidden_states
        if cache is not None and cache.has_source:
            source_mask = cache.source_bias  # made once per source, with the cross-attention keys/values
            source = None  # the layers read their keys/values from the cache
        else:
            source_mask = padding_mask(encoder_attention_mask)
            if source_mask is not None and source_mask.shape[0] != x.shape[0]:  # g rows per source
                source_mask = source_mask.repeat_interleave(x.shape[0] // source_mask.shape[0], dim=0)
        x, hidden, attns, cross = self._run(
            x,
            mask,
            is_causal=is_causal,
            source=source,
            source_mask=source_mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if cache is not None:
            if encoder_hidden_states is not None and not cache.has_source:
                cache.set_source(source_mask)
            cache.advance(t)
        return DecoderOutput(call(self.head, x), cache, hidden, attns, cross)
