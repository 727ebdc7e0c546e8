"""Saving ``config.json``, ``generation_config.json`` and the weights in transformers' layout.

The weights are ``model.safetensors`` (``safe_serialization=True``, the default) or a zip
``pytorch_model.bin``; past ``max_shard_size`` they are split into shards named and indexed
as transformers names and indexes them (``model-00001-of-00002.safetensors`` and
``model.safetensors.index.json``), so that either library loads either form.

The files are written into a :func:`~seqweave.checkpoint.transaction.transaction`'s staging
folder, which replaces the target folder only when all are complete and synced: a folder
holds the whole old checkpoint or the whole new one, whenever the process dies.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .formats import WEIGHT_FORMATS
from .hf_config import generation_config
from .jsonio import CONFIG_JSON, GENERATION_CONFIG_JSON, write_json
from .transaction import transaction

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "owned_by_save", "save_pretrained", "untie", "write_pretrained"]

#: transformers 5.x's default ``max_shard_size``.
DEFAULT_MAX_SHARD_SIZE = "50GB"
_SHARD = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")
_OWNED = frozenset({CONFIG_JSON, GENERATION_CONFIG_JSON, *(f.name for f in WEIGHT_FORMATS)})


def owned_by_save(name: str) -> bool:
    """True for the files :func:`save_pretrained` writes (configs, every weight file, shard or index).

    An earlier save's owned file that this save does not rewrite (stale shards, the other
    weight format) is dropped; every other entry of the folder is kept.
    """
    return name in _OWNED or bool(_SHARD.fullmatch(name))


def untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy every tensor that is the same memory as one already seen (tied encoder and decoder weights).

    safetensors refuses to write shared memory, and transformers 5.x, which does not tie
    encoder to decoder, needs each name present. Disjoint slices of one storage (the
    chunks of a fused projection) are not shared and are left alone. FSDP2's sharded parameters
    (DTensors, which have no storage of their own) are compared by this process's shard.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for name, t in tensors.items():
        local = _local_shard(t)
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def _local_shard(t: torch.Tensor) -> torch.Tensor:
    """The memory behind ``t``: a DTensor's local shard, else ``t``."""
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(t, DTensor):
            return t.to_local()
    return t


def _weight_files(
    tensors: dict[str, torch.Tensor], max_shard_size: int | str, safe: bool, num_parameters: int
) -> list[tuple[str, Callable[[Path], None]]]:
    """The weight files to write, each as (name, writer): one file, or shards and their index."""
    from huggingface_hub import split_torch_state_dict_into_shards

    pattern = "model{suffix}.safetensors" if safe else "pytorch_model{suffix}.bin"
    try:
        split = split_torch_state_dict_into_shards(tensors, filename_pattern=pattern,
                                                   max_shard_size=max_shard_size)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"save_pretrained: max_shard_size={max_shard_size!r} is not a size ({e})") from None

    def writer(names: list[str]) -> Callable[[Path], None]:
        shard = {n: tensors[n].contiguous() for n in names}
        if safe:
            from safetensors.torch import save_file

            return lambda p: save_file(shard, str(p), metadata={"format": "pt"})
        # torch.save's zip format; cloned so that each tensor's file holds only its own bytes
        return lambda p: torch.save({n: t.clone() for n, t in shard.items()}, str(p))

    files = [(name, writer(names)) for name, names in split.filename_to_tensors.items()]
    if split.is_sharded:
        index = {"metadata": {"total_parameters": num_parameters, **split.metadata},
                 "weight_map": split.tensor_to_filename}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        index_name = pattern.format(suffix="") + ".index.json"
        files.append((index_name, lambda p: p.write_text(text, encoding="utf-8")))
    return files


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    safe_serialization: bool = True,
) -> None:
    """Write ``model``'s files into ``save_directory`` (:meth:`seqweave.EncoderDecoder.save_pretrained`).

    The files are written into a staging folder beside it that replaces the folder only
    when all are complete and synced (:func:`~seqweave.checkpoint.transaction.transaction`),
    so the folder holds the whole earlier checkpoint or the whole new one, even if the
    process dies. Other files in the folder (a tokenizer, say) are kept; weight files of an
    earlier save that this one does not rewrite (a single file where shards are now, shards
    of another count, the other format) are not, so the folder holds one set of weights.

    Args:
        state_dict: the tensors to save, by the model's own names (``model.state_dict()``'s);
            the model's own when None (``transformers.Trainer`` passes one).
        max_shard_size: the largest shard, in bytes or as ``"500MB"``-like text.
        safe_serialization: safetensors (True) or ``torch.save``'s zip ``pytorch_model.bin``.
    """
    writers = _writers(model, state_dict, max_shard_size, safe_serialization)
    with transaction(save_directory, owned=owned_by_save) as stage:
        _write(writers, stage)


def write_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    safe_serialization: bool = True,
) -> list[str]:
    """:func:`save_pretrained`'s files written straight into ``folder`` (a transaction's staging folder).

    Returns:
        The names of the files written.
    """
    writers = _writers(model, state_dict, max_shard_size, safe_serialization)
    _write(writers, Path(folder))
    return [name for name, _ in writers]


def _writers(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None, max_shard_size: int | str, safe: bool
) -> tuple[tuple[str, Callable[[Path], None]], ...]:
    sd = dict(model.state_dict() if state_dict is None else state_dict)
    tensors = untie(model.weight_map().to_hf(sd))
    count = sum(p.numel() for p in model.parameters())
    return (
        *_weight_files(tensors, max_shard_size, safe, count),
        (CONFIG_JSON, lambda p: write_json(p, model.hf_config())),
        (GENERATION_CONFIG_JSON, lambda p: write_json(p, generation_config(model))),
    )


def _write(writers: tuple[tuple[str, Callable[[Path], None]], ...], folder: Path) -> None:
    mode = _created_mode(folder)
    for name, write in writers:
        write(folder / name)
        # safetensors >= 0.8 writes through a mkstemp file: mode 0600 whatever the umask
        os.chmod(folder / name, mode)


def _created_mode(folder: Path) -> int:
    """The mode a new file gets in ``folder`` (0o666 less the umask), without touching the umask."""
    probe = folder / f".mode-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)
