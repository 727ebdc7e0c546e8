"""Output containers of encoders, decoders and the composite (field names as in transformers).

:class:`ModelOutput` gives them transformers' ``ModelOutput`` behaviour without depending on
transformers: a dataclass that is also an ordered dict of its fields that are not None, so
``out.logits``, ``out["logits"]``, ``out[0]``, ``out.to_tuple()``, ``"loss" in out`` and
``out.keys()`` all work, and ``torch.nn.DataParallel`` can gather it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["DecoderOutput", "Encoded", "EncoderOutput", "ModelOutput", "Seq2SeqOutput"]


class ModelOutput(OrderedDict):
    """transformers' ``ModelOutput`` semantics for a dataclass subclass (made with :func:`_output`).

    The mapping holds the fields that are not None, in field order; attributes hold all of them.
    Indexing by int or slice indexes :meth:`to_tuple` (None fields skipped, so ``loss`` is
    ``[0]`` exactly when present); by str, the mapping. Setting an attribute or a key sets the
    field. As in transformers, ``Output(iterable_of_key_value_pairs)`` (or a dict) builds from
    pairs: what ``torch.nn.parallel.gather`` and accelerate do with a dict-like output.

    It is an ``OrderedDict`` for ``isinstance(out, dict)`` checks (``gather``, accelerate), but
    keeps nothing in the dict itself: every mapping method reads the fields. So building one is
    building a plain dataclass, which ``torch.compile`` traces on every torch it supports
    (filling a dict subclass from ``__init__`` is not traceable on torch 2.11), and nothing
    can fall out of step.
    """

    #: field names, per class (set by :func:`_output`)
    _names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        cls = type(self)
        if "_names" not in cls.__dict__:  # a subclass made with a plain @dataclass
            cls._names = tuple(f.name for f in fields(cls))
        names = cls._names
        first = getattr(self, names[0])
        if first is not None and not isinstance(first, torch.Tensor) and all(getattr(self, n) is None for n in names[1:]):
            self._from_pairs(names, first)

    def _from_pairs(self, names: tuple[str, ...], first: Any) -> None:
        """``Output(pairs)``: set the fields from (name, value) pairs, when ``first`` is such an iterable."""
        pairs = list(first.items()) if isinstance(first, dict) else None
        if pairs is None:
            try:
                pairs = list(first)
            except TypeError:
                return
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            return
        object.__setattr__(self, names[0], None)
        for key, value in pairs:
            if key not in names:
                raise KeyError(f"{type(self).__name__} has no field {key!r}")
            object.__setattr__(self, key, value)

    def keys(self) -> list[str]:  # type: ignore[override]
        """The names of the fields that are set (not None), in field order."""
        return [n for n in type(self)._names if getattr(self, n) is not None]

    def values(self) -> list[Any]:  # type: ignore[override]
        """The values of the fields that are set, in field order."""
        return [v for v in (getattr(self, n) for n in type(self)._names) if v is not None]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """``(name, value)`` of the fields that are set, in field order."""
        return [(n, v) for n, v in ((n, getattr(self, n)) for n in type(self)._names) if v is not None]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in type(self)._names and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return getattr(self, key) if key in self else default

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in type(self)._names:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete from a {type(self).__name__}; set the field to None instead")

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"a {type(self).__name__}'s keys are its fields; set them as attributes")

    setdefault = pop = popitem = update = clear = move_to_end = _refuse

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not None, in field order (transformers' ``to_tuple``)."""
        return tuple(self.values())

    def __reduce__(self):  # pickle/copy through the dataclass constructor, not the dict's
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


def _output(cls: type) -> type:
    """``@dataclass`` for a :class:`ModelOutput` (no generated ``__eq__``: outputs compare by identity)."""
    cls = dataclass(eq=False)(cls)
    cls._names = tuple(f.name for f in fields(cls))
    return cls


@_output
class EncoderOutput(ModelOutput):
    """What an encoder returns.

    Attributes:
        last_hidden_state: [b, s, d] the final hidden states.
        hidden_states: the embeddings output and every layer's output, when asked for.
        attentions: every layer's attention probabilities [b, h, s, s], when asked for.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Encoded:
    """What :meth:`seqweave.EncoderDecoder.encode` returns: the source as cross-attention takes it.

    Attributes:
        states: [b, s, d_cross] the encoder's last hidden states, projected to the decoder's
            ``cross_attention_hidden_size`` when the widths differ (``enc_to_dec_proj``).
        mask: [b, s] 1 for tokens, 0 for padding (the source's attention mask), or None.
        encoder: the encoder's own output (unprojected), with hidden states and attentions
            when they were asked for.
    """

    states: torch.Tensor
    mask: torch.Tensor | None
    encoder: EncoderOutput


@_output
class DecoderOutput(ModelOutput):
    """What a decoder returns: logits [b, t, vocab] and, when asked for, the cache and intermediates."""

    logits: torch.Tensor
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@_output
class Seq2SeqOutput(ModelOutput):
    """What :class:`seqweave.EncoderDecoder` returns (transformers' ``Seq2SeqLMOutput`` fields and behaviour).

    ``past_key_values`` reads ``cache`` (transformers' older name for it).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None

    @property
    def past_key_values(self) -> Cache | None:
        """The cache, under the name transformers' callers use."""
        return self.cache
