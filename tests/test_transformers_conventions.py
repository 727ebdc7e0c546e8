"""transformers' calling conventions: forward's arguments, ModelOutput behaviour, model.config, Trainer (issue 9).

Every comparison is against transformers' ``EncoderDecoderModel`` on the same weights, loaded by
both sides from one folder that transformers saved.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import hf_composite, label_batch, source_batch

import seqweave as sw
from seqweave.outputs import DecoderOutput, EncoderOutput, Seq2SeqOutput

VOCAB = Path(__file__).resolve().parents[1] / "examples" / "tokenizers" / "tiny-wordpiece" / "vocab.txt"
TEXTS = ["hello world", "this is some text for the model", "it was"]
SUMMARIES = ["hello", "some text for it"]
TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """transformers' and our BERT2BERT on the same weights (vocabulary of the tiny WordPiece tokenizer)."""
    folder = tmp_path_factory.mktemp("bert2bert")
    theirs = hf_composite(folder, "bert", "bert", encoder_overrides={"vocab_size": 99},
                          decoder_overrides={"vocab_size": 99})
    return theirs, sw.EncoderDecoder.from_pretrained(folder).eval(), folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(VOCAB.parent)
    assert len(tok) == 87 and tok.unk_token_id not in tok("hello world")["input_ids"]
    return tok


def _labels(tokenizer, texts=SUMMARIES, rows=3):
    ids = tokenizer((texts * rows)[:rows], return_tensors="pt", padding=True).input_ids
    return ids.masked_fill(ids == tokenizer.pad_token_id, -100)


# ---------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("types", ["tokenizer", "nonzero"])
def test_tokenizer_output_whole_equals_transformers(pair, tokenizer, types):
    theirs, ours, _ = pair
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert "token_type_ids" in batch
    if types == "nonzero":  # a second segment: BERT's token-type embeddings must be used
        batch["token_type_ids"][:, 3:] = 1
    labels = _labels(tokenizer)
    with torch.no_grad():
        ref = theirs(**batch, labels=labels)
        out = ours(**batch, labels=labels)
        base = ours(batch["input_ids"], batch["attention_mask"], labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    torch.testing.assert_close(out.encoder_last_hidden_state, ref.encoder_last_hidden_state, atol=TOL, rtol=0)
    # The token types matter exactly when they are not all zero.
    assert torch.equal(out.logits, base.logits) == (types == "tokenizer")


def test_decoder_token_type_ids_and_routing(pair):
    theirs, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    dec_types = torch.zeros_like(labels)
    dec_types[:, 2:] = 1
    with torch.no_grad():
        ref = theirs(ids, mask, labels=labels, decoder_token_type_ids=dec_types)
        out = ours(ids, mask, labels=labels, decoder_token_type_ids=dec_types)
        plain = ours(ids, mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
    assert not torch.equal(out.logits, plain.logits)


def test_unknown_keywords_are_ignored_with_one_log_line(pair, caplog):
    _, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="seqweave"):
        plain = ours(ids, mask, labels=labels)
        for _ in range(2):
            out = ours(ids, mask, labels=labels, some_flag_xyz=1, decoder_other_flag_xyz=2)
    lines = [r.getMessage() for r in caplog.records if "some_flag_xyz" in r.getMessage()]
    assert len(lines) == 1 and "decoder_other_flag_xyz" in lines[0]
    assert torch.equal(out.logits, plain.logits)


def test_used_keywords_we_lack_are_refused(pair):
    _, ours, _ = pair
    ids, mask = source_batch(99, 0)
    with pytest.raises(sw.ConfigError, match="decoder_position_ids"):
        ours(ids, mask, labels=label_batch(99), decoder_position_ids=torch.zeros_like(ids))


def test_gpt2_embeds_token_types_with_its_token_table(tmp_path):
    theirs = hf_composite(tmp_path, "gpt2", "gpt2", pad_token_id=0)
    ours = sw.EncoderDecoder.from_pretrained(tmp_path).eval()
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    dec_types = torch.ones_like(labels)
    for types in (torch.zeros_like(ids), torch.randint(0, 99, ids.shape, generator=torch.Generator().manual_seed(3))):
        with torch.no_grad():
            ref = theirs(ids, mask, labels=labels, token_type_ids=types, decoder_token_type_ids=dec_types)
            out = ours(ids, mask, labels=labels, token_type_ids=types, decoder_token_type_ids=dec_types)
        torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
        torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)


def test_types_without_a_type_table_are_ignored(pair):
    """As transformers' BertGeneration (no type table) ignores them; tests/test_generation.py compares."""
    from seqweave.layers import Embeddings

    emb = Embeddings(10, 4, 8)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(emb(ids, token_type_ids=torch.zeros_like(ids)), emb(ids))
    assert torch.equal(emb(ids, token_type_ids=torch.ones_like(ids)), emb(ids))


def test_type_beyond_the_table_is_refused(pair):
    _, ours, _ = pair
    ids, mask = source_batch(99, 0)
    with pytest.raises(sw.ConfigError, match=r"token_type_ids: type 2 is outside \[0, 2\)"):
        ours(ids, mask, labels=label_batch(99), token_type_ids=torch.full_like(ids, 2))


def test_inputs_embeds_equal_transformers(pair):
    theirs, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    dec_ids = sw.shift_tokens_right(labels, 0, 2)
    emb = theirs.encoder.get_input_embeddings()(ids)
    dec_emb = theirs.decoder.get_input_embeddings()(dec_ids)
    with torch.no_grad():
        ref = theirs(inputs_embeds=emb, attention_mask=mask, decoder_inputs_embeds=dec_emb, labels=labels)
        out = ours(inputs_embeds=emb, attention_mask=mask, decoder_inputs_embeds=dec_emb, labels=labels)
        by_ids = ours(ids, mask, decoder_input_ids=dec_ids, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=0)
    torch.testing.assert_close(out.logits, by_ids.logits, atol=TOL, rtol=0)


def test_index_access_and_return_dict_false(pair):
    theirs, ours, _ = pair
    ids, _ = source_batch(99, 0)
    labels = label_batch(99)
    with torch.no_grad():
        out = ours(ids, labels=labels)
        tup = ours(ids, labels=labels, return_dict=False)
        ref_tup = theirs(ids, labels=labels, return_dict=False, use_cache=False)  # ours: a cache when asked
        no_loss = ours(ids, decoder_input_ids=sw.shift_tokens_right(labels, 0, 2))
    assert torch.equal(out[0], out.loss) and torch.equal(out["logits"], out[1])
    assert isinstance(tup, tuple) and len(tup) == len(out.to_tuple()) == 3  # loss, logits, encoder states
    assert type(ref_tup) is tuple and len(ref_tup) == len(tup)
    for mine, ref in zip(tup, ref_tup):
        torch.testing.assert_close(mine, ref, atol=TOL, rtol=0)
    assert list(out.keys()) == ["loss", "logits", "encoder_last_hidden_state"]
    assert "loss" in out and "loss" not in no_loss and "cache" not in out
    assert torch.equal(no_loss[0], no_loss.logits)  # None fields skipped: logits first without labels
    loss, logits = out.to_tuple()[:2]
    assert out[:2] == (loss, logits)
    assert out.cache is None and out.decoder_hidden_states is None  # attributes unchanged


def test_model_output_semantics():
    logits = torch.randn(2, 3, 5)
    out = Seq2SeqOutput(logits=logits)
    out.loss = torch.tensor(1.0)  # setting a field adds it, in field order
    assert list(out.keys()) == ["loss", "logits"] and out[0] is out.loss
    out["logits"] = logits * 2
    assert torch.equal(out.logits, logits * 2)
    out.loss = None
    assert list(out) == ["logits"]
    with pytest.raises(KeyError, match="no_such"):
        out["no_such"] = 1
    with pytest.raises(TypeError):
        del out["logits"]
    with pytest.raises(TypeError):
        out.update(loss=1)
    enc = EncoderOutput(torch.ones(1, 2, 3))
    assert enc[0] is enc.last_hidden_state and len(enc) == 1
    assert isinstance(DecoderOutput(logits), dict)
    import copy
    import pickle

    again = pickle.loads(pickle.dumps(Seq2SeqOutput(loss=torch.tensor(2.0), logits=logits)))
    assert list(again.keys()) == ["loss", "logits"] and torch.equal(again.logits, logits)
    assert list(copy.deepcopy(again).keys()) == ["loss", "logits"]

    from dataclasses import dataclass

    from seqweave.outputs import ModelOutput

    @dataclass(eq=False)
    class Mine(ModelOutput):  # a plugin's own output, with a plain @dataclass
        a: torch.Tensor | None = None
        b: torch.Tensor | None = None

    mine = Mine(b=logits)
    assert list(mine.keys()) == ["b"] and mine[0] is logits
    mine.a = logits
    assert list(mine.keys()) == ["a", "b"]


def test_num_items_in_batch_normalises_the_summed_loss(pair):
    theirs, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    n = int(labels.ne(-100).sum())
    with torch.no_grad():
        mean = ours(ids, mask, labels=labels).loss
        ref = theirs(ids, mask, labels=labels).loss
        same = ours(ids, mask, labels=labels, num_items_in_batch=n).loss
        halved = ours(ids, mask, labels=labels, num_items_in_batch=torch.tensor(2 * n)).loss
    torch.testing.assert_close(mean, ref, atol=TOL, rtol=0)
    torch.testing.assert_close(same, mean, atol=TOL, rtol=0)  # this batch's count: the mean
    torch.testing.assert_close(halved, mean / 2, atol=TOL, rtol=0)  # the sum over another count


def test_past_key_values_round_trip(pair):
    theirs, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    dec = sw.shift_tokens_right(labels, 0, 2)
    with torch.no_grad():
        full = ours(ids, mask, decoder_input_ids=dec)
        first = ours(ids, mask, decoder_input_ids=dec[:, :3], use_cache=True)
        assert first.past_key_values is first.cache is not None and "cache" in first
        step = ours(encoder_outputs=(first.encoder_last_hidden_state,), attention_mask=mask,
                    decoder_input_ids=dec[:, 3:], past_key_values=first.past_key_values)
        ref = theirs(ids, mask, decoder_input_ids=dec)
    torch.testing.assert_close(torch.cat([first.logits, step.logits], 1), full.logits, atol=TOL, rtol=0)
    torch.testing.assert_close(full.logits, ref.logits, atol=TOL, rtol=0)
    assert step.cache is first.cache  # a given cache comes back
    with pytest.raises(sw.ConfigError, match="not both"):
        ours(ids, mask, decoder_input_ids=dec, cache=first.cache, past_key_values=first.cache)
    with pytest.raises(sw.ConfigError, match="seqweave.Cache"):
        ours(ids, mask, decoder_input_ids=dec, past_key_values=((torch.zeros(1),),))


def test_encode_takes_token_type_ids(pair, tokenizer):
    theirs, ours, _ = pair
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    batch["token_type_ids"][:, 2:] = 1
    with torch.no_grad():
        src = ours.encode(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        ref = theirs.encoder(**batch).last_hidden_state
    torch.testing.assert_close(src.encoder.last_hidden_state, ref, atol=TOL, rtol=0)


def test_data_parallel_gather(pair, monkeypatch):
    """``DataParallel`` gathers the replicas' outputs with this function; on CPU only the copy is faked."""
    import torch.nn.parallel.scatter_gather as sg

    _, ours, _ = pair
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    with torch.no_grad():
        halves = [ours(ids[i : i + 1], mask[i : i + 1], labels=labels[i : i + 1]) for i in (0, 1)]
    # Gather.apply copies tensors to one GPU and concatenates them (scalars become [n]).
    monkeypatch.setattr(sg.Gather, "apply",
                        staticmethod(lambda dev, dim, *ts: torch.cat([t.reshape(1) if t.dim() == 0 else t
                                                                       for t in ts], dim)))
    gathered = sg.gather(halves, "cpu")
    assert type(gathered) is Seq2SeqOutput and list(gathered.keys()) == list(halves[0].keys())
    assert torch.equal(gathered.logits, torch.cat([h.logits for h in halves]))
    assert torch.equal(gathered.loss, torch.stack([h.loss for h in halves]))
    assert gathered.cache is None


# ---------------------------------------------------------------------------------------------
# model.config


def test_config_view_reads_like_transformers(pair):
    theirs, ours, _ = pair
    cfg = ours.config
    for name in ("decoder_start_token_id", "pad_token_id", "is_encoder_decoder", "model_type"):
        assert getattr(cfg, name) == getattr(theirs.config, name), name
    # transformers 5.24's composite config has neither; ours reads the model's attributes
    assert cfg.eos_token_id is None and cfg.tie_encoder_decoder is False
    assert cfg.vocab_size == theirs.config.decoder.vocab_size == 99
    for part in ("encoder", "decoder"):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "model_type", "is_decoder",
                     "add_cross_attention", "type_vocab_size"):
            assert getattr(getattr(cfg, part), name) == getattr(getattr(theirs.config, part), name), (part, name)
    data = json.loads(cfg.to_json_string())
    assert data == json.loads(json.dumps(cfg.to_dict())) and data["decoder"]["vocab_size"] == 99
    assert not hasattr(cfg, "no_such_field") and "no_such_field" not in cfg and "pad_token_id" in cfg
    assert getattr(cfg, "keys_to_ignore_at_inference", []) == []  # what Trainer asks


def test_config_writes_take_effect_in_forward_generate_and_save(pair, tmp_path):
    theirs, _, folder = pair
    ours = sw.EncoderDecoder.from_pretrained(folder).eval()
    ids, mask = source_batch(99, 0)
    labels = label_batch(99)
    ours.config.decoder_start_token_id = 5
    ours.config.pad_token_id = 1
    ours.config.eos_token_id = 7
    ours.config.vocab_size = ours.config.decoder.vocab_size  # as transformers' docs do
    assert ours.decoder_start_token_id == 5 and ours.pad_token_id == 1 and ours.eos_token_id == 7
    theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 5, 1
    try:
        with torch.no_grad():
            torch.testing.assert_close(ours(ids, mask, labels=labels).loss, theirs(ids, mask, labels=labels).loss,
                                       atol=TOL, rtol=0)
    finally:
        theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 2, 0
    assert ours.generate(ids, mask, max_new_tokens=3)[:, 0].eq(5).all()
    ours.config.max_new_tokens = 2  # a generation option: the model's generation settings
    assert ours.generation_settings.max_new_tokens == 2 and ours.generate(ids, mask).shape[1] <= 3
    assert ours.config.use_cache is False and "cache" not in ours(ids, mask, labels=labels)
    ours.config.use_cache = True
    ours.config.output_hidden_states = True
    with torch.no_grad():
        flagged = ours(ids, mask, labels=labels)
    assert flagged.cache is not None and len(flagged.decoder_hidden_states) == 3  # embeddings + 2 layers
    assert ours(ids, mask, labels=labels, use_cache=False, output_hidden_states=False).cache is None
    ours.config.use_cache = ours.config.output_hidden_states = False
    ours.config.encoder.my_note = "kept"
    ours.config.my_top_note = 3
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["decoder_start_token_id"], saved["pad_token_id"], saved["eos_token_id"]) == (5, 1, 7)
    assert saved["encoder"]["my_note"] == "kept" and saved["my_top_note"] == 3
    again = sw.EncoderDecoder.from_pretrained(tmp_path)
    assert again.config.decoder_start_token_id == 5 and again.config.encoder.my_note == "kept"


def test_config_refuses_what_a_built_model_cannot_change(pair):
    _, ours, _ = pair
    with pytest.raises(sw.ConfigError, match="vocab_size.*resize_token_embeddings"):
        ours.config.vocab_size = 120
    with pytest.raises(sw.ConfigError, match="decoder.hidden_size"):
        ours.config.decoder.hidden_size = 64
    with pytest.raises(sw.ConfigError, match="pad_token_id"):
        ours.config.pad_token_id = "x"
    with pytest.raises(sw.ConfigError, match="is_encoder_decoder"):
        ours.config.is_encoder_decoder = False
    ours.config.decoder.hidden_size = ours.config.decoder.hidden_size  # the same value: fine


def test_config_tie_encoder_decoder_ties(tmp_path):
    hf_composite(tmp_path, "bert", "bert")
    model = sw.EncoderDecoder.from_pretrained(tmp_path)
    model.config.tie_encoder_decoder = True
    assert model.tie_encoder_decoder and model.tied_parameters
    assert model.encoder.embeddings.tokens.weight is model.decoder.embeddings.tokens.weight
    with pytest.raises(sw.ConfigError, match="untying"):
        model.config.tie_encoder_decoder = False


# ---------------------------------------------------------------------------------------------
# transformers.Trainer


class _Rows(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def _dataset(tokenizer, n=8):
    texts = [f"{a} {b}" for a in ("hello", "some", "this is") for b in ("world", "text", "the model")][:n]
    rows = []
    for t in texts:
        src = tokenizer(t, max_length=12, padding="max_length", truncation=True)
        tgt = tokenizer(t.split()[0], max_length=6, padding="max_length", truncation=True).input_ids
        rows.append({"input_ids": torch.tensor(src.input_ids), "attention_mask": torch.tensor(src.attention_mask),
                     "token_type_ids": torch.tensor(src.token_type_ids),
                     "labels": torch.tensor([-100 if x == tokenizer.pad_token_id else x for x in tgt])})
    return _Rows(rows)


def _train(trainer_cls, args_cls, model, tokenizer, tmp_path, **args):
    data = _dataset(tokenizer)
    trainer = trainer_cls(
        model=model,
        args=args_cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                      num_train_epochs=6, learning_rate=3e-3, logging_steps=2, report_to=[], use_cpu=True,
                      save_strategy="no", seed=0, disable_tqdm=True, **args),
        train_dataset=data,
        eval_dataset=data,
    )
    before = trainer.evaluate()
    result = trainer.train()
    after = trainer.evaluate()
    print(f"{trainer_cls.__name__}: log history:")
    for entry in trainer.state.log_history:
        print("  ", entry)
    print(f"{trainer_cls.__name__}: train result: {result}")
    return before, after, trainer


def test_trainer_trains_and_evaluates_unchanged(pair, tokenizer, tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (the dev extra)")
    from transformers import Trainer, TrainingArguments

    _, _, folder = pair
    model = sw.EncoderDecoder.from_pretrained(folder)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    before, after, trainer = _train(Trainer, TrainingArguments, model, tokenizer, tmp_path,
                                    gradient_accumulation_steps=2)
    assert after["eval_loss"] < before["eval_loss"] - 0.5
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_seq2seq_trainer_predict_with_generate(pair, tokenizer, tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (the dev extra)")
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    _, _, folder = pair
    model = sw.EncoderDecoder.from_pretrained(folder)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    before, after, trainer = _train(Seq2SeqTrainer, Seq2SeqTrainingArguments, model, tokenizer, tmp_path,
                                    predict_with_generate=True, generation_max_length=6, generation_num_beams=2)
    assert after["eval_loss"] < before["eval_loss"] - 0.5
    pred = trainer.predict(_dataset(tokenizer))
    # generation_max_length=6 reached generate; Trainer pads the rows to generation_config.max_length (20)
    assert pred.predictions.shape == (8, 20)
    assert (pred.predictions[:, 6:] == tokenizer.pad_token_id).all()


class _OldStyleEncoder(torch.nn.Module):
    """An encoder written to the protocol before token types: no token_type_ids, no inputs_embeds."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.hidden_size = inner, inner.hidden_size

    def forward(self, input_ids, attention_mask=None, *, output_attentions=False, output_hidden_states=False):
        return self.inner(input_ids, attention_mask, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states)


def test_an_encoder_without_token_types_still_composes(pair, tokenizer):
    _, ours, _ = pair
    model = sw.EncoderDecoder(_OldStyleEncoder(ours.encoder), ours.decoder, decoder_start_token_id=2,
                              pad_token_id=0).eval()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    labels = _labels(tokenizer)
    with torch.no_grad():
        out = model(**batch, labels=labels)  # all-zero types: dropped for it
        ref = ours(**batch, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
    batch["token_type_ids"][:, 1:] = 1
    with pytest.raises(sw.ConfigError, match=r"token_type_ids: the encoder \(_OldStyleEncoder\) does not take"):
        model(**batch, labels=labels)
    with pytest.raises(sw.ConfigError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 32), labels=labels[:1])


def test_trainer_save_model(pair, tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (the dev extra)")
    from transformers import Trainer, TrainingArguments

    model = sw.EncoderDecoder.from_pretrained(pair[2])
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[],
                                                          use_cpu=True))
    trainer.save_model(str(tmp_path / "saved"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    again = sw.EncoderDecoder.from_pretrained(pair[2])
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    again.load_state_dict(saved)  # every name present: tied names hold equal copies
    assert again.decoder.head.proj.weight is again.decoder.embeddings.tokens.weight  # still one tensor
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, atol=0, rtol=0)
