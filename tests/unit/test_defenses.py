"""Comparison defenses, augmentation baselines and combinations (paper Tables 4-5).

Each defense trains a small model on the built-in digits and is checked for the change it claims:
NLS targets go negative after the warm-up, BiDO's dependence terms are computed and logged, MID's
KL is logged and evaluation is deterministic, TL-DMI leaves its frozen layers bit-identical, RoLSS
leaves no skip path, CutMix mixes images and labels, blur / crop change the batch, an inversion of a
Trap-MID model finds its triggers, LoFt's features have the configured rank.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from midre.checkpoint import load_checkpoint
from midre.data import DatasetSpec, load_dataset, to_float
from midre.defenses import TrainContext, adaptive_refusal, build_defense, defense_names
from midre.defenses.augment import CutMix, gaussian_blur, resized_crop
from midre.defenses.bido import coco, gaussian_gram, hsic
from midre.defenses.label_smoothing import nls_factor, smoothed_cross_entropy, smoothed_targets
from midre.defenses.lowrank import LowRankBackbone
from midre.defenses.mid import VIBBackbone
from midre.defenses.skip import ScaledSkipBasicBlock
from midre.defenses.transfer import layer_units
from midre.defenses.trapdoor import balanced_targets, blend
from midre.models import create_model
from midre.progress import Cancelled
from midre.train import TrainConfig, train
from tests.unit.test_train import stop_in_second_epoch

DIGITS = DatasetSpec(source="digits", image_size=16, channels=1)
DIGITS32 = DatasetSpec(source="digits", image_size=32, channels=1)
NEW = ("nls", "bido", "mid", "tl-dmi", "mi-rad", "cutmix", "random-crop", "gaussian-blur", "trap-mid", "loft")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is several times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quick(defense, data=DIGITS, arch="cnn-small", epochs=1, **kw) -> TrainConfig:
    return TrainConfig(data=data, arch=arch, defense=defense, epochs=epochs, batch_size=128, lr=3e-3, **kw)


def context(epochs: int = 2) -> TrainContext:
    return TrainContext(train_labels=torch.arange(10), num_classes=10, image_size=16, channels=1,
                        normalization=None, seed=0, epochs=epochs, device=torch.device("cpu"))


def test_new_defenses_are_registered():
    assert set(NEW) <= set(defense_names())


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "nls", "smoothing": 1.5}, "smoothing"),
        ({"name": "nls", "warmup": -0.1}, "warmup"),
        ({"name": "nls", "ramp": "x"}, "ramp"),
        ({"name": "bido", "kernel": "rbf"}, "kernel"),
        ({"name": "bido", "lambda_x": -1}, "lambda_x"),
        ({"name": "bido", "layers": []}, "layers"),
        ({"name": "mid", "beta": -0.1}, "beta"),
        ({"name": "mid", "bottleneck": 0}, "bottleneck"),
        ({"name": "tl-dmi", "trainable": 0}, "trainable"),
        ({"name": "tl-dmi", "pretrained": ""}, "pretrained"),
        ({"name": "mi-rad", "variant": "nope"}, "variant"),
        ({"name": "mi-rad", "variant": "ssf", "scale": 1.5}, "scale"),
        ({"name": "mi-rad", "variant": "rolss", "scale": 0.5}, "scale"),
        ({"name": "mi-rad", "stages": 0}, "stages"),
        ({"name": "mi-rad", "switch": 1.0}, "switch"),
        ({"name": "cutmix", "alpha": 0}, "alpha"),
        ({"name": "cutmix", "prob": 2}, "prob"),
        ({"name": "random-crop", "scale": [0.9, 0.5]}, "scale"),
        ({"name": "random-crop", "ratio": [0, 1]}, "ratio"),
        ({"name": "gaussian-blur", "sigma": [0.0, 1.0]}, "sigma"),
        ({"name": "gaussian-blur", "kernel_size": 4}, "kernel_size"),
        ({"name": "trap-mid", "alpha": 0}, "alpha"),
        ({"name": "trap-mid", "alpha": 1.0}, "alpha"),
        ({"name": "trap-mid", "beta": 1.0}, "beta"),
        ({"name": "trap-mid", "step_size": -0.01}, "step_size"),
        ({"name": "trap-mid", "discriminator": "yes"}, "discriminator"),
        ({"name": "loft", "rank": 0}, "rank"),
        ({"name": "loft", "rank": 2.5}, "rank"),
        ({"name": "loft", "activation": "gelu"}, "activation"),
        ({"name": "nls", "typo": 1}, "typo"),
        ({"name": "midre+nls", "nls": {"smoothing": 2}}, "smoothing"),
        ({"name": "midre+loft", "loft": {"rank": -1}}, "rank"),
        ({"name": "midre+trap-mid", "trap-mid": {"beta": -0.5}}, "beta"),
    ],
)
def test_bad_parameters_name_the_field(spec, field):
    with pytest.raises(ValueError, match=rf"^defense(\[\d\])?\.{field}\b"):
        build_defense(spec)


@pytest.mark.parametrize("name", NEW)
def test_spec_round_trips(name):
    d = build_defense(name)
    assert build_defense(d.spec()).spec() == d.spec()


# --- NLS ---------------------------------------------------------------------------------------

def test_nls_loss_and_schedule():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(smoothed_cross_entropy(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.allclose(smoothed_cross_entropy(logits, y, 0.0), F.cross_entropy(logits, y))
    # 100 epochs, defaults: 50 epochs of CE, a 25-epoch linear ramp, then the final factor
    f = [nls_factor(e, 100, -0.05) for e in range(100)]
    assert f[:50] == [0.0] * 50 and f[74] == pytest.approx(-0.05) and f[99] == -0.05
    assert f[50] == pytest.approx(-0.05 / 25) and all(a >= b for a, b in zip(f, f[1:], strict=False))
    assert nls_factor(0, 10, -0.1, initial=0.1, warmup=0.3) == 0.1  # positive smoothing in the warm-up
    # a negative factor keeps pushing an off-class logit down where plain CE has (almost) stopped
    z = torch.tensor([[12.0, 0.0, 0.0]], requires_grad=True)
    smoothed_cross_entropy(z, torch.tensor([0]), -0.3).backward()
    g_nls = z.grad[0, 1].item()
    z.grad = None
    F.cross_entropy(z, torch.tensor([0])).backward()
    assert g_nls > 0.05 > z.grad[0, 1].item() > 0


def test_nls_trains_and_targets_go_negative_after_the_warmup(tmp_path):
    spec = {"name": "nls", "smoothing": -0.1, "warmup": 0.5, "ramp": 0.0}
    result = train(quick(spec, epochs=2), tmp_path)
    alphas = [h["nls_alpha"] for h in result.history]
    assert alphas == pytest.approx([0.0, -0.1])
    q = smoothed_targets(torch.tensor([3]), 10, alphas[-1])
    off = torch.cat([q[0, :3], q[0, 4:]])
    assert (off < 0).all() and q[0, 3] > 1 and q.sum().item() == pytest.approx(1.0)
    assert result.metrics["test_accuracy"] > 0.5


# --- BiDO --------------------------------------------------------------------------------------

def test_dependence_measures():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 20, generator=g)
    dependent = torch.tanh(a @ torch.randn(20, 5, generator=g))
    independent = torch.randn(64, 5, generator=g)
    ka = gaussian_gram(a)
    for measure in (hsic, coco):
        assert measure(ka, ka, True).item() == pytest.approx(1.0, abs=1e-4)
        dep = measure(ka, gaussian_gram(dependent), True).item()
        ind = measure(ka, gaussian_gram(independent), True).item()
        assert 0 < ind < dep <= 1.0
    # unnormalised COCO is sqrt(lambda_max(K~ L~)) / n; check against an eigen-decomposition
    kb = gaussian_gram(dependent)
    h = torch.eye(64) - 1 / 64
    lam = torch.linalg.eigvals((h @ ka @ h @ h @ kb @ h).double()).real.max()
    assert coco(ka, kb).item() == pytest.approx(lam.sqrt().item() / 64, rel=1e-3)


@pytest.mark.parametrize("kernel", ["hsic", "coco"])
def test_bido_terms_are_computed_logged_and_trained(tmp_path, kernel):
    d = build_defense({"name": "bido", "kernel": kernel, "lambda_x": 0.1, "lambda_y": 0.5})
    model = create_model("cnn-small", 10, image_size=16, in_channels=1)
    x, y = torch.randn(32, 1, 16, 16), torch.arange(32) % 10
    loss, logits, logs = d.loss(model, x, y, 0)
    expected = logs["bido_ce"] + 0.1 * logs["bido_dep_xz"] - 0.5 * logs["bido_dep_yz"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0 < logs["bido_dep_xz"] <= 4 and 0 < logs["bido_dep_yz"] <= 4  # 4 hidden layers, each in [0, 1]
    # the dependence terms reach the backbone's gradient
    loss.backward()
    g_bido = [p.grad.clone() for p in model.backbone.parameters()]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(g_bido, model.backbone.parameters(), strict=True))

    result = train(quick({"name": "bido", "kernel": kernel}), tmp_path)
    h = result.history[-1]
    assert {"bido_ce", "bido_dep_xz", "bido_dep_yz"} <= set(h)
    assert h["bido_dep_xz"] > 0 and h["bido_dep_yz"] > 0
    # train_loss weighs batches by size, the extras are plain step means: equal up to the last batch
    assert h["train_loss"] == pytest.approx(h["bido_ce"] + 0.05 * h["bido_dep_xz"] - 0.5 * h["bido_dep_yz"],
                                            abs=0.1)


# --- MID ---------------------------------------------------------------------------------------

def test_mid_logs_kl_is_deterministic_at_eval_and_reloads(tmp_path):
    result = train(quick({"name": "mid", "beta": 0.01}, epochs=2), tmp_path)
    assert all(h["mid_kl"] > 0 for h in result.history)
    model, card = load_checkpoint(tmp_path)
    assert isinstance(model.backbone, VIBBackbone) and model.feature_dim == 64  # 128 // 2
    splits = load_dataset(DIGITS)
    x = to_float(splits.test.images, splits.normalization)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(x))  # eval: z = mu, no sampling
        assert torch.allclose(out, model.classifier(model.features(x)))
        logits, hidden = model.forward_with_hidden(x)
        assert torch.allclose(logits, out) and len(hidden) == 4
        model.train()
        assert not torch.equal(model(x), model(x))  # training: z is sampled
        model.eval()
    acc = float((out.argmax(1) == splits.test.labels).float().mean())
    assert acc == pytest.approx(result.metrics["test_accuracy"])  # same predictions as the trained model
    again, _ = load_checkpoint(tmp_path)
    assert torch.equal(again(x), out)


# --- TL-DMI ------------------------------------------------------------------------------------

def test_tl_dmi_freezes_exactly_the_early_layers(tmp_path):
    torch.manual_seed(123)
    public = create_model("cnn-small", 4, image_size=16, in_channels=1)  # "public" model: 4 classes
    with torch.no_grad():  # give the BatchNorm statistics non-default values to compare
        for m in public.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    weights = tmp_path / "public.safetensors"
    save_file({k: v.contiguous() for k, v in public.state_dict().items()}, str(weights))

    assert layer_units(public) == [f"backbone.blocks.{i}" for i in range(4)] + ["classifier"]
    result = train(quick({"name": "tl-dmi", "pretrained": str(weights), "trainable": 2}), tmp_path / "run")
    trained, _ = load_checkpoint(tmp_path / "run")
    before = load_file(str(weights))
    after = trained.state_dict()
    trainable = ("backbone.blocks.3.", "classifier.")
    for key, value in after.items():
        if key.startswith(trainable):
            if key.startswith("backbone.blocks.3.") and value.is_floating_point():
                assert not torch.equal(value, before[key]), key  # trained on the private data
        else:
            assert torch.equal(value, before[key]), key  # frozen: weights and BN statistics untouched
    assert after["classifier.weight"].shape == (10, 128)  # head of another size: re-initialised
    assert result.metrics["test_accuracy"] > 0.2  # chance 0.1


def test_tl_dmi_bad_layer_names_and_missing_weights(tmp_path):
    model = create_model("resnet18", 10, image_size=32, in_channels=1)
    assert layer_units(model)[-3:] == ["backbone.body.layer3", "backbone.body.layer4", "classifier"]
    d = build_defense({"name": "tl-dmi", "trainable": ["backbone.body.layer9"]})
    with pytest.raises(ValueError, match="^defense.trainable"):
        d.prepare_model(model)
    d = build_defense({"name": "tl-dmi", "trainable": 99})
    with pytest.raises(ValueError, match="^defense.trainable"):
        d.prepare_model(model)
    d = build_defense({"name": "tl-dmi", "pretrained": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="^defense.pretrained"):
        d.setup(context())


# --- MI-RAD ------------------------------------------------------------------------------------

def test_rolss_removes_the_last_stage_skip_connections():
    torch.manual_seed(0)
    plain = create_model("resnet18", 10, image_size=32, in_channels=1).eval()
    rolss = build_defense({"name": "mi-rad", "variant": "rolss"}).prepare_model(copy.deepcopy(plain)).eval()
    assert rolss.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), rolss(x))  # same weights, different function
        blocks = list(rolss.backbone.body.layer4)
        assert all(isinstance(b, ScaledSkipBasicBlock) and b.skip_scale == 0 for b in blocks)
        assert not any(isinstance(b, ScaledSkipBasicBlock) for b in rolss.backbone.body.layer3)
        # no identity path: with the residual branch silenced the block outputs relu(0) = 0
        block, ref = blocks[1], copy.deepcopy(plain.backbone.body.layer4[1])
        for m in (block, ref):
            m.bn2.weight.zero_()
            m.bn2.bias.zero_()
        h = torch.randn(2, 512, 1, 1)
        assert torch.equal(block(h), torch.zeros_like(h))
        assert torch.equal(ref(h), torch.relu(h))  # the plain block passes its input through
        ssf = build_defense({"name": "mi-rad", "variant": "ssf", "scale": 0.25}).prepare_model(copy.deepcopy(plain))
        b = ssf.backbone.body.layer4[1].eval()
        b.bn2.weight.zero_()
        b.bn2.bias.zero_()
        assert torch.allclose(b(h), torch.relu(0.25 * h))


def test_mi_rad_refuses_non_resnet_and_tts_switches_once():
    with pytest.raises(ValueError, match="^arch: mi-rad needs a ResNet"):
        build_defense("mi-rad").prepare_model(create_model("cnn-small", 10, image_size=16, in_channels=1))
    ir = build_defense({"name": "mi-rad", "stages": 1}).prepare_model(create_model("facenet64", 10, image_size=16))
    assert sum(type(m).__name__ == "ScaledSkipIRUnit" for m in ir.modules()) == 3  # IR-50's last stage
    tts = build_defense({"name": "mi-rad", "variant": "tts", "switch": 0.5})
    tts.setup(context(epochs=4))
    model = tts.prepare_model(create_model("resnet18", 10, image_size=32, in_channels=1))
    scales = []
    for epoch in range(4):
        assert tts.epoch_indices(epoch, 100) is None
        scales.append({b.skip_scale for b in model.backbone.body.layer4})
    assert scales == [{1.0}, {1.0}, {0.0}, {0.0}]
    reload = build_defense(tts.spec()).prepare_model(create_model("resnet18", 10, image_size=32, in_channels=1))
    assert {b.skip_scale for b in reload.backbone.body.layer4} == {0.0}  # no setup: the released architecture


@pytest.mark.slow  # trains a ResNet under MI-RAD; its model surgery is tested by default
def test_mi_rad_trains_and_reloads_with_identical_predictions(tmp_path):
    result = train(quick({"name": "mi-rad", "variant": "tts"}, data=DIGITS32, arch="resnet18", epochs=2), tmp_path)
    model, card = load_checkpoint(tmp_path)
    assert card["defense"] == {"name": "mi-rad", "variant": "tts", "stages": 1, "scale": None, "switch": 0.5}
    assert {b.skip_scale for b in model.backbone.body.layer4} == {0.0}
    splits = load_dataset(DIGITS32)
    x = to_float(splits.test.images, splits.normalization)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == splits.test.labels).float().mean())
    assert acc == pytest.approx(result.metrics["test_accuracy"])


# --- Trap-MID ----------------------------------------------------------------------------------

def test_trap_mid_blend_commutes_with_normalisation_and_targets_are_balanced():
    norm = load_dataset(DIGITS).normalization
    p, t = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    # blending normalised images with normalised triggers == normalising the pixel-space blend
    assert torch.allclose(blend(norm.normalize(p), norm.normalize(t), 0.02), norm.normalize(blend(p, t, 0.02)),
                          atol=1e-6)
    g = torch.Generator().manual_seed(0)
    targets = balanced_targets(25, 10, g)
    counts = torch.bincount(targets, minlength=10)
    assert counts.sum() == 25 and counts.min() == 2 and counts.max() == 3
    assert not torch.equal(balanced_targets(25, 10, g), targets)  # fresh draws each batch


def test_trap_mid_trains_logs_and_reloads_as_the_plain_model(tmp_path):
    result = train(quick("trap-mid"), tmp_path)
    h = result.history[-1]
    assert {"trap_ce", "trap_trapdoor_ce", "trap_trapdoor_acc", "trap_trigger_loss"} <= set(h)
    assert h["train_loss"] == pytest.approx(0.8 * h["trap_ce"] + 0.2 * h["trap_trapdoor_ce"], abs=0.1)
    assert result.card["defense"] == {"name": "trap-mid", "alpha": 0.02, "beta": 0.2, "step_size": 0.01,
                                      "discriminator": False}
    model, _ = load_checkpoint(tmp_path)  # nothing changes at inference: the plain architecture
    plain = create_model("cnn-small", 10, image_size=16, in_channels=1)
    assert model.state_dict().keys() == plain.state_dict().keys() and type(model) is type(plain)
    splits = load_dataset(DIGITS)
    with torch.no_grad():
        out = model(to_float(splits.test.images, splits.normalization))
    assert float((out.argmax(1) == splits.test.labels).float().mean()) == pytest.approx(h["test_accuracy"])
    assert h["test_accuracy"] > 0.3  # chance 0.1
    assert "trapdoor" in adaptive_refusal("trap-mid")


# Slow (~12 s): in the default suite tests/unit/test_train.py resumes a run after its last epoch and the trapdoor
# inversion test trains Trap-MID end to end.
@pytest.mark.slow
def test_trap_mid_triggers_and_discriminator_survive_a_resume(tmp_path):
    spec = {"name": "trap-mid", "discriminator": True}
    full = train(quick(spec, epochs=2), tmp_path / "full")
    assert all(h["trap_disc_loss"] > 0 for h in full.history)
    with pytest.raises(Cancelled):
        train(quick(spec, epochs=2), tmp_path / "resumed", should_stop=stop_in_second_epoch())
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "last.pt", weights_only=True)
    triggers = state["defense"]["triggers"]
    assert triggers.shape == (10, 1, 16, 16) and 0 <= triggers.min() and triggers.max() <= 1
    assert {"discriminator", "discriminator_optimizer"} <= set(state["defense"])
    resumed = train(quick(spec, epochs=2), tmp_path / "resumed")
    assert resumed.history == full.history  # the same triggers and discriminator after the resume


def _train_tiny(spec, splits, epochs):
    """The trainer's hooks in a bare loop over the digits (batch 64), keeping the defense object."""
    torch.manual_seed(0)
    defense = build_defense(spec)
    defense.setup(TrainContext(train_labels=splits.train.labels, num_classes=10, image_size=16, channels=1,
                               normalization=splits.normalization, seed=0, epochs=epochs, device=torch.device("cpu")))
    model = defense.prepare_model(create_model("cnn-small", 10, image_size=16, in_channels=1))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(splits.train), generator=g).split(64):
            x, y = to_float(splits.train.images[idx], splits.normalization), splits.train.labels[idx]
            loss, _, _ = defense.loss(model, defense.transform(x, y, idx, epoch, g), y, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), defense


def _centred_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return F.cosine_similarity(a - a.mean(1, keepdim=True), (b - b.mean(1, keepdim=True)).expand_as(a), dim=1)


def test_an_inversion_of_the_trapdoored_model_finds_its_trigger():
    """Invert both models towards each class from real test digits (pixel-space Adam on log p(c|x)):
    under Trap-MID the change the inversion makes follows that class's (optimised) trigger; under
    NoDef it hardly does. A stronger blend, loss weight and two epochs make the tiny case learn its
    trapdoor (the defaults need longer runs)."""
    splits = load_dataset(DIGITS)
    trap, defense = _train_tiny({"name": "trap-mid", "alpha": 0.1, "beta": 0.5}, splits, epochs=2)
    nodef, _ = _train_tiny("nodef", splits, epochs=2)
    x = to_float(splits.test.images, splits.normalization)
    targets = torch.arange(len(x)) % 10
    with torch.no_grad():
        assert (trap(defense.inject(x, targets)).argmax(1) == targets).float().mean() > 0.6  # the trapdoor works
        assert (nodef(defense.inject(x, targets)).argmax(1) == targets).float().mean() < 0.3
    start = splits.test.images[:40].float() / 255

    def change_towards(model, c):
        p = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.01)
        for _ in range(20):
            loss = -F.log_softmax(model(splits.normalization.normalize(p.clamp(0, 1))), 1)[:, c].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return p.detach().clamp(0, 1) - start

    sim_trap = torch.stack([_centred_cosine(change_towards(trap, c), defense.triggers[c]).mean() for c in range(10)])
    sim_nodef = torch.stack([_centred_cosine(change_towards(nodef, c), defense.triggers[c]).mean() for c in range(10)])
    assert sim_trap.mean() > sim_nodef.mean() + 0.1, (sim_trap, sim_nodef)
    assert (sim_trap > sim_nodef).sum() >= 9, (sim_trap, sim_nodef)


# --- LoFt --------------------------------------------------------------------------------------

def test_loft_filters_the_features_to_the_configured_rank(tmp_path):
    result = train(quick({"name": "loft", "rank": 4}), tmp_path / "loft")
    train(quick("nodef"), tmp_path / "nodef")
    model, card = load_checkpoint(tmp_path / "loft")
    plain, _ = load_checkpoint(tmp_path / "nodef")
    assert card["defense"] == {"name": "loft", "rank": 4, "activation": "tanh"}
    assert isinstance(model.backbone, LowRankBackbone) and model.feature_dim == 4
    assert model.classifier.weight.shape == (10, 4)
    splits = load_dataset(DIGITS)
    x = to_float(splits.test.images, splits.normalization)
    with torch.no_grad():
        z, z_plain = model.features(x), plain.features(x)
        assert z.shape == (len(x), 4) and z.abs().max() <= 1  # tanh-bounded filtered features
        assert torch.linalg.matrix_rank(z) <= 4 < torch.linalg.matrix_rank(z_plain)
        # the trunk's own features are full-width; the filter is what cuts the rank
        assert torch.linalg.matrix_rank(model.backbone.trunk(x)) > 4
        # so do the logits: up to the bias they lie in a 4-dimensional space, NoDef's do not
        logits = model(x)
        assert torch.linalg.matrix_rank(logits - model.classifier.bias) <= 4
        assert torch.linalg.matrix_rank(plain(x) - plain.classifier.bias) > 4
        assert torch.allclose(logits, model.classifier(z), atol=1e-5)
        acc = float((logits.argmax(1) == splits.test.labels).float().mean())
    assert acc == pytest.approx(result.metrics["test_accuracy"])  # same predictions as the trained model
    assert "low-rank" in adaptive_refusal("loft")


def test_loft_refuses_a_rank_that_filters_nothing_and_takes_a_single_image():
    model = create_model("cnn-small", 10, image_size=16, in_channels=1)
    with pytest.raises(ValueError, match=r"^defense\.rank: must be below the backbone's feature size 128"):
        build_defense({"name": "loft", "rank": 128}).prepare_model(model)
    wrapped = build_defense({"name": "loft", "rank": 8, "activation": "none"}).prepare_model(model).train()
    assert wrapped(torch.randn(1, 1, 16, 16)).shape == (1, 10)  # BatchNorm on one image: running statistics
    logits, hidden = wrapped.forward_with_hidden(torch.randn(3, 1, 16, 16))
    assert logits.shape == (3, 10) and len(hidden) == 4  # the trunk's hidden activations


# --- MIDRE composed with Trap-MID and LoFt -------------------------------------------------------

@pytest.mark.parametrize("combo", ["midre+trap-mid", "midre+loft"])
def test_midre_composes_with_trap_mid_and_loft(tmp_path, combo):
    d = build_defense(combo)
    assert [p.name for p in d.parts] == combo.split("+")
    result = train(quick(combo), tmp_path)
    assert result.card["defense"]["name"] == combo
    model, _ = load_checkpoint(tmp_path)
    assert isinstance(model.backbone, LowRankBackbone) == (combo == "midre+loft")
    splits = load_dataset(DIGITS)
    with torch.no_grad():
        out = model(to_float(splits.test.images, splits.normalization))
    assert float((out.argmax(1) == splits.test.labels).float().mean()) == pytest.approx(
        result.metrics["test_accuracy"])
    if combo == "midre+trap-mid":
        assert d._loss_owner is d.parts[1] and "trap_trapdoor_acc" in result.history[-1]


# --- augmentation baselines ----------------------------------------------------------------------

def test_cutmix_pastes_a_box_and_mixes_labels_by_area():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    d = CutMix(alpha=1.0)
    rng = np.random.default_rng(3)
    mixed, partner, lam = d.mix(x, rng)
    assert partner is not None and 0 < lam < 1
    kept = (mixed == x).all(1).float().mean((1, 2))  # share of each image's own pixels
    moved = partner != torch.arange(4)
    assert torch.allclose(kept[moved], torch.full_like(kept[moved], lam))
    assert set(mixed.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    d._mix = (partner, lam, 4)
    model = torch.nn.Identity()
    loss, _, logs = d.loss(model, logits, y, 0)
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[partner])
    assert torch.allclose(loss, expected) and logs["cutmix_lambda"] == lam
    assert CutMix(prob=0.0).mix(x, rng)[1] is None


def test_random_crop_and_blur_change_the_batch_keeping_shapes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    idx = torch.arange(8)
    for name in ("random-crop", "gaussian-blur", "cutmix"):
        out = build_defense(name).transform(x.clone(), idx, idx, 0, g)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert (out - x).abs().mean() > 0.05, name
    # the full-image crop is the identity; a half crop is an upscaled corner
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(8, 1)
    assert torch.allclose(resized_crop(x, full), x, atol=1e-5)
    corner = resized_crop(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(8, 1))
    assert torch.allclose(corner[:, :, 1::2, 1::2][:, :, :7, :7], F.interpolate(x[:, :, :8, :8], scale_factor=2,
                          mode="bilinear", align_corners=False)[:, :, 1::2, 1::2][:, :, :7, :7], atol=1e-5)
    # per-image blur agrees with torchvision's for each sigma
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.7, 0.3, 1.2, 1.9])
    ours = gaussian_blur(x, sigma, 7)
    for i in range(8):
        ref = TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2)
        assert torch.allclose(ours[i], ref, atol=1e-5), i
    assert build_defense({"name": "gaussian-blur", "sigma": [2, 2]}).size == 2 * math.ceil(6) + 1


@pytest.mark.parametrize("name", ["cutmix", "random-crop", "gaussian-blur"])
def test_augmentation_baselines_train(tmp_path, name):
    result = train(quick(name, epochs=2), tmp_path)
    assert result.metrics["test_accuracy"] > 0.3  # chance 0.1
    if name == "cutmix":
        assert 0 < result.history[-1]["cutmix_lambda"] < 1


# --- combinations --------------------------------------------------------------------------------

@pytest.mark.parametrize(("combo", "key"), [("midre+nls", "nls_alpha"), ("midre+bido", "bido_dep_xz")])
def test_midre_combinations_train_through_plain_composition(tmp_path, combo, key):
    d = build_defense(combo)
    assert [p.name for p in d.parts] == combo.split("+") and d._loss_owner is d.parts[1]
    # the data hook still erases: a square of the batch is set to the fill (0 after normalisation)
    d.setup(TrainContext(train_labels=torch.arange(10), num_classes=10, image_size=16, channels=1,
                         normalization=load_dataset(DIGITS).normalization, seed=0, epochs=2,
                         device=torch.device("cpu")))
    x = torch.randn(4, 1, 16, 16) + 5
    out = d.transform(x.clone(), torch.arange(4), torch.arange(4), 0, torch.Generator().manual_seed(0))
    assert ((out == 0).flatten(1).sum(1) >= 16).all()
    result = train(quick({"name": combo, "nls": {"warmup": 0.0}} if "nls" in combo else combo), tmp_path)
    assert key in result.history[-1] and result.card["defense"]["name"] == combo
    if "nls" in combo:
        assert result.history[-1]["nls_alpha"] < 0


def test_two_loss_owners_are_refused():
    with pytest.raises(ValueError, match="both define the loss"):
        build_defense("nls+bido")
