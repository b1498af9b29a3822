"""Sending jobs and study units to the broker (used by the API, the workers and the reaper)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import cached_property

from celery import Celery
from kombu import Connection

from services.queue.celery_app import TASK_NAME, UNIT_TASK_NAME, make_celery
from services.settings import QueueName, Settings

log = logging.getLogger(__name__)


class Dispatcher:
    """Publishes ``run_job(job_id)`` messages and inspects the queues.

    Args:
        settings: the service settings (broker URL, queue prefix).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def celery(self) -> Celery:
        """The Celery app used as a producer."""
        return make_celery(self.settings)

    def route(self, device: str) -> QueueName:
        """The logical queue of a job: ``cuda`` -> gpu, ``cpu`` -> cpu, ``auto`` -> the setting."""
        if device == "cuda":
            return "gpu"
        if device == "cpu":
            return "cpu"
        return self.settings.auto_queue

    def send(self, job_id: str, queue: str, countdown: float | None = None) -> None:
        """Publish the job (``queue`` is the full broker queue name), to run ``countdown`` seconds from now at
        the earliest; raises on broker errors."""
        self._publish(TASK_NAME, [job_id], queue, countdown)

    def send_unit(self, job_id: str, key: str, queue: str, countdown: float | None = None) -> None:
        """Publish one unit of a fanned-out study to its job's queue; raises on broker errors."""
        self._publish(UNIT_TASK_NAME, [job_id, key], queue, countdown)

    def _publish(self, task: str, args: list[str], queue: str, countdown: float | None = None) -> None:
        self.celery.send_task(
            task,
            args=args,
            queue=queue,
            routing_key=queue,
            countdown=countdown or None,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in the ``gpu`` and ``cpu`` queues (``-1`` when the broker cannot be asked)."""
        logicals: tuple[QueueName, ...] = ("gpu", "cpu")
        names = {logical: self.settings.queue_name(logical) for logical in logicals}
        counts = self.message_counts(names.values())
        return {logical: counts[name] for logical, name in names.items()}

    def message_counts(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages waiting in each broker queue (full names): ready to deliver, not yet taken by a worker.

        A queue nobody declared yet (or whose key is gone, on Redis) counts 0; every count is ``-1`` when
        the broker cannot be asked. One channel per queue: on AMQP a passive declare of a missing queue
        closes its channel.
        """
        names = list(dict.fromkeys(queues))
        counts: dict[str, int] = {}
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
                for name in names:
                    try:
                        with conn.channel() as channel:
                            counts[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                    except Exception:  # noqa: BLE001 - a queue nobody declared yet is empty
                        counts[name] = 0
        except Exception as exc:  # noqa: BLE001
            log.warning("queue depth unavailable: %s", exc)
            return {name: -1 for name in names}
        return counts

    def ping(self, timeout: float = 3.0) -> None:
        """Raise when the broker cannot be reached within ``timeout`` seconds."""
        if self.settings.embedded:
            folder = self.settings.broker_dir / "queue"
            if not folder.is_dir():
                raise RuntimeError(f"broker folder {folder} is missing")
            return
        conn: Connection = self.celery.connection_for_write()
        try:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        finally:
            conn.release()
