"""seqweave.checkpoint: the readers table, one load_part for every path, LoadReport, and inspect reading it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import hf_composite, hf_config, randomize, tiny
from safetensors.torch import load_file, save_file

import seqweave as sw
from seqweave import hub
from seqweave.checkpoint.formats import WEIGHT_FORMATS, read_state_dict, weight_file_patterns
from seqweave.checkpoint.report import LoadReport
from seqweave.summary import describe, format_description

# ----------------------------------------------------------------------------------------
# The readers table


def test_hub_fetches_exactly_the_weight_files_the_table_reads():
    weight_like = re.compile(r"\.(safetensors|bin)$|\.index\.json$")
    fetched = [p for p in hub.MODEL_FILES if weight_like.search(p)]
    assert fetched == weight_file_patterns(pickle=False)
    assert hub.PICKLE_FILES == weight_file_patterns(pickle=True)
    for fmt in WEIGHT_FORMATS:
        wanted = hub.PICKLE_FILES if fmt.pickle else hub.MODEL_FILES
        assert fmt.name in wanted and (fmt.shards is None or fmt.shards in wanted), fmt.name
    assert WEIGHT_FORMATS[0].name == "model.safetensors"  # safetensors first
    assert all(f.pickle for f in WEIGHT_FORMATS[2:]) and not any(f.pickle for f in WEIGHT_FORMATS[:2])


def _write(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as the weight file ``name`` (an index splits them over two shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    pickle = ".bin" in name
    one = (lambda sd, p: torch.save(sd, p)) if pickle else (lambda sd, p: save_file(sd, str(p)))
    if not name.endswith(".index.json"):
        one(tensors, folder / name)
        return
    names = sorted(tensors)
    shard = "pytorch_model-{}-of-00002.bin" if pickle else "model-{}-of-00002.safetensors"
    weight_map = {}
    for i, chunk in enumerate((names[:1], names[1:]), 1):
        file = shard.format(f"{i:05d}")
        one({k: tensors[k] for k in chunk}, folder / file)
        weight_map.update(dict.fromkeys(chunk, file))
    (folder / name).write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS, ids=lambda f: f.name)
def test_every_format_in_the_table_reads_back(tmp_path, fmt):
    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(4)}
    _write(tmp_path, fmt.name, tensors)
    sd, source = read_state_dict(tmp_path)
    assert source == tmp_path / fmt.name
    assert sd.keys() == tensors.keys() and all(torch.equal(sd[k], v) for k, v in tensors.items())


def test_safetensors_win_over_pickles(tmp_path):
    _write(tmp_path, "pytorch_model.bin", {"x": torch.zeros(1)})
    _write(tmp_path, "model.safetensors", {"x": torch.ones(1)})
    sd, source = read_state_dict(tmp_path)
    assert source.name == "model.safetensors" and sd["x"].item() == 1


# ----------------------------------------------------------------------------------------
# One load_part: the same errors for a composite's part and a single-model part


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A transformers bert2bert composite, and its decoder saved alone as a BERT LM-head checkpoint."""
    from transformers import BertLMHeadModel

    root = tmp_path_factory.mktemp("pair")
    hf = hf_composite(root / "composite")
    dec_cfg = hf_config("bert", "decoder")
    single = BertLMHeadModel(dec_cfg)
    single.load_state_dict(hf.decoder.state_dict())
    single.save_pretrained(root / "dec")
    BertLMHeadModel(hf_config("bert", "encoder")).bert.save_pretrained(root / "enc")
    return root


def _error(load) -> str:
    with pytest.raises(sw.CheckpointError) as e:
        load()
    return str(e.value)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda sd, name: sd.pop(name), id="missing"),
        pytest.param(lambda sd, name: sd.__setitem__(name, torch.zeros(5, 5)), id="misshapen"),
    ],
)
def test_a_part_fails_alike_in_a_composite_and_alone(pair, tmp_path, edit):
    tensor = "bert.encoder.layer.0.intermediate.dense.weight"
    errors = {}
    for kind, folder, prefix in (("composite", "composite", "decoder."), ("parts", "dec", "")):
        copy = tmp_path / kind
        shutil.copytree(pair / folder, copy)
        sd = load_file(str(copy / "model.safetensors"))
        edit(sd, prefix + tensor)
        save_file(sd, str(copy / "model.safetensors"))
        if kind == "composite":
            message = _error(lambda copy=copy: sw.EncoderDecoder.from_pretrained(copy))
        else:
            message = _error(lambda copy=copy: sw.EncoderDecoder.from_pretrained_parts(
                pair / "enc", copy, decoder_start_token_id=2, pad_token_id=0))
        assert message.startswith(f"{copy / 'model.safetensors'}: ") and prefix + tensor in message
        errors[kind] = message.replace(str(copy), "FILE").replace(prefix + tensor, "TENSOR")
    assert errors["composite"] == errors["parts"]
    assert "a bert decoder" in errors["parts"] or "has shape [5, 5]" in errors["parts"]


def test_a_composite_tensor_outside_every_part_is_named(pair, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(pair / "composite", copy)
    sd = load_file(str(copy / "model.safetensors"))
    sd["lm_head.weight"] = torch.zeros(1)
    save_file(sd, str(copy / "model.safetensors"))
    message = _error(lambda: sw.EncoderDecoder.from_pretrained(copy))
    assert message == (f"{copy / 'model.safetensors'}: 1 tensor(s) that a bert2bert model with this config.json "
                       "does not have, e.g. lm_head.weight")


# ----------------------------------------------------------------------------------------
# LoadReport


def test_report_of_a_transformers_composite(pair, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(pair / "composite", copy)
    sd = load_file(str(copy / "model.safetensors"))
    sd["encoder.embeddings.position_ids"] = torch.arange(4)[None]  # a buffer old checkpoints saved
    save_file(sd, str(copy / "model.safetensors"))
    report = sw.EncoderDecoder.from_pretrained(copy).load_report
    assert report.new == [] and report.unused == [] and report.tied == []
    assert report.ignored == ["encoder:encoder.embeddings.position_ids"]
    assert report.sources == {"model": str(copy / "model.safetensors")}


def test_report_of_a_warm_start_matches_what_transformers_creates_and_drops(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, BertForPreTraining, BertLMHeadModel

    torch.manual_seed(0)
    randomize(BertForPreTraining(hf_config("bert", "encoder")), 1).save_pretrained(tmp_path / "enc")
    lm_cfg = hf_config("bert", "encoder", hidden_size=24, num_attention_heads=2)
    lm_cfg.is_decoder = True
    randomize(BertLMHeadModel(lm_cfg), 2).save_pretrained(tmp_path / "dec")
    model = sw.EncoderDecoder.from_pretrained_parts(tmp_path / "enc", tmp_path / "dec", decoder_start_token_id=2,
                                                    pad_token_id=0)
    report = model.load_report
    _, enc_info = AutoModel.from_pretrained(tmp_path / "enc", output_loading_info=True)
    _, dec_info = AutoModelForCausalLM.from_pretrained(tmp_path / "dec", output_loading_info=True, is_decoder=True,
                                                       add_cross_attention=True)
    wmap = model.weight_map()
    new_as_hf = {h for n in report.new for h in wmap.hf_names(n)}
    assert new_as_hf == {f"decoder.{k}" for k in dec_info["missing_keys"]} | {"enc_to_dec_proj.weight",
                                                                              "enc_to_dec_proj.bias"}
    assert {k.split(":", 1)[1] for k in report.ignored if k.startswith("encoder:")} == set(
        enc_info["unexpected_keys"]
    )  # the pre-training heads, dropped by the BERT map's ignore patterns as transformers drops them
    assert report.unused == [] and report.tied == []
    assert report.sources == {role: str(tmp_path / role[:3] / "model.safetensors") for role in ("encoder", "decoder")}


def test_report_of_a_transformers_4_tied_file_names_the_tied_tensors(tmp_path):
    model = sw.EncoderDecoder(sw.build_encoder("bert", **tiny("bert")), sw.build_decoder("bert", **tiny("bert")),
                              decoder_start_token_id=2, pad_token_id=0, tie_encoder_decoder=True)
    assert model.load_report.tied == [f"encoder.{n}" for n in model.tied_parameters]  # built directly
    model.save_pretrained(tmp_path)
    wmap = model.weight_map()
    sd = load_file(str(tmp_path / "model.safetensors"))
    for name in model.tied_parameters:  # transformers 4.x saved only the decoder's copy
        for h in wmap.hf_names(f"encoder.{name}"):
            del sd[h]
    save_file(sd, str(tmp_path / "model.safetensors"))
    loaded = sw.EncoderDecoder.from_pretrained(tmp_path)
    report = loaded.load_report
    assert report.tied == [f"encoder.{n}" for n in model.tied_parameters] and report.tied
    assert report.new == []
    assert loaded.encoder.layers[0].self_attn.qkv_proj.weight is loaded.decoder.layers[0].self_attn.qkv_proj.weight
    torch.testing.assert_close(loaded.encoder.layers[0].self_attn.qkv_proj.weight,
                               model.decoder.layers[0].self_attn.qkv_proj.weight, atol=0, rtol=0)


def test_a_model_built_from_scratch_reports_every_tensor_new():
    enc = sw.build_encoder("bert", **tiny("bert", hidden_size=48))
    dec = sw.build_decoder("gpt2", **tiny("gpt2"))
    model = sw.EncoderDecoder(enc, dec)
    names = [n for n, _ in model.named_parameters()]
    assert model.load_report.new == names and model.enc_to_dec_proj is not None
    assert model.load_report.sources == {}
    composed = sw.EncoderDecoder.from_config(
        {"encoder": {"architecture": "bert", "config": tiny("bert")},
         "decoder": {"architecture": "gpt2", "config": tiny("gpt2")}}
    )
    assert sorted(composed.load_report.new) == sorted(n for n, _ in composed.named_parameters())


# ----------------------------------------------------------------------------------------
# inspect reads the report


def test_inspect_shows_what_the_report_says():
    model = sw.EncoderDecoder(sw.build_encoder("bert", **tiny("bert")), sw.build_decoder("bert", **tiny("bert")))
    names = [n for n, _ in model.named_parameters()]
    cross = [n for n in names if ".cross_attn." in n]
    # a report naming only the cross-attention new, with no encoder source: describe must not guess
    model.load_report = LoadReport(new=cross, sources={"decoder": "dec/model.safetensors"},
                                   ignored=["encoder:cls.predictions.bias"], tied=[])
    d = describe(model)
    assert d["new"] == cross and len(d["pretrained"]) == len(names) - len(cross)
    assert d["ignored_checkpoint_tensors"] == ["encoder:cls.predictions.bias"]
    text = format_description(d)
    assert f"new          {len(cross)}/{len(names)} tensors" in text
    assert "decoder.layers.{0-1}.cross_attn.q_proj.weight" in text or "cross_attn" in text
    assert "ignored      encoder:cls.predictions.bias" in text
    scratch = format_description(describe(sw.EncoderDecoder(sw.build_encoder("bert", **tiny("bert")),
                                                            sw.build_decoder("bert", **tiny("bert")))))
    assert f"new          {len(names)}/{len(names)} tensors" in scratch and "encoder (all" in scratch
