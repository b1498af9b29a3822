"""``/v1/webhooks``: register, list and delete the tenant's signed webhooks, and read their deliveries
(``admin`` scope), over :mod:`services.ops.webhooks`.

Events are signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``
headers) with the webhook's ``whsec_`` secret, shown once at registration. Deliveries come from a
durable outbox (``services.db.webhooks``) and are retried with exponential back-off
(``services.integrations.webhooks``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.gateway.deps import DB, Ctx, CurrentCaller, scoped
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import webhooks as ops
from services.ops.webhooks import DeliveryPage, WebhookCreate, WebhookCreated, WebhookList

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=PROBLEM_RESPONSES,
                   dependencies=scoped("admin"))


@router.post("", status_code=201, response_model=WebhookCreated, summary="Register a webhook")
def create_webhook(ctx: Ctx, session: DB, caller: CurrentCaller, body: WebhookCreate) -> WebhookCreated:
    """Register an endpoint for some event types; the answer holds its signing ``secret``, shown only
    this once."""
    return ops.create_webhook(session, ctx.settings, caller.tenant, body)


@router.get("", response_model=WebhookList, summary="List the tenant's webhooks")
def list_webhooks(session: DB, caller: CurrentCaller) -> WebhookList:
    """Every webhook of the tenant with its URL and events; secrets are never shown again."""
    return ops.list_webhooks(session, caller.tenant)


@router.delete("/{webhook_id}", status_code=204, response_class=Response, summary="Delete a webhook")
def delete_webhook(session: DB, caller: CurrentCaller, webhook_id: str) -> Response:
    """Delete a webhook with its secret and its deliveries; pending ones are not sent."""
    ops.delete_webhook(session, caller.tenant, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, summary="A webhook's deliveries")
def list_deliveries(
    session: DB,
    caller: CurrentCaller,
    webhook_id: str,
    before: Annotated[str | None, Query(max_length=40, description="Return deliveries older than this id.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeliveryPage:
    """Messages to the webhook, newest first, each with its tries: time, HTTP status or error, next try."""
    return ops.list_deliveries(session, caller.tenant, webhook_id, before, limit)
