"""The dashboard's review pages: a reviewer answers trials one at a time (``review`` scope); a study's
owner invites reviewers and follows their progress on the job page (``jobs`` scope).

The pages call :mod:`services.ops.reviews` / :mod:`services.ops.human` as ``/v1/reviews`` does, with
the caller the session's key makes: a ``review`` key sees its own sessions and nothing else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.gateway.deps import DB, Ctx
from services.gateway.errors import ApiError, FieldError
from services.gateway.ui.pages import UiRoute, check_form, page, scoped_user
from services.gateway.ui.sessions import UiUser
from services.ops import human
from services.ops import reviews as ops
from services.ops.reviews import AnswerIn, ReviewInvite

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=UiRoute)
ReviewUser = Annotated[UiUser, Depends(scoped_user("review"))]
JobsUser = Annotated[UiUser, Depends(scoped_user("jobs"))]


@router.get("/reviews")
def reviews_page(request: Request, session: DB, user: ReviewUser) -> HTMLResponse:
    """The review sessions this key was invited to."""
    return page(request, "reviews.html", user, sessions=ops.my_sessions(session, user.caller))


@router.get("/reviews/{review_id}")
def trial_page(request: Request, ctx: Ctx, session: DB, user: ReviewUser, review_id: str) -> HTMLResponse:
    """One trial: the image to judge, the candidates (keys 1-9), "none of these" (key 0), progress."""
    view = ops.public_view(ops.own_session(session, user.caller, review_id))
    trial = ops.next_trial(ctx, session, user.caller, review_id)
    return page(request, "review.html", user, review=view, trial=trial)


@router.post("/reviews/{review_id}")
def answer_trial(request: Request, ctx: Ctx, session: DB, user: ReviewUser, review_id: str,
                 csrf: Annotated[str, Form()] = "", trial: Annotated[str, Form(max_length=40)] = "",
                 choice: Annotated[str, Form(max_length=8)] = "") -> Response:
    """Record the answer, then show the next trial."""
    check_form(request, user, csrf)
    body = AnswerIn(trial=trial or "-", choice=None if choice in ("", ops.NONE) else choice)
    human.record_answer(ctx, session, user.caller, review_id, body)
    return RedirectResponse(f"/ui/reviews/{review_id}", status_code=303)


@router.post("/jobs/{job_id}/reviews")
def invite(request: Request, ctx: Ctx, session: DB, user: JobsUser, job_id: str,
           csrf: Annotated[str, Form()] = "", reviewer: Annotated[str, Form(max_length=32)] = "",
           trials: Annotated[int, Form()] = 40) -> Response:
    """Invite a review key of the tenant to this study."""
    check_form(request, user, csrf)
    try:
        body = ReviewInvite(reviewer=reviewer, trials=trials)
    except ValidationError as exc:
        errors = [FieldError(field=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in exc.errors()]
        raise ApiError(422, "validation_error", "the invitation has invalid fields", errors=errors) from exc
    ops.invite(ctx, session, user.caller, job_id, body)
    return RedirectResponse(f"/ui/jobs/{job_id}#h-reviews", status_code=303)


__all__ = ["router"]
