"""STAND-IN for branch i11-dist's module of the same name (one process only; replaced at the merge).

The API of /work/shared/DESIGN.md's distributed section, so that the trainer runs and its
tests pass in one process before the real DDP / FSDP2 / DCP implementation lands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Dist", "all_reduce_sum", "barrier", "broadcast_object", "full_state_dict", "load_state",
           "save_state", "setup", "teardown", "unwrap", "wrap"]


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(parallel: Literal["none", "ddp", "fsdp"], device: str | None) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or parallel != "none":
        raise ConfigError("train.parallel: several processes need branch i11-dist's training.distributed")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Dist(0, 1, 0, dev, None)


def teardown(dist: Dist) -> None:
    pass


def wrap(model: nn.Module, dist: Dist, parallel: str, precision: str) -> nn.Module:
    return model


def unwrap(module: nn.Module) -> Any:
    return module


def all_reduce_sum(dist: Dist, t: torch.Tensor) -> torch.Tensor:
    return t


def broadcast_object(dist: Dist, obj: Any) -> Any:
    return obj


def barrier(dist: Dist) -> None:
    pass


def save_state(dist: Dist, folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(folder) / "state.pt")


def load_state(dist: Dist, folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    state = torch.load(Path(folder) / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def full_state_dict(dist: Dist, model: nn.Module) -> dict[str, torch.Tensor] | None:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
