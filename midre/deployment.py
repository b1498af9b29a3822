"""What a client of a served model sees: output policies, the serving-time defense, and a model as deployed.

One code path for every way a served model answers: the service's predict and Open Inference Protocol
routes build their answers from :func:`answer_parts`, and an audit of a deployment
(:class:`Deployment`, an ``attack_eval`` with ``deployment``) lets its black-box and label-only attacks
query the model through the very same functions, under the same policy and a query budget.

Policies (``OutputPolicy.name``):

* ``full``: every identity's probability plus the ``top`` list;
* ``top-k``: only the ``top_k`` most likely identities with their probabilities;
* ``rounded``: like ``top-k`` (every identity when no ``top_k``), each probability rounded to ``decimals``;
* ``label-only``: only the predicted identity;
* ``shield``: a serving-time defense against black-box inversion, after the idea of SSD (Zhuang et al.,
  "Stealthy Shield Defense", ICLR 2025, https://openreview.net/forum?id=p0DjhjPXl3): every answer is
  pulled toward a fixed template of its predicted class,
  ``q = (1 - s) p + s t_y`` with ``t_y`` putting ``TEMPLATE_MASS`` on the predicted identity ``y`` and the
  rest evenly on the others. The scores then depend less on the input and more on the label, which is
  what black-box attacks climb. Since ``q`` is increasing in ``p`` for every identity and the predicted
  one keeps its lead, the predicted identity and the order of the others never change: top-1 and top-k
  accuracy are exactly the model's; what it costs is calibration (confidence says less), which the
  service measures and shows with the policy. SSD itself minimises a conditional mutual information
  per answer by water-filling under an adaptive distortion bound; this is a fixed-strength convex form
  of the same aim, with ``top_k`` applied on top like ``top-k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

POLICIES = ("full", "top-k", "rounded", "label-only", "shield")
DEFAULT_DECIMALS = 2
#: The shield's default strength ``s`` and the mass its class template puts on the predicted identity.
DEFAULT_STRENGTH = 0.8
TEMPLATE_MASS = 0.5


@dataclass(frozen=True)
class OutputPolicy:
    """A served model's output policy (``name`` in :data:`POLICIES`)."""

    name: str = "full"
    top_k: int | None = None
    decimals: int | None = None
    strength: float | None = None

    def describe(self) -> dict[str, Any]:
        """The policy as stated in every predict answer and every audit of the deployment."""
        out: dict[str, Any] = {"name": self.name}
        if self.name in ("top-k", "rounded", "shield") and self.top_k is not None:
            out["top_k"] = self.top_k
        if self.name == "rounded":
            out["decimals"] = self.decimals if self.decimals is not None else DEFAULT_DECIMALS
        if self.name == "shield":
            out["strength"] = self.shield_strength
        return out

    @property
    def shield_strength(self) -> float:
        return DEFAULT_STRENGTH if self.strength is None else float(self.strength)

    @property
    def gives_scores(self) -> bool:
        """Whether a client sees any probability (every policy but ``label-only``)."""
        return self.name != "label-only"

    @classmethod
    def from_dict(cls, data: dict[str, Any], field: str = "policy") -> OutputPolicy:
        """A policy from its :meth:`describe` form; ``ValueError`` naming ``field`` when it is wrong."""
        if not isinstance(data, dict) or data.get("name") not in POLICIES:
            raise ValueError(f"{field}.name: one of {', '.join(POLICIES)}")
        top_k, decimals, strength = data.get("top_k"), data.get("decimals"), data.get("strength")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"{field}.top_k: a positive integer or null")
        if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0):
            raise ValueError(f"{field}.decimals: an integer >= 0 or null")
        if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int | float)
                                     or not 0.0 <= strength < 1.0):
            raise ValueError(f"{field}.strength: a number in [0, 1) or null")
        return cls(str(data["name"]), top_k, decimals, None if strength is None else float(strength))


def shield(probs: torch.Tensor, strength: float, mass: float = TEMPLATE_MASS) -> torch.Tensor:
    """``(1 - s) p + s t_y`` for every row of ``probs`` ``[N, K]`` (see the module docstring)."""
    n, k = probs.shape
    if k < 2 or strength <= 0:
        return probs
    mass = max(mass, 1.0 / k)
    template = torch.full_like(probs, (1.0 - mass) / (k - 1))
    template.scatter_(1, probs.argmax(1, keepdim=True), mass)
    return (1.0 - strength) * probs + strength * template


def shaped(probs: torch.Tensor, policy: OutputPolicy) -> torch.Tensor:
    """The probabilities a policy's answers are cut from (the shield's, or the model's own)."""
    return shield(probs, policy.shield_strength) if policy.name == "shield" else probs


def effective_k(policy: OutputPolicy, requested: int | None, default: int, num_classes: int) -> int:
    """How many identities the ``top`` list holds under ``policy`` for a request asking ``requested``."""
    if policy.name == "rounded" and requested is None:
        k = policy.top_k or num_classes
    else:
        k = requested or default
    if policy.name in ("top-k", "rounded", "shield") and policy.top_k is not None:
        k = min(k, policy.top_k)
    return max(1, min(k, num_classes))


@dataclass
class AnswerParts:
    """What the answers to ``N`` images hold under a policy: labels always; for a policy with scores the
    ``top`` identities and their (shaped, maybe rounded) probabilities, and every identity's under ``full``."""

    labels: torch.Tensor  # [N]
    top_indices: torch.Tensor | None = None  # [N, k]
    top_values: torch.Tensor | None = None  # [N, k]
    every: torch.Tensor | None = None  # [N, K] (full only)


def answer_parts(probs: torch.Tensor, policy: OutputPolicy, *, requested_k: int | None,
                 default_k: int) -> AnswerParts:
    """The parts of the answers to ``probs`` ``[N, K]`` (softmax of the model) under ``policy``."""
    labels = probs.argmax(dim=1)
    if policy.name == "label-only":
        return AnswerParts(labels)
    seen = shaped(probs, policy)
    k = effective_k(policy, requested_k, default_k, int(probs.shape[1]))
    values, indices = seen.topk(k, dim=1)
    if policy.name == "rounded":
        scale = 10.0 ** (policy.decimals if policy.decimals is not None else DEFAULT_DECIMALS)
        values = torch.round(values.double() * scale) / scale
    return AnswerParts(labels, indices, values, seen if policy.name == "full" else None)


def client_probabilities(probs: torch.Tensor, policy: OutputPolicy, default_k: int) -> torch.Tensor:
    """A client's view as a dense ``[N, K]`` score matrix: what it was told, zero where it was told nothing
    (the form a black-box attack consumes). Raises ``ValueError`` under ``label-only``."""
    if not policy.gives_scores:
        raise ValueError("the policy label-only answers labels, no scores")
    parts = answer_parts(probs, policy, requested_k=None, default_k=default_k)
    if parts.every is not None:
        return parts.every.float()
    out = torch.zeros_like(probs, dtype=torch.float32)
    out.scatter_(1, parts.top_indices, parts.top_values.float())
    return out


@dataclass(frozen=True)
class Deployment:
    """A served model as an audit sees it: its policy, the query budget of one client (``None``:
    unlimited) and the ``top`` size a request gets by default; ``model`` names it in the report."""

    policy: OutputPolicy
    budget: int | None = None
    default_k: int = 5
    model: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], field: str = "deployment") -> Deployment:
        if not isinstance(data, dict):
            raise ValueError(f"{field}: an object with `policy` and `budget`")
        budget = data.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"{field}.budget: a positive integer or null (no budget)")
        default_k = data.get("default_k", 5)
        if isinstance(default_k, bool) or not isinstance(default_k, int) or default_k < 1:
            raise ValueError(f"{field}.default_k: a positive integer")
        return cls(OutputPolicy.from_dict(data.get("policy") or {}, f"{field}.policy"), budget, default_k,
                   str(data.get("model") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "policy": self.policy.describe(), "budget": self.budget,
                "default_k": self.default_k}

    def describe(self) -> str:
        """``label-only, budget 1,000 queries`` / ``top-k (k=3), no query budget``."""
        p = self.policy.describe()
        extra = ", ".join(f"{k}={v}" for k, v in p.items() if k != "name")
        budget = f"budget {self.budget:,} queries" if self.budget is not None else "no query budget"
        return f"{p['name']}{f' ({extra})' if extra else ''}, {budget}"

    def refusal(self, attack: str, access: str) -> str | None:
        """Why ``attack`` (with registry ``access``) cannot run against this deployment, or ``None``."""
        if access == "white-box":
            return (f"{attack} needs the model's weights and gradients (white-box); a deployment answers queries "
                    "only: audit it with rlb-mi (scores) or brep-mi (labels)")
        if access == "probabilities" and not self.policy.gives_scores:
            return (f"{attack} needs the model's scores; under the policy label-only the deployment answers labels "
                    "only: audit it with brep-mi")
        return None


__all__ = ["AnswerParts", "DEFAULT_DECIMALS", "DEFAULT_STRENGTH", "Deployment", "OutputPolicy", "POLICIES",
           "TEMPLATE_MASS", "answer_parts", "client_probabilities", "effective_k", "shaped", "shield"]
