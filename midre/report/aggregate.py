"""Per-run records -> the results table: mean ± std over seeds per (attack, defense), Δ, verdicts.

Each run record has ``attack``, ``defense``, ``seed`` and the metrics of :data:`METRICS`; records judged
by a panel (:class:`midre.evaluation.JudgePanel`) also carry per-judge AttAcc and :data:`PANEL_METRICS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from midre.evaluation.metrics import mean_std, summarize, tradeoff_delta
from midre.report.intervals import attach, comparison, delta_interval
from midre.report.verdicts import defense_name, judges_disagree, summarize_judges
from midre.vocabulary import VOCABULARY

METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval", "queries")
#: Figures of a judge panel, aggregated like :data:`METRICS` when the runs carry them: agreement and
#: double-check share in percent, pixel std in ``[0, 1]`` pixel units.
PANEL_METRICS = ("agreement", "double_check", "pixel_std")
#: The reconstructions as a set against the private images, in the first judge's features
#: (:mod:`midre.evaluation.distribution`): FID and density in their own units, the others in percent.
SET_METRICS = ("fid", "precision", "recall", "density", "coverage")
#: The same in Inception-v3 space, when the operator gave its weights (:mod:`midre.evaluation.inception`).
INCEPTION_METRICS = tuple(f"inception_{name}" for name in SET_METRICS)
#: Label, direction and unit of each report metric, from the one vocabulary (:mod:`midre.vocabulary`).
METRIC_INFO = {
    name: {"label": VOCABULARY[name].label, "higher_is_better": VOCABULARY[name].higher_is_better,
           "unit": VOCABULARY[name].unit}
    for name in METRICS
}


def verdict(attack: str, defense: str, nodef_runs: dict[str, list[float]],
            def_runs: dict[str, list[float]]) -> dict[str, Any]:
    """Plain-language verdict of one defense against one attack, compared with NoDef.

    Seeds are paired (seed i of NoDef vs seed i of the defense); the AttAcc change is the mean ±
    std of the paired differences. "Helped" requires the drop to exceed one std of that difference;
    a single run has no spread to compare with and is reported as inconclusive.
    """
    a0, a1 = nodef_runs["attacc_top1"], def_runs["attacc_top1"]
    c0, c1 = nodef_runs["acc"], def_runs["acc"]
    n = min(len(a0), len(a1))
    drop_mean, drop_std = mean_std([a0[i] - a1[i] for i in range(n)])
    cost_mean, _ = mean_std([c0[i] - c1[i] for i in range(min(len(c0), len(c1)))])
    name = defense_name(defense)
    cost = (f"at a cost of {cost_mean:.1f} accuracy points" if cost_mean > 0
            else f"while gaining {-cost_mean:.1f} accuracy points" if cost_mean < 0
            else "at no accuracy cost")
    runs = f" ({n} run{'s' if n != 1 else ''})"
    if n < 2:  # one seed has no spread to compare the change with: do not call it either way
        status = "inconclusive"
        text = (f"{name} changed top-1 AttAcc of {attack} by {-drop_mean:+.1f} points {cost} in a single run; "
                f"run at least 2 seeds to tell this from seed-to-seed noise.")
    elif drop_mean > drop_std and drop_mean > 0:
        status = "helped"
        text = f"{name} lowered top-1 AttAcc of {attack} by {drop_mean:.1f}±{drop_std:.1f} points {cost}{runs}."
    elif drop_mean < -drop_std and drop_mean < 0:
        status = "hurt"
        text = (f"{name} did NOT help against {attack}: top-1 AttAcc rose by {-drop_mean:.1f}±{drop_std:.1f} "
                f"points ({cost}){runs}.")
    else:
        status = "no_effect"
        text = (f"{name} did not lower AttAcc for {attack} (difference {drop_mean:+.1f} points is within one "
                f"std, {drop_std:.1f}; {cost}){runs}.")
    return {"attack": attack, "defense": defense, "status": status, "text": text,
            "attacc_drop": {"mean": drop_mean, "std": drop_std, "n": n}, "acc_cost": cost_mean}


def variants(runs: Sequence[dict[str, Any]], attacks: Sequence[str]) -> list[tuple[str, bool]]:
    """Each attack, then its adaptive variant when some run was adaptive (``(attack, adaptive)``)."""
    out = []
    for attack in attacks:
        out.append((attack, False))
        if any(r["attack"] == attack and r.get("adaptive") for r in runs):
            out.append((attack, True))
    return out


def aggregate_runs(runs: Sequence[dict[str, Any]], defenses: Sequence[str], attacks: Sequence[str],
                   baseline: str = "nodef") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Group per-run records by (attack, adaptive, defense) into rows, Δ vs the baseline and verdicts.

    Each run record has ``attack``, ``defense``, ``seed``, the metrics of :data:`METRICS` and, when the
    attack optimised through the defense's transform, ``adaptive``; records judged by a panel also carry
    ``judges`` (per-judge AttAcc) and :data:`PANEL_METRICS`; records with per-identity outcomes
    (``identities``) give each figure a 95 % interval and each defense a paired comparison with the
    baseline (:mod:`midre.report.intervals`), which the verdict then follows. An adaptive attack is compared
    with the baseline's standard runs (the baseline has no transform to adapt to).
    Returns ``(results, verdicts)``; a verdict with evidence carries it as ``comparison``.
    """
    results, verdicts = [], []
    for attack, adaptive in variants(runs, attacks):
        rows = _variant_rows(runs, defenses, attack, adaptive, baseline, verdicts)
        results += rows.values()
        for v in verdicts:
            if v["attack"] == attack and bool(v.get("adaptive")) == adaptive and any(
                    judges_disagree(rows[d]) for d in (baseline, v["defense"]) if d in rows):
                v["judges_disagree"] = True
                v["text"] += " The judges disagree by more than the seed spread here: see the warnings."
                rows[v["defense"]]["verdict"] = v["text"]
    _against_adaptive(verdicts)
    return results, verdicts


def _against_adaptive(verdicts: list[dict[str, Any]]) -> None:
    """Where an attack also ran adaptively, the standard verdict takes the stronger attacker's outcome and
    says whether the defense holds against an attacker who knows it."""
    adaptive = {(v["attack"], v["defense"]): v for v in verdicts if v.get("adaptive")}
    for v in verdicts:
        other = adaptive.get((v["attack"], v["defense"])) if not v.get("adaptive") else None
        if other is None:
            continue
        holds = other["status"] == "helped"
        if v["status"] == "helped":
            v["text"] += (" It holds against an adaptive attacker." if holds else
                          " It helps only against a non-adaptive attacker: the adaptive attacker "
                          f"({other['status'].replace('_', ' ')}) is not stopped.")
        v["against_adaptive"] = "holds" if holds else "fails"
        worse = _stronger(v, other)
        if worse is other:
            v["status"] = other["status"]


def _stronger(standard: dict[str, Any], adaptive: dict[str, Any]) -> dict[str, Any]:
    """The verdict of the attacker that leaves the defense higher AttAcc (the paired difference, else the
    mean drop)."""
    def leak(v: dict[str, Any]) -> float:
        c = v.get("comparison")
        return float(c["diff"]) if c else -float(v["attacc_drop"]["mean"])

    return adaptive if leak(adaptive) > leak(standard) else standard


def _select(runs: Sequence[dict[str, Any]], attack: str, defense: str, adaptive: bool) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["attack"] == attack and r["defense"] == defense
                   and bool(r.get("adaptive")) == adaptive), key=lambda r: r["seed"])


def _variant_rows(runs: Sequence[dict[str, Any]], defenses: Sequence[str], attack: str, adaptive: bool,
                  baseline: str, verdicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    base_runs = _select(runs, attack, baseline, False)
    base = _values(base_runs) if base_runs else None
    rows: dict[str, dict[str, Any]] = {}
    for defense in defenses:
        sel = _select(runs, attack, defense, adaptive)
        if not sel:
            continue
        vals = _values(sel)
        metrics = {m: summarize(vals[m]) for m in METRICS + PANEL_METRICS + SET_METRICS + INCEPTION_METRICS if vals[m]}
        attach(metrics, sel)
        row: dict[str, Any] = {"attack": attack, "defense": defense, "adaptive": adaptive, "seeds": vals["seeds"],
                               "metrics": metrics, "tradeoff_delta": None}
        if vals["judges"]:
            row["judges"] = vals["judges"]
        row.update(attack_ids(sel))
        if base is not None and defense != baseline and base["acc"] and vals["acc"]:
            row["tradeoff_delta"] = tradeoff_delta(mean_std(base["acc"])[0], mean_std(base["attacc_top1"])[0],
                                                   metrics["acc"]["mean"], metrics["attacc_top1"]["mean"])
            bounds = delta_interval(base_runs, sel) if isinstance(row["tradeoff_delta"], float) else None
            if bounds is not None:
                row["tradeoff_delta_ci"] = list(bounds)
            v = _verdict(attack, defense, adaptive, base, vals, base_runs, sel)
            row["verdict"] = v["text"]
            verdicts.append(v)
        rows[defense] = row
    return rows


def attack_ids(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The versioned attack id of a row from its runs (:func:`midre.attacks.registry.attack_id`).

    ``{"attack_id": id}`` when every run carries the same one; ``{"attack_ids": [...]}`` (sorted, a run
    without one counted as ``"unrecorded"``) when they differ, so a row pooling runs of different code or
    settings says so; ``{}`` when no run carries one (runs written before ids existed).
    """
    ids = {str(r["attack_id"]) if r.get("attack_id") else "unrecorded" for r in runs}
    if ids <= {"unrecorded"}:
        return {}
    return {"attack_id": ids.pop()} if len(ids) == 1 else {"attack_ids": sorted(ids)}


def _values(sel: list[dict[str, Any]]) -> dict[str, Any]:
    vals: dict[str, Any] = {m: [float(r[m]) for r in sel if r.get(m) is not None]
                            for m in METRICS + PANEL_METRICS + SET_METRICS + INCEPTION_METRICS}
    vals["seeds"] = [r["seed"] for r in sel]
    vals["judges"] = summarize_judges(sel)
    return vals


def _verdict(attack: str, defense: str, adaptive: bool, base: dict[str, Any], vals: dict[str, Any],
             base_runs: list[dict[str, Any]], sel: list[dict[str, Any]]) -> dict[str, Any]:
    """The evidence verdict when the runs have per-identity outcomes, else the seed-spread verdict."""
    v = verdict(attack, defense, base, vals)
    found = comparison(attack, defense, adaptive, base_runs, sel, v["acc_cost"])
    if found is not None:
        v["status"] = {"lowers": "helped", "raises": "hurt", "no_evidence": "no_effect"}[found["verdict"]]
        v["text"], v["comparison"] = found["text"], found
    v["adaptive"] = adaptive
    return v


__all__ = ["METRICS", "METRIC_INFO", "PANEL_METRICS", "SET_METRICS", "aggregate_runs", "attack_ids", "variants",
           "verdict"]
