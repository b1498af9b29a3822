"""The harden search: the strongest defense within an accuracy budget, with fewer runs than the full grid.

Stages (each an ``expand`` unit of the study graph, :mod:`midre.plan`):

1. plan: NoDef on every seed (targets and attacks: the baseline), seed 0 of every coarse candidate
   (targets only);
2. ``expand/refine``: a candidate whose seed-0 accuracy drop exceeds the budget by more than NoDef's
   seed spread is stopped; a_h is refined around the strongest MIDRE candidate within budget
   (half the coarse step on either side); the new candidates' seed-0 targets follow;
3. ``expand/select``: the refined candidates are screened the same way; every candidate within
   budget is attacked on seed 0;
4. ``expand/confirm``: screening on seed 0 with 95 % intervals over identities
   (:mod:`midre.evaluation.evidence`): a candidate whose interval lies above NoDef's mean on every
   attack, or above another candidate's interval on every attack, is stopped; the ``finalists`` with
   the lowest seed-0 AttAcc go on, and so does every candidate whose interval overlaps the best one's
   on every attack (screening never drops a candidate the data cannot tell from the best); the
   finalists run every other seed;
5. ``expand/decide`` (repeated): each finalist within budget is compared with NoDef, paired by seed and
   identity (:func:`midre.report.intervals.comparison`); a finalist whose comparison says
   ``no_evidence`` on some attack gets one more seed (and NoDef with it), up to ``max_seeds``; then the
   report, whose recommendation needs ``lowers`` on every attack.

Stopped candidates stay in the frontier with the reason (``skipped``) and what they measured; each
finalist says how its evidence ended (``evidence``: decided after N seeds, or undecided at the cap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midre.defenses import defense_label
from midre.evaluation.evidence import interval
from midre.evaluation.metrics import mean_std
from midre.outputs import attack_top1, collect_records, target_accuracy
from midre.planners import base_units, candidate, candidate_units
from midre.report.intervals import by_seed, comparison
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
        for c in cands:
            c["seeds"] = list(seeds) if c is cands[0] or c in finalists else [seed0]
            c["finalist"] = c in finalists
        new_units = [u for c in finalists for u in candidate_units(config, c["defense"], seeds[1:])]
        nxt = make_unit("expand/decide-1", "expand", [u.key for u in new_units] + [unit.key], stage="decide",
                        candidates=cands)
        return {"skipped": _skips(cands), "finalists": [c["label"] for c in finalists]}, [*new_units, nxt]
    if stage == "decide":
        return _decide(config, out, unit, cands)
    raise ValueError(f"{unit.key}: unknown harden stage {stage!r}")


def _decide(config: Any, out: Path, unit: Unit, cands: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Unit]]:
    """Add a seed to every finalist within budget whose comparison with NoDef is undecided (up to
    ``max_seeds``), or hand over to the report."""
    base = cands[0]
    base_runs = collect_records(out, [base], base["seeds"], config.attacks)  # read once for every finalist
    undecided = []
    for c in cands[1:]:
        if not c.get("finalist") or c["skipped"]:
            continue
        verdicts = _verdicts(config, out, base_runs, c)
        if not verdicts:
            c["evidence"] = "no per-identity outcomes: the seed spread decides"
        elif any(v == "no_evidence" for v in verdicts.values()) and _within_budget(config, out, base, c):
            if len(c["seeds"]) < config.max_seeds:
                undecided.append(c)
            else:
                c["evidence"] = f"undecided at the cap of {config.max_seeds} seeds (--max-seeds)"
        else:
            c["evidence"] = f"decided after {len(c['seeds'])} seed{'s' if len(c['seeds']) != 1 else ''}"
    if not undecided:
        report = make_unit("report", "report", [unit.key], candidates=cands)
        return {"decided": {c["label"]: c.get("evidence") for c in cands[1:] if c.get("finalist")}}, [report]
    new_units: list[Unit] = []
    seed = max(max(c["seeds"]) for c in undecided) + 1
    if seed not in base["seeds"]:
        base["seeds"].append(seed)
        new_units += candidate_units(config, base["defense"], [seed])
    for c in undecided:
        c["seeds"].append(seed)
        new_units += candidate_units(config, c["defense"], [seed])
    step = int(unit.key.rsplit("-", 1)[-1]) + 1
    nxt = make_unit(f"expand/decide-{step}", "expand", [u.key for u in new_units] + [unit.key], stage="decide",
                    candidates=cands)
    return {"more_seeds": {c["label"]: seed for c in undecided}}, [*new_units, nxt]


def _verdicts(config: Any, out: Path, base_runs: list[dict[str, Any]], cand: dict[str, Any]) -> dict[str, str]:
    """``{attack (or attack@adaptive): lowers | raises | no_evidence}`` of a candidate against NoDef's runs."""
    own = collect_records(out, [cand], cand["seeds"], config.attacks)
    found = {}
    for attack in config.attacks:
        b = [r for r in base_runs if r["attack"] == attack and not r.get("adaptive")]
        for adaptive in (False, True):
            mine = [r for r in own if r["attack"] == attack and bool(r.get("adaptive")) == adaptive]
            if b and mine:
                c = comparison(attack, cand["label"], adaptive, b, mine, 0.0)
                if c is not None:
                    found[f"{attack}{'@adaptive' if adaptive else ''}"] = c["verdict"]
    return found


def _within_budget(config: Any, out: Path, base: dict[str, Any], cand: dict[str, Any]) -> bool:
    base_acc = mean_std([a for s in base["seeds"] if (a := target_accuracy(out, base["label"], s)) is not None])[0]
    accs = [a for s in cand["seeds"] if (a := target_accuracy(out, cand["label"], s)) is not None]
    return bool(accs) and base_acc - mean_std(accs)[0] <= float(config.max_accuracy_drop)


def _skips(cands: list[dict[str, Any]]) -> dict[str, str]:
    return {c["label"]: c["skipped"] for c in cands if c["skipped"]}


def _seed0_intervals(config: Any, out: Path, label: str, seed0: int) -> dict[str, tuple[float, float, float]] | None:
    """``{attack: (low, mean, high)}`` of a candidate's seed-0 top-1 AttAcc (interval over identities; the
    mean alone, as ``(mean, mean, mean)``, for runs without per-identity outcomes); ``None`` when an
    attack has not run."""
    out_map = {}
    for attack in config.attacks:
        mean = attack_top1(out, label, seed0, attack)
        if mean is None:
            return None
        runs = [r for r in collect_records(out, [{"label": label}], [seed0], [attack]) if not r.get("adaptive")]
        bounds = interval(list(by_seed(runs, "attacc_top1").values())) if runs else None
        out_map[attack] = (bounds[0], mean, bounds[1]) if bounds else (mean, mean, mean)
    return out_map


def _confirm(config: Any, out: Path, cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stop candidates clearly beaten on seed 0; return the finalists (lowest seed-0 AttAcc first)."""
    seeds, seed0 = config.seed_list, config.seed_list[0]
    nodef = cands[0]["label"]
    base = {a: mean_std([v for s in seeds if (v := attack_top1(out, nodef, s, a)) is not None]) for a in config.attacks}
    within = [c for c in cands[1:] if not c["skipped"]]
    ivs = {c["label"]: iv for c in within if (iv := _seed0_intervals(config, out, c["label"], seed0)) is not None}
    within = [c for c in within if c["label"] in ivs]
    if not within:
        return []

    def rank(c: dict[str, Any]) -> tuple[float, float]:  # lowest seed-0 AttAcc first; ties: higher accuracy
        return (sum(ivs[c["label"]][a][1] for a in config.attacks) / len(config.attacks),
                -(target_accuracy(out, c["label"], seed0) or 0.0))

    best = min(within, key=rank)
    near_best = {c["label"] for c in within
                 if all(ivs[c["label"]][a][0] <= ivs[best["label"]][a][2] for a in config.attacks)}
    for c in within:
        if c["label"] in near_best:
            continue  # the data cannot tell it from the best: never dropped here
        mine = ivs[c["label"]]
        if all(mine[a][0] >= base[a][0] for a in config.attacks):
            c["skipped"] = f"seed {seed0}: top-1 AttAcc interval not below NoDef's mean on any attack"
            continue
        for d in within:
            if d is c or d["skipped"]:
                continue
            theirs = ivs[d["label"]]
            if all(theirs[a][2] < mine[a][0] for a in config.attacks):
                c["skipped"] = (f"seed {seed0}: dominated by {d['label']} (its top-1 AttAcc interval lies below "
                                f"this one's on every attack)")
                break
    alive = sorted((c for c in within if not c["skipped"]), key=rank)
    for c in alive[config.finalists:]:
        if c["label"] in near_best:
            continue
        c["skipped"] = (f"seed {seed0}: mean top-1 AttAcc {rank(c)[0]:.1f} %, not among the {config.finalists} "
                        f"lowest within budget, and its interval does not overlap the best one's")
    return [c for c in alive if not c["skipped"]]


__all__ = ["plan_harden", "run_expand"]
