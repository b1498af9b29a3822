"""The shared machinery around every job: claim, heartbeat, progress, cancel, outcome.

A task body only says *what* to run (``services.worker.handlers``); this module owns the rest,
the way one shared task decorator would:

* **claim** with a compare-and-set on ``(status, attempt)``: a duplicate delivery of a job another
  live worker runs (fresh heartbeat) is dropped; a terminal job is skipped (tasks are idempotent);
* **heartbeat** from a thread every ``heartbeat_s``; a worker that lost the job (the reaper gave it
  to someone else) notices through the attempt number and stops;
* **progress**: every ``ProgressEvent`` updates the job row (throttled); stage changes, finished
  epochs and messages become events; epoch metrics become metric rows;
* **cancel**: ``should_stop`` reads the ``cancel_requested`` flag at most every ``cancel_poll_s``;
* **outcome**: artifacts stored (sha256) and metrics written before ``succeeded``; ``Cancelled`` ->
  ``cancelled``; an exception -> ``failed`` with a code and message.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from midre.progress import Cancelled
from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job, Metric
from services.db.session import session_factory
from services.db.types import host_id, pid_host, utcnow
from services.redact import server_redactor
from services.settings import Settings
from services.storage import LocalStore

log = logging.getLogger(__name__)

#: Seconds between two writes of a job's progress fraction (stage changes are written at once).
PROGRESS_EVERY_S = 0.5
#: The stage name ``midre.train`` gives its end-of-epoch report (metrics of the finished epoch).
EPOCH_STAGE = "epoch"
#: Folders of a work dir that are resume state or caches, not artifacts (at any depth).
NOT_ARTIFACTS = frozenset({"checkpoint", "cache"})
#: Kinds of jobs whose model is their root ``model.json`` / ``model.safetensors`` among other outputs
#: (a harden job's recommendation): another job using it as a model copies only those two.
STUDY_MODEL_KINDS = frozenset({"harden"})


class JobLost(Exception):
    """This worker no longer owns the job (another attempt took over)."""


@dataclass
class JobContext:
    """What a handler gets: the job's spec and folders, and the callbacks to pass to ``midre``."""

    job_id: str
    tenant_id: str
    kind: str
    spec: dict[str, Any]
    attempt: int
    work_dir: Path
    dataset_source: str | None
    progress: Callable[[Any], None]
    should_stop: Callable[[], bool]
    store: LocalStore
    sessions: sessionmaker[Session]
    log: Callable[[str], None]
    resolved: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: Rewrites server paths in text that reaches clients (events, messages).
    redact: Callable[[str], str] = str

    @property
    def cache_dir(self) -> Path:
        """The tenant's cache of evaluation models, GAN priors and surrogates (shared by its studies)."""
        return self.store.root / "cache" / self.tenant_id

    def materialize_job_outputs(self, job_id: str, dest: Path, prefix: str = "") -> Path:
        """Copy another job of the same tenant's artifacts (e.g. a trained checkpoint) into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.sessions() as session:
            found = session.execute(select(Job.tenant_id, Job.kind).where(Job.id == job_id)).first()
            owner, kind = found if found is not None else (None, None)
            if owner != self.tenant_id:
                raise FileNotFoundError(f"job {job_id} is not a job of this tenant")
            rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
        for row in rows:
            if not row.name.startswith(prefix):
                continue
            if kind in STUDY_MODEL_KINDS and row.name not in ("model.json", "model.safetensors"):
                continue  # a harden job as a model: its recommended checkpoint only
            target = dest / row.name[len(prefix):]
            if target.is_file() and target.stat().st_size == row.size:
                continue  # another unit of the same study copied it already
            target.parent.mkdir(parents=True, exist_ok=True)
            # Units of one study run at once in several processes: copy, then rename into place.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            os.close(fd)
            shutil.copyfile(self.store.path(row.sha256), tmp)
            os.replace(tmp, target)
        return dest


@dataclass
class Outcome:
    """What a handler returns: the folder whose files become artifacts, and final metrics."""

    out_dir: Path
    metrics: dict[str, float]
    #: ``{"code", "message", ...}`` entries that become ``warning`` events of the job.
    warnings: list[dict[str, Any]] = field(default_factory=list)


Handler = Callable[[JobContext], Outcome]


class _Tracker:
    """Turns ``ProgressEvent``s into row updates, events and metrics, and answers ``should_stop``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
        self.settings = settings
        self.sessions = sessions
        self.job_id = job_id
        self.attempt = attempt
        #: Messages reach clients (events, the job's message and error): no server path in them.
        self.redact = server_redactor(settings)
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._last_write = 0.0
        self._last_poll = 0.0
        self._stage: str | None = None
        self._message = ""
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None
        #: Seconds the job's own thread spent in these callbacks (the service's cost inside training).
        self.callback_seconds = 0.0

    # -- ownership ---------------------------------------------------------------------------
    def _owned(self) -> Any:
        return (Job.id == self.job_id) & (Job.attempt == self.attempt)

    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(target=self._beat, name=f"heartbeat-{self.job_id}", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(self.settings.heartbeat_s):
            try:
                with self.sessions() as session:
                    result = session.execute(update(Job).where(self._owned()).values(heartbeat_at=utcnow()))
                    session.commit()
                if result.rowcount == 0:
                    log.warning("job %s: attempt %d no longer owns it", self.job_id, self.attempt)
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - keep beating through a DB hiccup
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)

    # -- callbacks given to midre ---------------------------------------------------------------
    def should_stop(self) -> bool:
        if self.lost.is_set() or self.cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll < self.settings.cancel_poll_s:
            return False
        self._last_poll = now
        try:
            return self._poll_flags()
        finally:
            self.callback_seconds += time.monotonic() - now

    def _poll_flags(self) -> bool:
        with self.sessions() as session:
            row = session.execute(
                select(Job.attempt, Job.cancel_requested).where(Job.id == self.job_id)
            ).first()
        if row is None or row.attempt != self.attempt:
            self.lost.set()
        elif row.cancel_requested:
            self.cancel.set()
        return self.lost.is_set() or self.cancel.is_set()

    def progress(self, event: Any) -> None:
        stage = str(getattr(event, "stage", "") or "")
        message = self.redact(str(getattr(event, "message", "") or ""))
        fraction = float(getattr(event, "fraction", 0.0) or 0.0)
        epoch = getattr(event, "epoch", None)
        metrics = normalise(getattr(event, "metrics", None) or {})  # the one vocabulary; drops NaN
        step, steps = getattr(event, "step", None), getattr(event, "steps", None)
        is_step = step is not None and steps is not None and message == ""
        # An end-of-epoch report is its own event type, not a change of stage.
        stage_changed = stage != self._stage and stage != EPOCH_STAGE
        now = time.monotonic()
        if is_step and not stage_changed and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        try:
            self._record(stage, message, fraction, epoch, metrics, event, is_step, stage_changed)
        finally:
            self.callback_seconds += time.monotonic() - now

    def _record(
        self,
        stage: str,
        message: str,
        fraction: float,
        epoch: Any,
        metrics: dict[str, float],
        event: Any,
        is_step: bool,
        stage_changed: bool,
    ) -> None:
        with self.sessions() as session:
            values: dict[str, Any] = {"progress": min(max(fraction, 0.0), 1.0), "heartbeat_at": utcnow()}
            if stage and stage != EPOCH_STAGE:
                values["stage"] = stage
            if message or stage_changed:
                values["message"] = message  # a new stage clears the previous stage's message
            result = session.execute(update(Job).where(self._owned()).values(**values))
            if result.rowcount == 0:
                self.lost.set()
                return
            job = session.get(Job, self.job_id)
            data = {
                "fraction": round(fraction, 4),
                "epoch": epoch,
                "epochs": getattr(event, "epochs", None),
                "metrics": metrics,
            }
            if stage == EPOCH_STAGE and epoch is not None:
                jobstate.add_event(session, job, "epoch", message or f"epoch {epoch}", stage=stage, data=data)
                for name, value in metrics.items():
                    session.add(Metric(job_id=self.job_id, name=name, value=value, epoch=int(epoch)))
            elif stage_changed:
                jobstate.add_event(session, job, "stage", message or stage, stage=stage, data=data)
            elif message and message != self._message and not is_step:
                jobstate.add_event(session, job, "log", message, stage=stage, data=data)
            session.commit()
        if stage != EPOCH_STAGE:
            self._stage = stage
        self._message = message or self._message


def owner_is_dead(worker: str | None) -> bool:
    """True when ``worker`` (``host:pid``) is a process of this host that no longer exists.

    Lets a redelivered message (``task_reject_on_worker_lost`` after a pool process died) or this
    host's reaper take the job over at once instead of waiting for its heartbeat to go stale.
    """
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != host_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _claim(settings: Settings, sessions: sessionmaker[Session], job_id: str, worker: str) -> Job | None:
    """Take the job for this worker, or return None when it must not run here."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        if job.status in jobstate.TERMINAL:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.status in (jobstate.RUNNING, jobstate.CANCELLING) and job.heartbeat_at is not None:
            age = (utcnow() - job.heartbeat_at).total_seconds()
            if age < settings.stale_after_s and not owner_is_dead(job.worker):
                log.info("job %s runs on %s (heartbeat %.0fs ago); duplicate delivery dropped", job_id,
                         job.worker, age)
                return None
        if job.cancel_requested:
            if jobstate.transition(session, job, [job.status], jobstate.CANCELLED):
                jobstate.add_event(session, job, "status", "cancelled", data={"status": "cancelled"})
                session.commit()
            return None
        if job.attempt >= settings.max_attempts:
            if jobstate.transition(session, job, [job.status], jobstate.FAILED, error_code="worker_lost",
                                   error_message=f"gave up after {job.attempt} attempts"):
                jobstate.add_event(session, job, "status", f"gave up after {job.attempt} attempts",
                                   data={"status": "failed"})
                session.commit()
            return None
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == job.status, Job.attempt == job.attempt)
            .values(
                status=jobstate.RUNNING,
                attempt=job.attempt + 1,
                worker=worker,
                heartbeat_at=now,
                started_at=job.started_at or now,
            )
        )
        if result.rowcount != 1:
            log.info("job %s was claimed concurrently; dropping", job_id)
            session.rollback()
            return None
        session.refresh(job)
        note = "resuming" if job.attempt > 1 else "started"
        jobstate.add_event(session, job, "status", f"{note} on {worker} (attempt {job.attempt})",
                           stage=job.stage, data={"status": "running", "worker": worker})
        session.commit()
        session.expunge(job)
        return job


def _dataset_source(sessions: sessionmaker[Session], job: Job) -> str | None:
    if job.dataset_id is None:
        return job.spec.get("dataset")
    with sessions() as session:
        dataset = session.get(Dataset, job.dataset_id)
        if dataset is None:
            raise FileNotFoundError(f"dataset: {job.dataset_id} was deleted before the job ran")
        return dataset.source


#: Artifacts stored as text: server paths in them are rewritten (the work folder keeps the originals).
TEXT_ARTIFACTS = (".json", ".html", ".md", ".txt", ".csv", ".yaml", ".yml")


def _put(store: LocalStore, path: Path, redact: Callable[[str], str] | None) -> Any:
    """Store ``path``; a text artifact goes through ``redact`` first (via a temporary copy)."""
    if redact is None or path.suffix.lower() not in TEXT_ARTIFACTS:
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
                  redact: Callable[[str], str] | None = None) -> int:
    """Store every file under ``out_dir`` (minus resume state) as an artifact of ``job_id``; with
    ``redact``, server paths in text artifacts (cards, reports, configs) are rewritten first."""
    files = [
        p
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and not NOT_ARTIFACTS.intersection(p.relative_to(out_dir).parts[:-1])
    ]
    stored = []
    for path in files:
        blob = _put(store, path, redact)
        name = path.relative_to(out_dir).as_posix()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".safetensors"):
            content_type = "application/octet-stream"
        stored.append((name, blob, content_type))
    with sessions() as session:
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        for name, blob, content_type in stored:
            session.add(Artifact(job_id=job_id, name=name, size=blob.size, sha256=blob.sha256,
                                 content_type=content_type, created_at=utcnow()))
        session.commit()
    return len(stored)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if type(exc).__name__ == "DatasetError":
        return "invalid_dataset"
    if isinstance(exc, ValueError):
        return "invalid_input"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out_of_memory"
    return "internal_error"


def execute_job(settings: Settings, job_id: str, handlers: dict[str, Handler], worker: str | None = None) -> str:
    """Run one delivery of ``job_id``; returns what happened (for logs and tests).

    Never raises for job errors (they are recorded on the job); a ``JobLost`` or a worker crash
    leaves the job to the attempt that owns it / to the reaper.
    """
    sessions = session_factory(settings.db_url, settings.pool)
    store = LocalStore(settings.storage_dir)
    worker = worker or pid_host()
    job = _claim(settings, sessions, job_id, worker)
    if job is None:
        return "skipped"
    tracker = _Tracker(settings, sessions, job_id, job.attempt)
    tracker.start_heartbeat()
    started = time.perf_counter()

    def log_line(message: str) -> None:
        with sessions() as session:
            row = session.get(Job, job_id)
            if row is not None:
                jobstate.add_event(session, row, "log", tracker.redact(message), stage=row.stage)
                session.commit()

    try:
        handler = handlers[job.kind]
        ctx = JobContext(
            job_id=job_id,
            tenant_id=job.tenant_id,
            kind=job.kind,
            spec=job.spec,
            resolved=job.resolved,
            attempt=job.attempt,
            work_dir=store.work_dir(job_id),
            dataset_source=_dataset_source(sessions, job),
            progress=tracker.progress,
            should_stop=tracker.should_stop,
            store=store,
            sessions=sessions,
            log=log_line,
            redact=tracker.redact,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        outcome = handler(ctx)
        if tracker.lost.is_set():
            raise JobLost(job_id)
        count = store_outputs(sessions, store, job_id, outcome.out_dir, tracker.redact)
        with sessions() as session:
            row = session.get(Job, job_id)
            for name, value in normalise(outcome.metrics).items():
                session.add(Metric(job_id=job_id, name=name, value=value, epoch=None))
            if jobstate.transition(session, row, [jobstate.RUNNING, jobstate.CANCELLING], jobstate.SUCCEEDED,
                                   attempt=job.attempt, stage="done", message=f"{count} artifacts stored"):
                for warning in outcome.warnings:
                    data = {k: tracker.redact(v) if isinstance(v, str) else v for k, v in warning.items()}
                    jobstate.add_event(session, row, "warning", str(data.get("message") or data.get("code"))[:1000],
                                       stage="done", data=data)
                jobstate.add_event(session, row, "status",
                                   f"succeeded in {time.perf_counter() - started:.1f}s",
                                   stage="done", data={"status": "succeeded", "artifacts": count,
                                                       "callback_seconds": round(tracker.callback_seconds, 4)})
            session.commit()
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        return "succeeded"
    except JobLost:
        return "lost"
    except Exception as exc:
        if tracker.lost.is_set():
            log.info("job %s: stopped because another attempt owns it", job_id)
            return "lost"
        if isinstance(exc, Cancelled) or tracker.cancel.is_set():  # AttackCancelled is a Cancelled too
            with sessions() as session:
                row = session.get(Job, job_id)
                if jobstate.transition(session, row, [jobstate.RUNNING, jobstate.CANCELLING],
                                       jobstate.CANCELLED, attempt=job.attempt, stage="cancelled",
                                       message=tracker.redact(str(exc))[:500]):
                    jobstate.add_event(session, row, "status", tracker.redact(f"cancelled: {exc}")[:1000],
                                       data={"status": "cancelled"})
                session.commit()
            shutil.rmtree(store.work_dir(job_id), ignore_errors=True)
            return "cancelled"
        log.exception("job %s failed", job_id)
        code = _error_code(exc)
        message = tracker.redact(str(exc))[:2000] or type(exc).__name__
        with sessions() as session:
            row = session.get(Job, job_id)
            if jobstate.transition(session, row, [jobstate.RUNNING, jobstate.CANCELLING], jobstate.FAILED,
                                   attempt=job.attempt, error_code=code, error_message=message):
                jobstate.add_event(session, row, "status", f"failed: {message}"[:1000],
                                   data={"status": "failed", "error_code": code,
                                         "exception": type(exc).__name__})
            session.commit()
        return "failed"
    finally:
        tracker.stop_heartbeat()
