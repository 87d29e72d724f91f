"""95% intervals and the uniform result type returned by every metric.

Proportions (accuracy, win rate, match rate) get exact Clopper-Pearson intervals from Beta
quantiles; every other statistic (MIREX score, F1, caption metrics) gets a percentile bootstrap
over items (default 1000 resamples, fixed seed, so reports are reproducible). The method used is
always recorded in `MetricResult.interval`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

CLOPPER_PEARSON = "clopper-pearson"
BOOTSTRAP = "percentile-bootstrap"


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric value with its sample size and 95% interval.

    Attributes:
      name: metric name, e.g. "key_mirex", "tempo_acc2".
      value: the point estimate.
      n: number of scored items.
      ci95: (low, high) 95% interval.
      interval: how `ci95` was computed (`clopper-pearson` or `percentile-bootstrap`).
      details: extra counts (unparseable answers, per-class numbers, ...), JSON-serialisable.
    """

    name: str
    value: float
    n: int
    ci95: tuple[float, float]
    interval: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "n": self.n,
            "ci95": list(self.ci95),
            "interval": self.interval,
            **self.details,
        }

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (`result["value"]`) to the fields and details."""
        return self.to_dict()[key]


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for `successes` out of `n` (Beta quantiles); (0, 1) when n == 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"clopper_pearson: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else stats.beta.ppf(alpha / 2, successes, n - successes + 1)
    high = 1.0 if successes == n else stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes)
    return (float(low), float(high))


def bootstrap_interval(
    n_items: int,
    statistic: Callable[[np.ndarray], float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap: `statistic(indices)` over `n_resamples` resamples of item indices.

    `statistic` receives an int array of length `n_items` (indices drawn with replacement) so that
    statistics which are not plain means (micro F1, corpus BLEU) can recompute themselves.
    """
    if n_items == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array(
        [statistic(rng.integers(0, n_items, size=n_items)) for _ in range(n_resamples)]
    )
    alpha = 1.0 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def proportion_result(
    name: str, hits: Sequence[bool], details: dict[str, Any] | None = None
) -> MetricResult:
    """Mean of booleans with a Clopper-Pearson interval."""
    k, n = int(np.sum(hits)), len(hits)
    return MetricResult(
        name=name,
        value=k / n if n else float("nan"),
        n=n,
        ci95=clopper_pearson(k, n),
        interval=CLOPPER_PEARSON,
        details={"successes": k, **(details or {})},
    )


def mean_result(
    name: str,
    scores: Sequence[float],
    details: dict[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """Mean of per-item scores with a percentile-bootstrap interval."""
    scores_n = np.asarray(scores, dtype=np.float64)
    return MetricResult(
        name=name,
        value=float(scores_n.mean()) if len(scores_n) else float("nan"),
        n=len(scores_n),
        ci95=bootstrap_interval(
            len(scores_n), lambda idx: float(scores_n[idx].mean()), n_resamples, seed=seed
        ),
        interval=BOOTSTRAP,
        details=dict(details or {}),
    )
