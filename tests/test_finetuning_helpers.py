"""Fine-tuning helpers under transformers' names: gradient checkpointing, resizing, accessors, counts."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_composite, label_batch, source_batch
from transformers import EncoderDecoderModel

import seqweave as sw
from seqweave import EncoderDecoder as EncoderDecoderModelSW


@pytest.fixture(scope="module", params=[("bert", "bert"), ("bert", "gpt2"), ("roberta", "bert")])
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    theirs = hf_composite(folder, *request.param)
    return folder, theirs


def _grads(model, ids, mask, labels):
    model.zero_grad()
    torch.manual_seed(0)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kwargs", [{}, {"gradient_checkpointing_kwargs": {"use_reentrant": True}},
                                    {"every_n_layers": 2}, {"offload": True}])
def test_gradient_checkpointing_gives_the_same_gradients(pair, kwargs):
    model = EncoderDecoderModelSW.from_pretrained(pair[0]).train()  # dropout on: the RNG state is replayed
    ids, mask = source_batch(model.encoder.config.vocab_size, 0)
    labels = label_batch(model.decoder.vocab_size)
    plain = _grads(model, ids, mask, labels)
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable(**kwargs)
    assert model.is_gradient_checkpointing
    calls = []
    hook = torch.utils.checkpoint.checkpoint
    try:
        def spy(*a, **k):
            calls.append(k)
            return hook(*a, **k)

        torch.utils.checkpoint.checkpoint = spy
        import seqweave.transformer as st

        st.checkpoint, original = spy, st.checkpoint
        model.gradient_checkpointing_enable(**kwargs)  # rebinds to the spy
        checkpointed = _grads(model, ids, mask, labels)
    finally:
        torch.utils.checkpoint.checkpoint = hook
        st.checkpoint = original
    layers = model.encoder.num_layers + model.decoder.num_layers
    every = kwargs.get("every_n_layers", 1)
    assert len(calls) == sum(-(-n // every) for n in (model.encoder.num_layers, model.decoder.num_layers)) > 0
    assert all(c["use_reentrant"] is kwargs.get("gradient_checkpointing_kwargs", {}).get("use_reentrant", False)
               for c in calls), calls
    assert layers
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_gradient_checkpointing_is_off_in_eval_and_generation(pair):
    model = EncoderDecoderModelSW.from_pretrained(pair[0])
    model.gradient_checkpointing_enable()
    ids, mask = source_batch(model.encoder.config.vocab_size, 0)
    with torch.no_grad():
        before = model.generate(ids, mask, max_new_tokens=4)
    model.gradient_checkpointing_disable()
    with torch.no_grad():
        assert torch.equal(model.generate(ids, mask, max_new_tokens=4), before)
    with pytest.raises(sw.ConfigError, match="every_n_layers"):
        model.gradient_checkpointing_enable(every_n_layers=0)


def test_accessors_and_counts_match_transformers(pair):
    folder, theirs = pair
    ours = EncoderDecoderModelSW.from_pretrained(folder)
    assert ours.get_encoder() is ours.encoder and ours.get_decoder() is ours.decoder
    assert torch.equal(ours.get_input_embeddings().weight, theirs.get_input_embeddings().weight)
    torch.testing.assert_close(ours.get_output_embeddings().weight, theirs.get_output_embeddings().weight)
    assert ours.num_parameters() == theirs.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == theirs.num_parameters(exclude_embeddings=True)
    ours.encoder.requires_grad_(False)
    theirs.encoder.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == theirs.num_parameters(only_trainable=True)
    theirs.encoder.requires_grad_(True)
    assert ours.device == theirs.device and ours.dtype == theirs.dtype == torch.float32
    assert EncoderDecoderModelSW.from_pretrained(folder, dtype=torch.bfloat16).dtype == torch.bfloat16
    table = torch.nn.Embedding(*ours.get_input_embeddings().weight.shape)
    ours.set_input_embeddings(table)
    assert ours.encoder.embeddings.tokens is table


def _tied(decoder) -> bool:
    return decoder.head.proj.weight is decoder.embeddings.tokens.weight


@pytest.mark.parametrize("mean_resizing", [True, False])
def test_part_resize_matches_transformers(pair, mean_resizing):
    folder, theirs = pair
    theirs = EncoderDecoderModel.from_pretrained(folder).eval()
    ours = EncoderDecoderModelSW.from_pretrained(folder)
    old = ours.decoder.vocab_size
    tied = _tied(ours.decoder)
    for role in ("encoder", "decoder"):
        getattr(theirs, role).resize_token_embeddings(old + 5, mean_resizing=mean_resizing)
        getattr(ours, role).resize_token_embeddings(old + 5, mean_resizing=mean_resizing)
    assert ours.decoder.vocab_size == ours.decoder.config.vocab_size == old + 5
    assert ours.encoder.config.vocab_size == old + 5 == theirs.config.decoder.vocab_size
    assert _tied(ours.decoder) == tied
    assert ours.num_parameters() == theirs.num_parameters()
    mine = ours.weight_map().to_hf(ours.state_dict())
    ref = theirs.state_dict()
    for name, t in mine.items():
        assert t.shape == ref[name].shape, name
        if t.shape[:1] == (old + 5,):  # kept rows equal; new rows drawn as transformers draws them
            torch.testing.assert_close(t[:old], ref[name][:old], rtol=0, atol=0, msg=name)
            if mean_resizing:
                torch.testing.assert_close(t[old:], ref[name][old:], rtol=0, atol=1e-4, msg=name)
            elif t.dim() == 2:
                assert 0.005 < t[old:].std() < 0.06, name
    # the result computes what transformers' resized model computes, on the kept and the new tokens
    ours.load_state_dict(ours.weight_map().from_hf(ref)[0], strict=False)
    ids, mask = source_batch(old + 5, 0)
    ids[0, 0] = old + 4
    labels = label_batch(old + 5)
    labels[1, 1] = old + 3
    with torch.no_grad():
        theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 2, 0
        torch.testing.assert_close(ours(ids, mask, labels=labels).logits,
                                   theirs(input_ids=ids, attention_mask=mask, labels=labels).logits,
                                   rtol=0, atol=1e-5)


def test_resize_save_load_round_trip(pair, tmp_path):
    ours = EncoderDecoderModelSW.from_pretrained(pair[0])
    old = ours.decoder.vocab_size
    tied = _tied(ours.decoder)
    ours.resize_token_embeddings(old + 3, pad_to_multiple_of=8)
    n = -(-(old + 3) // 8) * 8
    assert ours.decoder.vocab_size == n and ours.get_output_embeddings().weight.shape[0] == n
    same_vocab = ours.encoder.config.vocab_size == n
    assert same_vocab == (pair[1].config.encoder.vocab_size == old)
    assert _tied(ours.decoder) == tied
    ours.save_pretrained(tmp_path)
    again = EncoderDecoderModelSW.from_pretrained(tmp_path)
    assert again.decoder.vocab_size == n
    theirs = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ids, mask = source_batch(min(n, again.encoder.config.vocab_size), 0)
    labels = label_batch(n)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels).logits
        torch.testing.assert_close(again(ids, mask, labels=labels).logits, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.eval()(ids, mask, labels=labels).logits, want, rtol=0, atol=1e-5)


def test_composite_resize_keeps_tie_encoder_decoder(tmp_path):
    hf_composite(tmp_path, "bert", "bert", tie_encoder_decoder=True)
    ours = EncoderDecoderModelSW.from_pretrained(tmp_path)
    assert ours.encoder.embeddings.tokens.weight is ours.decoder.embeddings.tokens.weight
    ours.resize_token_embeddings(ours.decoder.vocab_size + 2)
    assert ours.encoder.embeddings.tokens.weight is ours.decoder.embeddings.tokens.weight
    assert _tied(ours.decoder)
    assert ours.encoder.config.vocab_size == ours.decoder.config.vocab_size == ours.decoder.vocab_size


def test_resize_shrinks_and_refuses_nonsense(pair):
    ours = EncoderDecoderModelSW.from_pretrained(pair[0])
    # GPT-2's tiny config has bos/eos 98: ids the decoder never reads are carried, not checked (generation
    # checks the ids it uses), so a smaller vocabulary is fine; a pad id the embedding uses is checked.
    ours.decoder.resize_token_embeddings(50)
    assert ours.decoder.vocab_size == 50 and ours.get_output_embeddings().bias is None or \
        ours.get_output_embeddings().bias.shape == (50,)
    assert ours.decoder.resize_token_embeddings() is ours.decoder.embeddings.tokens
    for bad in (0, -3, 2.5):
        with pytest.raises(sw.ConfigError, match="new_num_tokens"):
            ours.decoder.resize_token_embeddings(bad)
    with pytest.raises(sw.ConfigError, match="pad_to_multiple_of"):
        ours.decoder.resize_token_embeddings(60, pad_to_multiple_of=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_placement_and_checkpointing(pair):
    folder = pair[0]
    cpu = EncoderDecoderModelSW.from_pretrained(folder)
    ids, mask = source_batch(cpu.encoder.config.vocab_size, 0)
    labels = label_batch(cpu.decoder.vocab_size)
    for kw in ({"device_map": "auto"}, {"device_map": "cuda:0"}, {"device_map": {"": 0}}):
        model = EncoderDecoderModelSW.from_pretrained(folder, **kw)
        assert model.device == torch.device("cuda", 0) or model.device.type == "cuda"
        with torch.no_grad():
            got = model(ids.cuda(), mask.cuda(), labels=labels.cuda()).logits.cpu()
            torch.testing.assert_close(got, cpu(ids, mask, labels=labels).logits, rtol=1e-4, atol=1e-4)
    half = EncoderDecoderModelSW.from_pretrained(folder, device_map="cuda", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cuda"
    model = EncoderDecoderModelSW.from_pretrained(folder, device_map="auto").train()
    batch = (ids.cuda(), mask.cuda(), labels.cuda())
    plain = _grads(model, *batch)
    model.gradient_checkpointing_enable()
    checkpointed = _grads(model, *batch)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_reentrant_checkpointing_with_frozen_embeddings_needs_input_grads(pair):
    model = EncoderDecoderModelSW.from_pretrained(pair[0]).train()
    ids, mask = source_batch(model.encoder.config.vocab_size, 0)
    labels = label_batch(model.decoder.vocab_size)
    for part in (model.encoder, model.decoder):
        part.embeddings.requires_grad_(False)
    plain = _grads(model, ids, mask, labels)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    checkpointed = _grads(model, ids, mask, labels)
    assert plain.keys() == checkpointed.keys() and any(".layers.0." in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)
    model.disable_input_require_grads()
    assert not model._input_grad_hooks
