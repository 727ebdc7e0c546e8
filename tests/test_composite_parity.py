"""bert2bert against transformers' EncoderDecoderModel, on weights both load from the same folder."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_composite, label_batch, source_batch
from transformers import EncoderDecoderModel

import seqweave as sw

TOL = 1e-5

SIZES = {
    "same width": ({}, {}),
    "enc_to_dec_proj": ({"hidden_size": 32}, {"hidden_size": 24, "num_attention_heads": 2, "num_hidden_layers": 3}),
}


@pytest.fixture(scope="module", params=list(SIZES), ids=list(SIZES))
def pair(request, tmp_path_factory):
    """(transformers model, seqweave model, folder) loaded from one saved transformers checkpoint."""
    tmp_path = tmp_path_factory.mktemp("pair")
    enc, dec = SIZES[request.param]
    ref = hf_composite(tmp_path / "hf", encoder_overrides=enc, decoder_overrides=dec)
    return ref, sw.EncoderDecoder.from_pretrained(tmp_path / "hf"), tmp_path


def _run_both(ref, ours, **kw):
    with torch.no_grad():
        return ref(**kw, return_dict=True), ours(**kw)


def test_logits_loss_and_encoder_outputs_match(pair):
    ref, ours, _ = pair
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    r, o = _run_both(ref, ours, input_ids=ids, attention_mask=mask, labels=labels)
    assert (ours.enc_to_dec_proj is not None) == hasattr(ref, "enc_to_dec_proj")
    torch.testing.assert_close(o.logits, r.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(o.encoder_last_hidden_state, r.encoder_last_hidden_state, atol=TOL, rtol=0)
    torch.testing.assert_close(o.loss, r.loss, atol=TOL, rtol=0)
    assert r.logits.abs().max() > 1.0  # the weights are visibly random, so a match means something


def test_explicit_decoder_inputs_and_masks_match(pair):
    ref, ours, _ = pair
    ids, mask = source_batch(99, pad=0, seed=3)
    dec_ids = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(4))
    dec_mask = torch.ones_like(dec_ids)
    dec_mask[2, 4:] = 0
    kw = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
    r, o = _run_both(ref, ours, **kw)
    torch.testing.assert_close(o.logits, r.logits, atol=TOL, rtol=0)


def test_attentions_and_hidden_states_match(pair):
    _, ours, tmp_path = pair
    # transformers returns attention probabilities only from its eager attention.
    ref = EncoderDecoderModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        r = ref(**kw, return_dict=True)
        o = ours(**kw)
    for name in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                 "cross_attentions"):
        mine, theirs = getattr(o, name), getattr(r, name)
        assert len(mine) == len(theirs), name
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=TOL, rtol=0, msg=name)
    torch.testing.assert_close(o.logits, r.logits, atol=TOL, rtol=0)


def test_encoder_outputs_are_reused(pair):
    _, ours, _ = pair
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, labels=labels)
        enc = ours.encoder(ids, mask)
        # Garbage input_ids prove the encoder is not run again.
        again = ours(torch.zeros_like(ids), attention_mask=mask, labels=labels, encoder_outputs=enc)
        as_tuple = ours(attention_mask=mask, labels=labels, encoder_outputs=(enc.last_hidden_state,))
    assert torch.equal(full.logits, again.logits)
    assert torch.equal(full.logits, as_tuple.logits)


def test_transformers_loads_what_we_save(pair):
    _, ours, tmp_path = pair
    ours.save_pretrained(tmp_path / "ours")
    theirs = EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    ids, mask = source_batch(99, pad=0, seed=5)
    labels = label_batch(99, seed=6)
    r, o = _run_both(theirs, ours, input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(o.logits, r.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(o.loss, r.loss, atol=TOL, rtol=0)


def test_our_save_reloads_identically(pair):
    _, ours, tmp_path = pair
    ours.save_pretrained(tmp_path / "ours")
    again = sw.EncoderDecoder.from_pretrained(tmp_path / "ours")
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert again.hf_config() == ours.hf_config()


def test_loss_backpropagates_like_transformers(pair):
    _, _, tmp_path = pair
    ref = EncoderDecoderModel.from_pretrained(tmp_path / "hf").train()
    ours = sw.EncoderDecoder.from_pretrained(tmp_path / "hf").train()
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    # Dropout off on both sides, train mode otherwise: gradients must agree.
    for m in (ref, ours):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    for attn_cfg in (ref.config.encoder, ref.config.decoder):
        attn_cfg.attention_probs_dropout_prob = 0.0
    for mod in ours.modules():
        if isinstance(mod, sw.layers.Attention):
            mod.dropout = 0.0
    ref(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours(ids, attention_mask=mask, labels=labels).loss.backward()
    torch.testing.assert_close(
        ours.encoder.embeddings.tokens.weight.grad,
        ref.encoder.embeddings.word_embeddings.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        ours.decoder.layers[0].ffn.fc_out.weight.grad,
        ref.decoder.bert.encoder.layer[0].output.dense.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )


def test_loss_is_mean_cross_entropy_over_labelled_tokens(pair):
    _, ours, _ = pair
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, labels=labels)
    logp = out.logits.log_softmax(-1)
    keep = labels != -100
    expected = -logp[keep].gather(-1, labels[keep].unsqueeze(-1)).mean()
    torch.testing.assert_close(out.loss, expected)


def test_shift_tokens_right():
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    assert sw.shift_tokens_right(labels, 0, 2).tolist() == [[2, 5, 6], [2, 7, 0]]
    with pytest.raises(sw.ConfigError, match="decoder_start_token_id"):
        sw.shift_tokens_right(labels, 0, None)
    with pytest.raises(sw.ConfigError, match="pad_token_id"):
        sw.shift_tokens_right(labels, None, 2)
