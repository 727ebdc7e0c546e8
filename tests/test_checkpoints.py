"""Loading and saving checkpoints: the weight map, file formats, and errors that name the file and tensor."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import source_batch
from safetensors.torch import load_file, save_file

import seqweave as sw


def test_weight_map_round_trip_is_exact(folder):
    model = sw.EncoderDecoder.from_pretrained(folder)
    sd = load_file(str(folder / "model.safetensors"))
    wmap = model.weight_map()
    ours, missing, unexpected = wmap.from_hf(sd)
    assert not missing and not unexpected
    back = wmap.to_hf(ours)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_saved_tensors_are_exactly_the_loaded_ones(folder, tmp_path):
    model = sw.EncoderDecoder.from_pretrained(folder)
    model.save_pretrained(tmp_path / "out")
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "out/model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_config_fields_survive_a_save(copy, tmp_path):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["decoder"]["some_field_of_another_tool"] = [1, 2]
    cfg["my_top_level_note"] = "kept"
    (copy / "config.json").write_text(json.dumps(cfg))
    sw.EncoderDecoder.from_pretrained(copy).save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out/config.json").read_text())
    assert saved["decoder"]["some_field_of_another_tool"] == [1, 2]
    assert saved["my_top_level_note"] == "kept"


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(sw.CheckpointError, match="no such local folder"):
        sw.EncoderDecoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sw.CheckpointError, match=r"empty: no config.json"):
        sw.EncoderDecoder.from_pretrained(tmp_path / "empty")


def test_missing_weights_file(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(sw.CheckpointError, match=r"copy: no weights file; expected one of model.safetensors"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_wrong_shape_names_file_and_tensor(copy):
    sd = load_file(str(copy / "model.safetensors"))
    name = "decoder.bert.encoder.layer.1.intermediate.dense.weight"
    sd[name] = torch.zeros(5, 5)
    save_file(sd, str(copy / "model.safetensors"))
    with pytest.raises(sw.CheckpointError, match=rf"model.safetensors: tensor {name} has shape \[5, 5\]"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_missing_tensor_names_it(copy):
    sd = load_file(str(copy / "model.safetensors"))
    del sd["encoder.encoder.layer.0.attention.self.key.weight"]
    save_file(sd, str(copy / "model.safetensors"))
    with pytest.raises(sw.CheckpointError, match=r"model.safetensors: missing 1 tensor.*layer\.0\.attention\.self\.key"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_unexpected_tensor_names_it(copy):
    sd = load_file(str(copy / "model.safetensors"))
    sd["decoder.something.else"] = torch.zeros(1)
    save_file(sd, str(copy / "model.safetensors"))
    with pytest.raises(sw.CheckpointError, match=r"decoder\.something\.else"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_unknown_architecture_names_the_field(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["decoder"]["model_type"] = "no-such-arch"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sw.CheckpointError, match=r"config.json: decoder: model_type 'no-such-arch' is not a regis"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_invalid_config_value_names_the_field(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["encoder"]["num_attention_heads"] = 5
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sw.ConfigError, match=r"config.json: encoder: num_attention_heads: must divide hidden_size \(32\) \(got 5\)"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_single_model_folder_is_refused_with_a_hint(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20)).save_pretrained(tmp_path / "bert")
    with pytest.raises(sw.CheckpointError, match="from_pretrained_parts"):
        sw.EncoderDecoder.from_pretrained(tmp_path / "bert")


def test_corrupt_safetensors_names_the_file(copy):
    (copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(sw.CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_pickle_checkpoints_load_weights_only(copy, folder):
    sd = load_file(str(copy / "model.safetensors"))
    (copy / "model.safetensors").unlink()
    torch.save(sd, copy / "pytorch_model.bin")
    ids, mask = source_batch(99, pad=0)
    dec = torch.tensor([[2, 5, 6]] * 3)
    with torch.no_grad():
        a = sw.EncoderDecoder.from_pretrained(copy)(ids, attention_mask=mask, decoder_input_ids=dec).logits
        b = sw.EncoderDecoder.from_pretrained(folder)(ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.equal(a, b)


def test_pickle_with_code_is_refused(copy):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (copy / "model.safetensors").unlink()
    with open(copy / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(sw.CheckpointError, match=r"pytorch_model.bin: not a readable PyTorch weights file"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_safetensors_preferred_over_pickle(copy):
    torch.save({"garbage": torch.zeros(1)}, copy / "pytorch_model.bin")  # would fail if it were read
    sw.EncoderDecoder.from_pretrained(copy)


def test_sharded_safetensors(copy, folder):
    sd = load_file(str(copy / "model.safetensors"))
    (copy / "model.safetensors").unlink()
    names = sorted(sd)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(copy / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    a = sw.EncoderDecoder.from_pretrained(copy)
    b = sw.EncoderDecoder.from_pretrained(folder)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_failed_save_keeps_the_previous_checkpoint(folder, tmp_path, monkeypatch):
    model = sw.EncoderDecoder.from_pretrained(folder)
    out = tmp_path / "out"
    model.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sw.EncoderDecoder, "hf_config", broken)
    with torch.no_grad():
        model.decoder.head.proj.bias.add_(1.0)  # a different model, half-written when the save fails
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # same files, same bytes, no temporary files left behind


def test_loads_in_the_requested_dtype(folder):
    model = sw.EncoderDecoder.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_loading_does_not_copy_tied_weights(folder):
    model = sw.EncoderDecoder.from_pretrained(folder)
    assert model.decoder.head.proj.weight is model.decoder.embeddings.tokens.weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_fresh_reads_equal_the_mapped_tensors(tmp_path, dtype):
    from seqweave.checkpoint.formats import read_state_dict

    tensors = {"a": torch.arange(12).reshape(3, 4).to(dtype), "b.c": torch.ones(5).to(dtype), "empty": torch.zeros(0, 2)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    sd, _ = read_state_dict(tmp_path)
    for name, want in tensors.items():
        got = sd.fresh(name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
        assert got.data_ptr() != sd[name].data_ptr() or got.numel() == 0  # its own memory, not the map
    renamed = sd.renamed(lambda k: "x." + k)
    assert torch.equal(renamed.fresh("x.a"), tensors["a"])


def test_loading_does_not_import_torch_dynamo(folder):
    # normal_ on a meta tensor goes through torch._refs, whose first use imports torch._dynamo: about
    # 1 s of a cold start. Building on meta skips torch.nn.init (checkpoint.load.on_meta).
    import subprocess
    import sys

    code = (
        "import sys, seqweave\n"
        f"seqweave.EncoderDecoder.from_pretrained({str(folder)!r})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_on_meta_skips_init_and_restores_it():
    from seqweave.checkpoint.load import on_meta
    from torch.nn import init

    normal = init.normal_
    with on_meta():
        layer = torch.nn.Embedding(4, 3)
        assert init.normal_ is not normal
    assert init.normal_ is normal and layer.weight.is_meta
