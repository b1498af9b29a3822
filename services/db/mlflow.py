"""The MLflow hand-off's outbox write: one ``mlflow`` row in the webhook outbox per succeeded job of a
tenant that configured MLflow (``PUT /v1/integrations/mlflow``).

:func:`enqueue_job_end` runs inside :func:`services.db.jobs.transition`, in the caller's transaction,
next to the webhook messages: the job's ``succeeded`` status and its hand-off commit together or not
at all. The deliverer (``services.integrations.webhooks``) claims the row like a webhook message and
hands it to ``services.integrations.mlflow``, which logs the run.
"""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from services.db.models import Job, MlflowIntegration, WebhookDelivery
from services.db.types import new_id, utcnow
from services.db.webhooks import PENDING
from services.jobspec import get_kind

#: The outbox channel of MLflow hand-offs (webhook messages are ``webhook``).
CHANNEL = "mlflow"
#: The ``event_type`` of a hand-off row.
EVENT = "mlflow.run"
#: The ``event_type`` of a follow-up: people reviewed the job's reconstructions; its human figures and
#: refreshed report go to the job's run (``services.ops.human``).
HUMAN_EVENT = "mlflow.human"
#: The ``event_type`` of an audit's write-back onto the registered version it audited (an audit policy
#: watching the tenant's registry started it): version tags, no run.
AUDIT_EVENT = "mlflow.audit"


def enqueue_job_end(session: Session, job: Job, event: str = EVENT) -> int:
    """Queue the hand-off of ``job`` if it succeeded and its tenant has MLflow (not committed); 0 or 1.
    ``event``: :data:`EVENT` (the job's run) or :data:`HUMAN_EVENT` (its human figures, later)."""
    if job.status != "succeeded" or not get_kind(job.kind).mlflow:  # an uploaded model ran nothing
        return 0
    if session.get(MlflowIntegration, job.tenant_id) is None:
        return 0
    now = utcnow()
    session.add(WebhookDelivery(
        id=new_id("msg"), channel=CHANNEL, webhook_id=None, mlflow_tenant_id=job.tenant_id, job_id=job.id,
        event_type=event, payload=json.dumps({"type": event, "job_id": job.id, "kind": job.kind}),
        state=PENDING, attempts=0, next_attempt_at=now, created_at=now,
    ))
    return 1
