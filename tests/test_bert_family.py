"""The BERT family's options and RoBERTa's differences from BERT, against transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import build_part, hf_config, load_part, randomize
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

ATOL = 1e-5


@pytest.mark.parametrize("past", [0, 1, 5])
def test_position_ids_follow_transformers(past: int) -> None:
    """Counted from pad + 1 over non-pad tokens, continuing from the cached length; pads get position pad."""
    decoder = build_part("roberta", "decoder")
    pad = decoder.config.pad_token_id
    g = torch.Generator().manual_seed(past)
    ids = torch.randint(0, 6, (4, 7), generator=g)  # many pads (id 1) at random places
    assert (ids == pad).any()
    want = RobertaEmbeddings.create_position_ids_from_input_ids(ids, pad, past)
    assert torch.equal(decoder.embeddings.position_ids(ids, past), want)


LM_CLASS = {"bert": "BertLMHeadModel", "roberta": "RobertaForCausalLM"}
OPTIONS = [{"hidden_act": "relu"}, {"hidden_act": "gelu_new"}, {"tie_word_embeddings": False}]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name", sorted(LM_CLASS))
def test_decoder_option_parity(name: str, opts: dict, tmp_path) -> None:
    """BERT's head transform uses hidden_act, RoBERTa's exact GELU; an untied head has its own weights."""
    torch.manual_seed(0)
    cls = getattr(transformers, LM_CLASS[name])
    hf = randomize(cls(hf_config(name, "decoder", **opts)), seed=5).eval()
    hf.save_pretrained(tmp_path)
    ours, _, _ = load_part(name, "decoder", tmp_path)
    assert (ours.head.proj.weight is ours.embeddings.tokens.weight) == opts.get("tie_word_embeddings", True)
    pad = ours.config.pad_token_id
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 98, (2, 6), generator=g)
    ids[1, 4:] = pad
    mask = (ids != pad).long()
    source = torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, encoder_hidden_states=source).logits
        got = ours(ids, mask, encoder_hidden_states=source).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_roberta_pad_position_row_is_zero_and_untrained() -> None:
    """RoBERTa's position table has padding_idx=pad in transformers: that row is 0 and gets no gradient."""
    import seqweave as sw
    from conftest import tiny

    encoder = sw.build_encoder("roberta", **tiny("roberta"))
    table = encoder.embeddings.positions.weight
    pad = encoder.config.pad_token_id
    assert torch.equal(table[pad], torch.zeros_like(table[pad]))
    ids = torch.tensor([[5, 6, 7, pad, pad]])
    out = encoder(ids, (ids != pad).long()).last_hidden_state
    # a random projection: a plain sum of LayerNorm outputs has no gradient at all
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.equal(table.grad[pad], torch.zeros_like(table[pad]))
    assert table.grad[pad + 1].abs().sum() > 0
