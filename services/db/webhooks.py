"""The webhook outbox's writes: which events a finished job produces, one row per matching webhook.

:func:`enqueue_job_end` runs inside :func:`services.db.jobs.transition`, in the caller's transaction:
the job's new status and its outbox rows commit together or not at all, so no event is lost between
the status change and its delivery (the deliverer, ``services.integrations.webhooks``, sends the rows
later, from any worker or API process).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Job, Webhook, WebhookDelivery
from services.db.types import new_id, utcnow
from services.jobspec import get_kind

#: Every event type a webhook can subscribe to.
EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "model.evaluated", "audit.completed", "audit.regressed")
#: States of an outbox row.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_FINAL = ("succeeded", "failed", "cancelled")


def job_end_events(job: Job) -> list[tuple[str, dict[str, Any]]]:
    """The events of ``job`` reaching its status: ``job.<status>``, and ``model.evaluated`` when an audit
    of a model succeeded. Thin data: ids, kind and status only (never a path or a secret)."""
    if job.status not in _FINAL:
        return []
    events = [(f"job.{job.status}", {"id": job.id, "kind": job.kind, "status": job.status})]
    if job.status == "succeeded" and get_kind(job.kind).audits:
        spec = job.spec or {}
        model = spec.get("model") or spec.get("model_job")
        events.append(("model.evaluated", {"id": job.id, "kind": job.kind, "model_job": model}))
    return events


def payload(event_type: str, data: dict[str, Any], when: dt.datetime) -> str:
    """The JSON body of one message (Standard Webhooks shape: ``type``, ``timestamp``, ``data``)."""
    stamp = when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"))


def enqueue(session: Session, tenant_id: str, events: list[tuple[str, dict[str, Any]]],
            job_id: str | None = None) -> int:
    """Add one pending outbox row per (webhook of ``tenant_id``, event it subscribes to); not committed."""
    if not events:
        return 0
    hooks = session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.id)).all()
    now = utcnow()
    added = 0
    for hook in hooks:
        for event_type, data in events:
            if event_type not in (hook.events or []):
                continue
            session.add(WebhookDelivery(
                id=new_id("msg"), webhook_id=hook.id, job_id=job_id, event_type=event_type,
                payload=payload(event_type, data, now), state=PENDING, attempts=0, next_attempt_at=now,
                created_at=now,
            ))
            added += 1
    return added


def enqueue_job_end(session: Session, job: Job) -> int:
    """Queue the messages of ``job``'s final status (in the caller's transaction); how many were queued."""
    return enqueue(session, job.tenant_id, job_end_events(job), job.id)
