"""Output policies: what a prediction may reveal about the model's confidence.

Against black-box (RLB-MI) and label-only (BREP-MI) inversion the owner of a model can choose:

* ``full``: every identity's probability (``probabilities``) plus the ``top`` list;
* ``top-k``: only the ``top_k`` most likely identities with their probabilities;
* ``rounded``: like ``top-k`` (every identity when the policy sets no ``top_k``) with each
  probability rounded to ``decimals`` places;
* ``label-only``: only the predicted identity, no probability at all.

A request's ``top_k`` can only narrow what the policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_DECIMALS = 2


@dataclass(frozen=True)
class OutputPolicy:
    """A model's policy (``name`` in ``full | top-k | rounded | label-only``)."""

    name: str = "full"
    top_k: int | None = None
    decimals: int | None = None

    def describe(self) -> dict[str, Any]:
        """The policy as stated in every predict answer."""
        out: dict[str, Any] = {"name": self.name}
        if self.name in ("top-k", "rounded") and self.top_k is not None:
            out["top_k"] = self.top_k
        if self.name == "rounded":
            out["decimals"] = self.decimals if self.decimals is not None else DEFAULT_DECIMALS
        return out


def effective_k(policy: OutputPolicy, requested: int | None, default: int, num_classes: int) -> int:
    """How many identities the ``top`` list holds under ``policy`` for a request asking ``requested``."""
    if policy.name == "rounded" and requested is None:
        k = policy.top_k or num_classes
    else:
        k = requested or default
    if policy.name in ("top-k", "rounded") and policy.top_k is not None:
        k = min(k, policy.top_k)
    return max(1, min(k, num_classes))


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
    labels = probs.argmax(dim=1).tolist()
    if policy.name == "label-only":
        return [{"label": int(c), "identity": names[c]} for c in labels]
    k = effective_k(policy, requested_k, default_k, num_classes)
    values, indices = probs.topk(k, dim=1)
    decimals = None
    if policy.name == "rounded":
        decimals = policy.decimals if policy.decimals is not None else DEFAULT_DECIMALS

    def number(p: float) -> float:
        return round(p, decimals) if decimals is not None else p

    out = []
    for row in range(probs.shape[0]):
        top = [
            {"label": int(c), "identity": names[int(c)], "probability": number(float(p))}
            for p, c in zip(values[row].tolist(), indices[row].tolist(), strict=True)
        ]
        answer: dict[str, Any] = {"label": int(labels[row]), "identity": names[labels[row]], "top": top}
        if policy.name == "full":
            answer["probabilities"] = [float(p) for p in probs[row].tolist()]
        out.append(answer)
    return out


def classification_strings(answers: list[dict[str, Any]]) -> list[list[str]]:
    """The ``top`` list of each :func:`apply_policy` answer in the Open Inference Protocol's
    classification form, ``"<score>:<index>:<label>"`` (scores as the policy left them)."""
    return [[f"{t['probability']}:{t['label']}:{t['identity']}" for t in answer.get("top", [])] for answer in answers]
