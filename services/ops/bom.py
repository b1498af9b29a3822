"""A model's CycloneDX 1.6 ML-BOM (``GET /v1/models/{id}/bom.json``), built as plain dicts.

CycloneDX (https://cyclonedx.org/docs/1.6/json/) describes a machine learning model as a component of type
``machine-learning-model`` with a ``modelCard``: how it was made (``modelParameters``), what was measured
(``quantitativeAnalysis.performanceMetrics``: type, value, slice and confidence interval, every value a
string) and what to keep in mind (``considerations``). Here the model is the BOM's subject
(``metadata.component``): its id as ``bom-ref`` and ``version``, the SHA-256 of its weights as stored, its
architecture, the private data set by name only, its Acc and the AttAcc of every audit and attack (the
slice names the versioned attack id and the defense), the verdicts of the study that trained it and the
audits' leakage statements and warnings. Built when asked from the same records as the model card
(:mod:`services.ops.models`), so it is never stale; figures are in percent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import midre
from services.db.models import Artifact, Job
from services.ops.context import ServiceContext, TenantRef
from services.ops.model_index import PRIVACY_METRICS, model_accuracy, model_name
from services.ops.models import card_name, dataset_name, job_report, model_card
from services.ops.schemas import ModelCard

SPEC_VERSION = "1.6"
#: The registered media type of a CycloneDX JSON document.
MEDIA_TYPE = f"application/vnd.cyclonedx+json; version={SPEC_VERSION}"
#: The architecture family of each registered architecture, by name prefix (CycloneDX ``architectureFamily``).
FAMILIES = (("resnet", "residual neural network"), ("ir", "residual neural network"),
            ("facenet", "residual neural network"), ("maxvit", "vision transformer"),
            ("densenet", "convolutional neural network"), ("vgg", "convolutional neural network"),
            ("efficientnet", "convolutional neural network"), ("inception", "convolutional neural network"),
            ("cnn", "convolutional neural network"))


def model_bom(ctx: ServiceContext, session: Session, tenant: TenantRef, job_id: str) -> dict[str, Any]:
    """The CycloneDX 1.6 JSON document of the model job ``job_id`` produced: 404 when it is not the tenant's
    or produced none, 409 while it has not succeeded (as the model card)."""
    view = model_card(ctx, session, tenant, job_id)
    dataset = dataset_name(session, tenant, job_id, view.evaluations)
    component: dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": job_id,
        "name": model_name(job_id, view.card),
        "version": job_id,
    }
    if view.checkpoint is not None:
        component["hashes"] = [{"alg": "SHA-256", "content": view.checkpoint.sha256}]
    component["properties"] = _properties(view)
    component["modelCard"] = {
        "modelParameters": _parameters(view, dataset),
        "quantitativeAnalysis": {"performanceMetrics": _performance(view)},
        "considerations": _considerations(view, _own_verdicts(ctx, session, job_id)),
    }
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "tools": {"components": [{"type": "application", "name": "midre", "version": midre.__version__}]},
            "component": component,
        },
    }


def architecture_family(arch: str | None) -> str | None:
    """``resnet18`` -> ``residual neural network``; ``None`` for an architecture this table does not know."""
    name = str(arch or "").lower()
    return next((family for prefix, family in FAMILIES if name.startswith(prefix)), None)


def defense_text(defense: Any) -> str:
    """``midre (a_h=0.4)`` from the card's defense; ``none recorded`` without one."""
    if not isinstance(defense, dict) or not defense.get("name"):
        return "none recorded"
    params = ", ".join(f"{k}={v}" for k, v in defense.items() if k != "name")
    return f"{defense['name']} ({params})" if params else str(defense["name"])


def _properties(view: ModelCard) -> list[dict[str, str]]:
    values = {"midre:num_classes": view.num_classes, "midre:image_size": view.image_size,
              "midre:channels": view.card.get("channels"), "midre:defense": defense_text(view.defense),
              "midre:origin": (view.card.get("origin") or {}).get("kind") or "trained by the service",
              "midre:checkpoint": view.checkpoint.name if view.checkpoint else None}
    return [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]


def _parameters(view: ModelCard, dataset: str | None) -> dict[str, Any]:
    """Supervised classification of identities; the architecture; the private data set by name only."""
    out: dict[str, Any] = {"approach": {"type": "supervised"}, "task": "classification"}
    family = architecture_family(view.arch)
    if family:
        out["architectureFamily"] = family
    if view.arch:
        out["modelArchitecture"] = str(view.arch)
    if dataset:
        out["datasets"] = [{"type": "dataset", "name": dataset, "classification": "private",
                            "description": f"private training data: {view.num_classes} identities; the audits "
                                          f"reconstruct its training identities"}]
    out["inputs"] = [{"format": "image"}]  # its channels and side: the component's properties
    out["outputs"] = [{"format": "class probabilities"}]
    return out


def _metric(kind: str, value: Any, slice_: str, low: Any = None, high: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "value": f"{float(value):.2f}", "slice": slice_}
    if isinstance(low, int | float) and isinstance(high, int | float):
        out["confidenceInterval"] = {"lowerBound": f"{float(low):.2f}", "upperBound": f"{float(high):.2f}"}
    return out


def _performance(view: ModelCard) -> list[dict[str, Any]]:
    """Acc (%) on the held-out split, then per audit and attack AttAcc top-1 / top-5 (and the human figure)
    in %, with the 95 % interval where the audit measured one."""
    out = []
    acc = model_accuracy(view.metrics, view.evaluations)
    if acc is not None:
        out.append(_metric("accuracy", acc, "held-out private test split (%)", view.metrics.get("acc_ci_low"),
                           view.metrics.get("acc_ci_high")))
    defense = defense_text(view.defense)
    for ev in view.evaluations:
        attack = ev.get("attack_id") or ", ".join(ev.get("attack_ids") or []) or ev["attack"]
        where = f"attack {attack} ({ev['attack']}) against defense {defense}; audit {ev['job_id']}"
        if ev.get("deployment"):
            where += f"; as deployed: {ev['deployment']}"
        for kind, _label in PRIVACY_METRICS:
            if isinstance(ev.get(kind), int | float):
                judged = "blind human review" if kind.startswith("human_") else f"judges {ev.get('judge')}"
                out.append(_metric(kind, ev[kind], f"{where}; {judged}; {ev.get('seeds')} seeds (%)",
                                   ev.get(f"{kind}_ci_low"), ev.get(f"{kind}_ci_high")))
    return out


def _own_verdicts(ctx: ServiceContext, session: Session, job_id: str) -> list[str]:
    """The verdicts of the study that trained the model (a pipeline's defended target, a harden job's pick)
    on its defense against NoDef; none for a train job or an upload."""
    job = session.get(Job, job_id)
    names = list(session.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))
    chosen = card_name(job.kind, names) if job is not None else None
    report = job_report(session, ctx.store, job_id) if chosen else {}
    recommended = report.get("recommendation") if isinstance(report.get("recommendation"), dict) else {}
    label = chosen.split("/")[1] if chosen and chosen.startswith("targets/") else recommended.get("defense")
    return [str(v["text"]) for v in report.get("verdicts") or []
            if isinstance(v, dict) and v.get("text") and label is not None and v.get("defense") == label]


def _considerations(view: ModelCard, verdicts: list[str]) -> dict[str, Any]:
    """Trade-offs from the training study's verdicts; the leakage each audit measured as an ethical
    consideration (risk: model inversion of the private identities; mitigation: the defense); the audits'
    warnings as technical limitations. A model never audited says so instead of implying it is safe."""
    defense = defense_text(view.defense)
    mitigation = (f"trained with the defense {defense}" if defense != "none recorded"
                  else "no training-time defense recorded")
    risks = []
    for ev in view.evaluations:
        statement = ev.get("leakage") or (f"AttAcc top-1 {float(ev['attacc_top1']):.2f} %"
                                          if isinstance(ev.get("attacc_top1"), int | float) else "measured")
        extra = f"; served as {ev['deployment']}" if ev.get("deployment") else ""
        risks.append({"name": f"Model inversion of the private training identities by {ev['attack']} "
                              f"(audit {ev['job_id']}): {statement}", "mitigationStrategy": mitigation + extra})
    if not risks:
        risks.append({"name": "Model inversion of the private training identities: not audited yet, so its "
                              "leakage is unknown (not known to be low)",
                      "mitigationStrategy": f"{mitigation}; audit it with an attack_eval job naming this model"})
    out: dict[str, Any] = {"ethicalConsiderations": risks}
    if verdicts:
        out["performanceTradeoffs"] = verdicts
    warnings = list(dict.fromkeys(w for ev in view.evaluations for w in ev.get("warnings") or []))
    if warnings:
        out["technicalLimitations"] = warnings
    return out


__all__ = ["MEDIA_TYPE", "SPEC_VERSION", "architecture_family", "defense_text", "model_bom"]
