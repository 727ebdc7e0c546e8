"""transformers' spellings that only the reference's examples and trainers use: the constructor's ``config=``,
``from_pretrained(config=)``, ``pipeline(task, model=...)``, ``model.generation_config`` and tied state dicts."""

from __future__ import annotations

import pytest
import seqweave as sw
import torch
from conftest import hf_composite, source_batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert2bert")
    hf_composite(path, "bert", "bert")
    return path


def test_constructor_config_builds_the_parts_transformers_builds(folder):
    from transformers import EncoderDecoderConfig, EncoderDecoderModel

    config = EncoderDecoderConfig.from_pretrained(folder)
    ours = sw.EncoderDecoder(config=config)
    theirs = EncoderDecoderModel(config=config)
    assert {n: tuple(p.shape) for n, p in ours.weight_map().to_hf(ours.state_dict()).items()} == {
        n: tuple(t.shape) for n, t in theirs.state_dict().items() if n in ours.weight_map().to_hf(ours.state_dict())
    }
    assert ours.decoder_start_token_id == config.decoder_start_token_id and ours.pad_token_id == config.pad_token_id
    assert sw.EncoderDecoder(config=config.to_dict()).num_parameters() == ours.num_parameters()
    with pytest.raises(sw.ConfigError, match="either config or encoder and decoder"):
        sw.EncoderDecoder(ours.encoder, ours.decoder, config=config)
    with pytest.raises(sw.ConfigError, match="EncoderDecoderConfig"):
        sw.EncoderDecoder(config={"model_type": "bert"})
    with pytest.raises(sw.ConfigError, match="needs an encoder and a decoder"):
        sw.EncoderDecoder()


def test_from_pretrained_config_replaces_config_json(folder):
    model = sw.EncoderDecoder.from_pretrained(folder)
    config = model.config.to_dict()
    config["decoder_start_token_id"] = 7
    again = sw.EncoderDecoder.from_pretrained(folder, config=config)
    assert again.decoder_start_token_id == 7 and model.decoder_start_token_id != 7
    ids, mask = source_batch(99, 0)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, decoder_input_ids=ids[:, :3]).logits,
                                   model(ids, mask, decoder_input_ids=ids[:, :3]).logits, atol=0, rtol=0)
    with pytest.raises(sw.ConfigError, match="config must be"):
        sw.EncoderDecoder.from_pretrained(folder, config=3)


def test_generation_config_is_a_live_view(folder):
    model = sw.EncoderDecoder.from_pretrained(folder)
    view = model.generation_config
    assert view.max_length == 20 and view.num_beams == 1  # transformers' GenerationConfig reads 20 when unset
    view.num_beams = 3
    assert model.generation_settings.num_beams == 3
    assert view.update(defaults_only=True, num_beams=5, max_length=9, foo=1) == {"foo": 1}  # only unset ones
    assert (model.generation_settings.num_beams, model.generation_settings.max_length) == (3, 9)
    model.generation_config = {"max_new_tokens": 4}
    assert model.generation_settings.max_new_tokens == 4 and model.generation_settings.num_beams == 1
    with pytest.raises(sw.ConfigError, match="not a generation option"):
        view.foo = 1


def test_generate_takes_and_ignores_labels_and_synced_gpus(folder):
    model = sw.EncoderDecoder.from_pretrained(folder)
    ids, mask = source_batch(99, 0)
    plain = model.generate(ids, mask, max_new_tokens=3)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=3, labels=ids, synced_gpus=False), plain)


def test_pipeline_task_spelling(folder, tmp_path):
    import shutil
    from pathlib import Path

    model_dir = tmp_path / "model"
    shutil.copytree(folder, model_dir)
    shutil.copy(Path(__file__).parents[1] / "examples" / "tokenizers" / "tiny-wordpiece" / "vocab.txt", model_dir)
    plain = sw.pipeline(model_dir)("the cat sat", max_new_tokens=4)
    summarizer = sw.pipeline("summarization", model=str(model_dir), device=-1)
    assert summarizer("the cat sat", max_new_tokens=4) == [{"summary_text": plain}]
    assert sw.pipeline("translation_en_to_de", model=model_dir)(["the cat sat"], max_new_tokens=4) == [
        {"translation_text": plain}
    ]
    with pytest.raises(sw.ConfigError, match="not a text-to-text task"):
        sw.pipeline("fill-mask", model=model_dir)
    with pytest.raises(sw.ConfigError, match="first argument is the task"):
        sw.pipeline(3, model=model_dir)


def test_state_dict_entries_share_no_memory(folder):
    from safetensors.torch import load_file, save_file

    model = sw.EncoderDecoder.from_pretrained(folder)
    sd = model.state_dict()
    pointers = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(pointers) == len(set(pointers))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.state_dict(keep_vars=True).values())
    assert model.decoder.head.proj.weight is model.decoder.embeddings.tokens.weight  # still tied in the model
    save_file(sd, str(folder / "plain.safetensors"))
    assert set(load_file(str(folder / "plain.safetensors"))) == set(sd)
