"""Who is asking: the caller of an operation, whatever transport brought the request."""

from __future__ import annotations

from dataclasses import dataclass


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


__all__ = ["Caller", "TenantRef"]
