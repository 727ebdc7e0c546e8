"""examples/configs/: every config validates against the schema and load_config; tiny ones build offline."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import seqweave as sw
import yaml
from seqweave.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
ALL = sorted(CONFIGS.glob("*.yaml"))
TINY = [p for p in ALL if p.name.startswith("tiny-")]
PAIRS = ("bert2bert", "bert2gpt2", "roberta2roberta", "roberta2gpt2", "bert-generation2bert-generation",
         "xlm-roberta2xlm-roberta", "camembert2camembert")


@pytest.fixture(autouse=True, scope="module")
def _bert_generation_registered():
    """The default registry as the installed project has it: with the bert-generation built-in.

    Installed metadata older than the plugin lacks its entry point; it is registered here as
    the entry point would (the state every test must handle after a reinstall anyway).
    """
    registry = sw.default_registry()
    if "bert-generation" not in registry:
        import seqweave_bert_generation

        registry.register(seqweave_bert_generation, "bert-generation", distribution="seqweave", version=sw.__version__)


def test_every_pairing_has_a_real_and_a_tiny_config():
    assert {p.stem for p in ALL} == {*PAIRS, *(f"tiny-{p}" for p in PAIRS)}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_example_validates_against_the_printed_schema(path, capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    errors = [
        f"{e.json_path}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text()))
    ]
    assert errors == []
    sw.load_config(path)  # and the checks across fields that JSON Schema cannot express


@pytest.mark.parametrize("path", [p for p in ALL if p not in TINY], ids=lambda p: p.stem)
def test_real_configs_name_hub_checkpoints_and_their_token_ids(path):
    cfg = sw.load_config(path)
    hub_ids = {
        "bert": "google-bert/bert-base-uncased",
        "gpt2": "openai-community/gpt2",
        "roberta": "FacebookAI/roberta-base",
        "bert-generation": "google/bert_for_seq_generation_L-24_bbc_encoder",
        "xlm-roberta": "FacebookAI/xlm-roberta-base",
        "camembert": "almanach/camembert-base",
    }
    assert cfg.encoder.pretrained == hub_ids[cfg.encoder.architecture]
    assert cfg.decoder.pretrained == hub_ids[cfg.decoder.architecture]
    ids = (cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id)
    special = {"bert": (101, 0, 102), "roberta": (0, 1, 2), "gpt2": (50256, 50256, 50256),
               "bert-generation": (2, 0, 1), "xlm-roberta": (0, 1, 2), "camembert": (0, 1, 2)}
    assert ids == special[cfg.decoder.architecture]
    assert cfg.tokenizer == cfg.encoder.pretrained
    if cfg.decoder.pretrained != cfg.encoder.pretrained:
        assert cfg.decoder_tokenizer == cfg.decoder.pretrained


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_builds_generates_and_inspects_offline(path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "some text", "hello world", "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert main(["inspect", str(out)]) == 0
    report = capsys.readouterr().out
    assert report.startswith(f"model        {path.stem.removeprefix('tiny-')} from {out}")
    cfg = sw.load_config(path)
    # The folder is self-contained: the same text from the folder as from the config it was built from.
    model = sw.EncoderDecoder.from_pretrained(out)
    assert sw.pipeline(model)("some text", max_new_tokens=4) == sw.pipeline(out)(
        "some text", max_new_tokens=4
    )
    tokenizer = sw.load_tokenizer(cfg.decoder_tokenizer or cfg.tokenizer)
    assert tokenizer.vocab_size == model.decoder.vocab_size
