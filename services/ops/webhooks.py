"""Webhooks: register, list and delete the tenant's signed webhooks, and read their deliveries.

Events are signed per Standard Webhooks with the webhook's ``whsec_`` secret, shown once at
registration. A target must resolve to public addresses only (unless ``MIDRE_WEBHOOKS_ALLOW_PRIVATE``).
Deliveries come from a durable outbox (``services.db.webhooks``) and are retried with exponential
back-off (``services.integrations.webhooks``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Webhook, WebhookAttempt, WebhookDelivery
from services.db.types import new_id, utcnow
from services.db.webhooks import EVENT_TYPES
from services.integrations.webhooks import UnsafeTarget, check_target, new_secret
from services.ops.context import TenantRef
from services.ops.errors import not_found, validation_error
from services.settings import Settings


class WebhookCreate(BaseModel):
    """An endpoint to notify."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="`http` or `https` URL that receives a POST per event. Its host must resolve to public "
        "addresses only (unless the operator set `MIDRE_WEBHOOKS_ALLOW_PRIVATE=true`); redirects are not followed.",
    )
    events: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Event types to receive: " + ", ".join(f"`{e}`" for e in EVENT_TYPES) + ".",
        json_schema_extra={"items": {"type": "string", "enum": list(EVENT_TYPES)}},
    )


class WebhookPublic(BaseModel):
    """A webhook as listed: never its secret."""

    id: str
    url: str
    events: list[str]
    created_at: dt.datetime


class WebhookCreated(WebhookPublic):
    """A new webhook: ``secret`` (``whsec_...``) verifies its deliveries and is shown only this once."""

    secret: str


class WebhookList(BaseModel):
    """The tenant's webhooks, newest first."""

    items: list[WebhookPublic]


class AttemptPublic(BaseModel):
    """One try of a delivery."""

    attempt: int = Field(description="1 for the first try.")
    at: dt.datetime = Field(description="When the request was sent.")
    duration_ms: float
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    error: str | None = Field(description="Why the try failed (non-2xx, timeout, refused target...); null on success.")
    next_attempt_at: dt.datetime | None = Field(description="When the next try is due; null when none follows.")


class DeliveryPublic(BaseModel):
    """One message to the webhook and every try so far."""

    id: str = Field(description="The message id: the `webhook-id` header, the same on every retry.")
    event_type: str
    job_id: str | None
    state: str = Field(description="`pending` (tries left), `delivered` or `failed` (gave up).")
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None = Field(description="When the next try is due (pending only).")
    finished_at: dt.datetime | None
    payload: dict[str, Any] = Field(description="The JSON body sent (`type`, `timestamp`, `data`).")
    attempts: list[AttemptPublic]


class DeliveryPage(BaseModel):
    """Deliveries newest first; pass ``next_cursor`` as ``before`` for the next page."""

    items: list[DeliveryPublic]
    next_cursor: str | None


def _view(row: Webhook) -> WebhookPublic:
    return WebhookPublic(id=row.id, url=row.url, events=list(row.events or []), created_at=row.created_at)


def _owned(session: Session, tenant: TenantRef, webhook_id: str) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None or row.tenant_id != tenant.id:
        raise not_found("webhook", webhook_id)
    return row


def create_webhook(session: Session, settings: Settings, tenant: TenantRef, body: WebhookCreate) -> WebhookCreated:
    """Register an endpoint for some event types (422 naming an unknown event or an unsafe ``url``); the
    answer holds its signing ``secret``, shown only this once."""
    for i, event in enumerate(body.events):
        if event not in EVENT_TYPES:
            raise validation_error(f"events[{i}]", f"unknown event type {event!r}; one of {', '.join(EVENT_TYPES)}")
    try:
        check_target(body.url, settings.webhooks_allow_private)
    except UnsafeTarget as exc:
        raise validation_error("url", str(exc)) from None
    row = Webhook(id=new_id("wh"), tenant_id=tenant.id, url=body.url, events=list(dict.fromkeys(body.events)),
                  secret=new_secret(), created_at=utcnow())
    session.add(row)
    session.commit()
    return WebhookCreated(**_view(row).model_dump(), secret=row.secret)


def list_webhooks(session: Session, tenant: TenantRef) -> WebhookList:
    """Every webhook of the tenant, newest first, with its URL and events (never its secret)."""
    rows = session.scalars(
        select(Webhook).where(Webhook.tenant_id == tenant.id).order_by(Webhook.id.desc())
    ).all()
    return WebhookList(items=[_view(r) for r in rows])


def delete_webhook(session: Session, tenant: TenantRef, webhook_id: str) -> None:
    """Delete a webhook with its secret and its deliveries; pending ones are not sent."""
    session.delete(_owned(session, tenant, webhook_id))
    session.commit()


def list_deliveries(session: Session, tenant: TenantRef, webhook_id: str, before: str | None = None,
                    limit: int = 20) -> DeliveryPage:
    """Messages to the webhook, newest first (``before``: older than this id), each with its tries."""
    hook = _owned(session, tenant, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    tries: dict[str, list[AttemptPublic]] = {row.id: [] for row in page}
    if page:
        found = session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(tries))).order_by(WebhookAttempt.id)
        ).all()
        for a in found:
            tries[a.delivery_id].append(AttemptPublic(attempt=a.attempt, at=a.at, duration_ms=a.duration_ms,
                                                      status_code=a.status_code, error=a.error,
                                                      next_attempt_at=a.next_attempt_at))
    items = [
        DeliveryPublic(id=r.id, event_type=r.event_type, job_id=r.job_id, state=r.state, created_at=r.created_at,
                       next_attempt_at=r.next_attempt_at, finished_at=r.finished_at, payload=json.loads(r.payload),
                       attempts=tries[r.id])
        for r in page
    ]
    return DeliveryPage(items=items, next_cursor=page[-1].id if len(rows) > limit else None)


__all__ = ["AttemptPublic", "DeliveryPage", "DeliveryPublic", "WebhookCreate", "WebhookCreated", "WebhookList",
           "WebhookPublic", "create_webhook", "delete_webhook", "list_deliveries", "list_webhooks"]
