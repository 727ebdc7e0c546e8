"""Output containers of encoders, decoders and the composite (field names as in transformers).

:class:`ModelOutput` gives them transformers' ``ModelOutput`` behaviour without depending on
transformers: a dataclass that is also an ordered dict of its fields that are not None, so
``out.logits``, ``out["logits"]``, ``out[0]``, ``out.to_tuple()``, ``"loss" in out`` and
``out.keys()`` all work, and ``torch.nn.DataParallel`` can gather it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["DecoderOutput", "Encoded", "EncoderOutput", "ModelOutput", "Seq2SeqOutput"]


class ModelOutput(OrderedDict):
    """transformers' ``ModelOutput`` semantics for a ``@dataclass`` subclass (``_output`` here: faster).

    The dict holds the fields that are not None, in field order; attributes hold all of them.
    Indexing by int or slice indexes :meth:`to_tuple` (None fields skipped, so ``loss`` is
    ``[0]`` exactly when present); by str, the dict. Setting an attribute or a key updates both.
    As in transformers, ``Output(iterable_of_key_value_pairs)`` builds from pairs (what
    ``torch.nn.parallel.gather`` does with a dict-like output).
    """

    #: field names, per class (set by :func:`_output`)
    _names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        cls = type(self)
        if "_names" not in cls.__dict__:  # a subclass made with a plain @dataclass
            cls._names = tuple(f.name for f in fields(cls))
        names, values = cls._names, self.__dict__
        first = values[names[0]]
        if first is not None and not isinstance(first, torch.Tensor) and all(values[n] is None for n in names[1:]):
            self._from_pairs(names, first)
        for name in names:  # the dict in field order, whatever order the values were set in
            value = values[name]
            if value is not None:
                OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, "_ready", True)

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

    def __setattr__(self, name: str, value: Any) -> None:
        # While the dataclass __init__ runs, only the attribute: __post_init__ fills the dict once.
        if self.__dict__.get("_ready") and name in self.__dataclass_fields__:
            if value is None:
                if OrderedDict.__contains__(self, name):
                    OrderedDict.__delitem__(self, name)
            else:
                new = not OrderedDict.__contains__(self, name)
                OrderedDict.__setitem__(self, name, value)
                if new:  # keep field order (loss first), where transformers would append
                    names = type(self)._names
                    for later in names[names.index(name) + 1 :]:
                        if OrderedDict.__contains__(self, later):
                            self.move_to_end(later)
        object.__setattr__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete from a {type(self).__name__}; set the field to None instead")

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"a {type(self).__name__}'s keys are its fields; set them as attributes")

    setdefault = pop = popitem = update = _refuse

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not None, in field order (transformers' ``to_tuple``)."""
        return tuple(self.values())

    def __reduce__(self):  # pickle/copy through the dataclass constructor, not the dict's
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


def _init(self: ModelOutput, args: tuple, kwargs: dict[str, Any]) -> None:
    """A :func:`_output` class's ``__init__``: the attributes straight into ``__dict__``, then ``__post_init__``."""
    cls = type(self)
    values = self.__dict__
    values.update(cls._empty)
    if kwargs or len(args) > len(cls._names) or (cls._required and not args):
        # by name (or wrong): checked as a dataclass would, with its TypeError
        bound = cls._signature.bind(self, *args, **kwargs).arguments
        values.update((k, v) for k, v in bound.items() if k in cls._empty)
    else:  # positionally: the decoders' outputs, every decode step
        values.update(zip(cls._names, args))
    self.__post_init__()


def _output(cls: type) -> type:
    """``@dataclass`` for a :class:`ModelOutput`, with an ``__init__`` that writes the attributes directly.

    The dataclass ``__init__`` would call ``ModelOutput.__setattr__`` once a field: some 3 µs more
    a decoder output, in every decode step (measured); this one adds about 1 µs to a plain dataclass.
    """
    cls = dataclass(eq=False)(cls)
    cls._names = tuple(f.name for f in fields(cls))
    cls._empty = dict.fromkeys(cls._names)
    cls._required = fields(cls)[0].default is MISSING
    cls._signature = inspect.signature(cls.__init__)

    def __init__(self: ModelOutput, *args: Any, **kwargs: Any) -> None:
        _init(self, args, kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__signature__ = cls._signature  # type: ignore[attr-defined]
    cls.__init__ = __init__
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
