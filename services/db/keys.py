"""API keys: ``mk_<key id>_<secret>``; only the sha256 of the whole key is stored.

The key id (public, random) finds the row; the hash is compared with :func:`hmac.compare_digest`
so the comparison takes the same time whatever the key. A 256-bit random secret makes a plain
sha256 sufficient (no password-style stretching needed: nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import ApiKey, Tenant
from services.db.types import new_id

PREFIX = "mk"


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


def create_api_key(session: Session, tenant_name: str) -> str:
    """Create a key for ``tenant_name`` (creating the tenant too) and return it; shown only once."""
    tenant = get_or_create_tenant(session, tenant_name)
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(key_id=key_id, key_hash=hash_key(key), tenant_id=tenant.id))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant owning ``key``, or None when the key is malformed, unknown or revoked."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        hmac.compare_digest(hash_key(key), hash_key(""))  # same work either way
        return None
    row = session.execute(
        select(Tenant, ApiKey.key_hash, ApiKey.revoked_at)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_id == parts[1])
    ).first()
    expected = row.key_hash if row is not None else hash_key("")
    ok = hmac.compare_digest(expected, hash_key(key))
    if row is None or not ok or row.revoked_at is not None:
        return None
    return row.Tenant
