"""Every attack end to end on tiny digits (16 px, a few steps), plus the shared attack pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from midre.attacks import AttackBudget, AttackCancelled, AttackTarget, list_attacks, run_attack
from midre.attacks.base import PixelCodec, max_margin_loss, select_best_restart, total_variation
from midre.attacks.image_space import BatchNormStatsHook
from midre.priors import GanPrior, PriorConfig, PublicData, load_or_train_prior, pseudo_label_public

SIZE = 16


class TinyNet(nn.Module):
    """Stand-in target with the contract's ``features`` / ``classifier`` and BatchNorm layers."""

    def __init__(self, num_classes: int = 5, channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, size=SIZE, mode="bilinear")
    return x, torch.tensor(d.target)


def tiny_target(digits, key: str) -> AttackTarget:
    """A TinyNet trained 2 epochs on digits 0-4 (the private identities); 5-9 stay public."""
    x, y = digits
    private = y < 5
    torch.manual_seed(0)
    model = TinyNet(5)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xp, yp = x[private], y[private]
    for _ in range(2):
        for i in range(0, len(xp), 96):
            loss = F.cross_entropy(model(xp[i:i + 96]), yp[i:i + 96])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return AttackTarget(model, (1, SIZE, SIZE), None, key=key)


@pytest.fixture(scope="module")
def target(digits):
    return tiny_target(digits, "tiny-digits")


@pytest.fixture(scope="module")
def public(digits):
    x, y = digits
    return PublicData.from_images((x[y >= 5] * 255).round().to(torch.uint8), "digits 5-9")


TINY = AttackBudget(steps=3, restarts=2, prior_steps=2, surrogate_epochs=1)


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_end_to_end(name, target, public, tmp_path):
    options = {"prior": {"width": 8, "batch_size": 8}} if name not in ("mi-face", "deepinversion") else None
    if name in ("ppa", "if-gmi", "mirror"):  # the authors' search sizes are GPU-scale
        options = {**options, "search_space": 12, "candidates": 3, "final_transforms": 3}
    events = []
    result = run_attack(name, target, [0, 2, 4], per_identity=2, public=public, budget=TINY, options=options,
                        seed=1, cache_dir=str(tmp_path), progress=events.append)
    assert result.images.shape == (6, 1, SIZE, SIZE)
    assert result.labels.tolist() == [0, 0, 2, 2, 4, 4]
    assert result.confidence.shape == (6,)
    assert bool(((result.confidence >= 0) & (result.confidence <= 1)).all())
    assert torch.isfinite(result.images).all()
    pixels = result.pixels()
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert result.queries > 0 and result.seconds > 0
    assert events and all(0.0 <= e.fraction <= 1.0 for e in events)
    assert events[-1].fraction == pytest.approx(1.0)


def test_normalised_target_returns_input_space(target):
    from midre.data import IMAGENET

    norm_target = AttackTarget(target.model, (1, SIZE, SIZE), IMAGENET, key="n")
    result = run_attack("mi-face", norm_target, [1], per_identity=2, budget=AttackBudget(steps=2))
    codec = PixelCodec(IMAGENET, 1, torch.device("cpu"))
    assert torch.all(result.images >= codec.lo - 1e-5) and torch.all(result.images <= codec.hi + 1e-5)
    assert torch.allclose(codec.to_input(result.pixels()), result.images, atol=1e-5)


def test_bare_model_needs_image_shape(target):
    with pytest.raises(ValueError, match="image_shape"):
        run_attack("mi-face", target.model, [0])
    result = run_attack("mi-face", target.model, [0], per_identity=1, image_shape=(1, SIZE, SIZE),
                        budget=AttackBudget(steps=1))
    assert result.images.shape == (1, 1, SIZE, SIZE)


def test_bad_names_and_identities(target):
    with pytest.raises(ValueError, match="known attacks: mi-face"):
        run_attack("nope", target, [0])
    with pytest.raises(ValueError, match="identities"):
        run_attack("mi-face", target, [7])
    with pytest.raises(ValueError, match="unknown option"):
        run_attack("deepinversion", target, [0], options={"bogus": 1})
    with pytest.raises(ValueError, match="prior"):
        run_attack("gmi", target, [0], budget=TINY)
    with pytest.raises(ValueError, match="steps"):
        AttackBudget(steps=-1)


def test_should_stop_cancels(target):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(AttackCancelled):
        run_attack("deepinversion", target, [0, 1], budget=AttackBudget(steps=50), should_stop=stop)


def test_seeded_runs_are_reproducible(target):
    a = run_attack("deepinversion", target, [0, 3], per_identity=1, budget=AttackBudget(steps=3), seed=5)
    b = run_attack("deepinversion", target, [0, 3], per_identity=1, budget=AttackBudget(steps=3), seed=5)
    assert torch.equal(a.images, b.images)


def test_deepinversion_raises_target_confidence(target):
    # a light BatchNorm weight so that 25 steps are enough for the identity term to show
    opts = {"bn_weight": 0.1}
    ids = [0, 1, 2, 3, 4]
    short = run_attack("deepinversion", target, ids, per_identity=2, budget=AttackBudget(steps=1), options=opts)
    long = run_attack("deepinversion", target, ids, per_identity=2, budget=AttackBudget(steps=25), options=opts)
    assert long.confidence.mean() > short.confidence.mean() + 0.2
    assert long.extra["final_identity_loss"] < short.extra["final_identity_loss"]


def test_deepinversion_multi_resolution_schedule(target):
    """A low-resolution first phase, then full size: the result has the target's image shape."""
    ids = [0, 1, 2]
    opts = {"bn_weight": 0.1, "low_res_fraction": 0.5, "flip": False, "jitter": 0}
    two_steps = run_attack("deepinversion", target, ids, per_identity=1, budget=AttackBudget(steps=2),
                           options=opts, seed=1)
    assert two_steps.images.shape == (3, *target.image_shape)
    run = run_attack("deepinversion", target, ids, per_identity=2, budget=AttackBudget(steps=20), options=opts)
    assert run.images.shape == (6, *target.image_shape) and torch.isfinite(run.images).all()
    assert run.queries >= 6 * 20
    with pytest.raises(ValueError, match="low_res"):
        run_attack("deepinversion", target, ids, budget=AttackBudget(steps=2), options={"low_res_fraction": 1.5})


def test_bn_hook_matches_running_statistics():
    bn = nn.BatchNorm2d(4).eval()
    hook = BatchNormStatsHook(nn.Sequential(bn))
    gen = torch.Generator().manual_seed(0)
    bn(torch.randn(4096, 4, 2, 2, generator=gen))  # running stats: mean 0, var 1
    matched = hook.take(1.0)
    bn(torch.randn(4096, 4, 2, 2, generator=gen) * 3 + 2)
    shifted = hook.take(1.0)
    hook.close()
    assert matched < 0.1
    # ||mu - 0|| = 2 * sqrt(4) = 4 and ||var - 1|| = 8 * sqrt(4) = 16
    assert shifted == pytest.approx(20.0, rel=0.05)


def test_total_variation_and_margin_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    # horizontal diffs |1-0| twice over 2 entries = 1, vertical diffs 0
    assert total_variation(x).item() == pytest.approx(1.0)
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert max_margin_loss(logits, torch.tensor([0, 2])).tolist() == pytest.approx([-1.0, 4.0])


def test_select_best_restart():
    losses = torch.tensor([3.0, 1.0, 2.0, 0.5])  # restart-major: r0 = [3, 1], r1 = [2, 0.5]
    assert select_best_restart(losses, 2, 2).tolist() == [2, 3]


def test_prior_is_cached_and_reused(public, tmp_path, monkeypatch):
    cfg = PriorConfig(kind="gmi", steps=2, width=8, batch_size=8)
    first = load_or_train_prior(cfg, public, (1, SIZE, SIZE), cache_dir=tmp_path)
    key = first.info["key"]
    assert (tmp_path / "priors" / key / "generator.safetensors").is_file()
    assert (tmp_path / "priors" / key / "prior.json").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("the cached prior must be reused, not retrained")

    monkeypatch.setattr("midre.priors.prior.train_prior", boom)
    second = load_or_train_prior(cfg, public, (1, SIZE, SIZE), cache_dir=tmp_path)
    z = torch.randn(3, cfg.latent_dim)
    assert torch.allclose(first.generator.eval()(z), second.generator(z), atol=1e-6)
    loaded = GanPrior.load(tmp_path / "priors" / key)
    assert loaded.kind == "gmi" and loaded.image_shape == (1, SIZE, SIZE)


def test_prior_resolution_draws_small_and_outputs_full_size(public, tmp_path):
    """``resolution`` shrinks the networks' working side, not the images the attacks see."""
    from midre.priors.gan import Discriminator, Generator

    full, small = Generator(image_size=32, channels=1, width=8), Generator(image_size=32, channels=1, width=8,
                                                                          resolution=16)
    assert len(small.ups) == len(full.ups) - 1  # one up-sampling block fewer
    z = torch.randn(2, 100)
    assert small(z).shape == full(z).shape == (2, 1, 32, 32)
    assert Discriminator(image_size=32, channels=1, width=8, resolution=16).side == 16
    cfg = PriorConfig(kind="gmi", steps=1, width=8, batch_size=8, resolution=8)
    prior = load_or_train_prior(cfg, public, (1, SIZE, SIZE), cache_dir=tmp_path)
    assert prior.sample(torch.randn(3, 100)).shape == (3, 1, SIZE, SIZE)
    reloaded = GanPrior.load(tmp_path / "priors" / prior.info["key"])
    assert reloaded.config.resolution == 8 and reloaded.generator.image_size == SIZE
    with pytest.raises(ValueError, match="resolution"):
        PriorConfig(resolution=4)


def test_target_specific_prior_needs_target(public):
    with pytest.raises(ValueError, match="target"):
        load_or_train_prior(PriorConfig(kind="kedmi", steps=1, width=8), public, (1, SIZE, SIZE))


def test_pseudo_labels_pick_top_confident(target, public):
    idx, labels = pseudo_label_public(target, public, top_n=4, device=torch.device("cpu"))
    assert idx.shape == (20,) and labels.tolist() == [k for k in range(5) for _ in range(4)]
    with torch.no_grad():
        probs = target.model(public.batch(torch.arange(public.images.shape[0]))).softmax(1)
    for k in range(5):
        chosen = probs[idx[labels == k], k]
        assert chosen.min() >= probs[:, k].topk(4).values.min() - 1e-6
