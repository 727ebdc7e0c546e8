"""The key/value cache: incremental decoding equals a full forward pass, buffers are written in place."""

from __future__ import annotations

import copy

import pytest
import seqweave as sw
import torch
from conftest import DECODERS, ENCODERS, hf_composite, source_batch
from seqweave.cache import DynamicCache, StaticCache

PAIRS = [(e, d) for e in ENCODERS for d in DECODERS]


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{e}2{d}" for e, d in PAIRS])
def model(request, tmp_path_factory) -> sw.EncoderDecoder:
    encoder, decoder = request.param
    folder = tmp_path_factory.mktemp(f"{encoder}2{decoder}")
    hf_composite(folder, encoder, decoder)
    return sw.EncoderDecoder.from_pretrained(folder)


def _targets(model: sw.EncoderDecoder, rows: int, t: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(3, model.decoder.vocab_size, (rows, t), generator=g)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@torch.no_grad()
def test_incremental_logits_equal_full_forward(model, static):
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    targets = _targets(model, ids.shape[0])
    full = model(ids, mask, decoder_input_ids=targets).logits
    encoded = model.encoder(ids, mask)
    cache = sw.Cache(model.decoder.num_layers, capacity=targets.shape[1], static=static)
    steps = []
    for i in range(targets.shape[1]):
        out = model(
            encoder_outputs=encoded,
            attention_mask=mask,
            decoder_input_ids=targets[:, i : i + 1],
            cache=cache,
            use_cache=True,
        )
        assert out.cache is cache
        steps.append(out.logits)
    assert len(cache) == targets.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_incremental_in_chunks_equals_full_forward(model):
    """A prompt of several tokens, then one at a time: the causal mask over the cached part is right."""
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    targets = _targets(model, ids.shape[0])
    full = model(ids, mask, decoder_input_ids=targets).logits
    out = model(ids, mask, decoder_input_ids=targets[:, :4], use_cache=True)
    rest = model(ids, mask, decoder_input_ids=targets[:, 4:], cache=out.cache)
    torch.testing.assert_close(torch.cat([out.logits, rest.logits], dim=1), full, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_rows_sharing_a_source_equal_repeated_sources(model):
    """Decoder rows b*g against b sources = the sources repeated g times, bit for bit.

    Each row gets its own copy of the source's keys/values (made once, at the first step),
    so cross-attention runs on transformers' shapes: a shared copy read by g queries in one
    call rounded differently, which changed bfloat16 beam search's tokens.
    """
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    g = 3
    targets = _targets(model, ids.shape[0] * g)
    shared = model(ids, mask, decoder_input_ids=targets, use_cache=True)
    repeated = model(ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0), decoder_input_ids=targets)
    assert torch.equal(shared.logits, repeated.logits)
    for layer in shared.cache.layers:
        assert layer.cross[0].shape[0] == ids.shape[0] * g
        assert layer.k.shape[0] == ids.shape[0] * g


@torch.no_grad()
def test_rows_sharing_a_source_report_per_row_attention(model):
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    targets = _targets(model, ids.shape[0] * 2)
    shared = model(ids, mask, decoder_input_ids=targets, output_attentions=True)
    repeated = model(
        ids.repeat_interleave(2, 0),
        mask.repeat_interleave(2, 0),
        decoder_input_ids=targets,
        output_attentions=True,
    )
    for a, b in zip(shared.cross_attentions, repeated.cross_attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_buffers_are_allocated_once_and_written_in_place(model):
    ids, mask = source_batch(model.decoder.vocab_size, 0)
    targets = _targets(model, ids.shape[0])
    encoded = model.encoder(ids, mask)
    cache = sw.Cache(model.decoder.num_layers, capacity=targets.shape[1])
    model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=targets[:, :1], cache=cache)
    pointers = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
    assert all(layer.k.shape[2] == targets.shape[1] for layer in cache.layers)
    for i in range(1, targets.shape[1]):
        model(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=targets[:, i : i + 1], cache=cache
        )
    assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == pointers
    cache.reorder(torch.tensor([2, 0, 1]))
    assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == pointers


def test_reorder_permutes_rows_in_place():
    cache = sw.Cache(1, capacity=4)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 2, 5).contiguous()
    cache.layers[0].append(k, -k)
    cache.advance(2)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.layers[0].k[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    assert cache.layers[0].v[:, 0, 0, 0].tolist() == [-2.0, -2.0, -0.0]


def _filled(static: bool, rows: int = 5, layers: int = 3, n: int = 3, capacity: int = 6, heads=None):
    """A cache whose layer i, row j, position p holds 100 i + 10 j + p (values: minus that)."""
    cache = sw.Cache(layers, capacity=capacity, static=static)
    for p in range(n):
        cache.begin(1)
        for i, layer in enumerate(cache.layers):
            h = (heads or [2] * layers)[i]
            k = (100.0 * i + 10 * torch.arange(rows) + p).view(rows, 1, 1, 1).expand(rows, h, 1, 4).contiguous()
            layer.append(k, -k)
        cache.advance(1)
    return cache


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_every_layers_keys_and_values_are_views_of_one_buffer(static):
    cache = _filled(static)
    joint = cache._joint
    assert joint.shape == (3, 2, 5, 2, 6, 4)
    for i, layer in enumerate(cache.layers):
        assert layer._joint is joint and layer.k.is_contiguous() and layer.v.is_contiguous()
        assert layer.k.data_ptr() == joint[i, 0].data_ptr() and layer.v.data_ptr() == joint[i, 1].data_ptr()
    twin = copy.deepcopy(cache)  # a copy keeps its layers views of its own buffer
    assert twin.layers[1].k.data_ptr() == twin._joint[1, 0].data_ptr() != cache.layers[1].k.data_ptr()


@pytest.mark.parametrize("joint", [False, True], ids=["per-layer (CPU)", "joint (CUDA)"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_reorder_gives_each_row_its_parents_keys_and_values(static, joint, monkeypatch):
    """Both ways of reordering (the joint gathers CUDA uses, the CPU's per-layer ones) move the same data.

    Rows past the index (a decode graph's padded rows) and positions past the length stay.
    """
    from seqweave import cache as cache_module

    monkeypatch.setattr(cache_module, "REORDER_LAYERS", 2)  # 3 layers: a gather of 2 and one of 1
    monkeypatch.setattr(cache_module, "_JOINT_REORDER_ON_CPU", joint)
    cache = _filled(static)
    before = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
    index = torch.tensor([1, 1, 0, 3])  # 4 of the 5 rows: row 4 is padding
    cache.reorder(index)
    for (k, v), layer in zip(before, cache.layers, strict=True):
        expected_k, expected_v = k.clone(), v.clone()
        expected_k[:4, :, :3] = k[index, :, :3]
        expected_v[:4, :, :3] = v[index, :, :3]
        assert torch.equal(layer.k, expected_k) and torch.equal(layer.v, expected_v)
    identity = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
    cache.reorder(torch.arange(5))
    assert all(torch.equal(layer.k, k) and torch.equal(layer.v, v) for (k, v), layer in zip(identity, cache.layers))


def test_a_growing_cache_moves_every_layer_to_one_new_buffer():
    cache = _filled(False, n=3, capacity=3)
    old = cache._joint
    _ = [layer.append(torch.ones(5, 2, 1, 4), torch.ones(5, 2, 1, 4)) for layer in cache.layers]
    cache.advance(1)
    assert cache._joint is not old and cache._joint.shape[4] == 6
    assert all(layer._joint is cache._joint for layer in cache.layers)
    assert cache.layers[2].k[3, 0, :4, 0].tolist() == [230.0, 231.0, 232.0, 1.0]


@pytest.mark.parametrize("joint", [False, True], ids=["per-layer (CPU)", "joint (CUDA)"])
def test_a_layer_of_another_shape_gets_buffers_of_its_own(joint, monkeypatch):
    from seqweave import cache as cache_module

    monkeypatch.setattr(cache_module, "_JOINT_REORDER_ON_CPU", joint)
    cache = _filled(False, heads=[2, 3, 2])  # layer 1 has 3 heads
    assert cache.layers[1]._joint is None and cache.layers[2]._joint is cache._joint
    cache.reorder(torch.tensor([4, 3, 2, 1, 0]))
    assert cache.layers[1].k[:, 2, 1, 0].tolist() == [141.0, 131.0, 121.0, 111.0, 101.0]
    assert cache.layers[2].v[:, 0, 2, 0].tolist() == [-242.0, -232.0, -222.0, -212.0, -202.0]


def test_dynamic_cache_grows_past_its_capacity():
    cache = sw.Cache(1, capacity=2)
    for i in range(5):
        k, _ = cache.layers[0].append(torch.full((1, 1, 1, 2), float(i)), torch.zeros(1, 1, 1, 2))
        cache.advance(1)
    assert k[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_static_cache_refuses_to_overflow():
    cache = sw.Cache(1, capacity=2, static=True)
    cache.begin(2)
    cache.advance(2)
    with pytest.raises(sw.ConfigError, match="holds 2 positions"):
        cache.begin(1)
    with pytest.raises(sw.ConfigError, match="capacity"):
        sw.Cache(1, static=True)


def test_a_cache_of_another_depth_is_refused():
    import seqweave as sw

    dec = sw.build_decoder("bert", hidden_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=40).eval()
    with pytest.raises(sw.ConfigError, match="the cache has 1 layers but the decoder has 2"):
        dec(torch.tensor([[1, 2]]), cache=sw.Cache(1))


def test_cache_makes_the_dynamic_or_the_static_kind():
    dynamic, static = sw.Cache(2, 4), sw.Cache(2, 4, static=True)
    assert type(dynamic) is DynamicCache and not dynamic.static
    assert type(static) is StaticCache and static.static
    assert isinstance(dynamic, sw.Cache) and isinstance(static, sw.Cache)
    assert type(StaticCache(1, 3)) is StaticCache
    with pytest.raises(sw.ConfigError, match="StaticCache got static=False"):
        StaticCache(1, 3, static=False)


def test_begin_returns_the_position_in_the_form_each_kind_reads():
    dynamic, static = sw.Cache(1, 4), sw.Cache(1, 4, static=True)
    for cache in (dynamic, static):
        cache.begin(2)
        cache.advance(2)
    assert dynamic.begin(1) == 2
    position = static.begin(1)
    assert isinstance(position, torch.Tensor) and int(position) == 2
    assert static.write_index.tolist() == [2]
    inf = float("inf")
    mask = static.self_attention_mask(None)  # query at position 2 sees slots 0..2 of 4: additive, no padding
    assert mask.shape == (1, 1, 1, 4) and mask.flatten().tolist() == [0.0, 0.0, 0.0, -inf]
    assert static.self_attention_mask(None, torch.bfloat16).dtype == torch.bfloat16
    padded = static.self_attention_mask(torch.tensor([[0, 1, 1]]))  # with padding: boolean
    assert padded.flatten().tolist() == [False, True, True, False]


def test_a_replay_advances_only_the_host_position():
    """After a CUDA-graph replay (which ran the recorded device-side advance) the host catches up."""
    cache = sw.Cache(1, 4, static=True)
    cache.begin(1)
    cache.advance(1)
    device_position = cache.begin(1)
    cache.advance_after_replay()
    assert len(cache) == 2 and int(device_position) == 1  # the replay would have moved the device one


def test_source_state_changes_only_through_methods():
    cache = sw.Cache(1)
    assert not cache.has_source and cache.source_mask is None
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    cache.set_source(mask)
    assert cache.has_source and cache.source_mask is mask
    with pytest.raises(AttributeError):
        cache.has_source = False
    k = torch.zeros(2, 1, 5, 3)
    cache.layers[0].store_cross(k, k + 1)
    assert cache.layers[0].cross[0] is k


def test_a_cache_can_be_copied():
    cache = sw.Cache(1, 4, static=True)
    cache.begin(1)
    cache.layers[0].append(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    cache.advance(1)
    twin = copy.deepcopy(cache)
    assert type(twin) is StaticCache and len(twin) == 1 and torch.equal(twin.layers[0].k, cache.layers[0].k)
    assert twin.layers[0]._owner is twin
