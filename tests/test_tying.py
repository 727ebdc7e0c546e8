"""Weight tying: embeddings to LM head inside a decoder, and tie_encoder_decoder across the composite."""

from __future__ import annotations

import json

import pytest
import seqweave as sw
import torch
import transformers
from conftest import build_part, hf_config, label_batch, randomize, source_batch, tiny
from safetensors.torch import load_file, save_file

SAME_FAMILY = ["bert", "roberta", "gpt2"]


def _tied(name: str) -> sw.EncoderDecoder:
    model = sw.EncoderDecoder(
        sw.build_encoder(name, **tiny(name)),
        sw.build_decoder(name, **tiny(name)),
        decoder_start_token_id=2,
        pad_token_id=1,
        tie_encoder_decoder=True,
    )
    return randomize(model, seed=7).eval()


def _logits(model, hf=None):
    ids, mask = source_batch(99, 1)
    labels = label_batch(99)
    with torch.no_grad():
        if hf is not None:
            return hf(input_ids=ids, attention_mask=mask, labels=labels)
        return model(ids, attention_mask=mask, labels=labels)


@pytest.mark.parametrize("name", SAME_FAMILY)
def test_tied_model_shares_every_same_named_tensor(name: str) -> None:
    model = _tied(name)
    enc = dict(model.encoder.named_parameters())
    dec = dict(model.decoder.named_parameters())
    # equal sizes: every encoder parameter with a same-named decoder one is shared
    expected = sorted(n for n in enc if n in dec)
    assert all(enc[n].shape == dec[n].shape for n in expected)
    assert sorted(model.tied_parameters) == expected and expected
    assert all(enc[n] is dec[n] for n in expected)
    assert model.decoder.head.proj.weight is model.decoder.embeddings.tokens.weight
    # the encoder's own tensors (BERT's pooler) and the decoder's cross-attention stay separate
    assert not any("cross_attn" in n or "pooler" in n for n in model.tied_parameters)
    untied = sw.EncoderDecoder(build_part(name, "encoder"), build_part(name, "decoder"))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())


@pytest.mark.parametrize("name", SAME_FAMILY)
def test_tying_survives_save_and_load(name: str, tmp_path) -> None:
    model = _tied(name)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_encoder_decoder"] is True
    loaded = sw.EncoderDecoder.from_pretrained(tmp_path)
    assert loaded.tied_parameters == model.tied_parameters
    enc, dec = dict(loaded.encoder.named_parameters()), dict(loaded.decoder.named_parameters())
    assert all(enc[n] is dec[n] for n in loaded.tied_parameters)
    want = _logits(model)
    torch.testing.assert_close(_logits(loaded).logits, want.logits, atol=0, rtol=0)
    # transformers 5.x ignores the flag and loads both copies, untied, with the same logits
    hf, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    got = _logits(None, hf.eval())
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=0)


def test_transformers_4_checkpoint_without_encoder_copies_loads_by_tying(tmp_path) -> None:
    model = _tied("bert")
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    wmap = model.weight_map()
    dropped = {
        h
        for r in wmap.rules
        if r.ours.removeprefix("encoder.") in model.tied_parameters and r.ours.startswith("encoder.")
        for h in r.hf
    }
    assert dropped
    save_file({k: v for k, v in sd.items() if k not in dropped}, str(tmp_path / "model.safetensors"))
    loaded = sw.EncoderDecoder.from_pretrained(tmp_path)
    assert loaded.encoder.embeddings.tokens.weight is loaded.decoder.embeddings.tokens.weight
    torch.testing.assert_close(_logits(loaded).logits, _logits(model).logits, atol=0, rtol=0)


def test_decoder_values_win_when_the_copies_differ(tmp_path) -> None:
    model = _tied("roberta")
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    key = "encoder.embeddings.word_embeddings.weight"
    sd[key] = sd[key] + 1.0
    save_file(sd, str(tmp_path / "model.safetensors"))
    loaded = sw.EncoderDecoder.from_pretrained(tmp_path)
    torch.testing.assert_close(
        loaded.encoder.embeddings.tokens.weight,
        sd["decoder.roberta.embeddings.word_embeddings.weight"],
        atol=0,
        rtol=0,
    )


def test_training_keeps_tied_tensors_one() -> None:
    model = _tied("bert").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder.layers[0].ffn.fc_in.weight.detach().clone()
    ids, mask = source_batch(99, 1)
    model(ids, attention_mask=mask, labels=label_batch(99)).loss.backward()
    opt.step()
    assert model.encoder.layers[0].ffn.fc_in.weight is model.decoder.layers[0].ffn.fc_in.weight
    assert not torch.equal(model.encoder.layers[0].ffn.fc_in.weight, before)


def test_from_config_and_from_pretrained_parts_tie(tmp_path) -> None:
    cfg = {
        "encoder": {"architecture": "bert", "config": tiny("bert")},
        "decoder": {"architecture": "bert", "config": tiny("bert")},
        "decoder_start_token_id": 2,
        "pad_token_id": 0,
        "tie_encoder_decoder": True,
    }
    model = sw.EncoderDecoder.from_config(cfg)
    assert (
        model.encoder.layers[1].self_attn.qkv_proj.weight is model.decoder.layers[1].self_attn.qkv_proj.weight
    )

    folder = tmp_path / "bert"
    torch.manual_seed(0)
    randomize(transformers.BertForPreTraining(hf_config("bert", "encoder")), seed=1).save_pretrained(folder)
    warm = sw.EncoderDecoder.from_pretrained_parts(
        folder, folder, decoder_start_token_id=2, pad_token_id=0, tie_encoder_decoder=True
    )
    assert warm.encoder.embeddings.tokens.weight is warm.decoder.embeddings.tokens.weight
    assert not warm.encoder.embeddings.tokens.weight.is_meta
    assert "encoder.pooler.weight" not in warm.tied_parameters


def test_modules_are_tied_whole() -> None:
    enc = build_part("bert", "encoder")
    dec = build_part("bert", "decoder", hidden_size=48)
    # the feed-forward biases have equal shapes ([37]), the weights do not: a half-shared Linear is wrong
    assert enc.layers[0].ffn.fc_in.bias.shape == dec.layers[0].ffn.fc_in.bias.shape
    dec.embeddings.token_types = torch.nn.Embedding(2, 32)  # one module that does match in full
    tied = sw.EncoderDecoder(enc, dec, tie_encoder_decoder=True)
    assert tied.tied_parameters == ["embeddings.token_types.weight"]
    assert tied.encoder.embeddings.token_types.weight is tied.decoder.embeddings.token_types.weight


def test_nothing_to_tie_is_an_error() -> None:
    with pytest.raises(sw.ConfigError, match="tie_encoder_decoder.*hidden size 32, decoder 48"):
        sw.EncoderDecoder(
            build_part("bert", "encoder"),
            build_part("bert", "decoder", hidden_size=48),
            tie_encoder_decoder=True,
        )
