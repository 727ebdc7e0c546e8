"""Fully masked attention rows: finite gradients whatever the mask (issue 10, item 7).

With GPT-2's convention ``pad == decoder_start == eos``, the decoder mask built from ``labels``
masks position 0, so that query row has no key it may see. cuDNN's SDPA backward returns NaN
for such a row (measured on an H200: every parameter's gradient NaN while the loss stays
finite). seqweave never hands a kernel such a row: it attends to every key and its output is
zeroed, which is the forward value SDPA and transformers give it.

The CPU tests check the logic: no boolean mask with an empty row reaches
``scaled_dot_product_attention``, forward values still equal transformers', gradients are finite.
The CUDA test trains in bf16 under each SDPA backend (skipped without a GPU).
"""

from __future__ import annotations

import pytest
import seqweave as sw
import torch
import torch.nn.functional as F
from conftest import hf_composite
from seqweave import layers

START = PAD = EOS = 7  # GPT-2's convention: one id for all three


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert2gpt2")
    hf = hf_composite(folder, "bert", "gpt2", decoder_start_token_id=START, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_overrides={"bos_token_id": EOS, "eos_token_id": EOS})
    return hf, sw.EncoderDecoder.from_pretrained(folder).eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 90, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    labels = torch.randint(10, 90, (3, 5), generator=g)
    labels[1, 3:] = -100  # shift_tokens_right turns -100 into the pad id: masked, like position 0
    return ids, mask, labels


def test_position_zero_is_masked_in_this_setup(pair):
    # the premise: the decoder mask built from labels masks the start token (pad == start)
    _, model = pair
    _, _, labels = _batch()
    dec = sw.composer.shift_tokens_right(labels, model.pad_token_id, model.decoder_start_token_id)
    assert dec[:, 0].eq(PAD).all()


def test_no_kernel_sees_a_row_without_keys(pair, monkeypatch):
    _, model = pair
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, mask=None, *args, **kwargs):
        if mask is not None and mask.dtype == torch.bool:
            seen.append(bool(mask.any(dim=-1).all()))
        return real(q, k, v, mask, *args, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    ids, mask, labels = _batch()
    model(ids, mask, labels=labels)
    assert seen and all(seen), "a boolean mask with an empty row reached scaled_dot_product_attention"


def test_forward_matches_transformers_and_gradients_are_finite(pair):
    hf, model = pair
    ids, mask, labels = _batch()
    ours = model(ids, mask, labels=labels)  # eval mode: no dropout, so that values compare
    ours.loss.backward()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ours.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, ref.loss, rtol=1e-5, atol=1e-6)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_an_empty_row_gives_zero_output_and_zero_gradient():
    attn = layers.Attention(8, 2).train()
    q = torch.randn(2, 2, 3, 4, requires_grad=True)
    k = torch.randn(2, 2, 5, 4, requires_grad=True)
    v = torch.randn(2, 2, 5, 4, requires_grad=True)
    keep = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    keep[0, 0, 1] = False  # query 1 of row 0 sees nothing
    keep[1, 0, :, 3:] = False
    out, _ = attn._attend(q, k, v, keep, False, False)
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    ref = F.scaled_dot_product_attention(q, k, v, keep.masked_fill(~keep.any(-1, keepdim=True), True))
    live = keep.any(-1).squeeze(1)  # [b, t]
    torch.testing.assert_close(out[live[:, None].expand(-1, 2, -1)], ref[live[:, None].expand(-1, 2, -1)])
    out.sum().backward()
    assert torch.equal(q.grad[0, :, 1], torch.zeros_like(q.grad[0, :, 1]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    # the explicit path (output_attentions) agrees, weights of the empty row included
    out2, weights = attn._attend(q, k, v, keep, False, True)
    torch.testing.assert_close(out2, out)
    assert torch.equal(weights[0, :, 1], torch.zeros_like(weights[0, :, 1]))


def _backends():
    from torch.nn.attention import SDPBackend

    return {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["math", "efficient", "cudnn"])
def test_bf16_training_gradients_are_finite_on_every_sdpa_backend(pair, backend):
    from torch.nn.attention import sdpa_kernel

    _, model = pair
    model = model.to("cuda").train()
    ids, mask, labels = (t.cuda() for t in _batch())
    try:
        with sdpa_kernel(_backends()[backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, mask, labels=labels)
        out.loss.backward()
    except RuntimeError as e:
        if "No available kernel" in str(e):
            pytest.skip(f"this GPU/torch has no {backend} SDPA kernel for these inputs")
        raise
    finally:
        model.to("cpu")
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    try:
        assert grads and all(torch.isfinite(g).all() for g in grads), f"NaN/inf gradients under {backend}"
    finally:
        model.zero_grad()
