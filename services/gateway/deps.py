"""FastAPI dependencies: the service context (:class:`~services.ops.context.ServiceContext`), a DB session
per request, the caller and its tenant, the scope checks, the serving runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.db.keys import SCOPES, KeyOwner, authenticate, hash_key
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.errors import ApiError, forbidden
from services.serving.runtime import ServingRuntime
from services.ttl_cache import TTLCache

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


class AuthCache(TTLCache[str, Caller]):
    """Successful key checks remembered for ``ttl`` seconds, keyed by the key's sha256.

    Saves a query and a thread-pool hop on every request; a revoked key stops working within
    ``ttl`` (``MIDRE_AUTH_CACHE_S``, 0 disables) on other replicas, at once on the one that revoked
    it. Failures are never cached; concurrent checks of one key when its entry expires share one
    query (:class:`TTLCache`).
    """


def _unauthorized(detail: str, error: str | None = None) -> ApiError:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


#: Declares the bearer scheme in the app's own OpenAPI document (``auto_error=False``: a missing
#: key answers our 401 problem details, not FastAPI's 403).
bearer = HTTPBearer(
    scheme_name="bearerAuth",
    description="An API key (`Authorization: Bearer mk_...`) from `midre admin create-key --tenant NAME` "
    "or `POST /v1/keys`; its scopes decide which operations it may call.",
    auto_error=False,
)


def _caller(owner: KeyOwner) -> Caller:
    return Caller(TenantRef(owner.tenant_id, owner.tenant_name), owner.key_id, owner.scopes, owner.models)


async def get_caller(
    request: Request,
    ctx: Annotated[ServiceContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller of the ``Authorization: Bearer <key>`` header; 401 when missing or wrong."""
    key = credentials.credentials.strip() if credentials is not None else ""
    if not key:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    digest = hash_key(key)

    def lookup() -> Caller | None:
        with ctx.sessions() as session:
            owner = authenticate(session, key)
            return _caller(owner) if owner is not None else None

    found = await ctx.auth_cache.get_or_load(digest, lookup)
    if found is None:
        raise _unauthorized("invalid API key", "invalid_token")
    return found


async def get_tenant(caller: Annotated[Caller, Depends(get_caller)]) -> TenantRef:
    """The caller's tenant (any valid key)."""
    return caller.tenant


def require_scope(scope: str) -> Any:
    """A dependency that answers 403 unless the caller's key grants ``scope``.

    The returned callable carries ``scope`` so the OpenAPI document can say what each operation needs.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if not caller.can(scope):
            have = ", ".join(s for s in SCOPES if s in caller.scopes) or "none"
            raise forbidden(f"this API key (scopes: {have}) may not do this: it needs the `{scope}` scope")
        return caller

    check.scope = scope  # type: ignore[attr-defined]
    return check


async def get_runtime(request: Request) -> ServingRuntime:
    """The app's :class:`ServingRuntime` (served models, batcher, usage meter)."""
    return request.app.state.serving


Ctx = Annotated[ServiceContext, Depends(get_context)]
DB = Annotated[Session, Depends(get_session)]
CurrentCaller = Annotated[Caller, Depends(get_caller)]
CurrentTenant = Annotated[TenantRef, Depends(get_tenant)]
Runtime = Annotated[ServingRuntime, Depends(get_runtime)]


def scoped(scope: str) -> list[Any]:
    """Router ``dependencies`` that require ``scope`` of every operation of the router."""
    return [Depends(require_scope(scope))]
