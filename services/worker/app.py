"""The worker's Celery app and its one task: ``celery -A services.worker.app worker`` (or ``midre worker``).

Settings come from the environment. The task takes a job id, not an object, and is idempotent:
``services.worker.runner.execute_job`` skips finished jobs and duplicate deliveries.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from services.db.session import dispose_all
from services.integrations.webhooks import WebhookDeliverer
from services.queue.celery_app import TASK_NAME, make_celery
from services.settings import get_settings
from services.worker.handlers import HANDLERS
from services.worker.reaper import Reaper
from services.worker.runner import execute_job

log = logging.getLogger(__name__)

settings = get_settings()
celery_app = make_celery(settings)
_reaper: Reaper | None = None
_deliverer: WebhookDeliverer | None = None


@celery_app.task(name=TASK_NAME, ignore_result=True)
def run_job(job_id: str) -> str:
    """Run one job (train / attack_eval / pipeline) to its end; the DB records everything."""
    outcome = execute_job(settings, job_id, HANDLERS)
    log.info("job %s: %s", job_id, outcome)
    return outcome


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked pool child must not reuse the parent's DB connections."""
    dispose_all()


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    global _reaper, _deliverer
    _reaper = Reaper(settings)
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
