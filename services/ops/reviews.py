"""Blind human review of a study's reconstructions: invitations, trials, answers.

An admin or ``jobs`` key invites a ``review``-scoped key of its tenant to a finished study; the
invitation draws that reviewer's trials at once (:func:`draw_trials`) from the study's attack runs
(``attacks/<defense>/seed<k>/<attack>/recon.safetensors``) and its review material
(``review.safetensors``, :mod:`midre.report.review`), and stores them with everything the figures
need. The reviewer then asks for the next trial and answers it; nothing a reviewer receives names
the attack, the defense, the seed, the judges' answer or the true identity: a trial is a random id,
an image and shuffled candidates numbered ``1..k``, all images inline as PNG data URLs.

Controls are mixed in: a held-out photo of one of the candidates (``control_real``: should be found)
and a flat or noise image (``control_blank``: "none of these" is right). What the answers add up to
is :mod:`services.ops.human`.
"""

from __future__ import annotations

import base64
import functools
import random
import re
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.models import ApiKey, Artifact, Job, ReviewSession, ReviewTrial
from services.db.types import new_id, utcnow
from services.jobspec.kinds import get_kind
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.errors import ApiError, not_found, validation_error
from services.ops.jobs import get_job

REVIEW_MATERIAL = "review.safetensors"
RECON_RUN = re.compile(r"^attacks/(?P<defense>[^/]+)/seed(?P<seed>\d+)/(?P<attack>[^/]+)/recon\.safetensors$")
NONE = "none"  # the stored choice "none of these"


class ReviewInvite(BaseModel):
    """Invite a reviewer to a study."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str = Field(min_length=1, max_length=32,
                          description="Public id of a `review`-scoped key of your tenant: the key that answers.")
    trials: int = Field(40, ge=1, le=500, description="Reconstructions to show (fewer when the study has fewer), "
                        "spread evenly over its (attack, defense) pairs; controls come on top (a quarter, at least 4).")
    candidates: int = Field(4, ge=2, le=9, description="Candidate identities per trial (the true one and the "
                            "most similar others by the first judge's features), plus \"none of these\".")


class AnswerIn(BaseModel):
    """One answer: the trial, and the candidate id chosen (``null`` for "none of these")."""

    model_config = ConfigDict(extra="forbid")

    trial: str = Field(min_length=1, max_length=40)
    choice: str | None = Field(None, max_length=8)


class ReviewPublic(BaseModel):
    """A review session as its reviewer sees it: progress only."""

    id: str
    total: int
    answered: int
    done: bool


class ReviewProgress(ReviewPublic):
    """A review session as the study's owner sees it: whose, and how its controls went."""

    job_id: str
    reviewer: str
    reviewer_name: str | None = None
    controls_answered: int = 0
    controls_correct: int = 0


@dataclass
class Material:
    """A study's review material (tensors of ``review.safetensors``) with lookups."""

    tensors: dict[str, Any]

    def __post_init__(self) -> None:
        self.row_of = {int(i): r for r, i in enumerate(self.tensors["attacked"].tolist())}
        self.portrait_of = {int(i): r for r, i in enumerate(self.tensors["identities"].tolist())}

    def decoys(self, identity: int) -> list[int]:
        row = self.row_of.get(identity)
        return [] if row is None else [int(d) for d in self.tensors["decoys"][row].tolist()]


# --------------------------------------------------------------------------- reading the study's files


@functools.lru_cache(maxsize=16)
def _read_tensors(path: str) -> dict[str, Any]:
    """A stored safetensors file (content-addressed: a path always holds the same bytes), kept for the next
    trial of the session, which reads the same attack run and review material; callers never modify it."""
    from safetensors.torch import load_file

    return load_file(path)


def load_tensors(ctx: ServiceContext, artifact: Artifact) -> dict[str, Any]:
    """The tensors of a safetensors artifact (410 when its file is no longer stored)."""
    try:
        return _read_tensors(str(ctx.store.path(artifact.sha256)))
    except FileNotFoundError as exc:
        raise ApiError(410, "artifact_missing", f"artifact {artifact.name!r} is no longer in storage") from exc


def _artifacts(session: Session, job: Job) -> dict[str, Artifact]:
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id))
    return {a.name: a for a in rows if a.name == REVIEW_MATERIAL or RECON_RUN.match(a.name)}


def reviewable_job(session: Session, tenant: TenantRef, job_id: str) -> tuple[Job, dict[str, Artifact]]:
    """The tenant's finished study ``job_id`` and its review files: 404 when not the tenant's, 409 when it
    has no reconstructions to review (not a study, not finished, or written before review material)."""
    job = get_job(session, tenant, job_id)
    if not get_kind(job.kind).report:
        raise ApiError(409, "not_reviewable", f"a {job.kind} job has no reconstructions to review; invite reviewers "
                       "to a pipeline, sweep, harden or attack_eval job")
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "not_reviewable", f"job {job.id} is {job.status}: reviewers can be invited once it "
                       "has succeeded")
    files = _artifacts(session, job)
    if REVIEW_MATERIAL not in files or len(files) < 2:
        raise ApiError(409, "not_reviewable", f"job {job.id} has no review material ({REVIEW_MATERIAL} and the "
                       "attack runs' recon.safetensors): its report step predates human review or no attack "
                       "finished; run the study again to review it")
    return job, files


# --------------------------------------------------------------------------- drawing the trials


def _pick(rng: random.Random, identity: int, material: Material, k: int) -> tuple[list[int], str]:
    """Shuffled candidates: ``identity`` and ``k - 1`` of its decoys; the right candidate's id (1-based)."""
    decoys = [d for d in material.decoys(identity) if d in material.portrait_of and d != identity]
    shown = [identity, *rng.sample(decoys, min(k - 1, len(decoys)))]
    rng.shuffle(shown)
    return shown, str(shown.index(identity) + 1)


def _reconstruction_items(ctx: ServiceContext, files: dict[str, Artifact], rng: random.Random
                          ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every reconstruction of the study, grouped by (attack, defense), each group shuffled."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name in sorted(files):
        match = RECON_RUN.match(name)
        if match is None:
            continue
        recon = load_tensors(ctx, files[name])
        top1 = recon.get("judge_top1")
        for index, label in enumerate(recon["labels"].tolist()):
            hits = None if top1 is None else [bool(int(row[index]) == int(label)) for row in top1]
            groups.setdefault((match["attack"], match["defense"]), []).append(
                {"source": name, "item": index, "seed": int(match["seed"]), "identity": int(label), "hits": hits})
    for items in groups.values():
        rng.shuffle(items)
    return groups


def _spread(groups: dict[tuple[str, str], list[dict[str, Any]]], count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Up to ``count`` items taken in turn from each group, so every (attack, defense) gets an equal share."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    queues = {key: list(items) for key, items in sorted(groups.items())}
    while len(out) < count and any(queues.values()):
        for key, items in queues.items():
            if items and len(out) < count:
                out.append((key[0], key[1], items.pop()))
    return out


def draw_trials(ctx: ServiceContext, files: dict[str, Artifact], body: ReviewInvite, seed: int) -> list[dict[str, Any]]:
    """A session's trials, in the order shown: reconstructions spread over (attack, defense), controls mixed in."""
    rng = random.Random(seed)
    material = Material(load_tensors(ctx, files[REVIEW_MATERIAL]))
    trials = []
    for attack, defense, it in _spread(_reconstruction_items(ctx, files, rng), body.trials):
        shown, right = _pick(rng, it["identity"], material, body.candidates)
        trials.append({"kind": "reconstruction", "source": it["source"], "item": it["item"], "attack": attack,
                       "defense": defense, "seed": it["seed"], "identity": it["identity"], "candidates": shown,
                       "right": right, "judge_hits": it["hits"]})
    controls = max(4, round(len(trials) / 4))
    has = material.tensors["has_control"].tolist()
    real = [r for r, ok in enumerate(has) if ok]
    attacked = material.tensors["attacked"].tolist()
    for n in range(controls):
        row = rng.choice(real) if real and n % 2 == 0 else rng.randrange(len(attacked))
        shown, right = _pick(rng, int(attacked[row]), material, body.candidates)
        if real and n % 2 == 0:
            trials.append({"kind": "control_real", "source": "held-out photo", "item": row,
                           "identity": int(attacked[row]), "candidates": shown, "right": right})
        else:
            trials.append({"kind": "control_blank", "source": "flat" if n % 4 == 1 else "noise", "item": row,
                           "identity": None, "candidates": shown, "right": None})
    rng.shuffle(trials)
    return trials


# --------------------------------------------------------------------------- the operations


def _reviewer_key(session: Session, tenant: TenantRef, key_id: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.tenant_id != tenant.id or row.revoked_at is not None:
        raise validation_error("reviewer", f"{key_id!r} is not an active key of your tenant")
    if list(row.scopes or []) != ["review"]:
        raise validation_error("reviewer", f"key {key_id!r} has scopes {', '.join(row.scopes or [])}: a reviewer "
                               "needs a key with the `review` scope alone (POST /v1/keys {\"scopes\": [\"review\"]})")
    return row


def invite(ctx: ServiceContext, session: Session, caller: Caller, job_id: str, body: ReviewInvite) -> ReviewProgress:
    """Invite ``body.reviewer`` to review the study ``job_id``: draw and store its trials (201)."""
    job, files = reviewable_job(session, caller.tenant, job_id)
    key = _reviewer_key(session, caller.tenant, body.reviewer)
    seed = secrets.randbits(48)
    trials = draw_trials(ctx, files, body, seed)
    if not any(t["kind"] == "reconstruction" for t in trials):
        raise ApiError(409, "not_reviewable", f"job {job.id} has no reconstructions to review")
    row = ReviewSession(id=new_id("rev"), tenant_id=caller.tenant.id, job_id=job.id, reviewer=key.key_id,
                        invited_by=caller.key_id, total=len(trials), answered=0, created_at=utcnow(),
                        settings={"trials": body.trials, "candidates": body.candidates, "seed": seed,
                                  "controls": sum(t["kind"] != "reconstruction" for t in trials)})
    session.add(row)
    session.flush()
    for position, trial in enumerate(trials):
        session.add(ReviewTrial(id="t" + secrets.token_hex(12), session_id=row.id, position=position,
                                kind=trial["kind"], source=trial["source"], item=trial["item"],
                                attack=trial.get("attack"), defense=trial.get("defense"), seed=trial.get("seed"),
                                identity=trial["identity"], candidates=trial["candidates"], right=trial["right"],
                                judge_hits=trial.get("judge_hits")))
    session.commit()
    return progress_view(session, row, key.name)


def own_session(session: Session, caller: Caller, review_id: str) -> ReviewSession:
    """The review session ``review_id`` answered by the caller's key (404 for anybody else's)."""
    row = session.get(ReviewSession, review_id)
    if row is None or row.tenant_id != caller.tenant.id or row.reviewer != caller.key_id:
        raise not_found("review", review_id)
    return row


def public_view(row: ReviewSession) -> ReviewPublic:
    return ReviewPublic(id=row.id, total=row.total, answered=row.answered, done=row.answered >= row.total)


def progress_view(session: Session, row: ReviewSession, name: str | None = None) -> ReviewProgress:
    controls = session.scalars(select(ReviewTrial.correct).where(
        ReviewTrial.session_id == row.id, ReviewTrial.kind != "reconstruction", ReviewTrial.choice.is_not(None))).all()
    return ReviewProgress(**public_view(row).model_dump(), job_id=row.job_id, reviewer=row.reviewer,
                          reviewer_name=name, controls_answered=len(controls),
                          controls_correct=sum(bool(c) for c in controls))


def my_sessions(session: Session, caller: Caller) -> list[ReviewPublic]:
    """The caller's review sessions, newest first."""
    rows = session.scalars(select(ReviewSession).where(
        ReviewSession.tenant_id == caller.tenant.id, ReviewSession.reviewer == caller.key_id
    ).order_by(ReviewSession.id.desc())).all()
    return [public_view(r) for r in rows]


def job_sessions(session: Session, tenant: TenantRef, job_id: str) -> list[ReviewProgress]:
    """Every review session of the tenant's job ``job_id`` with its reviewer's progress and controls."""
    job = get_job(session, tenant, job_id)
    rows = session.scalars(select(ReviewSession).where(ReviewSession.job_id == job.id)
                           .order_by(ReviewSession.id)).all()
    names = dict(session.execute(select(ApiKey.key_id, ApiKey.name).where(
        ApiKey.key_id.in_([r.reviewer for r in rows]))).all()) if rows else {}
    return [progress_view(session, r, names.get(r.reviewer)) for r in rows]


def review_keys(session: Session, tenant: TenantRef) -> list[ApiKey]:
    """The tenant's active ``review``-only keys (whom a study's owner can invite), newest first."""
    keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
                           .order_by(ApiKey.id.desc())).all()
    return [k for k in keys if list(k.scopes or []) == ["review"]]


def png_data_url(pixels: Any) -> str:
    """A ``[C, H, W]`` uint8 image as a PNG data URL (no text chunks: nothing but pixels)."""
    import io

    from PIL import Image

    array = pixels.cpu().numpy()
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def trial_image(ctx: ServiceContext, session: Session, row: ReviewSession, trial: ReviewTrial,
                material: Material) -> Any:
    """The pixels a trial asks about: the reconstruction, the held-out photo, or the blank control."""
    import torch

    if trial.kind == "reconstruction":
        recon = session.scalar(select(Artifact).where(Artifact.job_id == row.job_id, Artifact.name == trial.source))
        if recon is None:
            raise ApiError(410, "artifact_missing", "this trial's image is no longer stored")
        return load_tensors(ctx, recon)["pixels"][trial.item]
    if trial.kind == "control_real":
        return material.tensors["controls"][trial.item]
    like = material.tensors["portraits"][0]
    if trial.source == "flat":
        return torch.full_like(like, 128)
    gen = torch.Generator().manual_seed(int(trial.id[1:13], 16))
    return torch.randint(0, 256, like.shape, generator=gen, dtype=torch.uint8)


def _material(ctx: ServiceContext, session: Session, job_id: str) -> Material:
    art = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == REVIEW_MATERIAL))
    if art is None:
        raise ApiError(410, "artifact_missing", "this study's review material is no longer stored")
    return Material(load_tensors(ctx, art))


def next_trial(ctx: ServiceContext, session: Session, caller: Caller, review_id: str) -> dict[str, Any] | None:
    """The first unanswered trial of the caller's session (``None`` when all are answered)."""
    row = own_session(session, caller, review_id)
    trial = session.scalar(select(ReviewTrial).where(ReviewTrial.session_id == row.id, ReviewTrial.choice.is_(None))
                           .order_by(ReviewTrial.position).limit(1))
    if trial is None:
        return None
    material = _material(ctx, session, row.job_id)
    portraits = material.tensors["portraits"]
    return {"trial": trial.id, "position": row.answered + 1, "total": row.total,
            "reconstruction": png_data_url(trial_image(ctx, session, row, trial, material)),
            "candidates": [{"id": str(n + 1), "image": png_data_url(portraits[material.portrait_of[i]])}
                           for n, i in enumerate(trial.candidates)]}


def answer(session: Session, caller: Caller, review_id: str, body: AnswerIn) -> tuple[dict[str, Any], bool]:
    """Record an answer; ``(answer, created)``. Repeating an answer changes nothing (200); a different
    answer to an answered trial is refused (409): answers are final, as in a user study."""
    row = own_session(session, caller, review_id)
    trial = session.get(ReviewTrial, body.trial, with_for_update=True)
    if trial is None or trial.session_id != row.id:
        raise validation_error("trial", f"{body.trial!r} is not a trial of review {review_id}")
    ids = {str(n + 1) for n in range(len(trial.candidates))}
    if body.choice is not None and body.choice not in ids:
        raise validation_error("choice", f"{body.choice!r} is not a candidate of this trial: one of "
                               f"{', '.join(sorted(ids))}, or null for \"none of these\"")
    choice = body.choice or NONE
    if trial.choice is not None:
        if trial.choice != choice:
            raise ApiError(409, "already_answered", f"trial {trial.id} was already answered; answers are final")
        return _answer_view(row, trial), False
    trial.choice = choice
    trial.correct = choice == (trial.right or NONE)
    trial.answered_at = utcnow()
    session.get(ReviewSession, row.id, with_for_update=True)
    row.answered = ReviewSession.answered + 1
    session.flush()
    session.refresh(row)
    if row.answered >= row.total and row.finished_at is None:
        row.finished_at = utcnow()
    session.commit()
    return _answer_view(row, trial), True


def _answer_view(row: ReviewSession, trial: ReviewTrial) -> dict[str, Any]:
    return {"trial": trial.id, "choice": None if trial.choice == NONE else trial.choice, "answered": row.answered,
            "total": row.total, "done": row.answered >= row.total}


__all__ = ["AnswerIn", "Material", "ReviewInvite", "ReviewProgress", "ReviewPublic", "answer", "draw_trials",
           "invite", "job_sessions", "my_sessions", "next_trial", "own_session", "png_data_url", "review_keys",
           "reviewable_job"]
