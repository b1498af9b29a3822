"""Dashboard sign-ins: an API key exchanged for a session cookie, and the CSRF token of its forms.

The cookie carries a 256-bit random token; the database keeps only its sha256 (``ui_sessions.id``),
so a leaked database row cannot be replayed as a cookie. Each session has its own random CSRF token,
which every state-changing form sends back in a hidden field. A session is valid while it has not
expired (``MIDRE_UI_SESSION_HOURS``), the key it was opened with is not revoked, and the user has not
signed out; the key's scopes are read again on every request, so the dashboard never grants more than
the key itself.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.db.keys import authenticate, effective_scopes, hash_key
from services.db.models import ApiKey, Tenant, UiSession
from services.db.types import utcnow
from services.ops.context import Caller, TenantRef

#: Name of the session cookie (HttpOnly, SameSite=Strict, Path=/ui, Secure over https).
COOKIE = "midre_session"
#: How often ``last_seen_at`` is written (at most once per this many seconds per session).
SEEN_EVERY = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class UiUser:
    """A signed-in dashboard user: the caller its key makes it, and its session's CSRF token."""

    caller: Caller
    csrf: str
    session_id: str

    def can(self, scope: str) -> bool:
        """True when the key grants ``scope`` (same rule as the API)."""
        return self.caller.can(scope)


def sign_in(session: Session, key: str, hours: float) -> str | None:
    """Open a session for ``key``; returns the cookie token, or None when the key is not valid.

    Expired sessions of every tenant are removed on the way (housekeeping without a timer).
    """
    owner = authenticate(session, key.strip())
    if owner is None:
        return None
    key_row = session.scalar(select(ApiKey.id).where(ApiKey.key_id == owner.key_id))
    if key_row is None:  # revoked and deleted between the two reads
        return None
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(UiSession(
        id=hash_key(token), key_id=key_row, tenant_id=owner.tenant_id, csrf=secrets.token_urlsafe(32),
        created_at=now, expires_at=now + dt.timedelta(hours=hours), last_seen_at=now,
    ))
    session.commit()
    return token


def current(session: Session, token: str) -> UiUser | None:
    """The user of the cookie ``token``, or None when it is unknown, expired or its key was revoked."""
    if not token or len(token) > 200:
        return None
    row = session.execute(
        select(UiSession, ApiKey, Tenant.name)
        .join(ApiKey, ApiKey.id == UiSession.key_id)
        .join(Tenant, Tenant.id == UiSession.tenant_id)
        .where(UiSession.id == hash_key(token))
    ).first()
    if row is None:
        return None
    ui, key, tenant_name = row
    now = utcnow()
    if ui.expires_at <= now or key.revoked_at is not None or key.tenant_id != ui.tenant_id:
        return None
    if ui.last_seen_at is None or now - ui.last_seen_at > SEEN_EVERY:
        session.execute(update(UiSession).where(UiSession.id == ui.id).values(last_seen_at=now))
        session.commit()
    caller = Caller(
        tenant=TenantRef(ui.tenant_id, tenant_name),
        key_id=key.key_id,
        scopes=effective_scopes(key.scopes or ()),
        models=frozenset(key.model_ids) if key.model_ids is not None else None,
    )
    return UiUser(caller=caller, csrf=ui.csrf, session_id=ui.id)


def sign_out(session: Session, user: UiUser) -> None:
    """End the session (its cookie stops working at once)."""
    session.execute(delete(UiSession).where(UiSession.id == user.session_id))
    session.commit()


def csrf_ok(user: UiUser, sent: object) -> bool:
    """Whether the form's ``csrf`` field is the sign-in's own token (constant-time comparison)."""
    return isinstance(sent, str) and bool(sent) and hmac.compare_digest(sent.encode(), user.csrf.encode())
