"""Celery configuration, built from :class:`services.settings.Settings`.

* JSON serialisation only (no pickle anywhere); no result backend: job state lives in the DB.
* ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a job is acknowledged only when it is
  done, a worker holds at most one job it is not running, and a crashed child's job is re-queued.
* Two tasks: ``midre.run_job(job_id)`` (a whole job, or the planning of a study's unit graph) and
  ``midre.run_unit(job_id, key)`` (one unit of a fanned-out study), both routed to the job's queue.
* Queues ``gpu`` and ``cpu`` (optionally prefixed so several stacks share one broker).
* Embedded mode uses kombu's file-system transport: no server, works across processes (messages
  are files claimed by an atomic rename). Unacked messages of a SIGKILLed embedded worker are not
  restored by the transport; the job reaper (``services.worker.reaper``) re-queues those jobs from
  the DB, which is the source of truth in every mode.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from services.settings import Settings

TASK_NAME = "midre.run_job"
#: One unit of a fanned-out study (``args=[job_id, unit_key]``), sent to the job's queue.
UNIT_TASK_NAME = "midre.run_unit"


def transport_options(settings: Settings) -> dict[str, Any]:
    """Broker transport options for the configured broker."""
    if settings.embedded:
        folder = settings.broker_dir
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            # Claiming a message is a rename into `processed` (atomic on one filesystem); the
            # reaper deletes old processed files.
            "store_processed": True,
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.5,
        }
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker.startswith(("redis", "rediss")) and settings.broker_prefix:
        options["global_keyprefix"] = settings.broker_prefix
    return options


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (the API uses it to send, ``midre worker`` to consume)."""
    if settings.embedded:
        settings.ensure_dirs()
    app = Celery("midre", set_as_current=False)
    gpu, cpu = settings.queue_name("gpu"), settings.queue_name("cpu")
    app.conf.update(
        broker_url=settings.broker,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (gpu, cpu)),
        task_default_queue=cpu,
        task_create_missing_queues=False,
        worker_enable_remote_control=not settings.embedded,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app
