"""What ``generate(..., return_dict_in_generate=True)`` returns: transformers' output classes, field for field.

:class:`GenerateEncoderDecoderOutput` (greedy search and sampling) and
:class:`GenerateBeamEncoderDecoderOutput` (beam search) have transformers' names, fields and
field order, and behave like its ``ModelOutput`` (:class:`OutputDict`): attribute, key and
index access, ``to_tuple()``, and fields left at None absent from the keys, the tuple and
the indices. ``cache`` is the decoding's :class:`~seqweave.Cache`; the attentions and hidden
states are never filled (None).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["GenerateBeamEncoderDecoderOutput", "GenerateEncoderDecoderOutput", "OutputDict"]


class OutputDict:
    """transformers' ``ModelOutput`` semantics over a dataclass: only the fields that are not None count.

    ``out.sequences``, ``out["sequences"]`` and ``out[0]`` are the same; ``out[1]`` is the
    next field that is set; ``keys()``, ``values()``, ``items()``, ``len()``, ``in`` and
    iteration (over the keys, as a dict's) see only the fields that are set.
    """

    def keys(self) -> list[str]:
        """The names of the fields that are set, in field order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]

    def values(self) -> list[Any]:
        """The values of the fields that are set."""
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of the fields that are set."""
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the fields that are set, in field order."""
        return tuple(self.values())

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value when it is set, else ``default``."""
        return getattr(self, key) if key in self.keys() else default

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class GenerateEncoderDecoderOutput(OutputDict):
    """Greedy search and sampling, as transformers' ``GenerateEncoderDecoderOutput``.

    Attributes:
        sequences: [b * num_return_sequences, prompt + generated] the tokens ``generate`` returns.
        scores: with ``output_scores``: one [b * num_return_sequences, V] tensor per generated
            step, the scores the token was chosen from (after the logits processors and warpers).
        logits: with ``output_logits``: one [b * num_return_sequences, V] tensor per step, the
            decoder's raw logits (float32).
        cache: the :class:`~seqweave.Cache` the decoding filled.
    """

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[Any, ...] | None = None
    cross_attentions: tuple[Any, ...] | None = None
    decoder_hidden_states: tuple[Any, ...] | None = None
    cache: Any = None


@dataclass
class GenerateBeamEncoderDecoderOutput(OutputDict):
    """Beam search, as transformers' ``GenerateBeamEncoderDecoderOutput``.

    Attributes:
        sequences: [b * num_return_sequences, prompt + generated] best first within a source.
        sequences_scores: with ``output_scores``: [b * num_return_sequences] each hypothesis's
            score, ``sum of log-probabilities / generated ** length_penalty``.
        scores: with ``output_scores``: one [b * num_beams, V] tensor per step, the processed
            log-probabilities of every running beam (before the beam's running score is added).
        logits: with ``output_logits``: one [b * num_beams, V] tensor per step, the raw logits.
        beam_indices: [b * num_return_sequences, generated] int32: for each returned token, the
            row (``source * num_beams + beam``) of the step's scores it was chosen from; -1
            after the hypothesis ended.
        cache: the :class:`~seqweave.Cache` the decoding filled (in the running beams' order).
    """

    sequences: torch.Tensor
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[Any, ...] | None = None
    cross_attentions: tuple[Any, ...] | None = None
    decoder_hidden_states: tuple[Any, ...] | None = None
    cache: Any = None
