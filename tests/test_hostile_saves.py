"""Hostile suite, interrupted saves: a folder holds the whole old checkpoint or the whole new one.

A saving child is SIGKILLed at random moments; renames, writes and syncs fail at every
possible point; hand-made leftovers of a dead save are recovered on load. Files get the
umask's permissions, other files in the folder are kept, stale weight files are not, and
``seqweave build`` refuses folders it would destroy unless told ``--overwrite``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest
import seqweave as sw
import torch
from seqweave.checkpoint import transaction as tx
from seqweave.cli import main
from seqweave.testing import randomize

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "configs" / "tiny-bert2bert.yaml"
TOKENIZER = ROOT / "examples" / "tokenizers" / "tiny-wordpiece"
SHARD = "40KB"  # B's shard size: several shards, so stale shards of B beside A's single file would show
CONFIG = {
    "encoder": {"architecture": "bert", "config": {"vocab_size": 87, "hidden_size": 32, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "intermediate_size": 64,
                                                    "max_position_embeddings": 64}},
    "decoder": {"architecture": "bert", "config": {"vocab_size": 87, "hidden_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 4, "intermediate_size": 64,
                                                    "max_position_embeddings": 64}},
    "decoder_start_token_id": 2,
    "pad_token_id": 0,
}


def tiny(seed: int) -> sw.EncoderDecoder:
    return randomize(sw.EncoderDecoder.from_config(CONFIG), seed).eval()


def save_a(model: sw.EncoderDecoder, folder: Path) -> None:
    model.save_pretrained(folder)


def save_b(model: sw.EncoderDecoder, folder: Path) -> None:
    model.save_pretrained(folder, max_shard_size=SHARD)


@pytest.fixture(scope="module")
def models() -> tuple[sw.EncoderDecoder, sw.EncoderDecoder]:
    return tiny(1), tiny(2)


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.seqweave-"))


def which(folder: Path, a: sw.EncoderDecoder, b: sw.EncoderDecoder) -> str:
    """'A' or 'B': the model the folder loads as, tensor for tensor; fails on anything else."""
    sd = sw.EncoderDecoder.from_pretrained(folder).state_dict()
    for name, model in (("A", a), ("B", b)):
        ref = model.state_dict()
        if sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref):
            return name
    raise AssertionError(f"{folder} loads as neither A nor B: {sorted(os.listdir(folder))}")


def weight_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".index.json", ".bin")))


# 1. SIGKILL at random moments -------------------------------------------------------------------


def _save_forever(a: sw.EncoderDecoder, b: sw.EncoderDecoder, target: Path) -> int:
    """Fork a child that saves A and B alternately into ``target`` until killed; its pid.

    A fork of this process: torch and the models are already here, so a trial costs no import.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(r)
            os.write(w, b"r")
            os.close(w)
            while True:
                save_a(a, target)
                save_b(b, target)
        finally:
            os._exit(1)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    return pid


def _state(folder: Path) -> str:
    """Which protocol state a kill left, from the siblings on disk (before recovery)."""
    names = siblings(folder)
    kinds = sorted({n.rsplit(".seqweave-", 1)[1].split("-")[0] for n in names})
    return "+".join(kinds) if kinds else "clean"


def test_a_killed_save_leaves_the_old_or_the_new_model(models, tmp_path):
    a, b = models
    save_b(b, tmp_path / "B")
    target = tmp_path / "target"
    save_a(a, target)
    rng = random.Random(10)
    states: dict[str, int] = {}
    loaded: dict[str, int] = {}
    trials = 40
    for _ in range(trials):
        pid = _save_forever(a, b, target)
        try:
            time.sleep(rng.uniform(0.0, 0.25))  # a save pair takes about 0.1 s here
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"the saving child ended on its own (status {status})"
        state = _state(target)
        states[state] = states.get(state, 0) + 1
        got = which(target, a, b)
        loaded[got] = loaded.get(got, 0) + 1
        assert siblings(target) == [], f"a load after a kill in state {state} left {siblings(target)}"
        assert weight_files(target) in (["model.safetensors"], weight_files(tmp_path / "B")), weight_files(target)
    print(f"\n{trials} kills: states at the kill {states}; loaded as {loaded}")
    assert sum(states.values()) == trials


# 2. a failure at every rename, write and sync -------------------------------------------------------

_CALLS = ("rename", "fsync", "link", "save_file")


class _Failing:
    """os.rename / os.fsync / os.link / safetensors' save_file failing at the n-th call (or from it on)."""

    def __init__(self, monkeypatch, what: str, n: int, persistent: bool):
        import safetensors.torch

        self.count, self.n, self.persistent, self.fired = 0, n, persistent, False
        owner = safetensors.torch if what == "save_file" else os
        real = getattr(owner, what)

        def failing(*args, **kwargs):
            self.count += 1
            if self.count == n or (persistent and self.count > n):
                self.fired = True
                raise OSError(errno.EIO, f"injected {what} failure #{self.count}")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, what, failing)


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("what", _CALLS)
def test_a_failure_at_every_point_leaves_the_old_or_the_new_model(models, tmp_path, what, persistent):
    a, b = models
    save_b(b, tmp_path / "B")
    target = tmp_path / "t"
    for n in range(1, 200):
        shutil.rmtree(target, ignore_errors=True)
        save_a(a, target)
        (target / "tokenizer.json").write_text("{}")  # carried over by a link
        with pytest.MonkeyPatch.context() as mp_:
            failing = _Failing(mp_, what, n, persistent)
            try:
                save_b(b, target)
            except OSError as e:
                assert "injected" in str(e)
        if not failing.fired:
            assert n > 1, f"{what} is never called by a save"
            break
        got = which(target, a, b)  # the load also recovers what the failed save left
        assert siblings(target) == [], (what, n, siblings(target))
        if not persistent:
            assert got in ("A", "B")
        expected = ["model.safetensors"] if got == "A" else weight_files(tmp_path / "B")
        assert weight_files(target) == expected
    else:
        pytest.fail("the save never stopped calling " + what)


def test_a_failing_write_leaves_no_temp_entry_and_the_old_model(models, tmp_path):
    a, b = models
    save_a(a, tmp_path / "t")
    with pytest.MonkeyPatch.context() as m:
        _Failing(m, "save_file", 2, False)
        with pytest.raises(OSError, match="injected"):
            save_b(b, tmp_path / "t")
    assert siblings(tmp_path / "t") == []  # without a load's help
    assert which(tmp_path / "t", a, b) == "A"


# 3. permissions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_saved_files_get_the_umask_permissions(models, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        save_b(models[1], tmp_path / "t")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == dir_mode
    for f in (tmp_path / "t").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == file_mode, f


def test_a_resave_keeps_the_folder_mode(models, tmp_path):
    save_a(models[0], tmp_path / "t")
    os.chmod(tmp_path / "t", 0o750)
    save_b(models[1], tmp_path / "t")
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o750


# 4. carry-over ---------------------------------------------------------------------------------------


def test_files_saved_beside_the_model_are_kept(models, tmp_path):
    a, b = models
    folder = tmp_path / "t"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    (folder / "README.md").write_text("notes\n")
    os.symlink("README.md", folder / "link.md")
    before = {p.name for p in folder.iterdir()}
    save_b(b, folder)
    save_a(a, folder)
    assert {p.name for p in folder.iterdir()} == before | {"config.json", "generation_config.json",
                                                           "model.safetensors"}
    assert (folder / "checkpoint-1" / "optimizer.pt").read_bytes() == b"state"
    assert os.readlink(folder / "link.md") == "README.md"
    assert which(folder, a, b) == "A"


def test_a_tokenizer_saved_first_is_kept(models, tmp_path):
    from seqweave.tokenizer import load_tokenizer

    load_tokenizer(TOKENIZER).save(tmp_path / "t")
    text = (tmp_path / "t" / "tokenizer.json").read_text()
    save_a(models[0], tmp_path / "t")
    assert (tmp_path / "t" / "tokenizer.json").read_text() == text


def test_no_stale_shards_or_other_format(models, tmp_path):
    a, b = models
    save_b(b, tmp_path / "t")
    assert len(weight_files(tmp_path / "t")) > 2  # shards and their index
    a.save_pretrained(tmp_path / "t", safe_serialization=False)
    assert weight_files(tmp_path / "t") == ["pytorch_model.bin"]
    save_a(a, tmp_path / "t")
    assert weight_files(tmp_path / "t") == ["model.safetensors"]


def test_a_transformers_folder_resaved_by_seqweave_still_loads_in_transformers(tmp_path):
    from conftest import hf_composite
    from transformers import EncoderDecoderModel

    hf_composite(tmp_path / "t")
    model = sw.EncoderDecoder.from_pretrained(tmp_path / "t")
    randomize(model, 7)
    model.save_pretrained(tmp_path / "t")
    back = EncoderDecoderModel.from_pretrained(tmp_path / "t")
    ours = model.weight_map().to_hf(model.state_dict())
    theirs = back.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in ours.items() if k in theirs)
    assert siblings(tmp_path / "t") == []


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(models, tmp_path):
    a, b = models
    save_a(a, tmp_path / "step-5")
    os.symlink("step-5", tmp_path / "latest")
    save_b(b, tmp_path / "latest")
    assert os.readlink(tmp_path / "latest") == "step-5"
    assert which(tmp_path / "step-5", a, b) == "B"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# 5. edge cases ---------------------------------------------------------------------------------------


def test_saving_into_the_working_directory(models, tmp_path, monkeypatch):
    a, b = models
    save_a(a, tmp_path / "t")
    monkeypatch.chdir(tmp_path / "t")
    save_b(b, ".")
    assert os.path.samefile(os.getcwd(), tmp_path / "t")
    assert os.path.exists("config.json")
    assert which(tmp_path / "t", a, b) == "B"


def test_saving_onto_a_file_names_it(models, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(sw.ConfigError, match=f"{tmp_path / 'f'}: is a file"):
        save_a(models[0], tmp_path / "f")


def test_an_unwritable_parent_is_named(models, tmp_path, monkeypatch):
    monkeypatch.setattr(tx.os, "access", lambda *a, **k: False)  # the tests may run as root
    with pytest.raises(sw.ConfigError, match="parent folder .* is not writable"):
        save_a(models[0], tmp_path / "t")


def test_a_load_never_touches_a_live_save(models, tmp_path):
    save_a(models[0], tmp_path / "t")
    with tx.transaction(tmp_path / "t") as stage:
        (stage / "x").write_text("x")
        tx.recover(tmp_path / "t")
        assert stage.exists()
    assert (tmp_path / "t" / "x").exists() and (tmp_path / "t" / "config.json").exists()
    assert siblings(tmp_path / "t") == []


def test_an_exception_in_the_block_leaves_the_folder(models, tmp_path):
    save_a(models[0], tmp_path / "t")
    with pytest.raises(KeyError), tx.transaction(tmp_path / "t") as stage:
        (stage / "config.json").write_text("{}")
        raise KeyError("x")
    assert siblings(tmp_path / "t") == []
    assert which(tmp_path / "t", *models) == "A"


# 6. recovery of hand-made states ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"t": "A", ".t.seqweave-tmp-1234": "B"}, "A"),
        ({"t": "A", ".t.seqweave-new": "B"}, "B"),
        ({".t.seqweave-new": "B"}, "B"),
        ({".t.seqweave-new": "B", ".t.seqweave-old": "A"}, "B"),
        ({"t": "B", ".t.seqweave-old": "A"}, "B"),
        ({".t.seqweave-old": "A"}, "A"),
    ],
    ids=["tmp", "new+folder", "new", "new+old", "old+folder", "old"],
)
def test_recovery_of_each_state(models, tmp_path, layout, expected):
    a, b = models
    save_a(a, tmp_path / "src" / "A")
    save_b(b, tmp_path / "src" / "B")
    for name, which_ in layout.items():
        shutil.copytree(tmp_path / "src" / which_, tmp_path / name)
    assert which(tmp_path / "t", a, b) == expected
    assert siblings(tmp_path / "t") == []
    tx.recover(tmp_path / "t")  # idempotent
    assert which(tmp_path / "t", a, b) == expected


def test_recovery_that_cannot_run_does_not_block_a_load(models, tmp_path, monkeypatch, caplog):
    save_a(models[0], tmp_path / "t")
    save_b(models[1], tmp_path / ".t.seqweave-old")

    def denied(*args):
        raise PermissionError(errno.EACCES, "Permission denied", str(args[0]))

    monkeypatch.setattr(tx.shutil, "rmtree", denied)
    assert which(tmp_path / "t", *models) == "A"
    assert "cannot clean up after an interrupted save" in caplog.text


# 7. seqweave build -----------------------------------------------------------------------------------


def run(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_refuses_the_folder_its_tokenizer_comes_from(capsys, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(TOKENIZER, tok)
    before = sorted(os.listdir(tok))
    code, out, err = run(capsys, "build", TINY, f"tokenizer={tok}", "-o", tok)
    assert (code, out) == (2, ""), err
    assert err.startswith(f"error: {tok}: the config's tokenizer is loaded from this folder"), err
    assert sorted(os.listdir(tok)) == before
    code, out, err = run(capsys, "build", TINY, f"tokenizer={tok}", "-o", tok, "--overwrite")
    assert code == 0, err
    model = sw.EncoderDecoder.from_pretrained(tok)
    assert model.config.encoder.vocab_size == 87
    assert (tok / "tokenizer.json").exists() and siblings(tok) == []


def test_build_refuses_a_folder_its_encoder_is_loaded_from(capsys, tmp_path):
    from conftest import hf_config
    from transformers import BertModel

    BertModel(hf_config("bert", "encoder", vocab_size=87, hidden_size=32, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "enc")
    code, out, err = run(capsys, "build", TINY, f"encoder.pretrained={tmp_path / 'enc'}", "-o", tmp_path / "enc")
    assert (code, out) == (2, ""), err
    assert err.startswith(f"error: {tmp_path / 'enc'}: the config's encoder.pretrained is loaded"), err


def test_build_refuses_a_non_empty_folder_that_is_no_checkpoint(capsys, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("years of work\n")
    code, out, err = run(capsys, "build", TINY, "-o", tmp_path / "docs")
    assert (code, out) == (2, ""), err
    assert err.startswith(f"error: {tmp_path / 'docs'}: not empty and not a checkpoint"), err
    assert os.listdir(tmp_path / "docs") == ["thesis.tex"]
    code, out, err = run(capsys, "build", TINY, "-o", tmp_path / "docs", "--overwrite")
    assert code == 0, err
    sw.EncoderDecoder.from_pretrained(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "years of work\n"  # not ours: kept


def test_build_into_an_existing_checkpoint_needs_no_overwrite(capsys, tmp_path):
    for _ in range(2):
        code, _, err = run(capsys, "build", TINY, "-o", tmp_path / "out")
        assert code == 0, err
    sw.EncoderDecoder.from_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.json", "tokenizer_config.json"]
    assert siblings(tmp_path / "out") == []


def test_build_drops_a_stale_decoder_tokenizer(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "decoder_tokenizer").mkdir(parents=True)
    (out / "decoder_tokenizer" / "tokenizer.json").write_text("{}")
    (out / "config.json").write_text("{}")
    code, _, err = run(capsys, "build", TINY, "-o", out)
    assert code == 0, err
    assert not (out / "decoder_tokenizer").exists()

