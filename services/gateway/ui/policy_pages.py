"""The dashboard's audit-policy page (``jobs`` scope): the tenant's policies, a form to add one, delete.

Over :mod:`services.ops.audit_policies`, with the caller the session's key makes, like ``/v1/audit-policies``.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.gateway.deps import DB
from services.gateway.errors import ApiError, FieldError
from services.gateway.ui.pages import UiRoute, check_form, page, scoped_user
from services.gateway.ui.sessions import UiUser
from services.ops import audit_policies as ops
from services.ops.audit_policies import AuditPolicyCreate

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=UiRoute)
JobsUser = Annotated[UiUser, Depends(scoped_user("jobs"))]
EXAMPLE = {"dataset": "digits", "attacks": ["deepinversion"], "seeds": 2}


@router.get("/audit-policies")
def policies_page(request: Request, session: DB, user: JobsUser) -> HTMLResponse:
    """The tenant's audit policies and a form to add one."""
    return page(request, "audit_policies.html", user, policies=ops.list_policies(session, user.caller.tenant),
                example=json.dumps(EXAMPLE, indent=2))


@router.post("/audit-policies")
def create(request: Request, session: DB, user: JobsUser, csrf: Annotated[str, Form()] = "",
           name: Annotated[str, Form(max_length=200)] = "", trigger: Annotated[str, Form(max_length=40)] = "",
           registered_model: Annotated[str, Form(max_length=200)] = "",
           spec: Annotated[str, Form(max_length=100_000)] = "") -> Response:
    check_form(request, user, csrf)
    try:
        parsed = json.loads(spec or "{}")
        body = AuditPolicyCreate(name=name, trigger=trigger, spec=parsed, registered_model=registered_model or None)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "validation_error", f"spec: not JSON ({exc.msg})",
                       errors=[FieldError(field="spec", message=exc.msg)]) from exc
    except ValidationError as exc:
        errors = [FieldError(field=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in exc.errors()]
        raise ApiError(422, "validation_error", "; ".join(f"{e.field}: {e.message}" for e in errors),
                       errors=errors) from exc
    ops.create_policy(session, user.caller, body)
    return RedirectResponse("/ui/audit-policies", status_code=303)


@router.post("/audit-policies/{policy_id}/delete")
def delete(request: Request, session: DB, user: JobsUser, policy_id: str,
           csrf: Annotated[str, Form()] = "") -> Response:
    check_form(request, user, csrf)
    ops.delete_policy(session, user.caller.tenant, policy_id)
    return RedirectResponse("/ui/audit-policies", status_code=303)
