"""Weight files: one table of readers, safetensors first; pickles only by ``torch.load(weights_only=True)``.

:data:`WEIGHT_FORMATS` is the single list of the weight files a checkpoint folder may
hold, in order of preference. :func:`read_state_dict` walks it, and :mod:`seqweave.hub`
derives the file patterns it fetches from it (:func:`weight_file_patterns`).
"""

from __future__ import annotations

import itertools
import json
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..errors import CheckpointError
from .jsonio import DuplicateKey, no_duplicate_keys

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


#: Bytes per element of the safetensors dtypes (those torch has; others are only range-checked).
_SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U64": 8, "U32": 4, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
}
#: The largest header read (safetensors itself refuses more than 100 MB).
_MAX_HEADER = 100_000_000


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    """A safetensors file's header, every entry checked, and where its data begins.

    Nothing but the header is read, so a hostile file costs no more than its header's size.

    Raises:
        CheckpointError: the header is cut short, larger than the file, not JSON, or an entry
            has a wrong type, an unknown dtype, a byte count that its shape does not give, or
            offsets outside the data or overlapping another's. The message names the file.
    """

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable safetensors file ({why})")

    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            file_size = f.tell()
            f.seek(0)
            head = f.read(8)
            if len(head) < 8:
                raise bad("shorter than its 8-byte header size")
            size = int.from_bytes(head, "little")
            if size < 2 or size > min(_MAX_HEADER, file_size - 8):
                raise bad(f"header size {size} does not fit the file's {file_size} bytes")
            raw = f.read(size)
    except OSError as e:
        raise bad(str(e)) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"header is not JSON: {type(e).__name__}") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    data_size = file_size - 8 - size
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise bad("__metadata__ is not an object of strings")
    spans = []
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise bad(f"tensor {name!r}: dtype is not a string")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r}: shape is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise bad(f"tensor {name!r}: data_offsets is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"tensor {name!r}: data_offsets {offsets} outside the {data_size} data bytes")
        itemsize = _SAFETENSORS_ITEMSIZE.get(dtype)
        if itemsize is not None:
            count = 1
            for d in shape:
                count *= d
            if count * itemsize != end - begin:
                raise bad(f"tensor {name!r}: shape {shape} of {dtype} needs {count * itemsize} bytes, "
                          f"data_offsets give {end - begin}")
        spans.append((begin, end, name))
        entries[name] = info
    spans.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise bad(f"tensors {first!r} and {second!r} overlap")
    return entries, 8 + size


def _safetensors_locations(path: Path) -> dict[str, tuple]:
    """Where each tensor's bytes lie in a safetensors file (its checked JSON header says; nothing is executed).

    Raises:
        CheckpointError: the header is malformed (see :func:`_safetensors_header`).
    """
    header, start = _safetensors_header(path)
    if sys.byteorder != "little":  # the file is little-endian; let safetensors convert
        return {}
    out = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            continue
        begin, end = info["data_offsets"]
        out[name] = (path, start + begin, end - begin, dtype, tuple(info["shape"]))
    return out


def _read_safetensors(path: Path) -> CheckpointTensors:
    from safetensors.torch import load_file

    locations = _safetensors_locations(path)  # checks the header first: a bad one is a CheckpointError
    try:
        tensors = load_file(str(path))  # memory-mapped: tensors are read as they are used
    except Exception as e:  # safetensors raises its own types for corrupt headers and truncation
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return CheckpointTensors(tensors, locations)


def _read_pickle(path: Path) -> CheckpointTensors:
    try:
        # weights_only: tensors and plain containers only, no code from the checkpoint runs. A zip
        # file (torch >= 1.6) is memory-mapped; a legacy pre-zip pickle cannot be, and is read whole.
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({e})") from None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found entry {bad[0]!r}")
    return CheckpointTensors(sd)


def _shard_path(index: Path, shard: str) -> Path:
    """The file a shard index names, confined to the index's folder.

    A Hub cache snapshot's files are symlinks into the cache's ``blobs`` folder, which is
    allowed beside the folder itself.

    Raises:
        CheckpointError: an absolute path, a ``..`` part, or a path (symlinks resolved) that
            leaves the folder.
    """
    folder = index.parent
    pure = PurePosixPath(shard)
    if (not shard or pure.is_absolute() or PureWindowsPath(shard).is_absolute() or "\\" in shard
            or ".." in pure.parts or "\0" in shard):
        raise CheckpointError(f"{index}: shard {shard!r} is not a file name inside {folder}")
    roots = [folder.resolve()]
    if folder.resolve().parent.name == "snapshots" or folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    try:
        target = (folder / shard).resolve()
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{index}: shard {shard!r} cannot be resolved ({e})") from None
    if not any(target.is_relative_to(r) for r in roots):
        raise CheckpointError(f"{index}: shard {shard!r} leads outside {folder} (to {target})")
    return folder / shard


def _read_index(path: Path, read: Callable[[Path], CheckpointTensors]) -> CheckpointTensors:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as e:
        raise CheckpointError(f"{path}: not a valid shard index (the key {e.key!r} is written twice)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a valid shard index ({type(e).__name__}: {e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: not a valid shard index (\"weight_map\" must be an object)")
    wrong = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if wrong:
        raise CheckpointError(
            f"{path}: not a valid shard index (weight_map[{wrong[0]!r}] is a "
            f"{type(weight_map[wrong[0]]).__name__}, not a shard file name)"
        )
    sd = CheckpointTensors()
    origin: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = _shard_path(path, shard)
        if not shard_path.is_file():
            raise CheckpointError(f"{path}: names shard {shard!r}, which is missing")
        part = read(shard_path)
        twice = [k for k in part if k in origin]
        if twice:
            raise CheckpointError(
                f"{path}: tensor {twice[0]!r} is in two shards, {origin[twice[0]]} and {shard}"
            )
        origin.update(dict.fromkeys(part, shard))
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
