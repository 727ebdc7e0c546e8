"""The contract every architecture keeps, in every role it registers, as plain check functions.

Each check takes the :class:`~seqweave.Architecture`, a role and a :class:`CheckContext`,
and raises :class:`AssertionError` with a message saying what differs, or
:class:`CheckSkipped` with the reason it does not apply. No pytest is needed: the runner
(:func:`seqweave.testing.run_checks`, ``seqweave check-plugin NAME``) and seqweave's own
test suite call the same functions.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..registry import Architecture, Registry, Role
from .helpers import build_tiny, load_hf_state_dict, pad_id, randomize, source_states, tokens

__all__ = ["CHECKS", "Check", "CheckContext", "CheckSkipped"]

#: Outputs must agree this closely (float32, tiny models).
ATOL = 1e-5


class CheckSkipped(Exception):
    """A check does not apply to this architecture and role; the message says why."""


@dataclass
class CheckContext:
    """What a check may use besides the architecture.

    Attributes:
        registry: the registry the architecture is in (a composite's other part comes from it).
        workdir: an empty folder the check may write to.
    """

    registry: Registry
    workdir: Path


@dataclass(frozen=True)
class Check:
    """One named check and the roles it applies to."""

    name: str
    func: Callable[[Architecture, Role, CheckContext], None]
    roles: tuple[Role, ...] = ("encoder", "decoder")

    @property
    def description(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]

    def __call__(self, arch: Architecture, role: Role, ctx: CheckContext) -> None:
        self.func(arch, role, ctx)


def _run(module: torch.nn.Module, role: Role, ids: torch.Tensor, mask: torch.Tensor | None = None, **kw):
    """Encoder: last hidden state [b, t, d]; decoder: logits [b, t, vocab] attending to a random source."""
    with torch.no_grad():
        if role == "encoder":
            return module(ids, mask, **kw).last_hidden_state
        source = kw.pop("source", None)
        if source is None:
            source = source_states(module, ids.shape[0], 6)
        return module(ids, mask, encoder_hidden_states=source, **kw).logits


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------
# Shapes, masks, caching


def check_protocol(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """The module satisfies the Encoder/Decoder protocol and its hidden_size is the output width."""
    from ..protocols import Decoder, Encoder

    module = build_tiny(arch, role)
    proto = Encoder if role == "encoder" else Decoder
    assert isinstance(module, proto), f"the {role} lacks attributes of seqweave.{proto.__name__}"
    assert module.hidden_size == module.config.hidden_size, (
        f"module.hidden_size {module.hidden_size} != config.hidden_size {module.config.hidden_size}"
    )
    ids = tokens(module, (1, 3), 0)
    with torch.no_grad():
        if role == "encoder":
            width = module(ids).last_hidden_state.shape[-1]
            assert width == module.hidden_size, f"output width {width}, hidden_size {module.hidden_size}"
        else:
            module(ids, encoder_hidden_states=source_states(module, 1, 2))


def check_output_shapes(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """Outputs, hidden states and attentions have the documented shapes; attention rows sum to 1."""
    module = build_tiny(arch, role)
    b, t, s = 2, 5, 6
    ids = tokens(module, (b, t), 0)
    d = module.hidden_size
    with torch.no_grad():
        if role == "encoder":
            out = module(ids, output_attentions=True, output_hidden_states=True)
            shape = tuple(out.last_hidden_state.shape)
            assert shape == (b, t, d), f"last_hidden_state {shape}, want {(b, t, d)}"
        else:
            source = source_states(module, b, s)
            out = module(ids, encoder_hidden_states=source, output_attentions=True, output_hidden_states=True)
            assert out.logits.shape == (b, t, module.config.vocab_size), f"logits {tuple(out.logits.shape)}"
            assert len(out.cross_attentions) == module.num_layers, "one cross-attention map per layer"
            assert all(a.shape[0] == b and a.shape[2:] == (t, s) for a in out.cross_attentions), "cross maps"
    n = len(out.attentions)
    assert n == getattr(module, "num_layers", n), f"{n} attention maps for {module.num_layers} layers"
    assert len(out.hidden_states) == n + 1, f"{len(out.hidden_states)} hidden states for {n} layers"
    assert all(x.shape == (b, t, d) for x in out.hidden_states), "hidden state shapes"
    assert all(a.shape[0] == b and a.shape[2:] == (t, t) for a in out.attentions), "self-attention shapes"
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), msg="attention rows must sum to 1")


def check_right_padding(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """Right padding, masked, leaves the outputs at the real positions unchanged."""
    module = build_tiny(arch, role)
    ids = tokens(module, (2, 5), 1)
    padded = torch.cat([ids, torch.full((2, 3), pad_id(module))], dim=1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    plain = _run(module, role, ids)
    _close(_run(module, role, padded, mask)[:, :5], plain, "outputs with right padding")
    # the mask is really used: the same padded ids without it change a bidirectional encoder's outputs
    if role == "encoder" and not getattr(module, "causal", False):
        unmasked = _run(module, role, padded)[:, :5]
        assert not torch.allclose(unmasked, plain, atol=1e-3), "the mask has no effect"


def check_source_padding(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """The decoder ignores masked source positions, and the source does reach the logits."""
    decoder = build_tiny(arch, role)
    ids = tokens(decoder, (2, 4), 2)
    source = source_states(decoder, 2, 5)
    garbage = torch.cat([source, 100 * source_states(decoder, 2, 3, seed=9)], dim=1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = decoder(ids, encoder_hidden_states=source).logits
        padded = decoder(ids, encoder_hidden_states=garbage, encoder_attention_mask=mask).logits
        unmasked = decoder(ids, encoder_hidden_states=garbage).logits
    _close(padded, plain, "logits with a masked source")
    assert not torch.allclose(unmasked, plain, atol=1e-3), "the source does not reach the logits"


def check_causal(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """Changing token j changes no output before j, and does change the output at j."""
    module = build_tiny(arch, role)
    if role == "encoder" and not getattr(module, "causal", False):
        raise CheckSkipped("a bidirectional encoder")
    ids = tokens(module, (2, 6), 3)
    changed = ids.clone()
    changed[:, 3] = torch.where(ids[:, 3] == 4, 5, 4)
    a, b = _run(module, role, ids), _run(module, role, changed)
    _close(b[:, :3], a[:, :3], "outputs before the changed token")
    assert not torch.allclose(b[:, 3], a[:, 3], atol=1e-3), "the changed token does not change its own output"


def check_explicit_attention(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """output_attentions (attention written out) matches the SDPA path, fully masked rows included."""
    module = build_tiny(arch, role)
    ids = tokens(module, (2, 5), 4)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 0] = 0  # the first query of row 0 sees no key in a causal stack
    mask[1, 3:] = 0
    _close(_run(module, role, ids, mask, output_attentions=True), _run(module, role, ids, mask),
           "outputs with output_attentions=True")


def check_cached_decoding(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """Decoding token by token with a cache gives the full forward's logits."""
    from ..cache import Cache

    decoder = build_tiny(arch, role)
    ids = tokens(decoder, (2, 6), 5)
    source = source_states(decoder, 2, 4)
    full = _run(decoder, role, ids, source=source)
    cache = Cache(decoder.num_layers)
    with torch.no_grad():
        steps = [
            decoder(ids[:, i : i + 1], encoder_hidden_states=source, cache=cache).logits
            for i in range(ids.shape[1])
        ]
    _close(torch.cat(steps, dim=1), full, "cached step-by-step logits")


# ----------------------------------------------------------------------------------------
# Weights


def check_weight_map_round_trip(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """to_hf(from_hf(sd)) == sd, and every parameter of the module has exactly one rule."""
    module = build_tiny(arch, role)
    wmap = arch.weight_map(module.config, role)
    params = dict(module.named_parameters())
    unmapped = sorted(set(params) - {r.ours for r in wmap.rules})
    assert not unmapped, f"parameters no rule maps: {unmapped}"
    hf = wmap.to_hf(dict(module.state_dict()))
    back, missing, unexpected = wmap.from_hf(hf)
    assert not missing and not unexpected, f"missing {[r.ours for r in missing]}, unexpected {unexpected}"
    ignored = sorted(k for k in hf if wmap.is_ignored(k))
    assert not ignored, f"ignore patterns cover tensors the map writes: {ignored}"
    again = wmap.to_hf(back)
    assert again.keys() == hf.keys(), "a second to_hf writes other names"
    for k in hf:
        assert torch.equal(again[k], hf[k]), f"{k} changes in the round trip"
    # tied copies (a tied decoder's head) are not written twice
    assert set(back) == set(params), f"mapped names differ from parameters: {sorted(set(back) ^ set(params))}"
    for k, p in params.items():
        assert torch.equal(back[k], p), f"{k} changes in the round trip"


def _partner(arch: Architecture, role: Role, registry: Registry) -> Architecture:
    """The composite's other part: the same architecture if it plays the other role, else the first one."""
    other: Role = "decoder" if role == "encoder" else "encoder"
    if other in arch.roles:
        return arch
    for name in registry.names():
        if other in registry.get(name).roles:
            return registry.get(name)
    raise CheckSkipped(f"no registered architecture can be the {other} of a composite with it")


def check_save_load_round_trip(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """A composite with this part saves and loads back with equal tensors and logits."""
    from ..composer import EncoderDecoder

    other = _partner(arch, role, ctx.registry)
    enc_arch, dec_arch = (arch, other) if role == "encoder" else (other, arch)
    encoder, decoder = build_tiny(enc_arch, "encoder", seed=1), build_tiny(dec_arch, "decoder", seed=2)
    model = EncoderDecoder(encoder, decoder, decoder_start_token_id=3, pad_token_id=pad_id(decoder)).eval()
    folder = ctx.workdir / "composite"
    model.save_pretrained(folder)
    loaded = EncoderDecoder.from_pretrained(folder, registry=ctx.registry)
    assert (loaded.encoder.architecture, loaded.decoder.architecture) == (enc_arch.name, dec_arch.name)
    assert loaded.encoder.config == encoder.config, "encoder configs differ"
    assert loaded.decoder.config == decoder.config, "decoder configs differ"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys(), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ after the round trip: {differ}"
    ids, target = tokens(encoder, (2, 5), 6), tokens(decoder, (2, 4), 7)
    with torch.no_grad():
        want = model(ids, decoder_input_ids=target).logits
        torch.testing.assert_close(loaded(ids, decoder_input_ids=target).logits, want, atol=0, rtol=0)
    saved = json.loads((folder / "config.json").read_text())
    assert saved[role]["model_type"] == arch.name, f"config.json names {saved[role].get('model_type')!r}"


# ----------------------------------------------------------------------------------------
# Parity with the transformers class the plugin names as its reference


def reference_model(arch: Architecture, role: Role, seed: int = 3) -> torch.nn.Module:
    """A tiny random instance of ``arch.reference[role]`` (a transformers class), in eval mode.

    Raises:
        CheckSkipped: no reference class is declared for the role, or transformers is not installed.
    """
    name = arch.reference.get(role)
    if not name:
        raise CheckSkipped(f"the plugin declares no reference class for {role} (Architecture.reference)")
    if importlib.util.find_spec("transformers") is None:
        raise CheckSkipped(f"transformers is not installed (reference {name})")
    import transformers

    cls = getattr(transformers, name, None)
    assert cls is not None, f"Architecture.reference names {name!r}, which transformers does not have"
    values = dict(arch.tiny_config)
    if role == "decoder":
        values.update(is_decoder=True, add_cross_attention=True)
    torch.manual_seed(0)
    return randomize(cls(cls.config_class(**values)), seed).eval()


def _reference_pair(arch: Architecture, role: Role, workdir: Path):
    """The reference model, saved with ``save_pretrained`` and loaded into ours from that file.

    Through the file, not the in-memory state dict: ``save_pretrained`` drops tied copies and
    keeps what a real checkpoint keeps, which is what the weight map must read.
    """
    from safetensors.torch import load_file

    hf = reference_model(arch, role)
    folder = workdir / "reference"
    hf.save_pretrained(folder)
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, f"expected one safetensors file from save_pretrained: {[f.name for f in files]}"
    sd = load_file(str(files[0]))
    cfg = arch.make_config(arch.tiny_config, source=f"{arch.name}.tiny_config")
    ours, wmap = load_hf_state_dict(arch, role, cfg, sd, source=str(files[0]))
    return hf, ours, wmap, sd


def check_parity(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """The reference class's weights load through the map, write back equal, and give equal outputs."""
    hf, ours, wmap, sd = _reference_pair(arch, role, ctx.workdir)
    sd = wmap.normalize_prefix(sd)
    written = wmap.to_hf(dict(ours.named_parameters()))
    expected = {k: v for k, v in sd.items() if not wmap.is_ignored(k)}
    assert written.keys() == expected.keys(), f"written names differ: {sorted(set(written) ^ set(expected))}"
    differ = [k for k in written if not torch.equal(written[k], expected[k])]
    assert not differ, f"tensors written back differ: {differ}"
    ids = tokens(ours, (3, 7), 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ids = ids.masked_fill(mask == 0, pad_id(ours))
    with torch.no_grad():
        if role == "encoder":
            want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            _close(ours(ids, mask).last_hidden_state, want, f"last_hidden_state against {type(hf).__name__}")
            return
        source = source_states(ours, 3, 6)
        source_mask = torch.ones(3, 6, dtype=torch.long)
        source_mask[0, 4:] = 0
        kw = dict(encoder_hidden_states=source, encoder_attention_mask=source_mask)
        want = hf(input_ids=ids, attention_mask=mask, **kw).logits
        _close(ours(ids, mask, **kw).logits, want, f"logits against {type(hf).__name__}")


def check_cached_parity(arch: Architecture, role: Role, ctx: CheckContext) -> None:
    """Token-by-token decoding with a cache, from the pad token, matches the reference's cached decoding."""
    hf, ours, _, _ = _reference_pair(arch, role, ctx.workdir)
    ids = tokens(ours, (2, 5), 9)
    ids[:, 0] = pad_id(ours)
    source = source_states(ours, 2, 4)
    from ..cache import Cache

    hf_cache, cache = None, Cache(ours.num_layers)
    with torch.no_grad():
        for i in range(ids.shape[1]):
            step = ids[:, i : i + 1]
            out = hf(input_ids=step, encoder_hidden_states=source, cache=hf_cache, use_cache=True)
            hf_cache = out.cache
            got = ours(step, encoder_hidden_states=source, cache=cache).logits
            _close(got, out.logits, f"step {i} against {type(hf).__name__}")


#: Every check, in the order the runner prints them.
CHECKS: tuple[Check, ...] = (
    Check("protocol", check_protocol),
    Check("output_shapes", check_output_shapes),
    Check("right_padding", check_right_padding),
    Check("source_padding", check_source_padding, ("decoder",)),
    Check("causal", check_causal),
    Check("explicit_attention", check_explicit_attention),
    Check("cached_decoding", check_cached_decoding, ("decoder",)),
    Check("weight_map_round_trip", check_weight_map_round_trip),
    Check("save_load_round_trip", check_save_load_round_trip),
    Check("parity", check_parity),
    Check("cached_parity", check_cached_parity, ("decoder",)),
)
