"""What a client of a served model sees (output policies, the shield) and query attacks on a deployment:
the oracle answers only that, never past the budget, and refuses what the policy does not give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from midre.attacks.base import AttackBudget
from midre.attacks.blackbox import LabelOracle, ProbabilityOracle, QueryBudgetExceeded, _deployment_budget
from midre.deployment import Deployment, OutputPolicy, answer_parts, client_probabilities, shield
from midre.target import AttackTarget


def probs(n: int = 64, k: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).mul(3).softmax(1)


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.8, 0.99])
def test_the_shield_keeps_the_prediction_and_the_order_of_the_top_list(strength: float) -> None:
    p = probs(256)
    q = shield(p, strength)
    assert torch.allclose(q.sum(1), torch.ones(256), atol=1e-6)
    assert torch.equal(q.argmax(1), p.argmax(1))
    assert torch.equal(q.topk(5, dim=1).indices, p.topk(5, dim=1).indices)
    if strength > 0:  # the answers depend less on the input: within a predicted class they move together
        spread_p = p.max(1).values.std()
        spread_q = q.max(1).values.std()
        assert spread_q < spread_p * (1 - strength) + 1e-6


def test_answer_parts_hold_only_what_each_policy_gives() -> None:
    p = probs(8)
    full = answer_parts(p, OutputPolicy("full"), requested_k=None, default_k=3)
    assert torch.equal(full.every, p) and full.top_indices.shape == (8, 3)
    top = answer_parts(p, OutputPolicy("top-k", top_k=2), requested_k=5, default_k=3)
    assert top.every is None and top.top_values.shape == (8, 2)
    rounded = answer_parts(p, OutputPolicy("rounded", decimals=1), requested_k=None, default_k=3)
    assert torch.allclose(rounded.top_values * 10, (rounded.top_values * 10).round())
    label = answer_parts(p, OutputPolicy("label-only"), requested_k=None, default_k=3)
    assert label.top_indices is None and torch.equal(label.labels, p.argmax(1))
    seen = client_probabilities(p, OutputPolicy("top-k", top_k=2), default_k=5)
    assert int((seen > 0).sum(1).max()) == 2 and torch.equal(seen.argmax(1), p.argmax(1))
    with pytest.raises(ValueError, match="labels"):
        client_probabilities(p, OutputPolicy("label-only"), default_k=5)


@pytest.mark.parametrize(("data", "field"), [
    ({"policy": {"name": "secret"}}, "deployment.policy.name"),
    ({"policy": {"name": "shield", "strength": 1.5}}, "deployment.policy.strength"),
    ({"policy": {"name": "full"}, "budget": 0}, "deployment.budget"),
])
def test_a_wrong_deployment_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Deployment.from_dict(data)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


def target(deployment: Deployment | None) -> AttackTarget:
    return AttackTarget(Tiny(), (1, 4, 4), num_classes=10, deployment=deployment)


def test_an_oracle_on_a_deployment_answers_as_the_policy_within_its_budget() -> None:
    dep = Deployment(OutputPolicy("top-k", top_k=3), budget=10)
    oracle = ProbabilityOracle(target(dep), budget=None)
    answer = oracle.predict_proba(torch.rand(6, 1, 4, 4))
    assert int((answer > 0).sum(1).max()) == 3 and oracle.remaining == 4
    with pytest.raises(QueryBudgetExceeded):
        oracle.predict_proba(torch.rand(5, 1, 4, 4))
    assert oracle.queries == 6  # nothing answered past the budget
    assert ProbabilityOracle(target(dep), budget=7).budget == 7  # the attack's own smaller budget stays
    raw = ProbabilityOracle(target(None)).predict_proba(torch.rand(2, 1, 4, 4))
    assert bool((raw > 0).all())


def test_label_only_refuses_scores_and_still_answers_labels() -> None:
    dep = Deployment(OutputPolicy("label-only"), budget=5)
    with pytest.raises(ValueError, match="labels only"):
        ProbabilityOracle(target(dep))
    oracle = LabelOracle(target(dep))
    assert oracle.predict_label(torch.rand(5, 1, 4, 4)).shape == (5,) and oracle.remaining == 0


def test_the_attack_runs_within_the_deployment_budget_and_says_when_it_was_cut() -> None:
    budget = AttackBudget(steps=10, queries=1000)
    cut, capped = _deployment_budget(target(Deployment(OutputPolicy(), budget=200)), budget)
    assert (cut.queries, capped) == (200, True)
    same, capped = _deployment_budget(target(Deployment(OutputPolicy(), budget=5000)), budget)
    assert (same.queries, capped) == (1000, False)


def test_an_attack_bounded_by_its_steps_alone_is_stopped_by_the_oracle() -> None:
    budget = AttackBudget(steps=3)
    same, capped = _deployment_budget(target(Deployment(OutputPolicy(), budget=50)), budget)
    assert same is budget and capped is False  # its plan stays; the oracle enforces the deployment's budget
    oracle = ProbabilityOracle(target(Deployment(OutputPolicy(), budget=4)), budget=None)
    oracle.predict_proba(torch.rand(4, 1, 4, 4))
    assert not oracle.refused
    with pytest.raises(QueryBudgetExceeded):
        oracle.predict_proba(torch.rand(1, 1, 4, 4))
    assert oracle.refused and oracle.queries == 4
