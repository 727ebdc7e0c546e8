"""``seqweave demo``'s task data: files shipped in the package, generated deterministically."""

from __future__ import annotations

import json

from seqweave.demo import N_EVAL, N_TRAIN, demo_config_path, demo_data, write_demo_data


def test_shipped_data_files_are_what_demo_data_generates(tmp_path):
    write_demo_data(tmp_path)
    shipped = demo_config_path().parent
    for split in ("train", "eval"):
        name = f"demo_{split}.jsonl"
        assert (shipped / name).read_bytes() == (tmp_path / name).read_bytes(), f"regenerate {name}"


def test_eval_pairs_are_held_out_and_reversed():
    data = demo_data()
    assert len(data["train"]) == N_TRAIN and len(data["eval"]) == N_EVAL
    train_sources = {s for s, _ in data["train"]}
    assert not train_sources & {s for s, _ in data["eval"]}
    assert len(train_sources) == N_TRAIN  # distinct
    for s, t in data["train"] + data["eval"]:
        assert t.split() == s.split()[::-1] and 3 <= len(s.split()) <= 5
    first = json.loads((demo_config_path().parent / "demo_eval.jsonl").read_text().splitlines()[0])
    assert first == {"source": data["eval"][0][0], "target": data["eval"][0][1]}
