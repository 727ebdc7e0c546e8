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


def test_demo_trains_through_seqweave_train_and_keeps_the_run(tmp_path, monkeypatch):
    import seqweave as sw
    from seqweave.demo import run_demo

    calls = []
    real_train = sw.train
    monkeypatch.setattr(sw, "train", lambda *a, **k: calls.append((a, k)) or real_train(*a, **k))
    lines: list[str] = []
    report = run_demo(steps=200, seed=1, output=tmp_path / "run", echo=lines.append)
    assert len(calls) == 1 and calls[0][0][0] == demo_config_path()
    assert "train.max_steps=200" in calls[0][1]["overrides"] and "train.seed=1" in calls[0][1]["overrides"]
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "loss" in m] == list(range(1, 201))
    assert report.loss_before == logged[0]["loss"] and report.loss_after < report.loss_before / 4
    assert report.eval_loss == logged[-1]["eval_loss"]
    # exact match is counted over the held-out pairs only, from what the reloaded folder generated
    held_out = report.outputs[2:]
    assert [(s, t) for s, t, _ in held_out] == demo_data()["eval"]
    assert report.exact_match == sum(got == want for _, want, got in held_out) / N_EVAL
    assert f"exact match  {round(report.exact_match * N_EVAL)}/{N_EVAL} held-out pairs" in "\n".join(lines)


def test_demo_into_a_non_empty_folder_is_a_clean_error(tmp_path, capsys):
    from seqweave.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not empty" in err and "--resume" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
