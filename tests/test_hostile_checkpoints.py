"""Hostile checkpoints: confined shard paths, checked headers, shapes and dtypes checked before any data is read.

Each case is a file a careless or malicious user could hand to ``from_pretrained``: the answer
is a :class:`seqweave.CheckpointError` naming the file (and the tensor or shard), never a raw
traceback, a file outside the checkpoint folder read, a silently wrong tensor, or gigabytes read.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from conftest import hf_composite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save, save_file

import seqweave as sw
from seqweave.checkpoint.formats import (
    CheckpointTensors,
    _read_safetensors,
    _safetensors_locations,
    read_state_dict,
)

QUERY = "decoder.bert.encoder.layer.0.attention.self.query.weight"
DENSE = "decoder.bert.encoder.layer.1.intermediate.dense.weight"


def _shard(folder: Path, sd: dict[str, torch.Tensor], *, names=("a.safetensors", "b.safetensors")) -> dict:
    """Replace ``model.safetensors`` by two shards and an index; return the weight map."""
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    half = len(keys) // 2
    weight_map = {}
    for name, chunk in zip(names, (keys[:half], keys[half:]), strict=True):
        save_file({k: sd[k] for k in chunk}, str(folder / name))
        weight_map.update(dict.fromkeys(chunk, name))
    _index(folder, {"weight_map": weight_map})
    return weight_map


def _index(folder: Path, data) -> None:
    (folder / "model.safetensors.index.json").write_text(data if isinstance(data, str) else json.dumps(data))


# ----------------------------------------------------------------------------------------
# Shard paths are confined to the checkpoint folder


@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_shard_paths_leaving_the_folder_are_refused(copy, escape):
    sd = load_file(str(copy / "model.safetensors"))
    outside = copy.parent / "outside.safetensors"
    save_file({k: sd[k] for k in sorted(sd)[:5]}, str(outside))
    weight_map = _shard(copy, sd)
    shard = str(outside) if escape == "ABSOLUTE" else escape
    first = min(weight_map)
    weight_map[first] = shard
    _index(copy, {"weight_map": weight_map})
    with pytest.raises(sw.CheckpointError, match=r"model.safetensors.index.json: shard .*outside"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_a_symlink_leaving_the_folder_is_refused(copy):
    sd = load_file(str(copy / "model.safetensors"))
    weight_map = _shard(copy, sd)
    elsewhere = copy.parent / "elsewhere.safetensors"
    shutil.move(copy / "a.safetensors", elsewhere)
    (copy / "a.safetensors").symlink_to(elsewhere)
    with pytest.raises(sw.CheckpointError, match=r"shard 'a.safetensors' leads outside"):
        sw.EncoderDecoder.from_pretrained(copy)
    assert weight_map


def test_a_symlink_inside_the_folder_and_the_hub_cache_layout_load(folder, tmp_path):
    sd = load_file(str(folder / "model.safetensors"))
    # the Hub cache: snapshots/<rev>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--x--y"
    snap = repo / "snapshots" / "abc"
    shutil.copytree(folder, snap)
    _shard(snap, sd)
    (repo / "blobs").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        shutil.move(snap / name, repo / "blobs" / f"hash-{name}")
        (snap / name).symlink_to(Path("../../blobs") / f"hash-{name}")
    read, _ = read_state_dict(snap)
    assert read.keys() == sd.keys()
    inside = tmp_path / "inside"
    shutil.copytree(folder, inside)
    _shard(inside, sd)
    (inside / "store").mkdir()
    shutil.move(inside / "a.safetensors", inside / "store" / "a.safetensors")
    (inside / "a.safetensors").symlink_to(Path("store/a.safetensors"))
    model = sw.EncoderDecoder.from_pretrained(inside)
    assert model.load_report.sources["model"].endswith("index.json")


def test_a_tensor_in_two_shards_names_both(copy):
    sd = load_file(str(copy / "model.safetensors"))
    weight_map = _shard(copy, sd)
    a = load_file(str(copy / "a.safetensors"))
    b = load_file(str(copy / "b.safetensors"))
    b[next(iter(a))] = torch.zeros_like(next(iter(a.values())))  # the same name again, other values
    save_file(b, str(copy / "b.safetensors"))
    with pytest.raises(sw.CheckpointError, match=r"is in two shards, a.safetensors and b.safetensors"):
        sw.EncoderDecoder.from_pretrained(copy)
    assert weight_map


@pytest.mark.parametrize(
    ("index", "why"),
    [
        ("[1, 2]", "weight_map"),
        ('{"weight_map": ["a.safetensors"]}', "weight_map"),
        ('{"weight_map": {"x": 3}}', r"weight_map\['x'\] is a int"),
        ('{"weight_map": {"x": null}}', "NoneType"),
        ('{"weight_map": {"x": ["a"]}}', "list"),
        ("{}", "weight_map"),
        ("not json", "JSONDecodeError"),
        ("[" * 100_000 + "]" * 100_000, "RecursionError"),
        (b"\xff\xfe{".decode("latin-1"), "not a valid shard index"),
    ],
    ids=["list", "map-is-list", "int-value", "null-value", "list-value", "no-map", "not-json", "deep",
         "not-utf8"],
)
def test_malformed_index_types_name_the_file(copy, index, why):
    (copy / "model.safetensors").unlink()
    _index(copy, index)
    with pytest.raises(sw.CheckpointError, match=rf"model.safetensors.index.json: .*{why}"):
        sw.EncoderDecoder.from_pretrained(copy)


@pytest.mark.parametrize("shard", ["", "/etc/passwd", "C:\\x.safetensors", "a\\..\\..\\x", ".."])
def test_odd_shard_names_are_refused(copy, shard):
    (copy / "model.safetensors").unlink()
    _index(copy, {"weight_map": {"x": shard}})
    with pytest.raises(sw.CheckpointError, match=r"model.safetensors.index.json: shard"):
        read_state_dict(copy)


# ----------------------------------------------------------------------------------------
# Shapes and dtypes are checked against the config before any data is read


def _raw_safetensors(path: Path, sd: dict[str, torch.Tensor], huge: dict[str, tuple[str, list[int]]]) -> None:
    """``sd`` saved, plus ``huge`` tensors declared after it whose bytes are a sparse hole (no disk, no memory)."""
    blob = save(sd)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    end = len(data)
    sizes = {"F32": 4, "F16": 2, "I8": 1, "BOOL": 1}
    for name, (dtype, shape) in huge.items():
        count = 1
        for d in shape:
            count *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [end, end + count * sizes[dtype]]}
        end += count * sizes[dtype]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate(8 + len(text) + end)


def test_a_huge_declared_fused_tensor_is_refused_before_it_is_read(copy, monkeypatch):
    sd = load_file(str(copy / "model.safetensors"))
    del sd[QUERY]
    # 2 GiB of float32 declared for one part of the fused q/k/v: the file is sparse, nothing is written
    _raw_safetensors(copy / "model.safetensors", sd, {QUERY: ("F32", [16384, 32768])})
    reads = []
    fresh = CheckpointTensors.fresh
    monkeypatch.setattr(CheckpointTensors, "fresh", lambda self, name: reads.append(name) or fresh(self, name))
    start = time.perf_counter()
    with pytest.raises(sw.CheckpointError, match=rf"model.safetensors: tensor {QUERY} has shape "
                                                 r"\[16384, 32768\], but the config implies \[24, 24\] "
                                                 r"\(part 1 of 3 fused"):
        sw.EncoderDecoder.from_pretrained(copy)
    assert time.perf_counter() - start < 10
    assert not [r for r in reads if r.startswith("decoder.")]  # not a byte of the fused parts was read


def test_a_misshapen_fused_part_names_the_part(copy):
    sd = load_file(str(copy / "model.safetensors"))
    name = QUERY.replace("query", "value")
    sd[name] = torch.zeros(24, 23)
    save_file(sd, str(copy / "model.safetensors"))
    with pytest.raises(sw.CheckpointError, match=rf"tensor {name} has shape \[24, 23\].*part 3 of 3"):
        sw.EncoderDecoder.from_pretrained(copy)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64, torch.uint8])
@pytest.mark.parametrize("name", [QUERY, DENSE], ids=["fused", "plain"])
@pytest.mark.parametrize("file", ["model.safetensors", "pytorch_model.bin"])
def test_non_float_tensors_where_float_weights_belong_are_refused(copy, dtype, name, file):
    sd = load_file(str(copy / "model.safetensors"))
    sd[name] = torch.zeros(sd[name].shape, dtype=dtype)
    (copy / "model.safetensors").unlink()
    if file.endswith(".bin"):
        torch.save(sd, copy / file)
    else:
        save_file(sd, str(copy / file))
    with pytest.raises(sw.CheckpointError, match=rf"{file}: tensor {name} is {str(dtype)[6:]}, but .* holds "
                                                 "floating-point weights"):
        sw.EncoderDecoder.from_pretrained(copy)


def test_non_float_tensor_is_refused_by_load_module_weights_too():
    from seqweave.weights import WeightMap, load_module_weights, rule

    with torch.device("meta"):
        module = torch.nn.Linear(2, 2)
    with pytest.raises(sw.CheckpointError, match=r"f.bin: tensor weight is int8, but weight holds floating"):
        load_module_weights(module, {"weight": torch.zeros(2, 2, dtype=torch.int8), "bias": torch.zeros(2)},
                            source="f.bin", weight_map=WeightMap((rule("weight"), rule("bias"))))


def test_a_pickle_that_is_not_a_tensor_dict_is_refused(copy):
    (copy / "model.safetensors").unlink()
    torch.save({"x": [1, 2]}, copy / "pytorch_model.bin")
    with pytest.raises(sw.CheckpointError, match=r"pytorch_model.bin: expected a state dict"):
        sw.EncoderDecoder.from_pretrained(copy)


# ----------------------------------------------------------------------------------------
# The safetensors header reader


def _valid_file() -> bytes:
    return save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16),
                 "c": torch.zeros(0)}, metadata={"format": "pt"})


def _with_header(header, data: bytes = b"\0" * 64, size: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if size is None else size) + text + data


_T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"", "shorter than"),
        (b"\x01\x02", "shorter than"),
        (struct.pack("<Q", 2**63) + b"{}", "does not fit"),
        (struct.pack("<Q", 100) + b"{}", "does not fit"),
        (struct.pack("<Q", 0), "does not fit"),
        (_with_header(b"{not json}"), "not JSON"),
        (_with_header(b"\xff\xfe\xfd\xfc"), "not JSON"),
        (_with_header(b"[" * 5000 + b"]" * 5000), "not JSON|not an object"),
        (_with_header([1, 2]), "not an object"),
        (_with_header({"a": 1}), "entry is not an object"),
        (_with_header({"a": {**_T, "dtype": 4}}), "dtype is not a string"),
        (_with_header({"a": {**_T, "shape": [-2]}}), "shape"),
        (_with_header({"a": {**_T, "shape": [True, 2]}}), "shape"),
        (_with_header({"a": {**_T, "shape": "2"}}), "shape"),
        (_with_header({"a": {**_T, "data_offsets": [8, 0]}}), "outside"),
        (_with_header({"a": {**_T, "data_offsets": [-8, 0]}}), "outside"),
        (_with_header({"a": {**_T, "data_offsets": [0, 8, 9]}}), "pair of integers"),
        (_with_header({"a": {**_T, "data_offsets": [0.0, 8]}}), "pair of integers"),
        (_with_header({"a": {**_T, "data_offsets": [0, 10**30]}}), "outside"),
        (_with_header({"a": {**_T, "data_offsets": [0, 12]}}), "needs 8 bytes"),
        (_with_header({"a": _T, "b": {**_T, "data_offsets": [4, 12]}}), "overlap"),
        (_with_header({"a": {**_T, "shape": [2**40, 2**40]}}), "needs"),
        (_with_header({"__metadata__": {"x": 1}, "a": _T}), "__metadata__"),
        (_with_header({"__metadata__": [], "a": _T}), "__metadata__"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_headers_name_the_file(tmp_path, blob, why):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with pytest.raises(sw.CheckpointError, match=rf"model.safetensors: not a readable safetensors file .*({why})"):
        _read_safetensors(path)


def test_a_valid_file_still_reads_with_its_locations(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_valid_file())
    sd = _read_safetensors(path)
    assert sd.keys() == {"a", "b", "c"}
    for k in sd:
        assert torch.equal(sd.fresh(k), sd[k])


def _check(tmp: Path, blob: bytes) -> None:
    path = tmp / "model.safetensors"
    path.write_bytes(blob)
    try:  # the header reader alone (it runs before safetensors looks), then the whole read
        _safetensors_locations(path)
        sd = _read_safetensors(path)
    except sw.CheckpointError:
        return
    for k in sd:  # what was accepted must read back whole: the same bytes (a mutated file may hold NaNs)
        fresh, mapped = sd.fresh(k), sd[k]
        assert fresh.dtype == mapped.dtype and fresh.shape == mapped.shape
        assert _bytes(fresh) == _bytes(mapped)


def _bytes(t: torch.Tensor) -> list[int]:
    return t.contiguous().view(-1).view(torch.uint8).tolist()


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_raise_only_checkpoint_errors(tmp_path, blob):
    _check(tmp_path, blob)


@_FUZZ
@given(st.data())
def test_fuzz_mutated_valid_files_raise_only_checkpoint_errors(tmp_path, data):
    blob = bytearray(_valid_file())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    _check(tmp_path, bytes(blob))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@_FUZZ
@given(st.data())
def test_fuzz_headers_with_wrong_types_raise_only_checkpoint_errors(tmp_path, data):
    blob = _valid_file()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    name = data.draw(st.sampled_from(sorted(header)))
    if data.draw(st.booleans()):
        header[name] = data.draw(_json)
    elif isinstance(header[name], dict):
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "format"]))
        header[name][field] = data.draw(_json)
    _check(tmp_path, _with_header(header, blob[8 + n :]))


def test_a_conv1d_weight_is_checked_as_its_transpose(tmp_path):
    path = tmp_path / "b2g"
    hf_composite(path, "bert", "gpt2")
    sd = load_file(str(path / "model.safetensors"))
    name = "decoder.transformer.h.0.attn.c_attn.weight"
    n_in, n_out = sd[name].shape  # Conv1D: [in, out]
    sd[name] = sd[name].T.contiguous()  # [out, in]: the right numbers, the wrong layout
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(sw.CheckpointError, match=rf"tensor {name} has shape \[{n_out}, {n_in}\], but the "
                                                 rf"config implies \[{n_in}, {n_out}\]"):
        sw.EncoderDecoder.from_pretrained(path)


def test_the_cli_says_one_error_line_and_exits_2(copy, capsys):
    from seqweave.cli import main

    sd = load_file(str(copy / "model.safetensors"))
    del sd[QUERY]
    _raw_safetensors(copy / "model.safetensors", sd, {QUERY: ("F32", [16384, 32768])})
    assert main(["generate", str(copy), "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"tensor {QUERY} has shape [16384, 32768]" in err
    assert "Traceback" not in err
