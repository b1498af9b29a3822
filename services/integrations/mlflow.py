"""The MLflow hand-off: log a succeeded job to its tenant's MLflow server as a run, and register the
model it produced.

The hand-off is a row of the webhook outbox (``channel = 'mlflow'``, written by
:func:`services.db.mlflow.enqueue_job_end` with the job's final status); the webhook deliverer claims
it like a webhook message and calls :func:`log_job` once per try, so leases, back-off
(``MIDRE_WEBHOOKS_BASE_DELAY_S``), the number of tries (``MIDRE_WEBHOOKS_MAX_ATTEMPTS``) and the try
log are the webhooks' own. Each try also leaves a ``log`` event on the job (:func:`event_message`).

One try, with the ``mlflow`` package's REST stores (``mlflow-skinny``, the ``mlflow`` extra):

1. the tracking URI is checked like a webhook URL (:func:`services.integrations.webhooks.check_target`,
   which the deliverer passes in; ``MIDRE_MLFLOW_ALLOW_PRIVATE`` lets it be internal); redirects are
   not followed and the client's own retries are off (the outbox retries);
2. the experiment is found or created; the run of this hand-off is found by its tag
   ``midre.handoff`` (a retry after a half-done try reuses it) or created, named after the job;
3. params = the job's resolved config flattened (``training.epochs``-style keys), metrics = its
   final metrics, tags = job id, kind, defense, ``a_h``;
4. artifacts = ``report.html``, ``report.json``, ``model.json`` when the job has them, and the model
   files (``model/model.safetensors`` + ``model/model.json``) of a job that produced a model, read
   from the artifact store and uploaded through the server's artifact proxy
   (``/api/2.0/mlflow-artifacts``; a server whose runs store artifacts elsewhere is refused rather
   than letting the server name where the worker writes);
5. the run is marked ``FINISHED``; with a ``registered_model``, a new version of it points at the
   run's ``model`` folder, tagged with the defense, ``a_h`` and AttAcc per attack, and the alias
   ``hardened`` moves to it.

When people finish reviewing a study's reconstructions (``services.ops.human``), a follow-up row
(``mlflow.human``) adds the human figures (``<defense>.<attack>.human_attacc_top1`` with its interval,
``human_kappa``) and the refreshed ``report.json`` / ``report.html`` to the job's existing run (found by
its ``midre.job_id`` tag; retried until that run exists), registers nothing, and puts
``human_attacc.<attack>`` on the audited model's version for an ``attack_eval`` job.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.mlflow import AUDIT_EVENT, HUMAN_EVENT
from services.db.models import Artifact, Job, Metric, MlflowIntegration, WebhookDelivery
from services.integrations.outbound import Result, TargetCheck, UnsafeTarget
from services.jobspec import get_kind
from services.ops.models import card_name
from services.redact import server_redactor
from services.settings import Settings
from services.storage import LocalStore, open_store

log = logging.getLogger(__name__)

#: The alias that moves to each new version of the tenant's registered model.
ALIAS = "hardened"
#: Artifacts of a job copied to the root of its run, when it has them.
RUN_ARTIFACTS = ("report.html", "report.json", "model.json")
#: Where the model files go inside the run (and what the model version points at).
MODEL_DIR = "model"
#: Tag of the run that holds this hand-off's message id (a retry finds its run again).
HANDOFF_TAG = "midre.handoff"
#: Entities per ``log-batch`` request (MLflow accepts at most 100 params and 1000 entities).
BATCH = 100
_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def check_uri(uri: str, allow_private: bool, check_target: TargetCheck) -> str:
    """The tracking URI a tenant may configure (no trailing ``/``), or :class:`UnsafeTarget`.

    ``check_target`` is the webhooks' target check (``http``/``https``, every address public unless
    ``allow_private``); on top of it, no user name, password, query or fragment in the URL:
    credentials go in their own fields, which are never shown again.
    """
    check_target(uri, allow_private, "MIDRE_MLFLOW_ALLOW_PRIVATE")
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("put credentials in `username`/`password` or `token`, not in the URL")
    if parts.query or parts.fragment:
        raise UnsafeTarget("the URL may not have a query or a fragment")
    return uri.rstrip("/")


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"training": {"epochs": 2}, "defenses": [{"name": "midre"}]}`` -> ``{"training.epochs": "2",
    "defenses.0.name": "midre"}``: strings as they are, other leaves as JSON (``null``, ``true``, ``0.4``);
    a list of plain values stays one param (``[0.75, 0.9]``)."""
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple) and any(isinstance(v, dict | list | tuple) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}"))
        return out
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return {prefix: text}


def mlflow_key(name: str) -> str:
    """A param, metric or tag name MLflow accepts (letters, digits, ``_-. /``; others become ``_``)."""
    return _KEY_CHARS.sub("_", name)[:250]


def _ms(when: dt.datetime | None) -> int:
    return int((when or dt.datetime.now(dt.UTC)).timestamp() * 1000)


def _chunks(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Handoff:
    """Everything one try sends, read from the database before any request is made."""

    message_id: str
    job_id: str
    kind: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    tracking_uri: str
    experiment: str
    registered_model: str | None
    token: str | None
    username: str | None
    password: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    #: What to upload: (sha256 in the artifact store, path in the run).
    files: list[tuple[str, str]]
    #: The card (``model.json``) of the model the job produced, if any.
    model_card: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)
    #: An ``attack_eval`` job: the model it attacked, and the AttAcc tags its registered version gets.
    attacked_job: str | None = None
    attacked_tags: dict[str, str] = field(default_factory=dict)
    #: A follow-up with the human figures (:data:`services.db.mlflow.HUMAN_EVENT`): to the job's own run.
    human: bool = False
    #: An audit of a registered version (:data:`services.db.mlflow.AUDIT_EVENT`): ``(model, version)`` and
    #: the tags it gets.
    audited_version: tuple[str, str] | None = None


def _defense(card: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    """The defense of the model (its card) or of the job's config (``defense``, or the first defense
    of a study that is not ``nodef``)."""
    if card and isinstance(card.get("defense"), dict):
        return card["defense"]
    if isinstance(config.get("defense"), dict):
        return config["defense"]
    defended = [d for d in config.get("defenses") or [] if isinstance(d, dict) and d.get("name") != "nodef"]
    return defended[0] if defended else {}


def _a_h(defense: dict[str, Any]) -> Any:
    """MIDRE's ``a_h`` of a defense, also inside a composed one (``{"name": "midre+nls", "midre": {...}}``)."""
    if "a_h" in defense:
        return defense["a_h"]
    params = defense.get("params")
    if isinstance(params, dict) and "a_h" in params:
        return params["a_h"]
    for part in defense.values():
        if isinstance(part, dict) and "a_h" in part:
            return part["a_h"]
    return None


def load(sessions: sessionmaker[Session], store: LocalStore, settings: Settings, message_id: str) -> Handoff | None:
    """Read what a hand-off sends: the tenant's MLflow settings, the job, its metrics and artifacts.

    ``None`` when the row, its integration or its job is gone (the integration was deleted).
    """
    found = _read(sessions, message_id)
    if found is None:
        return None
    handoff, job, artifacts, resolved_config = found
    ids = attack_id_tags(store, artifacts)
    if handoff.audited_version is not None:
        handoff.version_tags = {**audit_tags(handoff.job_id, handoff.metrics, handoff.attacked_tags), **ids}
        return handoff
    if handoff.human:  # only what people added: their figures and the report that now holds them
        handoff.metrics = {k: v for k, v in handoff.metrics.items() if ".human_" in k}
        handoff.files = [(artifacts[name], name) for name in ("report.html", "report.json") if name in artifacts]
        _tag(handoff, job, resolved_config, None)
        return handoff
    redact = server_redactor(settings)
    handoff.params = {mlflow_key(k): redact(v)[:6000] for k, v in flatten(resolved_config).items()}
    handoff.files = [(artifacts[name], name) for name in RUN_ARTIFACTS if name in artifacts]
    label = _attach_model(handoff, store, job.kind, artifacts)
    _tag(handoff, job, resolved_config, label)
    handoff.tags.update(ids)  # which implementation and settings made each AttAcc
    return handoff


@dataclass(frozen=True)
class _JobFacts:
    """The few fields of the job row that the tags need once its session is closed."""

    id: str
    kind: str
    spec: dict[str, Any]


def _read(sessions: sessionmaker[Session], message_id: str
          ) -> tuple[Handoff, _JobFacts, dict[str, str], dict[str, Any]] | None:
    """The hand-off's rows, in one session: the :class:`Handoff` without params, files or tags, the
    job, its artifacts (name -> sha256) and its resolved config; ``None`` when a row is gone."""
    with sessions() as session:
        row = session.get(WebhookDelivery, message_id)
        config = session.get(MlflowIntegration, row.mlflow_tenant_id) if row and row.mlflow_tenant_id else None
        job = session.get(Job, row.job_id) if row and row.job_id else None
        if row is None or config is None or job is None:
            return None
        metrics = {m.name: m.value for m in session.scalars(
            select(Metric).where(Metric.job_id == job.id, Metric.epoch.is_(None)).order_by(Metric.id))}
        artifacts = {a.name: a.sha256 for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
        handoff = Handoff(
            message_id=message_id, job_id=job.id, kind=job.kind, started_at=job.started_at,
            finished_at=job.finished_at, tracking_uri=config.tracking_uri, experiment=config.experiment,
            registered_model=config.registered_model, token=config.token, username=config.username,
            password=config.password, params={}, metrics=metrics, files=[], human=row.event_type == HUMAN_EVENT,
        )
        trigger = job.trigger or {}
        if row.event_type == AUDIT_EVENT and trigger.get("mlflow_version"):
            handoff.audited_version = (str(trigger.get("model_name")), str(trigger["mlflow_version"]))
            handoff.attacked_tags = {"regressed": json.dumps(trigger.get("regressed") or [])}
        facts = _JobFacts(job.id, job.kind, dict(job.spec or {}))
        return handoff, facts, artifacts, (job.resolved or {}).get("config") or {}


def _attach_model(handoff: Handoff, store: LocalStore, kind: str, artifacts: dict[str, str]) -> str | None:
    """Add the job's model (card and weights) to the files and read its card; returns the label of the
    defense whose metrics describe it (a pipeline's target, a harden job's recommendation), if any.

    Which model: the job kind's ``mlflow_model`` (:mod:`services.jobspec`): its own ``model.json`` (a train
    job's; a harden job's recommendation, when there is one) or a study's defended target.
    """
    job_kind = get_kind(kind)
    card_file = card_name(kind, list(artifacts))
    weights = card_file.removesuffix("model.json") + "model.safetensors" if card_file else None
    label = card_file.split("/")[1] if card_file and card_file.startswith("targets/") else None
    if card_file and weights in artifacts:
        with store.open(artifacts[card_file]) as fh:
            handoff.model_card = json.load(fh)
        handoff.files += [(artifacts[card_file], f"{MODEL_DIR}/model.json"),
                          (artifacts[weights], f"{MODEL_DIR}/model.safetensors")]
    if job_kind.model == "recommended" and card_file and "report.json" in artifacts:
        with store.open(artifacts["report.json"]) as fh:  # the recommended candidate's metric rows
            label = str((json.load(fh).get("recommendation") or {}).get("defense") or "") or None
    return label


def _tag(handoff: Handoff, job: _JobFacts, resolved_config: dict[str, Any], label: str | None) -> None:
    """The run's tags, the model version's tags, and AttAcc per attack where the job measured it."""
    defense = _defense(handoff.model_card, resolved_config)
    a_h = _a_h(defense)
    handoff.tags = {"midre.job_id": job.id, "midre.kind": job.kind, HANDOFF_TAG: handoff.message_id,
                    "mlflow.source.name": "midre", "mlflow.source.type": "JOB"}
    if defense.get("name"):
        handoff.tags["midre.defense"] = str(label or defense["name"])
    if a_h is not None:
        handoff.tags["midre.a_h"] = json.dumps(a_h)
    handoff.version_tags = {k.removeprefix("midre."): v for k, v in handoff.tags.items()
                            if k in ("midre.job_id", "midre.defense", "midre.a_h")}
    # AttAcc per attack, when the job measured it: ``<defense>.<attack>.attacc_top1`` (a study).
    attacc = {}
    for name, value in handoff.metrics.items():
        owner, _, rest = name.rpartition(".")[0].rpartition(".")  # a defense label may hold dots (a_h0.8)
        if name.endswith(".attacc_top1") and owner and (label is None or owner == label):
            attacc[mlflow_key(f"attacc.{rest}")] = f"{value:g}"
        elif name.endswith(".human_attacc_top1") and owner and (label is None or owner == label):
            attacc[mlflow_key(f"human_attacc.{rest}")] = f"{value:g}"
    if get_kind(job.kind).audits:
        handoff.attacked_job = job.spec.get("model") or job.spec.get("model_job")
        handoff.attacked_tags = attacc
        if handoff.attacked_job:
            handoff.tags["midre.model_job"] = str(handoff.attacked_job)
    else:
        handoff.version_tags.update(attacc)


def configure_client(settings: Settings) -> None:
    """The ``mlflow`` client's process-wide knobs: no redirects (a server cannot send us elsewhere),
    no retries of its own (the outbox retries with back-off), ``MIDRE_MLFLOW_TIMEOUT_S`` per request."""
    os.environ["MLFLOW_ALLOW_HTTP_REDIRECTS"] = "false"
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(settings.mlflow_timeout_s)))


class ArtifactLocationRefused(RuntimeError):
    """The MLflow server keeps this run's artifacts where MIDRE cannot upload them over HTTP."""


def _artifact_root(artifact_uri: str) -> str:
    """The run's folder under the server's artifact proxy, from ``mlflow-artifacts:/1/<run>/artifacts``.

    A run whose artifacts live at a path or bucket of the server's own (an experiment created while the
    server ran with ``--default-artifact-root <path>``) is refused: MIDRE uploads through the server only
    and never writes to a path a server names.
    """
    parts = urlsplit(artifact_uri)
    if parts.scheme != "mlflow-artifacts":
        raise ArtifactLocationRefused(
            f"the MLflow server keeps this run's artifacts at {artifact_uri!r}, outside its artifact proxy, so "
            "they cannot be uploaded over HTTP: start the server with `--serve-artifacts --artifacts-destination "
            "<path or bucket>` (not `--default-artifact-root`) and configure a new experiment name (an "
            "experiment keeps the artifact location it was created with)")
    return parts.path.strip("/")


def send(settings: Settings, store: LocalStore, handoff: Handoff, check_target: TargetCheck) -> str:
    """Log ``handoff`` to its MLflow server; returns what was done (``logged run ...``). Raises on failure.

    ``check_target`` re-checks the tracking URI's addresses at every try (a DNS answer may change).
    """
    from mlflow.entities import RunStatus
    from mlflow.store.model_registry.rest_store import RestStore as RegistryStore
    from mlflow.store.tracking.rest_store import RestStore as TrackingStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    uri = check_uri(handoff.tracking_uri, settings.mlflow_allow_private, check_target)
    configure_client(settings)
    creds = MlflowHostCreds(host=uri, token=handoff.token or None,
                            username=None if handoff.token else handoff.username,
                            password=None if handoff.token else handoff.password)
    tracking = TrackingStore(lambda: creds)
    if handoff.audited_version is not None:
        return _tag_version(RegistryStore(lambda: creds), handoff)
    if handoff.human:
        return _send_human(tracking, RegistryStore(lambda: creds), creds, store, handoff)
    run = _find_or_create_run(tracking, handoff)
    run_id = run.info.run_id
    stamp = _ms(handoff.finished_at)
    try:
        _log_values(tracking, run_id, handoff, stamp)
        _upload_files(creds, store, handoff, _artifact_root(run.info.artifact_uri))
    except Exception:
        _mark_failed(tracking, run_id)  # a later try that succeeds finishes the same run
        raise
    tracking.update_run_info(run_id, RunStatus.FINISHED, stamp, None)
    done = f"logged run {run_id} in experiment {handoff.experiment!r}"
    if handoff.registered_model and handoff.model_card is not None:
        version, moved = _register(RegistryStore(lambda: creds), handoff, run_id,
                                   f"{run.info.artifact_uri}/{MODEL_DIR}")
        done += f"; {handoff.registered_model!r} version {version}" + (f" is {ALIAS!r}" if moved else
                                                                          f" (a newer version is {ALIAS!r})")
    if handoff.registered_model and handoff.attacked_job and handoff.attacked_tags:
        tagged = _tag_attacked(RegistryStore(lambda: creds), handoff)
        if tagged:
            done += f"; AttAcc tagged on {handoff.registered_model!r} version {tagged}"
    return done


def attack_id_tags(store: LocalStore, artifacts: dict[str, str]) -> dict[str, str]:
    """``midre.attack_id.<attack>``: the versioned id of each attack of the job's report (none without one)."""
    if "report.json" not in artifacts:
        return {}
    try:
        with store.open(artifacts["report.json"]) as fh:
            rows = json.load(fh).get("results") or []
    except (OSError, ValueError):
        return {}
    return {mlflow_key(f"midre.attack_id.{row['attack']}"): str(row["attack_id"]) for row in rows
            if isinstance(row, dict) and row.get("attack_id") and row.get("attack")}


def audit_tags(job_id: str, metrics: dict[str, float], extra: dict[str, str]) -> dict[str, str]:
    """The tags an audited registered version gets: ``midre.attacc_top1.<attack>`` (pooled, %), the job and
    ``midre.verdict``: ``regressed: <attacks>`` or ``audited``."""
    tags = {"midre.audit_job": job_id}
    for name, value in metrics.items():
        if name.endswith(".attacc_top1"):
            attack = name[: -len(".attacc_top1")].rpartition(".")[2]
            tags[mlflow_key(f"midre.attacc_top1.{attack}")] = f"{value:g}"
    regressed = [r.get("attack") for r in json.loads(extra.get("regressed") or "[]")]
    tags["midre.verdict"] = f"regressed: {', '.join(regressed)}" if regressed else "audited"
    return tags


def _tag_version(registry: Any, handoff: Handoff) -> str:
    """Put an audit's figures and verdict on the registered version it audited."""
    from mlflow.entities.model_registry import ModelVersionTag

    name, version = handoff.audited_version  # type: ignore[misc]
    for key, value in handoff.version_tags.items():
        registry.set_model_version_tag(name, version, ModelVersionTag(key, value))
    return f"tagged {name!r} version {version}: {handoff.version_tags.get('midre.verdict')}"


def _send_human(tracking: Any, registry: Any, creds: Any, store: LocalStore, handoff: Handoff) -> str:
    """A follow-up: the human figures and the refreshed report into the job's own run (no new run, no
    new version); for an audit, ``human_attacc.<attack>`` on the audited model's version."""
    from mlflow.entities import ViewType

    experiment = tracking.get_experiment_by_name(handoff.experiment)
    found = tracking.search_runs([experiment.experiment_id], f"tags.`midre.job_id` = '{handoff.job_id}'",
                                 ViewType.ACTIVE_ONLY, max_results=1) if experiment is not None else []
    if not found:
        raise RuntimeError(f"the run of job {handoff.job_id} is not in experiment {handoff.experiment!r} yet "
                           "(its own hand-off has not succeeded); the human figures follow it")
    run = found[0]
    _log_values(tracking, run.info.run_id, handoff, int(time.time() * 1000))
    _upload_files(creds, store, handoff, _artifact_root(run.info.artifact_uri))
    done = f"added the human review figures to run {run.info.run_id}"
    if handoff.registered_model and handoff.attacked_job and handoff.attacked_tags:
        tagged = _tag_attacked(registry, handoff)
        if tagged:
            done += f"; human AttAcc tagged on {handoff.registered_model!r} version {tagged}"
    return done


def _mark_failed(tracking: Any, run_id: str) -> None:
    """The run shows ``FAILED`` in MLflow while the hand-off waits for its next try (best effort)."""
    from mlflow.entities import RunStatus

    try:
        tracking.update_run_info(run_id, RunStatus.FAILED, int(time.time() * 1000), None)
    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
        log.warning("could not mark MLflow run %s failed: %s", run_id, exc)


def _already_exists(exc: Any) -> bool:
    """Whether an ``MlflowException`` says the thing to create exists already (another try made it)."""
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    return bool(exc.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS))


def _find_or_create_run(tracking: Any, handoff: Handoff) -> Any:
    """The run of this hand-off: found by its ``midre.handoff`` tag (a retry after a half-done try), else
    created, named after the job, in the experiment (created if missing)."""
    from mlflow.entities import RunTag, ViewType
    from mlflow.exceptions import MlflowException

    experiment = tracking.get_experiment_by_name(handoff.experiment)
    if experiment is None:
        try:
            experiment_id = tracking.create_experiment(handoff.experiment)
        except MlflowException as exc:  # another deliverer created it in between
            if not _already_exists(exc):
                raise
            experiment_id = tracking.get_experiment_by_name(handoff.experiment).experiment_id
    else:
        experiment_id = experiment.experiment_id
    found = tracking.search_runs([experiment_id], f"tags.`{HANDOFF_TAG}` = '{handoff.message_id}'",
                                 ViewType.ACTIVE_ONLY, max_results=1)
    if found:
        return found[0]
    return tracking.create_run(experiment_id, "midre", _ms(handoff.started_at),
                               [RunTag(k, v) for k, v in handoff.tags.items()], handoff.job_id)


def _log_values(tracking: Any, run_id: str, handoff: Handoff, stamp: int) -> None:
    """Params and metrics in batches MLflow accepts."""
    from mlflow.entities import Metric as MlMetric
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in handoff.params.items()]
    metrics = [MlMetric(mlflow_key(k), v, stamp, 0) for k, v in handoff.metrics.items()]
    for chunk in _chunks(params):
        tracking.log_batch(run_id, [], chunk, [])
    for chunk in _chunks(metrics):
        tracking.log_batch(run_id, chunk, [], [])


def _upload_files(creds: Any, store: LocalStore, handoff: Handoff, root: str) -> None:
    """Stream each file from the artifact store to the run's folder behind the server's artifact proxy."""
    from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

    for sha256, path in handoff.files:
        with store.open(sha256) as fh:
            response = http_request(creds, f"{_ARTIFACTS_API}/{quote(f'{root}/{path}')}", "PUT", data=fh,
                                    extra_headers={"Content-Type": "application/octet-stream"})
        augmented_raise_for_status(response)


def _tag_attacked(registry: Any, handoff: Handoff) -> str | None:
    """Put an ``attack_eval`` job's AttAcc on the version registered for the model it attacked (found by
    its ``job_id`` tag); the version number, or ``None`` when that model was never registered."""
    from mlflow.entities.model_registry import ModelVersionTag

    name = handoff.registered_model
    page_token = None
    while True:
        page = registry.search_model_versions(f"name = '{name}'", max_results=1000, page_token=page_token)
        for version in page:
            if (version.tags or {}).get("job_id") == handoff.attacked_job:
                for key, value in handoff.attacked_tags.items():
                    registry.set_model_version_tag(name, version.version, ModelVersionTag(key, value))
                return str(version.version)
        page_token = page.token
        if not page_token:
            return None


def _register(registry: Any, handoff: Handoff, run_id: str, source: str) -> tuple[str, bool]:
    """A version of the registered model for ``run_id`` (found again on a retry, else created), with
    the alias moved to it unless a newer version holds it; returns the version number and whether the
    alias moved."""
    from mlflow.entities.model_registry import ModelVersionTag
    from mlflow.exceptions import MlflowException

    name = handoff.registered_model
    try:
        registry.create_registered_model(name)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    existing = registry.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = existing[0].version
    else:
        tags = [ModelVersionTag(k, v) for k, v in handoff.version_tags.items()]
        version = registry.create_model_version(name, source, run_id=run_id, tags=tags).version
    try:
        current = int(registry.get_model_version_by_alias(name, ALIAS).version)
    except MlflowException:
        current = 0  # no version holds the alias yet
    moved = current <= int(version)  # a late retry of an older hand-off does not move the alias back
    if moved:
        registry.set_registered_model_alias(name, ALIAS, str(version))
    return str(version), moved


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a connection error or a timeout, not an answer."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        text = str(seen)
        if "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def log_job(settings: Settings, sessions: sessionmaker[Session], message_id: str,
            check_target: TargetCheck) -> Result:
    """One try of the hand-off ``message_id``: a :class:`Result` (``status_code`` 200 when every request
    succeeded, ``detail`` says what was logged; else ``status_code`` None and ``error`` says why not).
    Never raises. ``check_target`` is the webhooks' address filter, applied to the tracking URI."""
    started = time.perf_counter()
    store = open_store(settings)

    def done(status: int | None, error: str | None, detail: str | None = None) -> Result:
        return Result(status, error, round((time.perf_counter() - started) * 1000, 1), detail)

    try:
        handoff = load(sessions, store, settings, message_id)
    except Exception as exc:  # noqa: BLE001 - a broken row must use up its tries, not kill the deliverer
        return done(None, f"internal error: {type(exc).__name__}")
    if handoff is None:
        return done(None, "the MLflow integration or the job was deleted")
    redact = server_redactor(settings)
    try:
        return done(200, None, send(settings, store, handoff, check_target))
    except UnsafeTarget as exc:
        return done(None, f"refused: {exc}")
    except ImportError as exc:
        return done(None, f"the MLflow client is not installed here (pip install 'midre[mlflow]'): {exc}")
    except Exception as exc:  # noqa: BLE001 - every failure is a failed try, retried by the outbox
        if _unreachable(exc):
            return done(None, f"unreachable: {redact(str(exc))}"[:500])
        # No status code: MLflow's exceptions carry an error code mapped to one, not the answer's own.
        return done(None, redact(f"{type(exc).__name__}: {exc}")[:500])


def event_message(result: Result, state: str, attempt: int, next_at: dt.datetime | None) -> str:
    """The job's ``log`` event for one try: ``mlflow: logged run ...``, ``mlflow: unreachable,
    retrying in 30 s (try 1): ...``, ``mlflow: <error>; retrying in 60 s (try 2)``, or ``mlflow: gave up
    after 8 tries: ...``."""
    if result.ok:
        return f"mlflow: {result.detail or 'logged'}"
    error = result.error or "failed"
    if next_at is not None and state == "pending":
        wait = max(0.0, (next_at - dt.datetime.now(dt.UTC)).total_seconds())
        head, _, rest = error.partition(": ")
        if head in ("unreachable", "refused"):
            return f"mlflow: {head}, retrying in {wait:.0f} s (try {attempt}): {rest}"[:1000]
        return f"mlflow: {error}; retrying in {wait:.0f} s (try {attempt})"[:1000]
    return f"mlflow: gave up after {attempt} tries: {error}"[:1000]
