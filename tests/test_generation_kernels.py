"""The speed tricks of seqweave.fast must not change results: block-wise top-k/argmax, oneDNN linears."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seqweave import fast, generation
from seqweave.fast import ONEDNN_LINEAR, Linear


@pytest.mark.parametrize(
    ("rows", "size", "k"),
    [(1, 4 * 50257, 8), (3, 2 * 30522, 6), (2, 256 * 64, 4), (2, 256 * 64 + 17, 4), (4, 100, 3)],
)
def test_blockwise_topk_equals_torch_topk(rows, size, k):
    g = torch.Generator().manual_seed(size)
    scores = torch.randn(rows, size, generator=g)
    scores[0, : size // 2] = -float("inf")  # banned tokens, as processors make them
    scores[-1, -1] = 50.0  # the winner sits in the partial last block
    values, indices = fast.topk(scores, k)
    expected = torch.topk(scores, k)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)


@pytest.mark.parametrize("size", [50257, 256 * 64, 99, 30522])
def test_blockwise_argmax_equals_torch_argmax(size):
    g = torch.Generator().manual_seed(size)
    for trial in range(30):
        scores = torch.randn(1, size, generator=g)
        if trial % 3 == 0:
            scores[0, -1] = 9.0  # in the partial last block
        if trial % 4 == 0:
            scores[0, size // 3] = scores[0, size // 2] = 9.5  # a tie: the first one wins
        if trial % 5 == 0:
            scores[0, -2] = float("nan")  # NaN counts as the largest
        assert torch.equal(fast.argmax(scores), scores.argmax(dim=-1)), trial
    batch = torch.randn(3, size, generator=g)
    assert torch.equal(fast.argmax(batch), batch.argmax(dim=-1))


@pytest.mark.parametrize("where", ["inside", "boundary"])
def test_blockwise_topk_gives_torch_order_for_ties(where):
    """Equal scores (common in bfloat16) come back in torch.topk's order, not the blocks' order.

    Beam search's token choice depends on that order, so anything else makes beams part
    from transformers' (it did, on bfloat16 models on the CPU).
    """
    scores = torch.zeros(2, 256 * 64)
    scores[:, 1000:1010] = 1.0  # ten equal values over one block
    scores[:, 9000] = 1.0  # and one more in another block
    k = 4 if where == "inside" else 11  # "boundary": the k-th and (k+1)-th scores are equal
    if where == "boundary":
        scores[:, 5000:5010] = 2.0
    values, indices = fast.topk(scores, k)
    expected = torch.topk(scores, k)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)


def test_blockwise_topk_matches_torch_on_bfloat16_log_probs():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):  # bfloat16 logits upcast, as beam search scores them: many exact ties
        logits = (torch.randn(4, 50257, generator=g) * 3).to(torch.bfloat16).float()
        scores = (logits.log_softmax(-1).view(1, -1)) if trial % 2 else logits.log_softmax(-1)[:1]
        values, indices = fast.topk(scores.contiguous(), 8)
        expected = torch.topk(scores, 8)
        assert torch.equal(values, expected.values), trial
        assert torch.equal(indices, expected.indices), trial


needs_onednn = pytest.mark.skipif(not ONEDNN_LINEAR, reason="this PyTorch build has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 768), (4, 1, 768), (2, 5, 768)])
def test_onednn_linear_agrees_with_f_linear(shape, dtype):
    torch.manual_seed(0)
    layer = Linear(768, 1024).to(dtype)
    assert layer.onednn
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        got = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@needs_onednn
def test_linear_trains_through_f_linear():
    layer = Linear(768, 1024)
    x = torch.randn(2, 768, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))  # the autograd path is the plain one
    y.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_small_linears_stay_on_f_linear():
    layer = Linear(64, 192)
    assert not layer.onednn
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_generation_reexports_the_block_searches():
    assert generation.topk is fast.topk and generation.argmax is fast.argmax


@needs_onednn
def test_tricks_step_aside_while_compiling(monkeypatch):
    """Under torch.compile the plain code runs: F.linear (Inductor cannot lower oneDNN's), module(...)."""
    seen = []

    class Seen(Linear):
        def __call__(self, *args, **kwargs):
            seen.append(1)
            return super().__call__(*args, **kwargs)

    layer = Seen(768, 1024)
    x = torch.randn(1, 1, 768)
    with torch.no_grad():
        fast.call(layer, x)
        assert not seen  # eager inference: forward directly
        monkeypatch.setattr(fast, "compiling", lambda: True)
        assert torch.equal(fast.call(layer, x), F.linear(x, layer.weight, layer.bias))
        assert seen  # through nn.Module.__call__, and F.linear rather than oneDNN


def test_a_torch_without_onednn_linear_gets_f_linear(monkeypatch):
    monkeypatch.setattr(fast, "ONEDNN_LINEAR", False)  # what the import-time guard finds on such a build
    layer = Linear(768, 1024)
    assert not layer.onednn
    x = torch.randn(2, 768)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@needs_onednn
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_a_traced_linear_records_f_linear():
    layer = Linear(768, 1024)
    with torch.no_grad():
        traced = torch.jit.trace(layer, torch.randn(1, 768))
    assert "mkldnn" not in str(traced.graph) and "linear" in str(traced.graph)
