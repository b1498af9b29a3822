"""Models: which checkpoint of a job is its model, its card and privacy record, and models trained elsewhere.

A job's model is its root ``model.json`` + ``model.safetensors`` (a train job, an uploaded model, a
harden job's recommendation); a pipeline's card is its defended target's. The card and the audits
(every attack evaluation that ran against the model, and the card as a Hugging Face style
``README.md``) are built when asked, from the jobs in the database, so they are never stale: an
``attack_eval`` that finishes later shows up on the next read. A model trained elsewhere is checked by
the library and stored as a succeeded ``upload`` job with the same two artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import yaml
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job
from services.db.types import new_id, utcnow
from services.jobspec import UPLOAD, get_kind, names_where
from services.ops.audit_policies import on_model_upload
from services.ops.context import ServiceContext, TenantRef
from services.ops.errors import ApiError, validation_error
from services.ops.files import UploadedFile, check_upload_quota, in_check_thread, in_io_thread, in_thread, remove_files
from services.ops.jobs import get_job
from services.ops.model_index import model_accuracy, model_index, model_name
from services.ops.schemas import ModelCard
from services.ops.storable import UNSTORABLE, find_unstorable
from services.ops.views import artifact_view, final_metrics, metrics_of
from services.redact import server_redactor
from services.storage import LocalStore

#: Report metrics of an evaluation, as the job records them: ``<defense>.<attack>.<name>``.
EVALUATION_METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "human_attacc_top1")
#: The same with their 95 % interval bounds, as a report with per-identity outcomes gives them, and the
#: agreement of human review with the first judge (``services.ops.human``).
EVALUATION_FIELDS = (EVALUATION_METRICS + tuple(f"{m}_{b}" for m in EVALUATION_METRICS for b in ("ci_low", "ci_high"))
                     + ("human_kappa",))


def card_name(kind: str, names: list[str]) -> str | None:
    """The ``model.json`` of the model a job of ``kind`` produced, among its artifact ``names``, or ``None``.

    A kind that yields a model (:mod:`services.jobspec`): its own ``model.json`` (a train job's, an
    uploaded model's, a harden job's recommendation, present only when it recommended one). A study
    whose defended target MLflow registers (a pipeline): that target's first seed
    (``targets/<defense>/seed<k>/model.json``, NoDef last). Any other job: none, so a sweep's candidates
    or a harden search's stopped ones are never served as models.
    """
    job_kind = get_kind(kind)
    if job_kind.model != "never":
        return "model.json" if "model.json" in names else None
    if job_kind.mlflow_model != "target":
        return None
    targets = [n for n in names if n.startswith("targets/") and n.endswith("/model.json")]

    def rank(name: str) -> tuple[bool, int, str]:
        parts = name.split("/")
        seed = parts[2].removeprefix("seed") if len(parts) > 3 else ""
        return (parts[1] == "nodef", int(seed) if seed.isdigit() else 0, name)

    return sorted(targets, key=rank)[0] if targets else None


def checkpoint_artifacts(kind: str, artifacts: dict[str, Artifact]) -> tuple[Artifact, Artifact] | None:
    """The (card, weights) artifacts of the model a job of ``kind`` produced (:func:`card_name`), or None."""
    name = card_name(kind, list(artifacts))
    weights = artifacts.get(name.removesuffix("model.json") + "model.safetensors") if name else None
    return (artifacts[name], weights) if name and weights is not None else None


# --- the card and the audits ----------------------------------------------------------------------


def model_card(ctx: ServiceContext, session: Session, tenant: TenantRef, job_id: str) -> ModelCard:
    """Architecture, classes, input size, defense, Acc / AttAcc and audits of the model job ``job_id``
    produced: 404 when it is not the tenant's or produced none, 409 while it has not succeeded."""
    job = get_job(session, tenant, job_id)
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"job {job_id} is {job.status}; no model yet")
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    chosen = card_name(job.kind, list(artifacts))
    if chosen is None:
        raise ApiError(404, "no_model", f"job {job_id} produced no model checkpoint")
    with ctx.store.open(artifacts[chosen].sha256) as fh:
        card: dict[str, Any] = json.load(fh)
    weights = artifacts.get(chosen.removesuffix("model.json") + "model.safetensors")
    metrics = normalise(card.get("metrics") or {})
    label = chosen.split("/")[1] if chosen.startswith("targets/") else None
    for name, value in final_metrics(session, job.id).items():
        # A pipeline's job metrics are ``<defense>.<attack>.<metric>``: keep those of this model.
        if label is None or name.startswith(f"{label}."):
            metrics[name.removeprefix(f"{label}.") if label else name] = value
    card.pop("history", None)
    card = server_redactor(ctx.settings).data(card)  # the training config names the data's server folder
    return ModelCard(
        id=job.id,
        job_id=job.id,
        arch=card.get("arch"),
        num_classes=card.get("num_classes"),
        image_size=card.get("image_size"),
        defense=card.get("defense"),
        metrics=metrics,
        checkpoint=artifact_view(weights) if weights else None,
        card=card,
        evaluations=evaluations_of(session, tenant, job.id, ctx.store),
    )


def model_readme(ctx: ServiceContext, session: Session, tenant: TenantRef, job_id: str) -> str:
    """The model card as Markdown (Hugging Face model-card form, see :func:`readme`)."""
    view = model_card(ctx, session, tenant, job_id)
    return readme(job_id, view.card, view.metrics, view.evaluations,
                  dataset_name(session, tenant, job_id, view.evaluations))


def dataset_name(session: Session, tenant: TenantRef, model_id: str, evaluations: list[dict[str, Any]]) -> str | None:
    """The name of the private data set the model was trained on (its job's ``dataset``), else the one its
    newest audit names: the tenant's name for its data set, or a built-in's name; never a server path."""
    for job_id in dict.fromkeys([model_id, *(str(ev["job_id"]) for ev in evaluations)]):
        job = session.get(Job, job_id)
        ref = (job.spec or {}).get("dataset") if job is not None and job.tenant_id == tenant.id else None
        if not isinstance(ref, str) or not ref:
            continue
        row = session.get(Dataset, ref)
        if row is not None and row.tenant_id == tenant.id:
            return row.name
        if "/" not in ref and "\\" not in ref:
            return ref
    return None


def job_report(session: Session, store: LocalStore | None, job_id: str) -> dict[str, Any]:
    """A job's ``report.json`` (``{}`` without a store, before it was written, or when it cannot be read)."""
    row = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "report.json"))
    if store is None or row is None:
        return {}
    try:
        with store.open(row.sha256) as fh:
            report = json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _judges(report: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The judges that pooled an audit's AttAcc (one name per architecture), else the configured one."""
    archs = dict.fromkeys(str(j.get("arch")) for j in report.get("judges") or [] if isinstance(j, dict))
    return list(archs) or ([str(config["eval_arch"])] if config.get("eval_arch") else [])


def _attack_facts(report: dict[str, Any], defense: str, attack: str) -> dict[str, Any]:
    """What an audit's report says of one attack (``gmi``, or ``gmi-adaptive`` as its metrics name the adaptive
    attacker): its versioned ``attack_id`` (or the differing ``attack_ids``), its ``leakage`` statement and the
    ``warnings`` that apply to it (its own and the report's general ones)."""
    name = attack.removesuffix("-adaptive")
    out: dict[str, Any] = {}
    for row in report.get("results") or []:
        if (isinstance(row, dict) and row.get("attack") == name and row.get("defense") == defense
                and bool(row.get("adaptive")) == (name != attack)):
            out.update({k: row[k] for k in ("attack_id", "attack_ids") if row.get(k)})
    leakage = [w.get("text") for w in report.get("leakage") or [] if isinstance(w, dict) and w.get("attack") == name]
    if leakage and leakage[0]:
        out["leakage"] = str(leakage[0])
    warnings = [str(w["message"]) for w in report.get("warnings") or []
                if isinstance(w, dict) and w.get("message") and w.get("attack") in (None, name)]
    if warnings:
        out["warnings"] = warnings
    return out


def _deployed(config: dict[str, Any]) -> str | None:
    """``top-k (top_k=3), budget 60 queries`` for an audit of the model as served, else ``None``."""
    from midre.deployment import Deployment

    data = config.get("deployment")
    if not isinstance(data, dict):
        return None
    try:
        return Deployment.from_dict(data).describe()
    except ValueError:
        return None


def evaluations_of(session: Session, tenant: TenantRef, model_id: str,
                   store: LocalStore | None = None) -> list[dict[str, Any]]:
    """Every succeeded audit (``attack_eval``) of ``model_id`` (newest first), one entry per attack: its
    Acc and pooled AttAcc with their intervals, the model's label in the audit (``defense``) and, with
    ``store``, from the audit's report: the judges that pooled it, the versioned ``attack_id``, the
    ``leakage`` statement and the ``warnings`` that apply (without ``store``: the configured judge)."""
    jobs = session.scalars(
        select(Job)
        .where(Job.tenant_id == tenant.id, Job.kind.in_(names_where(lambda k: k.audits)),
               Job.status == jobstate.SUCCEEDED)
        .where(or_(Job.spec["model"].as_string() == model_id, Job.spec["model_job"].as_string() == model_id))
        .order_by(Job.id.desc())
    ).all()
    metrics = metrics_of(session, [j.id for j in jobs])
    out = []
    for job in jobs:
        config = (job.resolved or {}).get("config") or {}
        seeds = config.get("seeds")
        per_attack: dict[tuple[str, str], dict[str, float]] = {}
        for name, value in metrics[job.id].items():
            parts = name.rsplit(".", 2)  # a label may hold dots (``midre-a_h0.4``, an uploaded ``face-id.v3``)
            if len(parts) == 3 and parts[2] in EVALUATION_FIELDS:
                per_attack.setdefault((parts[1], parts[0]), {})[parts[2]] = value
        report = job_report(session, store, job.id) if per_attack else {}
        judges = _judges(report, config)
        deployed = _deployed(config)
        for (attack, defense), values in sorted(per_attack.items()):
            out.append({
                "job_id": job.id,
                "attack": f"{attack} (deployed)" if deployed else attack,
                **({"deployment": deployed} if deployed else {}),
                **values,
                "judge": " + ".join(judges) or None,
                "judges": judges,
                "defense": defense,
                "seeds": seeds if isinstance(seeds, int) else len(seeds or []),
                "date": job.finished_at.isoformat() if job.finished_at else None,
                **_attack_facts(report, defense, attack),
            })
    return out


def readme(model_id: str, card: dict[str, Any], metrics: dict[str, float], evaluations: list[dict[str, Any]],
           dataset: str | None = None) -> str:
    """The model card as Markdown with ``model-index`` front matter (:mod:`services.ops.model_index`: Acc and,
    per audit and attack, AttAcc in %) that ``huggingface_hub`` parses; ``dataset`` names the private data."""
    defense = card.get("defense") or {}
    name = model_name(model_id, card)
    acc = model_accuracy(metrics, evaluations)
    front = {"pipeline_tag": "image-classification",
             "tags": ["model-inversion", "privacy", f"defense-{defense.get('name', 'unknown')}"],
             "model-index": model_index(name, acc, evaluations, dataset)}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"- architecture: `{card.get('arch')}`, {card.get('num_classes')} classes, input "
             f"{card.get('channels')}x{card.get('image_size')}x{card.get('image_size')}",
             f"- defense: `{json.dumps(defense)}`",
             f"- origin: {(card.get('origin') or {}).get('kind', 'trained by the service')}"]
    if card.get("init_from"):
        lines.append(f"- started from: `{card['init_from']}`")
    if acc is not None:
        lines.append(f"- accuracy on the held-out split (Acc): {acc:.2f} %")
    lines += ["", "## Model inversion audits", ""]
    if not evaluations:
        lines.append("No attack evaluation has run against this model yet (`attack_eval` with `model`).")
    else:
        lines += ["| attack | AttAcc top-1 (%) | AttAcc top-5 (%) | KNN dist | human AttAcc top-1 (%) | kappa | judge "
                  "| seeds | date | job | attack id |", "|" + " --- |" * 11]
        for ev in evaluations:
            kappa = f"{ev['human_kappa']:.2f}" if isinstance(ev.get("human_kappa"), float) else ""
            attack = f"{ev['attack']}: {ev['deployment']}" if ev.get("deployment") else ev["attack"]
            lines.append(f"| {attack} | {_fmt(ev, 'attacc_top1')} | {_fmt(ev, 'attacc_top5')} | "
                         f"{_fmt(ev, 'knn_dist')} | {_fmt(ev, 'human_attacc_top1')} | {kappa} | {ev.get('judge')} | "
                         f"{ev.get('seeds')} | {(ev.get('date') or '')[:10]} | {ev['job_id']} | "
                         f"{ev.get('attack_id') or ', '.join(ev.get('attack_ids') or [])} |")
        lines += ["", "AttAcc: share of reconstructions an independent evaluation model (the judge) recognises "
                  "as the attacked identity; lower is more private. [low, high]: the 95 % interval from a bootstrap "
                  "over seeds and identities (how far the figure would move with other seeds and identities; not a "
                  "bias every seed shares). Human AttAcc: the share of the same reconstructions that people, reviewing "
                  "blind, identified (interval over identities and reviewers); kappa: their agreement with the judge "
                  "(docs/human-review.md); empty until people reviewed the audit. An attack marked (deployed) queried "
                  "the model as it is served, through the output policy and within the query budget named beside it "
                  "(docs/serving.md); the others attacked the model itself. Attack id: the attack's version and a "
                  "hash of its settings (docs/attacks.md); figures are like for like only where the ids match."]
        lines += differing_ids(evaluations)
    return "\n".join(lines) + "\n"


def differing_ids(evaluations: list[dict[str, Any]]) -> list[str]:
    """A warning per attack whose audits ran with different attack ids (another version or other settings):
    their figures are not like for like."""
    ids: dict[str, set[str]] = {}
    for ev in evaluations:
        name = str(ev["attack"]).removesuffix(" (deployed)")
        ids.setdefault(name, set()).update([ev["attack_id"]] if ev.get("attack_id") else ev.get("attack_ids") or [])
    return [f"\n**Warning:** the audits of {name} ran with different attack ids ({', '.join(sorted(found))}): "
            "another implementation version or other settings; compare their figures with care."
            for name, found in sorted(ids.items()) if len(found) > 1]


def _fmt(ev: dict[str, Any], name: str) -> str:
    """``mean [low, high]`` with the 95 % interval when the audit measured one, else the mean."""
    value = ev.get(name)
    if value is None:
        return ""
    low, high = ev.get(f"{name}_ci_low"), ev.get(f"{name}_ci_high")
    return f"{value:.2f} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else f"{value:.2f}"


# --- a model trained elsewhere --------------------------------------------------------------------


def card_limits(ctx: ServiceContext) -> Any:
    """What an uploaded card may ask for (``MIDRE_MAX_MODEL_CLASSES``, ``MIDRE_MAX_MODEL_IMAGE_SIZE``)."""
    from midre.models.external import CardLimits

    return CardLimits(max_classes=ctx.settings.max_model_classes, max_image_size=ctx.settings.max_model_image_size,
                      classes_hint=" (MIDRE_MAX_MODEL_CLASSES)", image_size_hint=" (MIDRE_MAX_MODEL_IMAGE_SIZE)")


async def upload_model(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile) -> ModelCard:
    """Check a received model (``upload``: the weights, with its ``card`` and ``name`` fields) and store it
    as the tenant's model; the received files are deleted either way. Cheapest checks first (the quota,
    the file type, the card alone, the file's header against the card; only then a model is built and
    run), in one of ``MIDRE_UPLOAD_WORKERS`` threads. A refused upload stores nothing."""
    converted = upload.path.with_name(upload.path.name + ".checked")
    try:
        checked = await in_check_thread(ctx.settings.upload_workers, _check_model_file, ctx, tenant, upload,
                                        converted)
        job = await in_thread(store_model, ctx, tenant, checked["origin"]["name"], converted, checked)
    finally:
        with anyio.CancelScope(shield=True):
            await in_io_thread(remove_files, upload.path, converted)
    await in_thread(on_model_upload, ctx, tenant, job)  # the tenant's audit policies
    return await in_thread(_card_view, ctx, tenant, job.id)


def check_upload(ctx: ServiceContext, weights: Path, card: dict[str, Any], save_to: Path) -> dict[str, Any]:
    """The library's check (card first, then the file's header, only then a model is built); the weights
    are written to ``save_to`` in the project's own key layout, whatever layout was uploaded."""
    from midre.checkpoint import check_external_checkpoint
    from midre.errors import ConfigError

    try:
        return check_external_checkpoint(weights, card, limits=card_limits(ctx), save_to=save_to)
    except ConfigError as exc:
        raise validation_error(exc.field, exc.message) from exc


def _check_model_file(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile, converted: Path) -> dict[str, Any]:
    """The blocking part of an upload (a worker thread): quota, file type, card, then the library's check."""
    check_upload_quota(ctx, tenant.id, upload)
    with open(upload.path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        raise validation_error("file", "a zip archive (TorchScript?) is not accepted: upload the state dict as "
                                       "safetensors (white-box attacks need the architecture and gradients)")
    try:
        card = json.loads(upload.fields.get("card") or "")
    except json.JSONDecodeError as exc:
        raise validation_error("card", f"a JSON object is required ({exc.msg})") from exc
    refused = find_unstorable(card, "card")
    if refused is not None:
        raise validation_error(refused, UNSTORABLE)
    checked = check_upload(ctx, upload.path, card, converted)
    name = (upload.fields.get("name") or Path(upload.filename).stem or "model")[:200]
    checked.pop("history", None)
    checked["origin"] = {"kind": UPLOAD.name, "name": name, "file": Path(upload.filename).name, "sha256": upload.sha256}
    return checked


def store_model(ctx: ServiceContext, tenant: TenantRef, name: str, weights: Path, card: dict[str, Any]) -> Job:
    """Store an accepted model as a succeeded ``upload`` job with its two artifacts (one transaction)."""
    job_id = new_id("job")
    card_file = weights.with_suffix(".json")
    card_file.write_text(json.dumps(card, indent=2))
    try:
        blobs = {"model.safetensors": ctx.store.put_file(weights), "model.json": ctx.store.put_file(card_file)}
    finally:
        card_file.unlink(missing_ok=True)
    now = utcnow()
    job = Job(id=job_id, tenant_id=tenant.id, kind=UPLOAD.name, status=jobstate.SUCCEEDED,
              spec={"kind": UPLOAD.name, "name": name, "card": {k: v for k, v in card.items() if k != "origin"}},
              queue="none", progress=1.0, stage="done", message="uploaded model", attempt=0,
              cancel_requested=False, created_at=now, started_at=now, finished_at=now)
    with ctx.sessions() as session:
        session.add(job)
        session.flush()
        for artifact, blob in blobs.items():
            kind = "application/json" if artifact.endswith(".json") else "application/octet-stream"
            session.add(Artifact(job_id=job_id, name=artifact, size=blob.size, sha256=blob.sha256,
                                 content_type=kind, created_at=now))
        jobstate.add_event(session, job, "status", f"model {name!r} uploaded", stage="done",
                           data={"status": "succeeded"})
        session.commit()
        session.refresh(job)
        session.expunge(job)
    return job


def _card_view(ctx: ServiceContext, tenant: TenantRef, job_id: str) -> ModelCard:
    with ctx.sessions() as session:
        return model_card(ctx, session, tenant, job_id)


__all__ = ["EVALUATION_METRICS", "card_limits", "card_name", "checkpoint_artifacts", "dataset_name", "evaluations_of",
           "check_upload", "job_report", "model_card", "model_readme", "readme", "store_model", "upload_model"]
