"""Weight files: one table of readers, safetensors first; pickles only by ``torch.load(weights_only=True)``.

:data:`WEIGHT_FORMATS` is the single list of the weight files a checkpoint folder may
hold, in order of preference. :func:`read_state_dict` walks it, and :mod:`seqweave.hub`
derives the file patterns it fetches from it (:func:`weight_file_patterns`).
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

__all__ = [
    "WEIGHT_FORMATS",
    "CheckpointTensors",
    "WeightFormat",
    "read_state_dict",
    "weight_file_patterns",
    "weights_file",
]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointTensors(dict):
    """A checkpoint's tensors by name, memory-mapped, that can also read one into memory of its own.

    Tensors used as they are stay views of the memory map: no copy. Tensors that loading
    must copy anyway (transposed, fused) are better read with :meth:`fresh`: read through
    the map, their file pages would stay resident beside the copy for as long as any
    tensor of the file is alive, so peak memory would hold them twice.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] = (), locations: Mapping[str, tuple] | None = None):
        super().__init__(tensors)
        #: name -> (file, byte offset, byte count, dtype, shape) for :meth:`fresh`
        self.locations: dict[str, tuple] = dict(locations or {})

    def fresh(self, name: str) -> torch.Tensor:
        """Tensor ``name`` read from its file into new memory (the mapped view if it can't be)."""
        where = self.locations.get(name)
        if where is None:
            return self[name]
        path, offset, nbytes, dtype, shape = where
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(nbytes)
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(buf) != nbytes:
                raise CheckpointError(f"{path}: truncated: tensor {name} is cut short")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def renamed(self, rename: Callable[[str], str]) -> CheckpointTensors:
        """The same tensors under ``rename(name)``."""
        return CheckpointTensors({rename(k): v for k, v in self.items()},
                                 {rename(k): v for k, v in self.locations.items()})

    def under(self, prefix: str) -> CheckpointTensors:
        """The tensors whose names start with ``prefix``, with the prefix taken off (a composite's part)."""
        n = len(prefix)
        return CheckpointTensors({k[n:]: v for k, v in self.items() if k.startswith(prefix)},
                                 {k[n:]: v for k, v in self.locations.items() if k.startswith(prefix)})


def _safetensors_locations(path: Path) -> dict[str, tuple]:
    """Where each tensor's bytes lie in a safetensors file (its JSON header says; nothing is executed)."""
    if sys.byteorder != "little":  # the file is little-endian; let safetensors convert
        return {}
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    start = 8 + size
    out = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if name == "__metadata__" or dtype is None:
            continue
        begin, end = info["data_offsets"]
        out[name] = (path, start + begin, end - begin, dtype, tuple(info["shape"]))
    return out


def _read_safetensors(path: Path) -> CheckpointTensors:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))  # memory-mapped: tensors are read as they are used
    except Exception as e:  # safetensors raises its own types for corrupt headers and truncation
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    # safetensors has validated the header above, so reading it again cannot fail on its form.
    return CheckpointTensors(tensors, _safetensors_locations(path))


def _read_pickle(path: Path) -> CheckpointTensors:
    try:
        # weights_only: tensors and plain containers only, no code from the checkpoint runs. A zip
        # file (torch >= 1.6) is memory-mapped; a legacy pre-zip pickle cannot be, and is read whole.
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({e})") from None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {type(sd).__name__}")
    return CheckpointTensors(sd)


def _read_index(path: Path, read: Callable[[Path], CheckpointTensors]) -> CheckpointTensors:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid shard index ({e})") from None
    sd = CheckpointTensors()
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{path}: names shard {shard!r}, which is missing")
        part = read(shard_path)
        sd.update(part)
        sd.locations.update(part.locations)
    return sd


@dataclass(frozen=True)
class WeightFormat:
    """One kind of weight file a checkpoint folder may hold.

    Attributes:
        name: the file's name in the folder (``model.safetensors``, an index ``....index.json``).
        read: reads the file into tensors by name.
        shards: the glob of the shard files an index names (None for a single file).
        pickle: a ``torch.save`` pickle: fetched from the Hub only when no safetensors exist.
    """

    name: str
    read: Callable[[Path], CheckpointTensors]
    shards: str | None = None
    pickle: bool = False


def _index_of(read: Callable[[Path], CheckpointTensors]) -> Callable[[Path], CheckpointTensors]:
    return lambda path: _read_index(path, read)


#: The weight files of a checkpoint folder, the preferred first: the first one present is read.
WEIGHT_FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat("model.safetensors", _read_safetensors),
    WeightFormat("model.safetensors.index.json", _index_of(_read_safetensors),
                 shards="model-*-of-*.safetensors"),
    WeightFormat("pytorch_model.bin", _read_pickle, pickle=True),
    WeightFormat("pytorch_model.bin.index.json", _index_of(_read_pickle), shards="pytorch_model-*-of-*.bin",
                 pickle=True),
)
#: The file :meth:`seqweave.EncoderDecoder.save_pretrained` writes.
SAFETENSORS = WEIGHT_FORMATS[0].name


def weight_file_patterns(*, pickle: bool) -> list[str]:
    """The names and shard globs of the safetensors formats (``pickle=False``) or the pickled ones."""
    return [p for f in WEIGHT_FORMATS if f.pickle == pickle for p in (f.name, f.shards) if p is not None]


def weights_file(folder: Path) -> tuple[Path, WeightFormat]:
    """The weights file of a checkpoint folder and its format: safetensors first, pickles only without them.

    Raises:
        CheckpointError: the folder holds none of :data:`WEIGHT_FORMATS`.
    """
    for fmt in WEIGHT_FORMATS:
        if (folder / fmt.name).is_file():
            return folder / fmt.name, fmt
    names = ", ".join(f.name for f in WEIGHT_FORMATS)
    raise CheckpointError(f"{folder}: no weights file; expected one of {names}")


def read_state_dict(folder: Path) -> tuple[CheckpointTensors, Path]:
    """Read a checkpoint folder's tensors; return them and the file they came from."""
    path, fmt = weights_file(folder)
    return fmt.read(path), path
