"""Config files: the three formats, per-architecture validation, located errors, typed overrides, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import seqweave as sw
import yaml
from conftest import ARCHITECTURES, DECODERS, ENCODERS, REGISTRY

TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


def tiny_data(**top) -> dict:
    return {
        "encoder": {"architecture": "bert", "config": dict(TINY)},
        "decoder": {"architecture": "bert", "config": dict(TINY)},
        "decoder_start_token_id": 2,
        "pad_token_id": 0,
        "eos_token_id": 3,
        **top,
    }


def write(folder: Path, name: str, data: dict | str) -> Path:
    path = folder / name
    if isinstance(data, str):
        path.write_text(data)
    elif name.endswith((".yaml", ".yml")):
        path.write_text(yaml.safe_dump(data))
    elif name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        path.write_text(_toml(data))
    return path


def _toml(data: dict, prefix: str = "") -> str:
    """Just enough TOML for these configs: scalars first, then tables."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [_toml(v, f"{prefix}{k}.") for k, v in data.items() if isinstance(v, dict)]
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "\n".join(scalars) + "\n\n" + "\n".join(tables)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml", ".json"])
def test_every_format_reads_the_same_config(tmp_path, suffix):
    cfg = sw.load_config(write(tmp_path, "c" + suffix, tiny_data(generation={"num_beams": 2})))
    assert cfg.encoder.config == TINY
    assert (cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id) == (2, 0, 3)
    assert cfg.generation.num_beams == 2


def error_of(path_or_data, overrides=()) -> str:
    with pytest.raises(sw.ConfigError) as info:
        sw.load_config(path_or_data, overrides)
    return str(info.value)


def test_unknown_key_names_file_location_value_and_a_suggestion(tmp_path):
    data = tiny_data()
    data["encoder"]["config"]["num_hiden_layers"] = 3
    path = write(tmp_path, "c.yaml", data)
    assert error_of(path) == (
        f"{path}: encoder.config.num_hiden_layers: unknown key; did you mean 'num_hidden_layers'? (got 3)"
    )


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "c.toml", tiny_data(pad_tokn_id=0))
    assert error_of(path) == f"{path}: pad_tokn_id: unknown key; did you mean 'pad_token_id'? (got 0)"


def test_wrong_type(tmp_path):
    data = tiny_data()
    data["decoder"]["config"]["hidden_size"] = "wide"
    msg = error_of(write(tmp_path, "c.json", data))
    assert "c.json: decoder.config.hidden_size: Input should be a valid integer" in msg
    assert "(got 'wide')" in msg


@pytest.mark.parametrize(
    ("where", "key", "value", "expected"),
    [
        (
            "encoder",
            "num_attention_heads",
            5,
            "encoder.config.num_attention_heads: must divide hidden_size (32) (got 5)",
        ),
        (
            "decoder",
            "hidden_size",
            -4,
            "decoder.config.hidden_size: Input should be greater than or equal to 1 (got -4)",
        ),
        (
            "decoder",
            "pad_token_id",
            99,
            "decoder.config.pad_token_id: must be below vocab_size (99) (got 99)",
        ),
        ("decoder", "hidden_act", "relu3", "decoder.config.hidden_act: must be one of"),
    ],
)
def test_impossible_values_are_located(tmp_path, where, key, value, expected):
    data = tiny_data()
    data[where]["config"][key] = value
    path = write(tmp_path, "c.yaml", data)
    assert f"{path}: {expected}" in error_of(path)


@pytest.mark.parametrize("name", ["decoder_start_token_id", "pad_token_id", "eos_token_id"])
def test_top_level_token_ids_must_fit_the_decoder_vocabulary(tmp_path, name):
    path = write(tmp_path, "c.yaml", tiny_data(**{name: 99}))
    assert error_of(path) == f"{path}: {name}: must be below the decoder's vocab_size (99) (got 99)"


def test_eos_list_is_checked_item_by_item(tmp_path):
    path = write(tmp_path, "c.yaml", tiny_data(eos_token_id=[3, 120]))
    assert (
        error_of(path) == f"{path}: eos_token_id: must be below the decoder's vocab_size (99) (got [3, 120])"
    )
    assert sw.load_config(write(tmp_path, "d.yaml", tiny_data(eos_token_id=[3, 98]))).eos_token_id == [3, 98]


def test_unknown_architecture_lists_the_registered_ones(tmp_path):
    data = tiny_data()
    data["decoder"] = {"architecture": "bort"}
    path = write(tmp_path, "c.yaml", data)
    assert error_of(path) == (
        f"{path}: decoder.architecture: unknown architecture 'bort'; registered: {', '.join(ARCHITECTURES)}"
    )


def test_an_import_path_is_not_an_architecture(tmp_path):
    data = tiny_data()
    data["encoder"]["architecture"] = "os:system"
    assert "encoder.architecture: unknown architecture 'os:system'" in error_of(
        write(tmp_path, "c.yaml", data)
    )


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    data = tiny_data(pad_tokn_id=0)
    data["encoder"]["config"]["num_attention_heads"] = 5
    data["decoder"]["architecture"] = "bort"
    lines = error_of(write(tmp_path, "c.yaml", data)).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "pad_tokn_id",
        "encoder.config.num_attention_heads",
        "decoder.architecture",
    ]


def test_yaml_python_tag_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, "c.yaml", f"encoder: !!python/object/apply:os.system ['touch {marker}']\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:1:10: not valid YAML:")
    assert "python/object/apply:os.system" in msg and "python tags are not allowed" in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.yaml", "encoder: [1,\n", "not valid YAML"),
        ("c.toml", "encoder = \n", "not valid TOML"),
        ("c.json", '{"encoder": }', "not valid JSON"),
        ("c.yaml", "", "the file is empty"),
        ("c.yaml", "- 1\n", "expected a mapping at the top level, found list"),
        ("c.ini", "x=1", "unknown config format '.ini'"),
    ],
)
def test_malformed_files(tmp_path, name, text, fragment):
    path = write(tmp_path, name, text)
    msg = error_of(path)
    assert msg.startswith(str(path)) and fragment in msg and "\n" not in msg


def test_missing_file():
    assert error_of("/nonexistent/c.yaml") == "/nonexistent/c.yaml: no such config file"


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = write(tmp_path, "c.yaml", tiny_data())
    cfg = sw.load_config(
        path,
        overrides=[
            "decoder.config.num_hidden_layers=1",  # int
            "decoder.config.hidden_dropout_prob=0.5",  # float
            "decoder.config.hidden_act=relu",  # text
            "tokenizer=123",  # a text field keeps digits as text
            "encoder.revision=null",  # optional text: null is None
            "eos_token_id=[3, 4]",  # list
            "generation.do_sample=true",
            "tie_encoder_decoder=yes",
        ],
    )
    assert cfg.decoder.config["num_hidden_layers"] == 1
    assert cfg.decoder.config["hidden_dropout_prob"] == 0.5
    assert cfg.decoder.config["hidden_act"] == "relu"
    assert cfg.tokenizer == "123"
    assert cfg.encoder.revision is None
    assert cfg.eos_token_id == [3, 4]
    assert cfg.generation.do_sample is True and cfg.tie_encoder_decoder is True


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "c.yaml", tiny_data())
    assert error_of(path, ["encoder.config.num_attention_heads=3"]) == (
        f"{path}: encoder.config.num_attention_heads: must divide hidden_size (32) (got 3)"
    )
    assert "generation.num_beams: Input should be a valid integer" in error_of(
        path, ["generation.num_beams=many"]
    )
    assert "override 'num_beams' must look like key.sub=value" in error_of(path, ["num_beams"])
    assert "decoder.config.n_layer: unknown key" in error_of(path, ["decoder.config.n_layer=2"])


def test_overrides_apply_to_dicts_without_editing_them():
    data = tiny_data()
    cfg = sw.load_config(data, overrides=["encoder.config.hidden_size=64"])
    assert cfg.encoder.config["hidden_size"] == 64 and data["encoder"]["config"]["hidden_size"] == 32


def test_pretrained_block_defers_cross_field_checks_to_the_merged_config(tmp_path):
    # 16 heads do not divide BERT's default 768 but may divide the checkpoint's width: not an error yet.
    data = tiny_data()
    data["encoder"] = {
        "architecture": "bert",
        "pretrained": "some/checkpoint",
        "config": {"num_attention_heads": 16},
    }
    assert sw.load_config(data).encoder.config == {"num_attention_heads": 16}
    # Field-level problems are still errors.
    data["encoder"]["config"] = {"num_attention_heads": -1}
    assert "encoder.config.num_attention_heads: Input should be greater than or equal to 1" in error_of(data)


def test_paths_in_a_file_are_relative_to_it(tmp_path):
    (tmp_path / "tok").mkdir()
    path = write(tmp_path, "c.yaml", tiny_data(tokenizer="tok", decoder_tokenizer="org/name"))
    cfg = sw.load_config(path)
    assert cfg.tokenizer == str(tmp_path / "tok")
    assert cfg.decoder_tokenizer == "org/name"  # nothing there: a hub id


def test_generation_settings_are_checked_together():
    assert "generation.num_return_sequences: must be at most num_beams (2)" in error_of(
        tiny_data(generation={"num_beams": 2, "num_return_sequences": 3})
    )
    assert sw.load_config(tiny_data(generation={"do_sample": True, "num_return_sequences": 3}))


def test_model_validate_alone_is_strict_too():
    data = tiny_data()
    data["encoder"]["config"]["num_attention_heads"] = 5
    with pytest.raises(ValueError, match="encoder.config.num_attention_heads: must divide hidden_size"):
        sw.CompositionConfig.model_validate(data)


def test_from_config_checks_token_ids_against_the_loaded_decoder(tmp_path):
    from conftest import hf_config
    from transformers import BertLMHeadModel

    BertLMHeadModel(hf_config("bert", "decoder")).save_pretrained(tmp_path / "dec")
    data = tiny_data(decoder_start_token_id=99)
    data["decoder"] = {"architecture": "bert", "pretrained": str(tmp_path / "dec")}
    assert sw.load_config(data).decoder_start_token_id == 99  # the vocabulary is in the checkpoint
    with pytest.raises(
        sw.ConfigError, match=r"^decoder_start_token_id: must be below the decoder's vocab_size \(99\)"
    ):
        sw.EncoderDecoder.from_config(data)
    assert (
        sw.EncoderDecoder.from_config(data, overrides=["decoder_start_token_id=98"]).decoder_start_token_id
        == 98
    )


# ----------------------------------------------------------------------------------------
# The schema


def test_schema_has_every_architecture_and_its_fields():
    schema = sw.composition_json_schema()
    text = json.dumps(schema)
    for name in ARCHITECTURES:
        arch = REGISTRY.get(name)
        definition = schema["$defs"][arch.config.__name__]
        assert set(definition["properties"]) == set(arch.config.model_fields)
        assert definition["additionalProperties"] is False
        assert f'"const": "{name}"' in text


def schema_errors(data) -> list[str]:
    import jsonschema

    def leaves(errors):
        # A part is a oneOf over architectures: the precise messages are in the matching variant's context.
        for e in errors:
            yield e
            yield from leaves(e.context or [])

    validator = jsonschema.Draft202012Validator(sw.composition_json_schema())
    return [f"{e.json_path}: {e.message}" for e in leaves(validator.iter_errors(data))]


def test_schema_accepts_what_load_config_accepts_and_refuses_unknown_keys():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(sw.composition_json_schema())
    assert schema_errors(tiny_data()) == []
    bad = tiny_data(pad_tokn_id=0)
    bad["encoder"]["config"]["num_hiden_layers"] = 2
    bad["decoder"]["config"]["hidden_size"] = "wide"
    errors = "\n".join(schema_errors(bad))
    assert "'pad_tokn_id' was unexpected" in errors
    assert "$.encoder.config: Additional properties are not allowed ('num_hiden_layers'" in errors
    assert "$.decoder.config.hidden_size: 'wide' is not of type 'integer'" in errors


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_schema_rejects_an_architecture_that_cannot_play_the_role(role):
    data = tiny_data()
    data[role] = {"architecture": "bort"}
    assert schema_errors(data)
    allowed = ENCODERS if role == "encoder" else DECODERS
    for name in allowed:
        data[role] = {"architecture": name}
        assert schema_errors(data) == []


def test_every_architecture_reports_cross_field_errors_at_the_field():
    for arch, heads, width in (
        ("gpt2", "n_head", "n_embd"),
        ("roberta", "num_attention_heads", "hidden_size"),
        ("bert", "num_attention_heads", "hidden_size"),
    ):
        data = tiny_data()
        data["decoder"] = {"architecture": arch, "config": {width: 30, heads: 4}}
        assert error_of(data) == f"config: decoder.config.{heads}: must divide {width} (30) (got 4)"
