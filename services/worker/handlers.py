"""Task bodies: bind the job's resolved config to this worker's folders, call ``midre``, hand back
the output folder and final metrics.

Nothing scientific lives here. ``train`` resumes by itself when its work folder already holds
resume state (a redelivered job); ``attack_eval`` and ``pipeline`` call ``midre.study``. Studies
(pipeline, sweep, harden) normally run as unit graphs (``services.worker.fanout``) instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services import jobspec
from services.db import jobs as jobstate
from services.db.models import Job
from services.worker.runner import Handler, JobContext, Outcome

log = logging.getLogger(__name__)


def library_config(ctx: JobContext) -> Any:
    """The library config the job runs: its stored resolved config (or, for a job stored before
    resolved configs existed, its spec resolved now), references bound to this worker's folders."""
    resolved = ctx.resolved or jobspec.resolve(ctx.spec)

    def lookup(token: str) -> str:
        what, _, ident = token.partition(":")
        if what == "dataset":
            if ctx.dataset_source is None:
                raise FileNotFoundError(f"dataset: {ident} is not this job's dataset")
            return ctx.dataset_source
        return str(ctx.materialize_job_outputs(ident, ctx.work_dir / "refs" / ident))

    return jobspec.bind(resolved, lookup, cache_dir=str(ctx.cache_dir))


def run_train(ctx: JobContext) -> Outcome:
    """Train (or resume training) the model of a ``train`` job."""
    from midre.train import train

    out_dir = ctx.work_dir / "train"
    result = train(library_config(ctx), out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    warnings = train_warnings(result.metrics, result.card.get("num_classes"))
    return Outcome(out_dir=out_dir, metrics=result.metrics, warnings=warnings)  # the runner maps the names


def train_warnings(metrics: dict[str, Any], num_classes: Any) -> list[dict[str, Any]]:
    """``midre.report.verdicts.train_warnings`` (a final test accuracy near chance), when this
    ``midre`` has it."""
    try:
        from midre.report.verdicts import train_warnings as warn
    except ImportError:
        return []
    if not isinstance(num_classes, int):
        return []
    return [dict(w) for w in warn(metrics, num_classes) or []]


def record_estimate(sessions: sessionmaker[Session], job_id: str, config: Any,
                    redact: Callable[[str], str]) -> dict[str, Any] | None:
    """Calibrate the study's cost (``midre.cost.estimate_study``: a few training and attack steps on the
    real shapes) and add it to the job as an ``estimate`` event, before the work starts. A failed
    calibration is logged and never stops the job."""
    try:
        from midre.cost import estimate_study

        estimate = json.loads(redact(json.dumps(estimate_study(config), default=str)))
    except Exception as exc:
        log.warning("job %s: no cost estimate: %s", job_id, exc)
        return None
    unit = "GPU-seconds" if estimate.get("gpu_seconds") is not None else "CPU-seconds"
    message = (f"expected about {estimate['total_seconds']:.0f} {unit} of training and attacks, peak memory "
               f"{estimate['peak_bytes'] / 2**20:.0f} MiB on {estimate['device']} ({estimate['memory_method']})")
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is not None:
            jobstate.add_event(session, row, "estimate", message, stage=row.stage, data=estimate)
            session.commit()
    return estimate


def run_attack_eval(ctx: JobContext) -> Outcome:
    """Attack the checkpoint of an earlier train job and write the report."""
    from midre.study import run_attack_eval as attack_eval

    out_dir = ctx.work_dir / "out"
    config = library_config(ctx)
    record_estimate(ctx.sessions, ctx.job_id, config, ctx.redact)
    report = attack_eval(config, out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=report_metrics(report), warnings=report_warnings(report))


def run_pipeline(ctx: JobContext) -> Outcome:
    """NoDef vs defense: train both, attack both, write the privacy-utility report."""
    from midre.study import run_pipeline as pipeline

    out_dir = ctx.work_dir / "out"
    report = pipeline(library_config(ctx), out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=report_metrics(report), warnings=report_warnings(report))


def run_study(ctx: JobContext) -> Outcome:
    """A sweep or harden study in one task (``midre.plan.run_study``); workers fan studies out
    instead (``services.worker.fanout``) whenever ``midre.plan`` is there, so this is the fallback."""
    from midre.plan import run_study as study

    out_dir = ctx.work_dir / "out"
    report = study(library_config(ctx), out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=report_metrics(report), warnings=report_warnings(report))


def report_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``warnings`` (``{"code", "message", "attack"?, "defense"?}``), each a job event."""
    return [dict(w) for w in report.get("warnings") or [] if isinstance(w, dict)]


#: Report metrics copied onto the job (means over seeds), named ``<defense>.<attack>.<metric>``.
REPORT_METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval")


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of a study report: Acc / AttAcc / KNN per defense and attack, and Δ.

    ``midre.report`` rows are ``{"attack", "defense", "metrics": {name: {"mean", "std", "n"}},
    "tradeoff_delta"}``; percentages stay percentages.
    """
    metrics: dict[str, float] = {}
    for row in report.get("results") or []:
        prefix = f"{row.get('defense')}.{row.get('attack')}"
        for name in REPORT_METRICS:
            stat = (row.get("metrics") or {}).get(name)
            if isinstance(stat, dict) and isinstance(stat.get("mean"), int | float):
                metrics[f"{prefix}.{name}"] = float(stat["mean"])
        delta = row.get("tradeoff_delta")
        if isinstance(delta, int | float) and not isinstance(delta, bool) and delta == delta:
            metrics[f"{prefix}.tradeoff_delta"] = float(delta)
    return metrics


HANDLERS: dict[str, Handler] = {
    "train": run_train,
    "attack_eval": run_attack_eval,
    "pipeline": run_pipeline,
    "sweep": run_study,
    "harden": run_study,
}
