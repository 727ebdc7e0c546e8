"""Every activation the core offers computes what transformers' ACT2FN computes under the same name."""

from __future__ import annotations

import pytest
import seqweave as sw
import torch
from seqweave.layers import ACTIVATIONS, activation
from transformers.activations import ACT2FN


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_matches_transformers(name: str) -> None:
    x = torch.linspace(-12, 12, 4001)
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), atol=0, rtol=0)


def test_only_learnable_activations_are_left_out() -> None:
    assert set(ACT2FN) - set(ACTIVATIONS) == {"prelu", "xielu"}


def test_unknown_activation_names_the_allowed_ones() -> None:
    with pytest.raises(sw.ConfigError, match="allowed: .*gelu_new"):
        activation("prelu")
