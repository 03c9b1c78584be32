"""Small statistics shared by evaluation, gates and the leaderboard."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = lambda x: float(np.mean(x)),
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """`statistic(values)` with a percentile bootstrap interval (rows resampled with replacement)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("cannot estimate from no values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(resamples, data.size))
    stats = np.array([statistic(data[row]) for row in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Estimate(statistic(data), float(low), float(high), int(data.size))


def cluster_bootstrap(
    clusters: Sequence[Sequence[float]],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The mean of all values with a bootstrap interval that resamples whole clusters (e.g. a
    voter's votes together: votes of one person are not independent draws). `n`: clusters."""
    groups = [np.asarray(c, dtype=float) for c in clusters if len(c)]
    if not groups:
        raise ValueError("cannot estimate from no values")
    sums = np.array([g.sum() for g in groups])
    sizes = np.array([g.size for g in groups], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups), size=(resamples, len(groups)))
    stats = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Estimate(float(sums.sum() / sizes.sum()), float(low), float(high), len(groups))
