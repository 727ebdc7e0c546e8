"""``seqweave train``: the train: block, the data, the loop, RUN_DIR, exact resume (issue 11)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import seqweave as sw
import torch
import yaml
from seqweave.cli import main
from seqweave.demo import demo_config_path
from seqweave.pipeline import resolve_tokenizers
from seqweave.training import data as D
from seqweave.training import loop

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = demo_config_path().parent / "demo_tokenizer"
WORDS = [w for w in (TOKENIZER / "vocab.txt").read_text().split() if not w.startswith("[")]


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models are all per-op overhead: one thread is faster, and the same on every machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reversal_pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 4))
        out.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def composition(**train) -> dict:
    cfg = yaml.safe_load(demo_config_path().read_text())
    cfg["tokenizer"] = str(TOKENIZER)
    cfg["train"] = {
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "max_steps": 6,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "log_every": 1,
        **train,
    }
    return cfg


@pytest.fixture
def project(tmp_path):
    """A folder with train.jsonl, eval.jsonl and a config writer: ``project(**train) -> config path``."""
    write_jsonl(tmp_path / "train.jsonl", reversal_pairs(64, 0))
    write_jsonl(tmp_path / "eval.jsonl", reversal_pairs(12, 1))

    def make(name: str = "config.yaml", **train) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(composition(**train)))
        return path

    return make


def losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


# ----------------------------------------------------------------------------------------
# A run and what it leaves


def test_a_run_from_a_yaml_config_writes_model_metrics_checkpoints(project, tmp_path, capsys):
    config = project(max_steps=6, save_every=2, keep_checkpoints=2, eval_every=3, log_every=2)
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run), "train.batch_size=8"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    assert {p.name for p in (run / "model").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
    }
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-6"]  # pruned to 2
    step = run / "checkpoints" / "step-6"
    state = json.loads((step / "trainer_state.json").read_text())
    assert (state["step"], state["pairs_consumed"], state["world_size"]) == (6, 48, 1)
    assert (step / "rng" / "rank-0.safetensors").is_file() and any((step / "state").iterdir())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in logged] == [2, 4, 6]
    assert all({"loss", "lr", "tokens_per_s", "epoch"} <= m.keys() for m in logged)
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6]
    assert logged[-1]["epoch"] == 6 * 8 / 64
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["data"]["train"] == str(tmp_path / "train.jsonl")  # resolved against the file
    assert sw.load_config(run / "config.yaml").train.max_steps == 6


def test_the_model_folder_loads_in_seqweave_and_transformers_with_the_same_logits(project, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    result = sw.train(project(max_steps=2), tmp_path / "run")
    ours = sw.EncoderDecoder.from_pretrained(result.model_dir).eval()
    theirs = transformers.EncoderDecoderModel.from_pretrained(result.model_dir).eval()
    pipe = sw.pipeline(result.model_dir)  # the tokenizer is in the folder
    ids, mask = pipe.tokenizer.encode(["red cat big", "a b"])
    labels = torch.tensor([[5, 6, 3], [7, 3, -100]])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    expected = pipe(["red cat big"])
    assert (
        main(["generate", str(result.model_dir), "red cat big"]) == 0
    )  # seqweave generate, the folder alone
    assert capsys.readouterr().out.splitlines() == expected


def test_loss_goes_down_on_a_learnable_task(tmp_path):
    # every source maps to its first word: learnable in a few dozen steps
    rows = [{"source": r["source"], "target": r["source"].split()[0]} for r in reversal_pairs(128, 3)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = composition(max_steps=80, batch_size=16, log_every=5, warmup_steps=4)
    cfg["train"]["data"] = {"train": str(tmp_path / "train.jsonl")}
    result = sw.train(cfg, tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert curve[80] < 0.4 * curve[5], curve
    assert result.loss == curve[80] and result.eval is None


def test_eval_generate_scores_with_the_metrics_module(project, tmp_path, monkeypatch):
    import types

    seen = {}

    def fake(predictions, references):
        seen["n"] = (len(predictions), len(references))
        seen["refs"] = references[:2]
        return {"bleu": 1.0, "rougeL": 2.0}

    monkeypatch.setitem(
        sys.modules, "seqweave.training.metrics", types.SimpleNamespace(generation_metrics=fake)
    )
    result = sw.train(project(max_steps=2, eval_generate=True, eval_max_new_tokens=4), tmp_path / "run")
    assert seen["n"] == (12, 12) and seen["refs"] == [r["target"] for r in reversal_pairs(12, 1)[:2]]
    assert result.eval == {"eval_loss": pytest.approx(result.eval["eval_loss"]), "bleu": 1.0, "rougeL": 2.0}


# ----------------------------------------------------------------------------------------
# Exact resume


def _stop_at(k: int):
    def hook(step: int) -> None:
        if step == k:
            raise KeyboardInterrupt(f"stopped after step {k}")

    return hook


def test_a_stopped_run_resumes_with_the_same_loss_at_every_later_step(project, tmp_path, monkeypatch):
    # dropout on and accumulation: the RNG and the data position must both come back
    settings = {
        "max_steps": 8,
        "save_every": 3,
        "gradient_accumulation_steps": 2,
        "eval_every": 4,
        "weight_decay": 0.01,
        "warmup_steps": 2,
    }
    drop = ["encoder.config.hidden_dropout_prob=0.1", "decoder.config.hidden_dropout_prob=0.1"]
    config = project(**settings)
    whole = sw.train(config, tmp_path / "whole", overrides=drop)
    monkeypatch.setattr(loop, "after_step", _stop_at(5))
    with pytest.raises(KeyboardInterrupt):
        sw.train(config, tmp_path / "cut", overrides=drop)
    monkeypatch.setattr(loop, "after_step", None)
    assert max(losses(tmp_path / "cut")) == 5  # steps 4 and 5 were logged, then lost with the process
    resumed = sw.train(config, tmp_path / "cut", overrides=drop, resume=True)
    assert resumed.resumed_from == 3
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")  # every step, exactly
    assert resumed.eval == whole.eval
    a = sw.EncoderDecoder.from_pretrained(tmp_path / "whole" / "model").state_dict()
    b = sw.EncoderDecoder.from_pretrained(tmp_path / "cut" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


KILLER = """
import os, signal, sys, torch
torch.set_num_threads(1)
from seqweave.training import loop
from seqweave.cli import main
loop.after_step = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 4 else None
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_from_the_command_line(project, tmp_path):
    config = project(max_steps=6, save_every=2)
    assert main(["train", str(config), "-o", str(tmp_path / "whole")]) == 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "core"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    child = subprocess.run(
        [sys.executable, "-c", KILLER, "train", str(config), "-o", str(tmp_path / "cut")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert main(["train", str(config), "-o", str(tmp_path / "cut"), "--resume"]) == 0
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_a_run_folder_is_not_overwritten_without_resume(project, tmp_path, capsys):
    config = project(max_steps=2, save_every=1)
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err and "another folder" in err
    # resuming a finished run takes no step and keeps its metrics
    before = losses(tmp_path / "run")
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--resume"]) == 0
    assert losses(tmp_path / "run") == before and list(before) == [1, 2]
    with pytest.raises(sw.ConfigError, match="batch_size=8"):
        sw.train(config, tmp_path / "run", overrides=["train.batch_size=4"], resume=True)


def test_an_interrupted_checkpoint_is_not_resumed_from(project, tmp_path):
    config = project(max_steps=4, save_every=2)
    sw.train(config, tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "step-4"
    (latest / "trainer_state.json").unlink()  # as if the process died before the commit
    assert loop.latest_checkpoint(tmp_path / "run").name == "step-2"


# ----------------------------------------------------------------------------------------
# Bad train: blocks and data


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"max_step": 3}, "train.max_step: unknown key; did you mean 'max_steps'?"),
        ({"max_steps": 3, "epochs": 1}, "train: set exactly one of max_steps and epochs (both are set)"),
        (
            {"batch_size": 6, "gradient_accumulation_steps": 4},
            "must be a multiple of gradient_accumulation_steps",
        ),
        ({"precision": "fp8"}, "train.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        ({"gradient_checkpointing": "yes"}, "train.gradient_checkpointing: Input should be a valid boolean"),
        ({"data": {"train": "pairs.txt"}}, "train.data: train: 'pairs.txt' is not a data file"),
        ({"data": {"train": "t.jsonl", "colour": 1}}, "train.data.colour: unknown key"),
    ],
)
def test_a_bad_train_block_names_the_field(project, tmp_path, capsys, train, expected):
    cfg = composition(**train)
    cfg["train"].pop("max_steps") if "epochs" in train and "max_steps" not in train else None
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and expected in err, err
    assert not (tmp_path / "run").exists()


def test_data_problems_name_the_file_line_and_field(project, tmp_path, capsys):
    config = project()
    (tmp_path / "train.jsonl").write_text('{"source": "a", "target": "b"}\n\n{"source": "a", "tgt": "b"}\n')
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'train.jsonl'}:3: no field 'target'" in err, err
    (tmp_path / "train.jsonl").unlink()
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'train.jsonl'}: no such data file" in capsys.readouterr().err
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "train.data.train=t.csv"]) == 2
    assert f"{tmp_path / 't.csv'}: no such data file" in capsys.readouterr().err


def test_batch_larger_than_the_data_and_no_train_block(project, tmp_path, capsys):
    config = project(batch_size=128)
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    assert "train.batch_size: 128 is more than the 64 training pairs" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    untrained = yaml.safe_load(demo_config_path().read_text())
    del untrained["train"]  # the demo's config has one (it trains through seqweave.train)
    plain.write_text(yaml.safe_dump(untrained))
    with pytest.raises(sw.ConfigError, match="no train: block"):
        sw.train(plain, tmp_path / "run2")
    with pytest.raises(sw.ConfigError, match="fp16 needs CUDA"):
        sw.train(
            config,
            tmp_path / "run3",
            overrides=["train.batch_size=8", "train.precision=fp16", "train.device=cpu"],
        )


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv_pairs(tmp_path, suffix):
    sep = "," if suffix == ".csv" else "\t"
    path = tmp_path / f"p{suffix}"
    path.write_text(
        f'id{sep}src{sep}tgt\n1{sep}a b{sep}b a\n\n2{sep}"c, d"{sep}d c\n'
        if sep == ","
        else f"id{sep}src{sep}tgt\n1{sep}a b{sep}b a\n\n2{sep}c, d{sep}d c\n"
    )
    assert D.read_pairs(path, "src", "tgt") == [("a b", "b a"), ("c, d", "d c")]
    with pytest.raises(sw.ConfigError, match=r"p\.(csv|tsv):1: no column 'source' in the header"):
        D.read_pairs(path, "source", "tgt")
    path.write_text(f"src{sep}tgt\na\n")
    with pytest.raises(sw.ConfigError, match=r":2: no value for column 'tgt'"):
        D.read_pairs(path, "src", "tgt")


def test_jsonl_rows_must_be_objects_with_text(tmp_path):
    path = tmp_path / "p.jsonl"
    for text, expected in [
        ("[1, 2]\n", ":1: not a JSON object"),
        ('{"source": 1, "target": "x"}\n', ":1: field 'source' must be text"),
        ("{oops\n", ":1: not a JSON object"),
    ]:
        path.write_text(text)
        with pytest.raises(sw.ConfigError, match=expected):
            D.read_pairs(path, "source", "target")


# ----------------------------------------------------------------------------------------
# Labels, batches, schedule


def test_labels_drop_the_start_token_and_end_in_eos():
    assert D.label_ids([2, 7, 8, 3], decoder_start=2, eos=3, max_length=None) == [7, 8, 3]  # bert2bert
    assert D.label_ids([0, 7, 8, 2], decoder_start=0, eos=2, max_length=None) == [7, 8, 2]  # roberta
    assert D.label_ids([7, 8], decoder_start=50, eos=50, max_length=None) == [7, 8, 50]  # gpt2 adds no eos
    assert D.label_ids([2, 7, 8, 9, 3], decoder_start=2, eos=3, max_length=3) == [7, 8, 3]  # cut keeps eos
    assert D.label_ids([7, 8, 9], decoder_start=None, eos=None, max_length=2) == [7, 8]


def test_a_gpt2_decoder_learns_to_end_its_targets(tmp_path):
    # bert2gpt2 with a byte-level target tokenizer that adds no special token: the labels end in eos
    from test_pipeline import byte_level_files

    byte_level_files(tmp_path / "gpt2tok", ["<|endoftext|>"])
    cfg = composition(max_steps=1, batch_size=4)
    cfg["decoder"] = {
        "architecture": "gpt2",
        "config": {"vocab_size": 300, "n_embd": 64, "n_layer": 1, "n_head": 4, "n_positions": 32},
    }
    cfg.update(
        decoder_tokenizer=str(tmp_path / "gpt2tok"), decoder_start_token_id=0, eos_token_id=0, pad_token_id=0
    )
    write_jsonl(tmp_path / "train.jsonl", [{"source": "a b", "target": "the cat"}] * 4)
    cfg["train"]["data"] = {"train": str(tmp_path / "train.jsonl")}
    model = sw.EncoderDecoder.from_config(cfg)
    source, target = resolve_tokenizers(model)
    pairs = D.tokenize_pairs(
        [("a b", "the cat")],
        source,
        target,
        decoder_start=0,
        eos=0,
        max_source_length=None,
        max_target_length=None,
    )
    assert pairs.labels[0] == [*target.encode(["the cat"])[0][0].tolist(), 0]
    result = sw.train(cfg, tmp_path / "run")
    assert (result.model_dir / "decoder_tokenizer" / "tokenizer.json").is_file() and math.isfinite(
        result.loss
    )


def _pairs(lengths: list[int]) -> D.Pairs:
    return D.Pairs(
        sources=[[1] * n for n in lengths],
        labels=[[2] * n for n in lengths],
        targets=[""] * len(lengths),
        texts=[""] * len(lengths),
    )


def test_batches_are_seeded_grouped_by_length_and_shared_out_by_rank():
    pairs = _pairs([random.Random(i).randint(1, 40) for i in range(203)])
    b = D.Batches(pairs, batch_size=8, seed=5, pad=0)
    assert b.steps_per_epoch == 25  # the incomplete last batch is dropped
    epoch0 = [b.global_batch(s) for s in range(25)]
    assert epoch0 == [D.Batches(pairs, 8, 5, 0).global_batch(s) for s in range(25)]  # (seed, epoch) decide
    assert epoch0 != [b.global_batch(25 + s) for s in range(25)]  # the next epoch is another order
    assert epoch0 != [D.Batches(pairs, 8, 6, 0).global_batch(s) for s in range(25)]
    assert len({i for batch in epoch0 for i in batch}) == 200
    spread = (
        sum(
            max(map(len, (pairs.sources[i] for i in x))) - min(map(len, (pairs.sources[i] for i in x)))
            for x in epoch0
        )
        / 25
    )
    assert spread < 10  # grouped by length: random batches of 1..40 would spread ~30
    # each of 2 ranks x 2 accumulation steps takes 2 pairs; together they are the global batch
    rows = []
    for rank in range(2):
        for micro in b.micro_batches(3, rank, world=2, accumulation=2):
            assert micro.input_ids.shape[0] == 2
            rows += [int(m.sum()) for m in micro.attention_mask]
    assert sorted(rows) == sorted(len(pairs.sources[i]) for i in b.global_batch(3))


def test_eval_batches_give_every_rank_the_same_number_and_count_each_pair_once():
    pairs = _pairs([3, 5, 2, 7, 1])
    counted = 0
    shapes = []
    for rank in range(2):
        batches = D.eval_batches(pairs, 2, rank, 2, pad=0)
        shapes.append([x.input_ids.shape[0] for x in batches])
        counted += sum(int(x.labels.ne(-100).sum()) for x in batches)
    assert shapes[0] == shapes[1] == [2, 2]
    assert counted == 3 + 5 + 2 + 7 + 1


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_the_learning_rate_follows_transformers_schedules(schedule):
    transformers = pytest.importorskip("transformers")
    settings = sw.TrainSettings.model_validate(
        {"data": {"train": "t.jsonl"}, "max_steps": 20, "warmup_steps": 4, "lr_schedule": schedule}
    )
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[schedule]
    ref = transformers.get_scheduler(name, opt, num_warmup_steps=4, num_training_steps=20)
    for step in range(20):
        assert loop.lr_factor(settings, step, 20) == pytest.approx(ref.get_last_lr()[0], abs=1e-12), step
        opt.step()
        ref.step()
    ratio = sw.TrainSettings.model_validate({"data": {"train": "t.jsonl"}, "epochs": 1, "warmup_ratio": 0.1})
    assert ratio.warmup(25) == 3  # rounded up, as transformers does


def test_weight_decay_spares_biases_and_norms():
    model = sw.EncoderDecoder.from_config(demo_config_path())
    decay, no_decay = loop._param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)].lower() for p in no_decay["params"])
    assert all(not names[id(p)].endswith("bias") for p in decay["params"])


def test_the_schema_documents_the_train_block():
    schema = sw.composition_json_schema()
    assert "train" in schema["properties"]
    assert "TrainSettings" in json.dumps(schema)


def test_epochs_bf16_and_gradient_checkpointing_run_on_the_cpu(project, tmp_path):
    plain = sw.train(project(epochs=1, max_steps=None, lr_schedule="constant"), tmp_path / "plain")
    assert plain.steps == 64 // 8 and max(losses(tmp_path / "plain")) == 8
    checkpointed = sw.train(
        project(max_steps=3, gradient_checkpointing=True, lr_schedule="constant"), tmp_path / "gc"
    )
    torch.testing.assert_close(
        list(losses(tmp_path / "gc").values()),
        [losses(tmp_path / "plain")[s] for s in (1, 2, 3)],
        rtol=1e-5,
        atol=1e-5,
    )
    assert checkpointed.steps == 3
    bf16 = sw.train(project(max_steps=2, precision="bf16", lr_schedule="constant"), tmp_path / "bf16")
    assert bf16.loss == pytest.approx(losses(tmp_path / "plain")[2], rel=0.05)  # bf16 autocast, not fp32


def test_a_mapping_configs_files_are_the_working_folders(project, tmp_path, monkeypatch):
    project()  # writes train.jsonl and eval.jsonl into tmp_path
    monkeypatch.chdir(tmp_path)
    sw.train(composition(max_steps=1), "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["data"]["train"] == str(tmp_path / "train.jsonl")


def test_the_progress_bar_shows_on_a_terminal_only(project, tmp_path, monkeypatch, capsys):
    config = project(max_steps=2)
    sw.train(config, tmp_path / "piped")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(loop, "show_progress", lambda: True)
    sw.train(config, tmp_path / "tty")
    err = capsys.readouterr().err
    assert "training:" in err and "/2 [" in err  # tqdm draws at most every 0.1 s: the postfix may not show


def test_sources_are_padded_with_the_source_tokenizers_pad():
    # RoBERTa counts positions from its padding id: a source padded with another id shifts them
    import types

    model = types.SimpleNamespace(pad_token_id=50256)
    with_pad, without = types.SimpleNamespace(pad_token_id=1), types.SimpleNamespace(pad_token_id=None)
    assert loop._source_pad(model, (with_pad, without)) == 1
    assert loop._source_pad(model, (without, with_pad)) == 50256

