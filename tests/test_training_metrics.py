"""training.metrics: BLEU and ROUGE-L against values computed by hand, and the missing-extra error."""

from __future__ import annotations

import math
import sys

import pytest
from seqweave import ConfigError
from seqweave.training.metrics import generation_metrics

pytest.importorskip("sacrebleu", reason="the train extra (in dev) installs sacrebleu")
pytest.importorskip("rouge_score", reason="the train extra (in dev) installs rouge-score")

SIX = "one two three four five six"


def test_identical_texts_score_100():
    m = generation_metrics([SIX, "seven eight nine ten"], [SIX, "seven eight nine ten"])
    assert m == pytest.approx({"bleu": 100.0, "rougeL": 100.0})


def test_disjoint_texts_score_0():
    m = generation_metrics(["alpha beta gamma delta"], [SIX])
    assert m == pytest.approx({"bleu": 0.0, "rougeL": 0.0})


def test_bleu_is_the_geometric_mean_of_ngram_precisions():
    # Last word wrong: 1..4-gram precisions 5/6, 4/5, 3/4, 2/3; equal lengths, so no brevity penalty.
    m = generation_metrics(["one two three four five seven"], [SIX])
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25, abs=1e-9)
    # LCS 5 of 6 words on both sides: P = R = F = 5/6.
    assert m["rougeL"] == pytest.approx(100 * 5 / 6)


def test_bleu_brevity_penalty():
    # Every n-gram right, 5 words for a 6-word reference: BP = exp(1 - 6/5).
    m = generation_metrics(["one two three four five"], [SIX])
    assert m["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 5), abs=1e-9)
    # LCS 5: P = 1, R = 5/6, F = 2PR / (P + R) = 10/11.
    assert m["rougeL"] == pytest.approx(100 * 10 / 11)


def test_bleu_sums_counts_over_the_corpus_and_rouge_averages_pairs():
    preds = [SIX, "one two three four five seven"]
    refs = [SIX, "one two three four five eight"]
    m = generation_metrics(preds, refs)
    # Matched / total n-grams over both sentences: 11/12, 9/10, 7/8, 5/6 (not a mean of sentence BLEUs).
    assert m["bleu"] == pytest.approx(100 * (11 / 12 * 9 / 10 * 7 / 8 * 5 / 6) ** 0.25, abs=1e-9)
    assert m["rougeL"] == pytest.approx(100 * (1 + 5 / 6) / 2)


def test_rouge_l_uses_the_longest_common_subsequence_not_order_blind_overlap():
    # Same words reversed: LCS is 1 of 3, F = 1/3 (a bag-of-words score would be 1).
    m = generation_metrics(["three two one"], ["one two three"])
    assert m["rougeL"] == pytest.approx(100 / 3)


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        generation_metrics([], [])


@pytest.mark.parametrize("missing", ["sacrebleu", "rouge_score"])
def test_a_missing_extra_names_the_install_command(monkeypatch, missing):
    for name in [n for n in sys.modules if n == missing or n.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'seqweave\[train\]'") as e:
        generation_metrics(["a"], ["a"])
    assert missing in str(e.value)
