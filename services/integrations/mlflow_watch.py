"""Audit every new version of a model registered in the tenant's MLflow (audit policies with the trigger
``mlflow_model_version``).

The workers' reaper calls :func:`watch` every ``MIDRE_AUDIT_POLL_S`` seconds: the registry is polled, which
needs no address the MLflow server can reach (its model-registry webhooks are not used). For each such policy it lists
the versions of ``registered_model`` on the tenant's MLflow server (``PUT /v1/integrations/mlflow``:
the same address checks and credentials as the hand-off), and for each version registered since the
policy was made and not seen yet:

1. downloads ``model.json`` and ``model.safetensors`` from the version's ``model`` folder through the
   server's artifact proxy (size-capped like an upload; never a pickle);
2. checks and stores them exactly like an upload to ``POST /v1/models`` (the card's architecture,
   classes and input shape; the weights against the architecture), named after the registered model;
3. submits the policy's audit of it, with ``trigger`` naming the policy, the event, the model and the
   MLflow version.

When that audit finishes, the version gets MLflow tags (``midre.attacc_top1.<attack>``,
``midre.verdict``, ``midre.audit_job``) through the outbox (:mod:`services.integrations.mlflow`), and the
webhooks ``audit.completed`` / ``audit.regressed`` as for any policy's audit. A version that cannot be
imported is remembered with the reason (``GET /v1/audit-policies/{id}`` → ``state``) and not retried.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import AuditPolicy, MlflowIntegration
from services.integrations.outbound import TargetCheck
from services.jobspec import UPLOAD
from services.ops.audit_policies import start_audit
from services.ops.context import ServiceContext, TenantRef
from services.ops.errors import ApiError
from services.ops.models import check_upload, store_model

log = logging.getLogger(__name__)

TRIGGER = "mlflow_model_version"
#: Card fields an imported model keeps (what an upload's card holds).
CARD_FIELDS = ("arch", "class_names", "image_size", "channels", "normalization", "num_classes", "defense")
_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def _creds(ctx: ServiceContext, row: MlflowIntegration, check_target: TargetCheck) -> Any:
    from mlflow.utils.rest_utils import MlflowHostCreds

    from services.integrations.mlflow import check_uri, configure_client

    uri = check_uri(row.tracking_uri, ctx.settings.mlflow_allow_private, check_target)
    configure_client(ctx.settings)
    return MlflowHostCreds(host=uri, token=row.token or None, username=None if row.token else row.username,
                           password=None if row.token else row.password)


def _download(creds: Any, root: str, name: str, dest: Path, limit: int) -> None:
    """One file of the version's folder to ``dest``, streamed, refused past ``limit`` bytes."""
    from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

    response = http_request(creds, f"{_ARTIFACTS_API}/{quote(f'{root}/{name}')}", "GET", stream=True)
    augmented_raise_for_status(response)
    size = 0
    with open(dest, "wb") as out:
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"{name} is over {limit} bytes (MIDRE_MAX_UPLOAD_BYTES)")
            out.write(chunk)


def _import_version(ctx: ServiceContext, creds: Any, tenant: TenantRef, name: str, version: Any) -> str:
    """The version's model stored like an upload; its model id. Raises on a version that is not ours to take."""
    source = str(version.source or "")
    parts = urlsplit(source)
    if parts.scheme != "mlflow-artifacts":
        raise ValueError(f"version {version.version} keeps its files at {source!r}, outside the server's artifact "
                         "proxy: only models served through it are imported")
    root = parts.path.strip("/")
    with tempfile.TemporaryDirectory(prefix="mlflow-import-") as tmp:
        folder = Path(tmp)
        _download(creds, root, "model.json", folder / "model.json", 1 << 20)
        _download(creds, root, "model.safetensors", folder / "model.safetensors", ctx.settings.max_upload_bytes)
        full = json.loads((folder / "model.json").read_text())
        card = {k: full[k] for k in CARD_FIELDS if k in full and k != "defense"}
        checked = check_upload(ctx, folder / "model.safetensors", card, folder / "checked.safetensors")
        checked.pop("history", None)
        checked["origin"] = {"kind": UPLOAD.name, "name": name, "file": "model.safetensors",
                             "mlflow": {"registered_model": name, "version": str(version.version)}}
        if isinstance(full.get("defense"), dict):
            checked["defense"] = full["defense"]
        return store_model(ctx, tenant, name, folder / "checked.safetensors", checked).id


def _watch_policy(ctx: ServiceContext, session: Session, policy: AuditPolicy, check_target: TargetCheck) -> list[str]:
    from mlflow.store.model_registry.rest_store import RestStore as RegistryStore

    row = session.get(MlflowIntegration, policy.tenant_id)
    if row is None:
        return []
    creds = _creds(ctx, row, check_target)
    name = str(policy.registered_model)
    since = int(policy.created_at.timestamp() * 1000)
    versions = RegistryStore(lambda: creds).search_model_versions(f"name = '{name}'")
    state = dict(policy.state or {})
    seen: dict[str, Any] = dict(state.get("versions") or {})
    tenant = TenantRef(policy.tenant_id, "")
    started = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        key = str(version.version)
        if key in seen or int(version.creation_timestamp or 0) < since:
            continue
        try:
            model = _import_version(ctx, creds, tenant, name, version)
            trigger = {"policy": policy.id, "event": TRIGGER, "model": model, "model_name": name,
                       "mlflow_version": key}
            job = start_audit(ctx, session, tenant, policy, model, trigger)
            seen[key] = {"model": model, "audit": job}
            started += [job] if job else []
        except (ApiError, ValueError, OSError) as exc:
            reason = exc.detail if isinstance(exc, ApiError) else str(exc)
            seen[key] = {"error": str(reason)[:500]}
            log.warning("audit policy %s: version %s of %r not audited: %s", policy.id, key, name, reason)
    policy = session.get(AuditPolicy, policy.id)
    if policy is not None:
        policy.state = {**state, "versions": seen}
        session.commit()
    return started


def watch(ctx: ServiceContext, check_target: TargetCheck) -> list[str]:
    """One pass over every ``mlflow_model_version`` policy; the ids of the audits started. A server that
    does not answer is logged and tried again on the next pass."""
    started: list[str] = []
    with ctx.sessions() as session:
        policies = session.scalars(select(AuditPolicy).where(AuditPolicy.trigger == TRIGGER)
                                   .order_by(AuditPolicy.id)).all()
        for policy in policies:
            try:
                started += _watch_policy(ctx, session, policy, check_target)
            except Exception as exc:  # noqa: BLE001 - one tenant's unreachable server must not stop the others
                session.rollback()
                log.warning("audit policy %s: MLflow registry not read (%s); next pass", policy.id, exc)
    return started


__all__ = ["TRIGGER", "watch"]
