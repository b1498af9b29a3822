"""Integrations: the tenant's MLflow tracking server, where its succeeded jobs are logged as runs and its
models registered.

Credentials (``token``, or ``username`` + ``password``) are write-only: stored for the hand-off and
never shown again. The tracking URI passes the webhooks' target check (``MIDRE_MLFLOW_ALLOW_PRIVATE``
lets it be internal). The hand-off itself: ``services.db.mlflow`` (the outbox row) and
``services.integrations.mlflow`` (the run).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from services.db.models import MlflowIntegration
from services.db.types import utcnow
from services.integrations.mlflow import ALIAS, check_uri
from services.integrations.webhooks import UnsafeTarget, check_target
from services.ops.context import TenantRef
from services.ops.errors import not_found, validation_error
from services.settings import Settings


class MlflowSettings(BaseModel):
    """Where to log the tenant's succeeded jobs. A PUT replaces the whole configuration, credentials
    included (send them again on every PUT)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(
        min_length=1, max_length=2000,
        description="`http` or `https` URL of the MLflow tracking server (e.g. `https://mlflow.example.com`). Its "
        "host must resolve to public addresses only unless the operator set `MIDRE_MLFLOW_ALLOW_PRIVATE=true`; "
        "no credentials, query or fragment in the URL.",
    )
    experiment: str = Field(min_length=1, max_length=500,
                            description="Experiment name; created on the first hand-off if missing.")
    registered_model: str | None = Field(
        None, min_length=1, max_length=500,
        description=f"Registered model that gets a new version (alias `{ALIAS}`) for each job that produced a "
        "model (train, pipeline); created if missing. Omit to log runs only.",
    )
    token: str | None = Field(None, min_length=1, max_length=4000,
                              description="Bearer token for the server (write-only).")
    username: str | None = Field(None, min_length=1, max_length=500,
                                 description="HTTP basic auth user, with `password` (write-only).")
    password: str | None = Field(None, min_length=1, max_length=4000,
                                 description="HTTP basic auth password, with `username` (write-only).")


class MlflowPublic(BaseModel):
    """The tenant's MLflow configuration: never its credentials."""

    tracking_uri: str
    experiment: str
    registered_model: str | None
    alias: str = Field(description="The alias moved to each new model version.")
    auth: Literal["none", "token", "basic"] = Field(description="Which credentials are stored (not shown).")
    created_at: dt.datetime
    updated_at: dt.datetime


def _view(row: MlflowIntegration) -> MlflowPublic:
    auth: Literal["none", "token", "basic"] = "token" if row.token else "basic" if row.username else "none"
    return MlflowPublic(tracking_uri=row.tracking_uri, experiment=row.experiment,
                        registered_model=row.registered_model, alias=ALIAS, auth=auth, created_at=row.created_at,
                        updated_at=row.updated_at)


def _owned(session: Session, tenant: TenantRef) -> MlflowIntegration:
    row = session.get(MlflowIntegration, tenant.id)
    if row is None:
        raise not_found("integration", "mlflow")
    return row


def put_mlflow(session: Session, settings: Settings, tenant: TenantRef, body: MlflowSettings) -> MlflowPublic:
    """Set (or replace) the tenant's MLflow server, credentials included: 422 naming the field for mixed or
    half credentials and for a tracking URI that fails the target check."""
    if body.token and (body.username or body.password):
        raise validation_error("token", "give either `token` or `username` + `password`, not both")
    if bool(body.username) != bool(body.password):
        raise validation_error("password" if body.username else "username",
                               "`username` and `password` go together")
    try:
        uri = check_uri(body.tracking_uri, settings.mlflow_allow_private, check_target)
    except UnsafeTarget as exc:
        raise validation_error("tracking_uri", str(exc)) from None
    now = utcnow()
    row = session.get(MlflowIntegration, tenant.id)
    if row is None:
        row = MlflowIntegration(tenant_id=tenant.id, created_at=now)
        session.add(row)
    row.tracking_uri, row.experiment, row.registered_model = uri, body.experiment, body.registered_model
    row.token, row.username, row.password = body.token, body.username, body.password
    row.updated_at = now
    session.commit()
    return _view(row)


def get_mlflow(session: Session, tenant: TenantRef) -> MlflowPublic:
    """The tenant's MLflow configuration without credentials; 404 when none is set."""
    return _view(_owned(session, tenant))


def delete_mlflow(session: Session, tenant: TenantRef) -> None:
    """Delete the configuration with its credentials (404 when none is set)."""
    session.delete(_owned(session, tenant))
    session.commit()


__all__ = ["MlflowPublic", "MlflowSettings", "delete_mlflow", "get_mlflow", "put_mlflow"]
