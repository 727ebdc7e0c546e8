"""Folder transactions: a checkpoint folder holds the complete old save or the complete new one, never a mix.

:func:`transaction` yields an empty staging folder; the caller writes its files there with
ordinary ``open()`` / ``save_file`` (so they get the permissions the umask gives). On a clean
exit the staging folder replaces the target folder; on an exception it is removed and the
target is left as it was. :func:`recover` finishes or undoes a swap that a dead process left
half done; every transaction and every local load (:func:`seqweave.hub.resolve`) calls it.

The protocol, for a target ``<parent>/<name>`` (symlinks resolved first, so saving to a link
``latest -> step-5`` replaces ``step-5`` and keeps the link):

1. ``.<name>.seqweave-tmp-<random>`` is created beside it (``os.mkdir``: umask permissions, or
   the old folder's mode) and yielded. Being a sibling, every later rename stays on one file
   system and is atomic.
2. On a clean exit, every entry of the old folder that the new save did not write and that
   ``owned`` does not claim is carried over as hard links (folders recursed, symlinks
   re-created, a copy where linking fails): a tokenizer saved into the folder earlier, or
   ``transformers.Trainer``'s ``checkpoint-N/`` subfolders, stay as transformers would keep
   them; owned entries that were not rewritten (stale shards, the other weight format) go.
3. Every file and folder of the staging tree is fsynced, then it is renamed to
   ``.<name>.seqweave-new``: the atomic "complete" marker. The parent is fsynced.
4. ``<name>`` is renamed to ``.<name>.seqweave-old``, ``.new`` to ``<name>``, the parent is
   fsynced, and ``.old`` is removed.

A kill at any point leaves one of these states, which :func:`recover` maps to one folder:
``tmp`` (incomplete: deleted, the old folder stands), ``.new`` beside ``<name>``, or beside
``.old`` between the two renames of step 4 (complete: rolled forward), ``.old`` beside
``<name>`` (the swap finished: deleted), ``.old`` alone (not left by this protocol, but by a
hand or another tool: the old folder is all there is, so it is restored).

Why a folder and not per-file renames: renaming files one at a time leaves a mix of old and
new files when the process dies between two renames, and cannot remove stale shards
atomically. Why a live writer's lock: the staging folder is ``flock``-ed while its transaction
runs, so a load in another process (which calls :func:`recover`) never deletes or rolls
forward a save that is still in progress; a killed writer's lock goes with it. Concurrent
writers to one folder are not supported (the last swap wins, each swap is still whole).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ConfigError

__all__ = ["recover", "transaction"]

logger = logging.getLogger("seqweave")

_TMP = ".seqweave-tmp-"
_NEW = ".seqweave-new"
_OLD = ".seqweave-old"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, recovery assumes no live writer
    fcntl = None  # type: ignore[assignment]


def _nothing_owned(name: str) -> bool:
    return False


def _sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(f".{folder.name}{suffix}")


def _locked(path: Path) -> bool:
    """True when a live transaction holds ``path`` (its staging folder) locked."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path | str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open folders; their renames are what they are
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for here, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(here, f)
            if not os.path.islink(p):
                _fsync(p)
        _fsync(here, directory=True)


def _carry(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst`` sharing its files: hard links, folders recursed, symlinks re-created."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for entry in os.scandir(src):
            _carry(Path(entry.path), dst / entry.name)
        shutil.copystat(src, dst, follow_symlinks=False)
    elif stat.S_ISREG(st.st_mode):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)
    # sockets, fifos and devices are not checkpoint files: not carried


def _swap(folder: Path, new: Path) -> None:
    """``new`` (complete) becomes ``folder``; the old ``folder`` goes. Each step is one atomic rename."""
    old = _sibling(folder, _OLD)
    if os.path.lexists(folder):
        if os.path.lexists(old):
            _rmtree(old)
        os.rename(folder, old)
    os.rename(new, folder)
    _fsync(folder.parent, directory=True)
    _rmtree(old)


def recover(folder: str | os.PathLike) -> None:
    """Finish or undo a save of ``folder`` that a dead process left half done. Idempotent.

    Staging folders are deleted (incomplete), a complete ``.new`` is rolled forward, a
    leftover ``.old`` deleted when ``folder`` exists and restored when it does not. Entries
    a live transaction holds are left alone.

    Raises:
        OSError: a rename or removal failed (a read-only parent folder, say).
    """
    folder = Path(os.path.realpath(folder))
    prefix = f".{folder.name}"
    try:
        names = [n for n in os.listdir(folder.parent) if n.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    for n in names:
        if n.startswith(prefix + _TMP) and not _locked(folder.parent / n):
            shutil.rmtree(folder.parent / n)
    new, old = _sibling(folder, _NEW), _sibling(folder, _OLD)
    if new.name in names:
        if not _locked(new):  # a live writer is between its renames: its own swap finishes it
            _swap(folder, new)
    elif old.name in names:
        if os.path.lexists(folder):
            shutil.rmtree(old)
        else:
            os.rename(old, folder)
            _fsync(folder.parent, directory=True)


@contextlib.contextmanager
def transaction(folder: str | os.PathLike, *, owned: Callable[[str], bool] = _nothing_owned) -> Iterator[Path]:
    """Yield an empty staging folder; on clean exit it atomically replaces ``folder``.

    Entries of the old folder that the block did not write are carried over unless
    ``owned(name)`` claims them (then they are dropped: stale files of the same kind). The
    default owns nothing: everything not rewritten is kept.

    Raises:
        ConfigError: ``folder`` is a file, or its parent folder is not writable.
        OSError: creating, writing or renaming failed; ``folder`` is left as it was.
    """
    given = Path(folder)
    folder = Path(os.path.realpath(given))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{given}: is a file; expected a folder to save into")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder on the way belongs
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder.parent)) from None
    if not os.access(folder.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{given}: cannot save: its parent folder {folder.parent} is not writable "
                          "(a save writes a sibling folder and swaps it in)")
    recover(folder)
    stage = _sibling(folder, _TMP + secrets.token_hex(4))
    os.mkdir(stage)
    lock = os.open(stage, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if folder.is_dir():
            os.chmod(stage, stat.S_IMODE(folder.stat().st_mode))
        try:
            yield stage
            if folder.is_dir():
                written = set(os.listdir(stage))
                for entry in os.scandir(folder):
                    if entry.name not in written and not owned(entry.name):
                        _carry(Path(entry.path), stage / entry.name)
            _fsync_tree(stage)
            new = _sibling(folder, _NEW)
            os.rename(stage, new)
        except BaseException:
            _rmtree(stage)
            raise
        _fsync(folder.parent, directory=True)
        inside = _cwd_inside(folder)
        try:
            _swap(folder, new)
        except BaseException:
            # .new is complete: roll forward now if we can, else the next load or save will
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                recover(folder)
            raise
        finally:
            if inside:
                with contextlib.suppress(OSError):
                    os.chdir(folder)
    finally:
        os.close(lock)


def _cwd_inside(folder: Path) -> bool:
    """True when the process sits in ``folder`` (it would be left in a deleted folder after the swap)."""
    try:
        return os.path.samefile(os.getcwd(), folder)
    except OSError:
        return False
