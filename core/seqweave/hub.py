"""Finding checkpoint folders: a local folder, or a Hugging Face Hub id through huggingface_hub.

Only the files seqweave reads are fetched: configs, safetensors weights and tokenizer
files, named exactly so that ONNX, TensorFlow, Flax or Core ML copies in the same
repository stay on the Hub. Pickled weights are fetched only when a repository has no
safetensors, and they are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from .checkpoint.formats import weight_file_patterns
from .checkpoint.jsonio import CONFIG_JSON, GENERATION_CONFIG_JSON
from .checkpoint.transaction import recover
from .errors import CheckpointError

__all__ = ["MODEL_FILES", "PICKLE_FILES", "TOKENIZER_FILES", "resolve"]

#: What the text-to-text tools read: ``tokenizers`` formats, and the configs that say how.
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
]
#: What a model folder needs: configs, safetensors weights (single or sharded), tokenizer files.
#: The weight files come from seqweave.checkpoint's table of readers, so what is fetched is what can be read.
MODEL_FILES = [
    CONFIG_JSON,
    GENERATION_CONFIG_JSON,
    *weight_file_patterns(pickle=False),
    *TOKENIZER_FILES,
    "decoder_tokenizer/*",
]
#: Fetched only when a repository has no safetensors weights.
PICKLE_FILES = weight_file_patterns(pickle=True)


@contextlib.contextmanager
def _quiet_unless_terminal() -> Iterator[None]:
    """huggingface_hub's download bars on a terminal only; piped output stays clean."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if sys.stderr.isatty() or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _download(name: str, revision: str | None, patterns: list[str], **hub: Any) -> Path:
    from huggingface_hub import snapshot_download

    with _quiet_unless_terminal():
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns, **hub))


def _recover(path: Path) -> None:
    """Finish a save of ``path`` that a dead process left half done; a failure only loses the repair.

    Raises:
        CheckpointError: the folder is missing because an interrupted save could not be undone.
    """
    try:
        recover(path)
    except OSError as e:
        if not path.exists():
            raise CheckpointError(f"{path}: an interrupted save left it in a sibling .{path.name}.seqweave-* "
                                  f"folder that cannot be restored ({e})") from None
        logging.getLogger("seqweave").warning("%s: cannot clean up after an interrupted save (%s); "
                                              "loading the folder as it is", path, e)


def resolve(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    kind: Literal["model", "tokenizer"] = "model",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local folder with the checkpoint's files, downloading from the Hub when needed.

    A local folder wins. Otherwise ``name_or_path`` is a Hub id: only the files of
    :data:`MODEL_FILES` (or :data:`TOKENIZER_FILES` for ``kind="tokenizer"``) are
    fetched, and :data:`PICKLE_FILES` only when the repository has no safetensors. The
    local cache (``HF_HUB_CACHE`` / ``HF_HOME``) and ``HF_HUB_OFFLINE`` are honoured:
    offline, a cached snapshot of the revision is used as it is.

    Args:
        name_or_path: a local folder or a Hub id (``org/name``).
        revision: a branch, tag or commit to pin (Hub ids only).
        kind: which files are needed.
        cache_dir: the Hugging Face cache folder to use instead of ``HF_HUB_CACHE``.
        local_files_only: use the cache only, never the network (like ``HF_HUB_OFFLINE``).
        token: the Hub token (True: the saved one; a string: this one), for private repositories.

        These three are passed to ``huggingface_hub.snapshot_download`` as they are, with
        the meaning transformers' ``from_pretrained`` gives them.

    Raises:
        CheckpointError: not a folder, not a valid Hub id, or not available (offline and
            not cached, unknown repository or revision); the message says which.
    """
    path = Path(name_or_path).expanduser()
    _recover(path)
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{path}: revision={revision!r} applies to Hub ids, not local folders")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; expected a checkpoint folder or a Hub id")
    name = str(name_or_path)
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RevisionNotFoundError

    at = f"{name}@{revision}" if revision else name
    hub: dict[str, Any] = {"local_files_only": local_files_only}
    if cache_dir is not None:
        hub["cache_dir"] = str(cache_dir)
    if token is not None:
        hub["token"] = token
    try:
        folder = _download(name, revision, MODEL_FILES if kind == "model" else TOKENIZER_FILES, **hub)
        if kind == "model" and not any(any(folder.glob(p)) for p in weight_file_patterns(pickle=False)):
            folder = _download(name, revision, [*MODEL_FILES, *PICKLE_FILES], **hub)
    except HFValidationError:
        raise CheckpointError(f"{name}: no such local folder, and not a valid Hub id (org/name)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{name}: the Hub repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        cache = cache_dir or constants.HF_HUB_CACHE
        if local_files_only:
            raise CheckpointError(
                f"{at}: no such local folder, and not in the Hugging Face cache ({cache}) "
                "while local_files_only=True"
            ) from None
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{at}: no such local folder, and not in the Hugging Face cache ({cache}) "
                "while HF_HUB_OFFLINE is set; download it once online, or unset HF_HUB_OFFLINE"
            ) from None
        raise CheckpointError(
            f"{at}: no such local folder, not in the Hugging Face cache ({cache}), "
            "and the Hub could not be reached"
        ) from None
    except Exception as e:  # huggingface_hub's many network, auth and not-found errors
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{at}: no such local folder, and it could not be fetched from the Hub: "
            f"{type(e).__name__}: {first}"
        ) from None
    return folder
