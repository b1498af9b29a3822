"""API shapes (request specs and public views), separate from the ORM classes.

Job specs are a discriminated union on ``kind``; the semantic checks that need ``midre`` (known
architecture, valid defense parameters, dataset exists) live in ``services.gateway.validation``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Device = Literal["auto", "cpu", "cuda"]


class DefenseSpec(BaseModel):
    """A training-time defense and its parameters, e.g. ``{"name": "midre", "a_h": 0.4}``.

    Parameters other than ``name`` go to ``midre.defenses.build_defense`` unchanged.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field("midre", min_length=1, max_length=64, description="`none` trains without defense.")


class TrainingParams(BaseModel):
    """Training hyper-parameters; unset ones take the library's defaults.

    Extra keys are passed to ``midre.train.TrainConfig`` (which rejects unknown ones by name).
    """

    model_config = ConfigDict(extra="allow")

    epochs: int = Field(2, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    lr: float | None = Field(None, gt=0, le=10)
    seed: int | None = Field(None, ge=0)
    image_size: int | None = Field(None, ge=8, le=1024, description="Square input side in pixels.")


class DataOptions(BaseModel):
    """How the dataset is split and preprocessed (``midre.data.DatasetSpec`` fields)."""

    model_config = ConfigDict(extra="forbid")

    channels: Literal[1, 3] | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: int | None = Field(None, ge=0)
    num_private: int | None = Field(None, ge=1)
    max_images_per_identity: int | None = Field(None, ge=1)


class TrainJobSpec(BaseModel):
    """Train a (hardened) classifier on a dataset."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"]
    dataset: str = Field(min_length=1, max_length=200, description="`digits` or a dataset id.")
    arch: str = Field(min_length=1, max_length=100, description="A name from `midre.models`.")
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    training: TrainingParams = Field(default_factory=TrainingParams)
    data: DataOptions = Field(default_factory=DataOptions)
    device: Device = "auto"


class EvaluationParams(BaseModel):
    """How reconstructions are judged (``midre.study``): the evaluation model and the sample."""

    model_config = ConfigDict(extra="forbid")

    arch: str | None = Field(None, description="Evaluation model architecture (default resnet18).")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Evaluation model epochs.")
    all_images: bool | None = Field(None, description="Train the evaluation model on all private images.")
    per_identity: int | None = Field(None, ge=1, le=1000, description="Reconstructions per identity.")
    identities: int | None = Field(None, ge=1, description="Identities attacked (default all private).")
    feature_identities: int | None = Field(None, ge=0, description="Identities in the feature-space plots.")


class _StudyFields(BaseModel):
    """Fields shared by attack_eval and pipeline jobs (passed to ``midre.study``)."""

    model_config = ConfigDict(extra="forbid")

    attacks: list[str] = Field(
        default_factory=list, description="Attack names, e.g. `mi-face`, `deepinversion`, `gmi` (default: the "
        "library's)."
    )
    seeds: int | list[int] | None = Field(None, description="Repetitions (a count or explicit seeds).")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    attack_budgets: dict[str, dict[str, Any]] | None = Field(None, description="Per-attack budget overrides.")
    attack_options: dict[str, dict[str, Any]] | None = Field(None, description="Per-attack options.")
    prior_options: dict[str, Any] | None = Field(None, description="GAN prior options.")
    device: Device = "auto"


class AttackEvalJobSpec(_StudyFields):
    """Attack the model of an earlier, succeeded ``train`` job and write the privacy report."""

    kind: Literal["attack_eval"]
    model_job: str = Field(min_length=1, max_length=40, description="Id of a succeeded train job.")


class PipelineJobSpec(_StudyFields):
    """The whole study: train NoDef and the defense, attack both, write the privacy-utility report."""

    kind: Literal["pipeline"]
    dataset: str = Field(min_length=1, max_length=200, description="`digits` or a dataset id.")
    arch: str = Field(min_length=1, max_length=100)
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    training: TrainingParams = Field(default_factory=TrainingParams)
    data: DataOptions = Field(default_factory=DataOptions)
    public_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of identities used as public data when the attacks need it."
    )


JobSpec = Annotated[TrainJobSpec | AttackEvalJobSpec | PipelineJobSpec, Field(discriminator="kind")]


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: str
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
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


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    """One entry of a job's append-only event log."""

    id: int
    created_at: dt.datetime
    type: str = Field(description="status | stage | epoch | log")
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

    job_id: str
    arch: str | None
    num_classes: int | None
    image_size: int | None
    defense: dict[str, Any] | None
    metrics: dict[str, float]
    checkpoint: ArtifactPublic | None
    card: dict[str, Any] = Field(description="The checkpoint's JSON sidecar, as written by midre.")


class Health(BaseModel):
    """Liveness / readiness answer."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
