"""The one worker engine: every job is a graph of units, each its own Celery task on any worker.

A DB-driven scheduler (the ``job_units`` table is the graph, the broker only carries "plan job J" and
"run unit K of job J" messages):

* **plan**: a job's first delivery (``midre.run_job``) claims the job, binds its resolved config, asks the
  library for the job's units (:func:`midre.plan.plan_study`: a train job is one unit), inserts them in
  one transaction and sends the units without dependencies (``midre.run_unit``, to the job's queue);
* **run**: a unit task claims its row (:class:`~services.worker.attempt.UnitAttempt`), runs
  :func:`midre.plan.run_unit` in the job's folder (``work/<job>/out`` under the store root, which every
  worker of a deployment shares), and marks the unit succeeded together with the units it returned (an
  ``expand`` unit adds units);
* **join**: after that commit the worker sends every pending unit whose dependencies have all succeeded;
  ``pending -> queued`` is a conditional UPDATE, so of several workers finishing at once exactly one
  sends a unit;
* **finish**: the unit that completes the graph stores the job's artifacts, metrics and warnings and
  moves the job to ``succeeded`` before it marks itself succeeded (:mod:`services.worker.ending`), so a
  worker lost in between only makes its unit run again (units are idempotent);
* **cancel / failure**: no unit is sent once the job is cancelling or finished; running units see
  ``should_stop``; a failed unit fails the job with its error; the last unit to stop moves a cancelling
  job to ``cancelled``;
* **lost workers and messages**: :mod:`services.worker.reaper`.

Every unit reads the config resolved when the job was submitted: :func:`job_config` binds it to this
worker's folders once per process and job, without checking it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from midre.errors import TransientError
from midre.progress import Cancelled
from services import jobspec
from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job, JobUnit
from services.db.session import session_factory
from services.db.types import pid_host, utcnow
from services.ops.datasets import dataset_folder
from services.queue.dispatch import Dispatcher
from services.redact import server_redactor
from services.settings import Settings
from services.storage import LocalStore, open_store
from services.worker import devices
from services.worker.attempt import UnitAttempt, UnitLost, claim_unit, owner_is_dead
from services.worker.ending import (
    MODEL_FILES,
    Outcome,
    error_code,
    fail_job,
    finish_cancel,
    finish_job,
)
from services.worker.library import record_estimate

log = logging.getLogger(__name__)


class Library(Protocol):
    """What the engine needs from the library (:class:`services.worker.library.StudyLibrary`), units as dicts."""

    def plan(self, config: Any) -> list[dict[str, Any]]: ...

    def run(self, config: Any, out_dir: Path, unit: dict[str, Any], progress: Callable[[Any], None],
            should_stop: Callable[[], bool]) -> list[dict[str, Any]]: ...

    def outcome(self, config: Any, out_dir: Path) -> Outcome: ...


def job_dir(store: LocalStore, job_id: str) -> Path:
    """The folder every unit of a job reads and writes (its work folder's ``out``)."""
    return store.work_dir(job_id) / "out"


def job_area(job_id: str) -> str:
    """Where a job's folder lives in an object store (``work/<job>/out``)."""
    return f"work/{job_id}/out"


def cache_dir(store: LocalStore, tenant_id: str) -> Path:
    """A tenant's cache of judges, priors and surrogates on this machine."""
    return store.root / "cache" / tenant_id


def cache_area(tenant_id: str) -> str:
    """Where a tenant's cache lives in an object store (``cache/<tenant>``)."""
    return f"cache/{tenant_id}"


def pull_job(store: LocalStore, job: Job) -> Path:
    """Bring the job's folder and its tenant's cache to this machine (what another machine's units wrote);
    a local store has nothing to bring. Returns the job's folder."""
    out_dir = job_dir(store, job.id)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.pull_tree(job_area(job.id), out_dir)
    store.pull_tree(cache_area(job.tenant_id), cache_dir(store, job.tenant_id))
    return out_dir


def push_job(store: LocalStore, job: Job) -> None:
    """Send what this machine's units wrote in the job's folder and the tenant's cache to the store."""
    store.push_tree(job_dir(store, job.id), job_area(job.id))
    store.push_tree(cache_dir(store, job.tenant_id), cache_area(job.tenant_id))


def unit_row(unit: dict[str, Any], job_id: str) -> JobUnit:
    """A new ``pending`` row for a unit the library described."""
    return JobUnit(job_id=job_id, key=str(unit["key"]), kind=str(unit.get("kind", "")),
                   params=dict(unit.get("params") or {}), deps=[str(d) for d in unit.get("deps") or ()],
                   weight=float(unit.get("weight", 1.0)), progress=0.0, status=jobstate.PENDING, attempt=0,
                   created_at=utcnow())


def unit_dict(row: JobUnit) -> dict[str, Any]:
    """The library's view of a unit row."""
    return {"key": row.key, "kind": row.kind, "deps": list(row.deps or []), "weight": row.weight,
            "params": dict(row.params or {})}


# --------------------------------------------------------------------------- the job's config


def materialize_model(sessions: sessionmaker[Session], store: LocalStore, tenant_id: str, job_id: str,
                      dest: Path) -> Path:
    """Copy a model of the same tenant (a job whose ``model.json`` + ``model.safetensors`` it names) into
    ``dest``; units of one study run at once in several processes, so each file is copied, then renamed."""
    dest.mkdir(parents=True, exist_ok=True)
    with sessions() as session:
        owner = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
        if owner != tenant_id:
            raise FileNotFoundError(f"job {job_id} is not a job of this tenant")
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name.in_(MODEL_FILES))).all()
    for row in rows:
        target = dest / row.name
        if target.is_file() and target.stat().st_size == row.size:
            continue  # another unit of the same job copied it already
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest)
        os.close(fd)
        shutil.copyfile(store.path(row.sha256), tmp)
        os.replace(tmp, target)
    return dest


_CONFIGS: dict[tuple[str, str], Any] = {}


def job_config(settings: Settings, sessions: sessionmaker[Session], job: Job) -> Any:
    """The library config a job runs: its resolved config with each reference bound to this worker's
    folders (a dataset's, a model's copy under the job's folder), cached per process and job."""
    if not job.resolved:
        raise ValueError("resolved: the job has no resolved config; resubmit it")
    key = (job.id, json.dumps(job.resolved, sort_keys=True))
    if key in _CONFIGS:
        return _CONFIGS[key]
    store = open_store(settings)

    def lookup(token: str) -> str:
        what, _, ident = token.partition(":")
        if what == "dataset":
            with sessions() as session:
                dataset = session.get(Dataset, ident)
            if dataset is None or dataset.tenant_id != job.tenant_id:
                raise FileNotFoundError(f"dataset: {ident} was deleted before the job ran")
            return dataset_folder(store, dataset)
        return str(materialize_model(sessions, store, job.tenant_id, ident, store.work_dir(job.id) / "refs" / ident))

    config = jobspec.bind(job.resolved, lookup, cache_dir=str(cache_dir(store, job.tenant_id)),
                          inception_weights=settings.inception_weights)
    if len(_CONFIGS) >= 8:  # a worker runs a few jobs at a time: keep a handful
        _CONFIGS.pop(next(iter(_CONFIGS)))
    _CONFIGS[key] = config
    return config


# --------------------------------------------------------------------------- sending


def send_unit(sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str, unit_id: int, key: str,
              queue: str, countdown: float | None = None) -> bool:
    """Publish one unit already moved to ``queued`` (to run ``countdown`` seconds from now at the earliest); on a
    broker error it stays queued without ``dispatched_at`` and the reaper sends it."""
    try:
        dispatcher.send_unit(job_id, key, queue, countdown=countdown)
        return True
    except Exception as exc:  # noqa: BLE001 - the reaper sends unsent units
        log.warning("job %s: could not send unit %s now (%s); a reaper will", job_id, key, exc)
        with sessions() as session:
            session.execute(update(JobUnit).where(JobUnit.id == unit_id, JobUnit.status == jobstate.QUEUED)
                            .values(dispatched_at=None))
            session.commit()
        return False


def dispatch_ready(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str) -> int:
    """Send every pending unit of a running job whose dependencies have all succeeded; returns how many
    this call sent. A unit is moved ``pending -> queued`` by a conditional UPDATE: sent once however many
    workers race."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != jobstate.RUNNING or job.cancel_requested:
            return 0
        queue = job.queue
        rows = session.execute(select(JobUnit.id, JobUnit.key, JobUnit.status, JobUnit.deps)
                               .where(JobUnit.job_id == job_id)).all()
    done = {row.key for row in rows if row.status == jobstate.SUCCEEDED}
    sent = 0
    for row in rows:
        if row.status != jobstate.PENDING or not all(dep in done for dep in row.deps or []):
            continue
        with sessions() as session:
            won = session.execute(
                update(JobUnit).where(JobUnit.id == row.id, JobUnit.status == jobstate.PENDING)
                .values(status=jobstate.QUEUED, dispatched_at=utcnow()).execution_options(synchronize_session=False)
            )
            session.commit()
        if won.rowcount == 1 and send_unit(sessions, dispatcher, job_id, row.id, row.key, queue):
            sent += 1
    return sent


# --------------------------------------------------------------------------- planning


def _claim_job(settings: Settings, sessions: sessionmaker[Session], job_id: str, worker: str) -> Job | None:
    """Take a queued job for planning, or return None when it must not be planned here."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in jobstate.TERMINAL:
            return None
        if job.status in jobstate.ACTIVE_RUN and job.heartbeat_at is not None:
            age = (utcnow() - job.heartbeat_at).total_seconds()
            if age < settings.stale_after_s and not owner_is_dead(job.worker):
                log.info("job %s is planned on %s; duplicate delivery dropped", job_id, job.worker)
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
        won = session.execute(update(Job).where(Job.id == job_id, Job.status == job.status,
                                                Job.attempt == job.attempt)
                              .values(status=jobstate.RUNNING, attempt=job.attempt + 1, worker=worker,
                                      heartbeat_at=now, started_at=job.started_at or now))
        if won.rowcount != 1:
            session.rollback()
            return None
        session.refresh(job)
        jobstate.add_event(session, job, "status", f"started on {worker} (attempt {job.attempt})", stage=job.stage,
                           data={"status": "running", "worker": worker})
        session.commit()
        session.expunge(job)
        return job


def plan_job(settings: Settings, job_id: str, library: Library, worker: str | None = None,
             dispatcher: Dispatcher | None = None) -> str:
    """The first delivery of a job: claim it, insert its units, send the ready ones. A later delivery of a
    planned job only sends what is ready (nothing runs twice)."""
    sessions = session_factory(settings.db_url, settings.pool)
    dispatcher = dispatcher or Dispatcher(settings)
    with sessions() as session:
        planned = session.scalar(select(JobUnit.id).where(JobUnit.job_id == job_id).limit(1)) is not None
    if planned:
        dispatch_ready(settings, sessions, dispatcher, job_id)
        return "skipped"
    job = _claim_job(settings, sessions, job_id, worker or pid_host())
    if job is None:
        return "skipped"
    redact = server_redactor(settings)
    try:
        config = job_config(settings, sessions, job)
        units = library.plan(config)
        if not units:
            raise ValueError("the job has no units to run")
        if jobspec.get_kind(job.kind).report:
            record_estimate(sessions, job_id, config, redact)
        _insert_units(sessions, job, units)
    except IntegrityError:  # another delivery planned it meanwhile
        log.info("job %s was planned concurrently", job_id)
    except TransientError as exc:
        return _plan_later(settings, sessions, dispatcher, job, redact(str(exc))[:2000] or type(exc).__name__)
    except Exception as exc:
        log.exception("job %s: planning failed", job_id)
        fail_job(sessions, job_id, error_code(exc), redact(str(exc))[:2000] or type(exc).__name__, exc)
        return "failed"
    dispatch_ready(settings, sessions, dispatcher, job_id)
    return "planned"


def _plan_later(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job: Job,
                message: str) -> str:
    """Planning met a transient failure (the object store was unreachable): queue the job again, to be planned
    ``MIDRE_UNIT_RETRY_S`` from now (each try counts against ``MIDRE_MAX_ATTEMPTS``)."""
    log.warning("job %s: planning: %s; trying again in %.0f s", job.id, message, settings.unit_retry_s)
    with sessions() as session:
        row = session.get(Job, job.id)
        if row is None or not jobstate.transition(session, row, [jobstate.RUNNING], jobstate.QUEUED,
                                                  message=f"{message}; retrying"):
            session.rollback()
            return "skipped"
        jobstate.add_event(session, row, "status", f"{message}; planning again in {settings.unit_retry_s:.0f} s",
                           data={"status": "queued", "retry": True})
        session.commit()
        queue = row.queue
    try:
        dispatcher.send(job.id, queue, countdown=settings.unit_retry_s)
    except Exception as exc:  # noqa: BLE001 - the reaper re-sends queued jobs whose message was lost
        log.warning("job %s: could not queue it again now (%s); a reaper will", job.id, exc)
    return "retrying"


def _insert_units(sessions: sessionmaker[Session], job: Job, units: list[dict[str, Any]]) -> None:
    with sessions() as session:
        row = session.get(Job, job.id)
        for unit in units:
            session.add(unit_row(unit, job.id))
        session.execute(update(Job).where(Job.id == job.id, Job.attempt == job.attempt)
                        .values(stage="plan", message=f"{len(units)} unit{'s' if len(units) != 1 else ''}",
                                heartbeat_at=utcnow()))
        jobstate.add_event(session, row, "stage", f"planned {len(units)} unit{'s' if len(units) != 1 else ''}",
                           stage="plan", data={"units": len(units)})
        session.commit()


# --------------------------------------------------------------------------- one unit


def execute_unit(settings: Settings, job_id: str, key: str, library: Library, worker: str | None = None,
                 dispatcher: Dispatcher | None = None) -> str:
    """Run one delivery of unit ``key`` of ``job_id``; returns what happened (for logs and tests).

    Never raises for unit errors: they fail the unit and the job.
    """
    sessions = session_factory(settings.db_url, settings.pool)
    dispatcher = dispatcher or Dispatcher(settings)
    need = _devices_needed(settings, sessions, job_id, key, library)
    with devices.hold(settings, need) as slots:
        if slots is None:
            return _defer(settings, sessions, dispatcher, job_id, key, need)
        claimed = claim_unit(settings, sessions, job_id, key, worker or pid_host())
        if isinstance(claimed, str):
            return claimed
        with devices.visible(slots):
            return _run_claimed(settings, sessions, dispatcher, library, *claimed)


def _run_claimed(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, library: Library,
                 job: Job, unit: JobUnit, single: bool) -> str:
    """Run a claimed unit in the job's folder (brought from the object store first, sent back after)."""
    job_id, key = job.id, unit.key
    attempt = UnitAttempt(settings, sessions, job_id, unit, single)
    attempt.start()
    started = time.perf_counter()
    store = open_store(settings)
    ran = False
    syncing = threading.Event()
    try:
        config = job_config(settings, sessions, job)
        out_dir = pull_job(store, job)
        ran = True
        if store.remote:
            threading.Thread(target=_keep_sending, args=(store, job, settings.sync_every_s, syncing),
                             name=f"sync-{job_id}-{key}", daemon=True).start()
        added = library.run(config, out_dir, unit_dict(unit), attempt.progress, attempt.should_stop)
        syncing.set()
        if attempt.lost.is_set():
            raise UnitLost(key)
        if attempt.cancel.is_set():
            raise Cancelled("the job was stopped")
        push_job(store, job)  # before the unit counts as done: its dependents may run on another machine
        elapsed = time.perf_counter() - started
        if not added and _is_last(sessions, job_id, unit.id):
            pull_job(store, job)  # what units on other machines wrote while this one ran
            finish_job(settings, sessions, job, unit, library.outcome(config, out_dir), out_dir, elapsed,
                       attempt.callback_seconds)
            return "succeeded"
        if not _mark_succeeded(sessions, job_id, unit, added, elapsed):
            return "lost"
        dispatch_ready(settings, sessions, dispatcher, job_id)
        if _take_finish(sessions, job_id):  # two last units finished together: one of them finishes the job
            pull_job(store, job)
            finish_job(settings, sessions, job, None, library.outcome(config, out_dir), out_dir, elapsed)
        return "succeeded"
    except UnitLost:
        return "lost"
    except Exception as exc:
        if ran and store.remote and not isinstance(exc, TransientError):
            _push_quietly(store, job)  # resume state of a failed or stopped unit, for its next attempt anywhere
        return _unit_failed(settings, sessions, dispatcher, job_id, unit, attempt, exc)
    finally:
        syncing.set()
        attempt.stop()


def _keep_sending(store: LocalStore, job: Job, every_s: float, done: threading.Event) -> None:
    """While a unit runs, send its new files every ``every_s`` (the trainer's resume state after each epoch):
    a machine lost mid-unit costs the next attempt, on any machine, at most that much work more than on one."""
    while not done.wait(every_s):
        _push_quietly(store, job)


def _push_quietly(store: LocalStore, job: Job) -> None:
    try:
        push_job(store, job)
    except Exception as exc:  # noqa: BLE001 - the unit's own error is what gets reported
        log.warning("job %s: could not send its working files to the store now: %s", job.id, exc)


def _devices_needed(settings: Settings, sessions: sessionmaker[Session], job_id: str, key: str,
                    library: Library) -> int:
    """How many devices unit ``key`` trains on (``training.devices``; 1 for every other unit)."""
    needs = getattr(library, "devices", None)
    if needs is None:
        return 1
    with sessions() as session:
        job = session.get(Job, job_id)
        unit = session.scalar(select(JobUnit).where(JobUnit.job_id == job_id, JobUnit.key == key))
        if job is None or unit is None or not job.resolved:
            return 1
        session.expunge(job)
    try:
        return max(1, int(needs(job_config(settings, sessions, job), unit_dict(unit))))
    except Exception:  # noqa: BLE001 - the claim reports a config that does not bind
        return 1


def _defer(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str, key: str,
           need: int) -> str:
    """Fewer than ``need`` devices are free here: send the unit on (here later, or another machine now)."""
    have = devices.capacity(settings)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in jobstate.TERMINAL:
            return "skipped"
        queue = job.queue
    if need > have:
        log.warning("job %s unit %s needs %d devices; this machine offers %d (MIDRE_WORKER_DEVICES): passing it on",
                    job_id, key, need, have)
    dispatcher.send_unit(job_id, key, queue, countdown=max(1.0, settings.unit_retry_s))
    return "deferred"


def _unit_failed(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str,
                 unit: JobUnit, attempt: UnitAttempt, exc: Exception) -> str:
    """Record a unit that raised: cancelled (the job was stopped), lost (another attempt owns it), retried (a
    transient failure with attempts left) or failed."""
    if attempt.lost.is_set():
        return "lost"
    stopped = isinstance(exc, Cancelled) or attempt.cancel.is_set()  # AttackCancelled is a Cancelled too
    message = attempt.redact(str(exc))[:2000] or type(exc).__name__
    if not stopped and isinstance(exc, TransientError) and unit.attempt < settings.max_attempts:
        return _retry(settings, sessions, dispatcher, job_id, unit, message)
    if not stopped:
        log.exception("job %s unit %s failed", job_id, unit.key)
    values = {"status": jobstate.CANCELLED, "finished_at": utcnow()} if stopped else {
        "status": jobstate.FAILED, "error_message": message, "finished_at": utcnow()}
    with sessions() as session:
        moved = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                                      JobUnit.status == jobstate.RUNNING).values(**values))
        session.commit()
    if moved.rowcount == 1 and stopped:
        finish_cancel(settings, sessions, job_id)
    elif moved.rowcount == 1:
        fail_job(sessions, job_id, error_code(exc), message, exc, unit=None if attempt.single else unit.key)
    return "cancelled" if stopped else "failed"


def _retry(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str, unit: JobUnit,
           message: str) -> str:
    """Queue a unit that met a transient failure again, ``MIDRE_UNIT_RETRY_S`` from now (the job keeps
    running; the attempt counts against ``MIDRE_MAX_ATTEMPTS``)."""
    log.warning("job %s unit %s: %s; retrying in %.0f s", job_id, unit.key, message, settings.unit_retry_s)
    with sessions() as session:
        moved = session.execute(update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                                      JobUnit.status == jobstate.RUNNING)
                                .values(status=jobstate.QUEUED, dispatched_at=utcnow(), error_message=message))
        job = session.get(Job, job_id)
        if moved.rowcount == 1 and job is not None:
            jobstate.unit_event(session, job, unit, jobstate.QUEUED,
                                f"unit {unit.key}: {message}; retrying in {settings.unit_retry_s:.0f} s "
                                f"(attempt {unit.attempt} of {settings.max_attempts})", retry=True)
        session.commit()
        queue = job.queue if job is not None else None
    if moved.rowcount != 1 or queue is None:
        return "lost"
    send_unit(sessions, dispatcher, job_id, unit.id, unit.key, queue, countdown=settings.unit_retry_s)
    return "retrying"


def _is_last(sessions: sessionmaker[Session], job_id: str, unit_id: int) -> bool:
    """Whether every other unit of the job has succeeded (this one completes the graph)."""
    with sessions() as session:
        others = session.scalar(select(func.count()).select_from(JobUnit).where(
            JobUnit.job_id == job_id, JobUnit.id != unit_id, JobUnit.status != jobstate.SUCCEEDED))
    return others == 0


def _take_finish(sessions: sessionmaker[Session], job_id: str) -> bool:
    """When every unit has succeeded, let exactly one caller finish the job (stage ``finishing``)."""
    with sessions() as session:
        counts = jobstate.unit_counts(session, job_id)
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
            update(JobUnit).where(JobUnit.id == unit.id, JobUnit.attempt == unit.attempt,
                                  JobUnit.status == jobstate.RUNNING)
            .values(status=jobstate.SUCCEEDED, progress=1.0, finished_at=utcnow(),
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
            jobstate.unit_event(session, job, unit, jobstate.SUCCEEDED, f"unit {unit.key} succeeded in {elapsed:.1f}s",
                                seconds=round(elapsed, 3), added=len(added))
            if job.status in jobstate.ACTIVE_RUN:
                job.progress = max(job.progress, jobstate.weighted_progress(session, job_id))
        session.commit()
    return True


__all__ = ["Library", "dispatch_ready", "execute_unit", "job_config", "job_dir", "plan_job", "send_unit"]
