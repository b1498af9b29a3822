"""API keys: mint, list and revoke the tenant's keys.

A model owner mints a ``predict`` key (optionally limited to some models) for each consumer of a
served model: the consumer can predict within the model's budget, which counts per key, but cannot
read or change the policy, export the model, download checkpoints, submit jobs or mint keys. A key
never revokes the tenant's last admin key, nor itself unless confirmed.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.keys import SCOPES, mint_key
from services.db.models import ApiKey, Job, Tenant
from services.db.types import utcnow
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.errors import ApiError, FieldError, not_found, validation_error

Scope = Literal["admin", "jobs", "predict", "review"]


class KeyCreate(BaseModel):
    """A key to mint."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="What the key is for, e.g. the consumer's name.")
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=len(SCOPES),
        description="`admin` (everything, mints keys), `jobs` (datasets, jobs, artifacts, models, policies, "
        "exports, predict) and/or `predict` (predict and the served models' public metadata only); or `review` "
        "alone: a person who reviews reconstructions blind, seeing only the review sessions it is invited to.",
    )
    models: list[str] | None = Field(
        None,
        max_length=1000,
        description="Model ids a `predict`-only key may use (default: every model of the tenant).",
    )


class KeyPublic(BaseModel):
    """A key as listed: never its secret."""

    id: str = Field(description="The key's public id (the part after `mk_`).")
    name: str | None
    scopes: list[str]
    models: list[str] | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class KeyCreated(KeyPublic):
    """A freshly minted key: ``key`` is the secret, shown this once."""

    key: str


class KeyList(BaseModel):
    """The tenant's keys, newest first (revoked ones included)."""

    items: list[KeyPublic]


def _view(row: ApiKey) -> KeyPublic:
    return KeyPublic(id=row.key_id, name=row.name, scopes=list(row.scopes or []), models=row.model_ids,
                     created_at=row.created_at, revoked_at=row.revoked_at)


def create_key(session: Session, tenant: TenantRef, body: KeyCreate) -> KeyCreated:
    """Mint a key for ``tenant``; the answer holds the secret ``key``, shown only this once. A key limited
    to some models must be ``predict``-only and name succeeded jobs of the tenant (422 otherwise)."""
    if "review" in body.scopes and set(body.scopes) != {"review"}:
        raise validation_error("scopes", "`review` cannot be combined with other scopes: a reviewer must not see "
                               "reports, labels or downloads of the study it reviews")
    if body.models is not None:
        if set(body.scopes) != {"predict"}:
            raise validation_error("models", "only a `predict`-only key can be limited to some models")
        for i, model_id in enumerate(body.models):
            job = session.get(Job, model_id)
            if job is None or job.tenant_id != tenant.id or job.status != jobstate.SUCCEEDED:
                raise validation_error(f"models[{i}]", f"{model_id!r} is not one of your models")
    row, key = mint_key(session, tenant.id, body.scopes, body.name, body.models)
    session.commit()
    return KeyCreated(**_view(row).model_dump(), key=key)


def list_keys(session: Session, tenant: TenantRef) -> KeyList:
    """Every key of the tenant, newest first, with its scopes and model limits (never its secret)."""
    rows = session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.id.desc())
    ).all()
    return KeyList(items=[_view(r) for r in rows])


def revoke_key(ctx: ServiceContext, session: Session, caller: Caller, key_id: str, confirm: bool = False) -> None:
    """Revoke the tenant's key ``key_id`` (404 when it is not the tenant's; revoking it again changes
    nothing) and forget it in this process's authentication cache. A key revoking itself needs
    ``confirm``, and the tenant's last admin key cannot be revoked (409 either way)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.tenant_id != caller.tenant.id:
        raise not_found("key", key_id)
    if row.revoked_at is None:
        if row.key_id == caller.key_id:
            _check_self_revocation(session, caller, row, confirm)
        row.revoked_at = utcnow()
        session.commit()
    ctx.auth_cache.forget(row.key_hash)


def _check_self_revocation(session: Session, caller: Caller, row: ApiKey, confirm: bool) -> None:
    """A key revoking itself locks its holder out: never the tenant's last admin key, else only when confirmed."""
    session.get(Tenant, caller.tenant.id, with_for_update=True)  # two admins revoking each other take turns
    active = session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == caller.tenant.id, ApiKey.revoked_at.is_(None))
    ).all()
    if "admin" in (row.scopes or []) and not any("admin" in (k.scopes or []) for k in active if k.id != row.id):
        message = ("this is the tenant's last admin key: without it nobody could mint or revoke keys; mint another "
                   "admin key first (POST /v1/keys, or `midre admin create-key` on the server)")
        raise ApiError(409, "last_admin_key", message, errors=[FieldError(field="key_id", message=message)])
    if not confirm:
        message = "this request would revoke the very key it is made with; repeat it with ?confirm=true"
        raise ApiError(409, "confirm_required", message, errors=[FieldError(field="confirm", message=message)])


__all__ = ["KeyCreate", "KeyCreated", "KeyList", "KeyPublic", "Scope", "create_key", "list_keys", "revoke_key"]
