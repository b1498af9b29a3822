"""``/v1/keys``: mint, list and revoke the tenant's API keys (``admin`` scope), over :mod:`services.ops.keys`.

A model owner mints a ``predict`` key (optionally limited to some models) for each consumer of a
served model: the consumer can predict within the model's budget, which counts per key, but cannot
read or change the policy, export the model, download checkpoints, submit jobs or mint keys.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.gateway.deps import DB, Ctx, CurrentCaller, scoped
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import keys as ops
from services.ops.keys import KeyCreate, KeyCreated, KeyList

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=PROBLEM_RESPONSES, dependencies=scoped("admin"))


@router.post("", status_code=201, response_model=KeyCreated, summary="Mint an API key")
def create_key(session: DB, caller: CurrentCaller, body: KeyCreate) -> KeyCreated:
    """Mint a key for this tenant; the answer holds the secret ``key``, shown only this once."""
    return ops.create_key(session, caller.tenant, body)


@router.get("", response_model=KeyList, summary="List the tenant's API keys")
def list_keys(session: DB, caller: CurrentCaller) -> KeyList:
    """Every key of the tenant with its scopes and model limits; secrets are never shown again."""
    return ops.list_keys(session, caller.tenant)


@router.delete(
    "/{key_id}", status_code=204, response_class=Response, summary="Revoke an API key",
    responses={409: PROBLEM_RESPONSES[422] | {"description": "The key revokes itself without ?confirm=true, or it "
                                                             "is the tenant's last admin key"}},
)
def revoke_key(
    ctx: Ctx, session: DB, caller: CurrentCaller, key_id: str,
    confirm: Annotated[bool, Query(description="Required when a key revokes itself.")] = False,
) -> Response:
    """Revoke a key: refused at once by this replica, by others within ``MIDRE_AUTH_CACHE_S`` seconds
    (the authentication cache's lifetime). Its usage records stay. A key revoking itself needs
    ``?confirm=true``, and the tenant's last admin key cannot be revoked (409 either way)."""
    ops.revoke_key(ctx, session, caller, key_id, confirm)
    return Response(status_code=204)
