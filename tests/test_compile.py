"""torch.compile(model) on the CPU: inference, a cached decode step and training equal eager.

The models are tiny, but their language-model head (4096 x 64) is large enough for eager
CPU inference to take the oneDNN path of :class:`seqweave.fast.Linear`, which Inductor
cannot lower (``LoweringException ... mkldnn._linear_pointwise``): compiled, it must step
aside. ``fullgraph=True`` makes any graph break a failure, so none of the speed tricks
may hide from the compiler behind a fallback to eager.
"""

from __future__ import annotations

import pytest
import seqweave as sw
import torch
from seqweave.fast import Linear

pytestmark = [
    pytest.mark.slow,  # each compile takes several seconds on a small CPU
    # Inductor imports torch/utils/mkldnn.py, whose ScriptModules warn at class definition.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

VOCAB = 4096
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(decoder: str) -> sw.EncoderDecoder:
    torch.manual_seed(0)
    small = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": VOCAB}
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    enc = sw.build_encoder("bert", hidden_size=64, **small, **no_dropout)
    if decoder == "gpt2":
        dec = sw.build_decoder(
            "gpt2", n_embd=64, n_layer=1, n_head=2, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2
        )
    else:
        dec = sw.build_decoder("bert", hidden_size=64, **small, **no_dropout)
    model = sw.EncoderDecoder(encoder=enc, decoder=dec, decoder_start_token_id=1, pad_token_id=0)
    assert any(isinstance(m, Linear) and m.onednn for m in model.modules())  # eager would take oneDNN
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    ids[0, 5:] = 0
    labels = torch.randint(3, VOCAB, (2, 5), generator=g)
    labels[1, 4] = -100
    return ids, mask, labels


def test_compiled_inference_equals_eager():
    model = _model("gpt2").eval()
    ids, mask, labels = _batch()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(ids, mask, labels=labels)
        got = compiled(ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_compiled_cached_decode_step_equals_eager(static):
    """The step generation runs, compiled: one token per call against a cache, as greedy search does."""
    model = _model("gpt2").eval()
    ids, mask, labels = _batch()
    tokens = labels.clamp(min=3)

    def step(token: torch.Tensor, cache: sw.Cache, source: torch.Tensor) -> torch.Tensor:
        return model(encoder_outputs=source, attention_mask=mask, decoder_input_ids=token, cache=cache).logits

    compiled = torch.compile(step, fullgraph=True)
    with torch.no_grad():
        source = model.encoder(ids, mask).last_hidden_state
        eager_cache, compiled_cache = (sw.Cache(1, tokens.shape[1], static=static) for _ in range(2))
        for i in range(tokens.shape[1]):
            expected = step(tokens[:, i : i + 1], eager_cache, source)
            got = compiled(tokens[:, i : i + 1], compiled_cache, source)
            torch.testing.assert_close(got, expected, **TOL)
    assert len(compiled_cache) == len(eager_cache) == tokens.shape[1]


def test_compiled_training_equals_eager():
    model = _model("bert").train()
    ids, mask, labels = _batch()
    expected = model(ids, mask, labels=labels)
    expected.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = torch.compile(model, fullgraph=True)(ids, mask, labels=labels)
    got.loss.backward()
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)
    assert grads and grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], **TOL, msg=name)
