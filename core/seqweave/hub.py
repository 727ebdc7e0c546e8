"""Finding checkpoint folders: a local folder, or a Hugging Face Hub id through huggingface_hub."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

__all__ = ["resolve"]

#: What a model folder needs: configs, safetensors weights, tokenizer files. Pickles only as a fallback.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "vocab.txt",
    "merges.txt",
    "*.model",
]


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder with the checkpoint's files, downloading from the Hub when needed.

    A local folder wins. Otherwise ``name_or_path`` is a Hub id: only configs, safetensors
    and tokenizer files are fetched (``pytorch_model.bin`` only when the repo has no
    safetensors); the local cache and ``HF_HUB_OFFLINE`` are honoured.

    Raises:
        CheckpointError: not a folder, not a valid Hub id, or not available (offline and
            not cached, unknown repo or revision).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{path}: revision={revision!r} applies to Hub ids, not local folders")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; expected a checkpoint folder or a Hub id")
    name = str(name_or_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(snapshot_download(name, revision=revision, allow_patterns=ALLOW_PATTERNS))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name, revision=revision, allow_patterns=[*ALLOW_PATTERNS, "*.bin"]))
    except HFValidationError:
        raise CheckpointError(f"{name}: no such local folder, and not a valid Hub id") from None
    except Exception as e:  # huggingface_hub's many network, auth and not-found errors
        hint = ""
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            hint = " (HF_HUB_OFFLINE is set and the files are not in the local cache)"
        raise CheckpointError(
            f"{name}: no such local folder, and it could not be fetched from the Hub{hint}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    return folder
