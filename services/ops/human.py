"""What people's answers add up to: human AttAcc per (attack, defense), kappa, controls, false positives.

The figures are :func:`midre.report.human.summarize` over every answered trial of a study's review
sessions. They reach the study's report (``human`` in ``report.json``, a section in ``report.html``
and the dashboard) and its metrics (``<defense>.<attack>.human_attacc_top1`` with its interval, and
``human_kappa``: the model card reads them) each time a reviewer finishes a session
(:func:`refresh_report`); ``GET /v1/jobs/{id}/human-evaluation`` computes them afresh at any time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.db.mlflow import HUMAN_EVENT, enqueue_job_end
from services.db.models import Artifact, Job, Metric, ReviewSession, ReviewTrial
from services.db.types import utcnow
from services.ops import reviews
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.jobs import get_job
from services.ops.models import job_report
from services.ops.reviews import RECON_RUN, AnswerIn, load_tensors, png_data_url

#: Metric names the human figures are stored under (``<defense>.<attack>.<name>``).
HUMAN_METRICS = ("human_attacc_top1", "human_attacc_top1_ci_low", "human_attacc_top1_ci_high", "human_kappa")


class Interval(BaseModel):
    """A share in percent with its 95 % interval (``None`` bounds when it could not be resampled)."""

    mean: float
    ci_low: float | None = None
    ci_high: float | None = None


class HumanResult(BaseModel):
    """One (attack, defense): what people identified, against chance and the judges."""

    model_config = ConfigDict(extra="allow")

    attack: str
    defense: str
    answers: int = Field(description="Answers of the included reviewers on this pair's reconstructions.")
    identities: int
    attacc_top1: Interval = Field(description="Human AttAcc (%): share of answers that named the true identity, "
                                  "95 % interval resampling identities and reviewers.")
    chance: float = Field(description="What guessing scores (%): 1 / (candidates + 1).")
    judge_attacc_top1: float | None = Field(None, description="The first judge's AttAcc (%) on the same images.")
    kappa: float | None = Field(None, description="Cohen's kappa between people and the first judge.")
    kappa_per_judge: list[float | None] = []
    judge_false_positives: int | None = Field(None, description="Images the first judge credited and most "
                                              "reviewers did not.")


class HumanEvaluation(BaseModel):
    """``GET /v1/jobs/{id}/human-evaluation``."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    sessions: int
    finished_sessions: int
    answers: int = Field(description="Answers of every reviewer, controls included.")
    reviewers: int
    included: int = Field(description="Reviewers whose controls passed the floor: only their answers count.")
    control_floor: float
    per_reviewer: list[dict[str, Any]]
    judges: list[str]
    results: list[HumanResult]
    reviewer_agreement: dict[str, Any] | None = None
    false_positives: list[dict[str, Any]] = []
    interval: str


def judge_names(report: dict[str, Any] | None) -> list[str]:
    """``arch (seed k)`` of each judge of the study, in the panel's order (the first is the kappa's)."""
    out = []
    for j in (report or {}).get("judges") or []:
        if isinstance(j, dict):
            out.append(f"{j.get('arch')} (seed {j['seed']})" if j.get("seed") is not None else str(j.get("arch")))
    return out


def answers_of(session: Session, job: Job) -> list[dict[str, Any]]:
    """Every answered trial of the job's review sessions, in :func:`midre.report.human.summarize`'s form."""
    rows = session.execute(
        select(ReviewTrial, ReviewSession.reviewer).join(ReviewSession, ReviewTrial.session_id == ReviewSession.id)
        .where(ReviewSession.job_id == job.id, ReviewTrial.choice.is_not(None))
        .order_by(ReviewTrial.session_id, ReviewTrial.position)).all()
    out = []
    for trial, reviewer in rows:
        answer: dict[str, Any] = {"reviewer": reviewer, "kind": trial.kind, "correct": bool(trial.correct)}
        if trial.kind == "reconstruction":
            answer.update(attack=trial.attack, defense=trial.defense, seed=trial.seed, identity=trial.identity,
                          item=f"{trial.source}#{trial.item}", judge_hits=trial.judge_hits,
                          chance=1.0 / (len(trial.candidates) + 1))
        out.append(answer)
    return out


def _with_images(ctx: ServiceContext, session: Session, job: Job, summary: dict[str, Any]) -> dict[str, Any]:
    """The judge false positives with their reconstructions as data URLs (one file read per attack run)."""
    loaded: dict[str, Any] = {}
    for fp in summary.get("false_positives") or []:
        source, _, index = str(fp.get("item", "")).rpartition("#")
        if not RECON_RUN.match(source) or not index.isdigit():
            continue
        if source not in loaded:
            art = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == source))
            loaded[source] = load_tensors(ctx, art)["pixels"] if art is not None else None
        if loaded[source] is not None:
            fp["image"] = png_data_url(loaded[source][int(index)])
    return summary


def summary_of(ctx: ServiceContext, session: Session, job: Job, report: dict[str, Any] | None = None,
               images: bool = True) -> dict[str, Any]:
    """The human figures of ``job`` now (see :func:`midre.report.human.summarize`)."""
    from midre.report.human import summarize

    report = report if report is not None else job_report(session, ctx.store, job.id)
    summary = summarize(answers_of(session, job), judges=judge_names(report))
    return _with_images(ctx, session, job, summary) if images else summary


def human_evaluation(ctx: ServiceContext, session: Session, tenant: TenantRef, job_id: str) -> HumanEvaluation:
    """``GET /v1/jobs/{id}/human-evaluation``: the figures with the job's id and the review sessions' count."""
    job = get_job(session, tenant, job_id)
    sessions = session.scalars(select(ReviewSession).where(ReviewSession.job_id == job.id)).all()
    return HumanEvaluation(job_id=job.id, sessions=len(sessions),
                           finished_sessions=sum(s.finished_at is not None for s in sessions),
                           **summary_of(ctx, session, job))


def _store_json_and_html(ctx: ServiceContext, session: Session, job: Job, report: dict[str, Any]) -> None:
    """Replace the job's ``report.json`` and ``report.html`` artifacts by ``report``'s (pictures embedded
    from the job's own PNG artifacts)."""
    from midre.report.render import render_html

    arts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    pictures = {}
    for name, art in arts.items():
        if name.endswith(".png"):
            try:
                pictures[name] = ctx.store.path(art.sha256).read_bytes()
            except FileNotFoundError:
                continue
    texts = {"report.json": json.dumps(report, indent=2, allow_nan=False), "report.html": render_html(report, pictures)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in texts.items():
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            blob = ctx.store.put_file(path)
            row = arts.get(name)
            if row is None:
                session.add(Artifact(job_id=job.id, name=name, size=blob.size, sha256=blob.sha256,
                                     content_type="application/json" if name.endswith(".json") else "text/html",
                                     created_at=utcnow()))
            else:
                row.sha256, row.size = blob.sha256, blob.size


def _store_metrics(session: Session, job: Job, summary: dict[str, Any]) -> None:
    session.execute(delete(Metric).where(Metric.job_id == job.id, Metric.epoch.is_(None),
                                         Metric.name.like("%.human_%")))
    for row in summary.get("results") or []:
        prefix = f"{row['defense']}.{row['attack']}"
        stat = row.get("attacc_top1") or {}
        values = {"human_attacc_top1": stat.get("mean"), "human_attacc_top1_ci_low": stat.get("ci_low"),
                  "human_attacc_top1_ci_high": stat.get("ci_high"), "human_kappa": row.get("kappa")}
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                session.add(Metric(job_id=job.id, name=f"{prefix}.{name}", value=float(value), epoch=None,
                                   created_at=utcnow()))


def record_answer(ctx: ServiceContext, session: Session, caller: Caller, review_id: str,
                  body: AnswerIn) -> tuple[dict[str, Any], bool]:
    """Record a reviewer's answer (:func:`services.ops.reviews.answer`); the answer that finishes a session
    writes the figures into the study's report (:func:`refresh_report`)."""
    view, created = reviews.answer(session, caller, review_id, body)
    if created and view["done"]:
        refresh_report(ctx, session, reviews.own_session(session, caller, review_id).job_id)
    return view, created


def refresh_report(ctx: ServiceContext, session: Session, job_id: str) -> None:
    """Write the job's human figures into its report (``report.json``, ``report.html``) and its metrics;
    called when a reviewer finishes a session. Commits."""
    job = session.get(Job, job_id, with_for_update=True)  # two reviewers finishing at once take turns
    report = job_report(session, ctx.store, job.id) if job is not None else {}
    if job is None or not report:
        return
    summary = summary_of(ctx, session, job, report)
    report["human"] = summary
    _store_json_and_html(ctx, session, job, report)
    _store_metrics(session, job, summary)
    enqueue_job_end(session, job, HUMAN_EVENT)  # the tenant's MLflow, when it has one
    session.commit()


__all__ = ["HUMAN_METRICS", "HumanEvaluation", "HumanResult", "Interval", "answers_of", "human_evaluation",
           "judge_names", "record_answer", "refresh_report", "summary_of"]
