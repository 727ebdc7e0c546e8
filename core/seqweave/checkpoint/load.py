"""Loading: one :func:`load_part` for every part of every composition.

A composite checkpoint (a transformers ``EncoderDecoderModel`` folder, or ours) loads as
two prefixed parts (``encoder.``, ``decoder.``) plus the projection ``enc_to_dec_proj``;
a warm start loads two single-model checkpoints as the same two parts and creates the
projection; a config file does either per part, or initialises a part without a
checkpoint at random. Each way builds the modules on the ``meta`` device and fills them
with ``load_state_dict(assign=True)`` from the memory-mapped files, so loading needs
about one copy of the weights in memory. Errors name the file and the Hugging Face tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PartConfig
from ..errors import CheckpointError, ConfigError
from ..hub import resolve
from ..registry import Registry, Role
from ..weights import Rule, WeightMap, load_module_weights, rule
from .formats import read_state_dict
from .hf_config import (
    PartSpec,
    architecture_of,
    composite_config,
    dtype_of,
    read_generation_config,
    split_hf_config,
)
from .jsonio import CONFIG_JSON, read_config_json
from .report import LoadReport, summarize_names

__all__ = ["load_composition", "load_part", "load_pretrained", "part_specs"]

logger = logging.getLogger("seqweave")

ROLES: tuple[Role, Role] = ("encoder", "decoder")
PROJECTION = "enc_to_dec_proj"


def _first(names: list[str]) -> str:
    return ", ".join(names[:3])


def load_part(
    module: nn.Module,
    weight_map: WeightMap,
    tensors: Mapping[str, torch.Tensor] | None,
    *,
    what: str,
    role: str,
    source: Path | str,
    report: LoadReport,
    prefix: str | None = None,
    filled: frozenset[str] = frozenset(),
    std: float = 0.02,
    dtype: torch.dtype,
    device: torch.device | str,
) -> list[str]:
    """Fill ``module`` (built on ``meta``) from checkpoint tensors, or initialise it; record what happened.

    Args:
        module: the encoder, the decoder or the projection, its parameters on the meta device.
        weight_map: the part's map (names relative to the part, as its architecture gives them).
        tensors: the file's tensors; None when the part has no checkpoint (every tensor is new).
        what: the part in error messages (``"a bert decoder"``).
        role: the part's name in the model and in :class:`LoadReport` (``encoder``, ``decoder``,
            ``enc_to_dec_proj``).
        source: the file the tensors come from (for errors and the progress bar).
        report: the report to add to.
        prefix: None for a single-model checkpoint: names are normalised to the map's layout
            (``base_prefix``), absent ``new_ok`` tensors are created, tensors no rule uses are
            reported as unused. A string for a part of a composite checkpoint (``"decoder."``):
            the part's tensors carry the prefix, every one must be present, and any other
            tensor under the prefix is an error.
        filled: parameters another part fills (the encoder's tensors tied to the decoder's):
            not required from this checkpoint.
        std: the standard deviation for new tensors.
        dtype: the dtype of the loaded and the new tensors.
        device: where the tensors go.

    Returns:
        The parameter names (relative to ``module``) that were created.

    Raises:
        CheckpointError: a tensor the part needs is absent, a tensor is misshapen, or (in a
            composite) a tensor under the part's prefix belongs to nothing; the message names
            the file and the Hugging Face tensor names.
    """
    if tensors is None:
        new = [n for n, _ in module.named_parameters()]
        load_module_weights(module, {}, source=source, weight_map=WeightMap(()), new=new, std=std,
                            dtype=dtype, device=device)
        report.new += [f"{role}.{n}" for n in new]
        return new
    composite = prefix is not None
    wmap = weight_map.prefixed("", prefix) if composite else weight_map
    if not composite:
        tensors = wmap.normalize_prefix(tensors)
    check_declared(module, wmap, tensors, source)
    ours, missing, unexpected = wmap.from_hf(tensors)
    missing = [r for r in missing if r.ours not in filled]
    if composite:
        missing = _without_unused_modules(module, missing, report, role)
    required = [h for r in missing if composite or not r.new_ok for h in r.hf if h not in tensors]
    if required:
        raise CheckpointError(
            f"{source}: missing {len(required)} tensor(s) {what} needs, e.g. {_first(required)}"
        )
    mine = [k for k in tensors if not composite or k.startswith(prefix)]
    unexpected = [k for k in unexpected if not composite or k.startswith(prefix)]
    if composite and unexpected:
        raise CheckpointError(
            f"{source}: {len(unexpected)} tensor(s) that {what} with this config.json does not have, "
            f"e.g. {_first(unexpected)}"
        )
    used = {h for r in wmap.rules for h in r.hf}
    skipped = set(unexpected)
    new = [r.ours for r in missing]
    load_module_weights(module, ours, source=source, weight_map=wmap, new=new, std=std, dtype=dtype,
                        device=device)
    report.new += [f"{role}.{n}" for n in new]
    report.unused += [f"{role}:{k}" for k in unexpected]
    report.ignored += [f"{role}:{k}" for k in mine if k not in used and k not in skipped]
    return new


def _declared(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """A checkpoint tensor's shape and dtype as its file declares them (the header; no data is read)."""
    where = getattr(tensors, "locations", {}).get(name)
    if where is not None:
        return tuple(where[4]), where[3]
    t = tensors[name]  # memory-mapped or in memory: shape and dtype are metadata
    return tuple(t.shape), t.dtype


def check_declared(
    module: nn.Module, wmap: WeightMap, tensors: Mapping[str, torch.Tensor], source: Path | str
) -> None:
    """Check every tensor a rule reads against the shape and dtype ``module`` needs, before any is read.

    A fused rule's parts must each be the matching slice of the fused parameter (a transposed
    one, its transpose), so a hostile or mismatched checkpoint costs neither the time nor the
    memory of reading and concatenating tensors that would be refused anyway.

    Raises:
        CheckpointError: a tensor with another shape, or a non-float tensor where a float
            parameter belongs; the message names the file and the tensor.
    """
    expected = dict(module.named_parameters(remove_duplicate=False))  # tied parameters under every name
    for r in wmap.rules:
        want = expected.get(r.ours)
        if want is None or not all(h in tensors for h in r.hf):
            continue
        shape = list(want.shape)
        n = len(r.hf)
        if n > 1:
            if not shape or shape[0] % n:
                continue  # not a fused layout this check understands: from_hf and the final check decide
            shape[0] //= n
        if r.transpose:
            shape = shape[::-1]
        for h in r.hf:
            got, dtype = _declared(tensors, h)
            if want.is_floating_point() and not (dtype.is_floating_point or dtype.is_complex):
                raise CheckpointError(
                    f"{source}: tensor {h} is {str(dtype).removeprefix('torch.')}, but {r.ours} holds "
                    "floating-point weights"
                )
            if list(got) != shape:
                part = f" (part {r.hf.index(h) + 1} of {n} fused into {r.ours})" if n > 1 else ""
                raise CheckpointError(
                    f"{source}: tensor {h} has shape {list(got)}, but the config implies {shape}{part}; "
                    "does config.json match the weights?"
                )


#: Submodules of a part that the composite never uses (BERT's pooler): absent from a composite
#: checkpoint as a whole, the part goes without them, so they are neither required nor made up,
#: and a save writes what was read. (A warm start creates them, as transformers does: a
#: single-model checkpoint without a pooler is an MLM model, whose pooler is new.)
UNUSED_MODULES = ("pooler",)


def _without_unused_modules(
    module: nn.Module, missing: list[Rule], report: LoadReport, role: str
) -> list[Rule]:
    """``missing`` less the rules of a wholly absent :data:`UNUSED_MODULES` submodule, which is dropped.

    A submodule with some of its tensors in the checkpoint stays (its absent ones are then
    missing as any other's would be). A dropped one is not saved either: the round trip
    writes what was read.
    """
    for name in UNUSED_MODULES:
        if getattr(module, name, None) is None:
            continue
        own = [r for r in missing if r.ours.startswith(f"{name}.")]
        if len(own) == sum(1 for _ in getattr(module, name).parameters()):
            setattr(module, name, None)
            report.absent.append(f"{role}.{name}")
            missing = [r for r in missing if r not in own]
    return missing


def _warn_drifted_copies(
    model: nn.Module, encoder: PartSpec, sd: Mapping[str, torch.Tensor], source: Path
) -> None:
    """Warn when a tied encoder tensor's own copy in the file differs from the decoder's, which wins.

    transformers 5.x ignores ``tie_encoder_decoder`` and fine-tunes the two copies apart; tying
    here computes with the decoder's, so the logits are not transformers' any more: say so,
    once. The copies are compared one rule at a time, so no more than one tensor is copied.
    """
    tied = set(model.tied_parameters)
    if not tied:
        return
    wmap = encoder.arch.weight_map(encoder.config, "encoder").prefixed("", "encoder.")
    params = dict(model.encoder.named_parameters(remove_duplicate=False))
    drifted = []
    for r in wmap.rules:
        if r.ours not in tied or not all(h in sd for h in r.hf):
            continue
        (theirs,) = WeightMap((r,)).from_hf(sd)[0].values()
        mine = params[r.ours]
        if theirs.shape == mine.shape and not torch.equal(theirs.to(mine.device, mine.dtype), mine.detach()):
            drifted.append(f"encoder.{r.ours}")
    if drifted:
        logger.warning(
            "%s: tie_encoder_decoder is set but the file's encoder copies of %d tied tensor(s) differ from "
            "the decoder's (e.g. %s); the decoder's are used (transformers 5.x, which does not tie, uses "
            "each copy)",
            source, len(drifted), _first(drifted),
        )


def _log_ignored(report: LoadReport) -> None:
    """One log line for what the checkpoint holds that the model does not use (old buffers, other heads)."""
    dropped = [*report.ignored, *(f"{m} (absent from the checkpoint)" for m in report.absent)]
    if dropped:
        logger.info("ignored (not used by the model): %s", ", ".join(summarize_names(dropped)))


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the ``meta`` device, with ``torch.nn.init``'s functions skipped.

    Initialising a meta tensor computes nothing, but ``normal_`` on ``meta`` goes through
    ``torch._refs``, whose first use imports ``torch._dynamo``: about 1 s of a cold start
    (measured: 1.0 of the 1.4 s ``from_pretrained`` took in a fresh process). Weights come from
    the checkpoint or are initialised after materialising, so nothing is lost.
    """
    from torch.nn import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def skip(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for n in names:
            setattr(init, n, skip)
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def _build(factory: Callable[..., nn.Module], parts: Mapping[str, PartSpec], **kwargs: Any) -> nn.Module:
    """The model, its modules on the ``meta`` device (no memory, no initialisation)."""
    with on_meta():
        model = factory(
            parts["encoder"].arch.build_module(parts["encoder"].config, "encoder"),
            parts["decoder"].arch.build_module(parts["decoder"].config, "decoder"),
            **kwargs,
        )
    model.hf_extra.update({role: parts[role].extra for role in ROLES})
    return model


def load_pretrained(
    factory: Callable[..., nn.Module],
    name_or_path: str | os.PathLike,
    revision: str | None,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str,
    registry: Registry,
    config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A composite checkpoint folder (or Hub id) loaded into ``factory(encoder, decoder, **fields)``.

    ``config`` (a composite config.json's content) replaces the folder's ``config.json``.
    See :meth:`seqweave.EncoderDecoder.from_pretrained`.
    """
    folder = resolve(name_or_path, revision)
    where = str(folder / CONFIG_JSON) if config is None else f"config= given to from_pretrained({folder})"
    data = read_config_json(folder) if config is None else dict(config)
    parts, kwargs, top = composite_config(data, where, registry)
    model = _build(factory, parts, **kwargs)
    model.hf_extra["top"] = top
    read_generation_config(model, folder, legacy=data)
    sd, source = read_state_dict(folder)
    dtype = dtype or dtype_of([sd])
    prefixes = tuple(f"{p}." for p in (*ROLES, *([PROJECTION] if model.enc_to_dec_proj is not None else [])))
    stray = [k for k in sd if not k.startswith(prefixes)]
    if stray:
        pair = f"{parts['encoder'].arch.name}2{parts['decoder'].arch.name}"
        raise CheckpointError(
            f"{source}: {len(stray)} tensor(s) that a {pair} model with this config.json does not have, "
            f"e.g. {_first(stray)}"
        )
    report = model.load_report = LoadReport(sources={"model": str(source)})
    report.tied = [f"encoder.{n}" for n in model.tied_parameters]
    # transformers 4.x saved a tied model with only the decoder's copy of each shared tensor: the
    # decoder loads first, tying gives the encoder its tensors, and the encoder needs only the rest.
    for role in ("decoder", "encoder") if model.tied_parameters else ROLES:
        p = parts[role]
        load_part(getattr(model, role), p.arch.weight_map(p.config, role), sd, what=f"a {p.arch.name} {role}",
                  role=role, source=source, report=report, prefix=f"{role}.", dtype=dtype, device=device,
                  filled=frozenset(model.tied_parameters) if role == "encoder" else frozenset())
        model.tie_weights()
    _warn_drifted_copies(model, parts["encoder"], sd, source)
    if model.enc_to_dec_proj is not None:
        load_part(model.enc_to_dec_proj, WeightMap((rule("weight"), rule("bias"))), sd, role=PROJECTION,
                  what=f"the projection {PROJECTION}", source=source, report=report, prefix=f"{PROJECTION}.",
                  dtype=dtype, device=device)
    _log_ignored(report)
    return model.eval()


def part_specs(
    encoder: str | os.PathLike,
    decoder: str | os.PathLike,
    revisions: Mapping[str, str | None],
    overrides: Mapping[str, Any],
) -> dict[str, PartConfig]:
    """The two parts of a warm start; ``encoder_<field>=...`` / ``decoder_<field>=...`` override fields.

    Raises:
        ConfigError: an override that names neither part.
    """
    part_overrides: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}}
    for key, value in overrides.items():
        role, _, fieldname = key.partition("_")
        if role not in part_overrides or not fieldname:
            raise ConfigError(f"unknown argument {key!r}: part overrides start with encoder_ or decoder_")
        part_overrides[role][fieldname] = value
    return {
        role: PartConfig.model_construct(architecture="", pretrained=str(path), revision=revisions.get(role),
                                         config=part_overrides[role])
        for role, path in (("encoder", encoder), ("decoder", decoder))
    }


def _part_spec(role: Role, spec: PartConfig, registry: Registry) -> tuple[PartSpec, Path | None]:
    """The part a composition names and the folder of its checkpoint (None for a random one)."""
    if spec.pretrained is None:
        arch = registry.get(spec.architecture)
        return PartSpec(arch, arch.make_config(spec.config, source=f"{role}.config")), None
    folder = resolve(spec.pretrained, spec.revision)
    where = str(folder / CONFIG_JSON)
    data = read_config_json(folder)
    arch = architecture_of(data, where, registry)
    if spec.architecture and spec.architecture != arch.name:
        raise ConfigError(
            f"{role}.architecture is {spec.architecture!r} but {where} says model_type {arch.name!r}"
        )
    part = split_hf_config(arch, data, where)
    if spec.config:  # the merged config is checked under the composition's name for the block
        part.config = arch.make_config({**part.config.model_dump(), **spec.config}, source=f"{role}.config")
    return part, folder


def load_composition(
    factory: Callable[..., nn.Module],
    specs: Mapping[str, PartConfig],
    registry: Registry,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str,
    **kwargs: Any,
) -> nn.Module:
    """``factory(encoder, decoder, **kwargs)`` with each part warm-started from its checkpoint or initialised.

    See :meth:`seqweave.EncoderDecoder.from_pretrained_parts` and ``from_config``.
    """
    parts: dict[str, PartSpec] = {}
    checkpoints: dict[str, tuple[Mapping[str, torch.Tensor], Path]] = {}
    for role in ROLES:
        parts[role], folder = _part_spec(role, specs[role], registry)
        if folder is not None:
            checkpoints[role] = read_state_dict(folder)
    model = _build(factory, parts, **kwargs)
    dtype = dtype or dtype_of([sd for sd, _ in checkpoints.values()])
    report = model.load_report = LoadReport()
    shown: list[str] = []  # the log line: names from the checkpointed parts, a random part as a whole
    for role in ROLES:
        p = parts[role]
        sd, source = checkpoints.get(role, (None, f"{role} (random init)"))
        new = load_part(getattr(model, role), p.arch.weight_map(p.config, role), sd,
                        what=f"a {p.arch.name} {role}", role=role, source=source, report=report,
                        std=p.config.initializer_range, dtype=dtype, device=device)
        if sd is None:
            shown.append(f"{role} (all {len(new)})")
        else:
            shown += [f"{role}.{n}" for n in new]
            report.sources[role] = str(source)
    model.tie_weights()  # the parts were loaded one by one: share their tensors again
    report.tied = [f"encoder.{n}" for n in model.tied_parameters]
    if model.enc_to_dec_proj is not None:
        new = load_part(model.enc_to_dec_proj, WeightMap(()), None, what=f"the projection {PROJECTION}",
                        role=PROJECTION, source=PROJECTION, report=report,
                        std=parts["decoder"].config.initializer_range, dtype=dtype, device=device)
        shown += [f"{PROJECTION}.{n}" for n in new]
    if checkpoints and shown:
        logger.warning("newly initialised tensors (train before use): %s", ", ".join(summarize_names(shown)))
    if report.unused:
        logger.info("unused checkpoint tensors: %s", ", ".join(report.unused))
    _log_ignored(report)
    return model.eval() if checkpoints else model
