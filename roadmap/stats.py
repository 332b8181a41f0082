"""Uncertainty and agreement, for studies with several seeds.

A step's change is measured as paired differences, one per seed (the child and the step
it builds on trained with the same seed), summarized by their mean and a 95% Student-t
interval (n - 1 degrees of freedom: right for a few seeds, assuming the per-seed
differences are roughly normal). Agreement with the paper is the sign agreement of the
per-step changes (with an exact binomial p against chance) and their Spearman and Kendall
rank correlations, with percentile intervals from a bootstrap over seeds (seeds resampled
with replacement, the same draw for every step, so each step keeps its pairing); over
every step, and over the paper's clear steps, whose change stands above its own noise.
With one seed no interval can be computed: it is nan, and printed as none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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
    # scipy's critical value, scaled here: t.interval(..., scale=sem) multiplies in another order,
    # which moves the last bit of the committed tables' intervals
    _, t = stats.t.interval(level, len(x) - 1)
    half = float(t * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class Agreement:
    """How a study's per-step changes agree with the paper's over one set of steps."""

    steps: Tuple[str, ...]
    """The steps compared (with a change here and in the paper)."""
    agree: int
    """Of those, steps whose change has the paper's sign."""
    sign_p: float
    """Exact one-sided binomial p of `agree` or more signs right by chance (each 1/2)."""
    spearman: Interval
    """Spearman's rank correlation of the per-step means, with its bootstrap interval over seeds."""
    kendall: Interval
    """Kendall's tau, likewise."""

    def summary(self) -> str:
        return (f"{self.agree} of {len(self.steps)} steps change top-1 in the paper's direction "
                f"(binomial p = {self.sign_p:.2g} against chance); "
                f"Spearman {_with_interval(self.spearman)}, Kendall {_with_interval(self.kendall)}")


@dataclass(frozen=True)
class Transfer:
    """How a study's per-step changes agree with the paper's: over every step, over the
    paper's clear steps (roadmap.paper.clear_steps), how the effects scale, and end to end."""

    all: Agreement
    """Every step with a change here and in the paper."""
    clear: Optional[Agreement]
    """The paper's clear steps among those (None where fewer than three are clear)."""
    significant: int
    """Steps whose 95% interval excludes zero here."""
    significant_agree: int
    """Of those, steps with the paper's sign."""
    slope: Interval
    """Our changes on the paper's over the clear steps: least squares through zero, 95%
    t-interval over the steps (1 = the same effects; 0.3 = a third of them)."""
    gain: Interval
    """ConvNeXt minus ResNet here (the path's last step minus its first), paired per seed."""
    paper_gain: float
    """The same in the paper."""
    seeds: int
    """Seeds the bootstrap resamples."""
    clear_multiple: float = 2.0
    """A clear step's change exceeds this many times its std over seeds (roadmap.paper.clear_steps)."""

    def summary(self, column: str) -> str:
        """The table footer's lines, one per question."""
        spread = f"95% bootstrap over {self.seeds} seeds, {RESAMPLES} resamples" if self.seeds > 1 else ONE_SEED
        lines = [f"Transfer to ImageNet ({column} column): {self.all.summary()} "
                 f"({self.significant_agree} of the {self.significant} whose 95% interval excludes zero agree; "
                 f"{spread})."]
        if self.clear is not None:
            rule = f"change > {self.clear_multiple:g}x its std over seeds"
            lines.append(f"On the paper's {len(self.clear.steps)} clear steps ({rule}: {', '.join(self.clear.steps)}): "
                         f"{self.clear.summary()}; slope of our changes on the paper's {_with_interval(self.slope)} "
                         "(least squares through zero).")
        if math.isfinite(self.gain.mean):
            pairs = f"{self.gain.n} paired seeds" if self.gain.n > 1 else ONE_SEED
            lines.append(f"End to end, ConvNeXt minus ResNet: {_with_interval(self.gain)} points ({pairs}; "
                         f"paper {self.paper_gain:+.2f}).")
        return "\n".join(lines)


ONE_SEED = "one seed: no interval"


def _with_interval(iv: Interval) -> str:
    """'+0.31 [+0.27, +0.40]', or '+0.31' alone where no interval could be computed."""
    if not math.isfinite(iv.mean):
        return "n/a"
    return f"{iv.mean:+.2f}" + (f" [{iv.lo:+.2f}, {iv.hi:+.2f}]" if math.isfinite(iv.lo) else "")


def sign_p(agree: int, steps: int) -> float:
    """Exact one-sided binomial p of at least `agree` of `steps` signs right by chance."""
    return float(stats.binomtest(agree, steps, 0.5, alternative="greater").pvalue) if steps else math.nan


def slope_through_zero(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> Interval:
    """The least-squares slope of y on x through the origin (no change here for no change
    there) and its t-interval (n - 1 degrees of freedom); nan lo/hi with fewer than two points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) == 0 or not (x**2).sum():
        return Interval(math.nan, math.nan, math.nan, len(x))
    b = float((x * y).sum() / (x**2).sum())
    if len(x) < 2:
        return Interval(b, math.nan, math.nan, len(x))
    se = math.sqrt(float(((y - b * x) ** 2).sum()) / (len(x) - 1) / float((x**2).sum()))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * se
    return Interval(b, b - half, b + half, len(x))


def _correlations(ours: Sequence[float], paper: Sequence[float]) -> List[float]:
    pairs = [(a, b) for a, b in zip(ours, paper) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return [math.nan, math.nan]
    a, b = zip(*pairs)
    return [float(stats.spearmanr(a, b).statistic), float(stats.kendalltau(a, b).statistic)]


def _bootstrap(seed_deltas: Mapping[str, Mapping[int, float]], subsets: Sequence[Sequence[str]],
               paper: Mapping[str, float], resamples: int, seed: int) -> np.ndarray:
    """(lo, hi) of Spearman and Kendall on each subset of steps, from resampling the seeds
    with replacement (the same draw for every step): shape (2, 2 x subsets); nan with one seed."""
    seeds = sorted({k for steps in subsets for s in steps for k in seed_deltas[s]})
    if len(seeds) < 2:
        return np.full((2, 2 * len(subsets)), math.nan)
    rng = np.random.default_rng(seed)
    draws, seen = [], {}  # a resample's correlations depend only on which seeds it drew, not their order
    for _ in range(resamples):
        pick = tuple(sorted(rng.choice(seeds, size=len(seeds), replace=True).tolist()))
        if pick not in seen:
            row = []
            for steps in subsets:
                means = [np.mean([seed_deltas[s][k] for k in pick if k in seed_deltas[s]] or [math.nan]) for s in steps]
                row += _correlations(means, [paper[s] for s in steps])
            seen[pick] = row
        draws.append(seen[pick])
    return np.nanpercentile(np.asarray(draws, dtype=float), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2], axis=0)


def same_sign(steps: Sequence[str], ours: Mapping[str, float], paper: Mapping[str, float]) -> int:
    """How many of `steps` change in the paper's direction."""
    return int(sum(np.sign(ours[s]) == np.sign(paper[s]) for s in steps))


def _agreement(steps: Sequence[str], means: Mapping[str, float], paper: Mapping[str, float],
               bounds: np.ndarray, seeds: int) -> Agreement:
    agree = same_sign(steps, means, paper)
    rho, tau = _correlations([means[s] for s in steps], [paper[s] for s in steps])
    return Agreement(tuple(steps), agree, sign_p(agree, len(steps)), Interval(rho, bounds[0][0], bounds[1][0], seeds),
                     Interval(tau, bounds[0][1], bounds[1][1], seeds))


def transfer_of(seed_deltas: Mapping[str, Mapping[int, float]], paper: Mapping[str, float], clear: Sequence[str] = (),
                gain: Optional[Mapping[int, float]] = None, paper_gain: float = math.nan, clear_multiple: float = 2.0,
                resamples: int = RESAMPLES, seed: int = 0) -> Optional[Transfer]:
    """Agreement of per-step changes (step -> seed -> paired change) with the paper's
    (step -> change), over the steps that have both and over the `clear` ones among them;
    the slope over the clear steps, and the end-to-end gain (seed -> ConvNeXt minus ResNet).
    None with fewer than three steps."""
    steps = [s for s in seed_deltas if s in paper and math.isfinite(paper[s]) and seed_deltas[s]]
    if len(steps) < 3:
        return None
    intervals = {s: t_interval(list(seed_deltas[s].values())) for s in steps}
    means = {s: iv.mean for s, iv in intervals.items()}
    picked = [s for s in steps if s in set(clear)]
    subsets = [steps, picked] if len(picked) >= 3 else [steps]
    bounds = _bootstrap(seed_deltas, subsets, paper, resamples, seed)
    seeds = len({k for s in steps for k in seed_deltas[s]})
    sig = [s for s in steps if intervals[s].excludes_zero]
    return Transfer(
        all=_agreement(steps, means, paper, bounds[:, :2], seeds),
        clear=_agreement(picked, means, paper, bounds[:, 2:], seeds) if len(subsets) > 1 else None,
        significant=len(sig), significant_agree=same_sign(sig, means, paper),
        slope=slope_through_zero([paper[s] for s in picked], [means[s] for s in picked]),
        gain=t_interval(list((gain or {}).values())), paper_gain=paper_gain, seeds=seeds,
        clear_multiple=clear_multiple,
    )


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


def fit_main_effects(x: np.ndarray, y: np.ndarray, names: Sequence[str], level: float = LEVEL) -> List[Effect]:
    """Ordinary least squares of y on an intercept and the columns of x (factor indicators,
    and any covariate): each column's coefficient with its t-interval (n - p - 1 degrees of
    freedom). Columns that never vary get nan, and every column does when there are no more
    rows than terms (nothing can be estimated)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    varies = x.std(axis=0) > 0
    design = np.column_stack([np.ones(len(y)), x[:, varies]])
    dof = len(y) - design.shape[1]
    if dof < 1:  # no more networks than terms: the fit passes through every point and estimates nothing
        return [Effect(name, math.nan, math.nan, math.nan) for name in names]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    sigma2 = float(((y - design @ coef) ** 2).sum()) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.pinv(design.T @ design)))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    out, k = [], 1
    for name, v in zip(names, varies):
        if v:
            out.append(Effect(name, float(coef[k]), float(coef[k] - half[k]), float(coef[k] + half[k])))
            k += 1
        else:
            out.append(Effect(name, math.nan, math.nan, math.nan))
    return out
