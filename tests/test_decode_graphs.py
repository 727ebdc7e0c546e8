"""Decode graphs kept across generate calls: buckets, reuse, padding, invalidation, release.

The static path (``static_cache=True``) runs the same DecodeGraph objects on the CPU as
CUDA replays, without the capture: every test here checks the logic that decides which
graph a call uses and what padding does to its tokens, against transformers' tokens or the
dynamic path's. ``tests/test_generation_gpu.py`` checks the capture and replay on CUDA.
"""

from __future__ import annotations

import pytest
import seqweave as sw
import torch
from conftest import hf_composite
from seqweave import generation
from seqweave.generation import step as graphs
from torch.utils._python_dispatch import TorchDispatchMode

MAX_NEW = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert2gpt2")
    hf = hf_composite(folder, "bert", "gpt2", seed=1)
    ours = sw.EncoderDecoder.from_pretrained(folder).eval()
    ours.hf = hf  # the reference, loaded from the same folder
    return ours


@pytest.fixture(autouse=True)
def fresh():
    graphs.clear_graphs()
    yield
    graphs.clear_graphs()


def batch(model, rows: int, length: int, seed: int = 0):
    """Random source ids [rows, length]; from the second row on, every other row is padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.decoder.vocab_size, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1::2, max(1, length - 3) :] = 0
    return ids, mask


def reference(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model.hf.generate(input_ids=ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize(
    ("sources", "max_length", "source_length", "expected"),
    [
        (1, 9, 9, (1, 64, 64)),
        (3, 64, 64, (4, 64, 64)),
        (5, 65, 128, (8, 128, 128)),
        (64, 129, 130, (64, 192, 192)),
    ],
)
def test_buckets_round_sources_to_powers_of_two_and_lengths_to_64(sources, max_length, source_length, expected):
    bucket = graphs.Bucket.of("logits", sources, 3, max_length, source_length)
    assert (bucket.sources, bucket.capacity, bucket.source_length) == expected
    assert bucket.rows == 3 * bucket.sources


def test_a_source_with_no_padding_gets_a_bucket_without_a_mask(model):
    """No padding and a length of 64: no mask in cross-attention, the kernel transformers runs too."""
    ids = batch(model, 2, 64)[0]
    for mask in (None, torch.ones_like(ids)):
        ours = model.generate(ids, mask, static_cache=True, max_new_tokens=4)
        assert torch.equal(ours, model.generate(ids, max_new_tokens=4))
    (graph,) = graphs.kept_graphs(model)
    assert not graph.bucket.masked and graph.source_mask is None and graph.cache.source_bias is None
    padded = model.generate(ids[:, :60], static_cache=True, max_new_tokens=4)  # 60 is padded to 64: masked
    assert torch.equal(padded, model.generate(ids[:, :60], max_new_tokens=4))
    assert [g.bucket.masked for g in graphs.kept_graphs(model)] == [False, True]


def test_a_bucket_that_encodes_pads_ids_only_as_far_as_the_encoder_allows():
    of = graphs.Bucket.of
    assert of("logits", 1, 1, 9, 9, encodes=True, source_padding=(1, 512)).source_length == 64
    assert of("logits", 1, 1, 9, 9, encodes=True, source_padding=(1, 512)).source_pad == 1
    assert of("logits", 1, 1, 9, 9, encodes=True, source_padding=(0, 20)).source_length == 20  # the table's end
    assert of("logits", 1, 1, 9, 9, encodes=True).source_length == 9  # an encoder that does not say: exact
    assert not of("logits", 1, 1, 9, 9, padding=False, encodes=True).masked


def test_a_later_call_in_the_same_bucket_reuses_the_graph_and_its_buffers(model):
    ids, mask = batch(model, 3, 7)
    first = model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW)
    (graph,) = graphs.kept_graphs(model)
    buffers = [layer.k.data_ptr() for layer in graph.cache.layers]
    assert graph.bucket == graphs.Bucket("greedy", 4, 1, 64, 64, 1, masked=True, encodes=True) and not graph.busy
    # other shapes, same bucket: 4 sources instead of 3, a longer source, more new tokens
    ids2, mask2 = batch(model, 4, 11, seed=5)
    second = model.generate(ids2, mask2, static_cache=True, max_new_tokens=MAX_NEW + 4)
    assert graphs.kept_graphs(model) == [graph]
    assert [layer.k.data_ptr() for layer in graph.cache.layers] == buffers
    torch.testing.assert_close(first, reference(model, ids, mask, max_new_tokens=MAX_NEW), rtol=0, atol=0)
    torch.testing.assert_close(second, reference(model, ids2, mask2, max_new_tokens=MAX_NEW + 4), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "kind", "per_source"),
    [
        ({}, "greedy", 1),
        ({"repetition_penalty": 1.3}, "greedy", 1),  # processors run inside the step too
        ({"no_repeat_ngram_size": 2, "min_new_tokens": 3, "bad_words_ids": [[5], [7, 9]]}, "greedy", 1),
        ({"num_beams": 3}, "beam", 3),  # beam search's bookkeeping runs in the step too
        ({"num_beams": 2, "do_sample": True, "top_k": 0}, "logits", 2),  # beam sampling: outside it
        ({"do_sample": True, "num_return_sequences": 2, "top_k": 0}, "sample", 2),
        ({"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9}, "sample", 1),
        ({"do_sample": True, "top_k": 0, "repetition_penalty": 1.2}, "sample", 1),
    ],
)
def test_the_bucket_follows_the_search(model, kwargs, kind, per_source):
    ids, mask = batch(model, 2, 7)
    generator = torch.Generator().manual_seed(3) if kwargs.get("do_sample") else None
    ours = model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW, generator=generator, **kwargs)
    (graph,) = graphs.kept_graphs(model)
    assert (graph.bucket.kind, graph.bucket.per_source, graph.bucket.sources) == (kind, per_source, 2)
    if generator is not None:
        torch.manual_seed(3)
    assert torch.equal(ours, reference(model, ids, mask, max_new_tokens=MAX_NEW, **kwargs))


def test_the_bucket_keeps_the_processors_by_value():
    from seqweave.generation.processors import logits_processors

    def key(**options):
        settings = sw.GenerationSettings(max_length=12, eos_token_id=3, pad_token_id=0, decoder_start_token_id=1,
                                         **options)
        return graphs.processors_key(logits_processors(settings, prompt_length=1, device=torch.device("cpu")))

    words = {"bad_words_ids": [[5], [7, 9]], "repetition_penalty": 1.2, "min_length": 4}
    assert key(**words) == key(**words) and hash(key(**words)) == hash(key(**words))  # new tensors, same key
    assert key(**words) != key(**{**words, "bad_words_ids": [[5], [7, 8]]})  # a tensor's values count
    assert key() == ()
    assert graphs.processors_key([lambda tokens, scores: scores]) is None  # unknown: picked outside the graph


def test_padded_rows_and_positions_do_not_change_the_tokens(model):
    """Every batch size from 1 to 5 (padded to 1, 2, 4, 4, 8 sources) and several lengths, greedy and beams."""
    for rows, length in ((1, 3), (2, 9), (3, 7), (4, 30), (5, 12)):
        ids, mask = batch(model, rows, length, seed=rows)
        for kwargs in ({}, {"num_beams": 2}):
            ours = model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW, **kwargs)
            dynamic = model.generate(ids, mask, max_new_tokens=MAX_NEW, **kwargs)
            assert torch.equal(ours, dynamic), (rows, length, kwargs)


def test_the_encoder_runs_in_the_first_step_only_when_generate_gets_ids_alone(model, monkeypatch):
    ids, mask = batch(model, 3, 7)
    expected = reference(model, ids, mask, max_new_tokens=MAX_NEW)
    states = model.encode(ids, mask).states
    runs = [
        ({}, True),
        ({"encoder_outputs": states}, False),
        ({"token_type_ids": torch.zeros_like(ids)}, False),
    ]
    for kwargs, encodes in runs:
        graphs.clear_graphs()
        source = {} if "encoder_outputs" in kwargs else {"input_ids": ids}
        ours = model.generate(attention_mask=mask, static_cache=True, max_new_tokens=MAX_NEW, **source, **kwargs)
        assert torch.equal(ours, expected), kwargs
        (graph,) = graphs.kept_graphs(model)
        assert graph.bucket.encodes is encodes
    monkeypatch.setattr(graphs, "ENCODE_IN_GRAPH", False)
    graphs.clear_graphs()
    assert torch.equal(model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW), expected)
    assert not graphs.kept_graphs(model)[0].bucket.encodes


def test_inputs_are_checked_on_every_call_of_a_graph_that_encodes(model, monkeypatch):
    """A replay runs no Python, so generate checks the inputs before it, not model.encode inside it."""
    from seqweave.outputs import Encoded

    ids, mask = batch(model, 2, 5)
    model.generate(ids, mask, static_cache=True, max_new_tokens=2)
    (graph,) = graphs.kept_graphs(model)
    assert model.enc_to_dec_proj is None

    class Replaying:  # encodes as the recorded first step does: no check runs
        def encode(self, ids, mask):
            return Encoded(model.encoder(ids.clamp(max=model.encoder.embeddings.tokens.num_embeddings - 1),
                                         mask.clamp(max=1) if mask is not None else None).last_hidden_state,
                           mask, None)

    monkeypatch.setattr(graph, "model", Replaying())
    with pytest.raises(sw.ConfigError, match="input_ids holds ids outside"):
        model.generate(ids + 1000, mask, static_cache=True, max_new_tokens=2)
    with pytest.raises(sw.ConfigError, match="attention_mask must hold 1 for tokens"):
        model.generate(ids, mask * 2, static_cache=True, max_new_tokens=2)
    assert not graphs.kept_graphs(model)[0].busy


def test_kept_graphs_live_and_die_with_the_model_and_are_never_copied(model, tmp_path):
    import copy
    import gc
    import pickle
    import weakref

    ids, mask = batch(model, 2, 5)
    model.generate(ids, mask, static_cache=True, max_new_tokens=2)
    assert graphs.kept_graphs(model)
    twin = copy.deepcopy(model)
    assert graphs.kept_graphs(twin) == []
    assert torch.equal(twin.generate(ids, mask, static_cache=True, max_new_tokens=2),
                       model.generate(ids, mask, static_cache=True, max_new_tokens=2))
    store = vars(twin)["_seqweave_decode_graphs"]  # how torch.save(model) would pickle it: empty
    assert store.graphs and not pickle.loads(pickle.dumps(store)).graphs
    alive = weakref.ref(twin)
    del twin, store
    gc.collect()
    assert alive() is None  # the graphs (which refer to the model) do not keep it alive


def test_the_least_recently_used_bucket_goes_first(model, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    ids, mask = batch(model, 1, 5)
    for beams in (1, 2, 3, 2):
        model.generate(ids, mask, static_cache=True, max_new_tokens=4, num_beams=beams)
    kept = [(g.bucket.kind, g.bucket.per_source) for g in graphs.kept_graphs(model)]
    assert kept == [("beam", 3), ("beam", 2)]


def test_moved_weights_drop_the_kept_graphs(model):
    ids, mask = batch(model, 2, 5)
    expected = model.generate(ids, mask, static_cache=True, max_new_tokens=4)
    (graph,) = graphs.kept_graphs(model)
    model.double()
    try:
        got = model.generate(ids, mask, static_cache=True, max_new_tokens=4)
        (other,) = graphs.kept_graphs(model)
        assert other is not graph
        assert other.cache.layers[0].k.dtype == torch.float64
        assert got.shape == expected.shape
    finally:
        model.float()


def test_in_place_weight_updates_keep_the_graph_and_are_read(model):
    ids, mask = batch(model, 2, 5)
    model.generate(ids, mask, static_cache=True, max_new_tokens=4)
    (graph,) = graphs.kept_graphs(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.mul_(1.5)
        changed = model.generate(ids, mask, static_cache=True, max_new_tokens=4)
        assert graphs.kept_graphs(model) == [graph]
        assert torch.equal(changed, model.generate(ids, mask, max_new_tokens=4))
    finally:
        model.load_state_dict(saved)


def test_interleaved_streams_get_their_own_graphs(model):
    ids, mask = batch(model, 2, 6)
    expected = model.generate(ids, mask, max_new_tokens=MAX_NEW)
    a = model.generate_stream(ids, mask, static_cache=True, max_new_tokens=MAX_NEW)
    b = model.generate_stream(ids, mask, static_cache=True, max_new_tokens=MAX_NEW)
    columns_a, columns_b = [], []
    for x, y in zip(a, b, strict=False):
        columns_a.append(x.clone())
        columns_b.append(y.clone())
    (kept,) = graphs.kept_graphs(model)  # a's; b had one of its own
    assert not kept.busy
    for columns in (columns_a, columns_b):
        assert torch.equal(torch.stack(columns, 1), expected[:, 1 : 1 + len(columns)])


def test_threads_generating_with_one_model_get_the_tokens_of_one_thread(model):
    from concurrent.futures import ThreadPoolExecutor

    ids, mask = batch(model, 2, 6)
    expected = model.generate(ids, mask, max_new_tokens=MAX_NEW)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW),
                             range(8)))
    assert all(torch.equal(out, expected) for out in outs)
    assert all(not g.busy for g in graphs.kept_graphs(model))


def test_an_abandoned_or_failing_call_releases_its_graph(model):
    ids, mask = batch(model, 2, 6)
    stream = model.generate_stream(ids, mask, static_cache=True, max_new_tokens=MAX_NEW)
    next(stream)
    (graph,) = graphs.kept_graphs(model)
    assert graph.busy
    stream.close()
    assert not graph.busy

    def boom(tokens):
        raise RuntimeError("streamer failed")

    with pytest.raises(RuntimeError, match="streamer failed"):
        model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW, streamer=boom)
    assert not graph.busy
    with pytest.raises(sw.ConfigError):
        model.generate_stream(ids, mask, static_cache=True, num_beams=2)
    assert all(not g.busy for g in graphs.kept_graphs(model))


def test_an_output_object_keeps_a_cache_no_later_call_overwrites(model):
    ids, mask = batch(model, 2, 6)
    out = model.generate(ids, mask, static_cache=True, max_new_tokens=4, return_dict_in_generate=True)
    assert graphs.kept_graphs(model) == []
    keys = out.cache.layers[0].k.clone()
    model.generate(ids.flip(0), mask.flip(0), static_cache=True, max_new_tokens=4)
    assert torch.equal(out.cache.layers[0].k, keys)


def test_a_source_with_no_token_attends_to_nothing_through_the_cache(model):
    """A fully padded source row: its cross-attention output is zero, as with the boolean mask."""
    ids, mask = batch(model, 3, 6)
    mask[1] = 0
    for kwargs in ({}, {"num_beams": 2}):
        dynamic = model.generate(ids, mask, max_new_tokens=MAX_NEW, **kwargs)
        static = model.generate(ids, mask, static_cache=True, max_new_tokens=MAX_NEW, **kwargs)
        assert torch.equal(static, dynamic)
        assert torch.equal(dynamic, reference(model, ids, mask, max_new_tokens=MAX_NEW, **kwargs))


def test_source_bias_is_the_boolean_mask_made_safe():
    cache = sw.Cache(1, 4, static=True)
    k = torch.randn(2, 2, 3, 4)
    cache.layers[0].store_cross(k, k + 1)
    mask = torch.tensor([[True, False, True], [False, False, False]])[:, None, None, :]
    cache.set_source(mask)
    inf = float("inf")
    assert cache.source_bias.flatten(1).tolist() == [[0.0, -inf, 0.0], [0.0, 0.0, 0.0]]
    assert cache.source_mask is mask
    values = cache.layers[0].cross[1]
    assert torch.equal(values[0], k[0] + 1) and not values[1].any()  # the empty source's values are zero
    # a later source of the same shape is copied into the same buffers
    before = (cache.layers[0].cross[0].data_ptr(), cache.source_bias.data_ptr())
    cache.reset()
    cache.layers[0].store_cross(k * 2, k)
    cache.set_source(torch.ones_like(mask))
    assert (cache.layers[0].cross[0].data_ptr(), cache.source_bias.data_ptr()) == before
    assert not cache.source_bias.any() and torch.equal(cache.layers[0].cross[0], k * 2)


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_decode_step_runs_no_mask_fixups(model):
    """One static decode step: no per-layer check for rows with no key, no bool-to-float mask conversion."""
    ids, mask = batch(model, 2, 6)
    source = model.encode(ids, mask)
    graph = graphs.checkout(model, model.decoder, graphs.Bucket.of("logits", 2, 1, 16, 6), torch.device("cpu"))
    step = graphs.GraphStep(model.decoder, source.states, source.mask, graph, rows=2)
    with torch.no_grad():
        step(torch.zeros(2, 1, dtype=torch.long))
        with _Ops() as ops:
            step(torch.ones(2, 1, dtype=torch.long))
    graphs.release(graph)
    layers = model.decoder.num_layers
    assert ops.names.count("_scaled_dot_product_flash_attention_for_cpu") + ops.names.count(
        "_scaled_dot_product_attention_math") + ops.names.count("scaled_dot_product_attention") >= 2 * layers
    for fixup in ("any", "logical_not", "bitwise_not", "bitwise_or", "logical_or"):
        assert ops.names.count(fixup) == 0, (fixup, ops.names)


def test_compile_needs_the_static_path(model):
    ids, mask = batch(model, 1, 4)
    with pytest.raises(sw.ConfigError, match="compile=True"):
        model.generate(ids, mask, compile=True, static_cache=False)
    for bad in ("yes", "reduce-overhead", "max-autotune", 1):
        with pytest.raises(sw.ConfigError, match="compile must be True, False or a torch.compile mode"):
            model.generate(ids, mask, compile=bad)


@pytest.mark.slow
def test_a_compiled_step_gives_the_same_tokens(model):
    """compile=True on the CPU (inductor's C++ backend): the compiled static step, greedy (with processors), sampling, beams."""
    torch._dynamo.reset()
    ids, mask = batch(model, 2, 6)
    try:
        for kwargs in ({}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 3},
                       {"do_sample": True, "top_k": 4, "temperature": 0.8}, {"num_beams": 2}):
            generator = torch.Generator().manual_seed(5)
            compiled = model.generate(ids, mask, compile=True, max_new_tokens=MAX_NEW, generator=generator, **kwargs)
            torch.manual_seed(5)
            assert torch.equal(compiled, reference(model, ids, mask, max_new_tokens=MAX_NEW, **kwargs))
            assert all(g.compiled for g in graphs.kept_graphs(model))
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kwargs", [{}, {"num_beams": 3}, {"repetition_penalty": 1.3}], ids=["greedy", "beam3", "processor"])
def test_a_compiled_step_in_a_cuda_graph_matches_transformers(model, kwargs):
    """compile=True on CUDA: inductor's kernels for the step, captured in our graph (float32: same tokens)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    ids, mask = (t.cuda() for t in batch(model, 3, 7))
    model.cuda()
    model.hf.cuda()
    torch._dynamo.reset()
    try:
        ours = model.generate(ids, mask, compile=True, max_new_tokens=MAX_NEW, **kwargs)
        again = model.generate(ids.flip(0), mask.flip(0), compile=True, max_new_tokens=MAX_NEW, **kwargs)
        (graph,) = graphs.kept_graphs(model)
        assert graph.compiled and graph.graph is not None and graph.replays > 0
        assert torch.equal(ours, reference(model, ids, mask, max_new_tokens=MAX_NEW, **kwargs))
        assert torch.equal(again, reference(model, ids.flip(0), mask.flip(0), max_new_tokens=MAX_NEW, **kwargs))
    finally:
        torch._dynamo.reset()
        graphs.clear_graphs()
        model.cpu()
        model.hf.cpu()


def test_generation_exports_the_graph_api():
    for name in ("Bucket", "DecodeGraph", "GraphStep", "clear_graphs", "MAX_GRAPHS", "BUCKET_MULTIPLE"):
        assert hasattr(generation, name)
