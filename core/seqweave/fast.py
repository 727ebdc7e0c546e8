"""Every CPU speed trick of the engine, in one module, each stepping aside when it could matter.

The building blocks (:mod:`seqweave.layers`) are written as plain PyTorch and use three
things from here:

* :func:`call` — ``module(*args)`` without ``nn.Module.__call__``'s bookkeeping when
  nothing needs it (inference, no hooks, no tracing, not compiling);
* :class:`Linear` — an ``nn.Linear`` whose large CPU matmuls run through oneDNN in
  inference (same parameters, same state dict);

and generation uses two more:

* :func:`topk` / :func:`argmax` — the same results as ``torch.topk`` / ``argmax`` over
  a vocabulary, searched in blocks of 256 on the CPU.

Each one falls back to the plain PyTorch code (``module(...)``, ``F.linear``,
``torch.topk``, ``Tensor.argmax``) whenever its measured reason does not hold or it
could change what PyTorch machinery sees:

* under ``torch.compile`` / ``torch.export`` (:func:`compiling`): the compiler wants
  the plain ops it can trace and lower (Inductor has no lowering for
  ``mkldnn._linear_pointwise`` under ``no_grad``, and the block searches read values to
  the host), and does the overhead-cutting itself;
* under ``torch.jit`` tracing, with autograd on (training), or with forward hooks;
* on a torch build without the op or attribute a trick needs (the guards below are read
  once at import: :data:`ONEDNN_LINEAR`, :data:`HAS_COMPILE_FLAG`);
* off the CPU, for other dtypes, or for sizes where the trick was measured to lose.

Results agree with the plain code exactly (:func:`call`, :func:`topk`, :func:`argmax`)
or to float rounding (:class:`Linear`: the sums run in another order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HAS_COMPILE_FLAG",
    "ONEDNN_LINEAR",
    "ONEDNN_MIN_ELEMENTS",
    "Linear",
    "argmax",
    "call",
    "compiling",
    "topk",
]

# ---------------------------------------------------------------------------------------------
# Guards: what this torch build offers, read once.

_compiler = getattr(torch, "compiler", None)
#: Whether this torch can say that it is compiling (``torch.compiler.is_compiling``, torch >= 2.3;
#: seqweave asks for 2.4). Without it, :func:`compiling` answers False and the tricks stay on.
HAS_COMPILE_FLAG = callable(getattr(_compiler, "is_compiling", None))
if HAS_COMPILE_FLAG:
    #: Whether torch.compile / torch.export is tracing this code (``torch.compiler.is_compiling``).
    compiling: Callable[[], bool] = _compiler.is_compiling
else:

    def compiling() -> bool:
        """Whether torch.compile is tracing this code: never known on this torch, so False."""
        return False


_tracing_state = getattr(torch._C, "_get_tracing_state", lambda: None)  # torch.jit.trace
# nn.Module keeps its global hook registries in module-level dicts; read them, never write.
_GLOBAL_FORWARD_HOOKS = tuple(
    getattr(torch.nn.modules.module, name, {})
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
)

#: Whether this PyTorch build has oneDNN's linear (the kernel torch.compile's CPU backend uses).
ONEDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops, "mkldnn")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
#: Weights with at least this many elements take the oneDNN path: below it, its fixed cost of about
#: 15 µs a call is more than the matmul (a 256 x 64 weight takes 4 µs through ``F.linear``).
ONEDNN_MIN_ELEMENTS = 1 << 18


# ---------------------------------------------------------------------------------------------
# call(): nn.Module.__call__ without its bookkeeping


def call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)``, without ``nn.Module.__call__``'s bookkeeping when nothing needs it.

    The layers call their parts some 30 times per generated token, and ``__call__``'s
    checks cost about 1.5 µs a call: 8% of a 2-layer model's decode step, measured. With
    autograd off and no forward hook (on ``module`` or global), no tracing, no
    ``module.compile()`` and no ``torch.compile``, ``__call__`` would call ``forward`` and
    nothing else, so this does that directly; otherwise it is ``module(...)``, hooks and all.
    """
    if (
        torch.is_grad_enabled()
        or module._forward_hooks
        or module._forward_pre_hooks
        or _GLOBAL_FORWARD_HOOKS[0]
        or _GLOBAL_FORWARD_HOOKS[1]
        or getattr(module, "_compiled_call_impl", None) is not None
        or _tracing_state()
        or compiling()
    ):
        return module(*args, **kwargs)
    return module.forward(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Linear: oneDNN's matmul for large CPU weights in inference


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU inference runs oneDNN's matmul when the weight is large.

    Decoding multiplies a few rows (one new token per sequence) by every weight matrix,
    which is bound by reading the weights from memory. On the CPU, ``F.linear`` (MKL)
    reads an ``[out, in]`` weight at about half the bandwidth that oneDNN's matmul reaches
    on the very same tensor: measured here (2 threads, float32) for GPT-2-small's weights,
    40 ms against 22 ms a step for one row, 62 ms against 35 ms for eight. So without
    autograd (``torch.no_grad``/``inference_mode``), on the CPU, in float32 or bfloat16,
    large weights go through ``torch.ops.mkldnn._linear_pointwise``; everything else
    (training, other devices, small weights, ``torch.compile``, ``torch.jit.trace``, a
    torch without the op) through ``F.linear``. Same parameters, same state dict; results agree to float
    rounding (the sums run in another order).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: object) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.onednn = ONEDNN_LINEAR and in_features * out_features >= ONEDNN_MIN_ELEMENTS
        # One row against short weight rows (a 64-wide model's 50257-row head) is a plain
        # matrix-vector product that MKL does well on one thread, while oneDNN's spreads over
        # threads that sleep between the small ops of such a model's step: measured in a
        # decode loop, 0.05-0.08 ms a step slower. Several rows or wider rows: oneDNN wins.
        self.onednn_single_row = in_features >= 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            self.onednn
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == w.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
            and (self.onednn_single_row or x.numel() > self.in_features)
            and not compiling()
            and not _tracing_state()
        ):
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
        return F.linear(x, w, self.bias)


# ---------------------------------------------------------------------------------------------
# Block-wise top-k and argmax over a vocabulary

_BLOCK = 256


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k)`` over the last dim of ``scores`` [r, N] for a small ``k``, in blocks.

    Beam search asks every step for the ``2 * num_beams`` best of ``num_beams * V`` scores
    (200 000 for 4 beams of GPT-2), and ``torch.topk`` on the CPU scans about 1.6 ns an
    element (0.3 ms there). The maximum of each block of 256 is a vectorised reduction;
    the ``k + 1`` blocks with the largest maxima hold the ``k + 1`` largest elements (a block
    holding the j-th largest has a maximum at least that large, and fewer than j blocks
    have a larger one), so only they are searched.

    The result is ``torch.topk``'s, indices included: when the ``k + 1`` largest values are
    distinct the answer is unique, and when they are not (equal scores are common in
    bfloat16, whose logits take few values) the order ``torch.topk`` gives equal values
    decides which token a beam gets, so the whole row goes to ``torch.topk``.
    Plain ``torch.topk`` off the CPU, for small ``N`` and under ``torch.compile``.
    """
    rows, size = scores.shape
    blocks = size // _BLOCK
    if scores.device.type != "cpu" or blocks < 8 * (k + 1) or not scores.is_contiguous() or compiling():
        return torch.topk(scores, k)
    n = blocks * _BLOCK
    maxima = scores.as_strided((rows, blocks, _BLOCK), (size, _BLOCK, 1)).amax(dim=-1)  # [r, blocks]
    starts = maxima.topk(k + 1).indices * _BLOCK  # [r, k + 1]
    cols = (starts[:, :, None] + torch.arange(_BLOCK, device=scores.device)).view(rows, (k + 1) * _BLOCK)
    if n < size:  # the last partial block is always searched
        cols = torch.cat((cols, torch.arange(n, size, device=scores.device).expand(rows, size - n)), dim=1)
    values, where = scores.gather(1, cols).topk(k + 1)
    if bool((values[:, 1:] == values[:, :-1]).any() or values.isnan().any()):  # ties (or NaN): torch's order
        return torch.topk(scores, k)
    return values[:, :k], cols.gather(1, where[:, :k])


def argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-1)`` for ``scores`` [r, V]; for one row on the CPU, in blocks.

    ``argmax`` is not vectorised on the CPU (about 0.9 ns an element: 45 µs for GPT-2's
    50257 logits, a tenth of a small model's decode step), while the maxima of blocks of
    256 are. The first block holding the largest value, then the first index in it that
    holds it: the same index ``argmax`` returns, ties and NaN (counted as the largest) alike.
    Plain ``argmax`` for several rows, off the CPU and under ``torch.compile`` (the block
    search reads the winning block's index to the host).
    """
    rows, size = scores.shape
    blocks = size // _BLOCK
    if rows != 1 or blocks < 32 or scores.device.type != "cpu" or not scores.is_contiguous() or compiling():
        return scores.argmax(dim=-1)
    flat = scores.view(size)
    n = blocks * _BLOCK
    maxima = flat[:n].view(blocks, _BLOCK).amax(dim=-1)
    if n < size:  # the partial last block
        maxima = torch.cat((maxima, flat[n:].amax(dim=0, keepdim=True)))
    start = int(maxima.argmax()) * _BLOCK
    return torch.tensor([start + int(flat[start : start + _BLOCK].argmax())], device=scores.device)
