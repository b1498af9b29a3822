"""The engine of studies as graphs of small, idempotent units (the API is :mod:`midre.plan`).

Which units a study has (judges, priors, targets, attacks, expansions, the report), what each writes
in ``out_dir`` and why units of one study may run at the same time in several processes: see the
module docstring of :mod:`midre.plan`. This module holds their bodies and the sequential driver.

Example (through :mod:`midre.plan`):
    >>> from midre.plan import plan_study, run_unit, study_config
    >>> config = study_config("pipeline", {"data": "digits", "seeds": 2})
    >>> units = plan_study(config)
    >>> for unit in units:  # in dependency order (plan_study's order is one)
    ...     units += run_unit(config, "runs/s", unit)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midre.attacks import run_attack
from midre.errors import ConfigError
from midre.evaluation import feature_space_analysis
from midre.evaluation.judges import record_fields
from midre.progress import Cancelled, ProgressCallback, ProgressEvent, StopCallback, never_stop, no_progress, scaled

logger = logging.getLogger(__name__)

#: Relative cost of each unit kind (progress = finished weight / total weight).
WEIGHTS = {"judge": 1.0, "prior": 0.5, "target": 2.0, "attack": 1.5, "expand": 0.05, "report": 0.3}


@dataclass(frozen=True)
class Unit:
    """One task of a study.

    Attributes:
        key: unique in the study and folder-safe (``target/midre-a_h0.4/seed1``).
        kind: ``judge``, ``prior``, ``target``, ``attack``, ``expand`` or ``report``.
        deps: keys of the units that must have finished before this one runs.
        weight: relative cost estimate.
        params: JSON-able inputs beyond the study config.
    """

    key: str
    kind: str
    deps: tuple[str, ...] = ()
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "deps": list(self.deps), "weight": self.weight,
                "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Unit:
        return cls(key=data["key"], kind=data["kind"], deps=tuple(data.get("deps") or ()),
                   weight=float(data.get("weight", 1.0)), params=dict(data.get("params") or {}))

    def __hash__(self) -> int:
        return hash(self.key)


def _unit(key: str, kind: str, deps: tuple[str, ...] | list[str] = (), **params: Any) -> Unit:
    return Unit(key=key, kind=kind, deps=tuple(deps), weight=WEIGHTS.get(kind, 1.0), params=params)


# --------------------------------------------------------------------------- configs


def study_kind(config: Any) -> str:
    """``pipeline``, ``sweep`` or ``harden`` for a config object (its ``study_kind``; pipeline by default)."""
    return str(getattr(config, "study_kind", "pipeline"))


# --------------------------------------------------------------------------- shared study state


@dataclass
class StudyContext:
    """What every unit of one study needs: the data, where to cache, which identities to attack."""

    spec: Any
    splits: Any
    public: Any
    num_private: int | None
    public_note: str | None
    device: str
    cache_dir: str
    ids: list[int]


_CONTEXTS: dict[tuple[str, str], StudyContext] = {}


def study_context(config: Any, out_dir: str | Path) -> StudyContext:
    """Load the private (and public) data of a study; cached per (config, out_dir) in this process."""
    from midre.attacks import needs_public_data
    from midre.data import load_dataset
    from midre.device import resolve_device

    out = Path(out_dir)
    cache_key = (json.dumps(config.to_dict(), sort_keys=True, default=str), str(out.resolve()))
    if cache_key in _CONTEXTS:
        return _CONTEXTS[cache_key]
    need_public = any(needs_public_data(a) for a in config.attacks)
    num_private = config.num_private
    public_note = None
    if need_public and config.public_data is None and num_private is None:
        total = _count_identities(config.dataset_spec())
        num_private = max(2, total - max(1, math.ceil(config.public_fraction * total)))
        public_note = (f"no public data given: identities {num_private + 1}..{total} (sorted by name) are public, "
                       f"the first {num_private} private")
    spec = config.dataset_spec(num_private)
    splits = load_dataset(spec)
    public = None
    if need_public:
        if config.public_data:
            public = _load_public(config.public_data, spec)
        elif splits.public is not None:
            from midre.priors import PublicData

            public = PublicData.from_images(splits.public.images, f"{config.data}: {len(splits.public_class_names)} "
                                            "non-private identities")
        else:
            raise ConfigError("public_data", "the attacks need public images; give a path or set num_private")
    num_ids = len(splits.class_names)
    ctx = StudyContext(spec=spec, splits=splits, public=public, num_private=num_private, public_note=public_note,
                       device=str(resolve_device(config.device)),
                       cache_dir=str(Path(config.cache_dir) if config.cache_dir else out / "cache"),
                       ids=list(range(min(num_ids, config.identities or num_ids))))
    _CONTEXTS.clear()  # one study at a time per process is the common case; keep memory bounded
    _CONTEXTS[cache_key] = ctx
    return ctx


def judge_configs(config: Any) -> list[Any]:
    """The evaluation models (judges) of a study: one per ``eval_archs`` entry or the default panel."""
    return config.judge_configs()


def judge_key(cfg: Any) -> str:
    return f"judge/{cfg.arch}-s{cfg.seed}"


def prior_key(prior_cfg: Any) -> str:
    blob = json.dumps(prior_cfg.to_dict(), sort_keys=True)
    return f"prior/gmi-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def target_key(label: str, seed: int) -> str:
    return f"target/{label}/seed{seed}"


def attack_key(label: str, seed: int, attack: str) -> str:
    return f"attack/{label}/seed{seed}/{attack}"


# --------------------------------------------------------------------------- helpers


def defense_label(defense: dict[str, Any]) -> str:
    """Folder-safe label: ``midre``, ``midre-a_h0.8`` when parameters are given, ``midre-a_h0.8+nls`` composed."""
    if "+" in defense["name"]:  # a composed defense: each part's parameters under its own name
        return "+".join(defense_label({"name": n, **dict(defense.get(n) or {})}) for n in defense["name"].split("+"))
    extra = "-".join(f"{k}{v}" for k, v in sorted(defense.items()) if k != "name")
    return defense["name"] + (f"-{extra}" if extra else "")


def _load_public(path: str, like: Any) -> Any:
    """Load a separate public data set at the private data's size/channels (all of its images)."""
    from midre.data import load_dataset
    from midre.priors import PublicData

    spec = dataclasses.replace(like, source=path, num_private=None, test_fraction=0.0,
                               max_images_per_identity=None)
    splits = load_dataset(spec)
    images = splits.train.images
    return PublicData.from_images(images, f"{path} ({images.shape[0]} images, all identities)")


def _count_identities(spec: Any) -> int:
    from midre.data import load_dataset

    return len(load_dataset(dataclasses.replace(spec, num_private=None)).class_names)


def _save_recon(path: Path, pixels: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"pixels": (pixels.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
               "labels": labels.contiguous(), "confidence": confidence.float().contiguous()}, str(path))


def _load_recon(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


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


def gmi_prior(attack: str, settings: Any, public: Any, image_shape: tuple[int, int, int],
              cache_dir: str, device: str, progress: ProgressCallback | None = None,
              should_stop: StopCallback | None = None) -> Any:
    """The target-independent GMI prior of an attack registered with ``needs="gmi"`` (trained once, cached),
    or ``None`` for the other attacks (they train or need nothing themselves)."""
    from midre.priors import load_or_train_prior

    cfg = gmi_prior_config(settings, attack)
    if cfg is None or public is None:
        return None
    return load_or_train_prior(cfg, public, image_shape, cache_dir=cache_dir, device=device, progress=progress,
                               should_stop=should_stop)


def _attack_one(attack: str, target: Any, target_acc: float, ids: list[int], settings: Any,
                seed: int, run_dir: Path, score: Any, private: Any, public: Any, prior: Any,
                cache_dir: str, device: str, progress: ProgressCallback,
                should_stop: StopCallback) -> dict[str, Any]:
    """Run (or load) one attack on one target and return its metrics record.

    ``score(pixels, labels, private)`` judges the reconstructions; ``prior`` is the attack's GMI prior
    (``None``: the attack trains what it needs itself, cached in ``cache_dir``).
    """
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file() and (run_dir / "recon.safetensors").is_file():
        logger.info("skipping finished attack run %s", run_dir)
        return json.loads(metrics_path.read_text())
    budget = settings.budget_for(attack)
    options = settings.options_for(attack)
    if prior is not None:
        options = {k: v for k, v in options.items() if k != "prior"}
    result = run_attack(attack, target, ids, per_identity=settings.per_identity, prior=prior, public=public,
                        budget=budget, options=options, seed=seed, device=device, cache_dir=cache_dir,
                        progress=progress, should_stop=should_stop)
    pixels = result.pixels()
    scores = record_fields(score(pixels, result.labels, private))
    record = {"attack": attack, "seed": seed, "acc": 100.0 * target_acc, **scores,
              "target_confidence": float(result.confidence.mean()), "queries": result.queries,
              "attack_seconds": result.seconds, "budget": budget.to_dict(),
              "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
              "images": int(result.labels.numel()), "extra": result.extra}
    if result.checkpoints:  # query-budgeted attacks: AttAcc of the images held at each checkpoint
        curve = []
        for used, snap in result.checkpoints:
            s = score(snap, result.labels, private)
            curve.append({"queries": used, "attacc_top1": 100.0 * s["attacc_top1"],
                          "attacc_top5": 100.0 * s["attacc_top5"]})
        record["attacc_vs_queries"] = curve
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_recon(run_dir / "recon.safetensors", pixels, result.labels, result.confidence)
    _write_json(metrics_path, record)
    logger.info("%s on %s seed %d: AttAcc top-1 %.1f%%, KNN %.1f (%.0fs)", attack, run_dir.parent.parent.name,
                seed, record["attacc_top1"], record["knn_dist"], result.seconds)
    return record


def _grids_and_features(records: list[dict[str, Any]], out_dir: Path, labels_of: dict[str, str],
                        targets: dict[tuple[str, int], Any], private: Any, class_names: list[str],
                        settings: Any, attacks: list[str], defenses: list[str]) -> tuple[dict, dict, dict]:
    """Reconstruction grids (first seed, first image per identity) and feature-space analyses."""
    grids: dict[str, Any] = {}
    features: dict[str, Any] = {}
    feature_json: dict[str, Any] = {}
    first_seed = min(r["seed"] for r in records)
    for attack in attacks:
        recon: dict[str, Any] = {}
        names: list[str] = []
        real = None
        for d in defenses:
            path = out_dir / "attacks" / d / f"seed{first_seed}" / attack / "recon.safetensors"
            if not path.is_file():
                continue
            data = _load_recon(path)
            labels = data["labels"]
            ids = labels.unique()[:8].tolist()
            first = [int((labels == i).nonzero()[0]) for i in ids]
            recon[labels_of[d]] = (data["pixels"][first].float() / 255).numpy()
            names = [class_names[i] if i < len(class_names) else str(i) for i in ids]
            real_idx = [int((private.labels == i).nonzero()[0]) for i in ids]
            real = (private.images[real_idx].float() / 255).numpy()
            tgt = targets.get((d, first_seed))
            if tgt is not None and settings.feature_identities > 0:
                fid = labels.unique()[: settings.feature_identities].tolist()
                a_h = 0.4
                cfg_def = tgt.card.get("defense") or {}
                if isinstance(cfg_def, dict) and "a_h" in cfg_def:
                    a_h = float(cfg_def["a_h"])
                try:
                    from midre.attacks.base import PixelCodec

                    codec = PixelCodec(tgt.normalization, tgt.image_shape[0], torch.device("cpu"))
                    tgt.model.cpu()
                    priv_in = codec.to_input(private.images.float() / 255)
                    rec_in = codec.to_input(data["pixels"].float() / 255)
                    fs = feature_space_analysis(tgt.model, priv_in, private.labels, rec_in, labels, identities=fid,
                                                a_h=a_h, normalization=tgt.normalization, seed=first_seed)
                    title = f"{labels_of[d]} target, {attack}"
                    features[title] = fs
                    feature_json[title] = {"attack": attack, "defense": d, **fs.to_dict()}
                except (ValueError, RuntimeError) as exc:  # an analysis failure must not lose the report
                    logger.warning("feature-space analysis of %s/%s failed: %s", d, attack, exc)
        if recon:
            grids[attack] = {"names": names, "real": real, "recon": recon}
    return grids, features, feature_json


# --------------------------------------------------------------------------- planning


def base_units(config: Any) -> list[Unit]:
    """Judge and prior units of a study (independent of the targets)."""
    units = [_unit(judge_key(c), "judge", config=c.to_dict()) for c in judge_configs(config)]
    seen: set[str] = set()
    for attack in config.attacks:
        cfg = gmi_prior_config(config, attack)
        if cfg is not None and prior_key(cfg) not in seen:
            seen.add(prior_key(cfg))
            units.append(_unit(prior_key(cfg), "prior", config=cfg.to_dict()))
    return units


def candidate_units(config: Any, defense: dict[str, Any], seeds: list[int],
                    attacks: list[str] | None = None) -> list[Unit]:
    """Target units of one defense (one per seed) and its attack units (one per seed and attack)."""
    label = defense_label(defense)
    judges = [judge_key(c) for c in judge_configs(config)]
    units: list[Unit] = []
    for seed in seeds:
        tkey = target_key(label, seed)
        units.append(_unit(tkey, "target", label=label, defense=defense, seed=seed))
        for attack in attacks if attacks is not None else config.attacks:
            prior = gmi_prior_config(config, attack)
            deps = [tkey, *judges, *([prior_key(prior)] if prior is not None else [])]
            units.append(_unit(attack_key(label, seed, attack), "attack", deps, label=label, defense=defense,
                               seed=seed, attack=attack))
    return units


def report_unit(units: list[Unit], candidates: list[dict[str, Any]]) -> Unit:
    """The final unit: depends on every attack unit; ``candidates`` = ``[{"label", "defense", "skipped"}]``."""
    deps = [u.key for u in units if u.kind in ("attack", "target", "judge")]
    return _unit("report", "report", deps, candidates=candidates)


def plan_study(config: Any) -> list[Unit]:
    """The initial units of a study, deterministic for a config, in a valid sequential order."""
    if hasattr(config, "plan_units"):  # a study kind with its own search (harden)
        return list(config.plan_units())
    units = base_units(config)
    for defense in config.defenses:
        units += candidate_units(config, defense, config.seed_list)
    cands = [{"label": defense_label(d), "defense": d, "skipped": None} for d in config.defenses]
    return [*units, report_unit(units, cands)]


# --------------------------------------------------------------------------- running one unit


def _marker(out: Path, key: str) -> Path:
    return out / "units" / f"{key}.json"


def unit_result(out_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The stored result of a finished unit (``None`` when it has not finished)."""
    path = _marker(Path(out_dir), key)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _finish(out: Path, unit: Unit, seconds: float, result: dict[str, Any], new_units: list[Unit]) -> None:
    _write_json(_marker(out, unit.key), {"key": unit.key, "kind": unit.kind, "seconds": seconds, "result": result,
                                         "new_units": [u.to_dict() for u in new_units]})


def run_unit(config: Any, out_dir: str | Path, unit: Unit, *, progress: ProgressCallback | None = None,
             should_stop: StopCallback | None = None) -> list[Unit]:
    """Run one unit of a study (idempotent); return the new units it adds to the graph.

    Raises:
        midre.progress.Cancelled: ``should_stop()`` became true.
        ValueError: a dependency has not finished, or the unit's own failure.
    """
    progress = progress or no_progress
    should_stop = should_stop or never_stop
    out = Path(out_dir)
    done = unit_result(out, unit.key)
    if done is not None:
        return [Unit.from_dict(u) for u in done.get("new_units", [])]
    if should_stop():
        raise Cancelled(f"{unit.key}: stopped before it started")
    missing = [d for d in unit.deps if unit_result(out, d) is None]
    if missing:
        raise ValueError(f"{unit.key}: dependencies not finished: {', '.join(missing[:5])}")
    runner = _RUNNERS.get(unit.kind)
    if runner is None:
        raise ValueError(f"{unit.key}: unknown unit kind {unit.kind!r}")
    t0 = time.monotonic()
    result, new_units = runner(config, out, unit, progress, should_stop)
    _finish(out, unit, time.monotonic() - t0, result, new_units)
    return new_units


def _run_judge(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
               should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    from midre.evaluation import EvalModelConfig
    from midre.evaluation.eval_model import train_evaluation_model

    ctx = study_context(config, out)
    params = dict(unit.params["config"])
    params["augment"] = tuple(params.get("augment") or ())
    ev = train_evaluation_model(ctx.spec, ctx.cache_dir, EvalModelConfig(**params), device=ctx.device,
                                progress=progress, should_stop=should_stop)
    progress(ProgressEvent(stage="eval", fraction=1.0, message=f"evaluation model {ev.arch}: accuracy {ev.accuracy}"))
    return {"dir": str(ev.directory), "arch": ev.arch, "accuracy": ev.accuracy,
            "accuracy_split": ev.accuracy_split}, []


def _run_prior(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
               should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    from midre.priors import PriorConfig, load_or_train_prior

    ctx = study_context(config, out)
    cfg = PriorConfig(**unit.params["config"])
    image_shape = tuple(ctx.splits.train.images.shape[1:])
    prior = load_or_train_prior(cfg, ctx.public, image_shape, cache_dir=ctx.cache_dir, device=ctx.device,
                                progress=progress, should_stop=should_stop)
    return {"dir": str(Path(ctx.cache_dir) / "priors" / prior.info["key"]), "kind": cfg.kind,
            "steps": cfg.steps}, []


def _run_target(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    from midre.train import TrainConfig, train

    ctx = study_context(config, out)
    p = unit.params
    tdir = out / "targets" / p["label"] / f"seed{p['seed']}"
    cfg = TrainConfig(data=ctx.spec, arch=config.arch, defense=p["defense"], epochs=config.epochs,
                      batch_size=config.batch_size, lr=config.lr, augment=tuple(config.augment), seed=p["seed"],
                      device=ctx.device, weights_path=config.weights_path, init_from=config.init_from)
    result = train(cfg, tdir, progress=progress, should_stop=should_stop)
    return {"dir": str(tdir), "metrics": result.card.get("metrics") or {}}, []


def load_judges(config: Any, ctx: StudyContext) -> Any:
    """The study's :class:`midre.evaluation.judges.JudgePanel` (every judge trained by its own unit)."""
    from midre.evaluation.judges import JudgePanel

    return JudgePanel.load(ctx.spec, ctx.cache_dir, judge_configs(config), device=ctx.device)


def _run_attack(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    from midre.attacks import AttackTarget
    from midre.priors import load_or_train_prior

    ctx = study_context(config, out)
    p = unit.params
    tdir = out / "targets" / p["label"] / f"seed{p['seed']}"
    target = AttackTarget.from_checkpoint(str(tdir), device=ctx.device)
    acc = float((target.card.get("metrics") or {}).get("test_accuracy") or 0.0)
    prior = None
    prior_cfg = gmi_prior_config(config, p["attack"])
    if prior_cfg is not None:  # finished by its own unit: this loads it from the cache
        prior = load_or_train_prior(prior_cfg, ctx.public, target.image_shape, cache_dir=ctx.cache_dir,
                                    device=ctx.device)
    panel = load_judges(config, ctx)

    def score(pixels: Any, labels: Any, private: Any) -> dict[str, Any]:
        return panel.score(pixels, labels, private.images, private.labels)

    progress(ProgressEvent(stage="attack", fraction=0.0, message=f"{p['attack']} on {p['label']} seed {p['seed']}"))
    run_dir = out / "attacks" / p["label"] / f"seed{p['seed']}" / p["attack"]
    # what the attack trains for this target alone (KEDMI/PLG priors, LOMMA surrogates) is cached in the
    # unit's own folder: two attack units of one target never write the same files
    rec = _attack_one(p["attack"], target, acc, ctx.ids, config, p["seed"], run_dir, score,
                      ctx.splits.train, ctx.public, prior, str(run_dir / "cache"), ctx.device, progress, should_stop)
    return {"attacc_top1": rec["attacc_top1"], "acc": rec["acc"]}, []


def _run_expand(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    return config.expand(out, unit)


def _run_report(config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict, list[Unit]]:
    report = build_report(config, out, unit.params["candidates"])
    progress(ProgressEvent(stage="done", fraction=1.0, message="report written: report.html, report.json"))
    return {"report": "report.json", "recommendation": report.get("recommendation")}, []


_RUNNERS: dict[str, Callable[..., tuple[dict, list[Unit]]]] = {
    "judge": _run_judge, "prior": _run_prior, "target": _run_target, "attack": _run_attack, "expand": _run_expand,
    "report": _run_report}


# --------------------------------------------------------------------------- the report


def _unit_seconds(out: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    root = out / "units"
    if root.is_dir():
        for path in root.rglob("*.json"):
            data = json.loads(path.read_text())
            found[data["key"]] = data
    return found


def collect_records(out: Path, candidates: list[dict[str, Any]], seeds: list[int],
                    attacks: list[str]) -> list[dict[str, Any]]:
    """Every finished attack run's record of the given candidates (skipped seeds/attacks are absent)."""
    records = []
    for cand in candidates:
        for seed in seeds:
            for attack in attacks:
                path = out / "attacks" / cand["label"] / f"seed{seed}" / attack / "metrics.json"
                if path.is_file():
                    records.append({**json.loads(path.read_text()), "defense": cand["label"], "seed": seed})
    return records


def build_report(config: Any, out: Path, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate every finished run of ``candidates`` into ``report.json`` / ``report.html``."""
    from midre.attacks import AttackTarget
    from midre.report import aggregate_runs, write_report

    t0 = time.monotonic()
    ctx = study_context(config, out)
    seeds = config.seed_list
    _write_json(out / "config.json", {**config.to_dict(), "resolved_num_private": ctx.num_private})
    labels = [c["label"] for c in candidates]
    labels_of = {lbl: {"nodef": "NoDef", "midre": "MIDRE"}.get(lbl, lbl) for lbl in labels}
    records = collect_records(out, candidates, seeds, config.attacks)
    targets: dict[tuple[str, int], Any] = {}
    for lbl in labels:
        for seed in seeds:
            tdir = out / "targets" / lbl / f"seed{seed}"
            if (tdir / "model.json").is_file() and (tdir / "model.safetensors").is_file():
                targets[(lbl, seed)] = AttackTarget.from_checkpoint(str(tdir), device="cpu")
    # candidates the harden search stopped early are in the frontier (with their reason), not in the table
    finished = [c["label"] for c in candidates if not c.get("skipped")]
    kept = [r for r in records if r["defense"] in finished]
    results, verdicts = aggregate_runs(kept, finished, config.attacks, baseline=labels[0])
    grids, features, feature_json = _grids_and_features(kept, out, labels_of, targets, ctx.splits.train,
                                                        list(ctx.splits.class_names), config, config.attacks,
                                                        finished) if kept else ({}, {}, {})
    markers = _unit_seconds(out)
    timings: dict[str, float] = {"evaluation_model": 0.0, "targets": 0.0, "attacks": 0.0}
    for data in markers.values():
        kind, seconds = data["kind"], float(data.get("seconds") or 0.0)
        if kind == "judge":
            timings["evaluation_model"] += seconds
        elif kind == "target":
            timings["targets"] += seconds
        elif kind == "attack":
            timings["attacks"] += seconds
        elif kind == "prior":
            res = data.get("result") or {}
            timings[f"prior_{res.get('kind', 'gmi')}_{res.get('steps')}_steps"] = seconds
    timings["report"] = time.monotonic() - t0
    timings["total"] = sum(float(d.get("seconds") or 0.0) for d in markers.values()) + timings["report"]
    described = load_judges(config, ctx).describe()
    first = described[0]
    cards = {f"{lbl}/seed{s}": (targets[(lbl, s)].card.get("metrics") or {}) for (lbl, s) in targets}
    report: dict[str, Any] = {
        "kind": study_kind(config),
        "dataset": {**ctx.spec.to_dict(), "identities": len(ctx.splits.class_names),
                    "class_names": list(ctx.splits.class_names), "summary": ctx.splits.summary,
                    "public": (ctx.public.description if ctx.public is not None else None),
                    "public_note": ctx.public_note},
        "models": {"target": {"arch": config.arch, "epochs": config.epochs, "batch_size": config.batch_size,
                              "lr": config.lr, "per_run": cards},
                   "evaluation": {"arch": first["arch"], "accuracy": first["accuracy"],
                                  "accuracy_split": first["accuracy_split"], "dir": first["dir"]}},
        "judges": described,
        "defenses": [c["defense"] for c in candidates],
        "attacks": [{"name": a, "budget": config.budget_for(a).to_dict(), "options": config.options_for(a),
                     "per_identity": config.per_identity, "identities": len(ctx.ids)} for a in config.attacks],
        "seeds": seeds,
        "results": results,
        "verdicts": verdicts,
        "runs": records,
        "feature_space": feature_json,
        "timings": timings,
        "device": ctx.device,
    }
    if hasattr(config, "report_section"):  # sweeps and harden: the frontier and the recommendation
        report.update(config.report_section(candidates, records, out))
    return write_report(report, out, grids=grids, feature_results=features)


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """``report.json`` of a study whose ``report`` unit has finished."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {out_dir}: the study's report unit has not finished")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- the sequential driver


def order_units(units: list[Unit], done: set[str]) -> Unit | None:
    """The first unit (in list order) not done whose dependencies are all done."""
    for unit in units:
        if unit.key not in done and all(d in done for d in unit.deps):
            return unit
    return None


def run_study(config: Any, out_dir: str | Path, *, progress: ProgressCallback | None = None,
              should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Run every unit of a study in this process, in dependency order (expansions included).

    Returns:
        The report dict (also ``out_dir/report.json``).
    """
    progress = progress or no_progress
    should_stop = should_stop or never_stop
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", {**config.to_dict(), "study": study_kind(config)})
    units = plan_study(config)
    done: set[str] = set()
    finished_weight = 0.0
    last = 0.0

    def report_progress(event: ProgressEvent) -> None:
        nonlocal last
        last = max(last, min(event.fraction, 1.0))
        progress(ProgressEvent(**{**event.to_dict(), "fraction": last}))

    while True:
        unit = order_units(units, done)
        if unit is None:
            break
        total = sum(u.weight for u in units) or 1.0
        sub = scaled(report_progress, finished_weight / total, min(1.0, (finished_weight + unit.weight) / total))
        new = run_unit(config, out, unit, progress=sub, should_stop=should_stop)
        done.add(unit.key)
        finished_weight += unit.weight
        known = {u.key for u in units}
        units += [u for u in new if u.key not in known]
    left = [u.key for u in units if u.key not in done]
    if left:
        raise ValueError(f"study graph has units whose dependencies never finish: {', '.join(left[:5])}")
    report = read_report(out)
    if last < 1.0:
        progress(ProgressEvent(stage="done", fraction=1.0, message="report written: report.html, report.json"))
    return report


__all__ = ["StudyContext", "Unit", "build_report", "candidate_units", "defense_label", "gmi_prior",
           "gmi_prior_config", "plan_study", "read_report", "run_study", "run_unit", "study_context", "unit_result"]
