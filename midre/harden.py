"""The harden search: the strongest defense within an accuracy budget, with fewer runs than the full grid.

Stages (each an ``expand`` unit of the study graph, :mod:`midre.plan`):

1. plan: NoDef on every seed (targets and attacks: the baseline), seed 0 of every coarse candidate
   (targets only);
2. ``expand/refine``: a candidate whose seed-0 accuracy drop exceeds the budget by more than NoDef's
   seed spread is stopped; a_h is refined around the strongest MIDRE candidate within budget
   (half the coarse step on either side); the new candidates' seed-0 targets follow;
3. ``expand/select``: the refined candidates are screened the same way; every candidate within
   budget is attacked on seed 0;
4. ``expand/confirm``: a candidate that lowers no attack's AttAcc below NoDef's, or whose seed-0
   AttAcc is beaten on every attack beyond the seed spread by another candidate within budget, is
   stopped; the ``finalists`` with the lowest seed-0 AttAcc run every other seed; then the report.

Stopped candidates stay in the frontier with the reason (``skipped``) and what they measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midre.defenses import defense_label
from midre.evaluation.metrics import mean_std
from midre.outputs import attack_top1, target_accuracy
from midre.planners import base_units, candidate, candidate_units
from midre.units import Unit, make_unit


def plan_harden(config: Any) -> list[Unit]:
    """Stage 1 of the search (see the module docstring)."""
    seeds = config.seed_list
    nodef, coarse = config.defenses[0], config.defenses[1:]
    units = base_units(config) + candidate_units(config, nodef, seeds)
    for defense in coarse:
        units += candidate_units(config, defense, seeds[:1], attacks=[])
    cands = [candidate(d) for d in config.defenses]
    deps = [u.key for u in units if u.kind == "target"]
    return [*units, make_unit("expand/refine", "expand", deps, stage="refine", candidates=cands)]


def _baseline(config: Any, out: Path, nodef: str) -> tuple[float, float]:
    accs = [a for s in config.seed_list if (a := target_accuracy(out, nodef, s)) is not None]
    return mean_std(accs)


def _screen(config: Any, out: Path, cands: list[dict[str, Any]], labels: set[str]) -> None:
    """Stop the candidates in ``labels`` whose seed-0 accuracy drop is clearly beyond the budget."""
    base_mean, base_std = _baseline(config, out, cands[0]["label"])
    seed0 = config.seed_list[0]
    budget = float(config.max_accuracy_drop)
    for c in cands:
        if c["label"] not in labels or c["skipped"]:
            continue
        acc = target_accuracy(out, c["label"], seed0)
        if acc is None:
            continue
        drop = base_mean - acc
        if drop > budget + base_std:
            c["skipped"] = (f"seed {seed0}: accuracy drop {drop:.1f} points, beyond the {budget:g}-point budget "
                            f"by more than NoDef's seed spread ({base_std:.1f})")


def _refinements(config: Any, cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New MIDRE candidates half a coarse step either side of the strongest a_h within budget."""
    from midre.defenses import build_defense
    from midre.errors import ConfigError

    midre = [c for c in cands[1:] if c["defense"]["name"] == "midre" and isinstance(c["defense"].get("a_h"),
                                                                                  int | float)]
    if not midre:
        return []
    values = sorted({float(c["defense"]["a_h"]) for c in midre})
    gaps = [b - a for a, b in zip(values, values[1:], strict=False) if b - a > 1e-9]
    step = min(gaps) if gaps else 0.2
    ok = [c for c in midre if not c["skipped"]]
    if ok:
        best = max(ok, key=lambda c: float(c["defense"]["a_h"]))
        centre = float(best["defense"]["a_h"])
        new_values = [centre - step / 2, centre + step / 2]
    else:  # every coarse a_h costs too much: look below the smallest
        best = min(midre, key=lambda c: float(c["defense"]["a_h"]))
        new_values = [float(best["defense"]["a_h"]) / 2]
    known = {c["label"] for c in cands}
    out = []
    for v in new_values:
        spec = {**best["defense"], "a_h": round(v, 6)}
        if not 0 < spec["a_h"] <= 1 or defense_label(spec) in known:
            continue
        try:
            build_defense(spec)
        except ConfigError:
            continue
        out.append(spec)
    return out


def run_expand(config: Any, out: Path, unit: Unit) -> tuple[dict[str, Any], list[Unit]]:
    """Run one stage of the search; returns (its result, the new units)."""
    stage = unit.params["stage"]
    cands = [dict(c) for c in unit.params["candidates"]]
    seeds = config.seed_list
    seed0 = seeds[0]
    if stage == "refine":
        _screen(config, out, cands, {c["label"] for c in cands[1:]})
        new_specs = _refinements(config, cands) if config.refine else []
        new_units: list[Unit] = []
        for spec in new_specs:
            cands.append(candidate(spec))
            new_units += candidate_units(config, spec, [seed0], attacks=[])
        nxt = make_unit("expand/select", "expand", [u.key for u in new_units] + [unit.key], stage="select",
                    candidates=cands)
        return {"skipped": _skips(cands), "refined": [defense_label(s) for s in new_specs]}, [*new_units, nxt]
    if stage == "select":
        _screen(config, out, cands, {c["label"] for c in cands[1:]})
        within = [c for c in cands[1:] if not c["skipped"]]
        new_units = [u for c in within for u in candidate_units(config, c["defense"], [seed0]) if u.kind == "attack"]
        nodef_attacks = [u.key for u in candidate_units(config, cands[0]["defense"], seeds) if u.kind == "attack"]
        nxt = make_unit("expand/confirm", "expand", [u.key for u in new_units] + nodef_attacks + [unit.key],
                    stage="confirm", candidates=cands)
        return {"skipped": _skips(cands), "within_budget": [c["label"] for c in within]}, [*new_units, nxt]
    if stage == "confirm":
        finalists = _confirm(config, out, cands)
        new_units = [u for c in finalists for u in candidate_units(config, c["defense"], seeds[1:])]
        deps = [u.key for u in new_units] + [unit.key]
        report = make_unit("report", "report", deps, candidates=cands)
        return {"skipped": _skips(cands), "finalists": [c["label"] for c in finalists]}, [*new_units, report]
    raise ValueError(f"{unit.key}: unknown harden stage {stage!r}")


def _skips(cands: list[dict[str, Any]]) -> dict[str, str]:
    return {c["label"]: c["skipped"] for c in cands if c["skipped"]}


def _confirm(config: Any, out: Path, cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stop candidates clearly dominated on seed 0; return the finalists (lowest seed-0 AttAcc first)."""
    seeds, seed0 = config.seed_list, config.seed_list[0]
    nodef = cands[0]["label"]
    base = {a: mean_std([v for s in seeds if (v := attack_top1(out, nodef, s, a)) is not None]) for a in config.attacks}
    within = [c for c in cands[1:] if not c["skipped"]]
    att0 = {c["label"]: {a: attack_top1(out, c["label"], seed0, a) for a in config.attacks} for c in within}
    att0 = {k: v for k, v in att0.items() if all(x is not None for x in v.values())}
    within = [c for c in within if c["label"] in att0]
    for c in within:
        mine = att0[c["label"]]
        if all(mine[a] >= base[a][0] for a in config.attacks):
            c["skipped"] = f"seed {seed0}: top-1 AttAcc not below NoDef's on any attack"
            continue
        for d in within:
            if d is c or d["skipped"]:
                continue
            theirs = att0[d["label"]]
            if all(theirs[a] < mine[a] - base[a][1] for a in config.attacks):
                c["skipped"] = (f"seed {seed0}: dominated by {d['label']} (lower top-1 AttAcc on every attack "
                                f"beyond NoDef's seed spread)")
                break
    def rank(c: dict[str, Any]) -> tuple[float, float]:  # lowest seed-0 AttAcc first; ties: higher accuracy
        return sum(att0[c["label"]].values()) / len(config.attacks), -(target_accuracy(out, c["label"], seed0) or 0.0)

    alive = sorted((c for c in within if not c["skipped"]), key=rank)
    for c in alive[config.finalists:]:
        c["skipped"] = (f"seed {seed0}: mean top-1 AttAcc {sum(att0[c['label']].values()) / len(config.attacks):.1f} "
                        f"%, not among the {config.finalists} lowest within budget")
    return alive[:config.finalists]


__all__ = ["plan_harden", "run_expand"]
