"""ORM classes: tenants, api_keys, datasets, jobs, job_events, metrics, artifacts, model_policies,
model_usage, webhooks, webhook_deliveries (the outbox of webhooks and MLflow hand-offs), webhook_attempts,
mlflow_integrations, ui_sessions (dashboard sign-ins), job_units (the task graph of a fanned-out study),
review_sessions and review_trials (people reviewing a study's reconstructions blind), audit_policies
(audits started by an event, e.g. a model upload).

Every schema change is an Alembic migration in ``migrations/versions`` (a test checks the two agree).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.db.types import JSONType, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Integer primary key that autoincrements on SQLite (INTEGER) and PostgreSQL (BIGINT).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations get stable constraint names."""

    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    """An organisation; every dataset, job and artifact belongs to exactly one."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: only its sha256 is stored; ``key_id`` is the public part used for lookup.

    ``scopes`` (``admin`` | ``jobs`` | ``predict``) say what the key may do; ``model_ids``, when set,
    limits a ``predict`` key to those served models.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=lambda: ["admin"])
    model_ids: Mapped[list[str] | None] = mapped_column(JSONType)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant] = relationship()


class Dataset(Base):
    """A data set a job can train on: an uploaded archive, the built-in ``digits`` or a server path."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    source_type: Mapped[str] = mapped_column(String(16))  # upload | builtin | path
    source: Mapped[str] = mapped_column(Text)  # extracted folder, "digits", or allow-listed path
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    """One train / attack_eval / pipeline job and its state machine.

    ``queued -> running -> succeeded | failed | cancelled``, with ``cancelling`` while a worker stops.
    ``attempt`` counts deliveries to a worker; ``heartbeat_at`` lets workers spot a lost worker.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_id_status", "tenant_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: The spec with every default filled in, as converted once at submit time; the worker runs this.
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    queue: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    dataset_id: Mapped[str | None] = mapped_column(String(40))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: What started the job when nobody submitted it: ``{"policy": id, "event": "model_upload", "model": id,
    #: "model_name": ...}`` for an audit an audit policy created (and, once it finished, ``regressed``).
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class JobEvent(Base):
    """Append-only log of a job: status changes, stage changes, per-epoch metrics, log lines."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(20))  # status | stage | epoch | log
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class Metric(Base):
    """A named number a job produced (per epoch when ``epoch`` is set, final otherwise)."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Artifact(Base):
    """A file a job produced, stored content-addressed by sha256 in the artifact store."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelPolicy(Base):
    """How a served model answers (set by its owner) and its optional query budget per API key.

    ``policy``: ``full`` | ``top-k`` | ``rounded`` | ``label-only`` | ``shield``; ``top_k`` caps the
    identities a ``top-k``/``rounded``/``shield`` answer may list, ``decimals`` is the rounding of
    ``rounded``, ``strength`` the shield's (:mod:`midre.deployment`); ``budget`` is the most images one
    API key may submit to this model (None: unlimited).
    """

    __tablename__ = "model_policies"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    policy: Mapped[str] = mapped_column(String(20), default="full")
    top_k: Mapped[int | None] = mapped_column(Integer)
    decimals: Mapped[int | None] = mapped_column(Integer)
    strength: Mapped[float | None] = mapped_column(Float)
    budget: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelUsage(Base):
    """Query accounting: images one API key has submitted to one served model."""

    __tablename__ = "model_usage"
    __table_args__ = (UniqueConstraint("key_id", "job_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    queries: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    last_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Webhook(Base):
    """An endpoint of a tenant that receives signed events (Standard Webhooks).

    ``secret`` (``whsec_...``) is stored as is: the service needs it to sign every delivery, so it
    cannot be hashed like an API key. It is shown to the tenant once, when the webhook is created.
    """

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one message to one webhook, or one MLflow hand-off, inserted in the transaction
    that finished the job.

    ``channel`` says which: ``webhook`` (``webhook_id`` set) or ``mlflow`` (``mlflow_tenant_id`` set:
    log the job to that tenant's MLflow). ``id`` is the message id (the ``webhook-id`` header, the
    same on every retry); ``payload`` is the exact JSON body. ``state``: ``pending`` -> ``delivered``
    | ``failed`` (gave up). A deliverer claims a due row by moving ``next_attempt_at`` past its lease
    and stamping ``lease``.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), default="webhook", server_default="webhook")
    webhook_id: Mapped[str | None] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    mlflow_tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("mlflow_integrations.tenant_id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One try of a delivery: when, the HTTP status or the error, and when the next try is due."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class MlflowIntegration(Base):
    """A tenant's MLflow tracking server: where its succeeded jobs are logged as runs (one per tenant).

    ``token`` or ``username``/``password`` are stored as is (the hand-off sends them on every
    request) and never shown again, like a webhook's secret.
    """

    __tablename__ = "mlflow_integrations"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    tracking_uri: Mapped[str] = mapped_column(Text)
    experiment: Mapped[str] = mapped_column(String(500))
    registered_model: Mapped[str | None] = mapped_column(String(500))
    token: Mapped[str | None] = mapped_column(Text)
    username: Mapped[str | None] = mapped_column(String(500))
    password: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UiSession(Base):
    """A dashboard sign-in: an API key exchanged for a session cookie.

    Only the sha256 of the cookie's token is stored (``id``); ``csrf`` is the token every
    state-changing form must carry. Revoking the key or signing out ends the session.
    """

    __tablename__ = "ui_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class JobUnit(Base):
    """One unit of a fanned-out study job (an evaluation model, a prior, a target, an attack run,
    the report): ``pending -> queued -> running -> succeeded | failed | skipped | cancelled``.

    ``deps`` are the keys of units that must succeed first; ``attempt`` and ``heartbeat_at`` work as
    on :class:`Job` (a unit whose worker died is sent again by the reaper).
    """

    __tablename__ = "job_units"
    __table_args__ = (
        UniqueConstraint("job_id", "key"),
        Index("ix_job_units_job_id_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    deps: Mapped[list[str]] = mapped_column(JSONType, default=list)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    #: Share of the unit done (0..1), written while it runs; the job's progress weighs these.
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WorkerPresence(Base):
    """A running worker and the broker queues it consumes, refreshed by its reaper every pass.

    The API routes a job of device ``auto`` to a queue some live worker consumes, ``/readyz`` names the
    queues nobody consumes, and the reaper warns about jobs queued where no worker listens.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ReviewSession(Base):
    """One reviewer's blind review of one study's reconstructions: the trials it was drawn, in order.

    ``reviewer`` is the public id of the ``review``-scoped key that answers it (only that key sees it);
    ``settings`` keeps how the trials were drawn (trials, controls, candidates, seed).
    """

    __tablename__ = "review_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(32), index=True)
    invited_by: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    total: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ReviewTrial(Base):
    """One trial of a review session: an image (a reconstruction or a control) and candidate identities.

    ``id`` is random and says nothing; what the trial is (``kind``, ``source``, ``attack``, ``defense``,
    ``seed``, ``identity``, the candidates' identities and which one is right, the judges' answers)
    stays here and is never sent to the reviewer. ``choice`` is the candidate id answered (``none`` for
    "none of these").
    """

    __tablename__ = "review_trials"
    __table_args__ = (UniqueConstraint("session_id", "position"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("review_sessions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))  # reconstruction | control_real | control_blank
    source: Mapped[str] = mapped_column(String(500))  # the attack run's artifact, or what the control shows
    item: Mapped[int] = mapped_column(Integer)  # the image's index in that file
    attack: Mapped[str | None] = mapped_column(String(100))
    defense: Mapped[str | None] = mapped_column(String(200))
    seed: Mapped[int | None] = mapped_column(Integer)
    identity: Mapped[int | None] = mapped_column(Integer)
    candidates: Mapped[list[int]] = mapped_column(JSONType, default=list)
    right: Mapped[str | None] = mapped_column(String(8))  # the right candidate id; None: "none" is right
    judge_hits: Mapped[list[bool] | None] = mapped_column(JSONType)
    choice: Mapped[str | None] = mapped_column(String(8))
    correct: Mapped[bool | None] = mapped_column(Boolean)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditPolicy(Base):
    """An audit that runs by itself: on ``trigger`` (``model_upload``: every model uploaded to the tenant;
    ``mlflow_model_version``: every new version of ``registered_model`` in the tenant's MLflow) an
    ``attack_eval`` job of ``spec`` (without ``model``) is created for the new model. ``state`` keeps what
    the registry watcher has seen (``versions``)."""

    __tablename__ = "audit_policies"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(40))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    registered_model: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
