"""Music-understanding metrics of the paper's Table 2: key (MIREX), tempo (Acc1/Acc2),
instrument F1.

Every function takes parallel sequences of model answers (free text) and labels and returns
`MetricResult`s (value, n, 95% interval, details). Genre lives in `genre.py` (it needs an embedder).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import mir_eval.key
import numpy as np

from llark_jax.eval.instruments import DEFAULT_ALIASES, InstrumentMatcher, normalize_label
from llark_jax.eval.intervals import (
    BOOTSTRAP,
    MetricResult,
    bootstrap_interval,
    clopper_pearson,
    mean_result,
    proportion_result,
)
from llark_jax.eval.parse import parse_key, parse_tempo, strip_completion

MIREX_RELATION = {1.0: "same", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}
TEMPO_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def _check_lengths(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")


def key_mirex(predictions: Sequence[str], labels: Sequence[str]) -> MetricResult:
    """Mean MIREX weighted key score (mir_eval.key); unparseable answers score 0 and are counted.

    Labels are parsed with the same parser ("F minor", "Ab minor", "C# major"); a label that does
    not parse is skipped and listed in `details["invalid_labels"]` (by position).
    """
    _check_lengths(predictions, labels)
    scores, relations, invalid_labels = [], Counter(), []
    for i, (answer, label) in enumerate(zip(predictions, labels, strict=True)):
        reference = parse_key(label)
        if reference is None:
            invalid_labels.append(i)
            continue
        estimate = parse_key(strip_completion(answer))
        score = 0.0 if estimate is None else float(mir_eval.key.weighted_score(reference, estimate))
        relations["unparsed" if estimate is None else MIREX_RELATION[score]] += 1
        scores.append(score)
    exact = relations["same"]
    details = {
        "n_unparsed": relations["unparsed"],
        "relations": dict(relations),
        "exact_accuracy": exact / len(scores) if scores else float("nan"),
        "exact_accuracy_ci95": list(clopper_pearson(exact, len(scores))),
        "invalid_labels": invalid_labels,
    }
    return mean_result("key_mirex", scores, details)


def tempo_hits(
    estimate: float | None, reference: float, tolerance: float = 0.04
) -> tuple[bool, bool]:
    """(Acc1, Acc2) for one clip: within ±tolerance of reference × 1, or of reference × any of
    TEMPO_FACTORS (the tolerance is relative to the scaled reference)."""
    if estimate is None:
        return False, False
    within = [abs(estimate - reference * f) <= tolerance * reference * f for f in TEMPO_FACTORS]
    return within[0], any(within)


def tempo_accuracy(
    predictions: Sequence[str], labels_bpm: Sequence[float], tolerance: float = 0.04
) -> dict[str, MetricResult]:
    """{"tempo_acc1", "tempo_acc2"} with Clopper-Pearson intervals.

    Clips whose reference tempo is not positive are excluded (GiantSteps has three) and counted in
    `details["excluded_labels"]`; unparseable answers count as misses (`details["n_unparsed"]`).
    """
    _check_lengths(predictions, labels_bpm)
    acc1, acc2, excluded, unparsed = [], [], [], 0
    for i, (answer, reference) in enumerate(zip(predictions, labels_bpm, strict=True)):
        if not reference or float(reference) <= 0:
            excluded.append(i)
            continue
        estimate = parse_tempo(strip_completion(answer))
        unparsed += estimate is None
        hit1, hit2 = tempo_hits(estimate, float(reference), tolerance)
        acc1.append(hit1)
        acc2.append(hit2)
    details = {"n_unparsed": unparsed, "excluded_labels": excluded, "tolerance": tolerance}
    return {
        "tempo_acc1": proportion_result("tempo_acc1", acc1, details),
        "tempo_acc2": proportion_result(
            "tempo_acc2", acc2, {**details, "factors": "1,2,1/2,3,1/3"}
        ),
    }


def _f1(tp: float, fp: float, fn: float) -> float:
    """2tp / (2tp + fp + fn); 1.0 when there is nothing to find and nothing was claimed."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def instrument_f1(
    predictions: Sequence[str],
    label_sets: Sequence[Iterable[str]],
    vocabulary: Iterable[str] | None = None,
    aliases: Mapping[str, Iterable[str]] = DEFAULT_ALIASES,
    label_map: Mapping[str, str | None] | None = None,
) -> dict[str, MetricResult]:
    """{"instruments_micro_f1", "instruments_clip_f1"} with bootstrap intervals over clips.

    `label_map` maps raw label names (lower-cased) to a canonical name, or to None to ignore that
    instrument (the paper's MedleyDB protocol: 67 raw names onto 18, "tabla" etc. dropped);
    labels it does not list are kept.

    The candidate vocabulary is the union of all normalised labels plus `vocabulary`; an answer
    counts a true positive per labelled instrument it mentions, a false positive per other
    vocabulary instrument it mentions (once per canonical name), a false negative per labelled
    instrument it does not mention. Micro F1 sums tp/fp/fn over all clips (accumulated, unlike the
    reference); clip F1 averages per-clip F1.
    """
    _check_lengths(predictions, label_sets)
    mapping = {k.lower(): v for k, v in (label_map or {}).items()}
    mapped = [[mapping.get(x.lower(), x) for x in labels] for labels in label_sets]
    truths = [{normalize_label(x, aliases) for x in labels if x is not None} for labels in mapped]
    matcher = InstrumentMatcher({*set().union(*truths), *(vocabulary or ())}, aliases)
    counts = np.zeros((len(truths), 3))  # per clip: tp, fp, fn
    for i, (answer, truth) in enumerate(zip(predictions, truths, strict=True)):
        said = matcher.mentions(strip_completion(answer))
        counts[i] = (len(said & truth), len(said - truth), len(truth - said))
    clip_f1 = [_f1(*row) for row in counts]
    micro = lambda idx: _f1(*counts[idx].sum(axis=0))
    totals = counts.sum(axis=0)
    details = {
        "tp": int(totals[0]),
        "fp": int(totals[1]),
        "fn": int(totals[2]),
        "vocabulary": matcher.vocabulary,
    }
    all_idx = np.arange(len(truths))
    return {
        "instruments_micro_f1": MetricResult(
            name="instruments_micro_f1",
            value=micro(all_idx) if len(truths) else float("nan"),
            n=len(truths),
            ci95=bootstrap_interval(len(truths), micro),
            interval=BOOTSTRAP,
            details=details,
        ),
        "instruments_clip_f1": mean_result("instruments_clip_f1", clip_f1, details),
    }
