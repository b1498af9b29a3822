"""A model's privacy record: every attack evaluation that ran against it, and the card as a
Hugging Face style ``README.md`` (YAML front matter with ``model-index`` results).

Both are built when asked, from the jobs in the database, so they are never stale: an
``attack_eval`` that finishes later shows up on the next read.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.models import Job
from services.gateway.views import metrics_of
from services.jobspec import names_where

#: Report metrics of an evaluation, as the job records them: ``<defense>.<attack>.<name>``.
EVALUATION_METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist")


def evaluations_of(session: Session, tenant_id: str, model_id: str) -> list[dict[str, Any]]:
    """Every succeeded audit (``attack_eval``) of ``model_id`` (newest first), one entry per attack."""
    jobs = session.scalars(
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.kind.in_(names_where(lambda k: k.audits)),
               Job.status == jobstate.SUCCEEDED)
        .where(or_(Job.spec["model"].as_string() == model_id, Job.spec["model_job"].as_string() == model_id))
        .order_by(Job.id.desc())
    ).all()
    metrics = metrics_of(session, [j.id for j in jobs])
    out = []
    for job in jobs:
        config = (job.resolved or {}).get("config") or {}
        seeds = config.get("seeds")
        per_attack: dict[str, dict[str, float]] = {}
        for name, value in metrics[job.id].items():
            parts = name.split(".")
            if len(parts) == 3 and parts[2] in EVALUATION_METRICS:
                per_attack.setdefault(parts[1], {})[parts[2]] = value
        for attack, values in sorted(per_attack.items()):
            out.append({
                "job_id": job.id,
                "attack": attack,
                **values,
                "judge": config.get("eval_arch"),
                "seeds": seeds if isinstance(seeds, int) else len(seeds or []),
                "date": job.finished_at.isoformat() if job.finished_at else None,
            })
    return out


def readme(model_id: str, card: dict[str, Any], metrics: dict[str, float], evaluations: list[dict[str, Any]]) -> str:
    """The model card as Markdown with ``model-index`` front matter (Acc and AttAcc per attack, in %)."""
    defense = card.get("defense") or {}
    name = str((card.get("origin") or {}).get("name") or model_id)
    results = []
    acc = metrics.get("acc")
    if acc is not None:
        results.append({"task": {"type": "image-classification"}, "dataset": {"name": "private test split",
                        "type": "private"}, "metrics": [{"type": "accuracy", "value": round(acc, 2),
                                                         "name": "Acc (%)"}]})
    for ev in evaluations:
        values = [{"type": "attack-accuracy-top1", "value": round(ev["attacc_top1"], 2),
                   "name": f"AttAcc top-1 (%) under {ev['attack']}"}] if "attacc_top1" in ev else []
        if "attacc_top5" in ev:
            values.append({"type": "attack-accuracy-top5", "value": round(ev["attacc_top5"], 2),
                           "name": f"AttAcc top-5 (%) under {ev['attack']}"})
        if values:
            results.append({"task": {"type": "model-inversion", "name": ev["attack"]},
                            "dataset": {"name": "private identities", "type": "private"}, "metrics": values,
                            "source": {"name": f"MIDRE attack_eval {ev['job_id']}"}})
    front = {"tags": ["model-inversion", "privacy", f"defense-{defense.get('name', 'unknown')}"],
             "model-index": [{"name": name, "results": results}]}
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
        lines += ["| attack | AttAcc top-1 (%) | AttAcc top-5 (%) | KNN dist | judge | seeds | date | job |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for ev in evaluations:
            lines.append(f"| {ev['attack']} | {_fmt(ev.get('attacc_top1'))} | {_fmt(ev.get('attacc_top5'))} | "
                         f"{_fmt(ev.get('knn_dist'))} | {ev.get('judge')} | {ev.get('seeds')} | "
                         f"{(ev.get('date') or '')[:10]} | {ev['job_id']} |")
        lines += ["", "AttAcc: share of reconstructions an independent evaluation model (the judge) recognises "
                  "as the attacked identity; lower is more private."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
