"""The command line: build, generate, inspect, plugins, schema, demo, and how user errors are reported."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from seqweave.cli import main

import seqweave as sw

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny-bert2bert.yaml"


def run(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "out"
    assert main(["build", str(TINY), "-o", str(folder)]) == 0
    return folder


def test_build_writes_a_checkpoint_with_its_tokenizer(built):
    assert {p.name for p in built.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "encoder-decoder" and config["decoder"]["num_hidden_layers"] == 2


def test_build_applies_overrides_and_reports(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "build",
        TINY,
        "-o",
        tmp_path / "o",
        "decoder.config.num_hidden_layers=1",
        "generation.max_new_tokens=5",
    )
    assert code == 0, err
    assert out.startswith(
        f"saved bert2bert to {tmp_path / 'o'}: config.json, generation_config.json, "
        "model.safetensors, tokenizer.json\n"
    )
    assert json.loads((tmp_path / "o" / "config.json").read_text())["decoder"]["num_hidden_layers"] == 1
    assert json.loads((tmp_path / "o" / "generation_config.json").read_text())["max_new_tokens"] == 5


def test_generate_one_text(capsys, built):
    code, out, err = run(capsys, "generate", built, "some text", "--max-new-tokens", "6")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].strip()
    assert err == ""  # piped: no progress bars, no notes


def test_batches_give_the_same_text_as_one_by_one(capsys, built, tmp_path):
    texts = ["some text", "hello world", "a", "the model is at the text of this world", "in it"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n\n")
    _, one_by_one, _ = run(capsys, "generate", built, "--input", tmp_path / "in.txt", "--batch-size", "1")
    _, batched, _ = run(capsys, "generate", built, "--input", tmp_path / "in.txt", "--batch-size", "3")
    assert one_by_one == batched and len(batched.splitlines()) == len(texts)


def test_generate_reads_stdin_and_prints_jsonl(capsys, monkeypatch, built):
    code, out, err = run(
        capsys,
        "generate",
        built,
        "-",
        "--jsonl",
        "--max-new-tokens",
        "3",
        stdin="some text\nhello world\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == ["some text", "hello world"]
    assert all(isinstance(r["output"], str) for r in rows)


def test_generate_from_a_config_file_directly(capsys):
    code, out, err = run(capsys, "generate", TINY, "some text", "--max-new-tokens", "2")
    assert code == 0, err and len(out.splitlines()) == 1


def test_inspect_shows_parts_counts_and_tensor_status(capsys, built):
    code, out, _ = run(capsys, "inspect", built)
    assert code == 0
    assert out.splitlines()[0] == f"model        bert2bert from {built} (float32, cpu)"
    assert "encoder      bert (TransformerEncoder): layers 2, hidden size 32, vocab size 87;" in out
    assert "projection   none (encoder and decoder widths match)" in out
    assert f"pretrained   81/81 tensors from model: {built / 'model.safetensors'}" in out
    assert "new          none" in out
    assert "tied         decoder.embeddings.tokens.weight = decoder.head.proj.weight" in out


def test_inspect_a_config_shows_what_is_new(capsys):
    code, out, _ = run(capsys, "inspect", TINY, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["pretrained"] == [] and len(d["new"]) == d["tensors"] == 81
    assert d["parameters"] == d["encoder"]["parameters"] + d["decoder"]["parameters"]
    assert d["tied"] == [["decoder.embeddings.tokens.weight", "decoder.head.proj.weight"]]


def test_inspect_a_warm_start_names_the_new_tensors(capsys, tmp_path):
    from conftest import hf_config
    from transformers import BertLMHeadModel, BertModel

    BertModel(hf_config("bert", "encoder")).save_pretrained(tmp_path / "enc")
    BertLMHeadModel(hf_config("bert", "encoder")).save_pretrained(tmp_path / "dec")
    cfg = {
        "encoder": {"architecture": "bert", "pretrained": "enc"},
        "decoder": {"architecture": "bert", "pretrained": "dec"},
        "decoder_start_token_id": 2,
        "pad_token_id": 0,
    }
    (tmp_path / "warm.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = run(capsys, "inspect", tmp_path / "warm.yaml", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["new"] and all(".cross_" in n for n in d["new"])
    assert any(n.startswith("encoder.") for n in d["pretrained"])
    assert "newly initialised tensors" in err  # the single log line DESIGN asks for


def test_plugins_json(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    rows = json.loads(out)
    bert = next(r for r in rows if r["name"] == "bert")
    assert bert == {
        "name": "bert",
        "distribution": "seqweave",
        "version": bert["version"],
        "architectures": ["bert"],
        "error": None,
        "details": [
            {
                "name": "bert",
                "roles": ["encoder", "decoder"],
                "description": sw.default_registry().get("bert").description,
                "reference": {"encoder": "BertModel", "decoder": "BertLMHeadModel"},
                "alias_of": None,
            }
        ],
    }
    roberta = next(r for r in rows if r["name"] == "roberta")
    assert roberta["architectures"] == ["camembert", "roberta", "xlm-roberta"]
    details = {d["name"]: d for d in roberta["details"]}
    assert details["xlm-roberta"]["alias_of"] == "roberta" and details["roberta"]["alias_of"] is None
    assert details["xlm-roberta"]["reference"] == {"encoder": "XLMRobertaModel", "decoder": "XLMRobertaForCausalLM"}
    assert all(set(r) >= {"name", "distribution", "version", "architectures", "error", "details"} for r in rows)
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)


def test_plugins_text(capsys):
    """A header, then one row per architecture, sorted by plugin: whatever else is installed."""
    code, out, _ = run(capsys, "plugins")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["PLUGIN", "DISTRIBUTION", "ARCHITECTURE", "ROLES", "DESCRIPTION"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    builtin = {r[0]: r for r in rows if r[1] == "seqweave"}
    assert set(builtin) >= {"bert", "gpt2", "roberta"}
    assert builtin["bert"][3:5] == ["bert", "encoder/decoder"]
    aliases = [line for line in lines if line.split()[3:4] in (["xlm-roberta"], ["camembert"])]
    assert len(aliases) == 2 and all(line.endswith("[alias of roberta]") for line in aliases)


def test_plugins_text_reports_a_plugin_that_failed(capsys, monkeypatch):
    import seqweave.registry

    reg = sw.Registry(load_entry_points=False)
    reg.plugins.append(sw.PluginInfo("broken", "broken-dist", "0.3", error="ImportError: no torch_extras"))
    monkeypatch.setattr(seqweave.registry, "default_registry", lambda: reg)
    monkeypatch.setattr(sw, "default_registry", lambda: reg)
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "broken" in out and "FAILED" in out and "ImportError: no torch_extras" in out


def test_schema_is_json_schema(capsys):
    import jsonschema

    code, out, _ = run(capsys, "schema")
    assert code == 0
    jsonschema.Draft202012Validator.check_schema(json.loads(out))


def _builtin_registry() -> sw.Registry:
    """The registry of seqweave's own plugins only: docs/config.md documents those, whatever else is installed."""
    reg = sw.Registry(load_entry_points=False)
    reg.load_entry_points(distributions={"seqweave"})
    if "bert-generation" not in reg:  # installed metadata older than the plugin: register it as the entry point would
        import seqweave_bert_generation

        reg.register(seqweave_bert_generation, "bert-generation", distribution="seqweave", version=sw.__version__)
    assert reg.names() == ["bert", "bert-generation", "camembert", "gpt2", "roberta", "xlm-roberta"]
    return reg


def test_docs_config_md_holds_the_generated_reference(capsys):
    """docs/config.md documents every field: its tables are what `seqweave schema --markdown` prints."""
    from seqweave.configdoc import config_reference

    code, out, _ = run(capsys, "schema", "--markdown")
    assert code == 0 and out == config_reference(sw.default_registry())
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    reference = config_reference(_builtin_registry())
    assert reference in doc, "docs/config.md is stale: paste the output of `seqweave schema --markdown` into it"


def test_demo_runs_offline_and_learns(capsys):
    code, out, err = run(capsys, "demo", "--steps", "200")
    assert code == 0, err
    loss = next(line for line in out.splitlines() if line.lstrip().startswith("training"))
    before, after = (float(x) for x in loss.split("loss ")[1].split(" (")[0].split(" -> "))
    assert after < before / 4
    assert out.count(" -> '") == 4  # generated text for four inputs
    assert "exact match  " in out and "/64 held-out pairs" in out


# ----------------------------------------------------------------------------------------
# User errors: exit 2, one error line naming the file and the field, no traceback


def bad_config(tmp_path: Path, edit) -> Path:
    data = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))  # no YAML anchors: edit one part only
    data["tokenizer"] = str(TINY.parent / data["tokenizer"])
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["encoder"]["config"].update(num_hiden_layers=3),
            "encoder.config.num_hiden_layers: unknown key; did you mean 'num_hidden_layers'? (got 3)",
        ),
        (
            lambda d: d["decoder"]["config"].update(hidden_size="wide"),
            "decoder.config.hidden_size: Input should be a valid integer, "
            "unable to parse string as an integer (got 'wide')",
        ),
        (
            lambda d: d["decoder"].update(architecture="bort"),
            "decoder.architecture: unknown architecture 'bort'",
        ),
        (
            lambda d: d.update(eos_token_id=500),
            "eos_token_id: must be below the decoder's vocab_size (87) (got 500)",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line(capsys, tmp_path, edit, expected):
    path = bad_config(tmp_path, edit)
    code, out, err = run(capsys, "build", path, "-o", tmp_path / "o")
    assert code == 2
    assert err.startswith(f"error: {path}: {expected}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_yaml_python_tag_exits_2(capsys, tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text(f"encoder: !!python/object/apply:os.system ['touch {tmp_path / 'ran'}']\n")
    code, _, err = run(capsys, "build", path, "-o", tmp_path / "o")
    assert code == 2 and not (tmp_path / "ran").exists()
    assert err.startswith(
        f"error: {path}:1:10: not valid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    )


def test_bad_override_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "build", TINY, "-o", tmp_path / "o", "encoder.config.num_attention_heads=3")
    assert code == 2
    assert err == f"error: {TINY}: encoder.config.num_attention_heads: must divide hidden_size (32) (got 3)\n"


def test_several_problems_are_a_short_list(capsys, tmp_path):
    path = bad_config(
        tmp_path,
        lambda d: (
            d["encoder"]["config"].update(num_hiden_layers=3),
            d["decoder"].update(architecture="bort"),
        ),
    )
    code, _, err = run(capsys, "build", path, "-o", tmp_path / "o")
    assert (
        code == 2
        and len(err.splitlines()) == 2
        and all(line.startswith("error: ") for line in err.splitlines())
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["build", TINY], "error: Missing option '-o' / '--output'. (see 'seqweave build --help')"),
        (["frobnicate"], "error: No such command 'frobnicate'."),
        (["generate", "/nonexistent/model", "x"], "error: /nonexistent/model: no such local folder"),
        (
            ["generate", TINY, "x", "--temperature", "-1"],
            "error: generation options: temperature: Input should be greater than 0 (got -1.0)",
        ),
        (["generate", TINY, "x", "--batch-size", "0"], "error: Invalid value for '--batch-size'"),
        (["inspect", "/nonexistent/c.yaml"], "error: /nonexistent/c.yaml: no such local folder"),
    ],
)
def test_argument_errors_exit_2(capsys, args, expected):
    code, _, err = run(capsys, *args)
    assert code == 2 and err.startswith(expected) and "Traceback" not in err


def test_generate_without_a_tokenizer_says_how_to_give_one(capsys, tmp_path):
    path = bad_config(tmp_path, lambda d: d.pop("tokenizer"))
    code, _, err = run(capsys, "generate", path, "x")
    assert code == 2
    assert err == "error: no tokenizer: the config names none; pass --tokenizer (or tokenizer=)\n"


def test_generate_with_no_input_is_a_usage_error(capsys, monkeypatch, built):
    code, _, err = run(capsys, "generate", built, "-", stdin="\n\n", monkeypatch=monkeypatch)
    assert code == 2 and "no input text" in err


def test_debug_shows_the_traceback(capsys, tmp_path):
    path = bad_config(tmp_path, lambda d: d["decoder"].update(architecture="bort"))
    code, _, err = run(capsys, "build", path, "-o", tmp_path / "o", "--debug")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.splitlines()[-1].startswith(
        f"error: {path}: decoder.architecture: unknown architecture 'bort'"
    )


def test_console_script_and_module_run_the_same_cli(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = Path(sys.executable).parent / "seqweave"
    for cmd in ([str(script)], [sys.executable, "-m", "seqweave"]):
        done = subprocess.run(
            [*cmd, "build", str(TINY), "-o", str(tmp_path / "o"), "encoder.config.nope=1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        assert (
            done.stderr
            == f"error: {TINY}: encoder.config.nope: unknown key; allowed: "
            + ", ".join(__import__("seqweave").default_registry().get("bert").config.model_fields)
            + " (got 1)\n"
        )


def test_import_seqweave_stays_light():
    # (tqdm is not in the list: torch.hub imports it with torch.)
    code = (
        "import sys, seqweave; heavy = [m for m in ('click', 'tokenizers', 'huggingface_hub', 'yaml', "
        "'transformers') if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_tokenizer_flags_override_the_folder(capsys, built, tmp_path):
    """--tokenizer and --decoder-tokenizer replace the folder's; a tokenizer too big for the model fails."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    def word_level(folder: Path, words: list[str]) -> Path:
        tok = Tokenizer(
            models.WordLevel(
                {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}, unk_token="[UNK]"
            )
        )
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        return folder

    small = word_level(tmp_path / "small", ["some", "text"])
    big = word_level(tmp_path / "big", [f"w{i}" for i in range(100)])
    code, out, err = run(
        capsys, "generate", built, "some text", "--tokenizer", small, "--max-new-tokens", "2"
    )
    assert code == 0 and len(out.splitlines()) == 1, err
    code, _, err = run(capsys, "generate", built, "some text", "--tokenizer", big)
    assert code == 2
    assert err == (
        f"error: {big}: the tokenizer has 102 tokens but the encoder's vocab_size is 87; "
        "use the tokenizer the model was trained with\n"
    )
    code, _, err = run(capsys, "generate", built, "some text", "--decoder-tokenizer", big)
    assert code == 2 and "the decoder's vocab_size is 87" in err and "--decoder-tokenizer" in err
    code, _, err = run(capsys, "generate", built, "x", "--tokenizer", tmp_path / "nothing")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nothing'}: no such local folder")
