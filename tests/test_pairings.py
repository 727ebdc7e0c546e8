"""Parity with transformers' EncoderDecoderModel: every pairing of {bert, roberta} with {bert, roberta, gpt2}.

Both directions: a folder transformers saved loads into seqweave with the same logits and
loss, and a folder seqweave saved loads into transformers with the same logits and loss.
Every pairing runs with equal hidden sizes and with a wider decoder (enc_to_dec_proj).
Sources are padded, labels carry -100. GPT-2 decoders use its convention
pad == decoder_start == eos, so transformers masks the first decoder position.
"""

from __future__ import annotations

import json

import pytest
import seqweave as sw
import torch
import transformers
from conftest import build_part, hf_composite, hf_config, label_batch, randomize, source_batch, tiny

ATOL = 1e-5
ENCODERS = ("bert", "roberta")
DECODERS = ("bert", "roberta", "gpt2")
PAIRS = [(e, d) for e in ENCODERS for d in DECODERS]
WIDTH_FIELD = {"bert": "hidden_size", "roberta": "hidden_size", "gpt2": "n_embd"}
#: decoder_start and pad token ids as each decoder family uses them (GPT-2: both are eos, 98 here).
TOKENS = {
    "bert": {"decoder_start_token_id": 2, "pad_token_id": 0},
    "roberta": {"decoder_start_token_id": 0, "pad_token_id": 1},
    "gpt2": {"decoder_start_token_id": 98, "pad_token_id": 98, "eos_token_id": 98},
}
#: the class a released checkpoint of each architecture is saved as (bert-base-uncased, roberta-base, gpt2)
PRETRAINED_CLASS = {"bert": "BertForPreTraining", "roberta": "RobertaForMaskedLM", "gpt2": "GPT2LMHeadModel"}
CASES = [(e, d, w) for e, d in PAIRS for w in ("same", "wider")]


def _case_id(case: tuple[str, str, str]) -> str:
    e, d, w = case
    return f"{e}2{d}-{w}"


def _decoder_overrides(decoder: str, width: str) -> dict:
    return {WIDTH_FIELD[decoder]: 48} if width == "wider" else {}


def _batch(encoder: str):
    pad = tiny(encoder).get("pad_token_id", 0)
    ids, mask = source_batch(99, pad)
    labels = label_batch(99)
    return ids, mask, labels


def _compare(ours: sw.EncoderDecoder, hf, encoder: str) -> tuple[float, float]:
    ids, mask, labels = _batch(encoder)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(
        got.encoder_last_hidden_state, want.encoder_last_hidden_state, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=0)
    return (got.logits - want.logits).abs().max().item(), (got.loss - want.loss).abs().item()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_transformers_folder_loads_with_same_logits_and_loss(case, tmp_path) -> None:
    encoder, decoder, width = case
    hf = hf_composite(
        tmp_path, encoder, decoder, decoder_overrides=_decoder_overrides(decoder, width), **TOKENS[decoder]
    )
    assert hasattr(hf, "enc_to_dec_proj") == (width == "wider")
    ours = sw.EncoderDecoder.from_pretrained(tmp_path)
    assert (ours.enc_to_dec_proj is not None) == (width == "wider")
    assert ours.decoder_start_token_id == TOKENS[decoder]["decoder_start_token_id"]
    assert ours.pad_token_id == TOKENS[decoder]["pad_token_id"]
    _compare(ours, hf, encoder)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_seqweave_folder_loads_into_transformers(case, tmp_path) -> None:
    encoder, decoder, width = case
    ours = sw.EncoderDecoder(
        build_part(encoder, "encoder", seed=1),
        build_part(decoder, "decoder", seed=2, **_decoder_overrides(decoder, width)),
        **TOKENS[decoder],
    )
    if ours.enc_to_dec_proj is not None:
        randomize(ours.enc_to_dec_proj, seed=3)
    ours.eval().save_pretrained(tmp_path)
    hf, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _compare(ours, hf.eval(), encoder)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_gpt2_first_position_is_fully_masked_and_matches(encoder: str, tmp_path) -> None:
    """pad == decoder_start: transformers masks decoder position 0 as a key, so query 0 sees nothing.

    Its attention output is then zero (SDPA with a boolean mask), not a uniform average.
    """
    hf = hf_composite(tmp_path, encoder, "gpt2", **TOKENS["gpt2"])
    ours = sw.EncoderDecoder.from_pretrained(tmp_path)
    ids, mask, labels = _batch(encoder)
    start = sw.shift_tokens_right(labels, 98, 98)
    assert (start[:, 0] == 98).all()  # so decoder_attention_mask[:, 0] == 0 on both sides
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
        # the same inputs with position 0 unmasked give other logits there: the masked row matters
        unmasked = ours(ids, attention_mask=mask, decoder_input_ids=start)
    torch.testing.assert_close(got.logits[:, 0], want.logits[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=0)
    assert not torch.allclose(unmasked.logits[:, 0], got.logits[:, 0], atol=1e-3)


# ----------------------------------------------------------------------------------------
# Warm start from two single-model checkpoints


def _save_pretrained_part(name: str, folder, seed: int, **overrides):
    """A single-model checkpoint as the Hub has them (bert-base-uncased, roberta-base, gpt2 layouts)."""
    cls = getattr(transformers, PRETRAINED_CLASS[name])
    torch.manual_seed(seed)
    model = randomize(cls(hf_config(name, "encoder", **overrides)), seed=seed).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_from_pretrained_parts_lists_new_tensors(case, tmp_path) -> None:
    from seqweave.checkpoint.formats import read_state_dict

    encoder, decoder, width = case
    enc_dir, dec_dir, out_dir = tmp_path / "enc", tmp_path / "dec", tmp_path / "out"
    _save_pretrained_part(encoder, enc_dir, seed=1)
    _save_pretrained_part(decoder, dec_dir, seed=2, **_decoder_overrides(decoder, width))
    model = sw.EncoderDecoder.from_pretrained_parts(enc_dir, dec_dir, **TOKENS[decoder])

    # transformers' own warm start (from_encoder_decoder_pretrained's part loading) misses the same tensors
    registry = sw.default_registry()
    for role, folder, auto, flags in (
        ("encoder", enc_dir, transformers.AutoModel, {"is_decoder": False, "add_cross_attention": False}),
        (
            "decoder",
            dec_dir,
            transformers.AutoModelForCausalLM,
            {"is_decoder": True, "add_cross_attention": True},
        ),
    ):
        part = getattr(model, role)
        wmap = registry.get(part.architecture).weight_map(part.config, role)
        cfg = transformers.AutoConfig.from_pretrained(folder, **flags)
        _, info = auto.from_pretrained(folder, config=cfg, output_loading_info=True)
        new = [n[len(role) + 1 :] for n in model.load_report.new if n.startswith(role + ".")]
        assert {h for n in new for h in wmap.hf_names(n)} == set(info["missing_keys"]), role
    new_decoder = [n for n in model.load_report.new if n.startswith("decoder.")]
    assert new_decoder and all(".cross_attn." in n or ".cross_norm." in n for n in new_decoder)
    expected_proj = ["enc_to_dec_proj.weight", "enc_to_dec_proj.bias"] if width == "wider" else []
    assert [n for n in model.load_report.new if n.startswith("enc_to_dec_proj")] == expected_proj
    assert model.load_report.unused == []  # NSP head, MLM head of the encoder: ignored by rule

    # every other tensor is the checkpoint's, exactly
    for role, folder in (("encoder", enc_dir), ("decoder", dec_dir)):
        part = getattr(model, role)
        wmap = sw.default_registry().get(part.architecture).weight_map(part.config, role)
        sd = wmap.normalize_prefix(read_state_dict(folder)[0])
        written = wmap.to_hf(dict(part.named_parameters()))
        new = {
            h
            for n in model.load_report.new
            if n.startswith(role + ".")
            for h in wmap.hf_names(n[len(role) + 1 :])
        }
        assert set(written) - set(sd) == new
        for k in set(written) & set(sd):
            assert torch.equal(written[k], sd[k]), k

    # the warm-started model, new tensors included, is what transformers computes after loading our save
    model.save_pretrained(out_dir)
    hf = transformers.EncoderDecoderModel.from_pretrained(out_dir).eval()
    _compare(model, hf, encoder)
    assert json.loads((out_dir / "config.json").read_text())["decoder"]["model_type"] == decoder


def test_bert2gpt2_from_original_gpt2_checkpoint_layout(tmp_path) -> None:
    """The OpenAI GPT-2 files: bare GPT2Model names (no ``transformer.``), old attn.(masked_)bias buffers."""
    from safetensors.torch import save_file

    enc_dir, dec_dir = tmp_path / "bert", tmp_path / "gpt2"
    _save_pretrained_part("bert", enc_dir, seed=1)
    hf = _save_pretrained_part("gpt2", dec_dir, seed=2)
    n_layer, n_pos = hf.config.n_layer, hf.config.n_positions
    sd = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in hf.state_dict().items()
        if k != "lm_head.weight"
    }
    for i in range(n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, str(dec_dir / "model.safetensors"))
    model = sw.EncoderDecoder.from_pretrained_parts(enc_dir, dec_dir, **TOKENS["gpt2"])
    assert model.load_report.unused == []
    per_layer = [
        "cross_norm.weight",
        "cross_norm.bias",
        "cross_attn.q_proj.weight",
        "cross_attn.q_proj.bias",
        "cross_attn.kv_proj.weight",
        "cross_attn.kv_proj.bias",
        "cross_attn.out_proj.weight",
        "cross_attn.out_proj.bias",
    ]
    assert sorted(model.load_report.new) == sorted(
        f"decoder.layers.{i}.{n}" for i in range(n_layer) for n in per_layer
    )
    torch.testing.assert_close(
        model.decoder.embeddings.tokens.weight, hf.transformer.wte.weight, atol=0, rtol=0
    )
    torch.testing.assert_close(
        model.decoder.layers[1].self_attn.qkv_proj.weight,
        hf.transformer.h[1].attn.c_attn.weight.T,
        atol=0,
        rtol=0,
    )
    assert model.decoder.head.proj.weight is model.decoder.embeddings.tokens.weight
