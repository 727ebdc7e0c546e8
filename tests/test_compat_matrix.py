"""The compatibility matrix: checkpoints that transformers' ``EncoderDecoderModel`` saves and loads.

Every cell is a tiny random composite built and saved by transformers itself (its own
``save_pretrained``, or ``torch.save`` for the legacy pickle), then loaded by both
transformers and seqweave from the same folder. A cell either loads with logits equal to
transformers' (1e-5 in float32; half-precision cells are also compared in their own dtype
at a half's tolerance), survives a load -> save round trip (every tensor of the file is
saved again or reported as ignored), or is refused with an error that names the field.

``python tests/test_compat_matrix.py`` prints the matrix (cell -> loaded / refused (reason)).

Refused on purpose: BERT's ``position_embedding_type`` ``relative_key`` and
``relative_key_query``. transformers 5.x dropped relative positions and silently runs such a
checkpoint with absolute ones (its distance tables unused); we refuse it with a
:class:`seqweave.ConfigError` naming the field, since the logits would not be the trained model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import hf_config, label_batch, randomize, source_batch

import seqweave as sw

TOL = 1e-5
HALF_TOL = {torch.float16: 2e-2, torch.bfloat16: 1.5e-1}


@dataclass(frozen=True)
class Cell:
    """One checkpoint variation: the pair, config overrides and how the files are written."""

    encoder: str = "bert"
    decoder: str = "bert"
    enc: dict = field(default_factory=dict)
    dec: dict = field(default_factory=dict)
    pooler: bool = True  # BertModel / RobertaModel(add_pooling_layer=...)
    dtype: torch.dtype = torch.float32
    fmt: str = "safetensors"  # safetensors | bin (zip) | legacy (pre-zip pickle)
    shard: str | None = None  # save_pretrained(max_shard_size=...); for the pickles: two shards
    extra: tuple[str, ...] = ()  # tensors added to the file (old buffers, other heads)
    top: dict = field(default_factory=dict)
    json_fields: dict = field(default_factory=dict)  # written into config.json after saving, by object
    refused: tuple[type, str] | None = None  # (error class, text the message must contain)


_BUFFERS = ("encoder.embeddings.position_ids", "encoder.embeddings.token_type_ids")
_GPT2_DEFAULT_IDS = {"bos_token_id": 50256, "eos_token_id": 50256}

CELLS: dict[str, Cell] = {
    # the pairings
    "bert2bert": Cell(),
    "bert2gpt2": Cell(decoder="gpt2"),
    "roberta2roberta": Cell("roberta", "roberta", top={"pad_token_id": 1, "decoder_start_token_id": 0}),
    "roberta2gpt2": Cell("roberta", "gpt2", top={"pad_token_id": 1, "decoder_start_token_id": 0}),
    "gpt2bert": Cell("gpt2", "bert"),
    "bert2roberta": Cell("bert", "roberta"),
    # the pooler (BertModel(add_pooling_layer=False))
    "bert2bert no pooler": Cell(pooler=False),
    "roberta2roberta no pooler": Cell("roberta", "roberta", pooler=False),
    "bert2gpt2 no pooler": Cell(decoder="gpt2", pooler=False),
    # word embeddings tied or not, encoder tied to decoder
    "bert2bert untied decoder head": Cell(dec={"tie_word_embeddings": False}),
    "roberta2roberta untied decoder head": Cell("roberta", "roberta", dec={"tie_word_embeddings": False}),
    "bert2gpt2 untied decoder head": Cell(decoder="gpt2", dec={"tie_word_embeddings": False}),
    "bert2bert tie_encoder_decoder": Cell(top={"tie_encoder_decoder": True}),
    # default special ids with another vocabulary size (fields the composite does not use)
    "bert2gpt2 GPT2Config default bos/eos 50256": Cell(decoder="gpt2", dec=_GPT2_DEFAULT_IDS),
    "gpt2bert GPT2Config default bos/eos 50256": Cell("gpt2", "bert", enc=_GPT2_DEFAULT_IDS),
    "bert2bert bos/eos beyond vocab": Cell(enc={"bos_token_id": 30000, "eos_token_id": 30001},
                                          dec={"bos_token_id": 30000, "eos_token_id": 30001}),
    "roberta2roberta RobertaConfig default ids, vocab 99": Cell(
        "roberta", "roberta", enc={"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        dec={"bos_token_id": 0, "eos_token_id": 50264}, top={"pad_token_id": 1, "decoder_start_token_id": 0}),
    # fields of transformers 4.x config.json files that the composite does not use
    "bert2gpt2 transformers 4.x config fields": Cell(decoder="gpt2", json_fields={
        "top": {"torch_dtype": "float32", "tie_word_embeddings": False, "max_length": 20,
                "bad_words_ids": None, "transformers_version": "4.26.0", "_name_or_path": "x"},
        "encoder": {"architectures": ["BertForMaskedLM"], "gradient_checkpointing": False,
                    "torchscript": False, "chunk_size_feed_forward": 0, "id2label": {"0": "LABEL_0"},
                    "output_past": True, "_name_or_path": "bert-base-uncased",
                    "position_embedding_type": "absolute"},
        "decoder": {"architectures": ["GPT2LMHeadModel"], "n_ctx": 64, "output_hidden_states": False,
                    "task_specific_params": {"text-generation": {"do_sample": True}}, "pruned_heads": {}}}),
    # other sizes
    "bert2bert type_vocab_size=1": Cell(enc={"type_vocab_size": 1}, dec={"type_vocab_size": 1}),
    "bert2gpt2 n_inner=48": Cell(decoder="gpt2", dec={"n_inner": 48}),
    "bert2gpt2 wider decoder (enc_to_dec_proj)": Cell(decoder="gpt2", dec={"n_embd": 48}),
    "roberta2bert narrower decoder (enc_to_dec_proj)": Cell(
        "roberta", "bert", dec={"hidden_size": 24, "num_attention_heads": 2},
        top={"pad_token_id": 1, "decoder_start_token_id": 0}),
    # dtypes saved
    "bert2bert fp16": Cell(dtype=torch.float16),
    "bert2bert bf16": Cell(dtype=torch.bfloat16),
    "bert2gpt2 fp16": Cell(decoder="gpt2", dtype=torch.float16),
    "roberta2gpt2 bf16": Cell("roberta", "gpt2", dtype=torch.bfloat16,
                              top={"pad_token_id": 1, "decoder_start_token_id": 0}),
    # files
    "bert2bert sharded safetensors": Cell(shard="40KB"),
    "bert2gpt2 sharded safetensors": Cell(decoder="gpt2", shard="40KB"),
    "bert2bert zip .bin": Cell(fmt="bin"),
    "bert2bert sharded zip .bin": Cell(fmt="bin", shard="40KB"),
    "bert2gpt2 legacy .bin": Cell(decoder="gpt2", fmt="legacy"),
    "roberta2roberta legacy .bin": Cell("roberta", "roberta", fmt="legacy"),
    "bert2bert legacy .bin fp16": Cell(fmt="legacy", dtype=torch.float16),
    "bert2gpt2 sharded legacy .bin": Cell(decoder="gpt2", fmt="legacy", shard="40KB"),
    # extra tensors in the file
    "bert2bert position_ids/token_type_ids buffers": Cell(
        extra=(*_BUFFERS, "decoder.bert.embeddings.position_ids", "decoder.bert.embeddings.token_type_ids")),
    "roberta2roberta position_ids buffers": Cell(
        "roberta", "roberta",
        extra=("encoder.embeddings.position_ids", "decoder.roberta.embeddings.position_ids")),
    "bert2gpt2 attn.bias buffers": Cell(
        decoder="gpt2",
        extra=("decoder.transformer.h.0.attn.bias", "decoder.transformer.h.1.attn.masked_bias",
               "decoder.transformer.h.0.crossattention.bias")),
    "bert2bert other heads": Cell(extra=("encoder.classifier.weight", "decoder.cls.seq_relationship.weight")),
    # activation functions
    **{f"bert2bert hidden_act={a}": Cell(enc={"hidden_act": a}, dec={"hidden_act": a})
       for a in ("gelu_new", "relu", "silu", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "tanh")},
    **{f"bert2gpt2 activation_function={a}": Cell(decoder="gpt2", dec={"activation_function": a})
       for a in ("gelu", "relu", "gelu_pytorch_tanh", "silu", "quick_gelu")},
    "roberta2roberta hidden_act=gelu_new": Cell("roberta", "roberta", enc={"hidden_act": "gelu_new"},
                                                dec={"hidden_act": "gelu_new"}),
    "bert2bert hidden_act=prelu": Cell(enc={"hidden_act": "prelu"},
                                       refused=(sw.ConfigError, "hidden_act")),
    # BERT's position_embedding_type
    "bert2bert position_embedding_type=absolute": Cell(enc={"position_embedding_type": "absolute"},
                                                       dec={"position_embedding_type": "absolute"}),
    "bert2bert position_embedding_type=relative_key": Cell(
        enc={"position_embedding_type": "relative_key"}, refused=(sw.ConfigError, "position_embedding_type")),
    "bert2roberta position_embedding_type=relative_key_query": Cell(
        "bert", "roberta", dec={"position_embedding_type": "relative_key_query"},
        refused=(sw.ConfigError, "position_embedding_type")),
    # GPT-2's attention options
    "bert2gpt2 scale_attn_by_inverse_layer_idx": Cell(decoder="gpt2",
                                                      dec={"scale_attn_by_inverse_layer_idx": True}),
    "bert2gpt2 scale_attn_weights=False": Cell(decoder="gpt2", dec={"scale_attn_weights": False}),
    "bert2gpt2 reorder_and_upcast_attn": Cell(decoder="gpt2", dec={"reorder_and_upcast_attn": True}),
    "bert2gpt2 reorder_and_upcast_attn fp16": Cell(decoder="gpt2", dec={"reorder_and_upcast_attn": True},
                                                  dtype=torch.float16),
    "gpt2bert scale_attn_by_inverse_layer_idx": Cell("gpt2", "bert",
                                                     enc={"scale_attn_by_inverse_layer_idx": True}),
}


def _hf_part(arch: str, role: str, overrides: dict, pooler: bool):
    import transformers

    cfg = hf_config(arch, role, **overrides)
    if role == "decoder":
        return transformers.AutoModelForCausalLM.from_config(cfg)
    if arch in ("bert", "roberta"):
        return transformers.AutoModel.from_config(cfg, add_pooling_layer=pooler)
    return transformers.AutoModel.from_config(cfg)


def _extra_tensor(name: str) -> torch.Tensor:
    """A tensor as old checkpoints stored it under ``name`` (a buffer), or a random one (another head)."""
    if name.endswith("position_ids"):
        return torch.arange(64)[None]
    if name.endswith("token_type_ids"):
        return torch.zeros(1, 64, dtype=torch.long)
    if name.endswith("masked_bias"):
        return torch.tensor(-1e4)
    if name.endswith(".bias"):  # GPT-2's causal-mask buffer
        return torch.tril(torch.ones(64, 64, dtype=torch.bool))[None, None]
    return torch.randn(3, 32)


def _copy_shared(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy ``source``'s tensors into ``target``'s of the same name and shape."""
    theirs = dict(source.named_parameters())
    with torch.no_grad():
        for n, p in target.named_parameters():
            if n in theirs and theirs[n].shape == p.shape:
                p.copy_(theirs[n])


def save_cell(cell: Cell, folder: Path) -> None:
    """Build the cell's random ``EncoderDecoderModel`` with transformers and write its files to ``folder``."""
    from safetensors.torch import load_file, save_file
    from transformers import EncoderDecoderModel

    torch.manual_seed(0)
    model = EncoderDecoderModel(encoder=_hf_part(cell.encoder, "encoder", cell.enc, cell.pooler),
                                decoder=_hf_part(cell.decoder, "decoder", cell.dec, True))
    for k, v in {"decoder_start_token_id": 2, "pad_token_id": 0, **cell.top}.items():
        setattr(model.config, k, v)
    model = randomize(model, 0).to(cell.dtype).eval()
    if cell.top.get("tie_encoder_decoder"):
        # transformers 5 no longer ties: give the two copies one value, as a tied model saved them
        _copy_shared(model.decoder.bert, model.encoder)
    kwargs = {"max_shard_size": cell.shard} if cell.shard else {}
    model.save_pretrained(folder, **kwargs)
    if cell.fmt != "safetensors":
        # transformers 5 writes safetensors only (safe_serialization=False is ignored): the pickles are
        # written as transformers 4.x wrote them, the whole state dict, tied copies included.
        for f in folder.glob("model*.safetensors*"):
            f.unlink()
        sd, zipped = model.state_dict(), cell.fmt == "bin"
        if cell.shard:
            names = list(sd)
            shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
            for shard, keys in shards.items():
                torch.save({k: sd[k] for k in keys}, folder / shard, _use_new_zipfile_serialization=zipped)
            index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
            (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        else:
            torch.save(sd, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
    if cell.json_fields:
        data = json.loads((folder / "config.json").read_text())
        for where, values in cell.json_fields.items():
            (data if where == "top" else data[where]).update(values)
        (folder / "config.json").write_text(json.dumps(data))
    if cell.extra:
        assert cell.fmt == "safetensors" and not cell.shard
        sd = load_file(folder / "model.safetensors")
        sd.update({n: _extra_tensor(n) for n in cell.extra})
        save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


_WEIGHTS_FILE = {
    ("safetensors", False): "model.safetensors", ("safetensors", True): "model.safetensors.index.json",
    ("bin", False): "pytorch_model.bin", ("bin", True): "pytorch_model.bin.index.json",
    ("legacy", False): "pytorch_model.bin", ("legacy", True): "pytorch_model.bin.index.json",
}


def _inputs(cell: Cell):
    pad = {"pad_token_id": 0, **cell.top}["pad_token_id"]
    ids, mask = source_batch(99, pad=pad)
    return {"input_ids": ids, "attention_mask": mask, "labels": label_batch(99)}


def _file_names(folder: Path) -> set[str]:
    from seqweave.checkpoint.formats import read_state_dict

    return set(read_state_dict(folder)[0])


def run_cell(name: str, cell: Cell, folder: Path) -> str:
    """Load the cell both ways and compare; return ``loaded`` or ``refused (reason)``; raise on a mismatch."""
    from transformers import EncoderDecoderModel

    save_cell(cell, folder / "hf")
    ref = EncoderDecoderModel.from_pretrained(folder / "hf", dtype=torch.float32).eval()
    if cell.refused is not None:
        error, text = cell.refused
        with pytest.raises(error, match=text) as info:
            sw.EncoderDecoder.from_pretrained(folder / "hf")
        return f"refused ({str(info.value).splitlines()[0]})"
    ours = sw.EncoderDecoder.from_pretrained(folder / "hf", dtype=torch.float32)
    read = Path(ours.load_report.sources["model"]).name
    assert read == _WEIGHTS_FILE[cell.fmt, cell.shard is not None], f"{name}: read {read}"
    inputs = _inputs(cell)
    with torch.no_grad():
        r, o = ref(**inputs, return_dict=True), ours(**inputs)
    assert r.logits.abs().max() > 1.0  # visibly random weights: a match means something
    torch.testing.assert_close(o.logits, r.logits, atol=TOL, rtol=0, msg=f"{name}: logits")
    torch.testing.assert_close(o.loss, r.loss, atol=TOL, rtol=0, msg=f"{name}: loss")
    if cell.dtype != torch.float32:  # in the file's own dtype, as both load it by default
        half = sw.EncoderDecoder.from_pretrained(folder / "hf")
        assert next(half.parameters()).dtype == cell.dtype
        ref_half = EncoderDecoderModel.from_pretrained(folder / "hf", dtype=cell.dtype).eval()
        with torch.no_grad():
            rh, oh = ref_half(**inputs, return_dict=True), half(**inputs)
        tol = HALF_TOL[cell.dtype]
        torch.testing.assert_close(oh.logits.float(), rh.logits.float(), atol=tol, rtol=0,
                                   msg=f"{name}: half")
    # round trip: every tensor of the file is saved again or reported as ignored, and the reload matches
    ours.save_pretrained(folder / "ours")
    again = sw.EncoderDecoder.from_pretrained(folder / "ours")
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, o.logits, atol=0, rtol=0)
    ignored = {n.partition(":")[2] for n in ours.load_report.ignored}
    lost = _file_names(folder / "hf") - _file_names(folder / "ours") - ignored
    assert not lost, f"{name}: tensors neither kept nor reported as ignored: {sorted(lost)}"
    return "loaded" + (f" (ignored: {', '.join(sorted(ignored))})" if ignored else "")


@pytest.mark.parametrize("name", list(CELLS))
def test_cell(name: str, tmp_path: Path) -> None:
    run_cell(name, CELLS[name], tmp_path)


def test_ignored_tensors_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cell = CELLS["bert2bert position_ids/token_type_ids buffers"]
    save_cell(cell, tmp_path)
    with caplog.at_level("INFO", logger="seqweave"):
        model = sw.EncoderDecoder.from_pretrained(tmp_path)
    lines = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and "position_ids" in lines[0], lines
    assert {n.partition(":")[2] for n in model.load_report.ignored} >= set(cell.extra)


def test_pooler_is_kept_when_present(tmp_path: Path) -> None:
    save_cell(Cell(), tmp_path / "hf")
    sw.EncoderDecoder.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    assert "encoder.pooler.dense.weight" in _file_names(tmp_path / "ours")
    save_cell(Cell(pooler=False), tmp_path / "nopool")
    model = sw.EncoderDecoder.from_pretrained(tmp_path / "nopool")
    assert not [n for n in model.load_report.new if "pooler" in n]
    model.save_pretrained(tmp_path / "ours2")
    assert not any("pooler" in n for n in _file_names(tmp_path / "ours2"))


def test_unused_ids_are_carried_through_save(tmp_path: Path) -> None:
    save_cell(CELLS["bert2gpt2 GPT2Config default bos/eos 50256"], tmp_path / "hf")
    sw.EncoderDecoder.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    dec = json.loads((tmp_path / "ours" / "config.json").read_text())["decoder"]
    assert dec["bos_token_id"] == dec["eos_token_id"] == 50256


def test_generation_checks_a_start_id_beyond_the_vocabulary(tmp_path: Path) -> None:
    """An id the composite uses is checked where it is used: generate, not loading."""
    save_cell(Cell(decoder="gpt2", dec=_GPT2_DEFAULT_IDS), tmp_path)
    model = sw.EncoderDecoder.from_pretrained(tmp_path)
    ids, mask = source_batch(99, pad=0)
    with pytest.raises(sw.ConfigError, match="decoder_start_token_id"):
        model.generate(ids, attention_mask=mask, decoder_start_token_id=50256, max_new_tokens=2)


def test_tied_copies_that_drifted_apart_are_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """transformers 5 does not tie encoder to decoder: copies fine-tuned apart there are named, once."""
    save_cell(Cell(top={"tie_encoder_decoder": True}), tmp_path)
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "model.safetensors")
    sd["encoder.encoder.layer.0.output.dense.weight"] += 0.1
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="seqweave"):
        sw.EncoderDecoder.from_pretrained(tmp_path)
    lines = [r.getMessage() for r in caplog.records if "differ from the decoder" in r.getMessage()]
    assert len(lines) == 1 and "1 tied tensor(s)" in lines[0] and "layers.0.ffn.fc_out.weight" in lines[0]
    caplog.clear()
    save_cell(Cell(top={"tie_encoder_decoder": True}), tmp_path / "same")
    with caplog.at_level("WARNING", logger="seqweave"):
        sw.EncoderDecoder.from_pretrained(tmp_path / "same")
    assert not [r for r in caplog.records if "differ" in r.getMessage()]


@pytest.mark.parametrize("where", ["top", "decoder"])
def test_generation_fields_of_a_config_json_without_generation_config(tmp_path: Path, where: str) -> None:
    """Checkpoints saved before transformers 4.27 keep generation defaults in config.json: both use them."""
    from transformers import EncoderDecoderModel

    save_cell(Cell(), tmp_path)
    (tmp_path / "generation_config.json").unlink()
    data = json.loads((tmp_path / "config.json").read_text())
    fields = {"num_beams": 3, "max_length": 7, "min_length": 4, "no_repeat_ngram_size": 2,
              "length_penalty": 2.0, "early_stopping": True}
    (data if where == "top" else data["decoder"]).update(fields)
    (tmp_path / "config.json").write_text(json.dumps(data))
    ref = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ours = sw.EncoderDecoder.from_pretrained(tmp_path)
    s = ours.generation_settings
    assert (s.num_beams, s.max_length, s.min_length, s.no_repeat_ngram_size) == (3, 7, 4, 2)
    ids, mask = source_batch(99, pad=0)
    with torch.no_grad():
        expected = ref.generate(input_ids=ids, attention_mask=mask)
        got = ours.generate(ids, attention_mask=mask)
    got = got.sequences if hasattr(got, "sequences") else got
    assert expected.shape[1] == 7
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_warm_start_from_single_model_files_transformers_loads(tmp_path: Path) -> None:
    """Warm start: a GPT-2 with GPT2Config's default ids, as a legacy pickle; a pooler-less BERT encoder."""
    import transformers

    torch.manual_seed(0)
    dec = randomize(transformers.GPT2LMHeadModel(hf_config("gpt2", "encoder", **_GPT2_DEFAULT_IDS)), 1)
    dec.save_pretrained(tmp_path / "dec")
    (tmp_path / "dec" / "model.safetensors").unlink()
    torch.save(dec.state_dict(), tmp_path / "dec" / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    enc = randomize(transformers.BertModel(hf_config("bert", "encoder"), add_pooling_layer=False), 2)
    enc.save_pretrained(tmp_path / "enc")
    model = sw.EncoderDecoder.from_pretrained_parts(tmp_path / "enc", tmp_path / "dec",
                                                    decoder_start_token_id=2, pad_token_id=0)
    assert model.load_report.sources["decoder"].endswith("pytorch_model.bin")
    assert model.decoder.config.bos_token_id == 50256  # carried, unused until generation needs it
    # transformers creates BertModel's pooler when the file lacks it, and so do we (a warm start)
    assert {"encoder.pooler.weight", "encoder.pooler.bias"} <= set(model.load_report.new)
    sd = dec.state_dict()
    wte = model.decoder.embeddings.tokens.weight
    torch.testing.assert_close(wte, sd["transformer.wte.weight"], atol=0, rtol=0)


def main() -> None:
    """Print the matrix: cell -> loaded / refused (reason) / FAILED (error)."""
    import tempfile

    width = max(map(len, CELLS))
    for name, cell in CELLS.items():
        with tempfile.TemporaryDirectory() as d:
            try:
                result = run_cell(name, cell, Path(d))
            except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001 - the matrix shows every failure
                result = f"FAILED ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        print(f"{name:<{width}}  {result}")


if __name__ == "__main__":
    main()
