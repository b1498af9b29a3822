"""PPA, IF-GMI and MIRROR: the Poincaré loss and the l1-ball projection by hand, PPA's final selection
on a constructed case, the out-of-memory fallback, every attack on a tiny 32 px target with a WGAN-GP
prior and with a random StyleGAN2, and the pipeline end to end on digits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from midre.attacks import AttackBudget, AttackTarget, get_attack, list_attacks, run_attack
from midre.attacks.highres import (
    BatchFallback,
    PPAOptions,
    is_out_of_memory,
    poincare_loss,
    project_l1_ball,
    robust_selection,
)
from midre.errors import ConfigError
from midre.priors import GanPrior, PriorConfig, PublicData, StyleGAN2, StyleGAN2Config, train_prior

SIZE = 32
SMALL_OPTIONS = {"candidates": 3, "search_space": 12, "final_transforms": 3, "batch_size": 8}
STYLEGAN = {"resolution": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 64, "channel_max": 8}


class Net(nn.Module):
    """A small classifier with the ``features`` / ``classifier`` contract."""

    def __init__(self, num_classes: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(32, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def target() -> AttackTarget:
    torch.manual_seed(0)
    return AttackTarget(Net().eval(), (3, SIZE, SIZE), None, key="net32")


@pytest.fixture(scope="module")
def gan_prior() -> GanPrior:
    images = (torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    public = PublicData.from_images(images, "noise")
    return train_prior(PriorConfig(kind="gmi", steps=1, width=8, batch_size=4, n_critic=1), public, (3, SIZE, SIZE))


# --------------------------------------------------------------------------- losses and projections by hand


def _poincare_by_hand(logits: list[float], label: int, eps: float) -> float:
    l1 = sum(abs(v) for v in logits)
    u = [v / l1 for v in logits]
    v = [(1.0 - eps) if i == label else 0.0 for i in range(len(logits))]
    uu = sum(a * a for a in u)
    vv = sum(b * b for b in v)
    diff = sum((a - b) ** 2 for a, b in zip(u, v, strict=True))
    return math.acosh(1 + 2 * diff / ((1 - uu) * (1 - vv)))


def test_poincare_loss_against_hand_computed_values():
    # logits (2, 1, 1), label 0, eps 1e-5: u = (.5, .25, .25), |u|^2 = .375, v = (.99999, 0, 0),
    # |u - v|^2 = .49999^2 + .125 = .37499..., delta = 2 * .37499 / (.625 * (1 - .99999^2)) = 59998.7...
    delta = 2 * (0.49999 ** 2 + 0.125) / (0.625 * (1 - 0.99999 ** 2))
    assert delta == pytest.approx(59998.7, rel=1e-5)
    expected = math.log(1 + delta + math.sqrt((1 + delta) ** 2 - 1))
    logits = torch.tensor([[2.0, 1.0, 1.0], [-1.0, 3.0, 0.0], [0.5, 0.5, 4.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    got = poincare_loss(logits, labels, eps=1e-5)
    assert got[0].item() == pytest.approx(expected, rel=1e-9)
    for i in range(3):
        assert got[i].item() == pytest.approx(_poincare_by_hand(logits[i].tolist(), int(labels[i]), 1e-5), rel=1e-9)
    # more confident in the label -> smaller loss
    assert got[1] < poincare_loss(torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64), labels[1:2])[0]


def test_l1_ball_projection():
    inside = torch.tensor([[0.5, -0.25, 0.25]])
    assert torch.equal(project_l1_ball(inside, 1.0), inside)  # identity inside the ball (|d|_1 = 1)
    # by hand (Duchi et al. 2008): (3, -1, 0.5), r = 2 -> theta = 1 -> (2, 0, 0); (1, 1, 1), r = 1.5 -> theta = .5
    out = project_l1_ball(torch.tensor([[3.0, -1.0, 0.5], [1.0, 1.0, 1.0]]), torch.tensor([2.0, 1.5]))
    assert torch.allclose(out, torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, 0.5]]))
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 2, 3, 3, generator=g) * 4
    p = project_l1_ball(d, 3.0)
    assert p.shape == d.shape
    assert torch.allclose(p.flatten(1).abs().sum(1), torch.full((5,), 3.0), atol=1e-4)  # on the sphere
    # it is the closest point of the ball: no random point of the ball is nearer
    for _ in range(50):
        q = torch.randn(5, 18, generator=g)
        q = q / q.abs().sum(1, keepdim=True) * 3.0 * torch.rand(5, 1, generator=g)
        assert bool(((d.flatten(1) - p.flatten(1)).norm(dim=1) <= (d.flatten(1) - q).norm(dim=1) + 1e-5).all())
    assert torch.equal(project_l1_ball(d, 0.0), torch.zeros_like(d))


class CornerReader(nn.Module):
    """Class 0 when the top-left 3x3 corner is bright: its confidence depends on where content sits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, :3, :3].mean(dim=(1, 2, 3))
        return torch.stack([12 * corner - 6, torch.zeros_like(corner)], 1)


def test_final_selection_prefers_transformation_robust_candidates():
    # identity 0, three candidates: uniform 0.75 (robust: every crop looks the same), a bright corner on
    # black (the most confident as is, but crops move the corner away), and a dim uniform image
    robust = torch.full((1, 16, 16), 0.75)
    fragile = torch.zeros(1, 16, 16)
    fragile[:, :3, :3] = 1.0
    dim = torch.full((1, 16, 16), 0.4)
    x = torch.stack([fragile, robust, dim])
    labels = torch.zeros(3, dtype=torch.long)
    model = CornerReader()

    def conf(images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(images).softmax(1).gather(1, y[:, None]).squeeze(1)

    plain = conf(x, labels)
    assert plain.argmax() == 0  # without transformations the fragile candidate wins
    options = PPAOptions(final_transforms=50)
    idx, score = robust_selection(conf, x, labels, 3, 1, options, torch.Generator().manual_seed(0),
                                  BatchFallback(8), torch.device("cpu"))
    assert idx.tolist() == [1] and 0 < float(score[0]) <= 1
    idx2, _ = robust_selection(conf, x, labels, 3, 2, options, torch.Generator().manual_seed(0),
                               BatchFallback(2), torch.device("cpu"))
    assert idx2.tolist() == [1, 2]  # under crops even the dim image beats the fragile one
    # two identities, identity-major groups
    both, _ = robust_selection(conf, torch.cat([x, x]), torch.tensor([0, 0, 0, 1, 1, 1]), 3, 1, options,
                               torch.Generator().manual_seed(0), BatchFallback(8), torch.device("cpu"))
    assert both.tolist() == [1, 3]  # identity 1 (class 1) is most robust where the corner is lost


# --------------------------------------------------------------------------- out-of-memory fallback


class RaisesAboveBatch(nn.Module):
    """Raises the device's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> None:
        super().__init__()
        self.limit, self.message, self.sizes = limit, message, []
        self.inner = Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise RuntimeError(self.message)
        return self.inner(x)


def test_batch_fallback_halves_and_retries(caplog):
    model = RaisesAboveBatch(3)
    x = torch.rand(10, 3, 8, 8)
    batches = BatchFallback(16)
    with caplog.at_level("WARNING"):
        parts = batches.map(lambda sl: model(x[sl]), 10, "test")
    assert torch.allclose(torch.cat(parts), model.inner(x), atol=1e-6)
    assert batches.batch_size == 2 and batches.fallbacks == 3  # 16 -> 8 -> 4 -> 2
    assert "out of memory" in caplog.text
    with pytest.raises(RuntimeError, match="out of memory"):
        BatchFallback(4).map(lambda sl: RaisesAboveBatch(0)(x[sl]), 10)
    other = RaisesAboveBatch(1, "shape mismatch")
    with pytest.raises(RuntimeError, match="shape"):  # other errors are not retried
        BatchFallback(4).map(lambda sl: other(x[sl]), 10)
    assert other.sizes == [4]
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_attack_falls_back_on_out_of_memory():
    model = RaisesAboveBatch(5).eval()
    target = AttackTarget(model, (3, SIZE, SIZE), None, key="oom", num_classes=4)
    result = run_attack("ppa", target, [0, 1], per_identity=2, budget=AttackBudget(steps=1),
                        options={**SMALL_OPTIONS, "batch_size": 12, "stylegan2_random": STYLEGAN})
    assert result.images.shape == (4, 3, SIZE, SIZE)
    assert result.extra["oom_fallbacks"] >= 1 and result.extra["batch_size"] <= 5
    assert max(s for s in model.sizes if s <= 5) <= 5


# --------------------------------------------------------------------------- the attacks end to end


def test_names_are_registered():
    assert {"ppa", "if-gmi", "mirror"} <= set(list_attacks())
    assert get_attack("ppa").needs == "gmi" and get_attack("ifgmi").name == "if-gmi"


def _check(result, ids, per_identity):
    n = len(ids) * per_identity
    assert result.images.shape == (n, 3, SIZE, SIZE)
    assert result.labels.tolist() == [i for i in ids for _ in range(per_identity)]
    assert result.confidence.shape == (n,) and bool(((result.confidence >= 0) & (result.confidence <= 1)).all())
    assert torch.isfinite(result.images).all() and result.queries > 0 and result.seconds > 0


@pytest.mark.parametrize("name", ["ppa", "if-gmi", "mirror"])
def test_attack_with_a_wgan_gp_prior(name, target, gan_prior):
    events = []
    result = run_attack(name, target, [0, 3], per_identity=2, prior=gan_prior, budget=AttackBudget(steps=2),
                        options=SMALL_OPTIONS, seed=1, progress=events.append)
    _check(result, [0, 3], 2)
    assert result.extra["generator"] == "gan"
    assert events and events[-1].fraction == pytest.approx(1.0)
    if name == "if-gmi":
        assert result.extra["stages"] == 4  # W + 3 feature stages (the 32 px WGAN-GP has 4 blocks)


@pytest.mark.parametrize("name", ["ppa", "if-gmi", "mirror"])
def test_attack_with_a_random_stylegan2(name, target):
    opts = {**SMALL_OPTIONS, "stylegan2_random": STYLEGAN}
    result = run_attack(name, target, [1, 2], per_identity=1, budget=AttackBudget(steps=2), options=opts, seed=2)
    _check(result, [1, 2], 1)
    assert result.extra["generator"] == "stylegan2"
    again = run_attack(name, target, [1, 2], per_identity=1, budget=AttackBudget(steps=2), options=opts, seed=2)
    assert torch.equal(result.images, again.images)  # seeded


def test_a_stylegan2_object_serves_as_prior(target):
    net = StyleGAN2(StyleGAN2Config(**STYLEGAN), seed=0)
    result = run_attack("mirror", target, [0], per_identity=1, prior=net, budget=AttackBudget(steps=1),
                        options=SMALL_OPTIONS)
    _check(result, [0], 1)


def test_optimisation_raises_the_target_confidence(target):
    opts = {**SMALL_OPTIONS, "stylegan2_random": STYLEGAN, "final_transforms": 0}
    short = run_attack("mirror", target, [0, 1, 2, 3], per_identity=1, budget=AttackBudget(steps=0), options=opts)
    long = run_attack("mirror", target, [0, 1, 2, 3], per_identity=1, budget=AttackBudget(steps=25, lr=0.3),
                      options={**opts, "p_std": 3.0})
    assert long.confidence.mean() > short.confidence.mean()


def test_options_are_validated(target):
    with pytest.raises(ConfigError) as err:
        run_attack("if-gmi", target, [0], options={"ball_radius": -1})
    assert err.value.field == "ball_radius"
    with pytest.raises(ConfigError) as err:
        run_attack("ppa", target, [0], options={"final_scale": [0.9, 0.5]})
    assert err.value.field == "final_scale"
    with pytest.raises(ValueError, match="prior"):
        run_attack("ppa", target, [0], budget=AttackBudget(steps=1))  # no prior, no public data


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.slow
def test_pipeline_runs_the_three_attacks(tmp_path):
    from midre.cli import main

    options = {a: SMALL_OPTIONS for a in ("ppa", "if-gmi", "mirror")}
    rc = main(["pipeline", "--data", "digits", "--image-size", "32", "--defenses", "nodef", "--seeds", "1",
               "--epochs", "1", "--attacks", "ppa,if-gmi,mirror", "--identities", "2", "--per-identity", "1",
               "--steps", "1", "--prior-steps", "1", "--eval-epochs", "1", "--eval-arch", "cnn-small",
               "--feature-identities", "0", "--attack-options", json.dumps(options), "--quiet",
               "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["attack"] for r in report["results"]}
    assert rows == {"ppa", "if-gmi", "mirror"}
    for row in report["results"]:
        assert row["metrics"]["attacc_top1"]["n"] == 1


def test_paper_224_configs_are_valid_pipeline_configs():
    from pathlib import Path

    from midre.study import PipelineConfig

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("paper-224-*.json"))
    archs = set()
    for path in files:
        cfg = PipelineConfig.from_dict({"data": "digits", **json.loads(path.read_text())})
        assert cfg.image_size == 224 and cfg.epochs == 100 and cfg.batch_size == 128 and cfg.lr == 1e-3
        assert cfg.attacks == ["ppa", "if-gmi", "mirror"] and cfg.eval_arch != cfg.arch
        archs.add(cfg.arch)
    assert archs == {"resnet18", "resnet101", "resnet152", "densenet121", "densenet169", "maxvit_t"}
