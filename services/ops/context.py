"""Who is asking, and what every operation may reach: the caller of an operation and the service's context,
whatever transport brought the request."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage import LocalStore
from services.ttl_cache import TTLCache


@dataclass(frozen=True)
class TenantRef:
    """The authenticated caller's tenant."""

    id: str
    name: str


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: its tenant, its key's public id, scopes and model allow-list."""

    tenant: TenantRef
    key_id: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None

    def can(self, scope: str) -> bool:
        """True when the key grants ``scope`` (``admin`` grants every scope, ``jobs`` grants predict)."""
        return scope in self.scopes

    def may_use_model(self, model_id: str) -> bool:
        """True unless the key is limited to a list of models that does not name ``model_id``."""
        return self.models is None or model_id in self.models


@dataclass
class ServiceContext:
    """Everything an operation may need beyond its session, built once per app."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: LocalStore
    dispatcher: Dispatcher
    #: Successful key checks, keyed by the key's sha256 (the gateway's ``AuthCache``; revoking a key forgets it).
    auth_cache: TTLCache[str, Caller] = field(default_factory=lambda: TTLCache(0))
    #: ``(tenant, job id) -> (etag, JSON body)`` of ``GET /v1/jobs/{id}`` for ``MIDRE_JOB_CACHE_S``.
    job_cache: TTLCache[tuple[str, str], tuple[str, bytes]] = field(default_factory=lambda: TTLCache(0))


__all__ = ["Caller", "ServiceContext", "TenantRef"]
