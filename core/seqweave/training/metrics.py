"""Generation metrics for evaluation: corpus BLEU (sacrebleu) and ROUGE-L (rouge-score).

Both libraries come with the optional ``train`` extra (``pip install 'seqweave[train]'``)
and are imported only when a metric is computed, so that training without generation
(and ``import seqweave``) never needs them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

__all__ = ["generation_metrics"]

_MISSING = (
    "evaluation with generation (train.eval_generate) scores BLEU and ROUGE-L with sacrebleu and "
    "rouge-score, which are not installed ({name} is missing): pip install 'seqweave[train]'"
)


def _require(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(_MISSING.format(name=name.split(".")[0])) from e


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and mean ROUGE-L F1 of generated texts against one reference each, both 0-100.

    BLEU is sacrebleu's ``corpus_bleu`` with its defaults (13a tokenisation, exponential
    smoothing): n-gram counts are summed over the corpus, not averaged per sentence.
    ROUGE-L is rouge-score's ``RougeScorer(["rougeL"])`` F-measure (no stemming), averaged over
    the pairs and scaled by 100.

    Args:
        predictions: generated texts, one per example.
        references: the expected texts, in the same order.

    Returns:
        ``{"bleu": float, "rougeL": float}``.

    Raises:
        ConfigError: sacrebleu or rouge-score is not installed.
        ValueError: the two lists differ in length or are empty.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    sacrebleu = _require("sacrebleu")
    rouge_scorer = _require("rouge_score.rouge_scorer")
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {"bleu": float(bleu), "rougeL": 100.0 * sum(rouge) / len(rouge)}
