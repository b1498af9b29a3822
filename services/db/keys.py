"""API keys: ``mk_<key id>_<secret>``; only the sha256 of the whole key is stored.

The key id (public, random) finds the row; the hash is compared with :func:`hmac.compare_digest`
so the comparison takes the same time whatever the key. A 256-bit random secret makes a plain
sha256 sufficient (no password-style stretching needed: nothing to brute-force).

Scopes say what a key may do (see :data:`SCOPES`); a ``predict`` key may also be limited to a list
of models. Budgets of served models count per key, and only ``admin`` keys mint keys, so the
consumer of a served model cannot give itself a fresh budget.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import ApiKey, Tenant
from services.db.types import new_id

PREFIX = "mk"

#: ``admin``: everything of the tenant, mints and revokes keys. ``jobs``: datasets, jobs, artifacts,
#: model cards, policies and exports (and predict). ``predict``: predict and the public metadata of
#: served models only, optionally limited to listed models. ``review``: only the blind review sessions
#: the key was invited to (no reports, labels or downloads; see :mod:`services.ops.reviews`).
SCOPES = ("admin", "jobs", "predict", "review")

#: What each scope includes besides itself.
IMPLIED = {"admin": frozenset(SCOPES), "jobs": frozenset({"jobs", "predict"}), "predict": frozenset({"predict"}),
           "review": frozenset({"review"})}


def effective_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope that ``scopes`` grant, implied ones included."""
    out: set[str] = set()
    for scope in scopes:
        out |= IMPLIED.get(scope, frozenset())
    return frozenset(out)


@dataclass(frozen=True)
class KeyOwner:
    """What a valid key grants: its tenant, its public id, its scopes and model allow-list."""

    tenant_id: str
    tenant_name: str
    key_id: str
    scopes: frozenset[str]
    models: frozenset[str] | None


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created when new."""
    name = name.strip()
    if not name:
        raise ValueError("tenant: name must not be empty")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def mint_key(
    session: Session,
    tenant_id: str,
    scopes: Sequence[str] = ("admin",),
    name: str | None = None,
    models: Sequence[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant_id``; returns the row and the secret key (shown only once)."""
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise ValueError(f"scopes: must be a non-empty list of {', '.join(SCOPES)}")
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        key_id=key_id,
        key_hash=hash_key(key),
        tenant_id=tenant_id,
        name=name,
        scopes=sorted(set(scopes), key=SCOPES.index),
        model_ids=list(dict.fromkeys(models)) if models is not None else None,
    )
    session.add(row)
    session.flush()
    return row, key


def create_api_key(session: Session, tenant_name: str, scopes: Sequence[str] = ("admin",)) -> str:
    """Create a key for ``tenant_name`` (creating the tenant too) and return it; shown only once."""
    tenant = get_or_create_tenant(session, tenant_name)
    return mint_key(session, tenant.id, scopes)[1]


def authenticate(session: Session, key: str) -> KeyOwner | None:
    """What ``key`` grants, or None when the key is malformed, unknown or revoked."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        hmac.compare_digest(hash_key(key), hash_key(""))  # same work either way
        return None
    row = session.execute(
        select(Tenant.id, Tenant.name, ApiKey.key_hash, ApiKey.revoked_at, ApiKey.scopes, ApiKey.model_ids)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_id == parts[1])
    ).first()
    expected = row.key_hash if row is not None else hash_key("")
    ok = hmac.compare_digest(expected, hash_key(key))
    if row is None or not ok or row.revoked_at is not None:
        return None
    return KeyOwner(
        tenant_id=row.id,
        tenant_name=row.name,
        key_id=parts[1],
        scopes=effective_scopes(row.scopes or ()),
        models=frozenset(row.model_ids) if row.model_ids is not None else None,
    )
