"""Properties of generate() over tiny random models of every registered pairing (hypothesis).

Each example builds a tiny model of a drawn encoder x decoder pairing (the architectures'
``tiny_config``) with random weights from a drawn seed, a drawn batch of sources of
different lengths with padding, and drawn generation arguments. Examples are derandomised
so that the suite is deterministic.
"""

from __future__ import annotations

import math

import seqweave as sw
import torch
from conftest import DECODERS, ENCODERS, REGISTRY, randomize
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from seqweave import generation

START, PAD = 2, 1
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def tiny_model(encoder: str, decoder: str, seed: int) -> sw.EncoderDecoder:
    torch.manual_seed(seed)
    model = sw.EncoderDecoder(
        sw.build_encoder(encoder, **REGISTRY.get(encoder).tiny_config),
        sw.build_decoder(decoder, **REGISTRY.get(decoder).tiny_config),
        decoder_start_token_id=START,
        pad_token_id=PAD,
    )
    return randomize(model, seed, std=0.5).eval()


@st.composite
def setups(draw: st.DrawFn) -> tuple[sw.EncoderDecoder, torch.Tensor, torch.Tensor, list[int]]:
    """A model, sources [b, s] with right padding, their mask, and each source's length."""
    encoder, decoder = draw(st.sampled_from(ENCODERS)), draw(st.sampled_from(DECODERS))
    seed = draw(st.integers(0, 2**16))
    note(f"tiny_model({encoder!r}, {decoder!r}, {seed})")
    model = tiny_model(encoder, decoder, seed)
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    vocab = model.decoder.vocab_size
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return model, ids.masked_fill(mask == 0, 0), mask, lengths


def eos_of(model: sw.EncoderDecoder, ids: torch.Tensor, mask: torch.Tensor, pick: int, steps: int) -> int:
    """A token greedy search produces (so that some rows end early), chosen by ``pick``."""
    tokens = model.generate(ids, mask, max_new_tokens=steps)[:, 1:].flatten().tolist()
    return tokens[pick % len(tokens)]


def new_lengths(out: torch.Tensor, eos: int | None) -> list[int]:
    """Each row's number of new tokens: up to and including its first eos, else all of them."""
    rows = out[:, 1:].tolist()
    return [row.index(eos) + 1 if eos is not None and eos in row else len(row) for row in rows]


@SETTINGS
@given(setup=setups(), steps=st.integers(1, 8), pick=st.integers(0, 100))
def test_cached_generation_equals_uncached(setup, steps, pick):
    """generate() (cache, one token per step) = greedy search recomputing the whole prefix every step."""
    model, ids, mask, _ = setup
    eos = eos_of(model, ids, mask, pick, steps)
    out = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos)
    # RoBERTa-style positions skip pad-id tokens when a prefix is embedded at once, not when it
    # is decoded one token at a time (transformers alike): such outputs are not comparable.
    skip = getattr(model.decoder.config, "pad_token_id", None)
    ends = new_lengths(out, eos)
    assume(all(skip not in out[row, 1 : 1 + n].tolist() for row, n in enumerate(ends)))
    prefix = torch.full((ids.shape[0], 1), START)
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, mask, decoder_input_ids=prefix).logits[:, -1].argmax(-1)
            nxt = torch.where(done, PAD, nxt)
            done |= nxt == eos
            prefix = torch.cat([prefix, nxt[:, None]], dim=1)
            if done.all():
                break
    assert torch.equal(out, prefix)
    assert torch.equal(
        model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos, static_cache=True), out
    )


@SETTINGS
@given(setup=setups(), steps=st.integers(1, 8), pick=st.integers(0, 100), beams=st.sampled_from([1, 3]))
def test_a_batch_equals_its_rows_one_by_one(setup, steps, pick, beams):
    """Each padded row of a batch decodes exactly as it does alone, unpadded; then only padding follows."""
    model, ids, mask, lengths = setup
    eos = eos_of(model, ids, mask, pick, steps)
    batch = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos, num_beams=beams)
    for i, n in enumerate(lengths):
        alone = model.generate(ids[i : i + 1, :n], max_new_tokens=steps, eos_token_id=eos, num_beams=beams)
        width = alone.shape[1]
        assert torch.equal(batch[i, :width], alone[0])
        assert (batch[i, width:] == PAD).all()


@SETTINGS
@given(setup=setups(), steps=st.integers(1, 8), pick=st.integers(0, 100))
def test_beam_search_with_one_beam_is_greedy_search(setup, steps, pick):
    """One beam that stops at its first finished hypothesis (early_stopping=True) follows the argmax."""
    model, ids, mask, _ = setup
    eos = eos_of(model, ids, mask, pick, steps)
    greedy = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos)
    with torch.no_grad():
        p = generation._prepare(model, ids, mask, {"max_new_tokens": steps, "eos_token_id": eos}, None)
        settings = p.settings.model_copy(update={"num_beams": 1, "early_stopping": True})
        beams, _ = generation.beam_search(p.step, p.cache, p.batch_size, settings, p.processors, p.device)
    assert torch.equal(beams, greedy)


@SETTINGS
@given(setup=setups(), steps=st.integers(1, 8), pick=st.integers(0, 100), seed=st.integers(0, 99))
def test_sampling_with_top_k_1_is_greedy_search(setup, steps, pick, seed):
    model, ids, mask, _ = setup
    eos = eos_of(model, ids, mask, pick, steps)
    greedy = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos)
    sampled = model.generate(
        ids,
        mask,
        max_new_tokens=steps,
        eos_token_id=eos,
        do_sample=True,
        top_k=1,
        temperature=1.7,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(sampled, greedy)


@SETTINGS
@given(
    setup=setups(),
    steps=st.integers(1, 8),
    pick=st.integers(0, 100),
    beams=st.integers(2, 4),
    length_penalty=st.sampled_from([1.0, 0.5, 2.0, -0.5]),
    early_stopping=st.sampled_from([False, True, "never"]),
)
def test_beam_scores_are_teacher_forced_log_probabilities(
    setup, steps, pick, beams, length_penalty, early_stopping
):
    """score = sum of the tokens' log-probabilities (eos included) / new_tokens ** length_penalty."""
    model, ids, mask, _ = setup
    eos = eos_of(model, ids, mask, pick, steps)
    out = model.generate_with_scores(
        ids,
        mask,
        max_new_tokens=steps,
        eos_token_id=eos,
        num_beams=beams,
        num_return_sequences=beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    sources = ids.repeat_interleave(beams, 0)
    source_mask = mask.repeat_interleave(beams, 0)
    with torch.no_grad():
        logp = model(sources, source_mask, decoder_input_ids=out.sequences[:, :-1]).logits.log_softmax(-1)
    token_logp = logp.gather(2, out.sequences[:, 1:, None]).squeeze(2)  # [rows, width - 1]
    # A decoder whose positions skip padding (RoBERTa's) places a generated pad-id token differently
    # when teacher-forced (the whole prefix is counted at once) than when decoded one token at a
    # time (as transformers does too); such rows are left out.
    skip = getattr(model.decoder.config, "pad_token_id", None)
    for row, n in enumerate(new_lengths(out.sequences, eos)):
        if skip is not None and skip in out.sequences[row, 1:n].tolist():
            continue
        expected = token_logp[row, :n].sum().item() / n**length_penalty
        assert math.isclose(out.scores[row].item(), expected, rel_tol=1e-4, abs_tol=1e-4), (row, n)
    # best first within each source
    scores = out.scores.view(-1, beams)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


@SETTINGS
@given(
    setup=setups(),
    steps=st.integers(1, 8),
    picks=st.lists(st.integers(0, 100), min_size=1, max_size=3),
    beams=st.integers(2, 4),
    length_penalty=st.sampled_from([1.0, 0.5, 2.0, -0.5]),
    early_stopping=st.sampled_from([False, True, "never"]),
    sample=st.booleans(),
)
def test_lagged_beam_search_equals_immediate(setup, steps, picks, beams, length_penalty, early_stopping, sample):
    """CUDA's lagged beam search (merge always, stop seen a step late) gives exactly the immediate results."""
    model, ids, mask, _ = setup
    eos = sorted({eos_of(model, ids, mask, pick, steps) for pick in picks})
    options = {"max_new_tokens": steps, "eos_token_id": eos, "num_beams": beams, "num_return_sequences": beams,
               "length_penalty": length_penalty, "early_stopping": early_stopping, "do_sample": sample}
    results = {}
    for lagged in (False, True):
        with torch.no_grad():
            p = generation._prepare(model, ids, mask, options, None)
            outputs: dict[str, list[torch.Tensor]] = {"step_scores": [], "step_logits": [], "beam_indices": []}
            found = generation.beam_search(p.step, p.cache, p.batch_size, p.settings, p.processors, p.device,
                                           generator=torch.Generator().manual_seed(3), lagged=lagged, **outputs)
        results[lagged] = (*found, *(v for values in outputs.values() for v in values))
    assert len(results[True]) == len(results[False])
    assert all(torch.equal(a, b) for a, b in zip(results[True], results[False], strict=True))


@SETTINGS
@given(
    setup=setups(),
    steps=st.integers(1, 8),
    pick=st.integers(0, 100),
    mode=st.sampled_from(["greedy", "sample", "beam"]),
)
def test_nothing_but_padding_after_eos(setup, steps, pick, mode):
    model, ids, mask, _ = setup
    eos = eos_of(model, ids, mask, pick, steps)
    kwargs = {
        "greedy": {},
        "sample": {"do_sample": True, "generator": torch.Generator().manual_seed(pick)},
        "beam": {"num_beams": 3},
    }[mode]
    out = model.generate(ids, mask, max_new_tokens=steps, eos_token_id=eos, **kwargs)
    assert (out[:, 0] == START).all()
    assert out.shape[1] <= 1 + steps
    ends = new_lengths(out, eos)
    for row, n in enumerate(ends):
        assert (out[row, 1 + n :] == PAD).all()
    # generation stops when every row is done: the longest row fills the width
    assert max(ends) == out.shape[1] - 1


@SETTINGS
@given(setup=setups(), steps=st.integers(1, 8), pick=st.integers(0, 100), beams=st.sampled_from([1, 3]))
def test_exactly_max_new_tokens_when_eos_never_comes(setup, steps, pick, beams):
    model, ids, mask, _ = setup
    out = model.generate(ids, mask, max_new_tokens=steps, num_beams=beams)  # no eos at all
    assert out.shape == (ids.shape[0], 1 + steps)
    eos = eos_of(model, ids, mask, pick, steps)
    held = model.generate(
        ids, mask, max_new_tokens=steps, min_new_tokens=steps, eos_token_id=eos, num_beams=beams
    )
    assert held.shape == (ids.shape[0], 1 + steps)
    assert not (held[:, 1:] == eos).any()
