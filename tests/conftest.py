"""Shared fixtures: tiny random models made by the test, in both seqweave and transformers.

Nothing here touches the network: configs come from each architecture's ``tiny_config``,
weights are random and saved to a temporary folder that both sides load.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import seqweave as sw  # noqa: E402
from seqweave.testing import randomize  # noqa: E402,F401  (re-exported for the tests)

# The models here are tiny: more than one intra-op thread only adds synchronisation, and on a
# busy machine the threads' spin-waits made the suite several times slower (39 s against 7 s).
torch.set_num_threads(1)

REGISTRY = sw.default_registry()
ARCHITECTURES = REGISTRY.names()
ENCODERS = [n for n in ARCHITECTURES if "encoder" in REGISTRY.get(n).roles]
DECODERS = [n for n in ARCHITECTURES if "decoder" in REGISTRY.get(n).roles]
ROLES = [(n, r) for n in ARCHITECTURES for r in REGISTRY.get(n).roles]


def hf_config(architecture: str, role: str, **overrides):
    """A transformers config of the architecture's tiny size for ``role``."""
    import transformers

    values = {**REGISTRY.get(architecture).tiny_config, **overrides}
    if role == "decoder":
        values.update(is_decoder=True, add_cross_attention=True)
    return transformers.AutoConfig.for_model(architecture, **values)


def hf_composite(
    folder: Path,
    encoder: str = "bert",
    decoder: str = "bert",
    *,
    encoder_overrides: dict | None = None,
    decoder_overrides: dict | None = None,
    seed: int = 0,
    **top,
):
    """Save a random transformers ``EncoderDecoderModel`` to ``folder``; return the model (eval mode)."""
    from transformers import EncoderDecoderConfig, EncoderDecoderModel

    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(
        hf_config(encoder, "encoder", **(encoder_overrides or {})),
        hf_config(decoder, "decoder", **(decoder_overrides or {})),
        **{"decoder_start_token_id": 2, "pad_token_id": 0, **top},
    )
    torch.manual_seed(seed)
    model = randomize(EncoderDecoderModel(cfg), seed).eval()
    model.save_pretrained(folder)
    return model


def source_batch(vocab: int, pad: int, seed: int = 0, shape=(3, 7)):
    """Source ids with padding on two rows, and the attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[1, shape[1] - 2 :] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, pad), mask


def label_batch(vocab: int, seed: int = 1, shape=(3, 5)):
    """Labels with -100 at the end of one row, as a padded target batch has."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, vocab, shape, generator=g)
    labels[0, 3:] = -100
    return labels


@pytest.fixture
def registry() -> sw.Registry:
    return REGISTRY


def tiny(architecture: str, **overrides) -> dict:
    """The architecture's tiny config values, with overrides."""
    return {**REGISTRY.get(architecture).tiny_config, **overrides}


def build_part(architecture: str, role: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny randomized seqweave encoder or decoder of a registered architecture, in eval mode."""
    build = sw.build_encoder if role == "encoder" else sw.build_decoder
    return randomize(build(architecture, **tiny(architecture, **overrides)), seed).eval()


def pad_id(module: torch.nn.Module) -> int:
    """A token id to pad with: the config's pad token, or 0 when it has none (GPT-2)."""
    pad = getattr(module.config, "pad_token_id", None)
    return 0 if pad is None else pad


def load_part(architecture: str, role: str, folder: Path):
    """Load a single-model transformers checkpoint folder into a seqweave part through the plugin's weight map.

    Returns the module (eval mode), the checkpoint's tensors and the weight map. Fails if the
    map leaves a tensor of the checkpoint unused or needs one it lacks.
    """
    import json

    from seqweave.checkpoint.formats import read_state_dict
    from seqweave.weights import load_module_weights

    arch = REGISTRY.get(architecture)
    data = json.loads((Path(folder) / "config.json").read_text())
    cfg = arch.make_config({k: v for k, v in data.items() if k in arch.config.model_fields})
    with torch.device("meta"):
        module = arch.build_module(cfg, role)
    sd, source = read_state_dict(Path(folder))
    wmap = arch.weight_map(cfg, role)
    ours, missing, unexpected = wmap.from_hf(wmap.normalize_prefix(sd))
    assert not missing, f"{architecture} {role}: the map needs tensors the checkpoint lacks: {missing}"
    assert not unexpected, f"{architecture} {role}: checkpoint tensors no rule uses: {unexpected}"
    load_module_weights(module, ours, source=source, weight_map=wmap)
    return module.eval(), sd, wmap


class DelegatingDecoder(torch.nn.Module):
    """A decoder satisfying the protocol by hand (delegating to a built one), without declaring static-cache support."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.hidden_size = inner.hidden_size
        self.vocab_size = inner.vocab_size
        self.cross_attention_hidden_size = inner.cross_attention_hidden_size
        self.num_layers = inner.num_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        return self.inner(input_ids, attention_mask, **kwargs)


def naive_greedy(model, ids, mask, steps: int) -> torch.Tensor:
    """Greedy decoding with a full forward per step and no cache: the reference."""
    seq = torch.full((ids.shape[0], 1), model.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, attention_mask=mask, decoder_input_ids=seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    return seq


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """A BERT base model (with pooler) and a BERT LM-head model (no cross-attention), saved by transformers."""
    from transformers import BertLMHeadModel, BertModel

    root = tmp_path_factory.mktemp("singles")
    torch.manual_seed(0)
    randomize(BertModel(hf_config("bert", "encoder", hidden_size=32)), 1).save_pretrained(root / "enc")
    lm_cfg = hf_config("bert", "encoder", hidden_size=24, num_attention_heads=2)
    lm_cfg.is_decoder = True
    randomize(BertLMHeadModel(lm_cfg), 2).save_pretrained(root / "lm")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A transformers bert2bert folder with a wider encoder (enc_to_dec_proj); modules may define their own."""
    path = tmp_path_factory.mktemp("ckpt") / "hf"
    hf_composite(path, encoder_overrides={"hidden_size": 32}, decoder_overrides={"hidden_size": 24,
                                                                                 "num_attention_heads": 2})
    return path


@pytest.fixture
def copy(folder, tmp_path):
    """A fresh copy of ``folder`` for a test to damage."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/<name>.py as a module, for the test's duration (it imports generate.py from beside it)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module
