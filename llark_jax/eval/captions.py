"""Caption metrics (paper §F.2.1): BLEU-1..4, METEOR, ROUGE-L, CIDEr from pycocoevalcap, plus the
token-count and vocabulary statistics of Figures 11-13.

Text is lower-cased and split into word tokens (letters/digits, inner apostrophes) by `tokenize`,
the same for hypotheses and references, instead of the Stanford PTB tokenizer (which needs java for
every metric). METEOR is the reference METEOR 1.5 jar shipped with pycocoevalcap and needs `java`
on PATH; without it the METEOR entry says "unavailable" with the reason (no silent substitute).

Intervals: percentile bootstrap over clips. BLEU is recomputed as a corpus score on each resample
(from the cooked n-gram statistics, so cheap); ROUGE-L and CIDEr values are means of per-clip scores
and are bootstrapped as such (CIDEr's document frequencies stay those of the full set); METEOR's
interval bootstraps its per-clip scores (its corpus value aggregates statistics, so it can sit
slightly off the per-clip mean).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from llark_jax.eval.intervals import BOOTSTRAP, MetricResult, bootstrap_interval, mean_result
from llark_jax.eval.parse import strip_completion

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; the template's "###" separator is removed first."""
    return _TOKEN.findall(strip_completion(text).lower())


def _as_references(label: str | Sequence[str]) -> list[str]:
    return [label] if isinstance(label, str) else list(label)


def _bleu_results(gts: dict, res: dict) -> list[MetricResult]:
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for key in gts:
        scorer += (res[key][0], gts[key])
    values, _ = scorer.compute_score(option="closest", verbose=0)
    crefs, ctest = list(scorer.crefs), list(scorer.ctest)

    def corpus_bleu(idx: np.ndarray, order: int) -> float:
        sample = scorer.copy()
        sample.crefs, sample.ctest = [crefs[i] for i in idx], [ctest[i] for i in idx]
        return float(sample.compute_score(option="closest", verbose=0)[0][order])

    return [
        MetricResult(
            name=f"bleu{order + 1}",
            value=float(values[order]),
            n=len(gts),
            ci95=bootstrap_interval(len(gts), lambda idx, o=order: corpus_bleu(idx, o), 200),
            interval=BOOTSTRAP,
        )
        for order in range(4)
    ]


def _meteor_result(gts: dict, res: dict) -> MetricResult | dict[str, Any]:
    if shutil.which("java") is None:
        return {"name": "meteor", "unavailable": "java not found on PATH (METEOR 1.5 is a jar)"}
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        value, per_clip = Meteor().compute_score(gts, res)
    except (OSError, ValueError) as error:
        return {"name": "meteor", "unavailable": f"METEOR jar failed: {error}"}
    result = mean_result("meteor", per_clip, {"per_clip_mean": float(np.mean(per_clip))})
    return MetricResult("meteor", float(value), result.n, result.ci95, BOOTSTRAP, result.details)


def length_statistics(texts: Sequence[str]) -> dict[str, float]:
    """Token counts (mean/median/min/max/total) and vocabulary size / type-token ratio."""
    tokens = [tokenize(t) for t in texts]
    counts = np.array([len(t) for t in tokens]) if tokens else np.zeros(0)
    vocabulary = {w for t in tokens for w in t}
    total = int(counts.sum())
    return {
        "n_texts": len(texts),
        "tokens_mean": float(counts.mean()) if len(counts) else 0.0,
        "tokens_median": float(np.median(counts)) if len(counts) else 0.0,
        "tokens_min": int(counts.min()) if len(counts) else 0,
        "tokens_max": int(counts.max()) if len(counts) else 0,
        "tokens_total": total,
        "vocabulary_size": len(vocabulary),
        "type_token_ratio": len(vocabulary) / total if total else 0.0,
    }


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    meteor: bool = True,
) -> dict[str, Any]:
    """All caption metrics: {"bleu1".."bleu4","rouge_l","cider","meteor": MetricResult or
    {"unavailable": reason}, "lengths": {"predictions": stats, "references": stats}}."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("caption_metrics: no captions to score")
    res = {i: [" ".join(tokenize(p)) or "<empty>"] for i, p in enumerate(predictions)}
    gts = {
        i: [" ".join(tokenize(r)) or "<empty>" for r in _as_references(refs)]
        for i, refs in enumerate(references)
    }
    results: dict[str, Any] = {r.name: r for r in _bleu_results(gts, res)}
    for name, scorer in (("rouge_l", Rouge()), ("cider", Cider())):
        _, per_clip = scorer.compute_score(gts, res)
        results[name] = mean_result(name, per_clip)
    if meteor:
        results["meteor"] = _meteor_result(gts, res)
    results["lengths"] = {
        "predictions": length_statistics(predictions),
        "references": length_statistics([r for refs in references for r in _as_references(refs)]),
    }
    return results
