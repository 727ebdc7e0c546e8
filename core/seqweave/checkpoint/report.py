"""What loading did, tensor by tensor: :class:`LoadReport`; and :func:`summarize_names` to show it briefly."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LoadReport", "summarize_names"]


@dataclass
class LoadReport:
    """What loading did: which tensors came from a checkpoint, which were created, ignored or tied.

    A model built from modules (``EncoderDecoder(enc, dec)``, ``build_encoder``, a config
    without pretrained parts) reports every tensor as new; the loaders replace the report.

    Attributes:
        new: our parameter names that were initialised randomly (in no checkpoint).
        unused: checkpoint tensors that no rule maps, as ``role:name`` (single-model checkpoints only).
        ignored: checkpoint tensors dropped by a weight map's ``ignore`` patterns (tied copies,
            unused heads, old buffers), as ``role:name`` with the name as the file has it.
        tied: our encoder parameter names that are the decoder's tensors (``tie_encoder_decoder``);
            the decoder's values fill them.
        sources: the weight file read, by part (``model`` for a composite checkpoint).
        absent: submodules the composite does not use that the checkpoint lacks, left out of
            the model (``encoder.pooler``: BERT saved with ``add_pooling_layer=False``).
    """

    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)


def summarize_names(names: list[str]) -> list[str]:
    """Group tensor names that differ only in a layer index: ``layers.{0-11}.x``."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        key = n if m is None else n[: m.start()] + ".{}." + n[m.end() :]
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m is not None:
            groups[key].append(int(m.group(1)))
    out = []
    for key in order:
        idx = sorted(groups[key])
        if not idx:
            out.append(key)
            continue
        span = f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1 else ",".join(map(str, idx))
        out.append(key.replace("{}", "{" + span + "}" if len(idx) > 1 else span))
    return out
