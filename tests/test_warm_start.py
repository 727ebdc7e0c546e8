"""Warm-starting from single-model checkpoints, as transformers' from_encoder_decoder_pretrained does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import label_batch, source_batch
from transformers import AutoModel, AutoModelForCausalLM, EncoderDecoderModel

import seqweave as sw


def _hf_missing(path: Path, role: str) -> set[str]:
    """The tensors transformers initialises anew when it warm-starts ``role`` from ``path``."""
    cls = AutoModel if role == "encoder" else AutoModelForCausalLM
    kwargs = {"is_decoder": True, "add_cross_attention": True} if role == "decoder" else {}
    _, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    return {f"{role}.{k}" for k in info["missing_keys"]}


def test_new_tensors_are_exactly_those_transformers_creates(singles, caplog):
    with caplog.at_level(logging.WARNING, logger="seqweave"):
        model = sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "lm", decoder_start_token_id=2,
                                                        pad_token_id=0)
    wmap = model.weight_map()
    ours_as_hf = {h for name in model.load_report.new for h in wmap.hf_names(name)}
    expected = _hf_missing(singles / "lm", "decoder") | {"enc_to_dec_proj.weight", "enc_to_dec_proj.bias"}
    assert ours_as_hf == expected
    assert any(n.startswith("decoder.layers.0.cross_attn.") for n in model.load_report.new)
    # One log line, with layer indices folded: decoder.layers.{0-1}.cross_attn.q_proj.weight
    lines = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert len(lines) == 1 and "decoder.layers.{0-1}.cross_attn.q_proj.weight" in lines[0]


def test_pretrained_tensors_match_transformers_warm_start(singles):
    ours = sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "lm", decoder_start_token_id=2,
                                                   pad_token_id=0)
    theirs = EncoderDecoderModel.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"))
    mine = ours.weight_map().to_hf(ours.state_dict())
    ref = theirs.state_dict()
    new = {h for n in ours.load_report.new for h in ours.weight_map().hf_names(n)}
    compared = 0
    for name, t in mine.items():
        if name not in new:
            assert torch.equal(t, ref[name]), name
            compared += 1
    assert compared > 40
    # With the random tensors copied over, the whole model computes what transformers computes.
    with torch.no_grad():
        for name in new:
            mine[name].copy_(ref[name])
    ours.load_state_dict({**ours.state_dict(), **ours.weight_map().from_hf(mine)[0]})
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 2, 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = theirs.eval()(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)


def test_bare_base_model_as_decoder_gets_a_new_head(singles):
    model = sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "enc", decoder_start_token_id=2,
                                                    pad_token_id=0)
    new = set(model.load_report.new)
    assert {"decoder.head.dense.weight", "decoder.head.proj.bias"} <= new
    assert model.enc_to_dec_proj is None
    # The encoder's pooler weights came from the checkpoint; the decoder's embeddings too.
    assert not any(n.startswith("encoder.") for n in new)
    assert "decoder.embeddings.tokens.weight" not in new


def test_part_overrides_and_errors(singles):
    model = sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "lm", decoder_start_token_id=2,
                                                    pad_token_id=0, decoder_hidden_dropout_prob=0.3)
    assert model.decoder.config.hidden_dropout_prob == 0.3
    with pytest.raises(sw.ConfigError, match="part overrides start with encoder_ or decoder_"):
        sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "lm", hidden_size=3)
    with pytest.raises(sw.CheckpointError, match=r"tensor bert\.encoder\.layer\.0\.intermediate\.dense\.weight "
                                                 r"has shape \[37, 24\], but the config implies \[50, 24\]"):
        sw.EncoderDecoder.from_pretrained_parts(singles / "enc", singles / "lm", decoder_intermediate_size=50)


def test_programmatic_assembly_and_from_config_agree_on_structure():
    kw = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=40, intermediate_size=20)
    a = sw.EncoderDecoder(sw.build_encoder("bert", **kw), sw.build_decoder("bert", **kw), decoder_start_token_id=1,
                          pad_token_id=0)
    b = sw.EncoderDecoder.from_config({"encoder": {"architecture": "bert", "config": kw},
                                       "decoder": {"architecture": "bert", "config": kw},
                                       "decoder_start_token_id": 1, "pad_token_id": 0})
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert b.decoder.head.proj.weight is b.decoder.embeddings.tokens.weight
    assert not any(p.is_meta for p in b.parameters())
    loss = b(torch.tensor([[5, 6, 7]]), labels=torch.tensor([[8, 9]])).loss
    loss.backward()
    assert torch.isfinite(loss) and b.decoder.layers[0].cross_attn.q_proj.weight.grad is not None


def test_hand_written_modules_compose():
    class TinyEncoder(torch.nn.Module):
        hidden_size = 8

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(30, 8)

        def forward(self, input_ids, attention_mask=None, *, output_attentions=False, output_hidden_states=False):
            return sw.EncoderOutput(self.emb(input_ids))

    dec = sw.build_decoder("bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=40,
                           intermediate_size=20)
    model = sw.EncoderDecoder(TinyEncoder(), dec, decoder_start_token_id=1, pad_token_id=0)
    assert model.enc_to_dec_proj is not None  # 8 -> 16
    out = model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[4, 5]]))
    assert out.logits.shape == (1, 2, 40)
    with pytest.raises(sw.ConfigError, match="not built from a registered architecture"):
        model.save_pretrained("/nonexistent/never-written")
    with pytest.raises(sw.ConfigError, match="lacks vocab_size"):
        sw.EncoderDecoder(TinyEncoder(), TinyEncoder())
