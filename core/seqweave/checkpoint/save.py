"""Saving ``config.json``, ``generation_config.json`` and ``model.safetensors`` in transformers' layout."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .formats import SAFETENSORS
from .hf_config import generation_config
from .jsonio import CONFIG_JSON, GENERATION_CONFIG_JSON, write_json

__all__ = ["save_pretrained", "untie"]


def untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy every tensor that is the same memory as one already seen (tied encoder and decoder weights).

    safetensors refuses to write shared memory, and transformers 5.x, which does not tie
    encoder to decoder, needs each name present. Disjoint slices of one storage (the
    chunks of a fused projection) are not shared and are left alone.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Write ``model``'s three files into ``save_directory`` (:meth:`seqweave.EncoderDecoder.save_pretrained`).

    Every file is written to a temporary name first and renamed into place only when all
    are complete, so a failed save leaves an earlier checkpoint in the folder intact.
    """
    from safetensors.torch import save_file

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = untie(model.weight_map().to_hf(model.state_dict()))
    writers: tuple[tuple[str, Callable[[Path], None]], ...] = (
        (SAFETENSORS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})),
        (CONFIG_JSON, lambda p: write_json(p, model.hf_config())),
        (GENERATION_CONFIG_JSON, lambda p: write_json(p, generation_config(model))),
    )
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            staged.append((Path(tmp), folder / name))
            write(Path(tmp))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
