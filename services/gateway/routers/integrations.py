"""``/v1/integrations/mlflow``: the tenant's MLflow tracking server, where its succeeded jobs are logged
as runs and its models registered (``admin`` scope), over :mod:`services.ops.integrations`.

Credentials (``token``, or ``username`` + ``password``) are write-only: stored for the hand-off and
never shown again. The tracking URI passes the webhooks' target check (``MIDRE_MLFLOW_ALLOW_PRIVATE``
lets it be internal). The hand-off itself: ``services.db.mlflow`` (the outbox row) and
``services.integrations.mlflow`` (the run).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.gateway.deps import DB, Ctx, CurrentCaller, scoped
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import integrations as ops
from services.ops.integrations import MlflowPublic, MlflowSettings

router = APIRouter(prefix="/v1/integrations", tags=["integrations"], responses=PROBLEM_RESPONSES,
                   dependencies=scoped("admin"))


@router.put("/mlflow", response_model=MlflowPublic, summary="Set the tenant's MLflow server")
def put_mlflow(ctx: Ctx, session: DB, caller: CurrentCaller, body: MlflowSettings) -> MlflowPublic:
    """Log each job of the tenant that succeeds from now on (train, attack_eval, pipeline) to this MLflow
    server: a run with the resolved config as params, the final metrics, tags and the report and model
    files; a job that produced a model also gets a new version of `registered_model`, aliased `hardened`.
    Replaces an earlier configuration; credentials are stored and never shown again."""
    return ops.put_mlflow(session, ctx.settings, caller.tenant, body)


@router.get("/mlflow", response_model=MlflowPublic, summary="The tenant's MLflow server")
def get_mlflow(session: DB, caller: CurrentCaller) -> MlflowPublic:
    """The configuration without credentials (`auth` says which kind is stored); 404 when none is set."""
    return ops.get_mlflow(session, caller.tenant)


@router.delete("/mlflow", status_code=204, response_class=Response, summary="Stop the MLflow hand-off")
def delete_mlflow(session: DB, caller: CurrentCaller) -> Response:
    """Delete the configuration with its credentials; hand-offs not yet made are dropped (runs already
    logged stay in MLflow)."""
    ops.delete_mlflow(session, caller.tenant)
    return Response(status_code=204)
