"""The report's evidence: 95 % intervals on its figures and the paired comparison of each defense with
NoDef, from the per-identity outcomes every attack run stores (:mod:`midre.evaluation.evidence`).

An attack run's record carries ``identities``: ``{identity: {"attacc_top1", "attacc_top5", "knn_dist", ...}}``
(AttAcc in percent, per attacked identity) and ``acc_by_identity``: ``{identity: [correct, total]}`` (the
target's held-out predictions of every private identity). Runs without them (older reports) get no
interval and their verdict falls back to the seed spread (:func:`midre.report.aggregate.verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from midre.evaluation.evidence import LEVEL, METHOD, RESAMPLES, compare, interval, replicate_means
from midre.report.verdicts import attack_name, defense_name

#: Figures with an interval, and the per-identity outcome each is computed from (``acc`` from counts).
PER_IDENTITY = {"attacc_top1": "attacc_top1", "attacc_top5": "attacc_top5", "knn_dist": "knn_dist",
                "delta_eval": "knn_dist"}
#: Where the intervals come from, as the report records it.
SETTINGS = {"method": METHOD, "resamples": RESAMPLES, "seed": 0, "level": LEVEL,
            "unit": "per-identity outcomes; the same identities in every seed"}


def by_seed(runs: Sequence[dict[str, Any]], field: str) -> dict[int, np.ndarray]:
    """``{seed: per-identity values}`` of one figure, identities in one order for every seed (NaN where a
    run lacks one); empty when the runs carry no per-identity outcomes. ``field`` ``correct`` / ``total``
    read ``acc_by_identity``, the others ``identities``."""
    source = "acc_by_identity" if field in ("correct", "total") else "identities"
    ids = sorted({int(i) for r in runs for i in (r.get(source) or {})})
    if not ids:
        return {}
    out = {}
    for r in runs:
        per = r.get(source) or {}
        out[int(r["seed"])] = np.array([_value(per.get(str(i)), field) for i in ids])
    return out


def _value(entry: Any, field: str) -> float:
    if isinstance(entry, list | tuple):  # acc_by_identity: [correct, total]
        return float(entry[0 if field == "correct" else 1])
    value = (entry or {}).get(field)
    return float("nan") if value is None else float(value)


def attach(metrics: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]]) -> None:
    """Add ``ci_low`` / ``ci_high`` to each figure of a results row that has per-identity outcomes."""
    for name, field in PER_IDENTITY.items():
        values = by_seed(runs, field)
        bounds = interval(list(values.values())) if values and name in metrics else None
        if bounds is not None:
            metrics[name]["ci_low"], metrics[name]["ci_high"] = _clamp(metrics[name]["mean"], bounds, name)
    correct, total = by_seed(runs, "correct"), by_seed(runs, "total")
    if correct and "acc" in metrics and not any(np.isnan(v).any() for v in total.values()):
        bounds = interval([100 * v for v in correct.values()], list(total.values()))
        if bounds is not None:
            metrics["acc"]["ci_low"], metrics["acc"]["ci_high"] = _clamp(metrics["acc"]["mean"], bounds, "acc")


#: Where each figure can lie: shares in percent, distances from 0 up.
SUPPORT = {"acc": (0.0, 100.0), "attacc_top1": (0.0, 100.0), "attacc_top5": (0.0, 100.0),
           "knn_dist": (0.0, float("inf")), "delta_eval": (0.0, float("inf"))}


def _clamp(mean: float, bounds: tuple[float, float], name: str) -> tuple[float, float]:
    """An interval within the figure's support (the seed-level scaling can push a bound past 0 or 100) that
    always holds its figure (the mean over seeds of held-out accuracy can sit a hair outside a percentile
    interval built from identity-weighted draws)."""
    low, high = SUPPORT.get(name, (-float("inf"), float("inf")))
    return max(low, min(bounds[0], mean)), min(high, max(bounds[1], mean))


def delta_interval(base: Sequence[dict[str, Any]], defended: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """Interval of Δ = (AttAcc_NoDef - AttAcc_def) / (Acc_NoDef - Acc_def), from paired replicates (the same
    draws for both models); ``None`` when an accuracy difference in some replicate is not positive (Δ is then
    undefined, and the report says OP or no gain)."""
    parts = []
    for runs in (base, defended):
        att = by_seed(runs, "attacc_top1")
        correct, total = by_seed(runs, "correct"), by_seed(runs, "total")
        if not att or not correct:
            return None
        parts.append((replicate_means(list(att.values())),
                      replicate_means([100 * v for v in correct.values()], list(total.values()))))
    (a0, c0), (a1, c1) = parts
    if a0.size != a1.size or np.any(c0 - c1 <= 0):
        return None
    reps = (a0 - a1) / (c0 - c1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def comparison(attack: str, defense: str, adaptive: bool, base: Sequence[dict[str, Any]],
               defended: Sequence[dict[str, Any]], acc_cost: float) -> dict[str, Any] | None:
    """The paired comparison of a defense's top-1 AttAcc with NoDef's on one attack (points, defense minus
    NoDef), its verdict and the sentence that says it; ``None`` without per-identity outcomes."""
    result = compare(by_seed(defended, "attacc_top1"), by_seed(base, "attacc_top1"))
    if result is None:
        return None
    seeds = len({r["seed"] for r in defended} & {r["seed"] for r in base})
    identities = len(by_seed(defended, "attacc_top1").get(defended[0]["seed"], []))
    return {"defense": defense, "attack": attack, "adaptive": adaptive, "metric": "attacc_top1",
            **result.to_dict(), "seeds": seeds, "identities": identities,
            "text": _sentence(attack, defense, adaptive, result, acc_cost, seeds, identities)}


def _sentence(attack: str, defense: str, adaptive: bool, result: Any, acc_cost: float, seeds: int,
              identities: int) -> str:
    who = f"{attack_name(attack)}{' (adaptive)' if adaptive else ''}"
    ci = f"95 % CI {-result.ci_high:.1f} to {-result.ci_low:.1f}" if result.verdict == "lowers" else \
        f"95 % CI {result.ci_low:+.1f} to {result.ci_high:+.1f}"
    cost = (f"at a cost of {acc_cost:.1f} accuracy points" if acc_cost > 0
            else f"while gaining {-acc_cost:.1f} accuracy points" if acc_cost < 0 else "at no accuracy cost")
    basis = f"{seeds} seed{'s' if seeds != 1 else ''} x {identities} identities, p = {result.p_value:.3f}"
    if result.verdict == "lowers":
        return f"{defense_name(defense)} lowers {who} top-1 AttAcc by {-result.diff:.1f} points ({ci}; {basis}) {cost}."
    if result.verdict == "raises":
        return (f"{defense_name(defense)} RAISES {who} top-1 AttAcc by {result.diff:.1f} points ({ci}; {basis}) "
                f"{cost}.")
    if result.ci_low == result.ci_high == 0:
        # every pair agrees: the defended and the undefended targets leaked exactly the same identities
        return (f"{defense_name(defense)}: no change in {who} top-1 AttAcc: the same identities were recovered with "
                f"and without it in every seed ({basis}) {cost}.")
    return (f"{defense_name(defense)}: no evidence of a change in {who} top-1 AttAcc ({result.diff:+.1f} points, "
            f"{ci}; {basis}) {cost}: more seeds or identities would narrow it.")


__all__ = ["PER_IDENTITY", "SETTINGS", "attach", "by_seed", "comparison", "delta_interval"]
