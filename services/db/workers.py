"""Which workers are alive and which queues they consume, from the ``workers`` table.

Each worker's reaper writes its row every pass (:func:`announce`); a row not refreshed within
:func:`live_window` belongs to a worker that is gone. The API reads it to route a job of device ``auto``
to a queue someone consumes (:func:`auto_queue`) and to say in ``/readyz`` which queues nobody consumes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.db.models import WorkerPresence
from services.db.types import utcnow
from services.settings import QueueName, Settings

QUEUES: tuple[QueueName, ...] = ("gpu", "cpu")


def live_window(settings: Settings) -> float:
    """Seconds after its last refresh a worker counts as gone: three reaper passes, at least the staleness
    of a heartbeat."""
    return max(3 * settings.reaper_interval_s, settings.stale_after_s)


def announce(session: Session, worker: str, queues: list[str]) -> None:
    """Record that ``worker`` is alive and consumes ``queues`` (not committed)."""
    row = session.get(WorkerPresence, worker)
    now = utcnow()
    if row is None:
        session.add(WorkerPresence(id=worker, queues=list(queues), started_at=now, seen_at=now))
    else:
        row.queues, row.seen_at = list(queues), now


def forget(session: Session, worker: str) -> None:
    """A worker that stops removes its row (not committed)."""
    session.execute(delete(WorkerPresence).where(WorkerPresence.id == worker))


def consumers(session: Session, settings: Settings) -> dict[str, int]:
    """Live workers per broker queue of this deployment (``gpu`` and ``cpu``; 0 where nobody listens)."""
    since = utcnow() - dt.timedelta(seconds=live_window(settings))
    counts = {settings.queue_name(q): 0 for q in QUEUES}
    for queues in session.scalars(select(WorkerPresence.queues).where(WorkerPresence.seen_at >= since)):
        for name in queues or []:
            counts[name] = counts.get(name, 0) + 1
    return counts


def auto_queue(session: Session, settings: Settings) -> QueueName:
    """The queue of a job of device ``auto``: ``MIDRE_AUTO_QUEUE`` when a live worker consumes it, else the
    other queue when one does (a CPU-only deployment runs ``auto`` jobs on ``cpu``), else the setting."""
    live = consumers(session, settings)
    preferred: QueueName = settings.auto_queue
    if live[settings.queue_name(preferred)]:
        return preferred
    other = next(q for q in QUEUES if q != preferred)
    return other if live[settings.queue_name(other)] else preferred


__all__ = ["announce", "auto_queue", "consumers", "forget", "live_window"]
