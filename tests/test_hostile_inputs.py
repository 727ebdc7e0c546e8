"""Hostile model inputs: each is a clean ConfigError naming the argument, or a correct result."""

from __future__ import annotations

import math

import pytest
import seqweave as sw
import torch
from conftest import build_part, source_batch
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


@pytest.mark.parametrize(
    "case, match",
    [
        ("ids_high", r"input_ids holds ids outside \[0, "),
        ("ids_negative", r"input_ids holds ids outside \[0, "),
        ("decoder_ids_high", r"decoder_input_ids holds ids outside \[0, "),
        ("labels_high", r"labels holds ids outside \[0, \d+\) or -100"),
        ("labels_negative", r"labels holds ids outside"),
        ("empty_batch", "input_ids is empty"),
        ("zero_length", "input_ids is empty"),
        ("mask_shape", r"attention_mask has shape \[3, 6\]"),
        ("additive_mask", "attention_mask must hold 1 for tokens and 0 for padding"),
        ("decoder_additive_mask", "decoder_attention_mask must hold 1"),
        ("integer_mask_two", "attention_mask must hold 1 for tokens and 0 for padding"),
        ("num_items_negative", "num_items_in_batch must be a count"),
        ("num_items_text", "num_items_in_batch must be a count"),
    ],
)
def test_forward_rejects_hostile_inputs_naming_the_argument(case, match):
    model, ids, mask = _batch()
    v_enc, v_dec = generation_vocab(model)
    args = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, :3]}
    if case == "ids_high":
        args["input_ids"] = ids.clone().index_fill_(1, torch.tensor([2]), v_enc)
    elif case == "ids_negative":
        args["input_ids"] = ids.clone().index_fill_(1, torch.tensor([2]), -1)
    elif case == "decoder_ids_high":
        args["decoder_input_ids"] = torch.full((3, 2), v_dec + 5)
    elif case in ("labels_high", "labels_negative"):
        del args["decoder_input_ids"]
        args["labels"] = torch.tensor([[4, v_dec if case == "labels_high" else -5, -100]] * 3)
    elif case == "empty_batch":
        args = {"input_ids": ids[:0], "attention_mask": mask[:0], "decoder_input_ids": ids[:0, :3]}
    elif case == "zero_length":
        args["input_ids"], args["attention_mask"] = ids[:, :0], mask[:, :0]
    elif case == "mask_shape":
        args["attention_mask"] = mask[:, :6]
    elif case == "additive_mask":
        args["attention_mask"] = (1.0 - mask.float()) * float("-inf")
    elif case == "decoder_additive_mask":
        args["decoder_attention_mask"] = torch.zeros(3, 3).masked_fill_(torch.eye(3, dtype=torch.bool), -1e9)
    elif case == "integer_mask_two":
        args["attention_mask"] = mask * 2
    elif case.startswith("num_items"):
        del args["decoder_input_ids"]
        args["labels"] = ids[:, :3]
        args["num_items_in_batch"] = -3 if case == "num_items_negative" else "12"
    with pytest.raises(sw.ConfigError, match=match):
        model(**args)


def generation_vocab(model):
    return generation.vocab_of(model.encoder), generation.vocab_of(model.decoder)


@pytest.mark.parametrize("count", [0, torch.tensor(0), torch.tensor(0.0)], ids=["int", "tensor", "float-tensor"])
def test_num_items_in_batch_zero_gives_zero_loss_not_nan(count):
    # Trainer passes the labels counted over a gradient-accumulation step: 0 when every label is -100
    model, ids, mask = _batch()
    labels = torch.full((3, 4), -100)
    out = model(ids, mask, labels=labels, num_items_in_batch=count)
    out.loss.backward()
    assert out.loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_float_zero_one_masks_still_work():
    model, ids, mask = _batch()
    with torch.no_grad():
        a = model(ids, mask.float(), decoder_input_ids=ids[:, :3]).logits
        b = model(ids, mask, decoder_input_ids=ids[:, :3]).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "case, match",
    [
        ("ids_high", r"input_ids holds ids outside \[0, "),
        ("empty_batch", "input_ids is empty"),
        ("zero_length", "input_ids is empty"),
        ("mask_shape", "attention_mask has shape"),
        ("additive_mask", "attention_mask must hold 1"),
        ("prompt_high", r"decoder_input_ids holds ids outside \[0, "),
    ],
)
def test_generate_rejects_hostile_inputs_naming_the_argument(case, match):
    model, ids, mask = _batch()
    v_enc, v_dec = generation_vocab(model)
    args = {"input_ids": ids, "attention_mask": mask}
    if case == "ids_high":
        args["input_ids"] = ids.clone().index_fill_(1, torch.tensor([0]), v_enc + 1)
    elif case == "empty_batch":
        args = {"input_ids": ids[:0], "attention_mask": mask[:0]}
    elif case == "zero_length":
        args = {"input_ids": ids[:, :0], "attention_mask": mask[:, :0]}
    elif case == "mask_shape":
        args["attention_mask"] = mask[:, :6]
    elif case == "additive_mask":
        args["attention_mask"] = (1.0 - mask.float()) * -1e9
    elif case == "prompt_high":
        args["decoder_input_ids"] = torch.full((3, 2), v_dec)
    with pytest.raises(sw.ConfigError, match=match):
        model.generate(**args, max_new_tokens=3)
