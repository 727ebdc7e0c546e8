"""The key/value cache: incremental decoding equals a full forward pass, buffers are written in place."""

from __future__ import annotations

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
    import copy

    cache = sw.Cache(1, 4, static=True)
    cache.begin(1)
    cache.layers[0].append(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    cache.advance(1)
    twin = copy.deepcopy(cache)
    assert type(twin) is StaticCache and len(twin) == 1 and torch.equal(twin.layers[0].k, cache.layers[0].k)
    assert twin.layers[0]._owner is twin
