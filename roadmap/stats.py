"""Uncertainty and agreement, for studies with several seeds.

A step's change is measured as paired differences, one per seed (the child and the step
it builds on trained with the same seed), summarized by their mean and a 95% Student-t
interval (n - 1 degrees of freedom: right for a few seeds, assuming the per-seed
differences are roughly normal). Agreement with the paper is the sign agreement of the
per-step changes and their Spearman and Kendall rank correlations, with percentile
intervals from a bootstrap over seeds (seeds resampled with replacement, the same draw
for every step, so each step keeps its pairing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% t-interval; lo and hi are nan with fewer than two values."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` and its Student-t confidence interval (n - 1 degrees of freedom)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class Transfer:
    """How a study's per-step changes agree with the paper's."""

    steps: int
    """Steps with a change here and in the paper."""
    agree: int
    """Of those, steps whose change has the paper's sign."""
    significant: int
    """Steps whose 95% interval excludes zero."""
    significant_agree: int
    spearman: float
    spearman_lo: float
    spearman_hi: float
    kendall: float
    kendall_lo: float
    kendall_hi: float
    seeds: int
    """Seeds the bootstrap resamples."""

    def summary(self, column: str) -> str:
        """One line for a table's footer."""
        return (
            f"Transfer to ImageNet ({column} column): {self.agree} of {self.steps} steps change top-1 in the paper's "
            f"direction ({self.significant_agree} of the {self.significant} whose 95% interval excludes zero); "
            f"Spearman {self.spearman:+.2f} [{self.spearman_lo:+.2f}, {self.spearman_hi:+.2f}], "
            f"Kendall {self.kendall:+.2f} [{self.kendall_lo:+.2f}, {self.kendall_hi:+.2f}] "
            f"(95% bootstrap over {self.seeds} seeds, {RESAMPLES} resamples)"
        )


def _correlations(ours: Sequence[float], paper: Sequence[float]) -> List[float]:
    pairs = [(a, b) for a, b in zip(ours, paper) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return [math.nan, math.nan]
    a, b = zip(*pairs)
    return [float(stats.spearmanr(a, b).statistic), float(stats.kendalltau(a, b).statistic)]


def transfer(seed_deltas: Mapping[str, Mapping[int, float]], paper: Mapping[str, float],
             resamples: int = RESAMPLES, seed: int = 0) -> Optional[Transfer]:
    """Agreement of per-step changes (step -> seed -> paired change) with the paper's
    (step -> change), over the steps that have both; None with fewer than three."""
    steps = [s for s in seed_deltas if s in paper and math.isfinite(paper[s]) and seed_deltas[s]]
    if len(steps) < 3:
        return None
    intervals = {s: t_interval(list(seed_deltas[s].values())) for s in steps}
    ours = [intervals[s].mean for s in steps]
    theirs = [paper[s] for s in steps]
    agree = sum(np.sign(a) == np.sign(b) for a, b in zip(ours, theirs))
    sig = [s for s in steps if intervals[s].excludes_zero]
    sig_agree = sum(np.sign(intervals[s].mean) == np.sign(paper[s]) for s in sig)
    point = _correlations(ours, theirs)
    seeds = sorted({k for s in steps for k in seed_deltas[s]})
    rng = np.random.default_rng(seed)
    draws, seen = [], {}  # a resample's correlations depend only on which seeds it drew, not their order
    for _ in range(resamples):
        pick = tuple(sorted(rng.choice(seeds, size=len(seeds), replace=True).tolist()))
        if pick not in seen:
            means = [np.mean([seed_deltas[s][k] for k in pick if k in seed_deltas[s]] or [math.nan]) for s in steps]
            seen[pick] = _correlations(means, theirs)
        draws.append(seen[pick])
    lo, hi = np.nanpercentile(np.asarray(draws, dtype=float), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2], axis=0)
    return Transfer(len(steps), int(agree), len(sig), int(sig_agree), point[0], lo[0], hi[0], point[1], lo[1], hi[1],
                    len(seeds))


def interval_columns(interval: Interval) -> Dict[str, float]:
    """The step table's columns for a change: its mean, interval, pairs and whether it excludes zero."""
    return {"delta": interval.mean, "delta_lo": interval.lo, "delta_hi": interval.hi, "delta_pairs": interval.n,
            "delta_excludes_zero": interval.excludes_zero}


@dataclass(frozen=True)
class Effect:
    """One term of a least-squares fit: its coefficient and 95% t-interval."""

    name: str
    effect: float
    lo: float
    hi: float


def main_effects(x: np.ndarray, y: np.ndarray, names: Sequence[str], level: float = LEVEL) -> List[Effect]:
    """Ordinary least squares of y on an intercept and the columns of x (factor indicators,
    and any covariate): each column's coefficient with its t-interval (n - p - 1 degrees of
    freedom). Columns that never vary get nan."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    varies = x.std(axis=0) > 0
    design = np.column_stack([np.ones(len(y)), x[:, varies]])
    dof = len(y) - design.shape[1]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if dof < 1:
        se = np.full(len(coef), np.nan)
    else:
        sigma2 = float(((y - design @ coef) ** 2).sum()) / dof
        se = np.sqrt(np.diag(sigma2 * np.linalg.pinv(design.T @ design)))
    half = stats.t.ppf(0.5 + level / 2, max(dof, 1)) * se
    out, k = [], 1
    for name, v in zip(names, varies):
        if v:
            out.append(Effect(name, float(coef[k]), float(coef[k] - half[k]), float(coef[k] + half[k])))
            k += 1
        else:
            out.append(Effect(name, math.nan, math.nan, math.nan))
    return out
