"""Leakage statements and warnings for every report, and the warnings of one trained model.

A report must say how much the model leaks even when there is no defense to compare with, and it
must say when its own numbers cannot be trusted. Both are computed from ``report.json``'s content
alone (a dict), so they can be recomputed for old reports:

* :func:`leakage_statements`: per attack, the baseline's (or only model's) pooled top-1 AttAcc
  against chance (``1 / identities``) and against the upper reference, the judges' accuracy on
  real held-out private images (what an attack that recovered the private images exactly would
  score), with a level ``none`` / ``low`` / ``moderate`` / ``high``.
* :func:`report_warnings`: ``judge_below_floor``, ``attack_at_chance``, ``target_near_chance``,
  ``single_seed``, ``judges_disagree``.
* :func:`train_warnings`: ``target_near_chance`` for one trained model.

All percentages are in percent (as in ``report.json``). The thresholds are the module constants
below; docs/attacks.md ("Verdicts and warnings") explains each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: A judge whose held-out accuracy (percent) is below this is not a trustworthy instrument: its
#: AttAcc under-counts recognisable reconstructions and its errors dominate the measurement.
JUDGE_ACCURACY_FLOOR = 90.0

#: An attack is "at chance" when its top-1 AttAcc is within this share of the way from chance to
#: the upper reference (5 %): 2.5 % chance and a 98 % reference give a 7.3 % limit.
ATTACK_NEAR_CHANCE_SHARE = 0.05

#: A model's test accuracy is "near chance" when it is within this share of the way from chance to
#: 100 % (10 %): with 40 identities (2.5 % chance), below 12.25 %.
TARGET_NEAR_CHANCE_SHARE = 0.10

#: Reconstructions whose mean per-image pixel standard deviation (``[0, 1]`` pixel units) is below
#: this are flat (a uniform grey carries no face); natural face photos are around 0.15-0.3.
FLAT_PIXEL_STD = 0.02

#: Leakage levels, as the share of the way from chance to the upper reference that the pooled
#: top-1 AttAcc covers: below :data:`LOW_BELOW` "low", from :data:`HIGH_FROM` "high", "moderate"
#: between; "none" when the attack is at chance.
LOW_BELOW = 0.15
HIGH_FROM = 0.40

#: Judges "disagree" when the spread (max - min) of their top-1 AttAcc on the same runs exceeds the
#: seed-to-seed standard deviation of the pooled AttAcc, and at least this many points (so that one
#: seed, whose spread is unknown, and near-identical judges do not warn on noise).
JUDGE_DISAGREE_MIN_POINTS = 5.0

#: Display names of the attacks in statements.
ATTACK_NAMES = {
    "mi-face": "MI-Face", "deepinversion": "DeepInversion", "gmi": "GMI", "kedmi": "KEDMI",
    "lomma+gmi": "LOMMA+GMI", "lomma+kedmi": "LOMMA+KEDMI", "plg-mi": "PLG-MI", "rlb-mi": "RLB-MI",
    "brep-mi": "BREP-MI", "ppa": "PPA", "if-gmi": "IF-GMI", "mirror": "MIRROR",
}


def attack_name(attack: str) -> str:
    """The attack's display name (``deepinversion`` -> ``DeepInversion``)."""
    return ATTACK_NAMES.get(attack, attack)


def defense_name(defense: str) -> str:
    """The defense's display name (``nodef`` -> ``NoDef``)."""
    return {"nodef": "NoDef", "midre": "MIDRE"}.get(str(defense).lower(), str(defense))


# --------------------------------------------------------------------------- reading a report


def chance_level(report: dict[str, Any]) -> float | None:
    """Top-1 chance in percent: ``100 / identities`` of the data set (None when unknown)."""
    n = (report.get("dataset") or {}).get("identities")
    if isinstance(n, int | float) and n >= 1:
        return 100.0 / float(n)
    return None


def judges_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's judges (``report["judges"]``), or its single evaluation model."""
    judges = report.get("judges")
    if isinstance(judges, list) and judges:
        return [j for j in judges if isinstance(j, dict)]
    ev = (report.get("models") or {}).get("evaluation")
    return [ev] if isinstance(ev, dict) and ev else []


def upper_reference(report: dict[str, Any]) -> float | None:
    """The judges' mean accuracy (percent) on real private images: the most an attack can score."""
    accs = [float(j["accuracy"]) for j in judges_of(report) if _finite(j.get("accuracy"))]
    return sum(accs) / len(accs) if accs else None


def baseline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per attack, the row of the baseline: the NoDef row when there is one, else the first row."""
    rows: dict[str, dict[str, Any]] = {}
    for row in report.get("results") or []:
        attack = row.get("attack")
        if attack not in rows or (str(row.get("defense", "")).lower() == "nodef"
                                  and str(rows[attack].get("defense", "")).lower() != "nodef"):
            rows[attack] = row
    return list(rows.values())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _stat(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    stat = (row.get("metrics") or {}).get(name)
    return stat if isinstance(stat, dict) and _finite(stat.get("mean")) else None


def near_chance(value: float, chance: float, top: float, share: float) -> bool:
    """Is ``value`` within ``share`` of the way from ``chance`` to ``top``?"""
    return value <= chance + share * max(top - chance, 0.0)


# --------------------------------------------------------------------------- leakage


def _level(attacc: float, chance: float, reference: float) -> str:
    if near_chance(attacc, chance, reference, ATTACK_NEAR_CHANCE_SHARE):
        return "none"
    share = (attacc - chance) / max(reference - chance, 1e-9)
    return "low" if share < LOW_BELOW else "high" if share >= HIGH_FROM else "moderate"


def leakage_statements(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One plain statement per attack on the baseline (or only) model.

    Returns:
        ``[{"attack", "defense", "level", "attacc", "attacc_std", "chance", "reference", "text",
        "judges_disagree"}]``;
        ``attacc`` is the pooled top-1 AttAcc (mean over seeds), ``reference`` the judges' accuracy
        on real held-out private images (100 when the report has none), all in percent.
    """
    chance = chance_level(report)
    reference = upper_reference(report)
    out = []
    for row in baseline_rows(report):
        stat = _stat(row, "attacc_top1")
        if stat is None or chance is None:
            continue
        attacc, std, n = float(stat["mean"]), float(stat.get("std") or 0.0), int(stat.get("n") or 1)
        top = reference if reference is not None and reference > chance else 100.0
        level = _level(attacc, chance, top)
        name = attack_name(str(row["attack"]))
        value = f"{attacc:.0f} ± {std:.0f} %" if n > 1 else f"{attacc:.0f} %"
        ratio = attacc / chance if chance > 0 else float("inf")
        ref_text = (f"; the judges recognise {reference:.0f} % of real held-out private images"
                    if reference is not None else "")
        judge_means = [float(j["attacc_top1"]["mean"]) for j in row.get("judges") or []
                       if isinstance(j.get("attacc_top1"), dict) and _finite(j["attacc_top1"].get("mean"))]
        if len(judge_means) > 1:
            low, high = f"{min(judge_means):.0f}", f"{max(judge_means):.0f}"
            value += f" (every judge {low} %)" if low == high else f" (judges {low}-{high} %)"
        if level == "none":
            text = (f"none measured: {name} recovers {value} of identities, about chance ({chance:.1f} %){ref_text}. "
                    f"The attack failed here; that is not evidence that the model does not leak.")
        else:
            text = f"{level}: {name} recovers {value} of identities, {ratio:.1f}x chance ({chance:.1f} %){ref_text}."
        out.append({"attack": row["attack"], "defense": row.get("defense"), "level": level, "attacc": attacc,
                    "attacc_std": std, "chance": chance, "reference": reference, "text": text,
                    "judges_disagree": judges_disagree(row, report.get("runs") or ()) is not None})
    return out


# --------------------------------------------------------------------------- warnings


def _judge_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for judge in judges_of(report):
        acc = judge.get("accuracy")
        if not _finite(acc) or float(acc) >= JUDGE_ACCURACY_FLOOR:
            continue
        split = "held-out" if judge.get("accuracy_split", "test") == "test" else "training"
        seed = f" (seed {judge['seed']})" if judge.get("seed") is not None else ""
        out.append({"code": "judge_below_floor", "judge": judge.get("arch"),
                    "message": f"Judge {judge.get('arch')}{seed} recognises only {float(acc):.1f} % of {split} "
                               f"private images (floor {JUDGE_ACCURACY_FLOOR:.0f} %): its AttAcc under-counts "
                               f"recognisable reconstructions. Train the judges longer (more evaluation "
                               f"epochs) before reading AttAcc."})
    return out


def _attack_warnings(report: dict[str, Any], chance: float | None) -> list[dict[str, Any]]:
    out = []
    reference = upper_reference(report)
    base_ids = {id(r) for r in baseline_rows(report)}
    for row in report.get("results") or []:
        attack, defense = str(row.get("attack")), str(row.get("defense"))
        name, dname = attack_name(attack), defense_name(defense)
        flat = _stat(row, "pixel_std")
        if flat is not None and float(flat["mean"]) < FLAT_PIXEL_STD:
            out.append({"code": "attack_at_chance", "attack": attack, "defense": defense,
                        "message": f"{name} on {dname} produced flat images (mean pixel std "
                                   f"{float(flat['mean']):.3f} < {FLAT_PIXEL_STD}): the attack failed, which says "
                                   f"nothing about leakage. Raise its steps or learning rate, or use another attack."})
            continue
        stat = _stat(row, "attacc_top1")
        if id(row) not in base_ids or stat is None or chance is None:
            continue  # a defended model at chance is the defense working, when the baseline is not at chance
        top = reference if reference is not None and reference > chance else 100.0
        if near_chance(float(stat["mean"]), chance, top, ATTACK_NEAR_CHANCE_SHARE):
            out.append({"code": "attack_at_chance", "attack": attack, "defense": defense,
                        "message": f"{name} on {dname} is at chance ({float(stat['mean']):.1f} % top-1 AttAcc, "
                                   f"chance {chance:.1f} %): the attack failed, which is not evidence that the model "
                                   f"does not leak. Raise the attack's budget or use a stronger attack."})
    return out


def _target_accuracies(report: dict[str, Any]) -> dict[str, float]:
    """Mean test accuracy (percent) per defense, from the result rows."""
    accs: dict[str, float] = {}
    for row in report.get("results") or []:
        stat = _stat(row, "acc")
        if stat is not None:
            accs.setdefault(str(row.get("defense")), float(stat["mean"]))
    return accs


def _target_warnings(report: dict[str, Any], chance: float | None) -> list[dict[str, Any]]:
    if chance is None:
        return []
    out = []
    for defense, acc in _target_accuracies(report).items():
        if near_chance(acc, chance, 100.0, TARGET_NEAR_CHANCE_SHARE):
            out.append({"code": "target_near_chance", "defense": defense,
                        "message": f"The {defense_name(defense)} target's test accuracy {acc:.1f} % is near chance "
                                   f"({chance:.1f} %): it has barely learned the identities, so attacking it "
                                   f"measures little. Train it longer or check its data."})
    return out


def _seed_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    seeds = report.get("seeds")
    if isinstance(seeds, Sequence) and not isinstance(seeds, str):
        count = len(set(seeds))
    else:
        counts = [int(s["n"]) for r in report.get("results") or [] for s in [_stat(r, "attacc_top1")] if s]
        count = max(counts) if counts else 0
    if count != 1:
        return []
    return [{"code": "single_seed",
             "message": "One seed only: no ± over seeds, so no change can be told apart from seed-to-seed noise. "
                        "Run at least 2 seeds (3 by default) before concluding."}]


def judge_spread(row: dict[str, Any], runs: Sequence[dict[str, Any]] = ()) -> dict[str, float] | None:
    """``{"spread", "seed_std"}`` of a result row: max - min of the judges' mean top-1 AttAcc and the
    seed std of the pooled AttAcc (points). ``None`` without two judges."""
    per_judge = row.get("judges")
    if not isinstance(per_judge, list) or len(per_judge) < 2:
        sel = [r for r in runs if r.get("attack") == row.get("attack") and r.get("defense") == row.get("defense")
               and isinstance(r.get("judges"), list)]
        per_judge = summarize_judges(sel)
    means = [float(s["mean"]) for j in per_judge or [] for s in [j.get("attacc_top1")]
             if isinstance(s, dict) and _finite(s.get("mean"))]
    if len(means) < 2:
        return None
    stat = _stat(row, "attacc_top1")
    seed_std = float(stat.get("std") or 0.0) if stat else 0.0
    return {"spread": max(means) - min(means), "seed_std": seed_std}


def summarize_judges(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-judge AttAcc over the ``runs`` of one row: ``[{"arch", "seed", "attacc_top1": summary,
    "attacc_top5": summary}]`` in the judges' order (judges matched by position, arch and seed)."""
    from midre.evaluation.metrics import summarize

    groups: dict[tuple[int, Any, Any], dict[str, list[float]]] = {}
    for run in runs:
        for i, judge in enumerate(run.get("judges") or []):
            key = (i, judge.get("arch"), judge.get("seed"))
            vals = groups.setdefault(key, {"attacc_top1": [], "attacc_top5": []})
            for m in vals:
                if _finite(judge.get(m)):
                    vals[m].append(float(judge[m]))
    return [{"arch": arch, "seed": seed, **{m: summarize(v) for m, v in vals.items() if v}}
            for (_, arch, seed), vals in sorted(groups.items(), key=lambda kv: kv[0][0])]


def judges_disagree(row: dict[str, Any], runs: Sequence[dict[str, Any]] = ()) -> dict[str, float] | None:
    """The row's :func:`judge_spread` when the judges disagree (spread above both the seed std of the
    pooled AttAcc and :data:`JUDGE_DISAGREE_MIN_POINTS`), else ``None``."""
    spread = judge_spread(row, runs)
    if spread is None:
        return None
    limit = max(spread["seed_std"], JUDGE_DISAGREE_MIN_POINTS)
    return {**spread, "limit": limit} if spread["spread"] > limit else None


def _disagreement_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    runs = report.get("runs") or []
    for row in report.get("results") or []:
        spread = judges_disagree(row, runs)
        if spread is not None:
            attack, defense = str(row.get("attack")), str(row.get("defense"))
            out.append({"code": "judges_disagree", "attack": attack, "defense": defense,
                        "message": f"The judges disagree on {attack_name(attack)} against {defense_name(defense)}: "
                                   f"their top-1 AttAcc differ by {spread['spread']:.1f} points, more than the seed "
                                   f"spread ({spread['seed_std']:.1f}) and {JUDGE_DISAGREE_MIN_POINTS:.0f} points. "
                                   f"Read the pooled figure with that error bar; a better-trained or additional "
                                   f"judge narrows it."})
    return out


def _attack_id_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``attack_id_differs``: rows of one attack (or the runs of one row) ran different attack code or settings
    (their versioned ids, :func:`midre.attacks.registry.attack_id`, differ), so they are not like for like."""
    ids: dict[str, set[str]] = {}
    for row in report.get("results") or []:
        found = [row["attack_id"]] if row.get("attack_id") else list(row.get("attack_ids") or [])
        ids.setdefault(str(row.get("attack")), set()).update(str(i) for i in found)
    return [{"code": "attack_id_differs", "attack": attack,
             "message": f"The runs of {attack_name(attack)} do not share one attack id ({', '.join(sorted(found))}): "
                        f"they ran different attack versions or settings, so their rows are not like for like. "
                        f"Re-run them with one version and one set of settings before comparing."}
            for attack, found in ids.items() if len(found) > 1]


def recommendation_caveats(report: dict[str, Any]) -> list[str]:
    """What limits a sweep's or harden search's recommendation: judges below their accuracy floor, judges
    that disagree by more than the effect the recommendation rests on, and few seeds."""
    rec = report.get("recommendation")
    frontier = report.get("frontier") or []
    if not rec or not frontier:
        return []
    out = []
    low = [j for j in judges_of(report) if _finite(j.get("accuracy")) and float(j["accuracy"]) < JUDGE_ACCURACY_FLOOR]
    if low:
        names = ", ".join(f"{j.get('arch')} {float(j['accuracy']):.0f} %" for j in low)
        out.append(f"{len(low)} of {len(judges_of(report))} judges recognise fewer held-out private images than the "
                   f"{JUDGE_ACCURACY_FLOOR:.0f} % floor ({names}): AttAcc under-counts recognisable reconstructions")
    base, runs = frontier[0], report.get("runs") or ()
    for row in report.get("results") or []:
        attack = row.get("attack")
        compared = row.get("defense") in (rec.get("defense"), base.get("defense"))
        if not compared or attack not in (rec.get("attacc") or {}) or attack not in (base.get("attacc") or {}):
            continue
        effect = float(base["attacc"][attack]["mean"]) - float(rec["attacc"][attack]["mean"])
        spread = judge_spread(row, runs)
        if spread is not None and spread["spread"] > abs(effect):
            out.append(f"the judges disagree by {spread['spread']:.1f} points on {attack_name(str(attack))} against "
                       f"{defense_name(str(row['defense']))}, more than the {effect:.1f}-point effect")
    seeds = len(rec.get("seeds") or [])
    if seeds < 3:
        out.append(f"only {seeds} seeds: the seed spread the decision rests on is itself rough")
    return out


def report_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every warning that applies to ``report``: ``[{"code", "message", "attack"?, "defense"?}]``.

    Codes: ``judge_below_floor``, ``attack_at_chance`` (a failed attack, flat reconstructions
    included), ``target_near_chance``, ``single_seed``, ``judges_disagree``, ``attack_id_differs``.
    """
    chance = chance_level(report)
    return (_judge_warnings(report) + _attack_warnings(report, chance) + _target_warnings(report, chance)
            + _seed_warnings(report) + _disagreement_warnings(report) + _attack_id_warnings(report))


def train_warnings(metrics: dict[str, Any], num_classes: int) -> list[dict[str, Any]]:
    """Warnings for one trained model: ``target_near_chance`` when its test accuracy is near chance.

    Args:
        metrics: the model's metrics: ``test_accuracy`` (a fraction, as :func:`midre.train.train`
            reports it) or ``acc`` (percent).
        num_classes: its number of identities.
    """
    if num_classes < 2:
        return []
    if _finite(metrics.get("test_accuracy")):
        acc = 100.0 * float(metrics["test_accuracy"])
    elif _finite(metrics.get("acc")):
        acc = float(metrics["acc"])
    else:
        return []
    chance = 100.0 / num_classes
    if not near_chance(acc, chance, 100.0, TARGET_NEAR_CHANCE_SHARE):
        return []
    return [{"code": "target_near_chance",
             "message": f"Test accuracy {acc:.2f} % is near chance ({chance:.2f} % for {num_classes} identities): "
                        f"the model has barely learned. Train longer (--epochs), check the data and the "
                        f"learning rate before attacking or serving it."}]


__all__ = ["ATTACK_NEAR_CHANCE_SHARE", "FLAT_PIXEL_STD", "HIGH_FROM", "JUDGE_ACCURACY_FLOOR",
           "JUDGE_DISAGREE_MIN_POINTS", "LOW_BELOW", "TARGET_NEAR_CHANCE_SHARE", "attack_name", "baseline_rows",
           "chance_level", "judge_spread", "judges_disagree", "judges_of", "leakage_statements", "near_chance",
           "report_warnings", "summarize_judges", "train_warnings", "upper_reference"]
