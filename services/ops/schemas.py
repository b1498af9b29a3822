"""The public shapes of jobs, events, units, artifacts, datasets, model cards and health, separate from the
ORM classes (:mod:`services.ops.views` turns rows into them); every transport answers with these.

The job specs themselves are :mod:`services.jobspec` (a discriminated union on ``kind``), shared by
the gateway, the worker and the CLI; the serving shapes are :mod:`services.serving.schemas`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services import jobspec

# The job specs live in services.jobspec (shared by the gateway, the worker and the CLI).
JobSpec = jobspec.JobSpec


class DryRun(BaseModel):
    """What a job would run and cost (``POST /v1/jobs?dry_run=true``); nothing was stored."""

    dry_run: Literal[True]
    kind: str
    resolved: dict[str, Any] = Field(description="The library config it would run, as `JobPublic.resolved`.")
    estimate: dict[str, Any] | None = Field(
        description="Seconds and peak memory of every judge, prior, target and attack run (`midre.cost`); "
        "`null` for a train job, `{\"error\"}` when the calibration failed."
    )


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class UnitCounts(BaseModel):
    """How far a fanned-out study's unit graph is (``GET /v1/jobs/{id}/units`` lists the units)."""

    total: int
    pending: int = Field(description="Waiting for the units they depend on.")
    queued: int = Field(description="Sent to the job's queue, not yet taken by a worker.")
    running: int
    succeeded: int
    failed: int
    cancelled: int


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: str
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any] = Field(description="The spec as submitted.")
    resolved: dict[str, Any] | None = Field(
        None,
        description="What the worker runs: the library config with every default filled in "
        "(`config`), ids of your datasets and jobs kept as `dataset:<id>` / `job:<id>` (`refs`).",
    )
    progress: float = Field(ge=0, le=1)
    stage: str | None
    message: str | None
    error: JobError | None
    metrics: dict[str, float]
    attempt: int
    queue: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    units: UnitCounts | None = Field(
        None, description="A study (pipeline, sweep, harden) once planned: its units by status (null otherwise)."
    )
    trigger: dict[str, Any] | None = Field(
        None, description="What started a job nobody submitted: the audit policy (`policy`), the event, the model "
        "and its name; once the audit finished, `previous` (the last audit of a model of that name) and `regressed` "
        "(the attacks that leak more than there, beyond its interval).")


class UnitPublic(BaseModel):
    """One unit of a fanned-out study: an evaluation model, a prior, a target, an attack run, a search
    step (``expand``) or the report."""

    key: str = Field(description="e.g. `target/midre-a_h0.4/seed0`, `attack/nodef/seed0/gmi`, `report`.")
    kind: str
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped"]
    deps: list[str] = Field(description="Keys of the units that must succeed first.")
    weight: float = Field(description="Relative cost; the job's progress weighs units by it.")
    progress: float = Field(ge=0, le=1)
    attempt: int = Field(description="Deliveries to a worker (more than 1 after a lost worker).")
    worker: str | None
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class UnitList(BaseModel):
    """Every unit of a study, in the order they were planned or added."""

    items: list[UnitPublic]
    counts: UnitCounts


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    """One entry of a job's append-only event log."""

    id: int
    created_at: dt.datetime
    type: str = Field(description="status | stage | epoch | log | unit | warning | estimate")
    attempt: int
    stage: str | None
    message: str
    data: dict[str, Any]


class EventPage(BaseModel):
    """Events oldest first; pass ``next_cursor`` as ``after`` to continue."""

    items: list[EventPublic]
    next_cursor: int | None


class ArtifactPublic(BaseModel):
    """A downloadable file a job produced."""

    name: str
    size: int
    sha256: str
    content_type: str
    created_at: dt.datetime
    url: str


class ArtifactList(BaseModel):
    """Every artifact of a job."""

    items: list[ArtifactPublic]


class DatasetRef(BaseModel):
    """Register a dataset without uploading: the built-in ``digits`` or an allow-listed server path."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=4096, description="`digits` or an absolute server path.")


class DatasetPublic(BaseModel):
    """A dataset and what validation found in it."""

    id: str
    name: str
    source_type: Literal["upload", "builtin", "path"]
    size_bytes: int | None
    sha256: str | None
    summary: dict[str, Any] = Field(description="identities, images, rejected files (and why)")
    created_at: dt.datetime


class DatasetPage(BaseModel):
    """One page of datasets, newest first."""

    items: list[DatasetPublic]
    next_cursor: str | None


class ModelCard(BaseModel):
    """What a trained model is and how well it did: enough to rebuild and judge it."""

    id: str = Field(description="The model's id (for a model trained here, its job's id).")
    job_id: str
    arch: str | None
    num_classes: int | None
    image_size: int | None
    defense: dict[str, Any] | None
    metrics: dict[str, float]
    checkpoint: ArtifactPublic | None
    card: dict[str, Any] = Field(description="The checkpoint's JSON sidecar, as written by midre.")
    evaluations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every attack evaluation (attack_eval) that ran against this model, newest first: attack, "
        "acc, attacc_top1, attacc_top5 (%), knn_dist, each with `<name>_ci_low` / `<name>_ci_high` (95 % interval "
        "over seeds and identities) when the audit measured one, judge (evaluation models, joined) and judges "
        "(their list), defense (the model's label in the audit), seeds, date, job_id; from the audit's report: "
        "attack_id (the versioned attack id, `gmi@1+<hash>`; attack_ids when its runs differ), leakage (the "
        "report's statement) and warnings; an adaptive attacker's rows have attack `<attack>-adaptive`.",
    )


class Health(BaseModel):
    """Liveness / readiness answer."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
    queues: dict[str, int] | None = Field(
        None, description="`/readyz`: live workers consuming each broker queue (0: a job queued there waits until "
        "a worker for it starts)."
    )
