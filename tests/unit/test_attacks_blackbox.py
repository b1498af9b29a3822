"""Black-box (RLB-MI) and label-only (BREP-MI) attacks: access restriction, budgets, end to end."""

from __future__ import annotations

import gc
import pickle
import types

import pytest
import torch
from torch import nn

from midre.attacks import AttackBudget, run_attack
from midre.attacks.blackbox import LabelOracle, ProbabilityOracle, QueryBudgetExceeded
from midre.attacks.brep_mi import BREPMI, BREPMIOptions, repulsion_direction, sphere_directions
from midre.attacks.rlb_mi import RLBMI, RLBMIOptions, rlb_reward
from midre.priors import PriorConfig, PublicData, train_prior
from tests.unit.test_attacks import SIZE, TinyNet, digits, tiny_target  # noqa: F401  (digits: fixture)

RLB_TINY = {"hidden": 16, "batch_size": 8}
BREP_TINY = {"sphere_points": 6, "init_batch": 64}


@pytest.fixture(scope="module")
def target(digits):
    return tiny_target(digits, "bb-digits")


@pytest.fixture(scope="module")
def prior(digits):
    x, y = digits
    public = PublicData.from_images((x[y >= 5] * 255).round().to(torch.uint8), "digits 5-9")
    return train_prior(PriorConfig(kind="gmi", steps=2, width=8, batch_size=8), public, (1, SIZE, SIZE))


# --------------------------------------------------------------------------- the access restriction


def reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through attributes, slots and containers.

    Functions, classes and modules are not entered: an oracle's closure (``__closure__`` of its
    forward function) is the one permitted path to the model, and module globals reach everything.
    A bound method is followed to its ``__self__`` only.
    """
    stop = (types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.ModuleType, type,
            types.CellType)
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if isinstance(obj, stop):
            continue
        if isinstance(obj, types.MethodType):
            todo.append(obj.__self__)
            continue
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def model_objects(model: nn.Module) -> set[int]:
    return {id(model), *(id(m) for m in model.modules()), *(id(p) for p in model.parameters()),
            *(id(b) for b in model.buffers())}


def test_walker_finds_a_model_held_as_an_attribute(target):
    """Negative control: the walk is able to see a model an object holds directly."""

    class Leaky:
        def __init__(self, model: nn.Module) -> None:
            self.model = model

    found = {id(o) for o in reachable(Leaky(target.model))}
    assert found & model_objects(target.model)
    found = {id(o) for o in reachable({"net": [target.model.classifier.weight]})}
    assert id(target.model.classifier.weight) in found


@pytest.mark.parametrize("kind", ["rlb-mi", "brep-mi"])
def test_attack_object_has_no_path_to_the_model(kind, target, prior):
    oracle = ProbabilityOracle(target, budget=100) if kind == "rlb-mi" else LabelOracle(target, budget=100)
    attack = (RLBMI(oracle, prior.generator, RLBMIOptions(**RLB_TINY)) if kind == "rlb-mi"
              else BREPMI(oracle, prior.generator, BREPMIOptions(**BREP_TINY)))
    objs = reachable(attack)
    assert not {id(o) for o in objs} & model_objects(target.model)
    # the only modules reachable are the attacker's own generator (and its sub-modules)
    modules = [o for o in objs if isinstance(o, nn.Module)]
    assert modules and all(any(m is g for g in prior.generator.modules()) for m in modules)
    # and no tensor that carries autograd history from anything
    assert not any(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in objs)


def test_oracle_exposes_no_model_attribute(target):
    for oracle in (ProbabilityOracle(target), LabelOracle(target)):
        with pytest.raises(TypeError):
            vars(oracle)  # __slots__: no __dict__
        assert not hasattr(oracle, "__dict__")
        for name in dir(oracle):
            value = getattr(oracle, name)
            assert not isinstance(value, nn.Module | nn.Parameter), name
        for name in ("model", "target", "logits", "forward", "features", "classifier"):
            assert not hasattr(oracle, name)
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(oracle)
    assert not hasattr(ProbabilityOracle(target), "predict_label")
    assert not hasattr(LabelOracle(target), "predict_proba")


def test_predict_proba_is_a_detached_probability_vector(target):
    oracle = ProbabilityOracle(target)
    x = torch.rand(4, 1, SIZE, SIZE, requires_grad=True)
    probs = oracle.predict_proba(x)
    assert probs.grad_fn is None and not probs.requires_grad
    assert probs.shape == (4, 5)
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5) and bool((probs >= 0).all())
    with torch.no_grad():
        expected = target.model(x).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert oracle.queries == 4 and oracle.calls == 1
    with pytest.raises(ValueError, match="queries must be"):
        oracle.predict_proba(torch.rand(2, 3, SIZE, SIZE))
    assert oracle.queries == 4  # a refused request costs nothing


def test_label_oracle_returns_only_integer_labels(target):
    oracle = LabelOracle(target)
    x = torch.rand(6, 1, SIZE, SIZE, requires_grad=True)
    labels = oracle.predict_label(x)
    assert labels.dtype == torch.long and labels.shape == (6,) and labels.grad_fn is None
    with torch.no_grad():
        assert torch.equal(labels, target.model(x).argmax(1))
    assert oracle.queries == 6


def test_query_budget_exceeded_raises_and_answers_nothing(target):
    oracle = LabelOracle(target, budget=10)
    oracle.predict_label(torch.rand(6, 1, SIZE, SIZE))
    with pytest.raises(QueryBudgetExceeded, match="6 of 10"):
        oracle.predict_label(torch.rand(5, 1, SIZE, SIZE))
    assert oracle.queries == 6 and oracle.remaining == 4
    oracle.predict_label(torch.rand(4, 1, SIZE, SIZE))
    assert oracle.remaining == 0
    with pytest.raises(QueryBudgetExceeded):
        oracle.predict_label(torch.rand(1, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="budget"):
        ProbabilityOracle(target, budget=-1)
    with pytest.raises(ValueError, match="queries"):
        AttackBudget(queries=0)
    assert AttackBudget.from_dict({"queries": 500}).queries == 500


# --------------------------------------------------------------------------- the math


def test_rlb_reward_matches_the_paper_by_hand():
    p_state = torch.tensor([[0.6, 0.3, 0.1]])
    p_action = torch.tensor([[0.2, 0.5, 0.3]])
    r = rlb_reward(p_state, p_action, torch.tensor([0]), (2.0, 2.0, 8.0))
    expected = 2 * torch.log(torch.tensor(0.6)) + 2 * torch.log(torch.tensor(0.2)) + 8 * torch.log(torch.tensor(0.3))
    assert torch.allclose(r, expected.reshape(1), atol=1e-5)
    # a negative margin is floored at epsilon inside the log
    r = rlb_reward(p_action, p_action, torch.tensor([0]), (0.0, 0.0, 1.0), epsilon=1e-7)
    assert torch.allclose(r, torch.log(torch.tensor([1e-7])), atol=1e-4)


def test_repulsion_points_away_from_the_out_of_class_side():
    gen = torch.Generator().manual_seed(0)
    z = torch.zeros(1, 8)
    offsets = sphere_directions(z, 400, torch.tensor([2.0]), gen)
    assert torch.allclose(offsets.norm(dim=-1), torch.full((1, 400), 2.0), atol=1e-5)
    inside = offsets[..., 0] < 0.5  # the boundary is the plane x0 = 0.5: out of class beyond it
    d = repulsion_direction(offsets, inside, torch.tensor([2.0]))
    assert d[0, 0] < -0.05 and d[0, 1:].abs().max() < 0.5 * d[0, 0].abs()
    assert torch.equal(repulsion_direction(offsets, torch.ones_like(inside), torch.tensor([2.0])),
                       torch.zeros(1, 8))


# --------------------------------------------------------------------------- end to end


def test_rlbmi_end_to_end_within_the_query_budget(target, prior):
    budget = AttackBudget(queries=100)
    events = []
    result = run_attack("rlb-mi", target, [0, 3], per_identity=2, prior=prior, budget=budget,
                        options=RLB_TINY, seed=0, progress=events.append)
    # 2 identities x (1 step + 1 test rollout) = 4 queries per episode -> 25 episodes, exactly 100
    assert result.queries == 100 and result.extra["episodes"] == 25
    assert result.images.shape == (4, 1, SIZE, SIZE) and result.labels.tolist() == [0, 0, 3, 3]
    assert bool(((result.confidence >= 0) & (result.confidence <= 1)).all())
    qs = [q for q, _ in result.checkpoints]
    assert qs == sorted(qs) and qs[-1] == result.queries and len(qs) == 3
    assert all(px.shape == (4, 1, SIZE, SIZE) and px.min() >= 0 and px.max() <= 1 for _, px in result.checkpoints)
    assert events[-1].fraction == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not pay for one episode"):
        run_attack("rlb-mi", target, [0, 3], prior=prior, budget=AttackBudget(queries=3), options=RLB_TINY)


def test_brepmi_end_to_end_within_the_query_budget(target, prior):
    budget = AttackBudget(queries=400)
    result = run_attack("brep-mi", target, [0, 1, 2], per_identity=1, prior=prior, budget=budget,
                        options=BREP_TINY, seed=0)
    assert 0 < result.queries <= 400
    assert result.images.shape == (3, 1, SIZE, SIZE) and result.labels.tolist() == [0, 1, 2]
    qs = [q for q, _ in result.checkpoints]
    assert qs == sorted(qs) and qs[-1] == result.queries
    # every walk that found a start stays inside the identity's decision region
    found = result.extra["initial_found"]
    with torch.no_grad():
        pred = target.model(result.images).argmax(1)
    assert float((pred == result.labels).float().mean()) >= found - 1e-6
    # the oracle's count is exact: initial search + walk iterations
    assert result.extra["initial_queries"] <= 200  # init_fraction 0.5


def test_query_attacks_are_seeded_and_selectable_by_name(target, prior):
    from midre.attacks import list_attacks, resolve_attack_name

    assert {"rlb-mi", "brep-mi"} <= set(list_attacks())
    assert resolve_attack_name("BREPMI") == "brep-mi" and resolve_attack_name("rlbmi") == "rlb-mi"
    runs = [run_attack("brep-mi", target, [1], per_identity=1, prior=prior, budget=AttackBudget(queries=150),
                       options=BREP_TINY, seed=3) for _ in range(2)]
    assert torch.equal(runs[0].images, runs[1].images) and runs[0].queries == runs[1].queries
    with pytest.raises(ValueError, match="unknown option"):
        run_attack("rlb-mi", target, [0], prior=prior, options={"bogus": 1})


def test_report_shows_queries_and_attacc_vs_queries():
    from midre.report import aggregate_runs, render_html

    runs = [{"attack": "brep-mi", "defense": "nodef", "seed": 0, "acc": 90.0, "attacc_top1": 40.0,
             "attacc_top5": 70.0, "knn_dist": 1.0, "delta_eval": 1.0, "queries": 1234,
             "attacc_vs_queries": [{"queries": 300, "attacc_top1": 10.0, "attacc_top5": 30.0},
                                   {"queries": 1234, "attacc_top1": 40.0, "attacc_top5": 70.0}]}]
    results, _ = aggregate_runs(runs, ["nodef"], ["brep-mi"], baseline="nodef")
    assert results[0]["metrics"]["queries"]["mean"] == 1234
    page = render_html({"results": results, "runs": runs}, {})
    assert "AttAcc vs queries" in page and "1,234 → 40.0 (70.0)" in page and "<th>Queries</th>" in page


def test_study_config_accepts_a_query_budget():
    from midre.study import AttackEvalConfig

    cfg = AttackEvalConfig.from_dict({"target": "x", "attacks": ["rlb-mi", "brep-mi"],
                                      "attack_budgets": {"brep-mi": {"queries": 5000}}})
    assert cfg.budget_for("brep-mi").queries == 5000 and cfg.budget_for("rlb-mi").queries is None
    with pytest.raises(ValueError, match="queries"):
        AttackEvalConfig.from_dict({"target": "x", "attacks": ["brep-mi"],
                                    "attack_budgets": {"brep-mi": {"queries": -5}}})


@pytest.mark.slow
def test_rlbmi_agent_raises_the_target_confidence(target, prior):
    """With a few hundred episodes the learned policy beats its own random start."""
    result = run_attack("rlb-mi", target, [0, 1, 2, 3, 4], per_identity=1, prior=prior,
                        budget=AttackBudget(queries=3000), options={"hidden": 64, "batch_size": 32}, seed=0)
    assert result.extra["reward_last"] > result.extra["reward_first"]
