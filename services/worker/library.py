"""The worker's view of ``midre``: plan a job's units, run one, read what a finished job reports.

Nothing scientific lives here: :class:`StudyLibrary` calls :mod:`midre.plan` (every job kind is a
registered study there) and turns a finished study's ``report.json`` (or a trained model's card) into
the job's metrics and warnings. Tests give the engine a small library of their own through the same
three methods.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.db import jobs as jobstate
from services.db.models import Job
from services.worker.ending import Outcome

log = logging.getLogger(__name__)

#: Report metrics copied onto the job (means over seeds), named ``<defense>.<attack>.<metric>``.
REPORT_METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval")


class StudyLibrary:
    """The engine's library (:class:`services.worker.engine.Library`) over :mod:`midre.plan`."""

    def __init__(self) -> None:
        import midre.plan

        self.lib = midre.plan

    def plan(self, config: Any) -> list[dict[str, Any]]:
        return [unit.to_dict() for unit in self.lib.plan_study(config)]

    def run(self, config: Any, out_dir: Path, unit: dict[str, Any], progress: Callable[[Any], None],
            should_stop: Callable[[], bool]) -> list[dict[str, Any]]:
        added = self.lib.run_unit(config, out_dir, self.lib.Unit.from_dict(unit), progress=progress,
                                  should_stop=should_stop)
        return [u.to_dict() for u in added or []]

    def devices(self, config: Any, unit: dict[str, Any]) -> int:
        """Devices a unit trains on: a ``train`` unit its config's ``devices`` (DistributedDataParallel over that
        many processes), every other unit one."""
        if unit.get("kind") != "train":
            return 1
        return int(getattr(config, "devices", 1) or 1)

    def outcome(self, config: Any, out_dir: Path) -> Outcome:
        """A study's report figures and warnings; a trained model's final metrics and its warnings."""
        from midre.units import study_of

        if study_of(config).has_report:
            report = self.lib.read_report(out_dir)
            return Outcome(report_metrics(report), report_warnings(report))
        from midre.checkpoint import read_card
        from midre.report.verdicts import train_warnings

        card = read_card(out_dir)
        metrics = dict(card.get("metrics") or {})
        classes = card.get("num_classes")
        warnings = [dict(w) for w in train_warnings(metrics, classes)] if isinstance(classes, int) else []
        return Outcome(metrics, warnings)


def report_warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``warnings`` (``{"code", "message", "attack"?, "defense"?}``), each a job event."""
    return [dict(w) for w in report.get("warnings") or [] if isinstance(w, dict)]


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of a study report: Acc / AttAcc / KNN per defense and attack, and Δ, each with its
    95 % interval (``<name>_ci_low`` / ``<name>_ci_high``) when the report has one.

    ``midre.report`` rows are ``{"attack", "defense", "adaptive", "metrics": {name: {"mean", "std", "n",
    "ci_low"?, "ci_high"?}}, "tradeoff_delta"}``; an adaptive row's attack is ``<attack>-adaptive``;
    percentages stay percentages.
    """
    metrics: dict[str, float] = {}
    for row in report.get("results") or []:
        prefix = f"{row.get('defense')}.{row.get('attack')}{'-adaptive' if row.get('adaptive') else ''}"
        for name in REPORT_METRICS:
            stat = (row.get("metrics") or {}).get(name)
            if isinstance(stat, dict) and isinstance(stat.get("mean"), int | float):
                metrics[f"{prefix}.{name}"] = float(stat["mean"])
                for bound in ("ci_low", "ci_high"):
                    if isinstance(stat.get(bound), int | float):
                        metrics[f"{prefix}.{name}_{bound}"] = float(stat[bound])
        delta = row.get("tradeoff_delta")
        if isinstance(delta, int | float) and not isinstance(delta, bool) and delta == delta:
            metrics[f"{prefix}.tradeoff_delta"] = float(delta)
    return metrics


def record_estimate(sessions: sessionmaker[Session], job_id: str, config: Any,
                    redact: Callable[[str], str]) -> dict[str, Any] | None:
    """Calibrate the study's cost (``midre.cost.estimate_study``: a few training and attack steps on the
    real shapes) and add it to the job as an ``estimate`` event, before the work starts. A failed
    calibration is logged and never stops the job."""
    try:
        from midre.cost import estimate_study

        estimate = json.loads(redact(json.dumps(estimate_study(config), default=str)))
    except Exception as exc:  # noqa: BLE001 - an estimate never stops a job
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


__all__ = ["REPORT_METRICS", "StudyLibrary", "record_estimate", "report_metrics", "report_warnings"]
