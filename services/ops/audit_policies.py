"""Audit policies: audits that run by themselves when a model arrives.

``POST /v1/audit-policies`` stores a name, a trigger and an ``attack_eval`` spec without ``model``. On
the trigger (``model_upload``: a model uploaded to ``POST /v1/models``) every policy of the tenant
submits that spec for the new model, exactly as a client would (the same checks, quotas and queue),
and the job records what started it (``trigger``: the policy, the event, the model and its name). A
spec the new model cannot take (an attack that needs public identities the model's data lacks, ...)
starts nothing and says why in an event on the model. When such an audit finishes, the tenant's
webhooks get ``audit.completed``, and ``audit.regressed`` when the model leaks more than the previous
audited model of the same name (:mod:`services.db.audits`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.models import AuditPolicy, Job, MlflowIntegration
from services.db.types import new_id, utcnow
from services.jobspec.specs import AttackEvalJobSpec
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.errors import ApiError, FieldError, not_found, validation_error
from services.ops.jobs import submit

log = logging.getLogger(__name__)

#: Events a policy can react to.
TRIGGERS = ("model_upload", "mlflow_model_version")
_AUDIT = TypeAdapter(AttackEvalJobSpec)


class AuditPolicyCreate(BaseModel):
    """A policy to store."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    trigger: Literal["model_upload", "mlflow_model_version"] = Field(
        description="`model_upload`: every model uploaded to POST /v1/models; `mlflow_model_version`: every new "
        "version of `registered_model` in your MLflow (PUT /v1/integrations/mlflow), polled by the workers.")
    spec: dict[str, Any] = Field(description="An `attack_eval` job spec without `model` (the trigger gives it).")
    registered_model: str | None = Field(None, min_length=1, max_length=200,
                                         description="The registered model to watch (`mlflow_model_version`).")


class AuditPolicyPublic(BaseModel):
    """A stored policy and how many audits it started."""

    id: str
    name: str
    trigger: str
    spec: dict[str, Any]
    created_at: dt.datetime
    audits: int = 0
    registered_model: str | None = None
    state: dict[str, Any] | None = Field(None, description="What the registry watcher has seen: per MLflow "
                                         "version, the imported model and its audit, or why it was not imported.")


def _check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as it will be submitted (``kind`` filled in); 422 naming ``spec.<field>`` when it is wrong."""
    spec = {"kind": "attack_eval", **spec}
    for field in ("model", "model_job", "deployment"):
        if field in spec:
            raise validation_error(f"spec.{field}", "a policy names no model: its trigger gives the model to audit")
    if spec["kind"] != "attack_eval":
        raise validation_error("spec.kind", "a policy runs attack_eval audits")
    try:
        _AUDIT.validate_python({**spec, "model": "job_placeholder"})
    except ValidationError as exc:
        errors = [FieldError(field=".".join(["spec", *(str(p) for p in e["loc"])]), message=e["msg"])
                  for e in exc.errors()]
        raise ApiError(422, "validation_error", f"{errors[0].field}: {errors[0].message}", errors=errors) from exc
    return spec


def _view(session: Session, row: AuditPolicy) -> AuditPolicyPublic:
    count = session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == row.tenant_id, Job.trigger["policy"].as_string() == row.id)) or 0
    return AuditPolicyPublic(id=row.id, name=row.name, trigger=row.trigger, spec=row.spec,
                             created_at=row.created_at, audits=int(count), registered_model=row.registered_model,
                             state=row.state)


def create_policy(session: Session, caller: Caller, body: AuditPolicyCreate) -> AuditPolicyPublic:
    """Store a policy (201); its spec is checked now as far as it can be without a model."""
    if body.trigger == "mlflow_model_version":
        if not body.registered_model:
            raise validation_error("registered_model", "the mlflow_model_version trigger watches a registered model")
        if session.get(MlflowIntegration, caller.tenant.id) is None:
            raise validation_error("trigger", "configure your MLflow server first (PUT /v1/integrations/mlflow)")
    elif body.registered_model is not None:
        raise validation_error("registered_model", "only the mlflow_model_version trigger watches a registered model")
    row = AuditPolicy(id=new_id("pol"), tenant_id=caller.tenant.id, name=body.name, trigger=body.trigger,
                      spec=_check_spec(body.spec), registered_model=body.registered_model, state={},
                      created_by=caller.key_id, created_at=utcnow())
    session.add(row)
    session.commit()
    return _view(session, row)


def list_policies(session: Session, tenant: TenantRef) -> list[AuditPolicyPublic]:
    rows = session.scalars(select(AuditPolicy).where(AuditPolicy.tenant_id == tenant.id)
                           .order_by(AuditPolicy.id.desc())).all()
    return [_view(session, r) for r in rows]


def _owned(session: Session, tenant: TenantRef, policy_id: str) -> AuditPolicy:
    row = session.get(AuditPolicy, policy_id)
    if row is None or row.tenant_id != tenant.id:
        raise not_found("audit policy", policy_id)
    return row


def get_policy(session: Session, tenant: TenantRef, policy_id: str) -> AuditPolicyPublic:
    return _view(session, _owned(session, tenant, policy_id))


def delete_policy(session: Session, tenant: TenantRef, policy_id: str) -> None:
    """Delete the policy (its audits stay, with their ``trigger``)."""
    session.delete(_owned(session, tenant, policy_id))
    session.commit()


def on_model_upload(ctx: ServiceContext, tenant: TenantRef, model: Job) -> list[str]:
    """Start every ``model_upload`` policy's audit of the uploaded ``model``; the ids of the jobs started.
    A refused spec becomes a ``warning`` event on the model, never a failed upload."""
    started = []
    with ctx.sessions() as session:
        policies = session.scalars(select(AuditPolicy).where(AuditPolicy.tenant_id == tenant.id,
                                                             AuditPolicy.trigger == "model_upload")
                                   .order_by(AuditPolicy.id)).all()
        for policy in policies:
            name = str((model.spec or {}).get("name") or model.id)
            trigger = {"policy": policy.id, "event": "model_upload", "model": model.id, "model_name": name}
            job = start_audit(ctx, session, tenant, policy, model.id, trigger)
            started += [job] if job else []
    return started


def start_audit(ctx: ServiceContext, session: Session, tenant: TenantRef, policy: AuditPolicy, model_id: str,
                trigger: dict[str, Any]) -> str | None:
    """Submit ``policy``'s audit of ``model_id``; its job id, or ``None`` when the spec does not fit the model
    (a ``warning`` event on the model says why)."""
    try:
        job, _ = submit(session, ctx.settings, ctx.dispatcher, tenant, {**policy.spec, "model": model_id},
                        trigger=trigger)
        return job.id
    except ApiError as exc:
        session.rollback()
        row = session.get(Job, model_id)
        if row is not None:
            jobstate.add_event(session, row, "warning", f"audit policy {policy.name!r} started no audit: "
                               f"{exc.detail or exc.code}"[:1000], stage=row.stage,
                               data={"code": "audit_not_started", "policy": policy.id})
            session.commit()
        log.info("audit policy %s: no audit of %s (%s)", policy.id, model_id, exc.detail)
        return None


__all__ = ["TRIGGERS", "AuditPolicyCreate", "AuditPolicyPublic", "create_policy", "delete_policy", "get_policy",
           "list_policies", "on_model_upload", "start_audit"]
