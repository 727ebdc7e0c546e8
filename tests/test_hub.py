"""Hub ids: a Hugging Face cache laid out under a temporary folder, read with the network disabled."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import seqweave as sw
import torch
from conftest import hf_composite
from seqweave import hub

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def add_snapshot(
    cache: Path, repo_id: str, commit: str, files: Path | dict[str, bytes], refs: tuple[str, ...] = ()
):
    """Lay out one snapshot the way huggingface_hub does: blobs by hash, snapshot links, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    if isinstance(files, Path):
        files = {p.relative_to(files).as_posix(): p.read_bytes() for p in files.rglob("*") if p.is_file()}
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub uses, with the network disabled."""
    from huggingface_hub import constants

    folder = tmp_path / "hf" / "hub"
    folder.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return folder


@pytest.fixture
def two_revisions(tmp_path, cache):
    """``org/tiny``: main is commit B (seed 1), tag v1 and commit A (seed 0)."""
    a = hf_composite(tmp_path / "a", seed=0)
    b = hf_composite(tmp_path / "b", seed=1)
    add_snapshot(cache, "org/tiny", COMMIT_A, tmp_path / "a", refs=("v1",))
    add_snapshot(cache, "org/tiny", COMMIT_B, tmp_path / "b", refs=("main",))
    return a, b


def first_weight(model) -> torch.Tensor:
    return model.encoder.embeddings.tokens.weight.detach()


def test_cached_hub_id_loads_offline(two_revisions):
    _, b = two_revisions
    model = sw.EncoderDecoder.from_pretrained("org/tiny")
    assert torch.equal(first_weight(model), b.encoder.embeddings.word_embeddings.weight.detach())
    assert Path(model.load_report.sources["model"]).parent.name == COMMIT_B


@pytest.mark.parametrize("revision", [COMMIT_A, "v1"])
def test_revision_pinning(two_revisions, revision):
    a, b = two_revisions
    model = sw.EncoderDecoder.from_pretrained("org/tiny", revision=revision)
    assert torch.equal(first_weight(model), a.encoder.embeddings.word_embeddings.weight.detach())
    assert not torch.equal(first_weight(model), b.encoder.embeddings.word_embeddings.weight.detach())


def test_offline_and_not_cached_is_a_clear_error(cache):
    with pytest.raises(sw.CheckpointError) as info:
        sw.EncoderDecoder.from_pretrained("org/absent")
    msg = str(info.value)
    assert msg.startswith("org/absent: no such local folder, and not in the Hugging Face cache")
    assert str(cache) in msg and "HF_HUB_OFFLINE is set" in msg


def test_offline_revision_not_cached(two_revisions):
    with pytest.raises(sw.CheckpointError, match=r"^org/tiny@v2: .*HF_HUB_OFFLINE is set"):
        sw.EncoderDecoder.from_pretrained("org/tiny", revision="v2")


def test_invalid_hub_id():
    with pytest.raises(sw.CheckpointError, match="not a valid Hub id"):
        hub.resolve("not a/valid//id")


def test_revision_on_a_local_folder_is_an_error(tmp_path):
    with pytest.raises(sw.CheckpointError, match="applies to Hub ids"):
        hub.resolve(tmp_path, revision="main")


def test_pickle_only_repository_is_loaded_with_weights_only(tmp_path, cache):
    from safetensors.torch import load_file

    hf_composite(tmp_path / "src")
    state = load_file(tmp_path / "src" / "model.safetensors")
    (tmp_path / "src" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "src" / "pytorch_model.bin")
    add_snapshot(cache, "org/old", COMMIT_A, tmp_path / "src", refs=("main",))
    model = sw.EncoderDecoder.from_pretrained("org/old")
    assert model.load_report.sources["model"].endswith("pytorch_model.bin")
    assert torch.equal(first_weight(model), state["encoder.embeddings.word_embeddings.weight"])


def test_warm_start_parts_from_the_cache(tmp_path, cache):
    from conftest import hf_config
    from transformers import BertLMHeadModel, BertModel

    BertModel(hf_config("bert", "encoder")).save_pretrained(tmp_path / "enc")
    BertLMHeadModel(hf_config("bert", "decoder")).save_pretrained(tmp_path / "dec")
    add_snapshot(cache, "org/enc", COMMIT_A, tmp_path / "enc", refs=("main",))
    add_snapshot(cache, "org/dec", COMMIT_B, tmp_path / "dec", refs=("main",))
    cfg = {
        "encoder": {"architecture": "bert", "pretrained": "org/enc"},
        "decoder": {"architecture": "bert", "pretrained": "org/dec", "revision": COMMIT_B},
        "decoder_start_token_id": 2,
        "pad_token_id": 0,
    }
    model = sw.EncoderDecoder.from_config(cfg)
    assert model.load_report.sources["encoder"].startswith(str(cache))


# A real listing (google-bert/bert-base-uncased at the time of writing) and what must be fetched of it.
BERT_BASE_FILES = [
    ".gitattributes",
    "LICENSE",
    "README.md",
    "config.json",
    "coreml/fill-mask/float32_model.mlpackage/Manifest.json",
    "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
    "flax_model.msgpack",
    "model.onnx",
    "model.safetensors",
    "pytorch_model.bin",
    "rust_model.ot",
    "tf_model.h5",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "onnx/config.json",
    "onnx/model.onnx",
]


def test_only_needed_files_are_fetched():
    from huggingface_hub.utils import filter_repo_objects

    chosen = set(filter_repo_objects(BERT_BASE_FILES, allow_patterns=hub.MODEL_FILES))
    assert chosen == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    }
    sharded = [
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin",
    ]
    assert set(filter_repo_objects(sharded, allow_patterns=hub.MODEL_FILES)) == set(sharded[:2])
    assert set(filter_repo_objects(BERT_BASE_FILES, allow_patterns=hub.PICKLE_FILES)) == {"pytorch_model.bin"}
    tokenizer_only = set(filter_repo_objects(BERT_BASE_FILES, allow_patterns=hub.TOKENIZER_FILES))
    assert tokenizer_only == {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}


def test_environment_variables_are_honoured_by_the_command_line(tmp_path):
    """A fresh process: HF_HOME points at the cache, HF_HUB_OFFLINE=1, the CLI loads a hub id."""
    hf_composite(tmp_path / "src")
    add_snapshot(tmp_path / "home" / "hub", "org/tiny", COMMIT_A, tmp_path / "src", refs=("main",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    run = [sys.executable, "-m", "seqweave", "inspect", "org/tiny"]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert COMMIT_A in done.stdout
    shutil.rmtree(tmp_path / "home" / "hub" / "models--org--tiny")
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: org/tiny: no such local folder, and not in the Hugging Face cache")
    assert "Traceback" not in done.stderr


def test_tokenizer_and_pipeline_from_a_cached_hub_id(tmp_path, cache):
    wordpiece = Path(__file__).resolve().parents[1] / "examples" / "tokenizers" / "tiny-wordpiece"
    add_snapshot(
        cache, "org/tok", COMMIT_A, {"vocab.txt": (wordpiece / "vocab.txt").read_bytes()}, refs=("main",)
    )
    tok = sw.load_tokenizer("org/tok")
    assert tok.source.endswith(COMMIT_A) and tok.vocab_size == 87
    # A composite whose folder carries its tokenizer: pipeline("org/model") needs nothing else.
    model = sw.EncoderDecoder.from_config(
        Path(__file__).resolve().parents[1] / "examples/configs/tiny-bert2bert.yaml"
    )
    model.save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    add_snapshot(cache, "org/model", COMMIT_B, tmp_path / "m", refs=("main",))
    assert isinstance(sw.pipeline("org/model")("some text", max_new_tokens=2), str)
