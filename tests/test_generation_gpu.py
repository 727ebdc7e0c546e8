"""generate() on CUDA: the decode step captured in a CUDA graph gives the same tokens.

Skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs these on a GPU machine.
"""

from __future__ import annotations

import copy

import pytest
import seqweave as sw
import torch
from seqweave import generation
from seqweave.generation import step as step_module
from seqweave.generation.step import kept_graphs
from test_generation import (  # noqa: F401  (pair is a fixture)
    MAX_NEW,
    SAMPLE_CASES,
    Pair,
    _resolve,
    assert_same,
    pair,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = {
    "greedy": {},
    "processors": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 3},
    "beam3": {"num_beams": 3},
    "beam4_return2": {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.7},
    "new_processors": {"bad_words_ids": "model", "min_length": 4, "forced_bos_token_id": "model",
                       "forced_eos_token_id": "model", "max_new_tokens": None, "max_length": 8},
}


@pytest.fixture(scope="module")
def cuda_pair(pair):  # noqa: F811
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: parity needs it
    pair.hf.to("cuda")
    pair.sw.to("cuda")
    yield Pair(pair.hf, pair.sw, pair.ids.cuda(), pair.mask.cuda(), pair.eos, pair.greedy)
    pair.hf.to("cpu")
    pair.sw.to("cpu")


@pytest.fixture(autouse=True)
def fresh_graphs():
    generation.clear_graphs()
    yield
    generation.clear_graphs()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cuda_graph_matches_transformers_on_cuda(cuda_pair, case):
    p = cuda_pair
    kwargs = _resolve(p, CASES[case])
    ours = p.sw.generate(p.ids, p.mask, **kwargs)  # cuda_graph defaults to True on CUDA
    (graph,) = kept_graphs(p.sw)
    if ours.shape[1] > 2:  # the prompt runs eagerly, every later step replays the graph
        assert graph.graph is not None and graph.cuda_graph
    with torch.no_grad():
        theirs = p.hf.generate(input_ids=p.ids, attention_mask=p.mask, **kwargs)
    assert ours.device.type == "cuda"
    assert_same(ours.cpu(), theirs.cpu())


@pytest.mark.parametrize("case", ["greedy", "beam3"])
def test_a_later_call_replays_the_graph_captured_by_the_first(cuda_pair, case):
    """Other sources in the same bucket (fewer rows, shorter): no new capture, transformers' tokens."""
    p = cuda_pair
    kwargs = _resolve(p, CASES[case])
    p.sw.generate(p.ids, p.mask, **kwargs)
    (graph,) = kept_graphs(p.sw)
    captured, replays = graph.graph, graph.replays
    for rows, length in ((p.ids.shape[0], p.ids.shape[1]), (3, 5), (3, 8)):  # 3 and 4 sources: one bucket
        ids, mask = p.ids[-rows:, :length], p.mask[-rows:, :length]
        ours = p.sw.generate(ids, mask, **kwargs)
        with torch.no_grad():
            theirs = p.hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        assert_same(ours.cpu(), theirs.cpu())
    assert kept_graphs(p.sw) == [graph] and graph.graph is captured and graph.replays > replays


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cuda_graph_equals_the_same_static_step_without_a_graph(cuda_pair, case):
    p = cuda_pair
    kwargs = _resolve(p, CASES[case])
    graphed = p.sw.generate(p.ids, p.mask, cuda_graph=True, **kwargs)
    eager = p.sw.generate(p.ids, p.mask, cuda_graph=False, static_cache=True, **kwargs)
    assert_same(graphed, eager)


def test_cuda_matches_cpu(cuda_pair, pair):  # noqa: F811
    kwargs = _resolve(cuda_pair, {"num_beams": 3})
    on_gpu = cuda_pair.sw.generate(cuda_pair.ids, cuda_pair.mask, **kwargs).cpu()
    on_cpu = generation.generate(cuda_pair.sw.to("cpu"), pair.ids, pair.mask, **kwargs)
    cuda_pair.sw.to("cuda")
    assert_same(on_gpu, on_cpu)


def test_streaming_and_sampling_on_cuda(cuda_pair):
    p = cuda_pair
    kwargs = _resolve(p, {})
    full = p.sw.generate(p.ids, p.mask, **kwargs)
    columns = list(p.sw.generate_stream(p.ids, p.mask, **kwargs))
    assert torch.equal(torch.stack(columns, dim=1), full[:, 1:])
    g = torch.Generator(device="cuda")
    a = p.sw.generate(p.ids, p.mask, do_sample=True, generator=g.manual_seed(3), **kwargs)
    b = p.sw.generate(p.ids, p.mask, do_sample=True, generator=g.manual_seed(3), **kwargs)
    assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["plain", "warpers", "return2"])
def test_sampling_in_a_cuda_graph_matches_transformers_with_the_same_seed(cuda_pair, case):
    """The graph samples inside its step from noise drawn before each replay: transformers' draws."""
    p = cuda_pair
    kwargs = _resolve(p, SAMPLE_CASES[case])
    torch.manual_seed(11)  # transformers draws from the global CUDA generator
    with torch.no_grad():
        theirs = p.hf.generate(input_ids=p.ids, attention_mask=p.mask, **kwargs)
    ours = p.sw.generate(p.ids, p.mask, generator=torch.Generator("cuda").manual_seed(11), **kwargs)
    (graph,) = kept_graphs(p.sw)
    assert graph.bucket.kind == ("logits" if "repetition_penalty" in kwargs else "sample")
    assert_same(ours.cpu(), theirs.cpu())
    eager = p.sw.generate(p.ids, p.mask, generator=torch.Generator("cuda").manual_seed(11), cuda_graph=False,
                          static_cache=True, **kwargs)
    assert_same(eager.cpu(), theirs.cpu())


@pytest.mark.parametrize("case", ["beam3", "beam4_return2", "processors_beams"])
def test_beam_bookkeeping_in_the_graph_equals_it_outside(cuda_pair, case, monkeypatch):
    """The "beam" bucket's step divides as CUDA divides by a Python number (a float32 reciprocal): the
    sequences and their scores are bit for bit those of beam_search after each replay."""
    p = cuda_pair
    kwargs = _resolve(p, {**CASES, "processors_beams": {"num_beams": 3, "no_repeat_ngram_size": 2,
                                                        "length_penalty": 0.7}}[case])
    inside = p.sw.generate_with_scores(p.ids, p.mask, **kwargs)
    assert [g.bucket.kind for g in kept_graphs(p.sw)] == ["beam"]
    monkeypatch.setattr(step_module, "BEAMS_IN_GRAPH", False)
    outside = p.sw.generate_with_scores(p.ids, p.mask, **kwargs)
    assert torch.equal(inside.sequences, outside.sequences) and torch.equal(inside.scores, outside.scores)


@pytest.mark.parametrize("part", ["_prefill", "_step"])
def test_a_step_that_cannot_be_recorded_runs_eagerly_with_a_warning(cuda_pair, part, monkeypatch):
    """A part that reads the device (here an .item() added to it) makes recording fail: a warning, the same tokens."""
    p = cuda_pair
    kwargs = _resolve(p, CASES["beam3"])
    expected = p.sw.generate(p.ids, p.mask, **kwargs)
    generation.clear_graphs()
    original = getattr(step_module.DecodeGraph, part)

    def reads_the_device(self):
        out = original(self)
        out.sum().item()  # not allowed while a stream is being recorded
        return out

    monkeypatch.setattr(step_module.DecodeGraph, part, reads_the_device)
    with pytest.warns(UserWarning, match="cannot be recorded in a CUDA graph"):
        got = p.sw.generate(p.ids, p.mask, **kwargs)
    assert_same(got.cpu(), expected.cpu())
    again = p.sw.generate(p.ids, p.mask, **kwargs)  # the same graph, eagerly, without a new attempt
    assert_same(again.cpu(), expected.cpu())


def test_bfloat16_runs_on_cuda(cuda_pair):
    # a copy: converting the shared model to bfloat16 and back would round its weights, and the
    # float32 parity tests after this one (same module-scoped pair) would compare rounded weights
    model = copy.deepcopy(cuda_pair.sw).to(torch.bfloat16)
    out = model.generate(cuda_pair.ids, cuda_pair.mask, max_new_tokens=MAX_NEW, num_beams=2)
    assert out.shape[0] == cuda_pair.ids.shape[0] and out.shape[1] <= 1 + MAX_NEW


def test_torch_compile_on_cuda():
    """torch.compile(model) on CUDA: no CPU-only op (oneDNN, host reads) inside the compiled region."""
    from test_compile import TOL, _batch, _model

    torch._dynamo.reset()
    model = _model("gpt2").eval().cuda()
    ids, mask, labels = (t.cuda() for t in _batch())
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(ids, mask, labels=labels)
        got = compiled(ids, mask, labels=labels)
        torch.testing.assert_close(got.logits, expected.logits, **TOL)
        # the decode step of a static cache, as CUDA-graph generation runs it
        source = model.encoder(ids, mask).last_hidden_state
        caches = [sw.Cache(1, labels.shape[1], static=True, device="cuda") for _ in range(2)]

        def step(token: torch.Tensor, cache: sw.Cache) -> torch.Tensor:
            return model(encoder_outputs=source, attention_mask=mask, decoder_input_ids=token, cache=cache).logits

        compiled_step = torch.compile(step, fullgraph=True)
        tokens = labels.clamp(min=3)
        for i in range(tokens.shape[1]):
            token = tokens[:, i : i + 1]
            torch.testing.assert_close(compiled_step(token, caches[1]), step(token, caches[0]), **TOL)
    torch._dynamo.reset()


@pytest.mark.parametrize("beams", [1, 3])
def test_prefix_and_output_scores_with_a_cuda_graph(cuda_pair, beams):
    """A decoder prefix (a multi-token first step before the graph) and per-step scores (with the
    lagged stop check, a discarded last step must not be recorded) equal transformers' on CUDA."""
    p = cuda_pair
    kwargs = {**_resolve(p, {"num_beams": beams}), "return_dict_in_generate": True, "output_scores": True,
              "output_logits": True}
    prefix = p.greedy[:, :3].cuda()
    ours = p.sw.generate(p.ids, p.mask, decoder_input_ids=prefix, **kwargs)
    with torch.no_grad():
        theirs = p.hf.generate(input_ids=p.ids, attention_mask=p.mask, decoder_input_ids=prefix, **kwargs)
    assert_same(ours.sequences.cpu(), theirs.sequences.cpu())
    assert len(ours.scores) == len(theirs.scores) and len(ours.logits) == len(theirs.logits)
    for a, b in zip((*ours.scores, *ours.logits), (*theirs.scores, *theirs.logits), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
