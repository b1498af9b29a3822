"""Output policies: what a prediction may reveal about the model's confidence.

Against black-box (RLB-MI) and label-only (BREP-MI) inversion the owner of a model can choose
``full``, ``top-k``, ``rounded``, ``label-only`` or the serving-time defense ``shield``; the policies
and what an answer holds under each live in :mod:`midre.deployment`, so the predict and Open Inference
Protocol routes and an audit of the deployment (``attack_eval`` with ``deployment``) answer alike.
This module turns those parts into the JSON answers. A request's ``top_k`` can only narrow what the
policy allows.
"""

from __future__ import annotations

from typing import Any

import torch

from midre.deployment import DEFAULT_DECIMALS, POLICIES, OutputPolicy, answer_parts, effective_k


def policy_of(row: Any) -> tuple[OutputPolicy, int | None]:
    """A model's output policy and budget from its ``model_policies`` row (the defaults, ``full`` and no
    budget, without one)."""
    if row is None:
        return OutputPolicy(), None
    return OutputPolicy(row.policy, row.top_k, row.decimals, row.strength), row.budget


def apply_policy(
    probs: torch.Tensor,
    class_names: list[str],
    policy: OutputPolicy,
    *,
    requested_k: int | None,
    default_k: int,
) -> list[dict[str, Any]]:
    """One answer per row of ``probs`` ``[N, K]``, holding only what ``policy`` allows."""
    num_classes = int(probs.shape[1])
    names = class_names if len(class_names) == num_classes else [str(i) for i in range(num_classes)]
    parts = answer_parts(probs, policy, requested_k=requested_k, default_k=default_k)
    labels = parts.labels.tolist()
    if parts.top_indices is None:
        return [{"label": int(c), "identity": names[c]} for c in labels]
    out = []
    for row, label in enumerate(labels):
        top = [{"label": int(c), "identity": names[int(c)], "probability": float(p)}
               for p, c in zip(parts.top_values[row].tolist(), parts.top_indices[row].tolist(), strict=True)]
        answer: dict[str, Any] = {"label": int(label), "identity": names[label], "top": top}
        if parts.every is not None:
            answer["probabilities"] = [float(p) for p in parts.every[row].tolist()]
        out.append(answer)
    return out


def classification_strings(answers: list[dict[str, Any]]) -> list[list[str]]:
    """The ``top`` list of each :func:`apply_policy` answer in the Open Inference Protocol's
    classification form, ``"<score>:<index>:<label>"`` (scores as the policy left them)."""
    return [[f"{t['probability']}:{t['label']}:{t['identity']}" for t in answer.get("top", [])] for answer in answers]


__all__ = ["DEFAULT_DECIMALS", "POLICIES", "OutputPolicy", "apply_policy", "classification_strings", "effective_k",
           "policy_of"]
