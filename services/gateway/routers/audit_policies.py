"""``/v1/audit-policies``: audits that run by themselves when a model arrives (``jobs`` scope), over
:mod:`services.ops.audit_policies`."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.gateway.deps import DB, CurrentCaller, CurrentTenant, scoped
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import audit_policies as ops
from services.ops.audit_policies import AuditPolicyCreate, AuditPolicyPublic

router = APIRouter(prefix="/v1/audit-policies", tags=["audit policies"], responses=PROBLEM_RESPONSES,
                   dependencies=scoped("jobs"))


@router.post("", status_code=201, response_model=AuditPolicyPublic, summary="Create an audit policy")
def create(session: DB, caller: CurrentCaller, body: AuditPolicyCreate) -> AuditPolicyPublic:
    """On `trigger` (`model_upload`: every model uploaded to `POST /v1/models`), submit `spec` (an
    `attack_eval` spec without `model`) for the new model; the job records the policy in `trigger`, and
    the tenant's webhooks get `audit.completed` (and `audit.regressed` when the model leaks more than the
    previous audited model of the same name). 422 naming `spec.<field>` when the spec is wrong."""
    return ops.create_policy(session, caller, body)


@router.get("", response_model=list[AuditPolicyPublic], summary="List audit policies")
def list_all(session: DB, tenant: CurrentTenant) -> list[AuditPolicyPublic]:
    """The tenant's policies, newest first, with how many audits each started."""
    return ops.list_policies(session, tenant)


@router.get("/{policy_id}", response_model=AuditPolicyPublic, summary="One audit policy")
def get_one(session: DB, tenant: CurrentTenant, policy_id: str) -> AuditPolicyPublic:
    return ops.get_policy(session, tenant, policy_id)


@router.delete("/{policy_id}", status_code=204, response_class=Response, summary="Delete an audit policy")
def delete(session: DB, tenant: CurrentTenant, policy_id: str) -> Response:
    """Delete the policy; the audits it started stay."""
    ops.delete_policy(session, tenant, policy_id)
    return Response(status_code=204)
