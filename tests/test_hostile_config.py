"""Hostile and careless config files (issue 10, item 2): booleans are booleans, YAML 1.1 words are
not numbers, duplicate keys are errors, and aliases and nesting are bounded.

Every case must give a ``ConfigError`` (``CheckpointError`` for a checkpoint's config.json) naming
the file and the field, fast and without a large allocation, and through the CLI one ``error:``
line and exit 2.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import seqweave as sw
from conftest import tiny
from seqweave.cli import main

HEAD = "encoder: {architecture: bert}\ndecoder: {architecture: bert}\n"

# A "billion laughs": 9 levels of 9 aliases, 9**9 (387 million) strings once expanded, ~700 bytes.
BOMB = "a: &a [" + ", ".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]\n" for a, b in zip("abcdefgh", "bcdefghi")
)

CASES = {
    # name: (file name, text, words the message must contain)
    "yaml alias bomb": ("bomb.yaml", BOMB, ["100,000 values", "aliases"]),
    "yaml recursive alias": ("loop.yaml", HEAD + "x: &x [*x]\n", ["deeper than 100"]),
    "yaml 1.1 word in an int field": ("off.yaml", HEAD + "pad_token_id: off\n", ["pad_token_id", "'off'"]),
    "yaml yes in a bool field": (
        "yes.yaml", HEAD + "tie_encoder_decoder: yes\n", ["tie_encoder_decoder", "'yes'"],
    ),
    "yaml string in a bool field": (
        "str.yaml", HEAD + 'tie_encoder_decoder: "false"\n', ["tie_encoder_decoder", "'false'"],
    ),
    "yaml number in a bool field": ("one.yaml", HEAD + "tie_encoder_decoder: 1\n", ["tie_encoder_decoder"]),
    "yaml string in a part's bool field": (
        "part.yaml",
        "encoder: {architecture: bert, config: {use_cache: 'false'}}\ndecoder: {architecture: bert}\n",
        ["encoder.config.use_cache"],
    ),
    "yaml duplicate key": (
        "dup.yaml",
        HEAD + "pad_token_id: 1\npad_token_id: 2\n",
        ["dup.yaml:4", "duplicate key 'pad_token_id'"],
    ),
    "yaml nested duplicate key": (
        "dup2.yaml", "encoder:\n  architecture: bert\n  architecture: gpt2\ndecoder: {architecture: bert}\n",
        ["dup2.yaml:3", "duplicate key 'architecture'"],
    ),
    "yaml 1.1 sexagesimal in an int field": (
        "sexa.yaml", HEAD + "pad_token_id: 1:30\n", ["pad_token_id", "'1:30'"],  # 1.1 reads 90
    ),
    "yaml deep nesting": ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", ["deeper than 100"]),
    "yaml nesting past the bound": ("deep2.yaml", "a: " + "[" * 150 + "]" * 150 + "\n", ["deeper than 100"]),
    "json string in a bool field": (
        "str.json",
        (
            '{"encoder": {"architecture": "bert"}, "decoder": {"architecture": "bert"},\n'
            ' "tie_encoder_decoder": "false"}'
        ),
        ["tie_encoder_decoder", "'false'"],
    ),
    "json duplicate key": (
        "dup.json",
        (
            '{"encoder": {"architecture": "bert"}, "decoder": {"architecture": "bert"},\n'
            ' "pad_token_id": 1,\n "pad_token_id": 2}'
        ),
        ["dup.json:3", "duplicate key 'pad_token_id'"],
    ),
    "json deep nesting": ("deep.json", "[" * 5000 + "]" * 5000, ["deeper than 100"]),
    "json nesting past the bound": ("deep2.json", "[" * 150 + "]" * 150, ["deeper than 100"]),
    "toml string in a bool field": (
        "str.toml",
        'tie_encoder_decoder = "false"\n[encoder]\narchitecture = "bert"\n[decoder]\narchitecture = "bert"\n',
        ["tie_encoder_decoder"],
    ),
    "toml duplicate key": ("dup.toml", "a = 1\na = 2\n", ["dup.toml", "not valid TOML"]),
    "toml deep nesting": ("deep.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n", ["deeper than 100"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_a_quick_config_error(tmp_path: Path, case: str) -> None:
    name, text, words = CASES[case]
    path = tmp_path / name
    path.write_text(text)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(sw.ConfigError) as e:
            sw.load_config(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(e.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert elapsed < 2, f"{case}: {elapsed:.2f} s"
    assert peak < 50 * 2**20, f"{case}: {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("case", ["yaml alias bomb", "yaml 1.1 word in an int field", "json duplicate key",
                                  "json deep nesting", "toml deep nesting", "yaml string in a bool field"])
def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path, capsys, case: str) -> None:
    name, text, _ = CASES[case]
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    code = main(["build", str(path), "-o", str(tmp_path / "out")])
    elapsed = time.perf_counter() - start
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert elapsed < 2 and not (tmp_path / "out").exists()


def test_yaml_1_2_booleans_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &b {architecture: bert}\n"
        "encoder: {<<: *b}\ndecoder: {<<: *b, config: {use_cache: false}}\n"
        "tie_encoder_decoder: true\npad_token_id: 0\ntokenizer: yes\n"
    )
    with pytest.raises(sw.ConfigError, match="base"):  # an unknown top-level key, not a YAML problem
        sw.load_config(path)
    path.write_text(path.read_text().replace("base: &b", "encoder: &b", 1).replace("encoder: {<<: *b}\n", ""))
    cfg = sw.load_config(path)
    assert cfg.tie_encoder_decoder is True and cfg.pad_token_id == 0
    assert cfg.tokenizer == "yes"  # a text field keeps the word as text
    assert cfg.decoder.config["use_cache"] is False


def test_yaml_numbers_are_the_1_2_core_schema(tmp_path: Path) -> None:
    # 1.1 reads 010 as eight and 1e-5 as text; 1.2 (and every JSON/TOML reader) as ten and a float
    from seqweave.composition import _yaml_load

    assert _yaml_load("a: 010\nb: 0x1f\nc: 0o17\nd: 1e-5\ne: -.inf\nf: +4", "t") == {
        "a": 10, "b": 31, "c": 15, "d": 1e-5, "e": float("-inf"), "f": 4,
    }
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "pad_token_id: 010\ndecoder_start_token_id: 0x2\n")
    cfg = sw.load_config(path)
    assert (cfg.pad_token_id, cfg.decoder_start_token_id) == (10, 2)
    assert sw.load_config(path, ["generation.temperature=1e-1"]).generation.temperature == 0.1


def test_overrides_follow_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD)
    with pytest.raises(sw.ConfigError, match="pad_token_id.*'off'"):
        sw.load_config(path, ["pad_token_id=off"])
    with pytest.raises(sw.ConfigError, match="tie_encoder_decoder.*'maybe'"):
        sw.load_config(path, ["tie_encoder_decoder=maybe"])
    assert sw.load_config(path, ["tie_encoder_decoder=on"]).tie_encoder_decoder is True


def test_a_mapping_given_in_python_is_bounded_too() -> None:
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(sw.ConfigError, match="deeper than 100"):
        sw.load_config({"encoder": {"architecture": "bert"}, "decoder": {"architecture": "bert"}, "x": deep})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = sw.EncoderDecoder.from_config({
        "encoder": {"architecture": "bert", "config": tiny("bert")},
        "decoder": {"architecture": "bert", "config": tiny("bert")},
        "decoder_start_token_id": 2,
        "pad_token_id": 0,
    })
    folder = tmp_path_factory.mktemp("hostile") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c.update(tie_encoder_decoder="false"), ["tie_encoder_decoder", "'false'"]),
        (lambda c: c.update(tie_encoder_decoder=0), ["tie_encoder_decoder"]),
        (lambda c: c["decoder"].update(use_cache="false"), ["use_cache"]),
        (lambda c: c["encoder"].update(tie_word_embeddings=1), ["tie_word_embeddings"]),
    ],
    ids=["tie-string", "tie-number", "part-use_cache-string", "part-tie_word_embeddings-number"],
)
def test_checkpoint_config_json_booleans_are_booleans(saved: Path, tmp_path: Path, edit, words) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(sw.SeqweaveError) as e:
        sw.EncoderDecoder.from_pretrained(folder)
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"model_type": "encoder-decoder", "is_encoder_decoder": true, "is_encoder_decoder": false}',
         ["config.json", "'is_encoder_decoder' is written twice"]),
        ("[" * 100_000 + "]" * 100_000, ["config.json", "nested this deep"]),
        ("{" + '"a": 1,' * 10 + "}", ["config.json", "not valid JSON"]),
    ],
    ids=["duplicate-key", "deep-nesting", "not-json"],
)
def test_checkpoint_config_json_is_read_strictly_and_bounded(saved: Path, tmp_path: Path, text, words) -> None:
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    (folder / "config.json").write_text(text)
    start = time.perf_counter()
    with pytest.raises(sw.CheckpointError) as e:
        sw.EncoderDecoder.from_pretrained(folder)
    assert time.perf_counter() - start < 2
    for word in words:
        assert word in str(e.value)


def test_checkpoint_config_json_size_is_bounded(saved: Path, tmp_path: Path, monkeypatch) -> None:
    from seqweave.checkpoint import jsonio

    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    monkeypatch.setattr(jsonio, "MAX_JSON_BYTES", 100)  # a real 64 MB file would only slow the suite
    with pytest.raises(sw.CheckpointError, match=r"config.json: refusing to read a JSON file over"):
        sw.EncoderDecoder.from_pretrained(folder)


def test_checkpoint_with_null_tie_loads_untied(saved: Path, tmp_path: Path) -> None:
    """``null`` is falsy in transformers too: at least as tolerant."""
    folder = tmp_path / "m"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["tie_encoder_decoder"] = None
    (folder / "config.json").write_text(json.dumps(config))
    model = sw.EncoderDecoder.from_pretrained(folder)
    assert model.tie_encoder_decoder is False


@pytest.mark.parametrize(("field", "value"), [("do_sample", "yes"), ("do_sample", 1), ("early_stopping", "false"),
                                              ("return_dict_in_generate", "true"), ("output_scores", 0)])
def test_generation_booleans_are_booleans(field: str, value: object) -> None:
    with pytest.raises(sw.ConfigError, match=field):
        sw.GenerationSettings().merged({field: value}, "generation")
    assert getattr(sw.GenerationSettings().merged({field: True}, "generation"), field) is True
