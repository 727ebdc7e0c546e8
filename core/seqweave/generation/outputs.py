"""What ``generate(..., return_dict_in_generate=True)`` returns: transformers' output classes, field for field.

:class:`GenerateEncoderDecoderOutput` (greedy search and sampling) and
:class:`GenerateBeamEncoderDecoderOutput` (beam search) have transformers' names, fields and
field order, and behave like its ``ModelOutput`` (:class:`seqweave.outputs.ModelOutput`): attribute, key and
index access, ``to_tuple()``, and fields left at None absent from the keys, the tuple and
the indices. ``cache`` is the decoding's :class:`~seqweave.Cache`; the attentions and hidden
states are never filled (None).
"""

from __future__ import annotations

from typing import Any

import torch

from ..outputs import ModelOutput, _output

__all__ = ["GenerateBeamEncoderDecoderOutput", "GenerateEncoderDecoderOutput"]


@_output
class GenerateEncoderDecoderOutput(ModelOutput):
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


@_output
class GenerateBeamEncoderDecoderOutput(ModelOutput):
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
