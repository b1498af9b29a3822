"""Query-only access to a target model, for the black-box (RLB-MI) and label-only (BREP-MI) attacks.

A model served behind an API answers queries; it does not hand out its weights or gradients. The
oracles here are what such an attack receives instead of the model:

* :class:`ProbabilityOracle` answers ``predict_proba(x)`` with the softmax vector only (RLB-MI's
  threat model, Han et al., CVPR 2023, Sec. 3.1).
* :class:`LabelOracle` answers ``predict_label(x)`` with the top-1 label only (BREP-MI's threat
  model, Kahla et al., CVPR 2022, Sec. 3).

Both count the images submitted (one image = one query) and raise :class:`QueryBudgetExceeded`
*before* answering a request that would go over the budget, so the count can never exceed it.

The model lives only in a closure built in ``__init__``; the oracle object has ``__slots__`` (no
``__dict__``), exposes no attribute that is a module, parameter or logit, and its answers are fresh
tensors computed under ``torch.no_grad`` (no ``grad_fn``, ``requires_grad=False``). This is a guard
against *accidental* white-box use by an attack implementation (tests walk the attack's object graph
and prove no path to the model's parameters exists outside the closure); it is not a sandbox against
deliberate introspection of ``__closure__`` in the same process.

Example:
    >>> oracle = ProbabilityOracle(AttackTarget(model, (3, 64, 64), IMAGENET), budget=10_000)
    >>> probs = oracle.predict_proba(images01)      # [N, K] softmax, N queries spent
    >>> oracle.queries, oracle.remaining
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from midre.attacks.base import (
    AttackRequest,
    AttackResult,
    AttackTarget,
    PixelCodec,
    attack_prior,
    chunks,
    target_confidence,
)
from midre.progress import ProgressEvent, no_progress, scaled

logger = logging.getLogger(__name__)


class QueryBudgetExceeded(RuntimeError):
    """Raised by an oracle asked for more queries than its budget has left (nothing is answered)."""


def _make_forward(target: AttackTarget, device: torch.device, batch: int) -> Callable[[Tensor], Tensor]:
    """Closure ``x01 -> logits`` over the target; the only place the model is referenced."""
    model = target.model.to(device).eval()
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    shape = tuple(target.image_shape)

    def forward(x01: Tensor) -> Tensor:
        if x01.dim() != 4 or tuple(x01.shape[1:]) != shape:
            raise ValueError(f"queries must be [N, {shape[0]}, {shape[1]}, {shape[2]}] images in [0, 1], "
                             f"got shape {tuple(x01.shape)}")
        with torch.no_grad():
            x = codec.to_input(x01.detach().to(device, torch.float32).clamp(0, 1))
            return torch.cat([model(x[sl]).float() for sl in chunks(x.shape[0], batch)])

    return forward


class _Oracle:
    """Query counting shared by both oracles; subclasses add the one answer they allow."""

    __slots__ = ("_forward", "_budget", "_queries", "_calls", "_view", "_refused", "num_classes", "image_shape")

    def __init__(self, target: AttackTarget, budget: int | None = None, device: str | torch.device = "cpu",
                 batch: int = 512) -> None:
        if not isinstance(target, AttackTarget):
            raise TypeError(f"target must be an AttackTarget, got {type(target).__name__}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative integer or None, got {budget!r}")
        self._forward = _make_forward(target, torch.device(device), batch)
        deployment = target.deployment
        if deployment is not None and deployment.budget is not None:
            budget = deployment.budget if budget is None else min(budget, deployment.budget)
        self._view = _client_view(deployment)
        self._refused = False
        self._budget = budget
        self._queries = 0
        self._calls = 0
        self.num_classes = int(target.num_classes or 0)
        self.image_shape = tuple(target.image_shape)

    @property
    def queries(self) -> int:
        """Images submitted so far."""
        return self._queries

    @property
    def calls(self) -> int:
        """Requests answered so far (a request may hold many images)."""
        return self._calls

    @property
    def refused(self) -> bool:
        """Whether a request was refused for going over the budget (the budget stopped the attack)."""
        return self._refused

    @property
    def budget(self) -> int | None:
        """Total images the oracle will answer (``None``: unlimited)."""
        return self._budget

    @property
    def remaining(self) -> int | None:
        """Queries left (``None``: unlimited)."""
        return None if self._budget is None else self._budget - self._queries

    def _logits(self, x01: Tensor) -> Tensor:
        n = int(x01.shape[0]) if x01.dim() > 0 else 0
        if self._budget is not None and self._queries + n > self._budget:
            self._refused = True
            raise QueryBudgetExceeded(f"query budget exhausted: {self._queries} of {self._budget} used, "
                                      f"a request for {n} more refused")
        out = self._forward(x01)
        self._queries += n
        self._calls += 1
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(queries={self._queries}, budget={self._budget})"

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled (it would copy the model)")


def _client_view(deployment: Any) -> Callable[[Tensor], Tensor]:
    """What a client of ``deployment`` is told, as a dense score matrix (the model's softmax when the
    target is not a deployment). The same function builds the service's predict answers."""
    if deployment is None:
        return lambda probs: probs
    from midre.deployment import client_probabilities

    policy, default_k = deployment.policy, deployment.default_k
    return lambda probs: client_probabilities(probs, policy, default_k)


class ProbabilityOracle(_Oracle):
    """Black-box access: ``predict_proba(x01) -> [N, K]`` softmax probabilities, nothing else."""

    __slots__ = ()

    def __init__(self, target: AttackTarget, budget: int | None = None, device: str | torch.device = "cpu",
                 batch: int = 512) -> None:
        if target.deployment is not None and not target.deployment.policy.gives_scores:
            raise ValueError(target.deployment.refusal("a black-box attack", "probabilities"))
        super().__init__(target, budget, device, batch)

    def predict_proba(self, x01: Tensor) -> Tensor:
        """Softmax vector of every ``[0, 1]`` image in ``x01`` (a fresh tensor without ``grad_fn``)."""
        with torch.no_grad():
            return self._view(self._logits(x01).softmax(1)).detach().clone()


class LabelOracle(_Oracle):
    """Label-only access: ``predict_label(x01) -> [N]`` int64 top-1 labels, nothing else."""

    __slots__ = ()

    def predict_label(self, x01: Tensor) -> Tensor:
        """Top-1 label of every ``[0, 1]`` image in ``x01`` (int64)."""
        with torch.no_grad():
            return self._logits(x01).argmax(1).to(torch.long).detach().clone()


# --------------------------------------------------------------------------- shared attack plumbing


def checkpoint_queries(budget: int, fractions: tuple[float, ...]) -> list[int]:
    """Query counts at which AttAcc-vs-queries snapshots are taken (sorted, unique, >= 1)."""
    return sorted({max(1, int(round(f * budget))) for f in fractions if 0 < f <= 1})


def run_query_attack(request: AttackRequest, oracle_class: type[_Oracle],
                     attack_class: Callable[..., Any]) -> AttackResult:
    """Train or reuse the GMI prior, wrap the target in ``oracle_class`` and run ``attack_class``.

    Args:
        request: the validated attack run.
        oracle_class: :class:`ProbabilityOracle` (black-box) or :class:`LabelOracle` (label-only).
        attack_class: ``attack_class(oracle, generator, options, seed=, device=)`` with a
            ``run(identities, per_identity, budget, progress=, should_stop=)`` method returning
            ``{"pixels", "labels", "checkpoints", "extra"}`` (:class:`~midre.attacks.rlb_mi.RLBMI`,
            :class:`~midre.attacks.brep_mi.BREPMI`).

    The attack object gets the oracle and the generator only. The final ``confidence`` of the
    result is measured here, by the harness, for the report: it is not seen by the attack and not
    counted in ``queries`` (recorded as ``extra["report_forward_passes"]``).
    """
    name, target, budget, device = request.name, request.target, request.budget, request.device
    progress = request.progress or no_progress
    start = time.monotonic()
    prep_end = 0.0 if request.prior is not None else 0.4
    # the GMI prior is target-independent: trained on public images only, no target access
    prior, extra = attack_prior(request, "gmi", scaled(progress, 0.0, prep_end), target_aware=False)
    generator = prior.generator
    budget, capped = _deployment_budget(target, budget)
    oracle = oracle_class(target, budget.queries, device)
    attack = attack_class(oracle, generator, request.options, seed=request.seed, device=device)
    t0 = time.monotonic()
    out = attack.run(request.identities, request.per_identity, budget, progress=scaled(progress, prep_end, 1.0),
                     should_stop=request.should_stop)
    progress(ProgressEvent(stage="attack", fraction=1.0, message=f"{name}: {oracle.queries} queries",
                           metrics={"queries": float(oracle.queries)}))
    extra["search_seconds"] = time.monotonic() - t0
    extra.update(out["extra"])
    extra["query_budget"] = budget.queries
    if target.deployment is not None:  # what the audit of a deployment reports
        extra["deployment"] = {**target.deployment.to_dict(), "queries_used": oracle.queries,
                               "budget_stopped": oracle.refused or (
                                   capped and bool(out["extra"].get("budget_exhausted", True)))}
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    pixels = out["pixels"].to(device)
    images = codec.to_input(pixels)
    labels = out["labels"]
    model = target.model.to(device).eval()
    confidence = target_confidence(model, images, labels.to(device))
    extra["report_forward_passes"] = int(labels.numel())
    result = AttackResult(images=images.cpu(), labels=labels, confidence=confidence, queries=oracle.queries,
                          seconds=time.monotonic() - start, normalization=target.normalization, attack=name,
                          extra=extra, checkpoints=[(int(q), px.cpu()) for q, px in out["checkpoints"]])
    return result


def _deployment_budget(target: AttackTarget, budget: Any) -> tuple[Any, bool]:
    """The attack's budget within a deployment's (a client's) query budget, and whether it had to be cut:
    the attack's own settings asked for more queries than the deployment answers one client."""
    import dataclasses

    cap = target.deployment.budget if target.deployment is not None else None
    if cap is None or budget.queries is None or budget.queries <= cap:
        # an attack bounded by its steps alone keeps its plan: the oracle refuses past the budget, and the
        # attack stops there with what it has (``oracle.refused``)
        return budget, False
    return dataclasses.replace(budget, queries=cap), True


__all__ = ["LabelOracle", "ProbabilityOracle", "QueryBudgetExceeded", "checkpoint_queries", "run_query_attack"]
