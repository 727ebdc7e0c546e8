"""generate(): token-for-token parity with transformers, properties, streaming and argument errors.

Parity runs on every encoder x decoder pairing the registry offers, on a tiny random
transformers ``EncoderDecoderModel`` saved to a folder that both sides load. The eos id
is a token the model really produces at step 2-4 of some row (found by running greedy
search once), so rows finish at different steps and padding, early stopping and the
beam bookkeeping of finished hypotheses are all exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import seqweave as sw
import torch
from conftest import DECODERS, ENCODERS, DelegatingDecoder, hf_composite, source_batch
from seqweave.generation import search
from seqweave.generation import step as graphs

PAIRS = [(e, d) for e in ENCODERS for d in DECODERS]
MAX_NEW = 10


@dataclass
class Pair:
    hf: Any
    sw: sw.EncoderDecoder
    ids: torch.Tensor
    mask: torch.Tensor
    eos: int
    greedy: torch.Tensor  # greedy output without eos


def pick_eos(greedy: torch.Tensor) -> int | None:
    """A token that first appears at step 2-4 of some row and at different steps (or never) in others."""
    rows = greedy[:, 1:].tolist()
    best = None
    # not the pad id (0 in hf_composite): rows that met the model's own eos are padded with it
    for token in sorted({t for row in rows for t in row[1:4]} - {0}):
        first = [row.index(token) + 1 if token in row else None for row in rows]
        if not any(f is not None and 2 <= f <= 4 for f in first) or len(set(first)) < 2:
            continue
        if None in first:
            return token  # some row never ends: generation continues after others have finished
        best = best if best is not None else token
    return best


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{e}2{d}" for e, d in PAIRS])
def pair(request, tmp_path_factory) -> Pair:
    encoder, decoder = request.param
    for seed in range(20):  # random tiny models often repeat one token; take the first seed that does not
        folder = tmp_path_factory.mktemp(f"{encoder}2{decoder}-{seed}")
        hf = hf_composite(folder, encoder, decoder, seed=seed)
        model = sw.EncoderDecoder.from_pretrained(folder)
        ids, mask = source_batch(model.decoder.vocab_size, 0, seed=seed, shape=(4, 9))
        greedy = model.generate(ids, mask, max_new_tokens=MAX_NEW)
        eos = pick_eos(greedy)
        if eos is not None:
            return Pair(hf, model, ids, mask, eos, greedy)
    pytest.fail(
        f"no seed gives a {encoder}2{decoder} model whose greedy output has an eos candidate at step 2-4"
    )


def hf_generate(p: Pair, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return p.hf.generate(input_ids=p.ids, attention_mask=p.mask, **kwargs)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, f"\n{ours}\n{theirs}"
    assert torch.equal(ours, theirs), f"\n{ours}\n{theirs}"


def test_eos_occurs_mid_sequence(pair):
    """The precondition of the parity tests: with this eos, rows end at different steps, some after step 1."""
    out = pair.sw.generate(pair.ids, pair.mask, max_new_tokens=MAX_NEW, eos_token_id=pair.eos)
    ends = [row.index(pair.eos) + 1 if pair.eos in row else None for row in out[:, 1:].tolist()]
    assert any(e is not None and e >= 2 for e in ends), ends
    assert len(set(ends)) >= 2, ends


GREEDY_CASES = {
    "greedy": {},
    "pad5": {"pad_token_id": 5},
    "processors": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 3},
    "min_new": {"min_new_tokens": 6},
    "two_eos": {"eos_token_id": "two"},
    # transformers' lengths: max_length counts the start token; max_new_tokens wins over it;
    # min_length counts the start token; min_new_tokens wins over it.
    "max_length": {"max_new_tokens": None, "max_length": 7},
    "both_max": {"max_new_tokens": 8, "max_length": 4},
    "min_length": {"min_length": 6},
    "both_min": {"min_length": 9, "min_new_tokens": 2},
    "bad_words": {"bad_words_ids": "model"},
    "forced_bos": {"forced_bos_token_id": "model"},
    # an eos the model never produces: rows reach max_length, where the forced eos applies
    "forced_eos": {"forced_eos_token_id": "model", "max_new_tokens": 6, "eos_token_id": "never"},
    "forced_eos_list": {"forced_eos_token_id": "two", "max_new_tokens": 6, "eos_token_id": "never"},
    "all_processors": {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "bad_words_ids": "model",
                       "min_length": 4, "forced_bos_token_id": "model", "forced_eos_token_id": "model"},
}
BEAM_CASES = {
    "beam3": {"num_beams": 3},
    "beam4_return3": {"num_beams": 4, "num_return_sequences": 3},
    "early_stopping": {"num_beams": 3, "early_stopping": True, "length_penalty": 0.6},
    "never": {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
    "negative_lp": {"num_beams": 2, "length_penalty": -1.0},
    "pad5": {"num_beams": 3, "pad_token_id": 5},
    "processors": {"num_beams": 3, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "min_new_tokens": 3},
    "two_eos": {"num_beams": 3, "eos_token_id": "two"},
    "max_length": {"num_beams": 3, "max_new_tokens": None, "max_length": 6},
    "min_length": {"num_beams": 3, "min_length": 6},
    "bad_words": {"num_beams": 3, "bad_words_ids": "model"},
    "forced": {"num_beams": 3, "forced_bos_token_id": "model", "forced_eos_token_id": "model",
               "max_new_tokens": 7},
    "forced_eos_never": {"num_beams": 3, "forced_eos_token_id": "model", "max_new_tokens": 5,
                         "eos_token_id": "never"},
}


def _resolve(p: Pair, kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = {"max_new_tokens": MAX_NEW, "eos_token_id": p.eos, **kwargs}
    produced = [t for t in p.greedy[:, 1:].flatten().tolist() if t != p.eos]
    other = produced[0]  # a token the model produces, not the eos
    if kwargs["eos_token_id"] == "two":  # the chosen eos and another token the model produces
        kwargs["eos_token_id"] = [other, p.eos]
    elif kwargs["eos_token_id"] == "never":  # a token greedy search never produces
        kwargs["eos_token_id"] = next(t for t in range(p.sw.decoder.vocab_size) if t not in p.greedy)
    if kwargs.get("bad_words_ids") == "model":
        # one token the model produces first (always banned), a two-token sequence it produces
        # (banned after its first token, which includes the start token), a word whose prefix
        # never occurs, and the eos alone (dropped, as transformers does)
        row = p.greedy[0].tolist()
        first = next((t for t in p.greedy[1:, 1].tolist() if t != p.eos), other)
        kwargs["bad_words_ids"] = [[first], row[2:4], [p.eos], [p.eos, p.eos, other]]
    if kwargs.get("forced_bos_token_id") == "model":  # a token the model produces, never first
        first = p.greedy[:, 1].tolist()
        kwargs["forced_bos_token_id"] = next((t for t in produced if t not in first), p.sw.decoder.vocab_size - 1)
    if kwargs.get("forced_eos_token_id") == "model":
        kwargs["forced_eos_token_id"] = other
    elif kwargs.get("forced_eos_token_id") == "two":
        kwargs["forced_eos_token_id"] = [produced[-1], other]
    return {k: v for k, v in kwargs.items() if v is not None}


@pytest.mark.parametrize("case", list(GREEDY_CASES), ids=list(GREEDY_CASES))
def test_greedy_matches_transformers(pair, case):
    """Eagerly, and on the static path, whose graph step applies the processors and picks the tokens."""
    kwargs = _resolve(pair, GREEDY_CASES[case])
    theirs = hf_generate(pair, **kwargs)
    assert_same(pair.sw.generate(pair.ids, pair.mask, **kwargs), theirs)
    assert_same(pair.sw.generate(pair.ids, pair.mask, static_cache=True, **kwargs), theirs)


@pytest.mark.parametrize("case", list(BEAM_CASES), ids=list(BEAM_CASES))
def test_beam_search_matches_transformers(pair, case, monkeypatch):
    """Eagerly, and on the static path, whose graph step does the bookkeeping (GraphBeams)."""
    kwargs = _resolve(pair, BEAM_CASES[case])
    theirs = pair.hf.generate(
        input_ids=pair.ids,
        attention_mask=pair.mask,
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    eager = pair.sw.generate_with_scores(pair.ids, pair.mask, **kwargs)
    static = pair.sw.generate_with_scores(pair.ids, pair.mask, static_cache=True, **kwargs)
    for ours in (eager, static):
        assert_same(ours.sequences, theirs.sequences)
        torch.testing.assert_close(ours.scores, theirs.sequences_scores, rtol=1e-5, atol=1e-5)
    # the same static step with the bookkeeping outside it: the graph's arithmetic is beam_search's, bit for bit
    monkeypatch.setattr(graphs, "BEAMS_IN_GRAPH", False)
    outside = pair.sw.generate_with_scores(pair.ids, pair.mask, static_cache=True, **kwargs)
    assert torch.equal(static.sequences, outside.sequences) and torch.equal(static.scores, outside.scores)


# top_k=0 is "no top-k filter" on both sides; transformers' default when sampling would be 50.
SAMPLE_CASES = {
    "plain": {"do_sample": True, "top_k": 0},
    "warpers": {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
    "return2": {"do_sample": True, "top_k": 0, "num_return_sequences": 2, "repetition_penalty": 1.2},
    "beam_sample": {"do_sample": True, "num_beams": 3, "top_k": 10},
    "processors": {"do_sample": True, "top_k": 0, "bad_words_ids": "model", "min_length": 5,
                   "forced_bos_token_id": "model", "forced_eos_token_id": "model", "max_length": 8,
                   "max_new_tokens": None},
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES), ids=list(SAMPLE_CASES))
def test_sampling_matches_transformers_with_the_same_seed(pair, case):
    """Same seed in our generator as in transformers' global one: the same draws (eagerly and on the static path)."""
    kwargs = _resolve(pair, SAMPLE_CASES[case])
    torch.manual_seed(11)
    theirs = hf_generate(pair, **kwargs)
    for static in (False, True):
        ours = pair.sw.generate(pair.ids, pair.mask, generator=torch.Generator().manual_seed(11),
                                static_cache=static, **kwargs)
        assert_same(ours, theirs)


def test_static_cache_gives_the_same_tokens(pair):
    for kwargs in ({}, {"num_beams": 3}):
        kwargs = _resolve(pair, kwargs)
        dynamic = pair.sw.generate(pair.ids, pair.mask, **kwargs)
        assert_same(pair.sw.generate(pair.ids, pair.mask, static_cache=True, **kwargs), dynamic)


def test_a_lagged_stop_check_gives_the_same_tokens(pair, monkeypatch):
    """CUDA reads the "every row finished" flag one step late; forced on the CPU, the tokens are the same."""
    free = pair.sw.generate(pair.ids, pair.mask, **_resolve(pair, {"eos_token_id": "never"}))  # no row ends
    eos = sorted(set(free[:, 3].tolist()))  # now every row ends by its third token, some sooner

    def run(**kwargs):
        return pair.sw.generate(pair.ids, pair.mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                                generator=torch.Generator().manual_seed(2), **kwargs)

    cases = ({}, {"do_sample": True, "top_k": 0}, {"num_beams": 3}, {"num_beams": 2, "early_stopping": True})
    expected = [run(**kwargs) for kwargs in cases]
    assert expected[0].shape[1] <= 4  # the search stopped early: the late flag has a step to discard
    init = search._StopCheck.__init__
    monkeypatch.setattr(search._StopCheck, "__init__", lambda self, device, lagged=None: init(self, device, True))
    for kwargs, want in zip(cases, expected, strict=True):
        for static in (False, True):  # the eager loop, and the decode graph that picks the tokens (or beams) itself
            assert_same(run(static_cache=static, **kwargs), want)


@pytest.mark.parametrize("case", ["plain", "warpers"])
def test_sampling_inside_the_decode_graph_draws_what_the_eager_path_draws(pair, case):
    """The static path samples inside its step (noise drawn per step): same tokens, same generator state after."""
    kwargs = _resolve(pair, {**SAMPLE_CASES[case], "num_return_sequences": 2})
    eager, graphed = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    graphs.clear_graphs(pair.sw)
    dynamic = pair.sw.generate(pair.ids, pair.mask, generator=eager, **kwargs)
    static = pair.sw.generate(pair.ids, pair.mask, static_cache=True, generator=graphed, **kwargs)
    (graph,) = graphs.kept_graphs(pair.sw)
    assert graph.bucket.kind == "sample"
    if static.shape[1] > 2:  # steps after the first ran inside the graph (eagerly, on the CPU)
        assert graph.noise is not None
    assert_same(static, dynamic)
    assert torch.equal(graphed.get_state(), eager.get_state())
    streamed = list(pair.sw.generate_stream(pair.ids, pair.mask, static_cache=True,
                                            generator=torch.Generator().manual_seed(7), **kwargs))
    assert_same(torch.cat([static[:, :1], torch.stack(streamed, dim=1)], dim=1), dynamic)


def test_unpadded_sources_without_a_mask(pair):
    ids = pair.ids[:, :3]  # no row is padded in its first 3 positions
    kwargs = _resolve(pair, {"num_beams": 2})
    with torch.no_grad():
        theirs = pair.hf.generate(input_ids=ids, **kwargs)
    assert_same(pair.sw.generate(ids, **kwargs), theirs)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_large_vocabulary_matches_transformers(decoder, tmp_path):
    """5000 target tokens: beam search's block-wise top-k (and argmax over many logits) in play."""
    vocab = 5000
    hf = hf_composite(tmp_path, ENCODERS[0], decoder, decoder_overrides={"vocab_size": vocab}, seed=3)
    model = sw.EncoderDecoder.from_pretrained(tmp_path)
    ids, mask = source_batch(99, 0, seed=3, shape=(3, 8))
    greedy = model.generate(ids, mask, max_new_tokens=MAX_NEW)
    eos = pick_eos(greedy)
    assert eos is not None, "seed 3 should give an eos candidate at step 2-4"
    for kwargs in ({}, {"num_beams": 3}, {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.7}):
        kwargs = {"max_new_tokens": MAX_NEW, "eos_token_id": eos, **kwargs}
        with torch.no_grad():
            theirs = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        assert_same(model.generate(ids, mask, **kwargs), theirs)
    # sampling 2 sequences per source: 6 rows, 8 in the static path's bucket, where the noise of the
    # first 6 is drawn as torch.multinomial draws it (a draw over 8 rows would take other numbers)
    kwargs = {"max_new_tokens": MAX_NEW, "eos_token_id": eos, "do_sample": True, "top_k": 0, "num_return_sequences": 2}
    torch.manual_seed(4)
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for static in (False, True):
        ours = model.generate(ids, mask, static_cache=static, generator=torch.Generator().manual_seed(4), **kwargs)
        assert_same(ours, theirs)


# ---------------------------------------------------------------------------------------------
# Streaming


def test_stream_yields_the_columns_generate_returns(pair):
    kwargs = _resolve(pair, {})
    full = pair.sw.generate(pair.ids, pair.mask, **kwargs)
    columns = list(pair.sw.generate_stream(pair.ids, pair.mask, **kwargs))
    assert len(columns) == full.shape[1] - 1
    assert torch.equal(torch.stack(columns, dim=1), full[:, 1:])
    seen: list[torch.Tensor] = []
    again = pair.sw.generate(pair.ids, pair.mask, streamer=lambda t: seen.append(t.clone()), **kwargs)
    assert torch.equal(again, full) and torch.equal(torch.stack(seen, dim=1), full[:, 1:])


def test_stream_checks_arguments_before_the_first_token(pair):
    with pytest.raises(sw.ConfigError, match="num_beams"):
        pair.sw.generate_stream(pair.ids, num_beams=2)
    with pytest.raises(sw.ConfigError, match="streamer"):
        pair.sw.generate(pair.ids, num_beams=2, streamer=print)


# ---------------------------------------------------------------------------------------------
# Sharing the source


def test_encoder_runs_once_per_source_and_each_beam_reads_its_own_cross_attention(pair):
    """The encoder runs on the b sources; cross-attention keys/values are made once, one copy per beam.

    A copy per beam is what transformers computes on, so bfloat16 beams stay token for token.
    """
    model, b, n = pair.sw, pair.ids.shape[0], 3
    encoder_rows: list[int] = []
    caches: list[sw.Cache] = []
    hooks = [
        model.encoder.register_forward_hook(lambda m, args, out: encoder_rows.append(args[0].shape[0])),
        model.decoder.register_forward_pre_hook(
            lambda m, args, kwargs: caches.append(kwargs["cache"]), with_kwargs=True
        ),
    ]
    try:
        model.generate(pair.ids, pair.mask, max_new_tokens=MAX_NEW, num_beams=n)
    finally:
        for h in hooks:
            h.remove()
    assert encoder_rows == [b]
    cache = caches[0]
    assert all(c is cache for c in caches)
    for layer in cache.layers:
        assert layer.cross[0].shape[0] == b * n and layer.cross[1].shape[0] == b * n
        assert layer.k.shape[0] == b * n
        assert layer.k.shape[2] == 1 + MAX_NEW  # allocated once for the whole generation


# ---------------------------------------------------------------------------------------------
# Defaults and errors


def test_defaults_come_from_the_generation_settings(pair):
    model = pair.sw
    saved = model.generation_settings
    try:
        model.generation_settings = sw.GenerationSettings(
            max_new_tokens=4, num_beams=2, num_return_sequences=2
        )
        out = model.generate(pair.ids, pair.mask)
        assert out.shape[0] == 2 * pair.ids.shape[0]
        assert_same(
            out, model.generate(pair.ids, pair.mask, max_new_tokens=4, num_beams=2, num_return_sequences=2)
        )
    finally:
        model.generation_settings = saved


def test_special_token_defaults_come_from_the_model(pair):
    model = pair.sw
    saved = model.eos_token_id, model.pad_token_id
    try:
        model.eos_token_id, model.pad_token_id = pair.eos, 7
        out = model.generate(pair.ids, pair.mask, max_new_tokens=MAX_NEW)
        assert_same(
            out,
            model.generate(
                pair.ids, pair.mask, max_new_tokens=MAX_NEW, eos_token_id=pair.eos, pad_token_id=7
            ),
        )
        assert (out[:, 0] == model.decoder_start_token_id).all()
        model.pad_token_id = None  # falls back to the eos id, as in transformers
        assert_same(
            model.generate(pair.ids, pair.mask, max_new_tokens=MAX_NEW),
            model.generate(
                pair.ids, pair.mask, max_new_tokens=MAX_NEW, eos_token_id=pair.eos, pad_token_id=pair.eos
            ),
        )
    finally:
        model.eos_token_id, model.pad_token_id = saved


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_beams": 0}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
        ({"min_new_tokens": 5, "max_new_tokens": 3}, "min_new_tokens"),
        ({"max_new_tokens": 10_000}, "max_new_tokens"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"pad_token_id": "x"}, "pad_token_id"),
        ({"pad_token_id": 10_000}, "vocab_size"),
        ({"decoder_start_token_id": 10_000}, "vocab_size"),
        ({"generator": 3}, "generator"),
        ({"max_lenght": 5}, "unknown argument.*max_lenght"),
        ({"max_length": 1}, "max_length"),
        ({"bad_words_ids": [[]]}, "bad_words_ids"),
        ({"forced_eos_token_id": 10_000}, "forced_eos_token_id.*vocab_size"),
        ({"cuda_graph": True}, "cuda_graph"),
    ],
)
def test_bad_arguments_are_config_errors(pair, kwargs, match):
    with pytest.raises(sw.ConfigError, match=match):
        if "max_length" in kwargs:
            pair.sw.generate_with_scores(pair.ids, **kwargs)
        else:
            pair.sw.generate(pair.ids, **kwargs)


def test_bad_inputs_are_config_errors(pair):
    with pytest.raises(sw.ConfigError, match="input_ids"):
        pair.sw.generate(pair.ids[0])
    with pytest.raises(sw.ConfigError, match="attention_mask"):
        pair.sw.generate(pair.ids, pair.mask[:, :3])


def test_start_token_falls_back_to_bos_or_is_a_config_error(pair):
    model = pair.sw
    saved = model.decoder_start_token_id
    bos = getattr(model.decoder.config, "bos_token_id", None)
    try:
        model.decoder_start_token_id = None
        if bos is None:
            with pytest.raises(sw.ConfigError, match="decoder_start_token_id"):
                model.generate(pair.ids)
        else:
            assert (model.generate(pair.ids, max_new_tokens=2)[:, 0] == bos).all()
    finally:
        model.decoder_start_token_id = saved





def test_a_hand_written_decoder_generates_the_same(pair):
    model = pair.sw
    composed = sw.EncoderDecoder(
        model.encoder,
        DelegatingDecoder(model.decoder),
        decoder_start_token_id=model.decoder_start_token_id,
        pad_token_id=model.pad_token_id,
    )
    composed.enc_to_dec_proj = model.enc_to_dec_proj
    for kwargs in ({}, {"num_beams": 3}):
        kwargs = _resolve(pair, kwargs)
        assert_same(
            composed.generate(pair.ids, pair.mask, **kwargs), model.generate(pair.ids, pair.mask, **kwargs)
        )
    with pytest.raises(sw.ConfigError, match="supports_static_cache"):
        composed.generate(pair.ids, static_cache=True)


def test_hooks_on_inner_modules_still_fire_during_generation(pair):
    """The layers skip nn.Module.__call__'s bookkeeping only when no hook could notice."""
    ffn_calls: list[int] = []
    seen: set[str] = set()
    names = {id(m): n for n, m in pair.sw.decoder.named_modules()}
    hook = pair.sw.decoder.layers[0].ffn.register_forward_hook(lambda m, a, o: ffn_calls.append(1))
    try:
        out = pair.sw.generate(pair.ids, pair.mask, max_new_tokens=4)
    finally:
        hook.remove()
    assert len(ffn_calls) == out.shape[1] - 1  # one decode step per generated column
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, a, o: seen.add(names.get(id(m), ""))
    )
    try:
        pair.sw.generate(pair.ids, pair.mask, max_new_tokens=2)
    finally:
        handle.remove()
    assert {"layers.0.self_attn.qkv_proj", "layers.0.ffn_norm", "head"} <= seen


# ---------------------------------------------------------------------------------------------
# transformers' calling conventions: lengths and processors change the output, output objects,
# generation_config, decoder_input_ids, encoder_outputs, a tokenizer's whole output


def test_the_new_options_change_the_output(pair):
    """The parity cases of the new options are not vacuous: each changes what greedy search gives."""
    for case in ("bad_words", "forced_bos", "forced_eos", "forced_eos_list", "min_length", "all_processors"):
        kwargs = _resolve(pair, GREEDY_CASES[case])
        out = pair.sw.generate(pair.ids, pair.mask, **kwargs)
        lengths = {k: kwargs[k] for k in ("max_new_tokens", "max_length", "eos_token_id") if k in kwargs}
        plain = pair.sw.generate(pair.ids, pair.mask, **lengths)
        assert out.shape != plain.shape or not torch.equal(out, plain), case
    # max_length counts the start token; max_new_tokens wins over it (an eos the model never produces)
    never = next(t for t in range(pair.sw.decoder.vocab_size) if t not in pair.greedy)
    assert pair.sw.generate(pair.ids, max_length=5, eos_token_id=never).shape[1] == 5
    assert pair.sw.generate(pair.ids, max_length=9, max_new_tokens=3, eos_token_id=never).shape[1] == 4


def _assert_same_steps(ours: tuple, theirs: tuple) -> float:
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # -inf where theirs is -inf
        finite = torch.isfinite(b)
        worst = max(worst, float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0)
    return worst


OUTPUT_CASES = {
    "greedy": {},
    "greedy_processors": {"bad_words_ids": "model", "min_length": 4, "repetition_penalty": 1.3},
    "sample": {"do_sample": True, "top_k": 5, "temperature": 0.8},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.7},
    "beam_processors": {"num_beams": 3, "no_repeat_ngram_size": 2, "forced_eos_token_id": "model",
                        "max_new_tokens": 6},
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES), ids=list(OUTPUT_CASES))
def test_output_scores_and_logits_match_transformers(pair, case):
    kwargs = {**_resolve(pair, OUTPUT_CASES[case]), "return_dict_in_generate": True,
              "output_scores": True, "output_logits": True}
    torch.manual_seed(5)
    theirs = hf_generate(pair, **kwargs)
    ours = pair.sw.generate(pair.ids, pair.mask, generator=torch.Generator().manual_seed(5), **kwargs)
    assert type(ours).__name__ == type(theirs).__name__
    assert_same(ours.sequences, theirs.sequences)
    worst = _assert_same_steps(ours.scores, theirs.scores)
    worst = max(worst, _assert_same_steps(ours.logits, theirs.logits))
    if "num_beams" in kwargs:
        torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, rtol=1e-5, atol=1e-5)
        assert ours.beam_indices.dtype == theirs.beam_indices.dtype
        assert_same(ours.beam_indices, theirs.beam_indices)
    # ModelOutput semantics: the same keys (transformers' cache is ours), index and key access
    assert list(ours.keys()) == list(theirs.keys())
    assert ours[0] is ours["sequences"] is ours.sequences
    assert len(ours.to_tuple()) == len(theirs.to_tuple())
    # Bit for bit: every step runs transformers' kernels on transformers' shapes (beams included:
    # each reads its own copy of the source's keys/values). Anything else shows up as ~1e-7 here
    # in float32, and as different beams in bfloat16.
    assert worst == 0.0, worst


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
def test_bfloat16_beam_search_matches_transformers_bit_for_bit(decoder, device, tmp_path):
    """bfloat16 logits take few values, so beam candidates often score exactly the same.

    Which of two equal candidates a beam takes is then decided by ``torch.topk``'s order, and
    a logit one rounding away from transformers' swaps beams. Both happened: the CPU's
    block-wise top-k gave equal scores in its own order, and beams reading one shared copy of
    the source's keys/values made SDPA round differently. A vocabulary of 8192 makes beam
    search take the block-wise top-k path (4 beams x 8192 scores). On CUDA (benchmarks/gpu_check.sh)
    the same check runs on the GPU's kernels, where the H200 run saw bfloat16 beams part.
    """
    hf = hf_composite(tmp_path, "bert", decoder, decoder_overrides={"vocab_size": 8192}, seed=3)
    hf = hf.to(device, torch.bfloat16)
    model = sw.EncoderDecoder.from_pretrained(tmp_path).to(device, torch.bfloat16)
    kwargs = {"max_new_tokens": 24, "num_beams": 4, "num_return_sequences": 2, "return_dict_in_generate": True,
              "output_logits": True, "no_repeat_ngram_size": 0}
    ties = 0
    for seed in range(4):
        ids, mask = (t.to(device) for t in source_batch(hf.config.encoder.vocab_size, 0, seed=seed, shape=(3, 12)))
        with torch.no_grad():
            theirs = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        ours = model.generate(ids, mask, **kwargs)
        assert_same(ours.sequences, theirs.sequences)
        assert len(ours.logits) == len(theirs.logits)
        for step, (a, b) in enumerate(zip(ours.logits, theirs.logits, strict=True)):
            assert torch.equal(a, b), f"seed {seed}: step {step} logits differ"
            top = torch.topk(b, 9).values  # equal logits in a row: equal candidates for its beam
            ties += int((top[:, 1:] == top[:, :-1]).any())
    assert ties > 0  # the precondition: equal scores did occur among the candidates


def test_output_objects_leave_out_what_was_not_asked_for(pair):
    out = pair.sw.generate(pair.ids, pair.mask, max_new_tokens=3, return_dict_in_generate=True)
    assert out.scores is None and "scores" not in out and list(out.keys()) == ["sequences", "cache"]
    assert torch.equal(out[0], pair.sw.generate(pair.ids, pair.mask, max_new_tokens=3))
    beam = pair.sw.generate(pair.ids, pair.mask, max_new_tokens=3, num_beams=2, return_dict_in_generate=True)
    assert beam.sequences_scores is None and list(beam.keys()) == ["sequences", "beam_indices", "cache"]
    theirs = hf_generate(pair, max_new_tokens=3, num_beams=2, return_dict_in_generate=True)
    assert list(beam.keys()) == list(theirs.keys())
    with pytest.raises(KeyError):
        beam["scores"]


def test_generation_config_applies_under_the_keyword_options(pair):
    from transformers import GenerationConfig

    base = _resolve(pair, {"num_beams": 3, "bad_words_ids": "model", "max_new_tokens": None, "max_length": 7})
    config = GenerationConfig(**base)
    # its fields apply
    theirs = hf_generate(pair, generation_config=config)
    assert_same(pair.sw.generate(pair.ids, pair.mask, generation_config=config), theirs)
    # keyword options win over it (transformers' precedence)
    theirs = hf_generate(pair, generation_config=config, num_beams=2, max_new_tokens=4)
    ours = pair.sw.generate(pair.ids, pair.mask, generation_config=config, num_beams=2, max_new_tokens=4)
    assert_same(ours, theirs)
    # a dict and our own settings give the same
    assert_same(pair.sw.generate(pair.ids, pair.mask, generation_config=base), hf_generate(pair, **base))
    settings = sw.GenerationSettings(**base)
    assert_same(pair.sw.generate(pair.ids, pair.mask, generation_config=settings), hf_generate(pair, **base))
    # fields that change nothing we compute are accepted
    pair.sw.generate(pair.ids, pair.mask, generation_config=GenerationConfig(use_cache=False, max_new_tokens=2))


def test_generation_config_fields_we_do_not_support_are_named(pair):
    from transformers import GenerationConfig

    config = GenerationConfig(typical_p=0.5, do_sample=True, suppress_tokens=[3])
    with pytest.raises(sw.ConfigError, match=r"generation_config sets .*suppress_tokens=\[3\], typical_p=0.5"):
        pair.sw.generate(pair.ids, pair.mask, generation_config=config)
    with pytest.raises(sw.ConfigError, match="unknown_option"):
        pair.sw.generate(pair.ids, pair.mask, generation_config={"unknown_option": 1})
    with pytest.raises(sw.ConfigError, match="generation_config: num_beams"):
        pair.sw.generate(pair.ids, pair.mask, generation_config={"num_beams": 0})
    with pytest.raises(sw.ConfigError, match="generation_config must be"):
        pair.sw.generate(pair.ids, pair.mask, generation_config=3)
    with pytest.raises(sw.ConfigError, match="pass generation_config=... by keyword"):
        pair.sw.generate(pair.ids, GenerationConfig(num_beams=2))


@pytest.mark.parametrize("start", [True, False], ids=["with_start", "without_start"])
@pytest.mark.parametrize("beams", [1, 3])
def test_decoder_input_ids_are_a_forced_prefix(pair, start, beams):
    """transformers prepends the start token unless every row starts with it; so do we."""
    prefix = pair.greedy[:, :3] if start else pair.greedy[:, 2:4].flip(1)
    kwargs = _resolve(pair, {"num_beams": beams, "max_new_tokens": None, "max_length": 9})
    theirs = hf_generate(pair, decoder_input_ids=prefix, **kwargs)
    ours = pair.sw.generate(pair.ids, pair.mask, decoder_input_ids=prefix, **kwargs)
    assert_same(ours, theirs)
    forced = prefix if start else torch.cat((pair.greedy[:, :1], prefix), dim=1)
    assert torch.equal(ours[:, : forced.shape[1]], forced)
    if beams == 1:
        static = pair.sw.generate(pair.ids, pair.mask, decoder_input_ids=prefix, static_cache=True, **kwargs)
        assert_same(static, theirs)


def test_decoder_input_ids_fill_the_cache_in_one_forward(pair):
    calls: list[int] = []
    hook = pair.sw.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    try:
        pair.sw.generate(pair.ids, pair.mask, decoder_input_ids=pair.greedy[:, :4], max_new_tokens=3)
    finally:
        hook.remove()
    assert calls[0] == 4 and set(calls[1:]) <= {1}


def test_encoder_outputs_skip_the_encoder(pair):
    with torch.no_grad():
        encoded = pair.hf.encoder(input_ids=pair.ids, attention_mask=pair.mask)  # transformers' own output
    kwargs = _resolve(pair, {"num_beams": 2})
    states = encoded.last_hidden_state  # transformers expands the output it is given for the beams, in place
    theirs = pair.hf.generate(encoder_outputs=encoded, attention_mask=pair.mask, **kwargs)
    encoded.last_hidden_state = states
    calls: list[int] = []
    hook = pair.sw.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        ours = pair.sw.generate(encoder_outputs=encoded, attention_mask=pair.mask, **kwargs)
        as_tuple = pair.sw.generate(encoder_outputs=(encoded.last_hidden_state,), attention_mask=pair.mask,
                                    **kwargs)
    finally:
        hook.remove()
    assert not calls
    assert_same(ours, theirs)
    assert_same(as_tuple, theirs)
    with pytest.raises(sw.ConfigError, match="encoder_outputs must be"):
        pair.sw.generate(encoder_outputs="states")
    with pytest.raises(sw.ConfigError, match="pass input_ids, or encoder_outputs"):
        pair.sw.generate(attention_mask=pair.mask)


def test_a_tokenizers_whole_output_reaches_the_encoder(pair, monkeypatch):
    """``generate(**tokenizer(...))``: token_type_ids go to ``encode``, which passes them to the encoder."""
    inputs = {"input_ids": pair.ids, "attention_mask": pair.mask, "token_type_ids": torch.zeros_like(pair.ids)}
    seen = {}
    real = pair.sw.encode

    def spy(*args, **kwargs):
        seen.update(kwargs)
        kwargs.pop("token_type_ids", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(pair.sw, "encode", spy)
    ours = pair.sw.generate(**inputs, **_resolve(pair, {}))
    assert torch.equal(seen["token_type_ids"], inputs["token_type_ids"])
    assert_same(ours, hf_generate(pair, **_resolve(pair, {})))  # the spy dropped them
    with pytest.raises(sw.ConfigError, match="token_type_ids has shape"):
        pair.sw.generate(pair.ids, token_type_ids=torch.zeros(1, 2, dtype=torch.long))


def test_token_type_ids_match_transformers_where_the_encoder_uses_them(pair):
    """BERT and RoBERTa add token-type embeddings; transformers' GPT-2 adds ``wte(token_type_ids)``."""
    import inspect

    if "token_type_ids" not in inspect.signature(pair.sw.encoder.forward).parameters:
        pytest.skip(f"{type(pair.sw.encoder).__name__}.forward takes no token_type_ids yet (the fwd branch adds it)")
    types = (torch.arange(pair.ids.shape[1]) >= 4).long().expand_as(pair.ids)
    kwargs = _resolve(pair, {})
    if getattr(pair.sw.encoder.config, "type_vocab_size", 2) == 1:  # RoBERTa's one row: transformers IndexErrors
        with pytest.raises(sw.ConfigError, match="token_type_ids"):
            pair.sw.generate(input_ids=pair.ids, attention_mask=pair.mask, token_type_ids=types, **kwargs)
        return
    emb = pair.sw.encoder.embeddings
    if emb.token_types is None and not emb.types_from_tokens:
        # no type table (bert-generation): transformers' generate refuses the unused argument, its forward
        # ignores it; we ignore it in both
        plain = pair.sw.generate(input_ids=pair.ids, attention_mask=pair.mask, **kwargs)
        assert_same(pair.sw.generate(input_ids=pair.ids, attention_mask=pair.mask, token_type_ids=types, **kwargs),
                    plain)
        return
    theirs = hf_generate(pair, token_type_ids=types, **kwargs)
    assert_same(pair.sw.generate(input_ids=pair.ids, attention_mask=pair.mask, token_type_ids=types, **kwargs),
                theirs)


def test_stream_after_a_prefix_yields_the_columns_generate_returns(pair):
    prefix = pair.greedy[:, :3]
    kwargs = _resolve(pair, {})
    full = pair.sw.generate(pair.ids, pair.mask, decoder_input_ids=prefix, **kwargs)
    columns = list(pair.sw.generate_stream(pair.ids, pair.mask, decoder_input_ids=prefix, **kwargs))
    assert torch.equal(torch.cat((prefix, torch.stack(columns, dim=1)), dim=1), full)
    with pytest.raises(sw.ConfigError, match="return_dict_in_generate"):
        pair.sw.generate_stream(pair.ids, return_dict_in_generate=True)


# ---------------------------------------------------------------------------------------------
# Beam search's lagged mode (CUDA's: no host sync per step), forced on the CPU


LAGGED_CASES = {
    **{f"beam_{k}": v for k, v in BEAM_CASES.items()},
    "beam_sample": SAMPLE_CASES["beam_sample"],
    "beam_sample_return2": {"do_sample": True, "num_beams": 3, "top_k": 0, "num_return_sequences": 2},
    "output_beam": OUTPUT_CASES["beam"],
    "output_beam_processors": OUTPUT_CASES["beam_processors"],
    "prefix": {"num_beams": 3, "max_new_tokens": None, "max_length": 9, "decoder_input_ids": "prefix"},
    "prefix_early": {"num_beams": 2, "early_stopping": True, "decoder_input_ids": "prefix"},
    # eos: the tokens greedy search starts with: the search stops before max_length, a step is discarded
    "stops_early": {"num_beams": 2, "early_stopping": True, "eos_token_id": "first"},
    "stops": {"num_beams": 2, "eos_token_id": "first"},
    "stops_never": {"num_beams": 2, "early_stopping": "never", "eos_token_id": "first"},
    "stops_all": {"num_beams": 2, "early_stopping": True, "eos_token_id": "all"},
}


def _beam_search_counting(lagged: bool, seen: dict[str, int]):
    """seqweave's beam_search forced to ``lagged``, counting its decode steps in ``seen["steps"]``
    and the most it may run in ``seen["allowed"]``."""
    from seqweave.generation import search

    def run(step, cache, batch_size, settings, *args, **kwargs):
        prompt = kwargs.get("prompt")
        seen.update(steps=0, allowed=settings.max_length - (1 if prompt is None else prompt.shape[1]))

        def counted(tokens: torch.Tensor) -> torch.Tensor:
            seen["steps"] += 1
            return step(tokens)

        return search.beam_search(counted, cache, batch_size, settings, *args, lagged=lagged, **kwargs)

    return run


def test_lagged_beam_search_gives_exactly_what_immediate_mode_and_transformers_give(pair, monkeypatch):
    """Lagged, the merge of finished hypotheses always runs and the stop is seen one step late:
    that extra step must change nothing, in sequences, scores, beam indices or per-step outputs.

    The lagged runs are CUDA's way on the CPU: they also reorder the cache as CUDA does (one
    gather over a few layers at a time), the immediate ones as the CPU does (layer by layer).
    """
    import seqweave.cache as cache_module
    import seqweave.generation as generation

    for case, options in LAGGED_CASES.items():
        kwargs = {**_resolve(pair, options), "return_dict_in_generate": True, "output_scores": True,
                  "output_logits": True}
        if kwargs.get("decoder_input_ids") == "prefix":
            kwargs["decoder_input_ids"] = pair.greedy[:, :3]
        if kwargs["eos_token_id"] == "first":
            kwargs["eos_token_id"] = sorted(set(pair.greedy[:, 1:3].flatten().tolist()))
        elif kwargs["eos_token_id"] == "all":
            kwargs["eos_token_id"] = sorted(set(pair.greedy[:, 1:].flatten().tolist()))
        ids, mask = pair.ids, pair.mask
        outs, seen = {}, {}
        for lagged in (False, True):
            seen[lagged] = {}
            monkeypatch.setattr(generation, "beam_search", _beam_search_counting(lagged, seen[lagged]))
            monkeypatch.setattr(cache_module, "_JOINT_REORDER_ON_CPU", lagged)
            outs[lagged] = pair.sw.generate(ids, mask, generator=torch.Generator().manual_seed(5), **kwargs)
        monkeypatch.undo()
        ours, immediate = outs[True], outs[False]
        for name in ("sequences", "sequences_scores", "beam_indices"):
            a, b = getattr(ours, name), getattr(immediate, name)
            assert a.shape == b.shape and torch.equal(a, b), f"{case}: {name}\n{a}\n{b}"
        for name in ("scores", "logits"):
            a, b = getattr(ours, name), getattr(immediate, name)
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (case, name)
        # lagged, a search that stops early decodes one more step (discarded); at max_length it cannot.
        # (most pairs stop early in the "stops" cases; the next test is sure to discard a step)
        early = seen[False]["steps"] < seen[False]["allowed"]
        assert seen[True]["steps"] == seen[False]["steps"] + early, (case, seen)
        torch.manual_seed(5)
        with torch.no_grad():
            theirs = pair.hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        assert_same(ours.sequences, theirs.sequences)
        assert_same(ours.beam_indices, theirs.beam_indices)
        torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, rtol=1e-5, atol=1e-5)
        assert _assert_same_steps(ours.scores, theirs.scores) < 1e-5


class _NoCache:
    def reorder(self, index: torch.Tensor) -> None:
        pass


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("return_sequences", [1, 2])
def test_lagged_beam_search_discards_the_step_after_the_stop(early_stopping, return_sequences):
    """A decode step that favours the eos (7), then 3: both beams end at step 2 of 6, lagged
    mode decodes step 3 and throws it away; nothing of it shows in the results."""
    from seqweave.generation import search

    scores = torch.tensor([-9.0, -9, -9, -1, -9, -9, -9, -0.5])  # [V]: eos best, 3 second
    settings = sw.GenerationSettings(num_beams=2, num_return_sequences=return_sequences, max_length=7,
                                     early_stopping=early_stopping, length_penalty=1.0,
                                     decoder_start_token_id=0, pad_token_id=0, eos_token_id=7)
    results, steps = {}, {}
    for lagged in (False, True):
        calls: list[int] = []

        def step(tokens: torch.Tensor, calls=calls) -> torch.Tensor:
            calls.append(tokens.shape[1])
            # beam rows differ so that the candidates are not all tied
            return scores.expand(tokens.shape[0], -1) - torch.arange(tokens.shape[0])[:, None] * 0.01

        outputs: dict[str, list[torch.Tensor]] = {"step_scores": [], "step_logits": [], "beam_indices": []}
        results[lagged] = search.beam_search(step, _NoCache(), 3, settings, [], torch.device("cpu"),
                                             lagged=lagged, **outputs), outputs
        steps[lagged] = len(calls)
    assert steps == {False: 2, True: 3}
    (sequences, beam_scores), outputs = results[True]
    (expected, expected_scores), expected_outputs = results[False]
    assert torch.equal(sequences, expected) and torch.equal(beam_scores, expected_scores)
    assert sequences.shape[0] == 3 * return_sequences and sequences.shape[1] <= 3  # start, <= 2 tokens
    for name, values in outputs.items():
        assert len(values) == len(expected_outputs[name])
        assert all(torch.equal(a, b) for a, b in zip(values, expected_outputs[name], strict=True)), name
