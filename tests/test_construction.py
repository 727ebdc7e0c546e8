"""Construction and loading under transformers' names and keyword arguments, against transformers."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import hf_composite, hf_config, label_batch, source_batch
from transformers import EncoderDecoderConfig, EncoderDecoderModel

import seqweave as sw
from seqweave import EncoderDecoder as EncoderDecoderModelSW


def _copy_from_hf(ours, ref):
    """Load transformers' tensors into ours (tied copies are filled through the tensor they share)."""
    result = ours.load_state_dict(ours.weight_map().from_hf(ref)[0], strict=False)
    assert not result.unexpected_keys
    assert all(ours.get_parameter(k) is ours.decoder.embeddings.tokens.weight for k in result.missing_keys)


def _logits(model, ids, mask, labels):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=labels).logits


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("composite")
    return folder, hf_composite(folder, "bert", "gpt2")


def test_from_encoder_decoder_pretrained_matches_transformers(singles, tmp_path):
    kw = {"decoder_num_hidden_layers": 1, "encoder_hidden_dropout_prob": 0.0}
    ours = EncoderDecoderModelSW.from_encoder_decoder_pretrained(
        str(singles / "enc"), str(singles / "lm"), decoder_start_token_id=2, pad_token_id=0, **kw)
    theirs = EncoderDecoderModel.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"), **kw)
    assert ours.decoder.num_layers == 1 and ours.decoder_start_token_id == 2 and ours.pad_token_id == 0
    mine, ref = ours.weight_map().to_hf(ours.state_dict()), theirs.state_dict()
    new = {h for n in ours.load_report.new for h in ours.weight_map().hf_names(n)}
    # the same tensors are new on both sides; the loaded ones are equal
    for name, t in mine.items():
        assert name in ref, name
        if name not in new:
            assert torch.equal(t, ref[name]), name
    assert {n for n in new if n.startswith("decoder.")} == {
        n for n in ref if n.startswith("decoder.") and ".crossattention." in n}
    # after copying transformers' values of the new tensors, the logits are equal
    theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 2, 0
    _copy_from_hf(ours, {k: ref[k] for k in mine})
    ids, mask = source_batch(ours.encoder.config.vocab_size, 0)
    labels = label_batch(ours.decoder.vocab_size)
    torch.testing.assert_close(_logits(ours, ids, mask, labels), _logits(theirs.eval(), ids, mask, labels),
                               rtol=0, atol=1e-5)


def test_from_encoder_decoder_pretrained_ignores_role_flags_as_transformers(singles, caplog):
    kw = {"decoder_is_decoder": True, "decoder_add_cross_attention": True, "encoder_add_cross_attention": True}
    with caplog.at_level(logging.INFO, logger="seqweave"):
        ours = EncoderDecoderModelSW.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"), **kw)
    EncoderDecoderModel.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"), **kw)
    assert ours.decoder.num_layers == 2
    assert any("decoder_add_cross_attention" in r.getMessage() for r in caplog.records)


def test_from_encoder_decoder_pretrained_errors(singles):
    with pytest.raises(sw.ConfigError, match="decoder_pretrained_model_name_or_path"):
        EncoderDecoderModelSW.from_encoder_decoder_pretrained(str(singles / "enc"))
    with pytest.raises(sw.ConfigError, match="positional"):
        EncoderDecoderModelSW.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"), 3)
    with pytest.raises(sw.ConfigError, match="encoder_model"):
        EncoderDecoderModelSW.from_encoder_decoder_pretrained(None, str(singles / "lm"), encoder_model=object())
    with pytest.raises(sw.SeqweaveError, match="no_such_field"):
        EncoderDecoderModelSW.from_encoder_decoder_pretrained(str(singles / "enc"), str(singles / "lm"),
                                                             decoder_no_such_field=1)


def _same_structure(ours, theirs):
    mine = ours.weight_map().to_hf(ours.state_dict())
    ref = {k: v for k, v in theirs.state_dict().items() if not k.endswith("position_ids")}
    # transformers lists a tied head under its own name too; we save it once
    tied = {k for k, v in ref.items() if k not in mine and any(v.data_ptr() == w.data_ptr() for j, w in ref.items()
                                                              if j != k)}
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in ref.items() if k not in tied}
    return mine, ref


@pytest.mark.parametrize("as_dict", [False, True])
def test_from_config_takes_an_encoder_decoder_config(as_dict):
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(
        hf_config("bert", "encoder"), hf_config("gpt2", "decoder", n_embd=48), decoder_start_token_id=2,
        pad_token_id=0)
    ours = EncoderDecoderModelSW.from_config(cfg.to_dict() if as_dict else cfg)
    theirs = EncoderDecoderModel(config=cfg).eval()
    assert ours.training and ours.decoder_start_token_id == 2 and ours.pad_token_id == 0
    assert ours.enc_to_dec_proj is not None
    _, ref = _same_structure(ours, theirs)
    assert ours.num_parameters() == theirs.num_parameters()
    _copy_from_hf(ours, ref)
    ours.eval()
    ids, mask = source_batch(ours.encoder.config.vocab_size, 0)
    labels = label_batch(ours.decoder.vocab_size)
    torch.testing.assert_close(_logits(ours, ids, mask, labels), _logits(theirs, ids, mask, labels), rtol=0, atol=1e-5)
    # the random initialisation follows the config's initializer_range
    std = ours.decoder.layers[0].cross_attn.q_proj.weight.std().item()
    assert 0.01 < std < 0.03


def test_from_config_keeps_unused_fields_for_save(tmp_path):
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(hf_config("bert", "encoder"), hf_config("bert", "decoder"))
    cfg.some_top_field = "kept"
    ours = EncoderDecoderModelSW.from_config(cfg)
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["some_top_field"] == "kept"
    EncoderDecoderModel.from_pretrained(tmp_path)  # transformers loads what we built from its config


def test_from_pretrained_keywords(composite, caplog):
    folder, theirs = composite
    plain = EncoderDecoderModelSW.from_pretrained(folder)
    assert plain.dtype == torch.float32 and plain.device == torch.device("cpu")
    for kw in ({"torch_dtype": torch.float16}, {"dtype": "float16"}, {"torch_dtype": "torch.float16"}):
        assert EncoderDecoderModelSW.from_pretrained(folder, **kw).dtype == torch.float16
    assert EncoderDecoderModelSW.from_pretrained(folder, torch_dtype="auto").dtype == torch.float32
    for dm in ("cpu", torch.device("cpu"), {"": "cpu"}, {"encoder": "cpu", "decoder": "cpu"}):
        assert EncoderDecoderModelSW.from_pretrained(folder, device_map=dm).device == torch.device("cpu")
    auto = EncoderDecoderModelSW.from_pretrained(folder, device_map="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for attn in ("sdpa", "eager"):
        m = EncoderDecoderModelSW.from_pretrained(folder, attn_implementation=attn)
        assert m.attn_implementation == attn
    with caplog.at_level(logging.INFO, logger="seqweave"):
        EncoderDecoderModelSW.from_pretrained(folder, attn_implementation="flash_attention_2", low_cpu_mem_usage=True)
    assert any("scaled_dot_product_attention" in r.getMessage() for r in caplog.records)
    assert any("low_cpu_mem_usage" in r.getMessage() for r in caplog.records)
    # a top-level config field, set as transformers sets it from a keyword argument
    assert EncoderDecoderModelSW.from_pretrained(folder, decoder_start_token_id=5).decoder_start_token_id == 5
    # the Hub arguments reach huggingface_hub: a local folder never needs them
    EncoderDecoderModelSW.from_pretrained(folder, local_files_only=True, cache_dir=str(folder), token=False)
    ids, mask = source_batch(plain.encoder.config.vocab_size, 0)
    labels = label_batch(plain.decoder.vocab_size)
    torch.testing.assert_close(_logits(plain, ids, mask, labels), _logits(theirs, ids, mask, labels), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device_map": {"encoder": "cpu", "decoder": "cuda:0"}}, "several|2 devices"),
        ({"device_map": {"encoder": "cpu", "decoder": "disk"}}, "device"),
        ({"device_map": "balanced"}, "one device"),
        ({"device_map": "nowhere"}, "not a device"),
        ({"device_map": "cpu", "device": "meta"}, "disagree"),
        ({"attn_implementation": "magic"}, "attn_implementation='magic'"),
        ({"torch_dtype": "int8"}, "torch_dtype"),
        ({"torch_dtype": torch.float16, "dtype": torch.bfloat16}, "disagree"),
        ({"output_attentions": True}, "output_attentions"),
    ],
)
def test_from_pretrained_refuses_with_the_argument_named(composite, kwargs, match):
    with pytest.raises(sw.ConfigError, match=match):
        EncoderDecoderModelSW.from_pretrained(composite[0], **kwargs)


def test_local_files_only_for_a_hub_id_not_cached(tmp_path):
    with pytest.raises(sw.CheckpointError, match="local_files_only"):
        EncoderDecoderModelSW.from_pretrained("someone/not-cached", local_files_only=True, cache_dir=tmp_path)


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_save_loads_in_transformers_and_here(composite, tmp_path, safe):
    folder, theirs = composite
    ours = EncoderDecoderModelSW.from_pretrained(folder)
    ours.save_pretrained(tmp_path, max_shard_size="20KB", safe_serialization=safe)
    ext, stem = ("safetensors", "model") if safe else ("bin", "pytorch_model")
    shards = sorted(p.name for p in tmp_path.glob(f"{stem}-*-of-*.{ext}"))
    assert len(shards) > 1 and shards[0] == f"{stem}-00001-of-{len(shards):05d}.{ext}"
    index = json.loads((tmp_path / f"{stem}.{ext}.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_parameters"] == ours.num_parameters()
    assert not (tmp_path / f"{stem}.{ext}").exists()
    ids, mask = source_batch(ours.encoder.config.vocab_size, 0)
    labels = label_batch(ours.decoder.vocab_size)
    want = _logits(theirs, ids, mask, labels)
    torch.testing.assert_close(_logits(EncoderDecoderModel.from_pretrained(tmp_path).eval(), ids, mask, labels),
                               want, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(EncoderDecoderModelSW.from_pretrained(tmp_path), ids, mask, labels),
                               want, rtol=0, atol=1e-5)


def test_transformers_sharded_save_loads_here(composite, tmp_path):
    theirs = composite[1]
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = EncoderDecoderModelSW.from_pretrained(tmp_path)
    ids, mask = source_batch(ours.encoder.config.vocab_size, 0)
    labels = label_batch(ours.decoder.vocab_size)
    torch.testing.assert_close(_logits(ours, ids, mask, labels), _logits(theirs, ids, mask, labels), rtol=0, atol=1e-5)


def test_a_new_save_replaces_the_weights_of_an_earlier_one(composite, tmp_path):
    ours = EncoderDecoderModelSW.from_pretrained(composite[0])
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    ours.save_pretrained(tmp_path, safe_serialization=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert "pytorch_model.bin" in names
    assert not any(n.startswith("model") for n in names), names  # no shard or index left to shadow the new file
    ids, mask = source_batch(ours.encoder.config.vocab_size, 0)
    labels = label_batch(ours.decoder.vocab_size)
    want = _logits(ours, ids, mask, labels)
    for loaded in (EncoderDecoderModel.from_pretrained(tmp_path).eval(), EncoderDecoderModelSW.from_pretrained(tmp_path)):
        torch.testing.assert_close(_logits(loaded, ids, mask, labels), want, rtol=0, atol=1e-5)
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json", "generation_config.json"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_pretrained_trainer_arguments(composite, tmp_path):
    ours = EncoderDecoderModelSW.from_pretrained(composite[0])
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in ours.state_dict().items()}
    ours.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()
    ours.save_pretrained(tmp_path / "sd", state_dict=sd, push_to_hub=False)
    again = EncoderDecoderModelSW.from_pretrained(tmp_path / "sd")
    name = "decoder.layers.0.ffn.fc1.weight" if "decoder.layers.0.ffn.fc1.weight" in sd else next(iter(sd))
    assert torch.equal(again.state_dict()[name], sd[name])
    with pytest.raises(sw.ConfigError, match="push_to_hub"):
        ours.save_pretrained(tmp_path / "x", push_to_hub=True)
    with pytest.raises(sw.ConfigError, match="nonsense"):
        ours.save_pretrained(tmp_path / "x", nonsense=1)
    with pytest.raises(sw.ConfigError, match="max_shard_size"):
        ours.save_pretrained(tmp_path / "x", max_shard_size="lots")


def test_hub_arguments_reach_huggingface_hub(composite, singles, monkeypatch, tmp_path):
    from seqweave import hub

    seen = []
    folders = {"org/model": composite[0], "org/enc": singles / "enc", "org/dec": singles / "lm"}

    def fake_download(name, revision, patterns, **kw):
        seen.append((name, revision, kw))
        return folders[name]

    monkeypatch.setattr(hub, "_download", fake_download)
    EncoderDecoderModelSW.from_pretrained("org/model", "v1", cache_dir=tmp_path, token="hf_x", local_files_only=True)
    assert seen == [("org/model", "v1", {"local_files_only": True, "cache_dir": str(tmp_path), "token": "hf_x"})]
    seen.clear()
    EncoderDecoderModelSW.from_encoder_decoder_pretrained("org/enc", "org/dec", encoder_revision="r1",
                                                         decoder_token="t2", cache_dir=tmp_path)
    assert [(n, r, kw.get("token"), kw.get("cache_dir")) for n, r, kw in seen] == [
        ("org/enc", "r1", None, str(tmp_path)), ("org/dec", None, "t2", str(tmp_path))]
