"""Fanned-out studies: a study job runs as a graph of units, each its own Celery task on any worker.

A DB-driven scheduler (the ``job_units`` table is the graph, the broker only carries "run unit K
of job J" messages):

* **plan**: the job's first delivery (``midre.run_job``) claims the job as any job, asks the library
  for the study's units (``midre.plan.plan_study``), inserts them in one transaction and sends the
  units without dependencies (``midre.run_unit(job_id, key)``, to the job's queue);
* **run**: a unit task claims its row with a compare-and-set on ``(status, attempt)``, writes a
  heartbeat, runs ``midre.plan.run_unit`` in the study's shared folder (``work/<job>/out`` under the
  store root, which every worker of a deployment shares), and marks the unit succeeded together with
  the units it returned (an ``expand`` unit adds units);
* **join**: after that commit the worker sends every pending unit whose dependencies have all
  succeeded; the move ``pending -> queued`` is a conditional UPDATE, so of several workers finishing
  at once exactly one sends a unit;
* **finish**: the unit that completes the graph (the ``report``) stores the study's artifacts and
  metrics and moves the job to ``succeeded`` before it marks itself succeeded, so a worker lost in
  between only makes its unit run again (the library's units are idempotent);
* **cancel / failure**: no unit is sent once the job is cancelling or finished; running units see
  ``should_stop``; a failed unit fails the job with its error; the last unit to stop moves a
  cancelling job to ``cancelled`` (the reaper does it when none was running);
* **lost workers**: the reaper re-sends units whose heartbeat went stale (``reap_units``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from midre.progress import Cancelled
from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.jobs import unit_counts
from services.db.models import Artifact, Job, JobUnit, Metric
from services.db.session import session_factory
from services.db.types import pid_host, utcnow
from services.queue.dispatch import Dispatcher
from services.redact import server_redactor
from services.settings import Settings
from services.storage import LocalStore
from services.worker.runner import (
    EPOCH_STAGE,
    PROGRESS_EVERY_S,
    JobContext,
    _claim,
    _dataset_source,
    _error_code,
    owner_is_dead,
    store_outputs,
)

log = logging.getLogger(__name__)

#: Job kinds that run as a graph of units.
FANOUT_KINDS = frozenset({"pipeline", "sweep", "harden"})

PENDING, QUEUED, RUNNING = "pending", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
UNIT_TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, "skipped"})
#: Artifacts of a harden job that make it a model: the recommended checkpoint, also at the root.
RECOMMENDED = "recommended/"
MODEL_FILES = ("model.json", "model.safetensors")


class Planner(Protocol):
    """What the scheduler needs from the library (``midre.plan``), units as plain dicts."""

    def plan(self, config: Any) -> list[dict[str, Any]]: ...

    def run(self, config: Any, out_dir: Path, unit: dict[str, Any], progress: Callable[[Any], None],
            should_stop: Callable[[], bool]) -> list[dict[str, Any]]: ...

    def report(self, out_dir: Path) -> dict[str, Any]: ...


class LibraryPlanner:
    """:class:`Planner` over ``midre.plan`` (``plan_study``, ``run_unit``, ``read_report``)."""

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

    def report(self, out_dir: Path) -> dict[str, Any]:
        return dict(self.lib.read_report(out_dir))


def library_planner() -> Planner | None:
    """The library's planner, or None when this ``midre`` has no ``midre.plan`` (studies then run
    in one task, as :mod:`services.worker.handlers` does)."""
    try:
        return LibraryPlanner()
    except ImportError:
        return None


def study_dir(store: LocalStore, job_id: str) -> Path:
    """The folder every unit of a study reads and writes (the job's work folder's ``out``)."""
    return store.work_dir(job_id) / "out"


def unit_row(unit: dict[str, Any], job_id: str) -> JobUnit:
    """A new ``pending`` row for a unit the library described."""
    return JobUnit(job_id=job_id, key=str(unit["key"]), kind=str(unit.get("kind", "")),
                   params=dict(unit.get("params") or {}), deps=[str(d) for d in unit.get("deps") or ()],
                   weight=float(unit.get("weight", 1.0)), progress=0.0, status=PENDING, attempt=0,
                   created_at=utcnow())


def unit_dict(row: JobUnit) -> dict[str, Any]:
    """The library's view of a unit row."""
    return {"key": row.key, "kind": row.kind, "deps": list(row.deps or []), "weight": row.weight,
            "params": dict(row.params or {})}


def has_units(session: Session, job_id: str) -> bool:
    """Whether the job was planned into units (then the units, not the job, carry the heartbeats)."""
    return session.scalar(select(JobUnit.id).where(JobUnit.job_id == job_id).limit(1)) is not None


def unit_event(session: Session, job: Job, row: JobUnit, status: str, message: str, **data: Any) -> None:
    """A ``unit`` event on the job: one unit changed status."""
    jobstate.add_event(session, job, "unit", message, stage=job.stage,
                       data={"unit": row.key, "kind": row.kind, "status": status, "attempt": row.attempt, **data})


# --------------------------------------------------------------------------- sending


def dispatch_ready(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str) -> int:
    """Send every pending unit of a running job whose dependencies have all succeeded; returns how
    many this call sent. Call it after the commit that finished a unit: a unit is moved
    ``pending -> queued`` by a conditional UPDATE, so it is sent once however many workers race."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != jobstate.RUNNING or job.cancel_requested:
            return 0
        queue = job.queue
        rows = session.execute(select(JobUnit.id, JobUnit.key, JobUnit.status, JobUnit.deps)
                               .where(JobUnit.job_id == job_id)).all()
    done = {row.key for row in rows if row.status == SUCCEEDED}
    ready = [row for row in rows if row.status == PENDING and all(dep in done for dep in row.deps or [])]
    sent = 0
    for row in ready:
        with sessions() as session:
            won = session.execute(
                update(JobUnit).where(JobUnit.id == row.id, JobUnit.status == PENDING)
                .values(status=QUEUED, dispatched_at=utcnow()).execution_options(synchronize_session=False)
            )
            session.commit()
        if won.rowcount != 1:
            continue
        if send_unit(sessions, dispatcher, job_id, row.id, row.key, queue):
            sent += 1
    return sent


def send_unit(sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str, unit_id: int, key: str,
              queue: str) -> bool:
    """Publish one unit already moved to ``queued``; on a broker error it stays queued without
    ``dispatched_at`` and the reaper sends it."""
    try:
        dispatcher.send_unit(job_id, key, queue)
        return True
    except Exception as exc:  # noqa: BLE001 - the reaper sends unsent units
        log.warning("job %s: could not send unit %s now (%s); a reaper will", job_id, key, exc)
        with sessions() as session:
            session.execute(update(JobUnit).where(JobUnit.id == unit_id, JobUnit.status == QUEUED)
                            .values(dispatched_at=None))
            session.commit()
        return False


# --------------------------------------------------------------------------- planning


def plan_job(settings: Settings, job_id: str, planner: Planner, worker: str | None = None,
             dispatcher: Dispatcher | None = None) -> str:
    """The first delivery of a study job: claim it, insert its units, send the ready ones.

    A later delivery of a planned job only sends what is ready (nothing runs twice).
    """
    sessions = session_factory(settings.db_url, settings.pool)
    dispatcher = dispatcher or Dispatcher(settings)
    with sessions() as session:
        planned = has_units(session, job_id)
    if planned:
        dispatch_ready(settings, sessions, dispatcher, job_id)
        return "skipped"
    job = _claim(settings, sessions, job_id, worker or pid_host())
    if job is None:
        return "skipped"
    redact = server_redactor(settings)
    try:
        ctx = unit_context(settings, sessions, job, lambda _e: None, lambda: False)
        config = library_config(ctx)
        units = planner.plan(config)
        if not units:
            raise ValueError("the study has no units to run")
        from services.worker.handlers import record_estimate

        record_estimate(sessions, job_id, config, redact)
        with sessions() as session:
            row = session.get(Job, job_id)
            for unit in units:
                session.add(unit_row(unit, job_id))
            session.execute(update(Job).where(Job.id == job_id, Job.attempt == job.attempt)
                            .values(stage="plan", message=f"{len(units)} units", heartbeat_at=utcnow()))
            jobstate.add_event(session, row, "stage", f"planned {len(units)} units", stage="plan",
                               data={"units": len(units)})
            session.commit()
    except IntegrityError:  # another delivery planned it meanwhile
        log.info("job %s was planned concurrently", job_id)
    except Exception as exc:
        log.exception("job %s: planning failed", job_id)
        fail_job(sessions, job_id, _error_code(exc), redact(str(exc))[:2000] or type(exc).__name__, exc)
        return "failed"
    dispatch_ready(settings, sessions, dispatcher, job_id)
    return "planned"


def library_config(ctx: JobContext) -> Any:
    """The job's library config bound to this worker's folders (see ``handlers.library_config``)."""
    from services.worker.handlers import library_config as bind

    return bind(ctx)


def unit_context(settings: Settings, sessions: sessionmaker[Session], job: Job, progress: Callable[[Any], None],
                 should_stop: Callable[[], bool]) -> JobContext:
    """A :class:`JobContext` for work on a study job outside one job task (planning, a unit)."""
    store = LocalStore(settings.storage_dir)
    work_dir = store.work_dir(job.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    redact = server_redactor(settings)

    def log_line(message: str) -> None:
        with sessions() as session:
            row = session.get(Job, job.id)
            if row is not None:
                jobstate.add_event(session, row, "log", redact(message), stage=row.stage)
                session.commit()

    return JobContext(job_id=job.id, tenant_id=job.tenant_id, kind=job.kind, spec=job.spec, resolved=job.resolved,
                      attempt=job.attempt, work_dir=work_dir, dataset_source=_dataset_source(sessions, job),
                      progress=progress, should_stop=should_stop, store=store, sessions=sessions, log=log_line,
                      redact=redact)


# --------------------------------------------------------------------------- one unit


class UnitLost(Exception):
    """Another attempt owns the unit now."""


class _UnitTracker:
    """Heartbeat, progress and ``should_stop`` of one unit attempt."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], job_id: str, unit: JobUnit) -> None:
        self.settings = settings
        self.sessions = sessions
        self.job_id = job_id
        self.unit_id = unit.id
        self.key = unit.key
        self.attempt = unit.attempt
        self.redact = server_redactor(settings)
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}-{unit.key}", daemon=True)
        self._last_write = 0.0
        self._last_poll = 0.0
        self._stage: str | None = None
        self._message = ""

    def _owned(self) -> Any:
        return (JobUnit.id == self.unit_id) & (JobUnit.attempt == self.attempt) & (JobUnit.status == RUNNING)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                now = utcnow()
                with self.sessions() as session:
                    result = session.execute(update(JobUnit).where(self._owned()).values(heartbeat_at=now))
                    session.execute(update(Job).where(Job.id == self.job_id,
                                                      Job.status.in_([jobstate.RUNNING, jobstate.CANCELLING]))
                                    .values(heartbeat_at=now))
                    session.commit()
                if result.rowcount == 0:
                    log.warning("job %s unit %s: attempt %d no longer owns it", self.job_id, self.key, self.attempt)
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - keep beating through a DB hiccup
                log.warning("job %s unit %s: heartbeat failed: %s", self.job_id, self.key, exc)

    def should_stop(self) -> bool:
        if self.lost.is_set() or self.cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll < self.settings.cancel_poll_s:
            return False
        self._last_poll = now
        with self.sessions() as session:
            job = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == self.job_id)).first()
            unit = session.execute(select(JobUnit.status, JobUnit.attempt).where(JobUnit.id == self.unit_id)).first()
        if unit is None or unit.attempt != self.attempt or unit.status != RUNNING:
            self.lost.set()
        elif job is None or job.cancel_requested or job.status != jobstate.RUNNING:
            self.cancel.set()  # cancelled, or failed because of another unit
        return self.lost.is_set() or self.cancel.is_set()

    def progress(self, event: Any) -> None:
        stage = str(getattr(event, "stage", "") or "")
        message = self.redact(str(getattr(event, "message", "") or ""))
        fraction = min(max(float(getattr(event, "fraction", 0.0) or 0.0), 0.0), 1.0)
        epoch = getattr(event, "epoch", None)
        step, steps = getattr(event, "step", None), getattr(event, "steps", None)
        is_step = step is not None and steps is not None and message == ""
        stage_changed = stage != self._stage and stage != EPOCH_STAGE
        now = time.monotonic()
        if is_step and not stage_changed and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        with self.sessions() as session:
            result = session.execute(update(JobUnit).where(self._owned()).values(progress=fraction))
            if result.rowcount == 0:
                self.lost.set()
                return
            job = session.get(Job, self.job_id)
            if job is None or job.status not in (jobstate.RUNNING, jobstate.CANCELLING):
                session.commit()
                return
            values: dict[str, Any] = {"progress": max(job.progress, weighted_progress(session, self.job_id))}
            if stage and stage != EPOCH_STAGE:
                values["stage"] = stage
            if message or stage_changed:
                values["message"] = message
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))
            metrics = normalise(getattr(event, "metrics", None) or {})
            data = {"unit": self.key, "fraction": round(fraction, 4), "epoch": epoch,
                    "epochs": getattr(event, "epochs", None), "metrics": metrics}
            if stage == EPOCH_STAGE and epoch is not None:
                jobstate.add_event(session, job, "epoch", f"{self.key}: {message or f'epoch {epoch}'}", stage=stage,
                                   data=data)
            elif stage_changed:
                jobstate.add_event(session, job, "stage", f"{self.key}: {message or stage}", stage=stage, data=data)
            elif message and message != self._message and not is_step:
                jobstate.add_event(session, job, "log", f"{self.key}: {message}", stage=stage, data=data)
            session.commit()
        if stage != EPOCH_STAGE:
            self._stage = stage
        self._message = message or self._message


def weighted_progress(session: Session, job_id: str) -> float:
    """The job's progress from its units: finished weight plus running units' shares, over all weight."""
    rows = session.execute(select(JobUnit.weight, JobUnit.progress, JobUnit.status)
                           .where(JobUnit.job_id == job_id)).all()
    total = sum(max(w, 0.0) for w, _, _ in rows)
    if total <= 0:
        return 0.0
    done = sum(max(w, 0.0) * (1.0 if status == SUCCEEDED else min(max(p, 0.0), 1.0)) for w, p, status in rows)
    return min(done / total, 1.0)


def _claim_unit(settings: Settings, sessions: sessionmaker[Session], job_id: str, key: str,
                worker: str) -> tuple[Job, JobUnit] | str:
    """Take the unit for this worker; a string says why it must not run here."""
    with sessions() as session:
        job = session.get(Job, job_id)
        unit = session.scalar(select(JobUnit).where(JobUnit.job_id == job_id, JobUnit.key == key))
        if job is None or unit is None:
            log.warning("job %s has no unit %s; dropping the message", job_id, key)
            return "skipped"
        if unit.status in UNIT_TERMINAL or unit.status == PENDING:
            return "skipped"
        if job.status in jobstate.TERMINAL or job.cancel_requested or job.status == jobstate.CANCELLING:
            stopped = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.status == unit.status,
                                                            JobUnit.attempt == unit.attempt)
                                      .values(status=CANCELLED, finished_at=utcnow()))
            session.commit()
            if stopped.rowcount == 1:
                finish_cancel(settings, sessions, job_id)
            return "cancelled"
        if unit.status == RUNNING and unit.heartbeat_at is not None:
            age = (utcnow() - unit.heartbeat_at).total_seconds()
            if age < settings.stale_after_s and not owner_is_dead(unit.worker):
                log.info("job %s unit %s runs on %s; duplicate delivery dropped", job_id, key, unit.worker)
                return "skipped"
        if unit.attempt >= settings.max_attempts:
            message = f"unit {key}: gave up after {unit.attempt} attempts"
            lost = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                                         JobUnit.status == unit.status)
                                   .values(status=FAILED, error_message=message, finished_at=utcnow()))
            session.commit()
            if lost.rowcount == 1:
                fail_job(sessions, job_id, "worker_lost", message)
            return "failed"
        now = utcnow()
        live = select(Job.id).where(Job.id == job_id, Job.status == jobstate.RUNNING, Job.cancel_requested.is_(False))
        won = session.execute(
            update(JobUnit)
            .where(JobUnit.id == unit.id, JobUnit.status == unit.status, JobUnit.attempt == unit.attempt,
                   live.exists())
            .values(status=RUNNING, attempt=unit.attempt + 1, worker=worker, heartbeat_at=now, progress=0.0,
                    started_at=unit.started_at or now)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:
            session.rollback()
            return "skipped"
        session.refresh(unit)
        note = "resuming" if unit.attempt > 1 else "started"
        unit_event(session, job, unit, RUNNING, f"unit {key} {note} on {worker} (attempt {unit.attempt})",
                   worker=worker)
        session.commit()
        session.expunge(unit)
        session.expunge(job)
        return job, unit


def execute_unit(settings: Settings, job_id: str, key: str, planner: Planner, worker: str | None = None,
                 dispatcher: Dispatcher | None = None) -> str:
    """Run one delivery of unit ``key`` of study ``job_id``; returns what happened (for logs and tests).

    Never raises for unit errors: they fail the unit and the job.
    """
    sessions = session_factory(settings.db_url, settings.pool)
    dispatcher = dispatcher or Dispatcher(settings)
    worker = worker or pid_host()
    claimed = _claim_unit(settings, sessions, job_id, key, worker)
    if isinstance(claimed, str):
        return claimed
    job, unit = claimed
    tracker = _UnitTracker(settings, sessions, job_id, unit)
    tracker.start()
    started = time.perf_counter()
    try:
        ctx = unit_context(settings, sessions, job, tracker.progress, tracker.should_stop)
        config = library_config(ctx)
        out_dir = study_dir(ctx.store, job_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        added = planner.run(config, out_dir, unit_dict(unit), tracker.progress, tracker.should_stop)
        if tracker.lost.is_set():
            raise UnitLost(key)
        if tracker.cancel.is_set():
            raise Cancelled("the study was stopped")
        elapsed = time.perf_counter() - started
        if not added and _is_last(sessions, job_id, unit.id):
            finish_job(settings, sessions, ctx.store, job, unit, planner, out_dir, elapsed)
            return "succeeded"
        if not _mark_succeeded(sessions, job_id, unit, added, elapsed):
            return "lost"
        dispatch_ready(settings, sessions, dispatcher, job_id)
        if _take_finish(sessions, job_id):  # two last units finished together: one of them finishes the job
            finish_job(settings, sessions, ctx.store, job, None, planner, out_dir, elapsed)
        return "succeeded"
    except UnitLost:
        return "lost"
    except Exception as exc:
        if tracker.lost.is_set():
            return "lost"
        if isinstance(exc, Cancelled) or tracker.cancel.is_set():
            with sessions() as session:
                stopped = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                                                JobUnit.status == RUNNING)
                                          .values(status=CANCELLED, finished_at=utcnow()))
                session.commit()
            if stopped.rowcount == 1:
                finish_cancel(settings, sessions, job_id)
            return "cancelled"
        log.exception("job %s unit %s failed", job_id, key)
        message = tracker.redact(str(exc))[:2000] or type(exc).__name__
        with sessions() as session:
            moved = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                                          JobUnit.status == RUNNING)
                                    .values(status=FAILED, error_message=message, finished_at=utcnow()))
            session.commit()
        if moved.rowcount == 1:
            fail_job(sessions, job_id, _error_code(exc), message, exc, unit=key)
        return "failed"
    finally:
        tracker.stop()


def _is_last(sessions: sessionmaker[Session], job_id: str, unit_id: int) -> bool:
    """Whether every other unit of the job has succeeded (this one completes the graph)."""
    with sessions() as session:
        others = session.scalar(select(func.count()).select_from(JobUnit)
                                .where(JobUnit.job_id == job_id, JobUnit.id != unit_id, JobUnit.status != SUCCEEDED))
    return others == 0


def _take_finish(sessions: sessionmaker[Session], job_id: str) -> bool:
    """When every unit has succeeded, let exactly one caller finish the job (stage ``finishing``)."""
    with sessions() as session:
        counts = unit_counts(session, job_id)
        if not counts["total"] or counts["succeeded"] != counts["total"]:
            return False
        unclaimed = or_(Job.stage.is_(None), Job.stage != "finishing")
        won = session.execute(update(Job).where(Job.id == job_id, Job.status == jobstate.RUNNING, unclaimed)
                              .values(stage="finishing"))
        session.commit()
    return won.rowcount == 1


def _mark_succeeded(sessions: sessionmaker[Session], job_id: str, unit: JobUnit, added: list[dict[str, Any]],
                    elapsed: float) -> bool:
    """Mark the unit succeeded and insert the units it returned, in one transaction."""
    with sessions() as session:
        won = session.execute(
            update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt, JobUnit.status == RUNNING)
            .values(status=SUCCEEDED, progress=1.0, finished_at=utcnow(),
                    result={"added": [str(u["key"]) for u in added], "seconds": round(elapsed, 3)})
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:
            session.rollback()
            return False
        known = set(session.scalars(select(JobUnit.key).where(JobUnit.job_id == job_id)))
        for new in added:
            if str(new["key"]) not in known:
                session.add(unit_row(new, job_id))
                known.add(str(new["key"]))
        job = session.get(Job, job_id)
        if job is not None:
            unit_event(session, job, unit, SUCCEEDED, f"unit {unit.key} succeeded in {elapsed:.1f}s",
                       seconds=round(elapsed, 3), added=len(added))
            if job.status in (jobstate.RUNNING, jobstate.CANCELLING):
                job.progress = max(job.progress, weighted_progress(session, job_id))
        session.commit()
    return True


# --------------------------------------------------------------------------- the job's end


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    from services.worker.handlers import report_metrics

    return report_metrics(report)


def warning_events(session: Session, job: Job, report: dict[str, Any], redact: Callable[[str], str]) -> int:
    """One ``warning`` event per entry of ``report["warnings"]`` (code, message, attack, defense)."""
    count = 0
    for item in report.get("warnings") or []:
        if not isinstance(item, dict):
            continue
        data = {k: redact(v) if isinstance(v, str) else v for k, v in item.items()}
        jobstate.add_event(session, job, "warning", str(data.get("message") or data.get("code") or "warning")[:1000],
                           stage=job.stage, data=data)
        count += 1
    return count


def _alias_recommended(session: Session, job_id: str) -> bool:
    """A harden job's recommended checkpoint, also stored as the job's own ``model.json`` /
    ``model.safetensors`` (same blobs): the job id is then a model id like a train job's."""
    rows = {a.name: a for a in session.scalars(select(Artifact).where(
        Artifact.job_id == job_id, Artifact.name.in_([RECOMMENDED + n for n in MODEL_FILES] + list(MODEL_FILES))))}
    if any(name in rows for name in MODEL_FILES) or not all(RECOMMENDED + n in rows for n in MODEL_FILES):
        return False
    for name in MODEL_FILES:
        src = rows[RECOMMENDED + name]
        session.add(Artifact(job_id=job_id, name=name, size=src.size, sha256=src.sha256,
                             content_type=src.content_type, created_at=utcnow()))
    return True


def finish_job(settings: Settings, sessions: sessionmaker[Session], store: LocalStore, job: Job, unit: JobUnit | None,
               planner: Planner, out_dir: Path, elapsed: float) -> None:
    """Store the study's artifacts and metrics, then move the job (and ``unit``, the one completing the
    graph) to succeeded in one transaction. Run again after a lost worker, it gives the same result."""
    redact = server_redactor(settings)
    report = planner.report(out_dir)
    metrics = _report_metrics(report)
    count = store_outputs(sessions, store, job.id, out_dir, redact)
    with sessions() as session:
        row = session.get(Job, job.id)
        if row is None:
            return
        if unit is not None:
            won = session.execute(
                update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt, JobUnit.status == RUNNING)
                .values(status=SUCCEEDED, progress=1.0, finished_at=utcnow(),
                        result={"added": [], "seconds": round(elapsed, 3)})
                .execution_options(synchronize_session=False)
            )
            if won.rowcount != 1:
                session.rollback()
                return
            unit_event(session, row, unit, SUCCEEDED, f"unit {unit.key} succeeded in {elapsed:.1f}s",
                       seconds=round(elapsed, 3), added=0)
        if row.kind == "harden" and _alias_recommended(session, job.id):
            count += len(MODEL_FILES)
        if jobstate.transition(session, row, [jobstate.RUNNING, jobstate.CANCELLING], jobstate.SUCCEEDED,
                               stage="done", message=f"{count} artifacts stored"):
            session.execute(delete(Metric).where(Metric.job_id == job.id, Metric.epoch.is_(None)))
            for name, value in normalise(metrics).items():
                session.add(Metric(job_id=job.id, name=name, value=value, epoch=None))
            warning_events(session, row, report, redact)
            took = (utcnow() - row.started_at).total_seconds() if row.started_at else elapsed
            jobstate.add_event(session, row, "status", f"succeeded in {took:.1f}s", stage="done",
                               data={"status": "succeeded", "artifacts": count, **unit_counts(session, job.id)})
        session.commit()
    shutil.rmtree(store.work_dir(job.id), ignore_errors=True)


def fail_job(sessions: sessionmaker[Session], job_id: str, code: str, message: str, exc: BaseException | None = None,
             unit: str | None = None) -> None:
    """Fail a study job (its units not yet running are cancelled; running ones stop by themselves)."""
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is None:
            return
        text = f"unit {unit}: {message}" if unit else message
        if jobstate.transition(session, row, [jobstate.QUEUED, jobstate.RUNNING, jobstate.CANCELLING],
                               jobstate.FAILED, error_code=code, error_message=text[:2000]):
            session.execute(update(JobUnit).where(JobUnit.job_id == job_id, JobUnit.status.in_([PENDING, QUEUED]))
                            .values(status=CANCELLED, finished_at=utcnow()))
            data: dict[str, Any] = {"status": "failed", "error_code": code}
            if exc is not None:
                data["exception"] = type(exc).__name__
            if unit:
                data["unit"] = unit
            jobstate.add_event(session, row, "status", f"failed: {text}"[:1000], data=data)
        session.commit()


def finish_cancel(settings: Settings, sessions: sessionmaker[Session], job_id: str) -> bool:
    """Move a cancelling study to ``cancelled`` once none of its units runs any more."""
    with sessions() as session:
        row = session.get(Job, job_id)
        if row is None or row.status not in (jobstate.RUNNING, jobstate.CANCELLING) or not (
            row.cancel_requested or row.status == jobstate.CANCELLING
        ):
            return False
        running = session.scalar(select(func.count()).select_from(JobUnit)
                                 .where(JobUnit.job_id == job_id, JobUnit.status == RUNNING))
        if running:
            return False
        session.execute(update(JobUnit).where(JobUnit.job_id == job_id, JobUnit.status.in_([PENDING, QUEUED]))
                        .values(status=CANCELLED, finished_at=utcnow()))
        moved = jobstate.transition(session, row, [jobstate.RUNNING, jobstate.CANCELLING], jobstate.CANCELLED,
                                    stage="cancelled", message="cancelled")
        if moved:
            jobstate.add_event(session, row, "status", "cancelled: every unit stopped",
                               data={"status": "cancelled", **unit_counts(session, job_id)})
        session.commit()
    if moved:
        shutil.rmtree(LocalStore(settings.storage_dir).work_dir(job_id), ignore_errors=True)
    return moved


# --------------------------------------------------------------------------- recovery (the reaper)


@dataclass
class UnitReap:
    """What one reaper pass did to units."""

    requeued: int = 0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0


def reap_units(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], unsent_grace_s: float
               ) -> UnitReap:
    """Recover units: re-send those whose worker was lost (stale heartbeat or a dead process of this
    host), send queued units never handed to the broker and ready units nobody sent (a worker lost
    between its commit and its send), and finish cancelling studies with no running unit."""
    import datetime as dt

    counts = UnitReap()
    now = utcnow()
    stale_before = now - dt.timedelta(seconds=settings.stale_after_s)
    to_send: list[tuple[str, int, str, str]] = []
    with sessions() as session:
        running = session.execute(
            select(JobUnit, Job.queue, Job.status, Job.cancel_requested).join(Job, Job.id == JobUnit.job_id)
            .where(JobUnit.status == RUNNING)
        ).all()
        for unit, queue, job_status, cancel in running:
            if not (unit.heartbeat_at is None or unit.heartbeat_at < stale_before or owner_is_dead(unit.worker)):
                continue
            lost = f"unit {unit.key}: worker {unit.worker} stopped sending heartbeats"
            owned = (JobUnit.id == unit.id) & (JobUnit.attempt == unit.attempt) & (JobUnit.status == RUNNING)
            job = session.get(Job, unit.job_id)
            if job is None:
                continue
            if cancel or job_status != jobstate.RUNNING:
                if session.execute(update(JobUnit).where(owned).values(status=CANCELLED, finished_at=utcnow())
                                   ).rowcount == 1:
                    unit_event(session, job, unit, CANCELLED, f"{lost}; cancelled", lost_worker=unit.worker)
                    counts.cancelled += 1
            elif unit.attempt >= settings.max_attempts:
                if session.execute(update(JobUnit).where(owned).values(
                        status=FAILED, error_message=f"{lost}; gave up after {unit.attempt} attempts",
                        finished_at=utcnow())).rowcount == 1:
                    session.commit()
                    fail_job(sessions, unit.job_id, "worker_lost", f"{lost}; gave up after {unit.attempt} attempts")
                    counts.failed += 1
            elif session.execute(update(JobUnit).where(owned).values(status=QUEUED, dispatched_at=utcnow(),
                                                                     progress=0.0)).rowcount == 1:
                unit_event(session, job, unit, QUEUED, f"{lost}; re-sent", lost_worker=unit.worker)
                counts.requeued += 1
                to_send.append((unit.job_id, unit.id, unit.key, queue))
            session.commit()

        unsent = session.execute(
            select(JobUnit.id, JobUnit.job_id, JobUnit.key, Job.queue).join(Job, Job.id == JobUnit.job_id)
            .where(JobUnit.status == QUEUED, JobUnit.dispatched_at.is_(None), Job.status == jobstate.RUNNING)
        ).all()
        for row in unsent:
            won = session.execute(update(JobUnit).where(JobUnit.id == row.id, JobUnit.status == QUEUED,
                                                        JobUnit.dispatched_at.is_(None)).values(dispatched_at=utcnow()))
            session.commit()
            if won.rowcount == 1:
                to_send.append((row.job_id, row.id, row.key, row.queue))

        waiting = session.scalars(
            select(JobUnit.job_id).join(Job, Job.id == JobUnit.job_id)
            .where(JobUnit.status == PENDING, Job.status == jobstate.RUNNING,
                   JobUnit.created_at < now - dt.timedelta(seconds=unsent_grace_s)).distinct()
        ).all()
        cancelling = session.scalars(
            select(Job.id).where(Job.status == jobstate.CANCELLING,
                                 select(JobUnit.id).where(JobUnit.job_id == Job.id).exists())
        ).all()
    for job_id, unit_id, key, queue in to_send:
        if send_unit(sessions, dispatcher, job_id, unit_id, key, queue):
            counts.sent += 1
    for job_id in waiting:
        counts.sent += dispatch_ready(settings, sessions, dispatcher, job_id)
    for job_id in cancelling:
        if finish_cancel(settings, sessions, job_id):
            counts.cancelled += 1
    return counts
