"""Scale-out on PyTorch's own engine: the process group, DDP or FSDP2, and checkpoints with DCP.

The trainer runs the same code in one process and under ``torchrun``; this module is the
only place that knows the difference:

* :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous) and starts a process group: ``gloo`` on
  the CPU, ``nccl`` on CUDA (plus ``gloo`` for CPU tensors). ``parallel="none"`` starts none.
* :func:`wrap` makes the model DDP (every rank holds all weights, gradients are averaged) or
  FSDP2 (:func:`torch.distributed.fsdp.fully_shard` on each transformer layer, the embeddings
  and the head, then the root: every rank holds a shard of each weight, gradient and optimizer
  state). Modules that share a parameter (a decoder head tied to its embeddings, layers tied by
  ``tie_encoder_decoder``) go into one FSDP unit.
* :func:`save_state` / :func:`load_state` write and read model and optimizer with
  ``torch.distributed.checkpoint`` (DCP): each rank writes its own shard, and a checkpoint
  written by N processes loads into any other number, one included, with or without a group.
* :func:`full_state_dict` gathers the whole model on rank 0 (on the CPU) for
  :meth:`seqweave.EncoderDecoder.save_pretrained`: one Hugging Face folder.

With one process and no group, the collectives (:func:`all_reduce_sum`,
:func:`broadcast_object`, :func:`barrier`) return at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

from ..composer import EncoderDecoder
from ..errors import CheckpointError, ConfigError

__all__ = [
    "Dist",
    "Parallel",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "fsdp_units",
    "full_state_dict",
    "gathered",
    "gradient_sync",
    "load_state",
    "save_state",
    "setup",
    "teardown",
    "unwrap",
    "wrap",
]

Parallel = Literal["none", "ddp", "fsdp"]
PARALLEL: tuple[str, ...] = ("none", "ddp", "fsdp")
T = TypeVar("T")

#: DCP warns on every save and load without a process group; for us that is the normal case.
_NO_GROUP_WARNING = r"torch\.distributed is disabled, unavailable or uninitialized"


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run.

    Attributes:
        rank: this process's rank (0 ... world - 1).
        world: the number of processes.
        local_rank: its rank on this node (the CUDA device index).
        device: where the model and the batches go.
        backend: the process group's backend (``"gloo"``, ``"nccl"``), None without a group.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    #: whether setup() started the group (teardown ends only that one, never a caller's own)
    started: bool = field(default=False, repr=False)

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that logs, shows progress and writes single files."""
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """Whether a process group runs (collectives and DCP then talk to the other ranks)."""
        return self.backend is not None


# ---------------------------------------------------------------------------------------------
# The process group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def _device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available in this PyTorch or on this machine")
        if dev.index is None:  # one GPU per process: the local rank picks it
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def setup(parallel: Parallel | str, device: str | None = None) -> Dist:
    """Join the run that ``torchrun`` (or a launcher that sets the same variables) started.

    ``parallel="none"`` starts no process group and refuses several processes (each would train
    alone). ``"ddp"`` and ``"fsdp"`` start one: from torchrun's ``MASTER_ADDR``/``MASTER_PORT``
    (``env://``) when set, else a group of one process on a store in memory (so both also run
    without torchrun, in one process).

    Args:
        parallel: ``"none"``, ``"ddp"`` or ``"fsdp"``.
        device: ``"cpu"``, ``"cuda"`` (each process takes GPU ``LOCAL_RANK``), ``"cuda:N"``, or
            None for CUDA when available, else the CPU.

    Raises:
        ConfigError: an unknown ``parallel``, several processes with ``parallel="none"``, a
            device that does not exist.
    """
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel is {parallel!r}; allowed: {', '.join(PARALLEL)}")
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if parallel == "none" and world > 1:
        raise ConfigError(
            f"train.parallel is 'none' but {world} processes were started (WORLD_SIZE={world}); "
            "set train.parallel=ddp or train.parallel=fsdp"
        )
    dev = _device(device, local_rank)
    if parallel == "none":
        return Dist(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    started = not tdist.is_initialized()  # else: the caller's own group, which we use and leave
    if started:
        # nccl moves CUDA tensors; gloo beside it serves CPU tensors (counts, objects, DCP's plans).
        spec = "cpu:gloo,cuda:nccl" if backend == "nccl" else "gloo"
        if "MASTER_ADDR" in os.environ or world > 1:
            tdist.init_process_group(spec, rank=rank, world_size=world)
        else:
            tdist.init_process_group(spec, store=tdist.HashStore(), rank=0, world_size=1)
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank, device=dev,
                backend=backend, started=started)


def teardown(dist: Dist) -> None:
    """End the process group :func:`setup` started (nothing without one, nor for a group it found running).

    No collective: a rank that fails calls it too (in a ``finally``), and must then exit, so that
    torchrun stops the others. First this process lets gloo's threads drop the collectives they
    have finished: one of them can still hold a tensor that Python made, and freeing the DDP model
    afterwards (its reducer keeps the group alive past ``destroy_process_group``) would join a gloo
    thread that waits for the interpreter lock the freeing thread holds, and the process would hang
    at exit (seen once in the 2-process test). Dropping the wrapped model first avoids it as well.
    """
    if dist.started and tdist.is_initialized():
        time.sleep(0.05)  # releases the interpreter lock: gloo's threads finish with their last works
        tdist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Collectives: no-ops in one process


def all_reduce_sum(dist: Dist, t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank (in place, and returned); ``t`` itself in one process."""
    if dist.world > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(dist: Dist, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object); ``obj`` itself in one process."""
    if dist.world == 1:
        return obj
    box = [obj if dist.main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if dist.world > 1:
        tdist.barrier()


# ---------------------------------------------------------------------------------------------
# Wrapping


def unwrap(module: nn.Module) -> EncoderDecoder:
    """The :class:`~seqweave.EncoderDecoder` inside ``module`` (DDP's ``.module``, ``torch.compile``'s).

    An FSDP2 model is the model itself (``fully_shard`` works in place).
    """
    seen = module
    while True:
        if isinstance(seen, EncoderDecoder):
            return seen
        inner = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise ConfigError(f"{type(module).__name__} holds no seqweave.EncoderDecoder")
        seen = inner


def _stack_units(stack: nn.Module) -> list[nn.Module]:
    """A stack's candidate FSDP units: each of its layers, its embeddings, its head.

    Read from the attributes the core's stacks have (``layers``, ``embeddings``, ``head``),
    whatever the architecture; a plugin's module without them gives none (it is then sharded
    with the root).
    """
    units: list[nn.Module] = []
    layers = getattr(stack, "layers", None)
    if isinstance(layers, (nn.ModuleList, nn.Sequential)):
        units += list(layers)
    for name in ("embeddings", "head"):
        part = getattr(stack, name, None)
        if isinstance(part, nn.Module):
            units.append(part)
    return units


def fsdp_units(model: EncoderDecoder) -> list[list[nn.Module]]:
    """The groups of modules that :func:`wrap` shards as one FSDP unit each, before the root.

    Each transformer layer, the embeddings and the head of the encoder and of the decoder, but:
    modules that share a parameter (a head tied to the embeddings, encoder and decoder layers
    tied by ``tie_encoder_decoder``) form one group, since a parameter can belong to one unit
    only; a module sharing a parameter with one outside every group is left to the root. A
    module without parameters is left out. Order: as found, encoder first.
    """
    candidates: list[nn.Module] = []
    for part in (model.encoder, model.decoder):
        candidates += [m for m in _stack_units(part) if all(m is not c for c in candidates)]
    candidates = [m for m in candidates if any(True for _ in m.parameters())]
    # drop a candidate inside another one (a plugin's odd nesting): units must be disjoint
    inside = {id(sub) for c in candidates for sub in c.modules() if sub is not c}
    candidates = [c for c in candidates if id(c) not in inside]
    owner: dict[int, int] = {}  # parameter id -> candidate index
    for i, c in enumerate(candidates):
        for p in c.parameters():
            owner.setdefault(id(p), i)
    # union-find over the candidates that share a parameter
    parent = list(range(len(candidates)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, c in enumerate(candidates):
        for p in c.parameters():
            parent[find(i)] = find(owner[id(p)])
    # a parameter also held by a module outside every candidate: its group goes to the root
    covered = {id(sub) for c in candidates for sub in c.modules()}
    to_root = set()
    for _, sub in model.named_modules(remove_duplicate=False):
        if id(sub) in covered:
            continue
        for p in sub.parameters(recurse=False):
            if id(p) in owner:
                to_root.add(find(owner[id(p)]))
    groups: dict[int, list[nn.Module]] = {}
    for i, c in enumerate(candidates):
        if find(i) not in to_root:
            groups.setdefault(find(i), []).append(c)
    return list(groups.values())


def wrap(model: EncoderDecoder, dist: Dist, parallel: Parallel | str, precision: str = "fp32") -> nn.Module:
    """Place ``model`` on ``dist.device`` and make it data-parallel as ``parallel`` says.

    * ``"none"``: the model itself.
    * ``"ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel` (``find_unused_parameters``:
      a part may hold weights the composite never uses, such as BERT's pooler). In one process
      without a group, the model itself.
    * ``"fsdp"``: FSDP2, in place: :func:`~torch.distributed.fsdp.fully_shard` on each group of
      :func:`fsdp_units`, then on the root; on CUDA with ``precision="bf16"`` (or ``"fp16"``)
      parameters are all-gathered in that dtype and gradients reduced in float32
      (:class:`~torch.distributed.fsdp.MixedPrecisionPolicy`). ``generate`` is registered as a
      forward method (and ``generate_with_scores``), so generation runs on the sharded model.

    Make the optimizer from the wrapped model's parameters, after this (FSDP2 replaces them with
    sharded ones), and load a checkpoint (:func:`load_state`) into the wrapped model.

    Raises:
        ConfigError: an unknown ``parallel``, or ``"ddp"``/``"fsdp"`` without the group
            :func:`setup` starts for them.
    """
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel is {parallel!r}; allowed: {', '.join(PARALLEL)}")
    if parallel != "none" and not dist.grouped:
        raise ConfigError(f"train.parallel={parallel} needs the process group that setup({parallel!r}) starts")
    if parallel == "fsdp":  # fully_shard moves each unit's shard to the device: never the whole model at once
        return _fully_shard(model, dist, precision)
    model = model.to(dist.device)
    if parallel == "none":
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def _fully_shard(model: EncoderDecoder, dist: Dist, precision: str) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Logits are a view (F.linear on [b, t, d] flattens and views back, in transformers too); FSDP2
    # warns that an in-place op on a view would skip its pre-backward hook. Nothing here does one,
    # and copying [b, t, vocab] to silence it would cost memory every step.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(dist.device.type, (dist.world,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is not None and dist.device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for group in fsdp_units(model):
        fully_shard(group if len(group) > 1 else group[0], reshard_after_forward=True, **kwargs)
    # the root's parameters are needed first in backward: kept whole after forward (FSDP2's own default)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    for name in ("generate", "generate_with_scores"):
        _hook_generation(model, name)
    return model


def _hook_generation(model: nn.Module, name: str) -> None:
    """``model.<name>`` as an FSDP2 forward (the root's weights gathered too), without CUDA graphs.

    Generation is no ``forward``: unregistered, the weights of the root's own unit (those in no
    layer, embeddings or head: final norms, ``enc_to_dec_proj``) would stay sharded in it.
    """
    from torch.distributed.fsdp import register_fsdp_forward_method

    register_fsdp_forward_method(model, name)
    hooked = getattr(model, name)

    @functools.wraps(hooked)
    def generate(*args: Any, cuda_graph: bool | None = None, **options: Any) -> Any:
        # a CUDA graph would replay the all-gathers into buffers FSDP2 has freed since
        if cuda_graph:
            raise ConfigError(f"{name}(cuda_graph=True) cannot run on an FSDP2-sharded model: a graph cannot "
                              "replay its all-gathers; leave cuda_graph unset")
        return hooked(*args, cuda_graph=False, **options)

    setattr(model, name, generate)


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Inside, an FSDP2 model holds every parameter whole on every rank; nothing changes for the others.

    Forward passes and :meth:`~seqweave.EncoderDecoder.generate` then need no collectives, so the
    ranks may run different numbers of them (evaluation on each rank's share of the data, sequences
    that stop at different lengths). Outside, every forward of an FSDP2 model all-gathers, and a rank
    that stops early leaves the others waiting. A collective: every rank enters it. Memory: the
    whole model per rank, as DDP holds it.
    """
    units = _fsdp_modules(model)
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.set_reshard_after_forward(m is not model, recurse=False)  # as wrap() set them
            m.reshard()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the backward of a micro-batch inside this; ``enabled=False`` keeps its gradients local.

    Gradient accumulation: the micro-batches before the last of an optimizer step need not be
    averaged over the ranks (DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``); the last
    one's backward, with ``enabled=True``, averages the sum. The result is the same either way, only
    the communication differs. Nothing changes without DDP or FSDP2.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)  # recursive: every unit
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# ---------------------------------------------------------------------------------------------
# Checkpoints


@contextlib.contextmanager
def _quiet_without_group(dist: Dist) -> Iterator[None]:
    with warnings.catch_warnings():
        if not dist.grouped:
            warnings.filterwarnings("ignore", message=_NO_GROUP_WARNING)
        yield


def save_state(dist: Dist, folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write ``model`` and ``optimizer`` to ``folder`` with ``torch.distributed.checkpoint``.

    Every rank calls this with the same folder (on a file system they share); each writes its
    own shard (``__R_0.distcp``) and rank 0 the ``.metadata``. Names are the model's own (DDP's
    and ``torch.compile``'s prefixes dropped) and tensors are saved whole or as FSDP2's shards,
    so :func:`load_state` reads it into any number of processes. One process without a group
    writes the same layout.

    Raises:
        CheckpointError: a rank could not write its files (the message is the first failure's).
    """
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        with _quiet_without_group(dist):
            save({"model": model_sd, "optim": optim_sd}, checkpoint_id=Path(folder), no_dist=not dist.grouped)
    except CheckpointException as e:  # a BaseException: it would slip past every `except Exception`
        raise CheckpointError(f"{folder}: could not write the checkpoint: {_first_line(e)}") from e


def load_state(dist: Dist, folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a :func:`save_state` checkpoint into ``model`` and ``optimizer``, however many processes wrote it.

    The model must be wrapped as it will train (``wrap`` first): each rank then reads the part
    it holds. Every model tensor must be in the checkpoint. A parameter that had no optimizer
    state when it was saved (it never had a gradient: BERT's pooler in a composite) gets none.

    Raises:
        CheckpointError: ``folder`` holds no DCP checkpoint, or one that lacks a tensor of this model
            or has another shape for it.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no torch.distributed.checkpoint files (.metadata is missing)")
    saved = FileSystemReader(folder).read_metadata().state_dict_metadata
    model_sd, optim_sd = get_state_dict(model, optimizer)  # fills a fresh optimizer's state to load into
    missing = [k for k in model_sd if f"model.{k}" not in saved]
    if missing:
        raise CheckpointError(f"{folder}: the checkpoint has no {', '.join(missing[:5])}"
                              + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    # a parameter without saved state: leave it out here, and set_optimizer_state_dict(strict=False) leaves it bare
    prefixes = {k.split(".state.", 1)[1].rsplit(".", 1)[0] for k in saved if k.startswith("optim.state.")}
    optim_sd["state"] = {k: v for k, v in optim_sd["state"].items() if k in prefixes}
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with _quiet_without_group(dist):
            load(state, checkpoint_id=folder, no_dist=not dist.grouped)
    except (Exception, CheckpointException) as e:  # DCP's is a BaseException: it wraps every rank's failure
        raise CheckpointError(f"{folder}: could not load the checkpoint: {_first_line(e)}") from e
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    tail = [line for line in text if "Error" in line] or text or [type(e).__name__]
    return tail[-1].strip()


def full_state_dict(dist: Dist, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's tensors on rank 0, on the CPU, by the model's own names; None on the other ranks.

    A collective: every rank must call it. The result is what
    ``unwrap(model).save_pretrained(folder, state_dict=...)`` writes as one Hugging Face folder.
    Without FSDP, tensors already on the CPU are the live parameters, not copies: write them
    before the next optimizer step.
    """
    if not dist.grouped:
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if dist.main else None
