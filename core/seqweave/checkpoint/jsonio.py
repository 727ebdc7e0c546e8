"""The JSON files of a model folder, read with one error wording: ``PATH: not valid JSON: ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["CONFIG_JSON", "GENERATION_CONFIG_JSON", "DuplicateKey", "no_duplicate_keys", "read_config_json",
           "read_json"]

CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"
#: far above any real config, tokenizer config or index (a 2,000-shard index is ~200 KB)
MAX_JSON_BYTES = 64 << 20


class DuplicateKey(Exception):
    """Raised by :func:`no_duplicate_keys`; ``key`` is the repeated key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: a key written twice is ambiguous (json keeps the last)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def read_json(path: Path, *, missing_ok: bool = False, object_only: bool = True) -> dict[str, Any]:
    """The JSON object in ``path``.

    Args:
        path: the file.
        missing_ok: an absent file reads as ``{}`` instead of raising.
        object_only: a top level that is not an object raises; when False it reads as ``{}``.

    Raises:
        CheckpointError: the file is absent (unless ``missing_ok``), unreadable, not JSON, larger
            than :data:`MAX_JSON_BYTES`, nested too deep, with a key written twice in one object,
            or (with ``object_only``) not an object; the message names the file.
    """
    if not path.is_file():
        if missing_ok:
            return {}
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: refusing to read a JSON file over {MAX_JSON_BYTES >> 20} MB")
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as e:
        raise CheckpointError(f"{path}: the key {e.key!r} is written twice in one object") from None
    except RecursionError:
        raise CheckpointError(f"{path}: refusing to read JSON nested this deep") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        if object_only:
            raise CheckpointError(f"{path}: expected a JSON object at the top level")
        return {}
    return data


def read_config_json(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.json``.

    Raises:
        CheckpointError: no ``config.json`` (not a model folder), or not a JSON object.
    """
    if not (folder / CONFIG_JSON).is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_JSON} (is this a model folder?)")
    return read_json(folder / CONFIG_JSON)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON with a final newline (the layout transformers writes)."""
    path.write_text(json.dumps(data, indent=2) + "\n")
