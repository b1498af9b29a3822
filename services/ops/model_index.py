"""The model card's ``model-index``: Acc and the model inversion audits in the Hugging Face schema.

Model hubs and registries read a model card's YAML front matter; its ``model-index`` lists evaluation
results as ``{task, dataset, metrics[]}`` (https://github.com/huggingface/hub-docs/blob/main/modelcard.md).
``huggingface_hub`` parses each metric into one ``EvalResult`` (``task_type``/``task_name``,
``dataset_type``/``dataset_name``/``dataset_split``, ``metric_type``/``metric_value``/``metric_name``/
``metric_config``/``metric_args``) and, when it writes a card back, regroups the metrics by task type and
dataset type/config/split only, keeping the first result's task name. So everything that tells two audits
apart lives on the metric itself: ``config`` is the versioned attack id, ``args`` the attack, the model's
label in the audit, the audit job, the judges, seeds and the 95 % interval. No ``source`` is written: the
Hub requires its ``url`` and the service knows no public address for its jobs.

Metric types (values in percent, as the card's tables): ``accuracy`` (utility, held-out test split),
``attacc_top1`` / ``attacc_top5`` (the judges' AttAcc per attack) and ``human_attacc_top1`` (blind human
review). Other tools rely on this: an audited model's card has an ``attacc_top1`` result.
"""

from __future__ import annotations

from typing import Any

#: The privacy metrics of an audit as the card names them: ``(type, name)``; the type is the report's name.
PRIVACY_METRICS = (("attacc_top1", "AttAcc top-1 (%)"), ("attacc_top5", "AttAcc top-5 (%)"),
                   ("human_attacc_top1", "Human AttAcc top-1 (%)"))
#: Task and dataset of the results: the model classifies identities; the attacks reconstruct the identities of
#: its private training split.
UTILITY_TASK = {"type": "image-classification", "name": "Identity classification"}
PRIVACY_TASK_TYPE = "model-inversion"
PRIVATE = "private"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def model_name(model_id: str, card: dict[str, Any]) -> str:
    """The model's name: the name it was uploaded under, else its id."""
    return str((card.get("origin") or {}).get("name") or model_id)


def model_accuracy(metrics: dict[str, float], evaluations: list[dict[str, Any]]) -> float | None:
    """Held-out Acc (%): the model's own, else (a model trained elsewhere) as its newest audit measured it."""
    acc = metrics.get("acc")
    if acc is None:
        acc = next((ev["acc"] for ev in evaluations if _number(ev.get("acc"))), None)
    return acc


def privacy_metric(ev: dict[str, Any], kind: str, label: str) -> dict[str, Any]:
    """One model-index metric of audit entry ``ev`` (:func:`services.ops.models.evaluations_of`).

    ``config`` is the attack's versioned id (the attack's name for audits written before ids existed);
    ``args`` holds what tells the result apart and bounds it: ``attack``, ``attack_id``, ``defense`` (the
    model's label in the audit), ``audit`` (its job id), ``judges`` (or ``reviewers`` and ``kappa`` for the
    human figure), ``seeds``, ``deployment`` (an audit of the model as served) and ``ci_low`` / ``ci_high`` /
    ``ci_level`` where the audit measured a 95 % interval.
    """
    attack_id = ev.get("attack_id") or " / ".join(ev.get("attack_ids") or [])
    args: dict[str, Any] = {"attack": ev["attack"], "attack_id": attack_id or None, "defense": ev.get("defense"),
                            "audit": ev.get("job_id"), "seeds": ev.get("seeds"), "deployment": ev.get("deployment")}
    if kind.startswith("human_"):
        args.update(reviewers="blind human review", kappa=ev.get("human_kappa"))
    else:
        args["judges"] = list(ev.get("judges") or ([ev["judge"]] if ev.get("judge") else []))
    low, high = ev.get(f"{kind}_ci_low"), ev.get(f"{kind}_ci_high")
    if _number(low) and _number(high):
        args.update(ci_low=round(float(low), 2), ci_high=round(float(high), 2), ci_level=0.95)
    return {"type": kind, "value": round(float(ev[kind]), 2), "name": f"{label} under {ev['attack']}",
            "config": attack_id or str(ev["attack"]),
            "args": {k: v for k, v in args.items() if v is not None and v != []}}


def model_index(name: str, acc: float | None, evaluations: list[dict[str, Any]],
                dataset: str | None = None) -> list[dict[str, Any]]:
    """The ``model-index`` of a model: its Acc, then one result per audit and attack (newest audit first).

    Args:
        name: the model's name (the Hub's leaderboard identifier).
        acc: held-out accuracy in percent, or ``None``.
        evaluations: the audits (:func:`services.ops.models.evaluations_of`).
        dataset: the private data set's name (never a server path), or ``None``.
    """
    data = dataset or "private data set"
    results = []
    if acc is not None:
        results.append({"task": dict(UTILITY_TASK), "dataset": {"name": data, "type": PRIVATE, "split": "test"},
                        "metrics": [{"type": "accuracy", "value": round(float(acc), 2), "name": "Acc (%)"}]})
    for ev in evaluations:
        metrics = [privacy_metric(ev, kind, label) for kind, label in PRIVACY_METRICS if _number(ev.get(kind))]
        if metrics:
            results.append({"task": {"type": PRIVACY_TASK_TYPE, "name": str(ev["attack"])},
                            "dataset": {"name": f"{data} (private training identities)", "type": PRIVATE,
                                        "split": "train"},
                            "metrics": metrics})
    return [{"name": name, "results": results}]


__all__ = ["PRIVACY_METRICS", "model_accuracy", "model_index", "model_name", "privacy_metric"]
