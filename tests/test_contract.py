"""The contract every registered architecture keeps, in every role it registers (timm's pattern).

Parametrised over the registry, so a plugin is tested the moment it registers: shapes,
masks, caching, the two-way weight map, a save/load round trip through the composite,
and parity with transformers wherever ``Architecture.reference`` names the class.
"""

from __future__ import annotations

import json

import pytest
import seqweave as sw
import torch
from conftest import DECODERS, ENCODERS, REGISTRY, ROLES, build_part, hf_config, load_part, pad_id, randomize

ATOL = 1e-5
REFERENCED = [(n, r) for n, r in ROLES if r in REGISTRY.get(n).reference]


def _ids(params: list[tuple[str, str]]) -> list[str]:
    return [f"{n}-{r}" for n, r in params]


def _tokens(module: torch.nn.Module, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Random ids that avoid the pad token (and the low special ids), so padding is only where we put it."""
    g = torch.Generator().manual_seed(seed)
    vocab = module.config.vocab_size
    ids = torch.randint(3, vocab - 1, shape, generator=g)
    return ids.masked_fill(ids == pad_id(module), 3)


def _source(decoder: torch.nn.Module, b: int, s: int, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, decoder.cross_attention_hidden_size, generator=g)


def _run(module: torch.nn.Module, role: str, ids: torch.Tensor, mask: torch.Tensor | None = None, **kw):
    """Encoder: last hidden state [b, t, d]; decoder: logits [b, t, vocab] attending to a random source."""
    with torch.no_grad():
        if role == "encoder":
            return module(ids, mask, **kw).last_hidden_state
        source = kw.pop("source", None)
        if source is None:
            source = _source(module, ids.shape[0], 6)
        return module(ids, mask, encoder_hidden_states=source, **kw).logits


# ----------------------------------------------------------------------------------------
# Shapes and masks


@pytest.mark.parametrize(("name", "role"), ROLES, ids=_ids(ROLES))
def test_output_shapes(name: str, role: str) -> None:
    module = build_part(name, role)
    b, t, s = 2, 5, 6
    ids = _tokens(module, (b, t), 0)
    h, d = module.layers[0].self_attn.num_heads, module.hidden_size
    with torch.no_grad():
        if role == "encoder":
            out = module(ids, output_attentions=True, output_hidden_states=True)
            assert out.last_hidden_state.shape == (b, t, d)
        else:
            out = module(
                ids,
                encoder_hidden_states=_source(module, b, s),
                output_attentions=True,
                output_hidden_states=True,
            )
            assert out.logits.shape == (b, t, module.config.vocab_size)
            assert len(out.cross_attentions) == module.num_layers
            assert all(a.shape == (b, h, t, s) for a in out.cross_attentions)
    assert len(out.hidden_states) == module.num_layers + 1
    assert all(x.shape == (b, t, d) for x in out.hidden_states)
    assert len(out.attentions) == module.num_layers
    assert all(a.shape == (b, h, t, t) for a in out.attentions)
    # every attention row is a probability distribution
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(b, h, t))


@pytest.mark.parametrize(("name", "role"), ROLES, ids=_ids(ROLES))
def test_right_padding_does_not_change_real_positions(name: str, role: str) -> None:
    module = build_part(name, role)
    ids = _tokens(module, (2, 5), 1)
    padded = torch.cat([ids, torch.full((2, 3), pad_id(module))], dim=1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    plain = _run(module, role, ids)
    with_pad = _run(module, role, padded, mask)
    torch.testing.assert_close(with_pad[:, :5], plain, atol=ATOL, rtol=0)
    # the mask is really used: the same padded ids without it change the outputs of a bidirectional encoder
    if role == "encoder" and not getattr(module, "causal", False):
        assert not torch.allclose(_run(module, role, padded)[:, :5], plain, atol=1e-3)


@pytest.mark.parametrize("name", DECODERS)
def test_source_padding_is_ignored(name: str) -> None:
    decoder = build_part(name, "decoder")
    ids = _tokens(decoder, (2, 4), 2)
    source = _source(decoder, 2, 5)
    garbage = torch.cat([source, 100 * _source(decoder, 2, 3, seed=9)], dim=1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = decoder(ids, encoder_hidden_states=source).logits
        padded = decoder(ids, encoder_hidden_states=garbage, encoder_attention_mask=mask).logits
        unmasked = decoder(ids, encoder_hidden_states=garbage).logits
    torch.testing.assert_close(padded, plain, atol=ATOL, rtol=0)
    assert not torch.allclose(unmasked, plain, atol=1e-3)  # the source really reaches the logits


CAUSAL = [(n, r) for n, r in ROLES if r == "decoder" or getattr(build_part(n, r), "causal", False)]


@pytest.mark.parametrize(("name", "role"), CAUSAL, ids=_ids(CAUSAL))
def test_causal(name: str, role: str) -> None:
    """Changing token j changes no output before j (and does change the output at j)."""
    module = build_part(name, role)
    ids = _tokens(module, (2, 6), 3)
    changed = ids.clone()
    changed[:, 3] = torch.where(ids[:, 3] == 4, 5, 4)
    a, b = _run(module, role, ids), _run(module, role, changed)
    torch.testing.assert_close(b[:, :3], a[:, :3], atol=ATOL, rtol=0)
    assert not torch.allclose(b[:, 3], a[:, 3], atol=1e-3)


@pytest.mark.parametrize(("name", "role"), ROLES, ids=_ids(ROLES))
def test_explicit_attention_path_matches_sdpa(name: str, role: str) -> None:
    """output_attentions computes attention by hand; it must match SDPA, fully masked rows included."""
    module = build_part(name, role)
    ids = _tokens(module, (2, 5), 4)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 0] = 0  # the first query of row 0 sees no key in a causal stack
    mask[1, 3:] = 0
    fast = _run(module, role, ids, mask)
    explicit = _run(module, role, ids, mask, output_attentions=True)
    torch.testing.assert_close(explicit, fast, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", DECODERS)
def test_cached_decoding_matches_full_forward(name: str) -> None:
    decoder = build_part(name, "decoder")
    ids = _tokens(decoder, (2, 6), 5)
    source = _source(decoder, 2, 4)
    full = _run(decoder, "decoder", ids, source=source)
    cache = sw.Cache(decoder.num_layers)
    steps = []
    with torch.no_grad():
        for i in range(ids.shape[1]):
            steps.append(decoder(ids[:, i : i + 1], encoder_hidden_states=source, cache=cache).logits)
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------
# Weights: the two-way map and the composite round trip


@pytest.mark.parametrize(("name", "role"), ROLES, ids=_ids(ROLES))
def test_weight_map_round_trip(name: str, role: str) -> None:
    """to_hf(from_hf(sd)) == sd exactly, and every parameter of the module has exactly one rule."""
    module = build_part(name, role)
    wmap = REGISTRY.get(name).weight_map(module.config, role)
    ours = {k: v for k, v in module.state_dict().items()}
    hf = wmap.to_hf(ours)
    back, missing, unexpected = wmap.from_hf(hf)
    assert not missing and not unexpected
    again = wmap.to_hf(back)
    assert again.keys() == hf.keys()
    for k in hf:
        assert torch.equal(again[k], hf[k]), k
    # each parameter under its own name is mapped; tied copies (a tied decoder's head) are not written twice
    params = dict(module.named_parameters())
    assert set(back) == set(params)
    for k, p in params.items():
        assert torch.equal(back[k], p), k


def _partner(name: str, role: str) -> str:
    """The other side of a composite for the round trip: the same architecture if it can play that role."""
    others = DECODERS if role == "encoder" else ENCODERS
    return name if name in others else others[0]


@pytest.mark.parametrize(("name", "role"), ROLES, ids=_ids(ROLES))
def test_save_load_round_trip(name: str, role: str, tmp_path) -> None:
    other = _partner(name, role)
    enc_name, dec_name = (name, other) if role == "encoder" else (other, name)
    encoder, decoder = build_part(enc_name, "encoder", seed=1), build_part(dec_name, "decoder", seed=2)
    model = sw.EncoderDecoder(encoder, decoder, decoder_start_token_id=3, pad_token_id=pad_id(decoder)).eval()
    model.save_pretrained(tmp_path)
    loaded = sw.EncoderDecoder.from_pretrained(tmp_path)
    assert loaded.encoder.architecture == enc_name and loaded.decoder.architecture == dec_name
    assert loaded.encoder.config == encoder.config and loaded.decoder.config == decoder.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = _tokens(encoder, (2, 5), 6)
    target = _tokens(decoder, (2, 4), 7)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, decoder_input_ids=target).logits,
            model(ids, decoder_input_ids=target).logits,
            atol=0,
            rtol=0,
        )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved[role]["model_type"] == name


# ----------------------------------------------------------------------------------------
# Parity with the transformers class the plugin names as its reference


def _hf_part(name: str, role: str, folder):
    """A tiny random transformers reference model, saved to ``folder``; loaded back into seqweave."""
    import transformers

    cls = getattr(transformers, REGISTRY.get(name).reference[role])
    torch.manual_seed(0)
    hf = randomize(cls(hf_config(name, role)), seed=3).eval()
    hf.save_pretrained(folder)
    ours, sd, wmap = load_part(name, role, folder)
    return hf, ours, sd, wmap


@pytest.mark.parametrize(("name", "role"), REFERENCED, ids=_ids(REFERENCED))
def test_parity_with_transformers(name: str, role: str, tmp_path) -> None:
    hf, ours, sd, wmap = _hf_part(name, role, tmp_path)
    # the saved file comes back exactly from our tensors
    written = wmap.to_hf(dict(ours.named_parameters()))
    expected = {k: v for k, v in wmap.normalize_prefix(sd).items() if not wmap.is_ignored(k)}
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in written)

    ids = _tokens(ours, (3, 7), 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ids = ids.masked_fill(mask == 0, pad_id(ours))
    with torch.no_grad():
        if role == "encoder":
            want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            got = ours(ids, mask).last_hidden_state
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
            return
        source = _source(ours, 3, 6)
        source_mask = torch.ones(3, 6, dtype=torch.long)
        source_mask[0, 4:] = 0
        kw = dict(encoder_hidden_states=source, encoder_attention_mask=source_mask)
        want = hf(input_ids=ids, attention_mask=mask, **kw).logits
        got = ours(ids, mask, **kw).logits
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", [n for n, r in REFERENCED if r == "decoder"])
def test_cached_decoding_matches_transformers(name: str, tmp_path) -> None:
    """Token-by-token decoding with a cache, from the pad token: position ids must follow transformers'.

    RoBERTa-style positions continue from the cached length (pads included), not from a
    recount over the whole sequence, so this differs from the full forward on purpose.
    """
    hf, ours, _, _ = _hf_part(name, "decoder", tmp_path)
    ids = _tokens(ours, (2, 5), 9)
    ids[:, 0] = pad_id(ours)
    source = _source(ours, 2, 4)
    hf_cache, cache = None, sw.Cache(ours.num_layers)
    with torch.no_grad():
        for i in range(ids.shape[1]):
            step = ids[:, i : i + 1]
            out = hf(input_ids=step, encoder_hidden_states=source, cache=hf_cache, use_cache=True)
            hf_cache = out.cache
            got = ours(step, encoder_hidden_states=source, cache=cache).logits
            torch.testing.assert_close(got, out.logits, atol=ATOL, rtol=0, msg=f"step {i}")
