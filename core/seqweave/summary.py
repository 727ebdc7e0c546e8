"""What ``seqweave inspect`` shows: each part, parameter counts, which tensors are pretrained, tied or new."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .checkpoint.report import summarize_names

if TYPE_CHECKING:
    from .composer import EncoderDecoder

__all__ = ["describe", "format_description"]


def _unique_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a shared tensor once


def _part(module: nn.Module) -> dict[str, Any]:
    config = getattr(module, "config", None)
    layers = getattr(module, "num_layers", None)
    if layers is None and isinstance(getattr(module, "layers", None), nn.ModuleList):
        layers = len(module.layers)
    return {
        "architecture": getattr(module, "architecture", type(module).__name__),
        "class": type(module).__name__,
        "layers": layers,
        "hidden_size": getattr(module, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", getattr(module, "vocab_size", None)),
        "parameters": _unique_count(module),
        "config": config.model_dump(mode="json") if config is not None else None,
    }


def _tied(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied embeddings, shared encoder/decoder weights)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def describe(model: EncoderDecoder, folder: Path | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``model``.

    Tensors are *new* when :attr:`EncoderDecoder.load_report` says they were initialised
    randomly (a model assembled from modules reports all of them), *pretrained* otherwise,
    and *tied* when several names are one tensor. Tied names count once in the parameter
    totals.
    """
    report = model.load_report
    names = [n for n, _ in model.named_parameters()]  # each tensor once, by its first name
    new_set = set(report.new)
    new = [n for n in names if n in new_set]
    new_lookup = set(new)
    first = next(model.parameters())
    return {
        "folder": str(folder) if folder is not None else None,
        "architecture": f"{_part(model.encoder)['architecture']}2{_part(model.decoder)['architecture']}",
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "encoder": _part(model.encoder),
        "decoder": _part(model.decoder),
        "enc_to_dec_proj": _unique_count(model.enc_to_dec_proj)
        if model.enc_to_dec_proj is not None
        else None,
        "parameters": _unique_count(model),
        "tensors": len(names),
        "pretrained": [n for n in names if n not in new_lookup],
        "new": new,
        "tied": _tied(model),
        "sources": dict(report.sources),
        "unused_checkpoint_tensors": list(report.unused),
        "ignored_checkpoint_tensors": list(report.ignored),
        "decoder_start_token_id": model.decoder_start_token_id,
        "pad_token_id": model.pad_token_id,
        "eos_token_id": model.eos_token_id,
        "tie_encoder_decoder": model.tie_encoder_decoder,
        "generation": model.generation_defaults().model_dump(),
    }


def _names(names: list[str], limit: int = 8) -> str:
    grouped = summarize_names(names)
    shown = ", ".join(grouped[:limit])
    return shown + (f", ... ({len(grouped) - limit} more groups)" if len(grouped) > limit else "")


def _new_by_part(d: dict[str, Any]) -> str:
    """``encoder (all 40)`` for a part without a checkpoint, the grouped names otherwise."""
    out = []
    for part in ("encoder", "decoder", "enc_to_dec_proj"):
        new = [n for n in d["new"] if n.startswith(part + ".")]
        every = [n for n in (*d["pretrained"], *d["new"]) if n.startswith(part + ".")]
        if new and len(new) == len(every):
            out.append(f"{part} (all {len(new)})")
        elif new:
            out.append(_names(new))
    return "; ".join(out)


def format_description(d: dict[str, Any]) -> str:
    """The text ``seqweave inspect`` prints for :func:`describe`'s result."""
    lines = []
    where = f" from {d['folder']}" if d["folder"] else ""
    lines.append(f"model        {d['architecture']}{where} ({d['dtype']}, {d['device']})")
    for role in ("encoder", "decoder"):
        p = d[role]
        shape = ", ".join(
            f"{k.replace('_', ' ')} {p[k]}"
            for k in ("layers", "hidden_size", "vocab_size")
            if p[k] is not None
        )
        lines.append(
            f"{role:<12} {p['architecture']} ({p['class']}): {shape}; {p['parameters']:,} parameters"
        )
    proj = d["enc_to_dec_proj"]
    lines.append(
        f"{'projection':<12} "
        + (
            f"enc_to_dec_proj, {proj:,} parameters"
            if proj is not None
            else "none (encoder and decoder widths match)"
        )
    )
    lines.append(f"{'total':<12} {d['parameters']:,} parameters in {d['tensors']} tensors")
    total = d["tensors"]
    if d["pretrained"]:
        files = ", ".join(f"{k}: {v}" for k, v in d["sources"].items())
        lines.append(f"{'pretrained':<12} {len(d['pretrained'])}/{total} tensors from {files}")
    else:
        lines.append(f"{'pretrained':<12} none")
    lines.append(
        f"{'new':<12} "
        + (
            f"{len(d['new'])}/{total} tensors, initialised randomly (train before use): {_new_by_part(d)}"
            if d["new"]
            else "none"
        )
    )
    if d["tied"]:
        for group in d["tied"]:
            lines.append(f"{'tied':<12} " + " = ".join(group))
    else:
        lines.append(f"{'tied':<12} none")
    if d["unused_checkpoint_tensors"]:
        lines.append(f"{'unused':<12} {_names(d['unused_checkpoint_tensors'])}")
    if d["ignored_checkpoint_tensors"]:
        lines.append(f"{'ignored':<12} {_names(d['ignored_checkpoint_tensors'])}")
    lines.append(
        f"{'tokens':<12} decoder_start_token_id {d['decoder_start_token_id']}, pad_token_id "
        f"{d['pad_token_id']}, eos_token_id {d['eos_token_id']}"
    )
    g = d["generation"]
    lines.append(f"{'generation':<12} " + ", ".join(f"{k} {v}" for k, v in g.items()))
    return "\n".join(lines)
