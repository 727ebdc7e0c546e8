"""ELECTRA, a plugin written with the public kit only (tests/plugins/seqweave_electra.py), against transformers.

It proves the kit: embeddings narrower than the model (embedding_size != hidden_size)
projected by the core's Embeddings, the BERT family's public recipe, and the shipped
contract checks, as encoder and as decoder, alone and in composites both ways.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from conftest import hf_config, label_batch, source_batch
from transformers import ElectraConfig, ElectraForCausalLM, ElectraModel, EncoderDecoderConfig, EncoderDecoderModel

import seqweave as sw
from seqweave.testing import randomize, run_checks

PLUGIN_DIR = Path(__file__).parent / "plugins"
TINY = {"vocab_size": 99, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def registry() -> sw.Registry:
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        plugin = importlib.import_module("seqweave_electra")
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    reg = sw.Registry(load_entry_points=False)  # seqweave's own plugins, plus this one
    reg.load_entry_points(distributions={"seqweave"})
    reg.register(plugin, "electra")
    return reg


def test_the_plugin_imports_only_the_public_kit():
    source = (PLUGIN_DIR / "seqweave_electra.py").read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "collections.abc", "pydantic", "seqweave", "seqweave.modules", "seqweave_bert"}


def test_electra_passes_every_contract_check(registry):
    lines: list[str] = []
    results = run_checks(registry.get("electra"), registry, echo=lines.append)
    assert {r.role for r in results} == {"encoder", "decoder"}
    bad = [r.line() for r in results if r.status == "FAIL" or (r.status == "SKIP" and r.check != "causal")]
    assert not bad, "\n".join(bad)
    assert sum(r.check in ("parity", "cached_parity") and r.status == "PASS" for r in results) == 3


def test_embeddings_are_projected(registry):
    enc = registry.get("electra").build_module(registry.get("electra").make_config(TINY), "encoder")
    assert enc.hidden_size == 32 and enc.embeddings.tokens.embedding_dim == 16
    assert enc.embeddings.project.in_features == 16 and enc.embeddings.project.out_features == 32


def _composite(folder: Path, encoder_cfg, decoder_cfg, seed: int) -> EncoderDecoderModel:
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(encoder_cfg, decoder_cfg, decoder_start_token_id=2,
                                                            pad_token_id=0)
    torch.manual_seed(seed)
    ref = randomize(EncoderDecoderModel(cfg), seed).eval()
    ref.save_pretrained(folder)
    return ref


def _electra_decoder_config() -> ElectraConfig:
    return ElectraConfig(**TINY, is_decoder=True, add_cross_attention=True)


@pytest.mark.parametrize("pairing", ["electra2bert", "bert2electra", "electra2electra"])
def test_composites_match_transformers(registry, tmp_path, pairing):
    enc_name, dec_name = pairing.split("2")
    enc_cfg = ElectraConfig(**TINY) if enc_name == "electra" else hf_config("bert", "encoder")
    dec_cfg = _electra_decoder_config() if dec_name == "electra" else hf_config("bert", "decoder")
    ref = _composite(tmp_path / "hf", enc_cfg, dec_cfg, seed=3)
    ours = sw.EncoderDecoder.from_pretrained(tmp_path / "hf", registry=registry).eval()
    assert (ours.encoder.architecture, ours.decoder.architecture) == (enc_name, dec_name)
    ids, mask = source_batch(99, pad=0)
    labels = label_batch(99)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, labels=labels)
        o = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(o.logits, r.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(o.loss, r.loss, atol=1e-5, rtol=0)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=2)
    want = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, num_beams=2)
    assert torch.equal(got, want)
    ours.save_pretrained(tmp_path / "ours")
    back = EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, o.logits,
                                   atol=1e-5, rtol=0)


def test_warm_start_from_single_checkpoints(registry, tmp_path):
    """A bare ElectraModel and an ElectraForCausalLM without cross-attention warm-start a composite."""
    randomize(ElectraModel(ElectraConfig(**TINY)), 4).save_pretrained(tmp_path / "enc")
    randomize(ElectraForCausalLM(ElectraConfig(**TINY, is_decoder=True)), 5).save_pretrained(tmp_path / "dec")
    model = sw.EncoderDecoder.from_pretrained_parts(tmp_path / "enc", tmp_path / "dec", decoder_start_token_id=2,
                                                    pad_token_id=0, registry=registry)
    new = model.load_report.new
    assert not any(n.startswith("encoder.") for n in new)
    assert new and all(".cross_attn." in n or ".cross_norm." in n for n in new)
    ref = ElectraModel.from_pretrained(tmp_path / "enc").eval()
    ids, mask = source_batch(99, pad=0)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(ids, mask).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=0)
