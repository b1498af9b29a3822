"""FastAPI dependencies: the service context, a DB session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from services.db.keys import authenticate, hash_key
from services.gateway.errors import ApiError
from services.gateway.ttl_cache import TTLCache
from services.settings import Settings
from services.storage import LocalStore
from services.worker.dispatch import Dispatcher


@dataclass
class ServiceContext:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: LocalStore
    dispatcher: Dispatcher
    auth_cache: AuthCache = field(default_factory=lambda: AuthCache(0))


# The two cheap dependencies are ``async`` on purpose: a sync dependency costs a hop to the thread
# pool, and under 50 concurrent clients those hops (not the SQL) dominate the latency.


async def get_context(request: Request) -> ServiceContext:
    """The app's :class:`ServiceContext`."""
    return request.app.state.ctx


async def get_session(ctx: Annotated[ServiceContext, Depends(get_context)]) -> AsyncIterator[Session]:
    """A session for one request (it connects lazily, on first use); handlers commit their changes."""
    session = ctx.sessions()
    try:
        yield session
    finally:
        session.close()


@dataclass(frozen=True)
class TenantRef:
    """The authenticated caller's tenant."""

    id: str
    name: str


class AuthCache(TTLCache[str, TenantRef]):
    """Successful key checks remembered for ``ttl`` seconds, keyed by the key's sha256.

    Saves a query and a thread-pool hop on every request; a revoked key stops working within
    ``ttl`` (``MIDRE_AUTH_CACHE_S``, 0 disables). Failures are never cached; concurrent checks of
    one key when its entry expires share one query (:class:`TTLCache`).
    """


def _unauthorized(detail: str, error: str | None = None) -> ApiError:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


async def get_tenant(request: Request, ctx: Annotated[ServiceContext, Depends(get_context)]) -> TenantRef:
    """The tenant of the ``Authorization: Bearer <key>`` header; 401 when missing or wrong."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    digest = hash_key(key)

    def lookup() -> TenantRef | None:
        with ctx.sessions() as session:
            tenant = authenticate(session, key)
            return TenantRef(id=tenant.id, name=tenant.name) if tenant is not None else None

    found = await ctx.auth_cache.get_or_load(digest, lookup)
    if found is None:
        raise _unauthorized("invalid API key", "invalid_token")
    return found


Ctx = Annotated[ServiceContext, Depends(get_context)]
DB = Annotated[Session, Depends(get_session)]
CurrentTenant = Annotated[TenantRef, Depends(get_tenant)]
