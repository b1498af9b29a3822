"""The planners of the built-in study kinds: which units a study starts with.

- ``train``: one unit that trains the model into the study's folder;
- ``pipeline`` (and ``sweep``): the judges (``judge/<arch>-s<seed>``, trained once, cached), the
  target-independent GAN priors (``prior/gmi-<hash>``), one target per (defense, seed)
  (``target/<defense>/seed<k>``), one attack run per (target, attack)
  (``attack/<defense>/seed<k>/<attack>``) and the ``report``;
- ``attack_eval``: the judges (unless an evaluation model is given), the priors, one attack run per
  (seed, attack) against the given target, and the ``report``.

The harden search plans in stages (:mod:`midre.harden`) with the same building blocks.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from midre.defenses import defense_label
from midre.units import Unit, make_unit


def judge_key(cfg: Any) -> str:
    return f"judge/{cfg.arch}-s{cfg.seed}"


def prior_key(prior_cfg: Any) -> str:
    blob = json.dumps(prior_cfg.to_dict(), sort_keys=True)
    return f"prior/gmi-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def target_key(label: str, seed: int) -> str:
    return f"target/{label}/seed{seed}"


def attack_key(label: str, seed: int, attack: str, adaptive: bool = False) -> str:
    return f"attack/{label}/seed{seed}/{attack}{'@adaptive' if adaptive else ''}"


def gmi_prior_config(settings: Any, attack: str) -> Any:
    """The :class:`midre.priors.PriorConfig` of the target-independent GMI prior an attack uses, or ``None``.

    Every attack registered with ``needs="gmi"`` (:func:`midre.attacks.register_attack`) gets it.
    """
    from midre.attacks.registry import get_attack
    from midre.priors import PriorConfig

    if get_attack(attack).needs != "gmi":
        return None
    budget = settings.budget_for(attack)
    options = settings.options_for(attack)
    return PriorConfig(**{"kind": "gmi", "steps": budget.prior_steps, "seed": 0, **options.get("prior", {})})


def target_label(card: dict[str, Any]) -> str:
    """The folder-safe name of a given target in its report: its defense's name when ``midre`` trained
    it, else the name it was uploaded under, else ``target``."""
    defense = card.get("defense")
    if isinstance(defense, dict) and isinstance(defense.get("name"), str) and defense["name"]:
        return defense["name"]
    name = str((card.get("origin") or {}).get("name") or "")
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")[:40]
    return slug or "target"


def judge_units(config: Any) -> list[Unit]:
    """One unit per judge (none when the study is given its evaluation model)."""
    if getattr(config, "eval_model", None):
        return []
    return [make_unit(judge_key(c), "judge", config=c.to_dict()) for c in config.judge_configs()]


def base_units(config: Any) -> list[Unit]:
    """Judge and prior units of a study (independent of the targets)."""
    units = judge_units(config)
    seen: set[str] = set()
    for attack in config.attacks:
        cfg = gmi_prior_config(config, attack)
        if cfg is not None and prior_key(cfg) not in seen:
            seen.add(prior_key(cfg))
            units.append(make_unit(prior_key(cfg), "prior", config=cfg.to_dict()))
    return units


def _attack_deps(config: Any, attack: str) -> list[str]:
    prior = gmi_prior_config(config, attack)
    return [u.key for u in judge_units(config)] + ([prior_key(prior)] if prior is not None else [])


def candidate_units(config: Any, defense: dict[str, Any], seeds: list[int],
                    attacks: list[str] | None = None) -> list[Unit]:
    """Target units of one defense (one per seed) and its attack units (one per seed and attack)."""
    label = defense_label(defense)
    units: list[Unit] = []
    for seed in seeds:
        tkey = target_key(label, seed)
        units.append(make_unit(tkey, "target", label=label, defense=defense, seed=seed))
        for attack in attacks if attacks is not None else config.attacks:
            units.append(make_unit(attack_key(label, seed, attack), "attack", [tkey, *_attack_deps(config, attack)],
                                   label=label, defense=defense, seed=seed, attack=attack))
        units += adaptive_units(config, defense, label, seed, attacks, [tkey])
    return units


def adaptive_units(config: Any, defense: dict[str, Any], label: str, seed: int, attacks: list[str] | None,
                   deps: list[str]) -> list[Unit]:
    """The adaptive attacker's runs of one target: one per adaptive attack, none when the defense has no
    transform to adapt to (the report says why)."""
    from midre.defenses import adaptive_refusal

    chosen = [a for a in config.adaptive_attacks() if attacks is None or a in attacks]
    if not chosen or adaptive_refusal(defense) is not None:
        return []
    return [make_unit(attack_key(label, seed, attack, True), "attack", [*deps, *_attack_deps(config, attack)],
                      label=label, defense=defense, seed=seed, attack=attack, adaptive=True) for attack in chosen]


def candidate(defense: dict[str, Any], skipped: str | None = None, label: str | None = None) -> dict[str, Any]:
    """A candidate of a study's report: ``{"label", "defense", "skipped"}``."""
    return {"label": label or defense_label(defense), "defense": defense, "skipped": skipped}


def report_unit(units: list[Unit], candidates: list[dict[str, Any]]) -> Unit:
    """The final unit: depends on every attack unit; ``candidates`` = ``[{"label", "defense", "skipped"}]``."""
    deps = [u.key for u in units if u.kind in ("attack", "target", "judge")]
    return make_unit("report", "report", deps, candidates=candidates)


def plan_train(config: Any) -> list[Unit]:
    """A training job: one unit."""
    return [make_unit("train", "train")]


def plan_pipeline(config: Any) -> list[Unit]:
    """Every unit of a pipeline or sweep study, up front."""
    units = base_units(config)
    for defense in config.defenses:
        units += candidate_units(config, defense, config.seed_list)
    return [*units, report_unit(units, [candidate(d) for d in config.defenses])]


def plan_attack_eval(config: Any) -> list[Unit]:
    """Attack runs of the one given target, per seed and attack (no target to train)."""
    card = config.card()
    label = target_label(card)
    defense = card.get("defense") if isinstance(card.get("defense"), dict) else {"name": label}
    units = base_units(config)
    if config.adaptive_attacks():
        config.adaptive_refusal()
    for seed in config.seed_list:
        for attack in config.attacks:
            units.append(make_unit(attack_key(label, seed, attack), "attack", _attack_deps(config, attack),
                                   label=label, defense=defense, seed=seed, attack=attack))
        units += adaptive_units(config, defense, label, seed, None, [])
    return [*units, report_unit(units, [candidate(defense, label=label)])]


__all__ = ["adaptive_units", "attack_key", "base_units", "candidate", "candidate_units", "gmi_prior_config",
           "judge_key", "plan_attack_eval", "plan_pipeline", "plan_train", "prior_key", "report_unit", "target_key",
           "target_label"]
