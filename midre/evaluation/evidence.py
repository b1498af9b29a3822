"""How sure a study's figures are: hierarchical bootstrap intervals and paired comparisons with NoDef.

Per-identity outcomes are the unit of analysis. Every seed attacks the same identities, so a figure is
``values[seed][identity]`` (the share of an identity's reconstructions the judges credit, its nearest
private distance, its held-out accuracy as correct / total):

- :func:`interval` resamples seeds with replacement, then identities with replacement within each drawn
  seed, and takes the 2.5th and 97.5th percentiles of the replicated figure (a 95 % percentile
  interval). Resampling S seeds underestimates their variance by (S-1)/S, the bootstrap's version of
  dividing by n instead of n-1, which matters with the 2-3 seeds a study has: the replicates' deviations
  from the figure are scaled by sqrt(S/(S-1)). What the interval shows: how much the figure would move
  with other seeds (other trained targets and attack runs) and other identities of the same population.
  What it does not: a bias every seed shares (a weak judge, a too short attack), nor variation a single
  seed cannot show (with one seed, only the identities' share of it).
- :func:`compare` does the same for the paired differences ``defense - NoDef`` on the same identities and
  seed numbers (paired: identity effects cancel), gives a two-sided bootstrap p-value (how often the
  replicated difference lies as far from the observed one as the observed one lies from 0), and a verdict
  that follows the interval: ``lowers`` (upper bound below 0), ``raises`` (lower bound above 0), else
  ``no_evidence``.

Everything is seeded (``seed``) so a report is reproducible; :data:`RESAMPLES` replicates by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
METHOD = ("hierarchical bootstrap: seeds, then identities within each seed; percentile interval, "
          "deviations scaled by sqrt(S/(S-1)) for S seeds")

#: ``values[seed]`` (identities, with NaN where a seed has no outcome for an identity).
Table = Sequence[np.ndarray]


def _clean(values: Table) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float)[~np.isnan(np.asarray(v, dtype=float))] for v in values
            if np.asarray(v).size and not np.all(np.isnan(np.asarray(v, dtype=float)))]


def replicate_means(values: Table, weights: Table | None = None, *, resamples: int = RESAMPLES,
                    seed: int = 0) -> np.ndarray:
    """``resamples`` replicates of the figure (the mean over seeds of each seed's identity mean, or of its
    weighted ratio ``sum(values) / sum(weights)`` when ``weights`` are given), seeds then identities drawn
    with replacement."""
    rng = np.random.default_rng(seed)
    if weights is None:
        pairs = [(v, None) for v in _clean(values)]
    else:
        pairs = [(np.asarray(v, float), np.asarray(w, float)) for v, w in zip(values, weights, strict=True)
                 if np.asarray(w, float).sum() > 0]
    if not pairs:
        return np.empty(0)
    n_seeds = len(pairs)
    # For every seed, an independent identity resample for each (replicate, position) it may fill.
    draws = np.empty((n_seeds, resamples, n_seeds))
    for s, (v, w) in enumerate(pairs):
        pick = rng.integers(0, v.size, (resamples, n_seeds, v.size))
        draws[s] = v[pick].mean(-1) if w is None else v[pick].sum(-1) / np.maximum(w[pick].sum(-1), 1e-12)
    chosen = rng.integers(0, n_seeds, (resamples, n_seeds))
    return draws[chosen, np.arange(resamples)[:, None], np.arange(n_seeds)[None, :]].mean(1)


def point(values: Table, weights: Table | None = None) -> float | None:
    """The figure itself: the mean over seeds of each seed's identity mean (or weighted ratio)."""
    if weights is None:
        seeds = _clean(values)
        return float(np.mean([v.mean() for v in seeds])) if seeds else None
    ratios = [np.sum(v) / np.sum(w) for v, w in zip(values, weights, strict=True) if np.sum(w) > 0]
    return float(np.mean(ratios)) if ratios else None


def _scaled(reps: np.ndarray, center: float, seeds: int) -> np.ndarray:
    """Replicates with their deviations from ``center`` scaled by sqrt(S/(S-1)) (the seed-level correction)."""
    return center + (reps - center) * (np.sqrt(seeds / (seeds - 1)) if seeds > 1 else 1.0)


def _replicates(values: Table, weights: Table | None, resamples: int, seed: int) -> tuple[np.ndarray, float | None]:
    center = point(values, weights)
    reps = replicate_means(values, weights, resamples=resamples, seed=seed)
    seeds = len(_clean(values)) if weights is None else sum(1 for w in weights if np.sum(w) > 0)
    return (_scaled(reps, center, seeds) if reps.size and center is not None else reps), center


def interval(values: Table, weights: Table | None = None, *, resamples: int = RESAMPLES, seed: int = 0,
             level: float = LEVEL) -> tuple[float, float] | None:
    """The 95 % hierarchical bootstrap interval of the figure (``None`` without outcomes)."""
    reps, _ = _replicates(values, weights, resamples, seed)
    if reps.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def ratio_interval(numerator: Callable[[np.random.Generator], float], *, resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile interval of a figure computed by ``numerator(rng)`` from one bootstrap draw each
    (``None`` when a draw is undefined, e.g. Δ whose accuracy difference changes sign)."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(resamples):
        value = numerator(rng)
        if value is None or not np.isfinite(value):
            return None
        reps.append(value)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """A defense against NoDef on one figure: the mean paired difference (defense minus NoDef), its 95 %
    interval, a two-sided p-value and the verdict the interval gives."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    pairs: int

    def to_dict(self) -> dict[str, float | str | int]:
        return {"diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value,
                "verdict": self.verdict, "pairs": self.pairs}


def paired_differences(defense: dict[int, np.ndarray], baseline: dict[int, np.ndarray]) -> list[np.ndarray]:
    """``defense - baseline`` per seed number both have, identity by identity (NaN where either lacks one)."""
    out = []
    for s in sorted(set(defense) & set(baseline)):
        a, b = np.asarray(defense[s], float), np.asarray(baseline[s], float)
        n = min(a.size, b.size)
        out.append(a[:n] - b[:n])
    return out


def bootstrap_p(reps: np.ndarray, observed: float) -> float:
    """Two-sided p-value of "no change" from the replicated differences: the share of replicates at least as
    far from the observed difference as the observed difference is from 0 (plus one, so never 0)."""
    if reps.size == 0:
        return 1.0
    return float((np.sum(np.abs(reps - observed) >= abs(observed) - 1e-12) + 1) / (reps.size + 1))


def compare(defense: dict[int, np.ndarray], baseline: dict[int, np.ndarray], *, resamples: int = RESAMPLES,
            seed: int = 0, level: float = LEVEL) -> Comparison | None:
    """The paired comparison of per-identity outcomes ``{seed: values}`` of a defense with NoDef's."""
    diffs = paired_differences(defense, baseline)
    reps, diff = _replicates(diffs, None, resamples, seed)
    if diff is None or reps.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = (float(x) for x in np.percentile(reps, [tail, 100 - tail]))
    verdict = "lowers" if high < 0 else "raises" if low > 0 else "no_evidence"
    pairs = int(sum(np.count_nonzero(~np.isnan(np.asarray(d, float))) for d in diffs))
    return Comparison(diff, low, high, bootstrap_p(reps, diff), verdict, pairs)


__all__ = ["LEVEL", "METHOD", "RESAMPLES", "Comparison", "bootstrap_p", "compare", "interval", "paired_differences",
           "point", "ratio_interval", "replicate_means"]
