"""The bodies of a study's units and the sequential driver (the API is :mod:`midre.plan`).

:func:`run_unit` runs one unit of any registered study kind (idempotent: a unit with a marker returns
at once); :func:`run_study` runs a whole study in this process, in dependency order, expansions
included. A service runs each unit as its own task on any worker instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midre.attacks import attack_id, run_attack
from midre.checkpoint import write_json_atomic
from midre.context import load_judges, study_context
from midre.evaluation.judges import record_fields
from midre.outputs import attack_dir, attack_record, save_attack_run
from midre.planners import gmi_prior_config
from midre.progress import Cancelled, ProgressCallback, ProgressEvent, StopCallback, never_stop, no_progress, scaled
from midre.units import StudyKind, Unit, order_units, study_of, unit_result, write_marker

logger = logging.getLogger(__name__)

#: ``runner(study, config, out_dir, unit, progress, should_stop) -> (result, new units)``.
Runner = Callable[[StudyKind, Any, Path, Unit, ProgressCallback, StopCallback], tuple[dict[str, Any], list[Unit]]]


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
    runner = RUNNERS.get(unit.kind)
    if runner is None:
        raise ValueError(f"{unit.key}: unknown unit kind {unit.kind!r}")
    t0 = time.monotonic()
    result, new_units = runner(study_of(config), config, out, unit, progress, should_stop)
    write_marker(out, unit, time.monotonic() - t0, result, new_units)
    return new_units


def run_study(config: Any, out_dir: str | Path, *, progress: ProgressCallback | None = None,
              should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Run every unit of a study in this process, in dependency order (expansions included).

    Returns:
        The report dict (also ``out_dir/report.json``); for a study kind without a report (``train``),
        ``{}``.
    """
    from midre.report.build import read_report

    progress = progress or no_progress
    should_stop = should_stop or never_stop
    study = study_of(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if study.has_report:
        write_json_atomic(out / "config.json", {**config.to_dict(), "study": study.name})
    units = study.plan(config)
    done: set[str] = set()
    finished = 0.0
    last = 0.0

    def report_progress(event: ProgressEvent) -> None:
        nonlocal last
        last = max(last, min(event.fraction, 1.0))
        progress(ProgressEvent(**{**event.to_dict(), "fraction": last}))

    while (unit := order_units(units, done)) is not None:
        total = sum(u.weight for u in units) or 1.0
        sub = scaled(report_progress, finished / total, min(1.0, (finished + unit.weight) / total))
        new = run_unit(config, out, unit, progress=sub, should_stop=should_stop)
        done.add(unit.key)
        finished += unit.weight
        known = {u.key for u in units}
        units += [u for u in new if u.key not in known]
    left = [u.key for u in units if u.key not in done]
    if left:
        raise ValueError(f"study graph has units whose dependencies never finish: {', '.join(left[:5])}")
    if not study.has_report:
        return {}
    report = read_report(out)
    if last < 1.0:
        progress(ProgressEvent(stage="done", fraction=1.0, message="report written: report.html, report.json"))
    return report


# --------------------------------------------------------------------------- the unit bodies


def _run_train(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
               should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    """A training study's one unit: the model, in the study's own folder."""
    from midre.train import train

    result = train(config, out, progress=progress, should_stop=should_stop)
    return {"metrics": result.metrics}, []


def _run_judge(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
               should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    from midre.evaluation import EvalModelConfig
    from midre.evaluation.eval_model import train_evaluation_model

    ctx = study_context(config, out)
    params = dict(unit.params["config"])
    params["augment"] = tuple(params.get("augment") or ())
    ev = train_evaluation_model(ctx.spec, ctx.cache_dir, EvalModelConfig(**params), device=ctx.device,
                                progress=progress, should_stop=should_stop)
    progress(ProgressEvent(stage="eval", fraction=1.0, message=f"judge {ev.arch}: accuracy {ev.accuracy}"))
    return {"arch": ev.arch, "accuracy": ev.accuracy, "accuracy_split": ev.accuracy_split}, []


def _run_prior(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
               should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    from midre.priors import PriorConfig, load_or_train_prior

    ctx = study_context(config, out)
    cfg = PriorConfig(**unit.params["config"])
    image_shape = tuple(ctx.splits.train.images.shape[1:])
    load_or_train_prior(cfg, ctx.public, image_shape, cache_dir=ctx.cache_dir, device=ctx.device,
                        progress=progress, should_stop=should_stop)
    return {"kind": cfg.kind, "steps": cfg.steps}, []


def _run_target(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    from midre.train import TrainConfig, train

    ctx = study_context(config, out)
    p = unit.params
    cfg = TrainConfig(data=ctx.spec, arch=config.arch, defense=p["defense"], epochs=config.epochs,
                      batch_size=config.batch_size, lr=config.lr, augment=tuple(config.augment), seed=p["seed"],
                      device=ctx.device, weights_path=config.weights_path, init_from=config.init_from)
    progress(ProgressEvent(stage="train", fraction=0.0, message=f"training {p['label']} seed {p['seed']}"))
    result = train(cfg, config.target_dir(out, p["label"], p["seed"]), progress=progress, should_stop=should_stop)
    return {"metrics": result.card.get("metrics") or {}}, []


def target_accuracy_of(target: Any, ctx: Any, model: Any = None) -> float:
    """A target's held-out accuracy (fraction): from its card, or measured (with ``model``, default the
    target's) when the card has none (a model trained elsewhere)."""
    import torch

    from midre.train import evaluate_accuracy

    acc = (target.card.get("metrics") or {}).get("test_accuracy")
    if acc is None:
        acc = evaluate_accuracy(model if model is not None else target.model, ctx.splits.test, target.normalization,
                                torch.device(ctx.device))
    return float(acc)


def _run_attack(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    from midre.attacks import AttackTarget
    from midre.priors import load_or_train_prior

    ctx = study_context(config, out)
    p = unit.params
    adaptive = bool(p.get("adaptive"))
    run_dir = attack_dir(out, p["label"], p["seed"], p["attack"], adaptive)
    record = attack_record(run_dir)
    if record is None:
        target = AttackTarget.from_checkpoint(str(config.target_dir(out, p["label"], p["seed"])), device=ctx.device)
        target.deployment = config.deployment_view() if hasattr(config, "deployment_view") else None
        if adaptive:
            from midre.attacks.adaptive import adaptive_target

            target = adaptive_target(target, p["attack"], samples=config.eot_samples_for(p["attack"]), seed=p["seed"])
        prior = None
        prior_cfg = gmi_prior_config(config, p["attack"])
        if prior_cfg is not None:  # finished by its own unit: this loads it from the cache
            prior = load_or_train_prior(prior_cfg, ctx.public, target.image_shape, cache_dir=ctx.cache_dir,
                                        device=ctx.device)
        who = f"{p['attack']}{' (adaptive)' if adaptive else ''}"
        progress(ProgressEvent(stage="attack", fraction=0.0, message=f"{who} on {p['label']} seed {p['seed']}"))
        # what the attack trains for this target alone (KEDMI/PLG priors, LOMMA surrogates) is cached in the
        # unit's own folder: two attack units of one target never write the same files
        record = attack_one(config, ctx, p["attack"], p["seed"], target, prior, run_dir, progress, should_stop,
                            adaptive=adaptive)
    return {"attacc_top1": record["attacc_top1"], "acc": record["acc"]}, []


def attack_one(config: Any, ctx: Any, attack: str, seed: int, target: Any, prior: Any, run_dir: Path,
               progress: ProgressCallback, should_stop: StopCallback, *, adaptive: bool = False) -> dict[str, Any]:
    """Run one attack on one target, judge its reconstructions and write the run's files."""
    import torch

    from midre.train import accuracy_by_identity

    panel = load_judges(config, ctx)
    private = ctx.splits.train

    def score(pixels: Any, labels: Any) -> dict[str, Any]:
        return panel.score(pixels, labels, private.images, private.labels)

    budget = config.budget_for(attack)
    options = config.options_for(attack)
    if prior is not None:
        options = {k: v for k, v in options.items() if k != "prior"}
    result = run_attack(attack, target, ctx.ids, per_identity=config.per_identity, prior=prior, public=ctx.public,
                        budget=budget, options=options, seed=seed, device=ctx.device,
                        cache_dir=str(run_dir / "cache"), progress=progress, should_stop=should_stop)
    pixels = result.pixels()
    scores = score(pixels, result.labels)
    plain = target.model.model if adaptive else target.model  # accuracy: the model as served, not its EOT view
    record = {"attack": attack, "seed": seed, "acc": 100.0 * target_accuracy_of(target, ctx, plain),
              "acc_by_identity": {str(i): list(v) for i, v in accuracy_by_identity(
                  plain, ctx.splits.test, target.normalization, torch.device(ctx.device)).items()},
              **record_fields(scores),
              "target_confidence": float(result.confidence.mean()), "queries": result.queries,
              "attack_seconds": result.seconds, "budget": budget.to_dict(),
              "attack_id": attack_id(attack, budget, config.options_for(attack)),  # the prior's settings included
              "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
              "images": int(result.labels.numel()), "extra": result.extra, "adaptive": adaptive}
    if adaptive:
        record["eot_samples"] = config.eot_samples_for(attack)
    if getattr(config, "inception_weights", None):
        record.update(inception_fields(config.inception_weights, ctx.device, pixels, result.labels, private))
    if result.checkpoints:  # query-budgeted attacks: AttAcc of the images held at each checkpoint
        record["attacc_vs_queries"] = [
            {"queries": used, "attacc_top1": 100.0 * s["attacc_top1"], "attacc_top5": 100.0 * s["attacc_top5"]}
            for used, snap in result.checkpoints for s in (score(snap, result.labels),)]
    save_attack_run(run_dir, record, pixels, result.labels, result.confidence, judge_top1=scores["top1"])
    logger.info("%s seed %d: AttAcc top-1 %.1f%%, KNN %.1f (%.0fs)", run_dir.parent.parent.name, seed,
                record["attacc_top1"], record["knn_dist"], result.seconds)
    return record


def inception_fields(weights: str, device: str, pixels: Any, labels: Any, private: Any) -> dict[str, Any]:
    """The set metrics in Inception-v3 space (``inception_fid``, ...), from the operator's weights."""
    from midre.evaluation import distribution
    from midre.evaluation.inception import InceptionFeatures

    wanted = (private.labels[:, None] == labels.unique()[None, :]).any(1)
    features = InceptionFeatures(weights, device=device)
    _, means = distribution.summarize_sets(features(pixels), labels, features(private.images[wanted]),
                                           private.labels[wanted])
    return {f"inception_{k}": v * (1.0 if k in ("fid", "density") else 100.0) for k, v in means.items()}


def _run_expand(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    if study.expand is None:
        raise ValueError(f"{unit.key}: a {study.name} study has no expand step")
    return study.expand(config, out, unit)


def _run_report(study: StudyKind, config: Any, out: Path, unit: Unit, progress: ProgressCallback,
                should_stop: StopCallback) -> tuple[dict[str, Any], list[Unit]]:
    from midre.report.build import build_report

    report = build_report(study, config, out, unit.params["candidates"])
    progress(ProgressEvent(stage="done", fraction=1.0, message="report written: report.html, report.json"))
    return {"report": "report.json", "recommendation": report.get("recommendation")}, []


RUNNERS: dict[str, Runner] = {
    "train": _run_train, "judge": _run_judge, "prior": _run_prior, "target": _run_target, "attack": _run_attack,
    "expand": _run_expand, "report": _run_report}

__all__ = ["RUNNERS", "attack_one", "run_study", "run_unit", "target_accuracy_of"]
