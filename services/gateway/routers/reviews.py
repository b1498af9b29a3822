"""Human review: invite reviewers to a study (``jobs`` scope), answer trials blind (``review`` scope), read
what the answers add up to (``jobs`` scope), over :mod:`services.ops.reviews` and :mod:`services.ops.human`.

A ``review`` key reaches nothing but ``/v1/reviews``: the sessions it was invited to, one trial at a
time. A trial names no attack, defense, seed, judge answer or identity; its images come inline.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from services.gateway.deps import DB, Ctx, require_scope
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import human
from services.ops import reviews as ops
from services.ops.context import Caller
from services.ops.human import HumanEvaluation
from services.ops.reviews import AnswerIn, ReviewInvite, ReviewProgress, ReviewPublic

JobsCaller = Annotated[Caller, Depends(require_scope("jobs"))]
Reviewer = Annotated[Caller, Depends(require_scope("review"))]
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(tags=["reviews"], responses=PROBLEM_RESPONSES)


@router.post("/v1/jobs/{job_id}/reviews", status_code=201, response_model=ReviewProgress,
             summary="Invite a reviewer to a study")
def invite(ctx: Ctx, session: DB, caller: JobsCaller, job_id: str, body: ReviewInvite) -> ReviewProgress:
    """Draw the trials of a blind review of the succeeded study `job_id` for the `review`-scoped key
    `reviewer` of your tenant: its reconstructions spread evenly over (attack, defense) and seeds, in random
    order, with control trials mixed in. The answer's `id` is the session that key answers
    (`GET /v1/reviews/{id}/next`). 409 when the study has nothing to review; 422 naming `reviewer` when the
    key is not an active `review`-only key of yours."""
    return ops.invite(ctx, session, caller, job_id, body)


@router.get("/v1/jobs/{job_id}/reviews", response_model=list[ReviewProgress], summary="Review sessions of a study")
def job_reviews(session: DB, caller: JobsCaller, job_id: str) -> list[ReviewProgress]:
    """Every review session of the study: its reviewer, trials answered, and how many controls it got right."""
    return ops.job_sessions(session, caller.tenant, job_id)


@router.get("/v1/jobs/{job_id}/human-evaluation", response_model=HumanEvaluation,
            summary="What the reviewers' answers add up to")
def human_evaluation(ctx: Ctx, session: DB, caller: JobsCaller, job_id: str) -> HumanEvaluation:
    """Human AttAcc per (attack, defense) with its 95 % interval over identities and reviewers, the chance
    level, Cohen's kappa with each judge, agreement between reviewers, each reviewer's controls (reviewers
    below the floor are left out of the figures) and the judges' false positives with their images."""
    return human.human_evaluation(ctx, session, caller.tenant, job_id)


@router.get("/v1/reviews", response_model=list[ReviewPublic], summary="Your review sessions")
def my_reviews(session: DB, caller: Reviewer) -> list[ReviewPublic]:
    """The review sessions your key was invited to, newest first, with their progress."""
    return ops.my_sessions(session, caller)


@router.get("/v1/reviews/{review_id}", response_model=ReviewPublic, summary="One of your review sessions")
def my_review(session: DB, caller: Reviewer, review_id: str) -> ReviewPublic:
    """Progress of one of your review sessions (404 for any other)."""
    return ops.public_view(ops.own_session(session, caller, review_id))


@router.get("/v1/reviews/{review_id}/next", summary="The next trial to answer",
            responses={200: {"description": "`trial` (opaque id), `reconstruction` (PNG data URL), `candidates` "
                                            "(`id`, `image`), `position`, `total`"},
                       204: {"description": "Every trial of the session is answered"}})
def next_trial(ctx: Ctx, session: DB, caller: Reviewer, review_id: str) -> Response:
    """The first unanswered trial: the image to judge and the candidate identities (real photos, shuffled).
    Answer with the candidate's `id`, or `null` for "none of these". Pausing is free: the same trial
    comes back until it is answered."""
    trial = ops.next_trial(ctx, session, caller, review_id)
    if trial is None:
        return Response(status_code=204, headers=NO_STORE)
    return JSONResponse(trial, headers=NO_STORE)


@router.post("/v1/reviews/{review_id}/answers", status_code=201, summary="Answer a trial",
             responses={200: {"description": "The same answer again: nothing changed"},
                        409: PROBLEM_RESPONSES[422] | {"description": "A different answer to an answered trial"}})
def answer(ctx: Ctx, session: DB, caller: Reviewer, review_id: str, body: AnswerIn) -> JSONResponse:
    """Record your answer to a trial (idempotent: the same answer again is 200; answers are final, a
    different one is 409). The answer that finishes the session writes the figures into the study's report."""
    view, created = human.record_answer(ctx, session, caller, review_id, body)
    return JSONResponse(view, status_code=201 if created else 200, headers=NO_STORE)
