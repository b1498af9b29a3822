"""FastAPI dependencies: the service context, a DB session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from services.db.keys import authenticate
from services.db.models import Tenant
from services.gateway.errors import ApiError
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


def get_context(request: Request) -> ServiceContext:
    """The app's :class:`ServiceContext`."""
    return request.app.state.ctx


def get_session(ctx: Annotated[ServiceContext, Depends(get_context)]) -> Iterator[Session]:
    """A session for one request; handlers commit what they change."""
    session = ctx.sessions()
    try:
        yield session
    finally:
        session.close()


def get_tenant(request: Request, session: Annotated[Session, Depends(get_session)]) -> Tenant:
    """The tenant of the ``Authorization: Bearer <key>`` header; 401 when missing or wrong."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = authenticate(session, key.strip())
    if tenant is None:
        raise ApiError(
            401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return tenant


Ctx = Annotated[ServiceContext, Depends(get_context)]
DB = Annotated[Session, Depends(get_session)]
CurrentTenant = Annotated[Tenant, Depends(get_tenant)]
