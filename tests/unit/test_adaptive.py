"""The adaptive attacker: an expectation over the defense's transform, refused where nothing adapts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from midre.attacks import AttackTarget
from midre.attacks.adaptive import ExpectationOverTransform, adaptive_target
from midre.defenses import adaptive_refusal, build_defense
from midre.errors import ConfigError


class Tiny(nn.Module):
    """A linear classifier on 8x8 one-channel images, with ``features`` like the study's models."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Flatten()
        self.classifier = nn.Linear(64, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def _target(defense):
    return AttackTarget(model=Tiny().eval(), image_shape=(1, 8, 8), num_classes=3,
                        card={"defense": build_defense(defense).spec()})


def test_the_adaptive_gradient_passes_through_the_erasing():
    transform = build_defense({"name": "midre", "a_e": 0.25}).attack_transform(None)
    model = Tiny()
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    one = ExpectationOverTransform(model, transform, samples=1, seed=0)
    one(x)[0, 0].backward()
    g = x.grad.abs().flatten()
    # one draw: a 4x4 square is erased (no gradient there), every other pixel gets the model's gradient
    assert (g == 0).sum() == 16 and (g > 0).sum() == 48
    x.grad = None
    many = ExpectationOverTransform(model, transform, samples=64, seed=0)
    many(x)[0, 0].backward()
    expected = model.classifier.weight[0].abs()
    g = x.grad.abs().flatten()
    # the expectation: every pixel gets a share, smaller where the squares fall more often
    assert (g > 0).all() and (g <= expected + 1e-6).all() and (g < expected - 1e-6).any()


def test_the_expectation_is_seeded_and_averages_logits():
    transform = build_defense({"name": "midre", "a_h": 0.5}).attack_transform(None)
    model = Tiny()
    x = torch.rand(2, 1, 8, 8)
    a = ExpectationOverTransform(model, transform, samples=8, seed=3)(x)
    b = ExpectationOverTransform(model, transform, samples=8, seed=3)(x)
    assert torch.equal(a, b) and a.shape == (2, 3)
    assert not torch.allclose(a, model(x))  # it is not the plain model
    feats = ExpectationOverTransform(model, transform, samples=8, seed=3).features(x)
    assert feats.shape == (2, 64)


@pytest.mark.parametrize("defense", [{"name": "midre", "a_h": 0.6}, {"name": "fixed-erasing"},
                                     {"name": "entire-erasing", "share": 0.3}, {"name": "random-crop"},
                                     {"name": "gaussian-blur"}, [{"name": "midre"}, {"name": "nls"}]])
def test_defenses_with_a_transform_adapt(defense):
    assert adaptive_refusal(defense) is None
    wrapped = adaptive_target(_target(defense), "mi-face", samples=2)
    assert isinstance(wrapped.model, ExpectationOverTransform) and wrapped.num_classes == 3
    assert wrapped.model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("defense,words", [("nodef", "baseline"), ("nls", "loss or the model"),
                                           ("cutmix", "mixes pairs"), ("bido", "loss or the model")])
def test_defenses_without_one_are_refused_with_the_reason(defense, words):
    assert words in adaptive_refusal(defense)
    with pytest.raises(ConfigError) as err:
        adaptive_target(_target(defense), "gmi")
    assert err.value.field == "adaptive" and words in str(err.value)


def test_only_white_box_attacks_adapt():
    with pytest.raises(ConfigError, match="rlb-mi only queries the model"):
        adaptive_target(_target("midre"), "rlb-mi")


def test_study_settings_name_the_field_at_fault():
    from midre.study import PipelineConfig

    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_dict({"data": "digits", "attacks": ["rlb-mi"],
                                  "attack_options": {"rlb-mi": {"adaptive": True}}})
    assert err.value.field == "attack_options.rlb-mi.adaptive"
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_dict({"data": "digits", "defenses": ["nodef", "nls"], "adaptive": True})
    assert err.value.field == "adaptive" and "nls" in str(err.value)
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_dict({"data": "digits", "attack_options": {"gmi": {"adaptive": True, "eot_samples": 0}}})
    assert err.value.field == "attack_options.gmi.eot_samples"
    cfg = PipelineConfig.from_dict({"data": "digits", "attacks": ["mi-face", "rlb-mi", "gmi"], "adaptive": True,
                                    "defenses": ["nodef", "midre", "nls"]})
    assert cfg.adaptive_attacks() == ["mi-face", "gmi"]  # every white-box attack; rlb-mi only queries
    assert "adaptive" not in cfg.options_for("gmi")


def test_the_plan_adds_adaptive_runs_only_where_a_transform_exists():
    from midre.plan import plan_study, study_config

    cfg = study_config("pipeline", {"data": "digits", "attacks": ["mi-face"], "seeds": 1,
                                    "defenses": ["nodef", "midre", "nls"],
                                    "attack_options": {"mi-face": {"adaptive": True, "eot_samples": 2}}})
    keys = [u.key for u in plan_study(cfg)]
    assert "attack/midre/seed0/mi-face@adaptive" in keys
    assert not any(k.endswith("@adaptive") and ("nodef" in k or "/nls/" in k) for k in keys)
    report = next(u for u in plan_study(cfg) if u.key == "report")
    assert "attack/midre/seed0/mi-face@adaptive" in report.deps
