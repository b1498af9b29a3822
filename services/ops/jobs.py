"""Jobs: submit, list, read, follow, cancel; and which jobs are models.

What a request does to jobs, for every transport (``/v1/jobs``, the dashboard, the CLI through REST).
A spec is checked before anything is stored: unknown keys and ranges (pydantic), the ids it names (the
tenant must own each), then the library's own checks (:func:`services.jobspec.resolve`); a refused
spec is a 422 naming the field, and nothing is stored. An accepted job is stored with its resolved
config and queued after the commit.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job, JobEvent, JobUnit, ModelPolicy
from services.db.types import new_id, utcnow
from services.db.workers import auto_queue
from services.jobspec import DIGITS, SpecError, bind, check_public_data, get_kind, kind_names, references, resolve
from services.ops.context import TenantRef
from services.ops.datasets import dataset_folder
from services.ops.errors import ApiError, not_found, validation_error
from services.ops.quotas import check_job_quotas
from services.queue.dispatch import Dispatcher
from services.redact import server_redactor
from services.serving.config import ServingSettings
from services.serving.policy import policy_of
from services.settings import Settings
from services.storage import open_store

log = logging.getLogger(__name__)


def get_job(session: Session, tenant: TenantRef, job_id: str) -> Job:
    """The tenant's job ``job_id``; 404 when missing or someone else's."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job", job_id)
    return job


def is_model(session: Session, job: Job) -> bool:
    """Whether a job is a model: its kind yields one (an uploaded model, a succeeded train job), or
    recommends one and did (a harden job whose recommended checkpoint is its own ``model.json``)."""
    kind = get_kind(job.kind)
    if job.status != jobstate.SUCCEEDED or kind.model == "never":
        return False
    if kind.model == "always":
        return True
    names = select(Artifact.name).where(Artifact.job_id == job.id, Artifact.name == "model.json")
    return session.scalar(names) is not None


def model_job(session: Session, tenant: TenantRef, field: str, ref: str) -> Job:
    """The tenant's model ``ref`` (see :func:`is_model`); 422 naming ``field`` otherwise."""
    job = session.get(Job, ref)
    if job is None or job.tenant_id != tenant.id:
        raise validation_error(field, f"unknown model {ref!r}")
    if not is_model(session, job):
        raise validation_error(field, f"{ref!r} is not a model: not an uploaded model, a succeeded train job or a "
                                      "harden job that recommended a checkpoint")
    return job


def model_data(job: Job) -> dict[str, Any] | None:
    """The data spec a model was trained on, as far as the service knows it (``None``: unknown)."""
    if get_kind(job.kind).model_data == "card":  # an uploaded midre model.json still carries its data spec
        return ((job.spec.get("card") or {}).get("config") or {}).get("data")
    return ((job.resolved or {}).get("config") or {}).get("data")


def dataset_ref(session: Session, tenant: TenantRef, ref: str) -> tuple[str, str | None]:
    """``(source, dataset_id)`` of a spec's ``dataset``; 422 naming ``dataset`` when it is not the tenant's."""
    if ref == DIGITS:
        return DIGITS, None
    dataset = session.get(Dataset, ref)
    if dataset is None or dataset.tenant_id != tenant.id:
        raise validation_error("dataset", f"unknown dataset {ref!r}: use 'digits' or the id of your dataset")
    return dataset.source, dataset.id


def check_references(session: Session, tenant: TenantRef, spec: dict[str, Any]) -> tuple[str | None, Job | None]:
    """Check that the tenant owns every dataset and job the spec names; ``(dataset_id, model under audit)``."""
    try:
        refs = references(spec)
    except SpecError as exc:
        raise validation_error(exc.field, exc.message) from exc
    dataset_id, audited = None, None
    for ref in refs:
        if ref.what == "dataset":
            dataset_id = dataset_ref(session, tenant, ref.id)[1]
        else:
            job = model_job(session, tenant, ref.field, ref.id)
            if ref.field in ("model", "model_job", "deployment.model"):
                audited = job
    return dataset_id, audited


def deployment_of(session: Session, spec: dict[str, Any]) -> dict[str, Any] | None:
    """How the model an audit names in ``deployment`` is served now: its output policy, and the query budget
    of one client (the spec's ``deployment.budget``, else the model's own budget per key)."""
    dep = spec.get("deployment")
    if not isinstance(dep, dict):
        return None
    model = spec.get("model") or spec.get("model_job") or dep["model"]
    policy, budget = policy_of(session.get(ModelPolicy, model))
    return {"model": model, "policy": policy.describe(),
            "budget": dep.get("budget") if dep.get("budget") is not None else budget,
            "default_k": ServingSettings().default_top_k}


def _resolved(session: Session, spec: dict[str, Any], dataset_id: str | None,
              audited: Job | None) -> tuple[dict[str, Any], str | None]:
    """The spec resolved against the library (``inherited``: the data an audited model was trained on,
    by id) and the dataset the job uses; 422 naming the field when the library refuses it."""
    inherited = None
    if audited is not None and not spec.get("dataset"):
        data = model_data(audited)
        if data is None:
            raise validation_error("dataset", f"model {audited.id} was not trained here: name the private data it "
                                              "was trained on (`dataset`, and its split in `data`)")
        if get_kind(audited.kind).model_data == "resolved":  # its data, by id (a server path stays on the server)
            inherited, dataset_id = data, audited.dataset_id
    try:
        resolved = resolve(spec, inherited, deployment_of(session, spec))
        check_public_data(spec, model_data(audited) if audited is not None else None)
    except SpecError as exc:
        raise validation_error(exc.field, exc.message) from exc
    return resolved, dataset_id


#: One cost calibration at a time per API process: a dry run times a few steps on random tensors.
_ESTIMATING = threading.Lock()


def dry_run(session: Session, settings: Settings, tenant: TenantRef, spec: dict[str, Any]) -> dict[str, Any]:
    """Everything :func:`submit` checks (ids, the library's checks, quotas), and what the job would cost,
    without storing or queueing anything: ``{"dry_run", "kind", "resolved", "estimate"}``.

    The estimate (``midre.cost.estimate_study``: every judge, prior, target and attack run, cached ones at
    zero) times a few steps on random tensors of the job's shapes, one dry run at a time per API process;
    a train job has none (``null``), and a calibration that fails says why instead of failing the answer.
    """
    dataset_id, audited = check_references(session, tenant, spec)
    resolved, dataset_id = _resolved(session, spec, dataset_id, audited)
    check_job_quotas(session, settings, tenant.id, resolved)
    estimate: dict[str, Any] | None = None
    if get_kind(spec["kind"]).report:
        with _ESTIMATING, tempfile.TemporaryDirectory(prefix="dry-run-") as scratch:
            estimate = _estimate(session, settings, tenant, resolved, Path(scratch))
    return {"dry_run": True, "kind": spec["kind"], "resolved": resolved, "estimate": estimate}


def _estimate(session: Session, settings: Settings, tenant: TenantRef, resolved: dict[str, Any],
              scratch: Path) -> dict[str, Any]:
    """The cost estimate of a resolved study, its references bound to the datasets' folders and to copies
    of the named models' cards."""
    from midre.cost import estimate_study

    store = open_store(settings)

    def lookup(token: str) -> str:
        what, _, ident = token.partition(":")
        if what == "dataset":
            source, dataset_id = dataset_ref(session, tenant, ident)
            return source if dataset_id is None else dataset_folder(store, session.get(Dataset, dataset_id))
        card = session.scalar(select(Artifact).where(Artifact.job_id == ident, Artifact.name == "model.json"))
        folder = scratch / ident
        folder.mkdir(exist_ok=True)
        if card is not None:
            (folder / "model.json").write_bytes(store.path(card.sha256).read_bytes())
        return str(folder)

    try:
        config = bind(resolved, lookup, cache_dir=str(store.root / "cache" / tenant.id))
        return server_redactor(settings).data(json.loads(json.dumps(estimate_study(config), default=str)))
    except Exception as exc:  # noqa: BLE001 - an estimate never turns a valid spec into an error
        log.warning("dry run: no cost estimate: %s", exc)
        return {"error": server_redactor(settings)(str(exc))[:500] or type(exc).__name__}


def submit(session: Session, settings: Settings, dispatcher: Dispatcher, tenant: TenantRef, spec: dict[str, Any],
           idempotency_key: str | None = None, trigger: dict[str, Any] | None = None) -> tuple[Job, bool]:
    """Check, store and queue a job; ``(job, replayed)``: ``replayed`` when an earlier request with the same
    ``idempotency_key`` made it (the same body, else 422). ``trigger``: what started a job nobody submitted
    (an audit policy)."""
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replay(existing, spec), True
    dataset_id, audited = check_references(session, tenant, spec)
    resolved, dataset_id = _resolved(session, spec, dataset_id, audited)
    check_job_quotas(session, settings, tenant.id, resolved)
    device = spec.get("device", "auto")
    queue = settings.queue_name(auto_queue(session, settings) if device == "auto" else dispatcher.route(device))
    job = Job(id=new_id("job"), tenant_id=tenant.id, kind=spec["kind"], status=jobstate.QUEUED, spec=spec,
              resolved=resolved, queue=queue, idempotency_key=idempotency_key, dataset_id=dataset_id, progress=0.0,
              stage="queued", attempt=0, cancel_requested=False, created_at=utcnow(), trigger=trigger)
    session.add(job)
    jobstate.add_event(session, job, "status", f"queued on {queue}", stage="queued", data={"status": "queued"})
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the race
        session.rollback()
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _replay(existing, spec), True
    try:
        dispatcher.send(job.id, queue)
    except Exception as exc:  # noqa: BLE001 - the reaper sends jobs never dispatched
        log.warning("could not queue %s now (%s); a worker's reaper will", job.id, exc)
    else:
        job.dispatched_at = utcnow()
        session.commit()
    return job, False


def _replay(job: Job, spec: dict[str, Any]) -> Job:
    if job.spec != spec:
        raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")
    return job


def list_jobs(session: Session, tenant: TenantRef, status: str | None = None, kind: str | None = None,
              cursor: str | None = None, limit: int = 50) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, optionally of one status and kind; and the next cursor."""
    if status is not None and status not in jobstate.STATUSES:
        raise validation_error("status", f"must be one of {', '.join(jobstate.STATUSES)}")
    if kind is not None and kind not in kind_names():
        raise validation_error("kind", f"must be one of {', '.join(kind_names())}")
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if cursor:
        query = query.where(Job.id < cursor)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all())
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def list_events(session: Session, tenant: TenantRef, job_id: str, after: int | None = None,
                limit: int = 100) -> tuple[list[JobEvent], int | None]:
    """A page of a job's events, oldest first (``after``: only events with a larger id); and the next cursor."""
    job = get_job(session, tenant, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    rows = list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)).all())
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def list_units(session: Session, tenant: TenantRef, job_id: str) -> tuple[list[JobUnit], dict[str, int]]:
    """A job's units (in the order they were added) and their counts per status."""
    job = get_job(session, tenant, job_id)
    rows = list(session.scalars(select(JobUnit).where(JobUnit.job_id == job.id).order_by(JobUnit.id)).all())
    return rows, jobstate.unit_counts(session, job.id)


def cancel(session: Session, tenant: TenantRef, job_id: str) -> Job:
    """Cancel a job: a queued one at once; a running one goes to ``cancelling``, sends no further unit, and
    its running units stop at their next step. 409 when it has finished already."""
    job = get_job(session, tenant, job_id)
    if jobstate.transition(session, job, [jobstate.QUEUED], jobstate.CANCELLED, cancel_requested=True):
        jobstate.add_event(session, job, "status", "cancelled before it started", data={"status": "cancelled"})
    elif jobstate.transition(session, job, [jobstate.RUNNING], jobstate.CANCELLING, cancel_requested=True):
        jobstate.add_event(session, job, "status", "cancel requested", data={"status": "cancelling"})
    elif job.status in jobstate.TERMINAL:
        raise ApiError(409, "job_finished", f"job {job_id} already {job.status}")
    session.commit()
    return job


__all__ = ["cancel", "check_references", "dataset_ref", "dry_run", "get_job", "is_model", "list_events", "list_jobs",
           "list_units", "model_data", "model_job", "submit"]
