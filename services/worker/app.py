"""The worker's Celery app and its tasks: ``celery -A services.worker.app worker`` (or ``midre worker``).

Settings come from the environment. Tasks take ids, not objects, and are idempotent (the engine,
:mod:`services.worker.engine`, claims each piece of work by a compare-and-set):

* ``midre.run_job(job_id)``: plan a job into its graph of units (a train job is one unit) and send the
  ready ones;
* ``midre.run_unit(job_id, key)``: run one unit of a job.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from services.db.session import dispose_all
from services.db.types import pid_host
from services.integrations.webhooks import WebhookDeliverer
from services.queue.celery_app import TASK_NAME, UNIT_TASK_NAME, make_celery
from services.settings import Settings, get_settings
from services.worker.engine import execute_unit, plan_job
from services.worker.library import StudyLibrary
from services.worker.reaper import Reaper

log = logging.getLogger(__name__)

settings = get_settings()
celery_app = make_celery(settings)
_reaper: Reaper | None = None
_deliverer: WebhookDeliverer | None = None
_library: StudyLibrary | None = None
#: torch threads of each pool process; set by ``midre worker`` from its --concurrency (see :func:`worker_threads`).
threads_per_process: int | None = None


def _study_library() -> StudyLibrary:
    global _library
    if _library is None:
        _library = StudyLibrary()
    return _library


@celery_app.task(name=TASK_NAME, ignore_result=True)
def run_job(job_id: str) -> str:
    """Plan a job into its units and send the ready ones; the DB records everything."""
    outcome = plan_job(settings, job_id, _study_library())
    log.info("job %s: %s", job_id, outcome)
    return outcome


@celery_app.task(name=UNIT_TASK_NAME, ignore_result=True)
def run_unit(job_id: str, key: str) -> str:
    """Run one unit of a job."""
    outcome = execute_unit(settings, job_id, key, _study_library())
    log.info("job %s unit %s: %s", job_id, key, outcome)
    return outcome


def worker_threads(current: Settings, concurrency: int = 1) -> int:
    """Threads of each job: ``MIDRE_WORKER_THREADS``, else this machine's cores (those this process may
    use) over the pool processes of this worker, at least 1. ``midre serve --workers N`` sets
    ``MIDRE_WORKER_THREADS`` for its N workers from the cores over N."""
    if current.worker_threads:
        return current.worker_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(concurrency, 1))


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """A forked pool child must not reuse the parent's DB connections; it pins torch's threads."""
    dispose_all()
    try:
        import torch
    except ImportError:
        return
    threads = threads_per_process or worker_threads(settings)
    torch.set_num_threads(threads)
    log.info("midre worker process %d: %d torch threads", os.getpid(), threads)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper, _deliverer
    queues = sorted(q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", None) or [])
    _reaper = Reaper(settings, worker=pid_host(), queues=queues)
    _reaper.start()
    _deliverer = WebhookDeliverer(settings)  # sends the webhook outbox, next to the reaper
    _deliverer.start()
    log.info("midre worker ready (reaper every %.0fs)", settings.reaper_interval_s)


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()
    if _deliverer is not None:
        _deliverer.stop()
