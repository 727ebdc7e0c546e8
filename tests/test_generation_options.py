"""Generation options have one source: GenerationSettings. Every entry point derives from its fields.

Also: the one token-id range check gives the same words wherever the ids come from, and
generation needs of a model only what its Protocol names (``encode`` included), so
hand-written parts and hand-written models generate.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path
from typing import Any

import pytest
import seqweave as sw
import torch
import yaml
from conftest import DelegatingDecoder, build_part, naive_greedy, source_batch
from seqweave import cli as cli_module
from seqweave import generation
from seqweave.cli import cli, main
from seqweave.config import TOKEN_ID_FIELDS, check_token_ids, token_id_problems
from seqweave.outputs import Encoded, EncoderOutput
from seqweave.pipeline import EXTRA_OPTIONS, GENERATION_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny-bert2bert.yaml"
FIELDS = set(sw.GenerationSettings.model_fields)
#: The generate command's own parameters, which are not generation settings.
CLI_OWN = {
    "model",
    "texts",
    "input_file",
    "tokenizer",
    "decoder_tokenizer",
    "revision",
    "batch_size",
    "device",
    "dtype",
    "jsonl",
    "seed",
}


@pytest.fixture(scope="module")
def model() -> sw.EncoderDecoder:
    torch.manual_seed(0)
    return sw.EncoderDecoder.from_config(TINY).eval()


def a_value(name: str) -> Any:
    """A valid value of every field (its default, or a token id when that is None)."""
    default = sw.GenerationSettings.model_fields[name].default
    return 1 if default is None and name in TOKEN_ID_FIELDS else default


# ---------------------------------------------------------------------------------------------
# One list of options


def test_the_token_ids_and_every_option_are_fields():
    assert FIELDS >= {"max_new_tokens", "num_beams", "do_sample", "early_stopping", *TOKEN_ID_FIELDS}
    for name, field in sw.GenerationSettings.model_fields.items():
        assert field.description, f"{name} needs a Field(description=...): it is the CLI's and the docs' help"


def test_the_config_generation_block_is_the_model():
    assert sw.CompositionConfig.model_fields["generation"].annotation is sw.GenerationSettings
    schema = sw.composition_json_schema()
    block = schema["$defs"]["GenerationSettings"]["properties"]
    assert set(block) == FIELDS
    data = yaml.safe_load(TINY.read_text())
    data["tokenizer"] = None
    data["generation"] = {name: a_value(name) for name in FIELDS}
    cfg = sw.load_config(data)
    assert set(cfg.generation.model_dump()) == FIELDS


def test_the_cli_flags_are_the_fields():
    command = cli.commands["generate"]
    names = {p.name for p in command.params}
    assert names - CLI_OWN == FIELDS - set(cli_module.NOT_FLAGS)
    assert set(cli_module.NOT_FLAGS) <= FIELDS and all(cli_module.NOT_FLAGS.values())
    flags = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    # the flag names of earlier releases keep working
    old = {"--do-sample", "--greedy", "--early-stopping", "--no-early-stopping", "--seed", "--num-beams"}
    assert old <= flags
    by_name = {p.name: p for p in command.params}
    for name, field in sw.GenerationSettings.model_fields.items():
        if name in cli_module.NOT_FLAGS:
            continue
        p = by_name[name]
        assert p.default is None or p.multiple, name  # unset flags leave the model's setting alone
        assert p.help and p.help.startswith(field.description.replace("%", "%%")), name
        kinds = set(typing.get_args(field.annotation)) or {field.annotation}
        if list[list[int]] in kinds:
            assert p.multiple and p.type.convert("5,6", p, None) == [5, 6], name
        elif bool in kinds:
            assert p.is_flag and p.secondary_opts, name
        elif int in kinds:
            assert p.type.name == "integer", name
        elif float in kinds:
            assert p.type.name == "float", name
    assert by_name["eos_token_id"].multiple


def test_list_of_lists_flags_and_length_flags_reach_generate(capsys, monkeypatch):
    """``--bad-words-ids 5,6 --bad-words-ids 9`` is [[5, 6], [9]]; ``--max-length`` is passed on."""
    seen: dict[str, Any] = {}
    real = sw.EncoderDecoder.generate

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sw.EncoderDecoder, "generate", spy)
    args = ["generate", str(TINY), "some text", "--bad-words-ids", "5,6", "--bad-words-ids", "9",
            "--max-length", "4", "--forced-eos-token-id", "3"]
    assert main(args) == 0, capsys.readouterr().err
    assert seen["bad_words_ids"] == [[5, 6], [9]] and seen["max_length"] == 4
    assert seen["forced_eos_token_id"] == [3]
    assert main(["generate", str(TINY), "x", "--bad-words-ids", "5,a"]) == 2
    assert "comma-separated list of token ids" in capsys.readouterr().err


def test_the_pipeline_refuses_an_output_object(model):
    with pytest.raises(sw.ConfigError, match="return_dict_in_generate: the pipeline returns text"):
        sw.pipeline(model)("some text", return_dict_in_generate=True)


def test_the_pipeline_options_are_the_fields(model):
    assert set(GENERATION_OPTIONS) - set(EXTRA_OPTIONS) == FIELDS and set(EXTRA_OPTIONS) == {"seed"}
    pipe = sw.pipeline(model)
    settings = pipe.settings(**{name: a_value(name) for name in FIELDS})
    assert set(settings) == FIELDS
    assert set(pipe.settings(seed=3)) == FIELDS | {"generator"}


def test_generate_takes_the_fields_and_the_runtime_arguments(model):
    import inspect

    for method in (model.generate, model.generate_with_scores, model.generate_stream):
        params = inspect.signature(method).parameters
        keyword_only = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert keyword_only <= set(generation.RUNTIME_ARGUMENTS), method.__name__
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), method.__name__
    assert not FIELDS & set(generation.RUNTIME_ARGUMENTS)
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    options = {name: a_value(name) for name in FIELDS}
    options.update(max_new_tokens=2, pad_token_id=0, eos_token_id=3, decoder_start_token_id=2)
    assert model.generate(ids, mask, **options).shape[0] == ids.shape[0]
    with pytest.raises(sw.ConfigError, match="unknown argument"):
        model.generate(ids, mask, max_lenght=3)


def test_settings_checks_are_the_same_everywhere(model):
    """A check across fields lives in the model: config files and calls fail alike."""
    data = yaml.safe_load(TINY.read_text())
    data["tokenizer"] = None
    data["generation"] = {"min_new_tokens": 5, "max_new_tokens": 3}
    with pytest.raises(sw.ConfigError, match="generation.min_new_tokens: must be at most max_new_tokens"):
        sw.load_config(data)
    ids, _ = source_batch(model.decoder.vocab_size, 0)
    with pytest.raises(sw.ConfigError, match=r"generate\(\): min_new_tokens: must be at most max_new_tokens"):
        model.generate(ids, min_new_tokens=5, max_new_tokens=3)


# ---------------------------------------------------------------------------------------------
# One range check of token ids


def test_token_id_problems():
    assert token_id_problems({"pad_token_id": 4, "eos_token_id": [1, 2]}, 5) == []
    assert token_id_problems({"pad_token_id": 99}, None) == []
    assert token_id_problems({"pad_token_id": 5, "eos_token_id": [1, 7], "other": 100}, 5) == [
        ("pad_token_id", "must be below the decoder's vocab_size (5)", 5),
        ("eos_token_id", "must be below the decoder's vocab_size (5)", [1, 7]),
    ]
    with pytest.raises(sw.ConfigError) as e:
        check_token_ids({"decoder_start_token_id": 9}, 5, "here")
    assert str(e.value) == "here: decoder_start_token_id: must be below the decoder's vocab_size (5) (got 9)"
    with pytest.raises(sw.ConfigError) as e:
        check_token_ids({"pad_token_id": 5, "eos_token_id": 6}, 5, "f.yaml", prefix="generation.")
    assert str(e.value).splitlines() == [
        "f.yaml: generation.pad_token_id: must be below the decoder's vocab_size (5) (got 5)",
        "f.yaml: generation.eos_token_id: must be below the decoder's vocab_size (5) (got 6)",
    ]


@pytest.mark.parametrize("name", TOKEN_ID_FIELDS)
def test_token_id_errors_read_the_same_from_every_entry_point(model, tmp_path, capsys, name):
    vocab = model.decoder.vocab_size
    value = [3, vocab] if name == "eos_token_id" else vocab
    expected = f"{name}: must be below the decoder's vocab_size ({vocab}) (got {value!r})"
    messages: dict[str, str] = {}

    data = yaml.safe_load(TINY.read_text())
    data["tokenizer"] = str((TINY.parent / data["tokenizer"]).resolve())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**data, name: value}))
    with pytest.raises(sw.ConfigError) as e:
        sw.load_config(path)
    messages["config file"] = str(e.value)

    ids, mask = source_batch(vocab, 0)
    with pytest.raises(sw.ConfigError) as e:
        model.generate(ids, mask, **{name: value})
    messages["generate()"] = str(e.value)

    with pytest.raises(sw.ConfigError) as e:
        sw.pipeline(model)("some text", **{name: value})
    messages["pipeline"] = str(e.value)

    flag = f"--{name.replace('_', '-')}"
    flags = [a for v in (value if isinstance(value, list) else [value]) for a in (flag, v)]
    assert main(["generate", str(TINY), "some text", *map(str, flags)]) == 2
    messages["cli"] = capsys.readouterr().err.removeprefix("error: ").strip()

    # The `generation:` block: checked when the file is read, or at the latest when generating.
    path.write_text(yaml.safe_dump({**data, "generation": {name: value}}))
    try:
        sw.EncoderDecoder.from_config(path).generate(ids, mask)
    except sw.ConfigError as e:
        messages["generation: block"] = str(e).replace("generation.", "")
    for where, message in messages.items():
        assert message.endswith(f": {expected}"), (where, message)
        assert "\n" not in message, (where, message)
    assert set(messages) == {"config file", "generate()", "pipeline", "cli", "generation: block"}


def test_bad_token_ids_are_refused_as_values(model):
    ids, _ = source_batch(model.decoder.vocab_size, 0)
    for bad in (True, 2.0, "2", -1, [3, -1]):
        with pytest.raises(sw.ConfigError, match="eos_token_id: must be a token id"):
            model.generate(ids, eos_token_id=bad)


# ---------------------------------------------------------------------------------------------
# What generation needs of a model


class _Encoder(torch.nn.Module):
    """A hand-written encoder (the protocol only): embeddings and one linear layer, 24 wide."""

    hidden_size = 24

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 24)
        self.mix = torch.nn.Linear(24, 24)

    def forward(self, input_ids, attention_mask=None, *, output_attentions=False, output_hidden_states=False):
        x = self.embed(input_ids)
        if attention_mask is not None:
            x = x * attention_mask[..., None]
        return EncoderOutput(torch.tanh(self.mix(x)))


def _hand_written() -> sw.EncoderDecoder:
    decoder = DelegatingDecoder(build_part("bert", "decoder"))
    torch.manual_seed(1)
    model = sw.EncoderDecoder(
        _Encoder(decoder.vocab_size), decoder, decoder_start_token_id=2, pad_token_id=0
    ).eval()
    assert model.enc_to_dec_proj is not None  # 24 -> the decoder's width: encode() projects
    return model


def test_encode_is_what_forward_and_generation_use():
    model = _hand_written()
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    with torch.no_grad():
        source = model.encode(ids, mask)
        assert isinstance(source, Encoded) and source.mask is mask
        assert source.states.shape == (*ids.shape, model.decoder.cross_attention_hidden_size)
        assert torch.equal(source.states, model.enc_to_dec_proj(source.encoder.last_hidden_state))
        again = model(encoder_outputs=source.encoder, attention_mask=mask, decoder_input_ids=ids[:, :3])
        assert torch.equal(again.logits, model(ids, mask, decoder_input_ids=ids[:, :3]).logits)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=5), naive_greedy(model, ids, mask, 5))


class _OnlyTheProtocol:
    """A model that is nothing but generation's Seq2SeqModel protocol: no EncoderDecoder in sight."""

    def __init__(self, inner: sw.EncoderDecoder) -> None:
        self._inner = inner
        self.decoder = inner.decoder
        self.encoded = 0

    def encode(self, input_ids, attention_mask=None) -> Encoded:
        self.encoded += 1
        return self._inner.encode(input_ids, attention_mask)

    def generation_defaults(self) -> sw.GenerationSettings:
        return sw.GenerationSettings(max_new_tokens=4, decoder_start_token_id=2, pad_token_id=0)

    def parameters(self):
        return self._inner.parameters()


def test_generation_needs_only_the_protocol():
    inner = _hand_written()
    model = _OnlyTheProtocol(inner)
    ids, mask = source_batch(inner.decoder.vocab_size, 0)
    for options in ({}, {"num_beams": 3}, {"do_sample": True, "top_k": 5}):
        seed = {"generator": torch.Generator().manual_seed(0)}
        ours = generation.generate(model, ids, mask, **options, **seed)
        seed = {"generator": torch.Generator().manual_seed(0)}
        assert torch.equal(ours, inner.generate(ids, mask, max_new_tokens=4, **options, **seed)), options
    assert model.encoded == 3
    assert torch.equal(
        torch.stack(list(generation.generate_stream(model, ids, mask)), dim=1),
        generation.generate(model, ids, mask)[:, 1:],
    )


def test_generation_does_not_import_the_composer():
    package = ROOT / "core" / "seqweave" / "generation"
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("composer" in n or "pipeline" in n for n in names), (path.name, names)
