"""The out-of-tree example plugin (examples/seqweave-distilbert), registered as a third party would be."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize, source_batch
from transformers import DistilBertConfig, DistilBertModel, EncoderDecoderConfig, EncoderDecoderModel

import seqweave as sw

PLUGIN_DIR = Path(__file__).parents[1] / "examples" / "seqweave-distilbert"


@pytest.fixture(scope="module")
def registry():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        plugin = importlib.import_module("seqweave_distilbert")
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    reg = sw.Registry(load_entry_points=False)  # seqweave's own plugins, plus this one (even if it is installed)
    reg.load_entry_points(distributions={"seqweave"})
    reg.register(plugin, "distilbert", distribution="seqweave-distilbert", version="0.1.0")
    return reg


def test_plugin_registers_an_encoder_only_architecture(registry):
    arch = registry.get("distilbert")
    assert arch.roles == ("encoder",)
    assert registry.owner("distilbert").distribution == "seqweave-distilbert"
    with pytest.raises(sw.ConfigError, match="cannot be used as decoder"):
        arch.build_module(arch.make_config(arch.tiny_config), "decoder")


def test_distilbert2bert_matches_transformers_both_ways(registry, tmp_path):
    from conftest import hf_config

    enc = DistilBertConfig(**registry.get("distilbert").tiny_config)
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(enc, hf_config("bert", "decoder", hidden_size=24,
                                                                           num_attention_heads=2),
                                                            decoder_start_token_id=2, pad_token_id=0)
    ref = randomize(EncoderDecoderModel(cfg), 3).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = sw.EncoderDecoder.from_pretrained(tmp_path / "hf", registry=registry)
    ids, mask = source_batch(99, pad=0)
    labels = torch.tensor([[5, 6, 7], [8, 9, -100], [10, -100, -100]])
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, labels=labels)
        o = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(o.logits, r.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(o.loss, r.loss, atol=1e-5, rtol=0)
    ours.save_pretrained(tmp_path / "ours")
    back = EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    assert isinstance(back.encoder, DistilBertModel)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, o.logits,
                                   atol=1e-5, rtol=0)


def test_distilbert_encoder_warm_starts_from_a_bare_checkpoint(registry, tmp_path):
    randomize(DistilBertModel(DistilBertConfig(**registry.get("distilbert").tiny_config)), 4).save_pretrained(
        tmp_path / "enc")
    from conftest import hf_config
    from transformers import BertLMHeadModel

    dec_cfg = hf_config("bert", "encoder")
    dec_cfg.is_decoder = True
    randomize(BertLMHeadModel(dec_cfg), 5).save_pretrained(tmp_path / "dec")
    model = sw.EncoderDecoder.from_pretrained_parts(tmp_path / "enc", tmp_path / "dec", decoder_start_token_id=2,
                                                    pad_token_id=0, registry=registry)
    assert not any(n.startswith("encoder.") for n in model.load_report.new)
    ref = DistilBertModel.from_pretrained(tmp_path / "enc").eval()
    ids, mask = source_batch(99, pad=0)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(ids, mask).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=0)


def test_config_errors_name_the_field(registry):
    arch = registry.get("distilbert")
    with pytest.raises(sw.ConfigError, match=r"n_heads: must divide dim \(32\) \(got 5\)"):
        arch.make_config({**arch.tiny_config, "n_heads": 5})
