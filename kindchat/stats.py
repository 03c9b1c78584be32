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


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of the proportion hits / n (95% by default); NaNs for n = 0."""
    import math

    if not n:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_cell(hits: int, n: int) -> str:
    """`0.123 [0.100, 0.150]`: the proportion with its Wilson interval (`-` for n = 0)."""
    if not n:
        return "-"
    low, high = wilson(hits, n)
    return f"{hits / n:.3f} [{low:.3f}, {high:.3f}]"


@dataclass(frozen=True)
class SequentialTest:
    """Testing by betting (Waudby-Smith & Ramdas 2023, "Estimating means of bounded random
    variables by betting", JRSS-B): two capital processes on values in [0, 1], one betting the
    mean is above `m`, one below. If the mean is `m` (or on the other side), the chance that a
    capital *ever* reaches 2/α is at most α/2 (Ville's inequality), so the test may be looked at
    after every value — no peeking penalty, unlike a fixed-n interval checked again and again.
    `up`/`down`: which capital crossed (its running maximum), and when.
    """

    n: int
    log_up: float  # running max of log capital betting mean > m
    log_down: float
    log_threshold: float  # log(2 / alpha)
    up_at: int | None  # the value at which the up-capital first crossed
    down_at: int | None

    @property
    def up(self) -> bool:
        return self.up_at is not None

    @property
    def down(self) -> bool:
        return self.down_at is not None

    def __str__(self) -> str:
        import math

        return (
            f"evidence ×{math.exp(self.log_up):.3g} for, ×{math.exp(self.log_down):.3g} against "
            f"(decides at ×{math.exp(self.log_threshold):.3g})"
        )


def betting_test(
    values: Sequence[float],
    m: float = 0.5,
    alpha: float = 0.05,
    cap: float = 0.75,
    prior_n: float = 10.0,
) -> SequentialTest:
    """:class:`SequentialTest` of `values` (in [0, 1], in arrival order) against the mean `m`.

    Bets by aGRAPA (the paper's approximate growth-rate adaptive rule): before each value, the
    Kelly bet for the mean and variance seen so far, λ = (μ̂ − m) / (σ̂² + (μ̂ − m)²), placed
    on the side μ̂ leans to and clipped at `cap`/m; μ̂ and σ̂² start from `prior_n`
    pseudo-values at ½ with variance ¼, so the first few votes cannot bet big. Every bet is
    fixed before its value is seen, so each capital is a nonnegative supermartingale under the
    null whatever the rule; the rule only decides how fast true evidence grows (bench:
    bench/challenger_decisions.py)."""
    import math

    threshold = math.log(2 / alpha)
    log_up = log_down = 0.0
    best_up = best_down = 0.0
    up_at = down_at = None
    total, squares, count = 0.5 * prior_n, 0.25 * prior_n, prior_n
    for t, x in enumerate(values, 1):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"values must lie in [0, 1], got {x}")
        mean = total / count
        variance = max(squares / count, 1e-4)
        lean = mean - m
        kelly = lean / (variance + lean * lean)
        log_up += math.log1p(min(max(kelly, 0.0), cap / m) * (x - m))
        log_down += math.log1p(-min(max(-kelly, 0.0), cap / (1 - m)) * (x - m))
        best_up, best_down = max(best_up, log_up), max(best_down, log_down)
        if up_at is None and log_up >= threshold:
            up_at = t
        if down_at is None and log_down >= threshold:
            down_at = t
        total += x
        squares += (x - mean) ** 2
        count += 1
    return SequentialTest(len(values), best_up, best_down, threshold, up_at, down_at)
