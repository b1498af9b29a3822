"""How a job ends: its outputs stored, its metrics and warnings recorded, its status moved.

One place for every kind: :func:`finish_job` stores the files of the job's folder as artifacts (sha256,
text redacted), replaces its final metrics, adds its warnings as events, makes a recommended
checkpoint the job's own model when its kind says so, and moves the job to ``succeeded`` in the same
transaction as its last unit (the status change queues the job's webhook messages and MLflow hand-off
with it: :func:`services.db.jobs.transition`). :func:`fail_job` and :func:`finish_cancel` end a job
the other ways.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.audits import after_audit
from services.db.models import Artifact, Job, JobUnit, Metric
from services.db.types import utcnow
from services.jobspec import get_kind
from services.redact import server_redactor
from services.settings import Settings
from services.storage import LocalStore, open_store

log = logging.getLogger(__name__)

#: Folders of a job's folder that are resume state, caches or the engine's own markers, not artifacts.
NOT_ARTIFACTS = frozenset({"checkpoint", "cache", "units"})
#: Artifacts stored as text: server paths in them are rewritten (the work folder keeps the originals).
TEXT_ARTIFACTS = (".json", ".html", ".md", ".txt", ".csv", ".yaml", ".yml")
#: A model's files; a study that recommends a checkpoint keeps it under ``recommended/``.
MODEL_FILES = ("model.json", "model.safetensors")
RECOMMENDED = "recommended/"


@dataclass
class Outcome:
    """What a finished job reports: its final metrics and ``{"code", "message", ...}`` warnings."""

    metrics: dict[str, float]
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _put(store: LocalStore, path: Path, redact: Callable[[str], str]) -> Any:
    """Store ``path``; a text artifact goes through ``redact`` first (via a temporary copy)."""
    if path.suffix.lower() not in TEXT_ARTIFACTS:
        return store.put_file(path)
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    clean = redact(text)
    if clean == text:
        return store.put_file(path)
    fd, tmp = tempfile.mkstemp(prefix=".redacted-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(clean)
        return store.put_file(Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


def store_outputs(sessions: sessionmaker[Session], store: LocalStore, job_id: str, out_dir: Path,
                  redact: Callable[[str], str]) -> int:
    """Store every file under ``out_dir`` (minus :data:`NOT_ARTIFACTS`) as an artifact of ``job_id``; server
    paths in text artifacts (cards, reports, configs) are rewritten first."""
    files = [p for p in sorted(out_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and not NOT_ARTIFACTS.intersection(p.relative_to(out_dir).parts[:-1])]
    stored = []
    for path in files:
        name = path.relative_to(out_dir).as_posix()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".safetensors"):
            content_type = "application/octet-stream"
        stored.append((name, _put(store, path, redact), content_type))
    with sessions() as session:
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        for name, blob, content_type in stored:
            session.add(Artifact(job_id=job_id, name=name, size=blob.size, sha256=blob.sha256,
                                 content_type=content_type, created_at=utcnow()))
        session.commit()
    return len(stored)


def _alias_recommended(session: Session, job_id: str) -> int:
    """A recommended checkpoint, also stored as the job's own ``model.json`` / ``model.safetensors`` (same
    blobs): the job id is then a model id like a train job's. Returns the artifacts added."""
    rows = {a.name: a for a in session.scalars(select(Artifact).where(
        Artifact.job_id == job_id, Artifact.name.in_([RECOMMENDED + n for n in MODEL_FILES] + list(MODEL_FILES))))}
    if any(name in rows for name in MODEL_FILES) or not all(RECOMMENDED + n in rows for n in MODEL_FILES):
        return 0
    for name in MODEL_FILES:
        src = rows[RECOMMENDED + name]
        session.add(Artifact(job_id=job_id, name=name, size=src.size, sha256=src.sha256,
                             content_type=src.content_type, created_at=utcnow()))
    return len(MODEL_FILES)


def _won_last_unit(session: Session, job: Job, unit: JobUnit, elapsed: float) -> bool:
    won = session.execute(
        update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                              JobUnit.status == jobstate.RUNNING)
        .values(status=jobstate.SUCCEEDED, progress=1.0, finished_at=utcnow(),
                result={"added": [], "seconds": round(elapsed, 3)})
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        return False
    jobstate.unit_event(session, job, unit, jobstate.SUCCEEDED, f"unit {unit.key} succeeded in {elapsed:.1f}s",
                        seconds=round(elapsed, 3), added=0)
    return True


def finish_job(settings: Settings, sessions: sessionmaker[Session], job: Job, unit: JobUnit | None,
               outcome: Outcome, out_dir: Path, elapsed: float, callback_seconds: float = 0.0) -> None:
    """Store the job's artifacts and metrics, then move the job (and ``unit``, the one completing the graph)
    to succeeded in one transaction. Run again after a lost worker, it gives the same result."""
    redact = server_redactor(settings)
    store = open_store(settings)
    count = store_outputs(sessions, store, job.id, out_dir, redact)
    with sessions() as session:
        row = session.get(Job, job.id)
        if row is None:
            return
        if unit is not None and not _won_last_unit(session, row, unit, elapsed):
            session.rollback()
            return
        if get_kind(row.kind).model == "recommended":
            count += _alias_recommended(session, job.id)
        if jobstate.transition(session, row, list(jobstate.ACTIVE_RUN), jobstate.SUCCEEDED,
                               stage="done", message=f"{count} artifacts stored"):
            session.execute(delete(Metric).where(Metric.job_id == job.id, Metric.epoch.is_(None)))
            metrics = normalise(outcome.metrics)
            for name, value in metrics.items():
                session.add(Metric(job_id=job.id, name=name, value=value, epoch=None))
            after_audit(session, row, metrics)  # a policy's audit: audit.completed / audit.regressed
            warning_events(session, row, outcome.warnings, redact)
            took = (utcnow() - row.started_at).total_seconds() if row.started_at else elapsed
            jobstate.add_event(session, row, "status", f"succeeded in {took:.1f}s", stage="done",
                               data={"status": "succeeded", "artifacts": count,
                                     "callback_seconds": round(callback_seconds, 4),
                                     **jobstate.unit_counts(session, job.id)})
        session.commit()
    if get_kind(job.kind).model != "never":
        store_bom(settings, sessions, store, job.id)
    forget_work(store, job.id)


def forget_work(store: LocalStore, job_id: str) -> None:
    """Delete a finished job's working files: this machine's folder, and their copy in an object store."""
    shutil.rmtree(store.work_dir(job_id), ignore_errors=True)
    try:
        store.delete_tree(f"work/{job_id}")
    except Exception as exc:  # noqa: BLE001 - the job is finished; leftovers only cost space
        log.warning("job %s: could not delete its working files from the store: %s", job_id, exc)


def store_bom(settings: Settings, sessions: sessionmaker[Session], store: LocalStore, job_id: str) -> bool:
    """Keep the CycloneDX ML-BOM of the model a job produced as its artifact ``bom.json`` (what the model was
    when it was made; ``GET /v1/models/{id}/bom.json`` gives it with every later audit). A job that produced
    no model (a harden search that recommended nothing) or a BOM that cannot be built keeps none."""
    from services.ops.bom import model_bom
    from services.ops.context import ServiceContext, TenantRef
    from services.ops.errors import ApiError

    ctx = ServiceContext(settings, sessions, store, None)  # type: ignore[arg-type]  # nothing is dispatched
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is None or session.scalar(select(Artifact).where(Artifact.job_id == job_id,
                                                                Artifact.name == "bom.json")) is not None:
            return False
        try:
            bom = model_bom(ctx, session, TenantRef(row.tenant_id, ""), job_id)
        except ApiError:
            return False
        except Exception:  # noqa: BLE001 - the job has succeeded; a BOM that cannot be built must not undo it
            log.exception("bom.json of %s not written", job_id)
            return False
        path = store.work_dir(job_id) / "bom.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(bom, indent=2))
        blob = store.put_file(path)
        session.add(Artifact(job_id=job_id, name="bom.json", size=blob.size, sha256=blob.sha256,
                             content_type="application/json", created_at=utcnow()))
        session.commit()
    return True


def warning_events(session: Session, job: Job, warnings: list[dict[str, Any]], redact: Callable[[str], str]) -> int:
    """One ``warning`` event per warning (code, message, attack, defense), server paths rewritten."""
    count = 0
    for item in warnings:
        if not isinstance(item, dict):
            continue
        data = {k: redact(v) if isinstance(v, str) else v for k, v in item.items()}
        jobstate.add_event(session, job, "warning", str(data.get("message") or data.get("code") or "warning")[:1000],
                           stage=job.stage, data=data)
        count += 1
    return count


def fail_job(sessions: sessionmaker[Session], job_id: str, code: str, message: str, exc: BaseException | None = None,
             unit: str | None = None) -> None:
    """Fail a job (its units not yet running are cancelled; running ones stop by themselves)."""
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is None:
            return
        text = f"unit {unit}: {message}" if unit else message
        if jobstate.transition(session, row, [jobstate.QUEUED, *jobstate.ACTIVE_RUN], jobstate.FAILED,
                               error_code=code, error_message=text[:2000]):
            session.execute(update(JobUnit).where(JobUnit.job_id == job_id,
                                                  JobUnit.status.in_([jobstate.PENDING, jobstate.QUEUED]))
                            .values(status=jobstate.CANCELLED, finished_at=utcnow()))
            data: dict[str, Any] = {"status": "failed", "error_code": code}
            if exc is not None:
                data["exception"] = type(exc).__name__
            if unit:
                data["unit"] = unit
            jobstate.add_event(session, row, "status", f"failed: {text}"[:1000], data=data)
        session.commit()


def finish_cancel(settings: Settings, sessions: sessionmaker[Session], job_id: str) -> bool:
    """Move a cancelling job to ``cancelled`` once none of its units runs any more."""
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is None or row.status not in jobstate.ACTIVE_RUN or not (
            row.cancel_requested or row.status == jobstate.CANCELLING
        ):
            return False
        running = session.scalar(select(func.count()).select_from(JobUnit)
                                 .where(JobUnit.job_id == job_id, JobUnit.status == jobstate.RUNNING))
        if running:
            return False
        session.execute(update(JobUnit).where(JobUnit.job_id == job_id,
                                              JobUnit.status.in_([jobstate.PENDING, jobstate.QUEUED]))
                        .values(status=jobstate.CANCELLED, finished_at=utcnow()))
        moved = jobstate.transition(session, row, list(jobstate.ACTIVE_RUN), jobstate.CANCELLED,
                                    stage="cancelled", message="cancelled")
        if moved:
            jobstate.add_event(session, row, "status", "cancelled: every unit stopped",
                               data={"status": "cancelled", **jobstate.unit_counts(session, job_id)})
        session.commit()
    if moved:
        forget_work(open_store(settings), job_id)
    return moved


def error_code(exc: BaseException) -> str:
    """The job error code of an exception a unit raised."""
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if type(exc).__name__ == "DatasetError":
        return "invalid_dataset"
    if isinstance(exc, ValueError):
        return "invalid_input"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out_of_memory"
    return "internal_error"


__all__ = ["MODEL_FILES", "NOT_ARTIFACTS", "Outcome", "error_code", "fail_job", "finish_cancel", "finish_job",
           "store_outputs", "warning_events"]
