"""Sending again the messages a broker lost: queued jobs and queued units nobody picked up.

A message (``plan job J`` or ``run unit K of J``) is a candidate once it was sent more than
``redispatch_after_s`` ago and its job or unit is still ``queued``. Per queue, ``queued jobs and units -
messages waiting`` of them (oldest send first) are sent again; every candidate when the broker cannot
count. A job merely waiting behind a backlog still has its message, so it is not sent twice; should a
lost message turn up after all, the claim's compare-and-set runs the work once and drops the other copy.
Each re-send is won by a compare-and-set on ``dispatched_at``, so of several reapers only one sends it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.db import jobs as jobstate
from services.db.models import Job, JobUnit
from services.db.types import utcnow
from services.queue.dispatch import Dispatcher
from services.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One queued message: a job's (``key`` None) or one of its units'."""

    sent_at: dt.datetime
    queue: str
    job_id: str
    key: str | None = None
    unit_id: int | None = None

    @property
    def label(self) -> str:
        return f"unit {self.key} " if self.key is not None else ""


def _job_waiting() -> Any:
    return (Job.status == jobstate.QUEUED) & Job.dispatched_at.is_not(None)


def _unit_waiting() -> Any:
    return (JobUnit.status == jobstate.QUEUED) & JobUnit.dispatched_at.is_not(None) & (Job.status == jobstate.RUNNING)


def _overdue(session: Session, cutoff: dt.datetime) -> list[Message]:
    found = [Message(r.dispatched_at, r.queue, r.id) for r in session.execute(
        select(Job.id, Job.queue, Job.dispatched_at).where(_job_waiting(), Job.dispatched_at < cutoff))]
    found += [Message(r.dispatched_at, r.queue, r.job_id, r.key, r.id) for r in session.execute(
        select(JobUnit.id, JobUnit.job_id, JobUnit.key, JobUnit.dispatched_at, Job.queue)
        .join(Job, Job.id == JobUnit.job_id).where(_unit_waiting(), JobUnit.dispatched_at < cutoff))]
    return sorted(found, key=lambda m: (m.sent_at, m.key is not None, m.job_id, m.key or ""))


def _in_flight(session: Session, queues: list[str]) -> dict[str, int]:
    counted = dict(session.execute(select(Job.queue, func.count()).where(_job_waiting(), Job.queue.in_(queues))
                                   .group_by(Job.queue)).all())
    for queue, n in session.execute(select(Job.queue, func.count()).select_from(JobUnit)
                                    .join(Job, Job.id == JobUnit.job_id)
                                    .where(_unit_waiting(), Job.queue.in_(queues)).group_by(Job.queue)).all():
        counted[queue] = counted.get(queue, 0) + n
    return counted


def resend_lost(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], now: dt.datetime) -> int:
    """Send again the queued jobs and units whose message the broker lost; returns how many were re-sent."""
    cutoff = now - dt.timedelta(seconds=settings.redispatch_after_s)
    with sessions() as session:
        overdue = _overdue(session, cutoff)
    if not overdue:
        return 0
    queues = sorted({m.queue for m in overdue})
    # The broker first, then the DB: a message taken by a worker between the two reads then looks
    # like an extra message (no re-send), never like a lost one.
    waiting = dispatcher.message_counts(queues)
    with sessions() as session:
        in_flight = _in_flight(session, queues)
    chosen: list[Message] = []
    for queue in queues:
        candidates = [m for m in overdue if m.queue == queue]
        messages = waiting.get(queue, -1)
        lost = len(candidates) if messages < 0 else in_flight.get(queue, 0) - messages
        chosen += candidates[: max(lost, 0)]
    return sum(_resend(settings, dispatcher, sessions, now, cutoff, m) for m in chosen)


def _claim_resend(session: Session, message: Message, cutoff: dt.datetime) -> bool:
    if message.key is None:
        table, condition = Job, (Job.id == message.job_id) & (Job.status == jobstate.QUEUED)
    else:
        table, condition = JobUnit, (JobUnit.id == message.unit_id) & (JobUnit.status == jobstate.QUEUED)
    won = session.execute(update(table).where(condition, table.dispatched_at < cutoff)
                          .values(dispatched_at=utcnow()).execution_options(synchronize_session=False))
    return won.rowcount == 1


def _note(session: Session, message: Message, text: str, **data: Any) -> None:
    job = session.get(Job, message.job_id)
    if job is None:
        return
    if message.key is None:
        jobstate.add_event(session, job, "log", text, data=data)
        return
    unit = session.get(JobUnit, message.unit_id)
    if unit is not None:
        jobstate.unit_event(session, job, unit, jobstate.QUEUED, f"unit {message.key} {text}", **data)


def _resend(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], now: dt.datetime,
            cutoff: dt.datetime, message: Message) -> int:
    """Win the re-send of one message (compare-and-set on ``dispatched_at``), note it, publish it."""
    waited = round((now - message.sent_at).total_seconds(), 1)
    with sessions() as session:
        if not _claim_resend(session, message, cutoff):  # claimed, cancelled, or another reaper re-sent it
            session.rollback()
            return 0
        _note(session, message, f"re-sent: not picked up within {settings.redispatch_after_s:g} s", resent=True,
              queue=message.queue, waited_s=waited)
        session.commit()
    try:
        if message.key is None:
            dispatcher.send(message.job_id, message.queue)
        else:
            dispatcher.send_unit(message.job_id, message.key, message.queue)
    except Exception as exc:  # noqa: BLE001 - unsent again: the next pass sends it
        log.warning("reaper: could not re-send %s%s: %s", message.label, message.job_id, exc)
        with sessions() as session:
            table, ident = (Job, message.job_id) if message.key is None else (JobUnit, message.unit_id)
            session.execute(update(table).where(table.id == ident, table.status == jobstate.QUEUED)
                            .values(dispatched_at=None))
            _note(session, message, "re-send failed: the broker refused the message; the reaper tries again",
                  resent=False, queue=message.queue)
            session.commit()
        return 0
    log.info("reaper: re-sent %s%s to %s (queued, not picked up for %.0f s)", message.label, message.job_id,
             message.queue, waited)
    return 1


__all__ = ["Message", "resend_lost"]
