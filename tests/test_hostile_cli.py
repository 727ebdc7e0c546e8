"""The command line on hostile input: ``error: ...`` naming the culprit, status 2, no traceback.

Bad ``--device`` and ``--seed``, non-UTF-8 files, stdin and argv, a closed stdin or stdout, a full disk
under ``build``; a reader that leaves early (``| head -1``) is not an error.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from seqweave.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny-bert2bert.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-cli") / "m"
    assert main(["build", str(TINY), "-o", str(folder)]) == 0
    return folder


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sub(*args: object, **kw) -> subprocess.CompletedProcess:
    """``python -m seqweave ARGS`` with bytes in and out (argv items may be bytes)."""
    argv = [sys.executable, "-m", "seqweave", *(a if isinstance(a, bytes) else str(a) for a in args)]
    return subprocess.run(argv, check=False, env=ENV, capture_output="stdout" not in kw, timeout=120, **kw)


def one_error(err: str, *needles: str) -> None:
    """Exactly the ``error:`` line(s), no traceback, naming every needle."""
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# 1. --device ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, needle",
    [("tpu", "unknown device 'tpu'"), ("cuda:99", "cuda:99"), ("nonsense:3", "nonsense:3")],
)
def test_unknown_device_exits_2(capsys, model, device, needle):
    code, out, err = run(capsys, "generate", model, "hi", "--device", device)
    assert (code, out) == (2, "")
    one_error(err, "--device", needle)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_exits_2(capsys, model):
    code, out, err = run(capsys, "generate", model, "hi", "--device", "cuda")
    assert (code, out) == (2, "")
    one_error(err, "--device", "CUDA is not available")


def test_cpu_device_still_works(capsys, model):
    code, out, _ = run(capsys, "generate", model, "hi", "--device", "cpu", "--max-new-tokens", "2")
    assert code == 0 and out.strip()


def test_device_error_in_a_subprocess_has_no_traceback(model):
    done = sub("generate", model, "hi", "--device", "tpu")
    assert done.returncode == 2
    one_error(done.stderr.decode(), "--device")


# 2. --seed -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**64), str(-(2**70))])
def test_out_of_range_seed_exits_2(capsys, model, seed):
    code, out, err = run(capsys, "generate", model, "hi", "--seed", seed, "--do-sample")
    assert (code, out) == (2, "")
    one_error(err, "--seed", seed)


def test_largest_seed_is_accepted(capsys, model):
    code, out, _ = run(capsys, "generate", model, "hi", "--seed", str(2**64 - 1), "--do-sample",
                       "--max-new-tokens", "2")
    assert code == 0 and out.strip()


# 3. non-UTF-8 input --------------------------------------------------------------------------------


def test_non_utf8_input_file_names_the_file(capsys, model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n\xff\xfe world\n")
    code, out, err = run(capsys, "generate", model, "--input", bad)
    assert (code, out) == (2, "")
    one_error(err, str(bad), "not UTF-8")


def test_missing_input_file_names_the_file(capsys, model, tmp_path):
    code, out, err = run(capsys, "generate", model, "--input", tmp_path / "nope.txt")
    assert (code, out) == (2, "")
    one_error(err, str(tmp_path / "nope.txt"), "No such file")


@pytest.mark.parametrize("how", [["-"], ["--input", "-"]])
def test_non_utf8_stdin_names_stdin(model, how):
    done = sub("generate", model, *how, input=b"ok\n\xc3\x28\n")
    assert (done.returncode, done.stdout) == (2, b"")
    one_error(done.stderr.decode(), "stdin", "not UTF-8")


def test_non_utf8_stdin_in_process(capsys, monkeypatch, model):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\n"), encoding="utf-8"))
    code, out, err = run(capsys, "generate", model, "-")
    assert (code, out) == (2, "")
    one_error(err, "stdin", "not UTF-8")


def test_non_utf8_argv_text(model):
    done = sub("generate", model, b"caf\xe9")
    assert (done.returncode, done.stdout) == (2, b"")
    one_error(done.stderr.decode(), "TEXT", "argument 1 is not UTF-8")


def test_utf8_stdin_still_works(model):
    done = sub("generate", model, "-", "--max-new-tokens", "2", input="héllo\n\nwörld\n".encode())
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.decode().splitlines()) == 2


# 4. closed stdin -----------------------------------------------------------------------------------


def test_closed_stdin_names_stdin(model):
    done = subprocess.run(
        [sys.executable, "-m", "seqweave", "generate", str(model), "-"],
        check=False, env=ENV, capture_output=True, timeout=120, preexec_fn=lambda: os.close(0),
    )
    assert (done.returncode, done.stdout) == (2, b"")
    one_error(done.stderr.decode(), "stdin", "closed")


@pytest.mark.parametrize("stdin", [None, "closed"])
def test_closed_or_missing_stdin_in_process(capsys, monkeypatch, model, stdin):
    stream = None
    if stdin == "closed":
        stream = io.StringIO("hi\n")
        stream.close()
    monkeypatch.setattr(sys, "stdin", stream)
    code, out, err = run(capsys, "generate", model, "--input", "-")
    assert (code, out) == (2, "")
    one_error(err, "stdin")


def test_unreadable_stdin_names_stdin(capsys, monkeypatch, model):
    class Unreadable(io.RawIOBase):
        def readinto(self, b):
            raise OSError(errno.EIO, "Input/output error")

        def readable(self):
            return True

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Unreadable())))
    code, out, err = run(capsys, "generate", model, "-")
    assert (code, out) == (2, "")
    one_error(err, "stdin", "Input/output error")


# 5. closed or full stdout --------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["plugins", "--json"], ["schema"], ["generate", "MODEL", "hi"]])
def test_full_stdout_is_an_error(model, args):
    args = [model if a == "MODEL" else a for a in args]
    with open("/dev/full", "wb") as full:
        done = sub(*args, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err == "error: stdout: cannot write the output: No space left on device\n", err


def test_closed_stdout_is_an_error():
    done = subprocess.run(
        [sys.executable, "-m", "seqweave", "plugins", "--json"],
        check=False, env=ENV, stderr=subprocess.PIPE, timeout=120, preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 2
    assert done.stderr.decode() == "error: stdout: it is closed; nothing could be printed\n"


def test_stdout_write_error_in_process(monkeypatch):
    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    errors = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Full())
    monkeypatch.setattr(sys, "stderr", errors)
    assert main(["schema"]) == 2
    assert errors.getvalue() == "error: stdout: cannot write the output: No space left on device\n"


def test_reader_that_leaves_early_is_not_an_error(model):
    """``seqweave ... | head -1``: a broken pipe is the reader's choice; exit 0, nothing on stderr."""
    lines = "".join(f"line {i}\n" for i in range(40)).encode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqweave", "generate", str(model), "-", "--max-new-tokens", "2",
         "--batch-size", "1"],
        env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdin.write(lines)
    proc.stdin.close()
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == "", err


def test_broken_pipe_in_process(monkeypatch):
    class Gone(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    errors = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Gone())
    monkeypatch.setattr(sys, "stderr", errors)
    assert main(["schema"]) == 0
    assert errors.getvalue() == ""


# 6. disk full / unwritable folder under build ------------------------------------------------------


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill: a disk that fills up
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_build_on_a_full_disk_names_the_folder(tmp_path):
    out = tmp_path / "out"
    done = sub("build", TINY, "-o", out, preexec_fn=_file_size_limit(20_000))
    err = done.stderr.decode()
    assert (done.returncode, done.stdout) == (2, b""), err
    one_error(err, f"{out}: cannot write the checkpoint", "File too large")
    assert not (out / "model.safetensors").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_build_under_a_file_names_the_folder(capsys):
    code, out, err = run(capsys, "build", TINY, "-o", "/dev/full/x")
    assert (code, out) == (2, "")
    one_error(err, "/dev/full/x: cannot write the checkpoint", "Not a directory")


def test_build_into_an_unwritable_folder(capsys, monkeypatch, tmp_path):
    """A read-only folder (simulated: the tests may run as root, who may write anywhere)."""
    from seqweave.checkpoint import transaction

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "x.tmp"))

    monkeypatch.setattr(transaction.os, "mkdir", denied)
    code, out, err = run(capsys, "build", TINY, "-o", tmp_path / "ro")
    assert (code, out) == (2, "")
    one_error(err, f"{tmp_path / 'ro'}: cannot write the checkpoint", "Permission denied")


def test_debug_shows_the_traceback_of_a_write_error(capsys):
    code, _, err = run(capsys, "--debug", "build", TINY, "-o", "/dev/full/x")
    assert code == 2
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: /dev/full/x")
