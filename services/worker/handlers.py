"""Task bodies: parse the spec, call ``midre``, hand back the output folder and final metrics.

Nothing scientific lives here. ``train`` resumes by itself when its work folder already holds
resume state (a redelivered job); ``attack_eval`` and ``pipeline`` call ``midre.study`` (the
worker refuses those kinds with a clear error while ``midre.study`` is not installed).
"""

from __future__ import annotations

from typing import Any

from services.worker.library import DIGITS, study_config, train_config
from services.worker.runner import Handler, JobContext, Outcome


def _numbers(d: dict[str, Any] | None) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (d or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v
    }


def run_train(ctx: JobContext) -> Outcome:
    """Train (or resume training) the model of a ``train`` job."""
    from midre.train import train

    cfg = train_config(ctx.spec, ctx.dataset_source or DIGITS)
    out_dir = ctx.work_dir / "train"
    result = train(cfg, out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=_numbers(result.metrics))


def run_attack_eval(ctx: JobContext) -> Outcome:
    """Attack the checkpoint of an earlier train job and write the report."""
    from midre.study import run_attack_eval as attack_eval

    model_dir = ctx.materialize_job_outputs(ctx.spec["model_job"], ctx.work_dir / "model")
    cfg = study_config(ctx.spec, ctx.dataset_source, model_dir=str(model_dir), cache_dir=str(ctx.cache_dir))
    out_dir = ctx.work_dir / "out"
    report = attack_eval(cfg, out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=report_metrics(report))


def run_pipeline(ctx: JobContext) -> Outcome:
    """NoDef vs defense: train both, attack both, write the privacy-utility report."""
    from midre.study import run_pipeline as pipeline

    cfg = study_config(ctx.spec, ctx.dataset_source or DIGITS, cache_dir=str(ctx.cache_dir))
    out_dir = ctx.work_dir / "out"
    report = pipeline(cfg, out_dir, progress=ctx.progress, should_stop=ctx.should_stop)
    return Outcome(out_dir=out_dir, metrics=report_metrics(report))


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
}
