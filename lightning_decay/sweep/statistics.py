"""Seed statistics for sweep results: Student-t quantiles, t intervals of a mean, of a difference of
two means (paired by seed, or Welch), of a least-squares slope, and a verdict that says whether a difference is
larger than the seed spread.

All intervals are two-sided at ``confidence`` (0.95 by default):

* mean of ``n`` values: ``mean +- t(1 - a/2, n - 1) * s / sqrt(n)``, ``s`` the sample standard deviation
  (``ddof=1``), ``a = 1 - confidence``;
* difference ``mean(a) - mean(b)``, ``paired`` (the same seeds on both sides: same initialization and data order):
  the mean interval of the per-seed differences ``a_k - b_k``; unpaired: Welch's interval,
  ``+- t(1 - a/2, nu) * sqrt(s_a^2/n_a + s_b^2/n_b)`` with the Welch-Satterthwaite ``nu``;
* least-squares slope of ``v`` on ``u`` (``n`` points): ``+- t(1 - a/2, n - 2) * se``,
  ``se = sqrt(sum(residual^2) / (n - 2) / sum((u - mean(u))^2))``.

The quantiles and the mean, paired and Welch intervals are :mod:`scipy.stats`' (``t``, ``ttest_1samp``,
``ttest_rel``, ``ttest_ind(equal_var=False)`` and their ``confidence_interval``), the slope and its standard error
:func:`scipy.stats.linregress`'s; this module adds the NaN handling, the cases scipy leaves undefined (one value, no
spread) and the :class:`Interval` record.

With three seeds a t interval is wide (``t(0.975, 2) = 4.30``): that is the honest price of three seeds, and why
every verdict states its interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "BestCell",
    "Interval",
    "best_cell",
    "compare_best_cells",
    "describe",
    "difference_interval",
    "mean_interval",
    "slope_interval",
    "student_t_cdf",
    "t_quantile",
    "verdict",
]


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom (``df = inf``: the standard normal);
    :func:`scipy.stats.t.cdf`."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(stats.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (:func:`scipy.stats.t.ppf`), e.g.
    ``t_quantile(0.975, 2) = 4.3027``; ``df = inf``: the normal quantile (1.95996)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided t interval ``[low, high]`` (NaN bounds when ``n`` is too small for one).

    ``spread`` is the standard deviation of the values behind a mean (of the per-seed differences when paired;
    NaN for a slope), ``se`` the standard error of the estimate, ``df`` the t distribution's degrees of freedom.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    df: float
    se: float
    spread: float
    method: str

    @property
    def half_width(self) -> float:
        """``(high - low) / 2``."""
        return (self.high - self.low) / 2.0

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (False when the interval is undefined)."""
        return bool(self.low <= value <= self.high)

    def excludes(self, value: float) -> bool:
        """Whether the interval is defined and ``value`` lies outside it."""
        return bool(math.isfinite(self.low) and math.isfinite(self.high) and not self.low <= value <= self.high)

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        """``estimate [low, high]`` (times ``scale``, e.g. 100 for percent)."""
        e, lo, hi = (v * scale for v in (self.estimate, self.low, self.high))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return f"{e:.{digits}g} (n={self.n}, no interval)"
        return f"{e:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _finite(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def mean_interval(values: ArrayLike, confidence: float = 0.95) -> Interval:
    """Mean of the finite ``values`` with its t interval (``n - 1`` degrees of freedom); no interval for n < 2."""
    confidence = _check_confidence(confidence)
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        raise ValueError("no finite values")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, confidence, n, 0.0, math.nan, math.nan, "t")
    spread = float(x.std(ddof=1))
    se = spread / math.sqrt(n)
    if se == 0.0:  # no spread: scipy's statistic is undefined, the interval is the point
        return Interval(mean, mean, mean, confidence, n, float(n - 1), 0.0, 0.0, "t")
    low, high = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return Interval(mean, float(low), float(high), confidence, n, float(n - 1), se, spread, "t")


def difference_interval(a: ArrayLike, b: ArrayLike, confidence: float = 0.95, paired: bool = False) -> Interval:
    """``mean(a) - mean(b)`` with its interval: paired (``a[k]``, ``b[k]`` from the same seed; the t interval of the
    differences, pairs with a non-finite side dropped) or Welch's (unpaired, unequal variances)."""
    confidence = _check_confidence(confidence)
    if paired:
        x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"paired samples must have the same length, got {x.size} and {y.size}")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        result = mean_interval(x - y, confidence)
        if x.size >= 2 and result.se > 0.0:
            low, high = stats.ttest_rel(x, y).confidence_interval(confidence)
            result = Interval(**{**asdict(result), "low": float(low), "high": float(high)})
        return Interval(**{**asdict(result), "method": "paired t"})
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        raise ValueError("both samples need a finite value")
    estimate = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence, int(x.size + y.size), 0.0, math.nan, math.nan,
                        "Welch t")
    va, vb = float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Interval(estimate, estimate, estimate, confidence, int(x.size + y.size), math.inf, 0.0, 0.0, "Welch t")
    welch = stats.ttest_ind(x, y, equal_var=False)
    low, high = welch.confidence_interval(confidence)
    return Interval(estimate, float(low), float(high), confidence, int(x.size + y.size), float(welch.df), se,
                    math.nan, "Welch t")


def slope_interval(u: ArrayLike, v: ArrayLike, confidence: float = 0.95) -> Interval:
    """Least-squares slope of ``v`` on ``u`` (pairs with a non-finite side dropped) with its t interval
    (``n - 2`` degrees of freedom); no interval for fewer than 3 points, no slope for fewer than 2 distinct ``u``."""
    confidence = _check_confidence(confidence)
    x, y = np.asarray(u, dtype=float).ravel(), np.asarray(v, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    sxx = float(((x - x.mean()) ** 2).sum()) if n else 0.0
    if n < 2 or sxx == 0.0:
        return Interval(math.nan, math.nan, math.nan, confidence, n, 0.0, math.nan, math.nan, "OLS t")
    fit = stats.linregress(x, y)
    slope = float(fit.slope)
    if n < 3:
        return Interval(slope, math.nan, math.nan, confidence, n, 0.0, math.nan, math.nan, "OLS t")
    se = float(fit.stderr)
    half = t_quantile(0.5 + confidence / 2.0, n - 2) * se
    return Interval(slope, slope - half, slope + half, confidence, n, float(n - 2), se, math.nan, "OLS t")


def verdict(difference: Interval, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    """One line: whether a difference is larger than the seed spread, i.e. whether its interval excludes 0."""
    if not (math.isfinite(difference.low) and math.isfinite(difference.high)):
        return f"difference {difference.estimate * scale:.{digits}f}{unit}; no interval (n={difference.n})"
    body = (
        f"difference {difference.estimate * scale:+.{digits}f}{unit}, {difference.confidence:.0%} interval "
        f"[{difference.low * scale:+.{digits}f}, {difference.high * scale:+.{digits}f}]{unit} ({difference.method}, "
        f"n={difference.n})"
    )
    if difference.excludes(0.0):
        return f"{body}: larger than the seed spread"
    return f"{body}: within the seed spread (not distinguishable from 0)"


def describe(values: Sequence[float]) -> str:
    """``mean +- std (n=...)`` of the finite values (std with ``ddof=1``)."""
    x = _finite(values)
    if x.size == 0:
        return "-"
    if x.size == 1:
        return f"{x[0]:.4g} (n=1)"
    return f"{x.mean():.4g} +- {x.std(ddof=1):.2g} (n={x.size})"


@dataclass(frozen=True)
class BestCell:
    """A panel's best cell by its mean over seeds: where, its per-seed values and its mean's t interval."""

    label: str
    x: Any
    y: Any
    samples: dict[Any, float]
    mean: Interval

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"label": self.label, "x": self.x, "y": self.y, "samples": {str(k): v for k, v in self.samples.items()},
                "mean": self.mean.to_dict()}


def best_cell(table: Any, confidence: float = 0.95) -> BestCell:
    """The cell of a :class:`~lightning_decay.sweep.results.ResultTable` with the best mean among the cells with the
    most seeds (a mean of one seed is not put against means of three), with its seeds."""
    if not np.isfinite(table.values).any():
        raise ValueError(f"{table.label}: no finished cell")
    full = np.asarray(table.counts) == np.asarray(table.counts).max()
    flat = int(np.nanargmax(np.where(full, table.values, np.nan)))
    i, j = divmod(flat, table.values.shape[1])
    samples = table.samples(i, j)
    return BestCell(table.label, table.x_values[j], table.y_values[i], samples,
                    mean_interval(list(samples.values()), confidence))


def compare_best_cells(a: BestCell, b: BestCell, confidence: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` of two best cells: paired by seed when both have the same seeds (2 or more), else
    Welch's interval. (The best cell is chosen on the same seeds' means, so it favours each side a little: a
    difference within the interval is no evidence of a difference.)"""
    common = sorted(set(a.samples) & set(b.samples), key=str)
    if len(common) >= 2 and set(a.samples) == set(b.samples):
        return difference_interval([a.samples[k] for k in common], [b.samples[k] for k in common], confidence,
                                   paired=True)
    return difference_interval(list(a.samples.values()), list(b.samples.values()), confidence)
