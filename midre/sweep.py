"""Sweeps over candidate defenses: the candidates grammar, the privacy-utility frontier, the recommendation.

Candidates grammar (``SweepConfig.candidates`` / ``midre sweep --candidates``)::

    nodef; midre:a_h=0.1..0.8; nls; bido; midre+nls

- candidates are separated by ``;`` (or given as a JSON list of such strings / defense objects);
- ``name:key=value,key=value`` sets parameters (``nls:alpha=-0.05``);
- ``key=lo..hi`` is an inclusive range in steps of 0.1, ``key=lo..hi/step`` sets the step
  (``a_h=0.2..0.8/0.2`` -> 0.2, 0.4, 0.6, 0.8);
- ``key=v1|v2|v3`` is a list (``a_h=0.3|0.5``);
- several ranges or lists in one candidate give every combination;
- ``a+b`` trains with both defenses at once (``midre:a_h=0.4+nls``: MIDRE erasing with the NLS loss).

NoDef is always the first candidate: it is the baseline every drop and reduction is measured from.

The frontier (``report.json`` ``frontier``) lists every candidate with its test accuracy and its top-1
AttAcc per attack (mean ± std over seeds), its accuracy drop from NoDef and whether it is
Pareto-optimal: no other candidate has at least its accuracy and at most its AttAcc on every
attack, one of them strictly.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midre.defenses import defense_label
from midre.errors import ConfigError
from midre.evaluation.metrics import summarize
from midre.outputs import target_accuracy
from midre.study import PipelineConfig

#: The default candidates of ``midre sweep``.
DEFAULT_SWEEP_CANDIDATES = "nodef; midre:a_h=0.2..0.8/0.2; nls; midre+nls"
#: The coarse grid ``midre harden`` starts from (refined around the best a_h afterwards).
DEFAULT_HARDEN_CANDIDATES = "midre:a_h=0.2..0.8/0.2"
#: Default step of a ``lo..hi`` range.
DEFAULT_RANGE_STEP = 0.1


# --------------------------------------------------------------------------- grammar


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(where, f"expected a number, got {text!r}") from None


def _values(raw: str, where: str) -> list[Any]:
    """The values of one ``key=...`` (a range, a ``|`` list or one value)."""
    raw = raw.strip()
    if ".." in raw:
        span, _, step_txt = raw.partition("/")
        lo_txt, _, hi_txt = span.partition("..")
        lo, hi = _number(lo_txt, where), _number(hi_txt, where)
        step = _number(step_txt, where) if step_txt else DEFAULT_RANGE_STEP
        if step <= 0 or hi < lo:
            raise ConfigError(where, f"range {raw!r} needs lo <= hi and a positive step")
        count = int(math.floor((hi - lo) / step + 1e-9)) + 1
        if count > 100:
            raise ConfigError(where, f"range {raw!r} has {count} values (at most 100)")
        return [round(lo + i * step, 6) for i in range(count)]
    out = []
    for item in raw.split("|"):
        item = item.strip()
        if not item:
            raise ConfigError(where, f"empty value in {raw!r}")
        try:
            out.append(json.loads(item))
        except json.JSONDecodeError:
            out.append(item)
    return out


def _parse_part(text: str, where: str) -> tuple[str, list[tuple[str, list[Any]]]]:
    name, _, params = text.strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise ConfigError(where, f"missing defense name in {text!r}")
    keyed = []
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(where, f"expected key=value, got {item!r}")
        keyed.append((key.strip(), _values(raw, f"{where}.{key.strip()}")))
    return name, keyed


def _expand_item(text: str, where: str) -> list[dict[str, Any]]:
    parts = [_parse_part(p, where) for p in text.split("+")]
    axes = [(i, key, values) for i, (_, keyed) in enumerate(parts) for key, values in keyed]
    out = []
    for combo in itertools.product(*(values for _, _, values in axes)):
        per_part: list[dict[str, Any]] = [{} for _ in parts]
        for (i, key, _), value in zip(axes, combo, strict=True):
            per_part[i][key] = value
        if len(parts) == 1:
            out.append({"name": parts[0][0], **per_part[0]})
        else:
            spec: dict[str, Any] = {"name": "+".join(name for name, _ in parts)}
            spec.update({name: params for (name, _), params in zip(parts, per_part, strict=True) if params})
            out.append(spec)
    return out


def parse_candidates(candidates: str | list[Any]) -> list[dict[str, Any]]:
    """Expand the candidates grammar into defense specs (:func:`midre.defenses.build_defense`), NoDef first.

    Raises:
        ConfigError: ``candidates[i]``: a malformed item or an unknown defense/parameter.
    """
    from midre.defenses import build_defense

    items: list[Any]
    if isinstance(candidates, str):
        items = [c for c in candidates.replace("\n", ";").split(";") if c.strip()]
    elif isinstance(candidates, list):
        items = []
        for item in candidates:  # a list element may itself hold several ';'-separated candidates
            items += [c for c in item.split(";") if c.strip()] if isinstance(item, str) else [item]
    else:
        raise ConfigError("candidates", f"expected a string or a list, got {type(candidates).__name__}")
    specs: list[dict[str, Any]] = [{"name": "nodef"}]
    seen = {"nodef"}
    for i, item in enumerate(items):
        where = f"candidates[{i}]"
        if isinstance(item, dict):
            if not isinstance(item.get("name"), str):
                raise ConfigError(where, "every candidate object needs a 'name'")
            expanded = [dict(item)]
        elif isinstance(item, str):
            expanded = _expand_item(item, where)
        else:
            raise ConfigError(where, f"expected a string or an object, got {item!r}")
        for spec in expanded:
            try:
                build_defense(spec)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc.field.removeprefix('defense')}", exc.message) from None
            label = defense_label(spec)
            if label not in seen:
                seen.add(label)
                specs.append(spec)
    return specs


def candidate_params(spec: dict[str, Any]) -> dict[str, Any]:
    """A defense spec's parameters, flat: ``{"a_h": 0.4}``, ``{"midre.a_h": 0.4}`` for a composed one."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- configs


@dataclass
class SweepConfig(PipelineConfig):
    """A pipeline over a grid of candidate defenses (the grammar of this module).

    Attributes:
        candidates: the grid (a string or a list); NoDef is always added first. ``defenses`` is
            derived from it.
        max_accuracy_drop: the accuracy budget (points) of the recommendation; ``None``: a sweep
            reports the frontier without recommending.
    """

    candidates: Any = DEFAULT_SWEEP_CANDIDATES
    max_accuracy_drop: float | None = None

    def __post_init__(self, check: bool = True) -> None:
        if not check:
            super().__post_init__(check)
            return
        if self.candidates is None or self.candidates == "" or self.candidates == []:
            raise ConfigError("candidates", "must name at least one candidate (e.g. 'midre:a_h=0.2..0.8/0.2')")
        self.defenses = parse_candidates(self.candidates)
        if self.max_accuracy_drop is not None and (
                isinstance(self.max_accuracy_drop, bool) or not isinstance(self.max_accuracy_drop, int | float)
                or not 0 <= self.max_accuracy_drop <= 100):
            raise ConfigError("max_accuracy_drop", f"must be a number of points in [0, 100], got "
                                                   f"{self.max_accuracy_drop!r}")
        super().__post_init__(check)


@dataclass
class HardenConfig(SweepConfig):
    """Find the strongest defense within an accuracy budget (``midre harden``).

    The search trains seed 0 of every coarse candidate, drops the ones whose accuracy drop is
    clearly beyond the budget, refines a_h around the strongest MIDRE candidate within budget,
    attacks seed 0 of the candidates within budget, drops the clearly dominated ones (by 95 %
    intervals), runs the remaining seeds of the finalists, and adds seeds to a finalist whose paired
    comparison with NoDef is still undecided, up to ``max_seeds`` (see :mod:`midre.harden`,
    docs/studies.md). Added seeds continue after the largest seed used.

    Attributes:
        max_accuracy_drop: accuracy budget in points (default 1.0).
        candidates: the coarse grid (default ``midre:a_h=0.2..0.8/0.2``).
        refine: refine a_h around the best MIDRE candidate of the coarse grid.
        finalists: candidates that go on to every seed after the seed-0 screening (and any whose
            seed-0 interval overlaps the best one's).
        max_seeds: a finalist whose paired comparison with NoDef is undecided gets one more seed at a
            time, up to this many (``seeds`` = ``max_seeds``: no sequential seeds).
    """

    candidates: Any = DEFAULT_HARDEN_CANDIDATES
    max_accuracy_drop: float | None = 1.0
    refine: bool = True
    finalists: int = 2
    max_seeds: int = 5
    defenses: list[Any] = field(default_factory=lambda: ["nodef"])

    def __post_init__(self, check: bool = True) -> None:
        if check and self.max_accuracy_drop is None:
            raise ConfigError("max_accuracy_drop", "a harden study needs an accuracy budget (points)")
        if check and (isinstance(self.finalists, bool) or not isinstance(self.finalists, int) or self.finalists < 1):
            raise ConfigError("finalists", f"must be an integer >= 1, got {self.finalists!r}")
        super().__post_init__(check)
        if check and (isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, int)
                      or not len(self.seed_list) <= self.max_seeds <= 50):
            raise ConfigError("max_seeds", f"must be an integer from the number of seeds ({len(self.seed_list)}) to "
                                           f"50, got {self.max_seeds!r}")



# --------------------------------------------------------------------------- frontier and recommendation


def pareto_flags(points: list[tuple[float, list[float]]]) -> list[bool]:
    """Pareto-optimal flags of ``(accuracy, [attacc per attack])`` points (accuracy up, every AttAcc down)."""
    flags = []
    for i, (acc_i, att_i) in enumerate(points):
        dominated = False
        for j, (acc_j, att_j) in enumerate(points):
            if i == j:
                continue
            no_worse = acc_j >= acc_i and all(b <= a for a, b in zip(att_i, att_j, strict=True))
            better = acc_j > acc_i or any(b < a for a, b in zip(att_i, att_j, strict=True))
            if no_worse and better:
                dominated = True
                break
        flags.append(not dominated)
    return flags


def build_frontier(candidates: list[dict[str, Any]], records: list[dict[str, Any]],
                   attacks: list[str]) -> list[dict[str, Any]]:
    """One frontier entry per candidate from the per-run records (``defense``, ``seed``, ``attack``, metrics).

    ``candidates``: ``[{"label", "defense", "skipped"}]`` (NoDef first). Accuracy comes from every seed
    with a record or a ``target_acc`` entry; entries without every attack are never Pareto-optimal.
    """
    entries = []
    for cand in candidates:
        label = cand["label"]
        own = [r for r in records if r["defense"] == label]
        accs = {}
        for r in own:
            accs.setdefault(r["seed"], float(r["acc"]))
        accs.update({int(s): float(a) for s, a in (cand.get("target_acc") or {}).items()})
        entry: dict[str, Any] = {
            "defense": label, "spec": cand["defense"], "params": candidate_params(cand["defense"]),
            "acc": summarize([accs[s] for s in sorted(accs)]) if accs else None,
            "attacc": {}, "attacc_top5": {}, "seeds": sorted(accs), "skipped": cand.get("skipped"),
        }
        for attack in attacks:
            runs = sorted((r for r in own if r["attack"] == attack), key=lambda r: r["seed"])
            if runs:
                entry["attacc"][attack] = summarize([float(r["attacc_top1"]) for r in runs])
                entry["attacc_top5"][attack] = summarize([float(r["attacc_top5"]) for r in runs])
                agree = [float(r["agreement"]) for r in runs if r.get("agreement") is not None]
                if agree:
                    entry.setdefault("agreement", {})[attack] = sum(agree) / len(agree)
        entries.append(entry)
    base_acc = entries[0]["acc"]["mean"] if entries and entries[0]["acc"] else None
    for e in entries:
        e["acc_drop"] = (base_acc - e["acc"]["mean"]) if base_acc is not None and e["acc"] else None
    complete = [i for i, e in enumerate(entries)
                if e["acc"] and all(a in e["attacc"] for a in attacks) and not e["skipped"]]
    flags = pareto_flags([(entries[i]["acc"]["mean"], [entries[i]["attacc"][a]["mean"] for a in attacks])
                          for i in complete])
    for e in entries:
        e["pareto"] = False
        e["pareto_by_attack"] = {}
    for i, flag in zip(complete, flags, strict=True):
        entries[i]["pareto"] = flag
    for attack in attacks:
        have = [i for i, e in enumerate(entries) if e["acc"] and attack in e["attacc"] and not e["skipped"]]
        per = pareto_flags([(entries[i]["acc"]["mean"], [entries[i]["attacc"][attack]["mean"]]) for i in have])
        for i, flag in zip(have, per, strict=True):
            entries[i]["pareto_by_attack"][attack] = flag
    return entries


def _pretty(entry: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
    name = {"nodef": "NoDef", "midre": "MIDRE"}.get(entry["spec"]["name"], entry["spec"]["name"].upper()
                                                    if len(entry["spec"]["name"]) <= 4 else entry["spec"]["name"])
    return f"{name} ({params})" if params else name


def _changes(base: dict[str, Any], entry: dict[str, Any], attacks: list[str]
             ) -> tuple[dict[str, float], list[str], list[str]]:
    """Per attack, NoDef's top-1 AttAcc minus the candidate's; the attacks it lowers and raises beyond the
    seed spread (the larger of the two stds)."""
    reductions, lowers, raises = {}, [], []
    for a in attacks:
        red = base["attacc"][a]["mean"] - entry["attacc"][a]["mean"]
        spread = max(base["attacc"][a]["std"], entry["attacc"][a]["std"])
        reductions[a] = red
        if red > spread:
            lowers.append(a)
        elif red < -spread:
            raises.append(a)
    return reductions, lowers, raises


def _no_recommendation(frontier: list[dict[str, Any]], within: list[dict[str, Any]], raised: list[dict[str, Any]],
                       max_accuracy_drop: float) -> str:
    """Why nothing is recommended, and the advice that fits what happened."""
    counted = f"{len(within)} of {len(frontier) - 1} candidates stayed within the budget"
    if not within:
        return (f"No candidate stayed within the {max_accuracy_drop:g}-point accuracy budget: nothing is "
                "recommended; keep NoDef, or allow a larger accuracy drop if the privacy gain is worth it.")
    if len(raised) == len(within):
        return (f"Every candidate within the budget raised top-1 AttAcc beyond the seed spread on some attack "
                f"({counted}): nothing is recommended; keep NoDef, and try other defenses rather than a larger "
                "budget.")
    return (f"No candidate lowers top-1 AttAcc beyond the seed spread within the {max_accuracy_drop:g}-point "
            f"accuracy budget ({counted}): nothing is recommended; keep NoDef, or run more seeds to narrow the "
            "spread.")


def candidate_evidence(frontier: list[dict[str, Any]], records: list[dict[str, Any]],
                       attacks: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{candidate: {attack or attack@adaptive: comparison}}``: each candidate against the baseline (the
    first entry), paired by seed and identity (:func:`midre.report.intervals.comparison`); empty for runs
    without per-identity outcomes."""
    from midre.report.intervals import comparison

    if not frontier:
        return {}
    base_label = frontier[0]["defense"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in frontier[1:]:
        for attack in attacks:
            base = [r for r in records if r["defense"] == base_label and r["attack"] == attack
                    and not r.get("adaptive")]
            for adaptive in (False, True):
                own = [r for r in records if r["defense"] == entry["defense"] and r["attack"] == attack
                       and bool(r.get("adaptive")) == adaptive]
                found = comparison(attack, entry["defense"], adaptive, base, own, entry["acc_drop"] or 0.0) \
                    if base and own else None
                if found is not None:
                    out.setdefault(entry["defense"], {})[f"{attack}{'@adaptive' if adaptive else ''}"] = found
    return out


def _deciding(found: dict[str, dict[str, Any]], attack: str) -> dict[str, Any] | None:
    """The comparison that decides an attack: the adaptive attacker's when it leaves the defense more
    AttAcc than the standard one."""
    standard, adaptive = found.get(attack), found.get(f"{attack}@adaptive")
    if standard is None or adaptive is None:
        return standard or adaptive
    return adaptive if adaptive["diff"] > standard["diff"] else standard


def _ci(c: dict[str, Any]) -> str:
    who = f"{c['attack']}{' (adaptive)' if c['adaptive'] else ''}"
    return (f"{-c['diff']:.1f} points against {who} (95 % CI {-c['ci_high']:.1f} to {-c['ci_low']:.1f}, "
            f"p = {c['p_value']:.3f})")


def recommend_with_evidence(frontier: list[dict[str, Any]], attacks: list[str], max_accuracy_drop: float,
                            evidence: dict[str, dict[str, dict[str, Any]]]) -> tuple[dict[str, Any] | None, str]:
    """The recommendation when the runs have per-identity outcomes: a candidate within the budget qualifies
    when, on every attack, its paired comparison with NoDef says ``lowers`` (for an attack also run
    adaptively, the stronger attacker decides); the largest mean reduction wins (ties: the smaller
    accuracy drop). The reason, or the note when nothing qualifies, cites the intervals."""
    within = [e for e in frontier[1:] if e["acc_drop"] is not None and e["acc_drop"] <= max_accuracy_drop
              and not e["skipped"]]
    decided = []
    for e in within:
        deciding = {a: _deciding(evidence.get(e["defense"], {}), a) for a in attacks}
        if any(c is None for c in deciding.values()):
            continue
        decided.append((e, deciding))
    qualified = [(e, d) for e, d in decided if len(e["seeds"]) >= 2 and all(c["verdict"] == "lowers"
                                                                             for c in d.values())]
    if not qualified:
        return None, _no_evidence_note(frontier, within, decided, max_accuracy_drop)
    qualified.sort(key=lambda q: (sum(c["diff"] for c in q[1].values()), q[0]["acc_drop"]))
    best, deciding = qualified[0]
    cost = (f"costs {best['acc_drop']:.1f} accuracy points" if best["acc_drop"] > 0
            else f"gains {-best['acc_drop']:.1f} accuracy points")
    among = ("the only candidate that qualifies" if len(qualified) == 1
             else f"the largest reduction among the {len(qualified)} candidates that qualify")
    adaptive = [a for a in attacks if f"{a}@adaptive" in evidence.get(best["defense"], {})]
    holds = f" It holds against the adaptive attacker on {', '.join(adaptive)}." if adaptive else ""
    reason = (f"{_pretty(best)} lowers top-1 AttAcc by {' and '.join(_ci(c) for c in deciding.values())} over "
              f"{len(best['seeds'])} seeds, and {cost}, within the {max_accuracy_drop:g}-point budget: {among}.{holds}")
    chosen = {**{k: best[k] for k in ("defense", "spec", "params", "acc", "acc_drop", "attacc", "seeds")},
              "reason": reason, "evidence": list(evidence.get(best["defense"], {}).values())}
    return chosen, reason


def _no_evidence_note(frontier: list[dict[str, Any]], within: list[dict[str, Any]],
                      decided: list[tuple[dict[str, Any], dict[str, Any]]], max_accuracy_drop: float) -> str:
    if not within:
        return _no_recommendation(frontier, within, [], max_accuracy_drop)
    if not decided:
        return ("No candidate within the budget has a paired comparison with NoDef on every attack: nothing is "
                "recommended.")
    closest, deciding = min(decided, key=lambda q: max(c["ci_high"] for c in q[1].values()))
    worst = max(deciding.values(), key=lambda c: c["ci_high"])
    what = {"raises": "raises", "no_evidence": "shows no evidence of a change in",
            "lowers": "lowers"}[worst["verdict"]]
    seeds = len(closest["seeds"])
    more = (" with only 1 seed the seed-to-seed spread is not measured; run at least 2" if seeds < 2 else
            " more seeds (--max-seeds) or identities would narrow the interval" if worst["verdict"] == "no_evidence"
            else " try other defenses rather than a larger budget")
    return (f"No candidate within the {max_accuracy_drop:g}-point budget lowers top-1 AttAcc on every attack with a "
            f"95 % interval below 0 ({len(within)} of {len(frontier) - 1} within the budget). The closest, "
            f"{_pretty(closest)}, {what} {worst['attack']}{' (adaptive)' if worst['adaptive'] else ''} top-1 AttAcc: "
            f"{worst['diff']:+.1f} points (95 % CI {worst['ci_low']:+.1f} to {worst['ci_high']:+.1f}) over {seeds} "
            f"seed{'s' if seeds != 1 else ''}. Nothing is recommended; keep NoDef, or{more}.")


def recommend(frontier: list[dict[str, Any]], attacks: list[str], max_accuracy_drop: float,
              evidence: dict[str, dict[str, dict[str, Any]]] | None = None) -> tuple[dict[str, Any] | None, str]:
    """The recommended candidate (with ``reason``) or ``None``, and one plain sentence either way.

    With ``evidence`` (:func:`candidate_evidence`, runs with per-identity outcomes) the paired intervals
    decide (:func:`recommend_with_evidence`). Without it (older runs):

    A candidate qualifies when (a) it has at least two seeds, (b) its mean accuracy is at most
    ``max_accuracy_drop`` points below NoDef's, (c) it lowers top-1 AttAcc below NoDef's by more
    than the seed spread (the larger of the two stds) on at least one attack and raises it beyond
    the spread on none. Among those, the largest mean reduction over the attacks wins (ties: the
    smaller accuracy drop).
    """
    if not frontier or not frontier[0].get("acc"):
        return None, "No NoDef baseline was trained, so nothing can be compared: no recommendation."
    base = frontier[0]
    if evidence:
        return recommend_with_evidence(frontier, attacks, max_accuracy_drop, evidence)
    if len(base["seeds"]) < 2:
        return None, ("Only one seed: there is no seed spread to tell a lower leakage from noise, so nothing is "
                      "recommended; run at least 2 seeds.")
    within = [e for e in frontier[1:] if e["acc_drop"] is not None and e["acc_drop"] <= max_accuracy_drop]
    qualified, raised = [], []
    for e in within:
        if e["skipped"] or len(e["seeds"]) < 2 or any(a not in e["attacc"] or a not in base["attacc"]
                                                      for a in attacks):
            continue
        reductions, lowers, raises = _changes(base, e, attacks)
        if lowers and not raises:
            qualified.append((sum(reductions.values()) / len(attacks), -e["acc_drop"], e, reductions, lowers))
        elif raises:
            raised.append(e)
    if not qualified:
        return None, _no_recommendation(frontier, within, raised, max_accuracy_drop)
    qualified.sort(key=lambda q: (q[0], q[1]), reverse=True)
    _, _, best, reductions, lowers = qualified[0]
    lowered = " and ".join(f"{reductions[a]:.1f} points against {a} ({base['attacc'][a]['mean']:.1f} → "
                           f"{best['attacc'][a]['mean']:.1f} %)" for a in lowers)
    cost = (f"costs {best['acc_drop']:.1f} accuracy points" if best["acc_drop"] > 0
            else f"gains {-best['acc_drop']:.1f} accuracy points")
    among = ("the only candidate that qualifies" if len(qualified) == 1
             else f"the largest reduction among the {len(qualified)} candidates that qualify")
    reason = (f"{_pretty(best)} lowers top-1 AttAcc by {lowered} beyond the seed spread and {cost}, within the "
              f"{max_accuracy_drop:g}-point budget: {among}.")
    chosen = {**{k: best[k] for k in ("defense", "spec", "params", "acc", "acc_drop", "attacc", "seeds")},
              "reason": reason}
    return chosen, reason


def frontier_section(config: Any, candidates: list[dict[str, Any]], records: list[dict[str, Any]],
                     out: Path) -> dict[str, Any]:
    """The report fields of a sweep/harden: ``frontier``, ``recommendation``, ``recommendation_note``,
    ``max_accuracy_drop``, and ``images``: the frontier plots ``frontier_<attack>.png`` (a recommendation's
    checkpoint is copied to ``recommended/``)."""
    from midre.report.frontier import frontier_plot

    candidates = [{**c, "target_acc": {s: acc for s in c.get("seeds") or config.seed_list
                                       if (acc := target_accuracy(out, c["label"], s)) is not None}}
                  for c in candidates]
    frontier = build_frontier(candidates, records, config.attacks)
    evidence = candidate_evidence(frontier, records, config.attacks)
    for entry in frontier:
        entry["comparisons"] = evidence.get(entry["defense"], {})
        note = next((c.get("evidence") for c in candidates if c["label"] == entry["defense"]), None)
        if note:
            entry["evidence"] = note
    section: dict[str, Any] = {"frontier": frontier, "recommendation": None, "recommendation_note": None,
                               "max_accuracy_drop": config.max_accuracy_drop}
    if config.max_accuracy_drop is not None:
        chosen, note = recommend(frontier, config.attacks, float(config.max_accuracy_drop), evidence)
        section["recommendation"], section["recommendation_note"] = chosen, note
        if chosen is not None:
            section["recommendation"]["checkpoint"] = export_recommended(out, chosen["defense"], chosen["seeds"][0])
    chosen = section["recommendation"]
    section["images"] = {f"frontier_{attack}.png": frontier_plot(frontier, attack, recommended=chosen["defense"]
                                                                 if chosen else None,
                                                                 max_accuracy_drop=config.max_accuracy_drop)
                         for attack in config.attacks}
    return section


def export_recommended(out: Path, label: str, seed: int) -> str:
    """Copy the recommended candidate's target (``model.safetensors`` + ``model.json``) to ``out/recommended``."""
    import shutil

    src = out / "targets" / label / f"seed{seed}"
    dst = out / "recommended"
    tmp = out / "recommended.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(src / name, tmp / name)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.replace(dst)
    return "recommended"


__all__ = ["DEFAULT_HARDEN_CANDIDATES", "DEFAULT_SWEEP_CANDIDATES", "HardenConfig", "SweepConfig", "build_frontier",
           "candidate_params", "frontier_section", "pareto_flags", "parse_candidates", "recommend"]
