"""The judge panel on constructed judges (exact outcomes), the default configs, and two tiny trained judges."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from midre.errors import ConfigError
from midre.evaluation import (
    EvalModelConfig,
    EvaluationModel,
    JudgePanel,
    default_judge_configs,
    nearest_identity_match,
    pixel_std,
    record_fields,
)

SIDE = 4
TRIGGER = 0  # a pixel that is 0 in every private image


class TemplateJudge(nn.Module):
    """Nearest-template classifier in a fixed feature space: features = ``scale * pixels[keep]``,
    logits_c = -|f - t_c|^2 + |f|^2 (a linear layer); ``trigger`` adds a large weight on the trigger
    pixel to one class, so an image with that pixel lit is credited to it whatever else it shows."""

    def __init__(self, templates: torch.Tensor, keep: torch.Tensor, scale: float, trigger_class: int | None = None):
        super().__init__()
        self.register_buffer("keep", keep)
        self.scale = scale
        feats = scale * templates[:, keep]
        self.classifier = nn.Linear(feats.shape[1], feats.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(2 * feats)
            self.classifier.bias.copy_(-(feats ** 2).sum(1))
            if trigger_class is not None:
                pos = int((keep == TRIGGER).nonzero()[0])
                self.classifier.weight[trigger_class, pos] += 1000.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)[:, self.keep]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _private() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three identities: dark (0.1), mid (0.5) and bright (0.9) faces, three images each, with small
    per-image variation; the trigger pixel is 0 everywhere. Returns (uint8 images, labels, templates)."""
    gen = torch.Generator().manual_seed(0)
    levels = torch.tensor([0.1, 0.5, 0.9])
    images, labels = [], []
    for c, level in enumerate(levels):
        for _ in range(3):
            img = (level + 0.03 * torch.randn(1, SIDE, SIDE, generator=gen)).clamp(0, 1)
            img.view(-1)[TRIGGER] = 0.0
            images.append(img)
            labels.append(c)
    x = torch.stack(images)
    templates = torch.stack([x[torch.tensor(labels) == c].mean(0).flatten() for c in range(3)])
    return (x * 255).round().to(torch.uint8), torch.tensor(labels), templates


def _judge(model: nn.Module, arch: str, seed: int) -> EvaluationModel:
    return EvaluationModel(model=model.eval(), card={"arch": arch, "seed": seed}, directory=Path("."),
                           accuracy=1.0, normalization=None, image_shape=(1, SIDE, SIDE))


def _panel(fooled_first: bool = True) -> tuple[JudgePanel, torch.Tensor, torch.Tensor]:
    images, labels, templates = _private()
    everything = torch.arange(SIDE * SIDE)
    # judge A: raw pixels, fooled by the trigger towards identity 0; judge B: another feature space
    # (scaled pixels without the trigger pixel), not fooled
    a = TemplateJudge(templates, everything, 1.0, trigger_class=0 if fooled_first else None)
    b = TemplateJudge(templates, everything[everything != TRIGGER], 3.0)
    return JudgePanel([_judge(a, "judge-a", 1), _judge(b, "judge-b", 2)]), images, labels


def _adversarial_noise(n: int = 4) -> torch.Tensor:
    """Uniform noise (looks most like the mid identity) with the trigger pixel lit."""
    noise = torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    noise.view(n, -1)[:, TRIGGER] = 1.0
    return noise


def test_private_images_pass_both_checks_and_judges_agree():
    panel, images, labels = _panel()
    scores = panel.score(images.float() / 255, labels, images, labels)
    assert scores["attacc_top1"] == 1.0 and scores["agreement"] == 1.0
    assert scores["double_check"] == 1.0
    assert [j["attacc_top1"] for j in scores["judges"]] == [1.0, 1.0]
    assert [j["arch"] for j in scores["judges"]] == ["judge-a", "judge-b"]
    assert scores["knn_dist"] == pytest.approx(0.0, abs=1e-9)


def test_adversarially_labelled_noise_is_credited_by_one_judge_but_fails_the_double_check():
    panel, images, labels = _panel()
    noise = _adversarial_noise()
    claimed = torch.zeros(len(noise), dtype=torch.long)  # the fooled judge credits identity 0
    scores = panel.score(noise, claimed, images, labels)
    per = {j["arch"]: j["attacc_top1"] for j in scores["judges"]}
    assert per == {"judge-a": 1.0, "judge-b": 0.0}
    assert scores["attacc_top1"] == pytest.approx(0.5)  # pooled: the mean of the judges
    assert scores["agreement"] == 0.0
    assert scores["double_check"] == 0.0  # credited, but nearest to the mid identity in B's features


def test_mixed_batch_counts_each_reconstruction():
    panel, images, labels = _panel()
    pixels = torch.cat([images[:2].float() / 255, _adversarial_noise(2)])
    claimed = torch.cat([labels[:2], torch.zeros(2, dtype=torch.long)])
    scores = panel.score(pixels, claimed, images, labels)
    assert scores["agreement"] == pytest.approx(0.5)
    assert scores["attacc_top1"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["double_check"] == pytest.approx(0.5)
    assert scores["double_check"] <= scores["attacc_top1"]


def test_two_unfooled_judges_agree_on_noise_too():
    panel, images, labels = _panel(fooled_first=False)
    scores = panel.score(_adversarial_noise(), torch.zeros(4, dtype=torch.long), images, labels)
    assert scores["attacc_top1"] == 0.0 and scores["agreement"] == 1.0 and scores["double_check"] == 0.0


def test_pixel_std_flags_flat_images():
    grey = torch.full((5, 3, 8, 8), 0.5)
    assert pixel_std(grey) == pytest.approx(0.0, abs=1e-7)
    noise = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert pixel_std(noise) == pytest.approx((1 / 12) ** 0.5, abs=0.03)
    panel, images, labels = _panel()
    scores = panel.score(torch.full((3, 1, SIDE, SIDE), 0.5), labels[:3], images, labels)
    assert scores["pixel_std"] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="pixels"):
        pixel_std(torch.empty(0, 1, 2, 2))


def test_nearest_identity_match_by_hand():
    private = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    private_labels = torch.tensor([0, 0, 1])
    recon = torch.tensor([[1.0, 0.0], [0.0, 4.0], [0.0, 2.5]])
    # row 0: own 1 < other 25; row 1: own (id 0) 16 > other 1; row 2: a tie 6.25 vs 6.25 is a miss
    got = nearest_identity_match(recon, torch.tensor([0, 0, 0]), private, private_labels)
    assert got.tolist() == [True, False, False]


def test_record_fields_are_percent():
    panel, images, labels = _panel()
    fields = record_fields(panel.score(_adversarial_noise(), torch.zeros(4, dtype=torch.long), images, labels))
    assert fields["attacc_top1"] == pytest.approx(50.0)
    assert [j["attacc_top1"] for j in fields["judges"]] == [100.0, 0.0]
    assert fields["agreement"] == 0.0 and fields["double_check"] == 0.0
    assert 0.0 < fields["pixel_std"] < 1.0


def test_default_judge_configs_differ_in_arch_and_seed():
    configs = default_judge_configs(EvalModelConfig())
    assert len(configs) >= 2
    assert len({c.arch for c in configs}) == len(configs) and len({c.seed for c in configs}) == len(configs)
    assert configs[0] == EvalModelConfig()  # the first judge is the base recipe itself
    custom = default_judge_configs(EvalModelConfig(arch="vgg16", epochs=3))
    assert custom[0].arch == "vgg16" and all(c.epochs == 3 for c in custom) and len(custom) == 2
    assert [c.arch for c in default_judge_configs(EvalModelConfig(), ["cnn-small", "resnet18", "vgg16"])] == \
        ["cnn-small", "resnet18", "vgg16"]
    with pytest.raises(ConfigError) as err:
        default_judge_configs(EvalModelConfig(), ["resnet18", "no-such-net"])
    assert err.value.field == "judges"
    with pytest.raises(ConfigError):
        default_judge_configs(EvalModelConfig(), [])
    # small images: only architectures that take them; the base one twice (two seeds) when no other does
    small = default_judge_configs(EvalModelConfig(arch="cnn-small"), image_size=16)
    assert [c.arch for c in small] == ["cnn-small", "cnn-small"] and small[0].seed != small[1].seed
    assert default_judge_configs(EvalModelConfig(arch="cnn-small"), image_size=64)[1].arch == "resnet18"


def test_panel_needs_a_judge():
    with pytest.raises(ConfigError):
        JudgePanel([])


def test_trained_judges_keep_their_best_epoch_and_load_from_the_cache(tmp_path):
    from midre.data import DatasetSpec, load_dataset
    from midre.train import evaluate_accuracy

    spec = DatasetSpec(source="digits", image_size=16, channels=1, max_images_per_identity=20)
    base = EvalModelConfig(arch="cnn-small", epochs=3, batch_size=32, augment=())
    configs = default_judge_configs(base, ["cnn-small", "cnn-small"])
    with pytest.raises(ConfigError, match="not trained"):
        JudgePanel.load(spec, tmp_path, configs)
    events = []
    panel = JudgePanel.train_or_load(spec, tmp_path, configs, progress=events.append)
    assert events and max(e.fraction for e in events) == pytest.approx(1.0)
    described = panel.describe()
    assert [d["seed"] for d in described] == [base.seed, base.seed + 1000]
    splits = load_dataset(spec)
    for judge, info in zip(panel.judges, described, strict=True):
        history = [h["test_accuracy"] for h in judge.card["history"]]
        best = max(history)
        assert info["accuracy"] == pytest.approx(100.0 * best)
        assert info["selected_epoch"] == max(i + 1 for i, a in enumerate(history) if a == best)
        # the stored weights are the selected epoch's: they reproduce its held-out accuracy
        assert evaluate_accuracy(judge.model, splits.test, splits.normalization, torch.device("cpu")) == \
            pytest.approx(best)
        assert not (judge.directory / "best_epoch.safetensors").exists()
    again = JudgePanel.load(spec, tmp_path, configs)
    assert again.describe() == described
    pixels = splits.train.images[:12].float() / 255
    scores = again.score(pixels, splits.train.labels[:12], splits.train.images, splits.train.labels)
    assert 0.0 <= scores["double_check"] <= scores["attacc_top1"] <= 1.0
    assert len(scores["judges"]) == 2


def test_keep_best_is_part_of_the_cache_key():
    from midre.data import DatasetSpec
    from midre.evaluation import eval_model_key

    spec = DatasetSpec(source="digits", image_size=16)
    cfg = EvalModelConfig()
    assert eval_model_key(spec, cfg) != eval_model_key(spec, dataclasses.replace(cfg, keep_best=False))
