"""Every setting of the service, read from ``MIDRE_*`` environment variables in one place.

Two ways to run share this one ``Settings`` class:

* **embedded** (default): leave ``MIDRE_DATABASE_URL`` and ``MIDRE_BROKER_URL`` unset and everything
  (SQLite database, file-system Celery broker, artifacts, job work folders) lives under
  ``MIDRE_HOME`` (default ``~/.midre``).
* **production**: point ``MIDRE_DATABASE_URL`` at PostgreSQL and ``MIDRE_BROKER_URL`` at Redis or
  RabbitMQ, and either ``MIDRE_STORAGE_URL`` at an S3-compatible bucket (machines share nothing else; each
  keeps its own ``MIDRE_HOME`` as a bounded cache) or ``MIDRE_DATA_DIR`` at a volume every API and worker
  container mounts.

There are no default secrets: API keys are created with ``midre admin create-key`` and stored hashed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.db.session import PoolOptions

QueueName = Literal["gpu", "cpu"]


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; a ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"MIDRE_STORAGE_URL must look like s3://<bucket>/<prefix>, got scheme {parts.scheme!r}")
    if not parts.netloc:
        raise ValueError("MIDRE_STORAGE_URL names no bucket (s3://<bucket>/<prefix>)")
    if parts.query or parts.fragment:
        raise ValueError("MIDRE_STORAGE_URL takes no query or fragment")
    prefix = parts.path.strip("/")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise ValueError(f"MIDRE_STORAGE_URL has an empty, '.' or '..' path segment: {parts.path!r}")
    return parts.netloc, prefix


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".midre"


class Settings(BaseSettings):
    """The service configuration (env prefix ``MIDRE_``; see ``docs/service.md`` for the table)."""

    model_config = SettingsConfigDict(env_prefix="MIDRE_", extra="ignore", env_file=None)

    home: Path = Field(default_factory=_default_home, description="Embedded mode's data folder.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///$MIDRE_HOME/midre.sqlite3."
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL (redis://, amqp://); default a file-system broker under "
        "$MIDRE_HOME/broker.",
    )
    data_dir: Path | None = Field(
        None, description="Artifacts, datasets and job work folders; default $MIDRE_HOME/data."
    )
    storage_url: str | None = Field(
        None, description="s3://<bucket>/<prefix>: artifacts, uploads, datasets and job working files in an "
        "S3-compatible object store, this machine's data folder only a bounded cache (credentials from the AWS "
        "chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION, a profile or a role); unset: the "
        "data folder is the store.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Address of an S3-compatible server (MinIO, Ceph, a cloud's S3 API); unset: AWS S3."
    )
    cache_max_bytes: int = Field(
        20 * 1024**3, ge=1, description="With MIDRE_STORAGE_URL: bytes of stored files this machine keeps in its "
        "cache (least recently read evicted first).",
    )
    s3_multipart_bytes: int = Field(
        64 * 1024**2, ge=5 * 1024**2, description="Files larger than this go to and from the object store in parts "
        "of this size.",
    )
    s3_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Connect and read timeout of one object-store request (3 tries with back-off)."
    )
    s3_presigned_downloads: bool = Field(
        False, description="Answer artifact downloads with a redirect (307) to a presigned object-store URL instead "
        "of streaming them through the API (clients must reach MIDRE_S3_ENDPOINT_URL).",
    )
    s3_presign_s: int = Field(300, ge=10, le=7 * 24 * 3600, description="Lifetime of a presigned download URL.")
    sync_every_s: float = Field(
        60.0, gt=0, description="With MIDRE_STORAGE_URL: how often a running unit sends its new files (resume "
        "state after each epoch included) to the object store, so that another machine resumes it if this one is lost.",
    )
    worker_devices: int | None = Field(
        None, ge=1, le=1024,
        description="Devices this machine's workers offer to training units with `training.devices` > 1 (a unit "
        "waits for that many free ones); default the visible CUDA devices, on a CPU machine its cores.",
    )
    unit_retry_s: float = Field(
        10.0, ge=0, description="Delay before a unit that met a transient failure (object store unreachable, a "
        "lost training process) runs again; it counts against MIDRE_MAX_ATTEMPTS.",
    )
    broker_prefix: str = Field(
        "", description="Prefix of queue names (and of Redis keys) so several stacks share a broker."
    )
    auto_queue: QueueName = Field("gpu", description="Queue of jobs whose spec says device 'auto'.")
    visibility_timeout_s: int = Field(
        48 * 3600, ge=60, description="Redis visibility timeout; must exceed the longest job."
    )
    worker_max_tasks_per_child: int = Field(20, ge=1, description="Recycle a worker child after N jobs.")
    worker_threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch threads of each job a worker runs; default the machine's cores divided by the worker "
        "processes on it (`midre serve --workers N`; a lone `midre worker`: by its --concurrency), at least 1.",
    )
    inception_weights: Path | None = Field(
        None, description="torchvision inception_v3 weights (safetensors) the workers use to add FID and "
        "precision/recall/density/coverage in Inception-v3 space to every audit; unset: judge features only.",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="How often a running job writes its heartbeat.")
    stale_after_s: float = Field(
        120.0, gt=0, description="A running job whose heartbeat is older than this is re-queued."
    )
    reaper_interval_s: float = Field(30.0, gt=0, description="How often workers look for stale jobs.")
    audit_poll_s: float = Field(60.0, gt=0, description="How often workers read the MLflow model registries that "
                                "audit policies watch (trigger mlflow_model_version) for new versions.")
    unserved_warn_s: float = Field(
        60.0, gt=0, description="A job queued this long where no live worker listens gets a `warning` event "
        "(`no_worker`) from any live worker's reaper.",
    )
    redispatch_after_s: float = Field(
        300.0,
        gt=0,
        description="A queued job whose message no worker picked up within this many seconds, while the broker "
        "holds fewer messages than there are queued jobs (a message was lost), is sent again.",
    )
    max_attempts: int = Field(3, ge=1, description="Give up on a job after this many worker losses.")
    cancel_poll_s: float = Field(1.0, ge=0, description="Seconds between DB reads of the cancel flag.")
    max_upload_bytes: int = Field(512 * 1024**2, ge=1, description="Largest dataset archive accepted.")
    max_json_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest JSON body of a spec, key, policy or webhook request (413 past it)."
    )
    max_active_jobs: int = Field(100, ge=1, description="Queued + running jobs one tenant may have (429 past it).")
    max_study_runs: int = Field(
        200, ge=1, description="Most attack runs (seeds x defenses x attacks) in one study (429 past it)."
    )
    max_storage_bytes: int = Field(
        50 * 1024**3, ge=1, description="Bytes one tenant's datasets and job artifacts may hold (429 past it)."
    )
    max_model_bytes: int = Field(
        1024**3, ge=1, description="Largest model file accepted by POST /v1/models (safetensors weights)."
    )
    max_model_classes: int = Field(
        100_000, ge=2, description="Most classes (identities) of a model uploaded to POST /v1/models (422 past it)."
    )
    max_model_image_size: int = Field(
        512, ge=16, le=4096,
        description="Largest input side of an uploaded model, in pixels (422 past it): every predict and attack "
        "on the model costs in proportion to its square.",
    )
    max_archive_files: int = Field(
        200_000, ge=1, description="Most entries an archive may hold; counted from its member list before anything "
        "is extracted.",
    )
    upload_workers: int = Field(
        2, ge=1, le=64,
        description="Uploads (dataset archives, models) checked at once per API process, in worker threads; "
        "more wait their turn. The event loop never runs this work.",
    )
    orphan_grace_s: float = Field(
        3600.0, gt=0,
        description="Age after which a partial upload, an extraction folder without its dataset or a stored file "
        "no artifact refers to is deleted (by the reaper, and when the API starts). A partial upload whose API "
        "process is gone is deleted at once.",
    )
    max_extracted_bytes: int = Field(
        4 * 1024**3, ge=1, description="Most bytes an archive may expand to (zip-bomb guard)."
    )
    dataset_paths: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Server-side folders a dataset may reference (comma-separated list).",
    )
    metrics_token: str | None = Field(
        None,
        description="Bearer token of GET /metrics; without it /metrics shows only aggregate series "
        "(no job or API-key ids).",
    )
    job_cache_s: float = Field(
        1.0, ge=0, description="Seconds GET /v1/jobs/{id} answers from this process's cache (0 disables); a "
        "job's status and progress are at most this old."
    )
    auth_cache_s: float = Field(
        5.0, ge=0, description="Seconds a checked API key is remembered (a revoked key works that long)."
    )
    ui_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="Hours a dashboard sign-in (/ui/) lasts before the key must be given again."
    )
    auto_migrate: bool = Field(True, description="Apply Alembic migrations when the API starts.")
    db_pool_size: int = Field(10, ge=1, le=1000, description="Pooled connections per process (PostgreSQL).")
    db_max_overflow: int = Field(20, ge=0, le=1000, description="Extra connections beyond the pool under load.")
    db_pool_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a request waits for a connection before it answers 503."
    )
    webhooks_allow_private: bool = Field(
        False,
        description="Let webhooks target loopback, private, link-local and other non-public addresses "
        "(refused by default, at registration and at every delivery).",
    )
    webhooks_max_attempts: int = Field(8, ge=1, le=50, description="Tries of a webhook delivery before giving up.")
    webhooks_base_delay_s: float = Field(
        30.0, gt=0, description="Back-off before the 2nd try; it doubles after each failed try (capped at 6 h)."
    )
    webhooks_timeout_s: float = Field(10.0, gt=0, le=300, description="Seconds one webhook request may take.")
    webhooks_poll_s: float = Field(2.0, gt=0, description="How often a deliverer looks for due webhook deliveries.")
    webhooks_in_api: bool = Field(
        True, description="Run a webhook deliverer in each API process too (every worker runs one)."
    )
    mlflow_allow_private: bool = Field(
        False,
        description="Let a tenant's MLflow tracking_uri be a loopback, private or other non-public address "
        "(refused by default, when it is set and before every hand-off).",
    )
    mlflow_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Seconds one request of an MLflow hand-off may take (an upload included)."
    )

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parse_storage_url(value)
        return value

    @field_validator("dataset_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @property
    def embedded(self) -> bool:
        """True when no external broker is configured (file-system transport under ``home``)."""
        return self.broker_url is None

    @property
    def db_url(self) -> str:
        """The database URL actually used."""
        return self.database_url or f"sqlite:///{self.home / 'midre.sqlite3'}"

    @property
    def broker(self) -> str:
        """The broker URL actually used."""
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded file-system broker."""
        return self.home / "broker"

    @property
    def storage_dir(self) -> Path:
        """Root of artifacts, datasets and job work folders (with MIDRE_STORAGE_URL: this machine's cache)."""
        return self.data_dir or (self.home / "data")

    @property
    def pool(self) -> PoolOptions:
        """The database connection pool of this process."""
        return PoolOptions(self.db_pool_size, self.db_max_overflow, self.db_pool_timeout_s)

    def queue_name(self, queue: QueueName) -> str:
        """The broker queue name of the logical ``gpu``/``cpu`` queue."""
        return f"{self.broker_prefix}{queue}"

    def ensure_dirs(self) -> None:
        """Create the local folders this configuration writes to."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.db_url.startswith("sqlite:///"):
            Path(self.db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            for sub in ("queue", "processed", "control"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
