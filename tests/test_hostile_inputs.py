"""Hostile model inputs: each is a clean ConfigError naming the argument, or a correct result."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_part, source_batch

import seqweave as sw
from seqweave import generation


def _model() -> sw.EncoderDecoder:
    torch.manual_seed(0)
    return sw.EncoderDecoder(
        build_part("bert", "encoder"), build_part("bert", "decoder", seed=1), decoder_start_token_id=2, pad_token_id=0
    )


def test_all_ignored_labels_give_zero_loss_and_zero_gradients():
    model = _model().train()
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    labels = torch.full((ids.shape[0], 4), -100)
    loss = model(ids, mask, labels=labels).loss
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_some_ignored_labels_give_the_mean_over_the_others():
    model = _model()
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    labels = torch.tensor([[5, 6, -100, -100]] * ids.shape[0])
    out = model(ids, mask, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty", "length_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_generation_arguments_are_errors_naming_them(name, value):
    model = _model()
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    with pytest.raises(sw.ConfigError, match=name):
        model.generate(ids, mask, max_new_tokens=3, **{name: value})


def _batch():
    model = _model()
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    return model, ids, mask

