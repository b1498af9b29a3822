"""What a finished policy-triggered audit tells: ``audit.completed``, and ``audit.regressed`` when the model
leaks more than the previously audited version of the same model, beyond that audit's interval.

:func:`after_audit` runs in the worker's transaction that moves the audit to ``succeeded`` and stores its
metrics (``services.worker.ending.finish_job``), so its webhook messages commit with them. "The same
model" is the same name under the same policy (an uploaded model's ``name``); "leaks more" is, for some
attack, a pooled AttAcc top-1 above the previous audit's 95 % upper bound (above its mean when that audit
had no interval). The regression is kept on the job (``trigger.regressed``) for the dashboard and the API.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.mlflow import AUDIT_EVENT, enqueue_job_end
from services.db.models import Job, Metric
from services.db.webhooks import enqueue


def attacc_by_attack(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{attack: {"mean", "ci_high"?}}`` from an audit's ``<label>.<attack>.attacc_top1[_ci_high]`` metrics
    (a label may hold dots, ``midre-a_h0.8``: the attack is the part before the metric name)."""
    out: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        for field, key in (("attacc_top1", "mean"), ("attacc_top1_ci_high", "ci_high")):
            if name.endswith(f".{field}"):
                attack = name[: -len(field) - 1].rpartition(".")[2]
                out.setdefault(attack, {})[key] = float(value)
    return out


def previous_audit(session: Session, job: Job) -> Job | None:
    """The newest earlier succeeded audit by the same policy of a model of the same name."""
    trigger = job.trigger or {}
    rows = session.scalars(
        select(Job).where(Job.tenant_id == job.tenant_id, Job.kind == job.kind, Job.status == "succeeded",
                          Job.id < job.id).order_by(Job.id.desc()).limit(200)).all()
    for row in rows:
        other = row.trigger or {}
        if other.get("policy") == trigger.get("policy") and other.get("model_name") == trigger.get("model_name"):
            return row
    return None


def regressions(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Attacks whose AttAcc now is above the earlier audit's upper bound (its mean without one)."""
    out = []
    for attack, figures in sorted(now.items()):
        old = before.get(attack)
        if old is None or "mean" not in figures or "mean" not in old:
            continue
        bound = old.get("ci_high", old["mean"])
        if figures["mean"] > bound:
            out.append({"attack": attack, "attacc_top1": figures["mean"], "previous": old["mean"],
                        "previous_ci_high": old.get("ci_high")})
    return out


def after_audit(session: Session, job: Job, metrics: dict[str, float]) -> int:
    """Queue ``audit.completed`` (and ``audit.regressed``) for a policy-triggered audit that succeeded; how
    many messages. Not committed."""
    trigger = job.trigger
    if not trigger or job.status != "succeeded":
        return 0
    now = attacc_by_attack(metrics)
    data: dict[str, Any] = {"id": job.id, "policy": trigger.get("policy"), "model": trigger.get("model"),
                            "model_name": trigger.get("model_name"),
                            "attacc_top1": {a: f.get("mean") for a, f in now.items()}}
    events = [("audit.completed", data)]
    previous = previous_audit(session, job)
    if previous is not None:
        before = attacc_by_attack({m.name: m.value for m in session.scalars(
            select(Metric).where(Metric.job_id == previous.id, Metric.epoch.is_(None)))})
        worse = regressions(now, before)
        if worse:
            job.trigger = {**trigger, "previous": previous.id, "regressed": worse}
            events.append(("audit.regressed", {**data, "previous": previous.id, "regressed": worse}))
        else:
            job.trigger = {**trigger, "previous": previous.id, "regressed": []}
    added = enqueue(session, job.tenant_id, events, job.id)
    if trigger.get("event") == "mlflow_model_version":  # the verdict goes back onto the MLflow version
        added += enqueue_job_end(session, job, AUDIT_EVENT)
    return added


__all__ = ["after_audit", "attacc_by_attack", "previous_audit", "regressions"]
