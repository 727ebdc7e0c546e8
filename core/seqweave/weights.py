"""The two-way weight map, and loading weights into modules built on ``meta``.

A weight map is data: a list of rules, each naming one of our tensors and the Hugging
Face tensor(s) it comes from. The same rules read a checkpoint (:meth:`WeightMap.from_hf`)
and write one (:meth:`WeightMap.to_hf`), so ``to_hf(from_hf(sd)) == sd``. Reading the
checkpoint files is :mod:`seqweave.checkpoint`'s job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, PluginError
from .progress import progress

__all__ = [
    "Rule",
    "WeightMap",
    "conv1d_rules",
    "init_weights",
    "load_module_weights",
    "pair_rules",
    "prefixed",
    "rule",
]

logger = logging.getLogger("seqweave")


@dataclass(frozen=True)
class Rule:
    """One of our tensors and where it lives in a Hugging Face checkpoint.

    Attributes:
        ours: our parameter name, e.g. ``layers.0.self_attn.qkv_proj.weight``.
        hf: the Hugging Face tensor names, concatenated along dim 0 (after the transpose)
            into ours, e.g. the query, key and value weights into one fused ``qkv``.
        transpose: the Hugging Face tensors are stored transposed (GPT-2's ``Conv1D``).
        new_ok: the tensor may be absent from a single-model checkpoint used for a warm
            start (cross-attention, a head, a pooler); it is then created and initialised.
    """

    ours: str
    hf: tuple[str, ...]
    transpose: bool = False
    new_ok: bool = False


def rule(ours: str, *hf: str, transpose: bool = False, new_ok: bool = False) -> Rule:
    """Shorthand for :class:`Rule`; ``hf`` defaults to ``ours``."""
    return Rule(ours, hf or (ours,), transpose, new_ok)


def pair_rules(ours: str, hf: str, *, transpose: bool = False, new_ok: bool = False) -> list[Rule]:
    """The ``weight`` and ``bias`` of one module (a LayerNorm, a Linear): ``ours.weight`` <- ``hf.weight``.

    Args:
        ours: our module name, e.g. ``layers.{}.attn_norm``.
        hf: the Hugging Face module name, e.g. ``h.{}.ln_1``.
        transpose: the Hugging Face weight is stored ``[in, out]`` (the bias is never transposed).
        new_ok: both may be absent from a warm-start checkpoint (see :class:`Rule`).
    """
    return [
        rule(f"{ours}.weight", f"{hf}.weight", transpose=transpose, new_ok=new_ok),
        rule(f"{ours}.bias", f"{hf}.bias", new_ok=new_ok),
    ]


def conv1d_rules(ours: str, hf: str, *, new_ok: bool = False) -> list[Rule]:
    """A transformers ``Conv1D`` (GPT-2; weight ``[in, out]``) as our ``Linear`` (``[out, in]``)."""
    return pair_rules(ours, hf, transpose=True, new_ok=new_ok)


def prefixed(rules: Iterable[Rule], prefix: str) -> list[Rule]:
    """The same rules with ``prefix`` put before every Hugging Face name (``"bert."``); ours unchanged."""
    return [replace(r, hf=tuple(prefix + h for h in r.hf)) for r in rules]


#: Anchors that can match only at the very start or end of a string.
_INNER_ANCHOR = re.compile(r"(?<!\\)(?:\\\\)*(?:\^|\$|\\A|\\Z)")
_CHAR_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")


def check_ignore_pattern(pattern: str) -> re.Pattern:
    """Compile one ``ignore`` pattern of a :class:`WeightMap`, refusing those that can never match.

    A pattern is matched with :func:`re.fullmatch` against a whole tensor name of the
    part's own checkpoint, so a leading ``^`` and a trailing ``$`` are harmless. An anchor
    anywhere else cannot match inside a name, and an empty pattern matches no name.

    Raises:
        PluginError: the pattern does not compile or can never match; the message names it.
    """
    if not isinstance(pattern, str) or not pattern:
        raise PluginError(f"weight map ignore pattern {pattern!r} is empty or no string; it can never match")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise PluginError(f"weight map ignore pattern {pattern!r} is not a regular expression: {e}") from None
    inner = _CHAR_CLASS.sub("x", pattern)
    inner = re.sub(r"^(?:\^|\\A)", "", inner)
    inner = re.sub(r"(?<!\\)(?:\$|\\Z)$", "", inner)
    if _INNER_ANCHOR.search(inner):
        raise PluginError(
            f"weight map ignore pattern {pattern!r} can never match: it is matched against whole tensor "
            "names (re.fullmatch), so ^ and $ are allowed only at its very start and end"
        )
    return compiled


@dataclass(frozen=True)
class WeightMap:
    """A two-way map between our state dict and a Hugging Face one.

    Attributes:
        rules: concrete rules (layer indices already filled in).
        ignore: regular expressions of Hugging Face names that may be present in a
            checkpoint and are dropped on load: tied copies, unused heads, old buffers.
            Each is matched with :func:`re.fullmatch` against a whole name of the part's
            own checkpoint (as its rules spell names, after ``base_prefix`` is added or
            stripped): never against the ``encoder.``/``decoder.`` prefix a composite adds,
            so ``^`` and ``$`` at the ends are harmless. Checked when the map is made:
            a pattern that does not compile or can never match raises :class:`PluginError`.
        base_prefix: where the head-model layout puts the base model (``"bert."``), so
            that a bare base-model checkpoint can fill a head model and vice versa.
        scoped_ignore: ``(prefix, pattern)`` pairs of parts put into a composite with
            :meth:`prefixed`: ``pattern`` is matched against what follows ``prefix``.
    """

    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()
    base_prefix: str = ""
    scoped_ignore: tuple[tuple[str, str], ...] = ()
    _ignore_re: list | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        for p in (*self.ignore, *(p for _, p in self.scoped_ignore)):
            check_ignore_pattern(p)

    @classmethod
    def build(
        cls,
        rules: Iterable[Rule],
        per_layer: Iterable[Rule] = (),
        num_layers: int = 0,
        *,
        ignore: Iterable[str] = (),
        base_prefix: str = "",
    ) -> WeightMap:
        """Expand ``per_layer`` rules (with ``{}`` for the layer index) over ``num_layers`` layers.

        Raises:
            PluginError: an ``ignore`` pattern does not compile or can never match.
        """
        per_layer = tuple(per_layer)
        expanded = [
            Rule(r.ours.format(i), tuple(h.format(i) for h in r.hf), r.transpose, r.new_ok)
            for i in range(num_layers)
            for r in per_layer
        ]
        return cls((*rules, *expanded), tuple(ignore), base_prefix)

    def prefixed(self, ours: str, hf: str) -> WeightMap:
        """The same map with ``ours`` and ``hf`` put before every name (for a composite's parts).

        The ``ignore`` patterns keep matching the part's own names: they become
        ``(hf, pattern)`` pairs of :attr:`scoped_ignore`.
        """
        return WeightMap(
            tuple(replace(r, ours=ours + r.ours, hf=tuple(hf + h for h in r.hf)) for r in self.rules),
            scoped_ignore=(
                *((hf + pre, p) for pre, p in self.scoped_ignore),
                *((hf, p) for p in self.ignore),
            ),
        )

    def __add__(self, other: WeightMap) -> WeightMap:
        return WeightMap(
            self.rules + other.rules,
            self.ignore + other.ignore,
            scoped_ignore=self.scoped_ignore + other.scoped_ignore,
        )

    def is_ignored(self, name: str) -> bool:
        """Whether an ``ignore`` pattern covers checkpoint tensor ``name`` (see :attr:`ignore`)."""
        compiled = self._ignore_re
        if compiled is None:
            scopes: dict[str, list[str]] = {}
            for pre, p in (*(("", p) for p in self.ignore), *self.scoped_ignore):
                scopes.setdefault(pre, []).append(p)
            compiled = [(pre, re.compile("|".join(f"(?:{p})" for p in ps))) for pre, ps in scopes.items()]
            object.__setattr__(self, "_ignore_re", compiled)
        return any(
            name.startswith(pre) and pat.fullmatch(name[len(pre) :]) is not None for pre, pat in compiled
        )

    def normalize_prefix(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make a single-model checkpoint's names match this map's layout.

        A head-model map (names under ``base_prefix``) reading a bare base model gets the
        prefix added; a base-model map reading a head model gets it stripped.
        """
        p = self.base_prefix
        if not p:
            return dict(sd)
        wants_prefix = any(h.startswith(p) for r in self.rules for h in r.hf)
        has_prefix = any(k.startswith(p) for k in sd)
        rename = None
        if wants_prefix and not has_prefix:
            rename = lambda k: p + k  # noqa: E731
        elif not wants_prefix and has_prefix:
            rename = lambda k: k.removeprefix(p)  # noqa: E731
        renamed = getattr(sd, "renamed", None)  # CheckpointTensors (seqweave.checkpoint) keep their offsets
        if rename is None:
            return sd if renamed is not None else dict(sd)
        if renamed is not None:
            return renamed(rename)
        return {rename(k): v for k, v in sd.items()}

    def from_hf(self, sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[Rule], list[str]]:
        """Map a Hugging Face state dict to ours.

        Returns:
            Our tensors, the rules whose tensors are absent, and the checkpoint names that
            no rule uses and no ``ignore`` pattern covers.
        """
        ours: dict[str, torch.Tensor] = {}
        missing: list[Rule] = []
        used: set[str] = set()
        for r in self.rules:
            if not all(h in sd for h in r.hf):
                missing.append(r)
                continue
            # A tensor that must be copied (transposed, fused) is read into memory of its own
            # when the checkpoint can (see CheckpointTensors.fresh), not through the map.
            copied = r.transpose or len(r.hf) > 1
            get = getattr(sd, "fresh", sd.__getitem__) if copied else sd.__getitem__
            parts = [get(h).T if r.transpose else get(h) for h in r.hf]
            ours[r.ours] = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
            used.update(r.hf)
        unexpected = [k for k in sd if k not in used and not self.is_ignored(k)]
        return ours, missing, unexpected

    def to_hf(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map our state dict to Hugging Face names (contiguous tensors, ready for safetensors)."""
        out: dict[str, torch.Tensor] = {}
        for r in self.rules:
            parts = sd[r.ours].chunk(len(r.hf), dim=0) if len(r.hf) > 1 else (sd[r.ours],)
            for h, t in zip(r.hf, parts, strict=True):
                out[h] = (t.T if r.transpose else t).contiguous()
        return out

    def hf_names(self, ours: str) -> tuple[str, ...]:
        """The Hugging Face names behind one of our tensors (for error messages)."""
        for r in self.rules:
            if r.ours == ours:
                return r.hf
        return (ours,)


# ---------------------------------------------------------------------------------------------
# Modules


def init_weights(module: nn.Module, std: float, names: set[str] | None = None) -> None:
    """Initialise parameters as transformers does: normal(0, std) weights, zero biases, unit norms.

    Args:
        module: the module whose parameters to initialise.
        std: the standard deviation (the config's ``initializer_range``).
        names: only these parameter names (relative to ``module``); all if None.
    """
    with torch.no_grad():
        for prefix, sub in module.named_modules():
            for leaf, p in sub.named_parameters(recurse=False):
                full = f"{prefix}.{leaf}" if prefix else leaf
                if names is not None and full not in names:
                    continue
                if isinstance(sub, nn.LayerNorm):
                    p.fill_(1.0 if leaf == "weight" else 0.0)
                elif leaf == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, std)
                    if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
                        p[sub.padding_idx].zero_()


def _materialize(module: nn.Module, name: str, dtype: torch.dtype, device: torch.device | str) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    old = getattr(owner, leaf)
    setattr(owner, leaf, nn.Parameter(torch.empty(old.shape, dtype=dtype, device=device)))


def _tie(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "tie_weights"):
            sub.tie_weights()


def load_module_weights(
    module: nn.Module,
    ours: Mapping[str, torch.Tensor],
    *,
    source: Path | str,
    weight_map: WeightMap,
    new: Iterable[str] = (),
    std: float = 0.02,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Put ``ours`` into ``module`` (built on ``meta``) without copying, and create ``new`` tensors.

    Args:
        module: the module, its parameters on the meta device.
        ours: our state dict, as :meth:`WeightMap.from_hf` made it.
        source: the file the tensors came from (for error messages).
        weight_map: the map, to name Hugging Face tensors in errors.
        new: parameter names absent from the checkpoint, to create and initialise.
        std: the standard deviation for new tensors.
        dtype: cast floating tensors to this dtype; None keeps the checkpoint's.
        device: where the tensors end up.

    Raises:
        CheckpointError: a tensor's shape differs from what the config implies, or a non-float
            tensor is given for a floating-point parameter.
    """
    expected = dict(module.named_parameters(remove_duplicate=False))  # tied parameters under every name
    for name, t in ours.items():
        want = expected[name].shape
        if t.shape != want:
            hf = ", ".join(weight_map.hf_names(name))
            raise CheckpointError(
                f"{source}: tensor {hf} has shape {list(t.shape)}, but the config implies "
                f"{list(want)} (for {name}); does config.json match the weights?"
            )
        if expected[name].is_floating_point() and not t.is_floating_point():
            hf = ", ".join(weight_map.hf_names(name))
            raise CheckpointError(
                f"{source}: tensor {hf} is {str(t.dtype).removeprefix('torch.')}, but {name} holds "
                "floating-point weights"
            )
    if dtype is None:
        dtype = next((t.dtype for t in ours.values() if t.is_floating_point()), torch.get_default_dtype())
    # contiguous: a transposed checkpoint tensor (GPT-2's Conv1D) would otherwise stay a strided view, and
    # matmuls on it round differently from the same values laid out as a freshly built module has them
    # This is where the memory-mapped pages are read: a bar on a terminal, nothing when piped.
    cast = {
        k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)).contiguous()
        for k, v in progress(ours.items(), total=len(ours), desc=f"loading {Path(str(source)).name}")
    }
    module.load_state_dict(cast, strict=False, assign=True)
    _tie(module)  # assign=True replaced the tied parameter objects: tie them again
    new = set(new)
    for name in new:
        _materialize(module, name, dtype, device)
    if new:
        init_weights(module, std, new)
        _tie(module)
    left = [n for n, p in module.named_parameters() if p.is_meta]
    assert not left, f"weight map leaves parameters unset: {left}"
