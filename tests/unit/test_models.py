"""Tests for the architecture registry ``midre.models``."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as make_vgg_layers

from midre.errors import ConfigError
from midre.models import (
    ClassifierModel,
    adapt_input_conv_weight,
    check_input_size,
    create_model,
    get_model_info,
    list_models,
    load_state_dict_flexible,
    load_weights,
    register_model,
)
from midre.models import registry as registry_module
from midre.models.mi_targets import IRUnit
from midre.models.torchvision_models import maxvit_partition_size

#: name -> feature_dim at image_size=64 (the documented values).
FEATURE_DIMS = {
    "cnn-small": 128,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "densenet121": 1024,
    "densenet169": 1664,
    "vgg16_bn": 4096,
    "efficientnet_b0": 1280,
    "maxvit_t": 512,
    "inception-v1": 1024,
    "vgg16": 2048,
    "ir152": 512,
    "facenet64": 512,
}
#: Run these with batch 1 to keep the test file fast on two CPU cores.
HEAVY = {"resnet101", "resnet152", "densenet169", "maxvit_t", "vgg16_bn", "ir152"}
NUM_CLASSES = 7


def _randomize_bn_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running stats and affine params (so a load is visible)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def test_list_models_has_every_name() -> None:
    assert list_models() == sorted(FEATURE_DIMS)
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_every_model_builds_and_is_consistent(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, image_size=64).eval()
    assert isinstance(model, ClassifierModel) and isinstance(model, nn.Module)
    assert model.arch == name
    assert (model.num_classes, model.image_size, model.in_channels) == (NUM_CLASSES, 64, 3)
    assert model.feature_dim == FEATURE_DIMS[name]
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_dim, NUM_CLASSES)

    n = 1 if name in HEAVY else 2
    x = torch.randn(n, 3, 64, 64)
    with torch.no_grad():
        if name in HEAVY:  # one forward: take the features from the classifier's input
            captured: list[torch.Tensor] = []
            handle = model.classifier.register_forward_hook(lambda m, i, o: captured.append(i[0]))
            logits, hidden = model.forward_with_hidden(x)
            handle.remove()
            feats = captured[0]
        else:
            logits, hidden = model.forward_with_hidden(x)
            feats = model.features(x)
            assert torch.equal(model(x), logits)
        assert logits.shape == (n, NUM_CLASSES)
        assert feats.shape == (n, model.feature_dim)
        assert torch.equal(model.classifier(feats), logits)
    assert len(hidden) == len(model.hidden_names) >= 3
    if name in ("ir152", "facenet64"):  # the MI 64x64 IR models end on a 512x4x4 map
        assert hidden[-1].shape[1:] == (512, 4, 4)
        assert model.backbone.output_layer[3].in_features == 512 * 4 * 4
    assert all(isinstance(h, torch.Tensor) and h.shape[0] == n for h in hidden)
    assert torch.isfinite(logits).all()


def test_forward_is_classifier_of_features_in_train_mode() -> None:
    torch.manual_seed(0)
    model = create_model("cnn-small", 5).train()
    x = torch.randn(4, 3, 64, 64)
    assert torch.equal(model(x), model.classifier(model.features(x)))


def test_hidden_activations_carry_gradients() -> None:
    model = create_model("cnn-small", 5)
    _, hidden = model.forward_with_hidden(torch.randn(2, 3, 32, 32))
    hidden[0].square().mean().backward()
    first_conv = model.backbone.blocks[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_cnn_small_is_small() -> None:
    model = create_model("cnn-small", 40)
    count = sum(p.numel() for p in model.parameters())
    assert 100_000 <= count <= 300_000


def test_unknown_name_lists_every_known_name() -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet9000", 10)
    message = str(info.value)
    assert "resnet9000" in message
    for name in list_models():
        assert name in message


def test_names_are_matched_loosely() -> None:
    assert create_model("CNN_Small", 3).arch == "cnn-small"
    assert get_model_info("inception_v1").name == "inception-v1"
    assert get_model_info("Efficientnet-B0").name == "efficientnet_b0"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 3, "image_size": 0}, "image_size"),
        ({"num_classes": 3, "image_size": "64"}, "image_size"),
        ({"num_classes": 3, "in_channels": 0}, "in_channels"),
        ({"num_classes": 3, "in_channels": None}, "in_channels"),
    ],
)
def test_bad_common_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        create_model("cnn-small", **kwargs)


def test_image_size_limits_are_enforced_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match=r"^image_size: 16 .*'resnet18'.*minimum is 32") as info:
        create_model("resnet18", 3, image_size=16)
    assert info.value.field == "image_size"
    with pytest.raises(ValueError, match=r"^image_size: 32 .*'maxvit_t'.*minimum is 64"):
        create_model("maxvit_t", 3, image_size=32)
    with pytest.raises(ValueError, match=r"^image_size: 80 .*multiple of 32"):
        check_input_size("maxvit_t", 80)
    with pytest.raises(ValueError, match="^image_size: 8 "):
        create_model("cnn-small", 3, image_size=8)
    check_input_size("maxvit_t", 224)  # fits: no error


def test_maxvit_partition_size() -> None:
    assert maxvit_partition_size(224) == 7
    assert maxvit_partition_size(64) == 2
    assert maxvit_partition_size(96) == 3
    assert maxvit_partition_size(256) == 4


def test_none_kwargs_are_dropped_and_unknown_options_rejected() -> None:
    model = create_model("cnn-small", 3, widths=None)
    assert model.feature_dim == 128 and model.build_kwargs == {}
    with pytest.raises(TypeError, match="pretrained"):
        create_model("resnet18", 3, pretrained=True)
    with pytest.raises(ValueError, match="unit"):
        create_model("facenet64", 3, unit="bogus")


def test_models_deepcopy() -> None:
    model = create_model("resnet18", 3).eval()
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
    assert clone.remap_foreign_key("fc.weight") == "classifier.weight"


def test_config_rebuilds_the_same_architecture() -> None:
    model = create_model("cnn-small", 4, image_size=48, in_channels=1, widths=(8, 16, 24))
    rebuilt = create_model(**model.config)
    assert model.config == rebuilt.config
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in rebuilt.state_dict().items()}


@pytest.mark.parametrize("name", ["cnn-small", "resnet18", "efficientnet_b0", "inception-v1", "vgg16"])
def test_single_channel_input(name: str) -> None:
    model = create_model(name, 3, image_size=64, in_channels=1).eval()
    assert model.in_channels == 1
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 64, 64))
    assert logits.shape == (1, 3)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    ("name", "suffix"), [("cnn-small", ".safetensors"), ("cnn-small", ".pt"), ("vgg16", ".safetensors")]
)
def test_weights_round_trip(tmp_path: Path, name: str, suffix: str) -> None:
    torch.manual_seed(1)
    source = create_model(name, 6, image_size=64)
    _randomize_bn_stats(source)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    loaded = create_model(name, 6, image_size=64, weights_path=path)
    source.eval()
    loaded.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_backbone_only_weights_with_another_head_skip_the_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(1)
    source = create_model("cnn-small", 10)
    _randomize_bn_stats(source)
    path = tmp_path / "ten_classes.safetensors"
    save_file(source.state_dict(), str(path))

    torch.manual_seed(3)
    fresh = create_model("cnn-small", 4)
    head_before = fresh.classifier.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="midre.models"):
        report = load_weights(fresh, path)
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    assert "classifier.weight" in caplog.text
    assert torch.equal(fresh.classifier.weight, head_before)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[key], value), key

    # a backbone-only file (no classifier keys at all) loads too
    backbone_only = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    report = load_state_dict_flexible(create_model("cnn-small", 4), backbone_only)
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]


def test_mismatched_backbone_is_an_error() -> None:
    other = create_model("cnn-small", 4, widths=(16, 32, 48, 64))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_state_dict_flexible(create_model("cnn-small", 4), other.state_dict())
    partial = {k: v for k, v in other.state_dict().items() if not k.startswith("backbone.blocks.3")}
    with pytest.raises(ValueError, match="missing backbone keys"):
        load_state_dict_flexible(create_model("cnn-small", 4, widths=(16, 32, 48, 64)), partial)


def test_missing_and_unsupported_weight_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model("cnn-small", 3, weights_path=missing)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="suffix"):
        create_model("cnn-small", 3, weights_path=odd)


def test_nested_torch_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    source = create_model("cnn-small", 3)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = create_model("cnn-small", 3, weights_path=path)
    assert torch.equal(loaded.classifier.weight, source.classifier.weight)


def test_three_channel_weights_adapt_to_one_channel() -> None:
    source = create_model("cnn-small", 3)
    gray = create_model("cnn-small", 3, in_channels=1)
    report = load_state_dict_flexible(gray, source.state_dict())
    assert report.adapted == ["backbone.blocks.0.0.weight"]
    expected = source.backbone.blocks[0][0].weight.sum(dim=1, keepdim=True)
    assert torch.equal(gray.backbone.blocks[0][0].weight, expected)
    assert adapt_input_conv_weight(torch.ones(2, 3, 1, 1), 6).sum() == pytest.approx(6.0)


def _torchvision_net(name: str, num_classes: int) -> nn.Module:
    if name == "inception-v1":
        return tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=True, init_weights=True)
    return getattr(tvm, name)(weights=None, num_classes=num_classes)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0", "inception-v1"])
def test_torchvision_state_dict_loads_and_reproduces_torchvision(name: str) -> None:
    """An ImageNet-style torchvision state dict loads, and our chain replays torchvision's forward."""
    torch.manual_seed(0)
    net = _torchvision_net(name, NUM_CLASSES)
    _randomize_bn_stats(net)
    net.eval()
    state = net.state_dict()
    if name == "densenet121":  # the published weights use the legacy ``norm.1`` names
        state = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
        assert any("norm.1." in k for k in state)
    model = create_model(name, NUM_CLASSES, image_size=64)
    report = load_state_dict_flexible(model, state)
    assert report.foreign and not report.skipped
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_imagenet_head_is_skipped_for_another_class_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None)  # 1000-way ImageNet head
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(net.state_dict(), path)
    model = create_model("resnet18", NUM_CLASSES, weights_path=path)
    assert torch.equal(model.backbone.body.conv1.weight, net.conv1.weight)
    net.fc = nn.Identity()
    net.eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(x), net(x))


def test_mi_vgg16_structure_and_imagenet_features() -> None:
    model = create_model("vgg16", 5, image_size=64)
    assert model.feature_dim == 2048
    assert model.backbone.bn.bias.requires_grad is False
    assert create_model("vgg16", 5, image_size=32).feature_dim == 512
    # torchvision vgg16_bn conv features load; its 4096-wide FC head is dropped
    features = make_vgg_layers(vgg_cfgs["D"], batch_norm=True)  # torchvision's vgg16_bn.features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4096, 25088)
    report = load_state_dict_flexible(model, state)
    assert report.dropped == ["classifier.0.weight"]
    assert "backbone.bn.weight" in report.skipped
    assert torch.equal(model.backbone.features[0].weight, features[0].weight)


def test_mi_literature_checkpoint_layout_loads() -> None:
    """GMI/KEDMI-style keys (module.feature.*, module.output_layer.*, module.fc_layer.*)."""
    torch.manual_seed(0)
    source = create_model("facenet64", 5, image_size=32, unit="evolve")  # 32: cheaper than 64
    _randomize_bn_stats(source)
    assert len(source.backbone.body[0].res_layer) == 5  # BN-Conv-PReLU-Conv-BN
    assert source.backbone.output_layer[3].in_features == 512 * 2 * 2
    assert len(source.backbone.body) == 3 + 4 + 14 + 3  # IR-50
    assert source.hidden_names == ("body.2", "body.6", "body.20", "body.23")
    theirs = {}
    for key, value in source.state_dict().items():
        key = key.replace("backbone.output_layer.", "output_layer.").replace("backbone.", "feature.")
        theirs["module." + key.replace("classifier.", "fc_layer.")] = value
    theirs["module.feature.output_layer.3.weight"] = torch.zeros(512, 512 * 14 * 14)  # unused in the ref
    target = create_model("facenet64", 5, image_size=32, unit="evolve")
    report = load_state_dict_flexible(target, theirs)
    assert report.dropped == ["feature.output_layer.3.weight"] and not report.skipped
    source.eval()
    target.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_ir_units_follow_the_arcface_paper_by_default() -> None:
    unit = IRUnit(64, 128, 2)
    kinds = [type(m).__name__ for m in unit.res_layer]
    assert kinds == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d"]
    assert unit(torch.randn(2, 64, 9, 9)).shape == (2, 128, 5, 5)
    assert isinstance(IRUnit(64, 64, 2).shortcut_layer, nn.MaxPool2d)


def test_register_model_and_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_model("tiny-test", min_image_size=8)
    def tiny(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
        """A tiny test model."""
        return create_model("cnn-small", num_classes, image_size=image_size, in_channels=in_channels)

    assert "tiny-test" in list_models()
    assert get_model_info("tiny-test").summary == "A tiny test model."
    with pytest.raises(TypeError, match="arch"):  # the builder returned another arch
        create_model("tiny-test", 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("TINY_test")(tiny)


@pytest.mark.slow
def test_maxvit_at_224_matches_torchvision() -> None:
    torch.manual_seed(0)
    net = tvm.maxvit_t(weights=None, num_classes=NUM_CLASSES).eval()
    model = create_model("maxvit_t", NUM_CLASSES, image_size=224)
    report = load_state_dict_flexible(model, net.state_dict())
    assert not report.skipped
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


# ---------------------------------------------------------------------------------------------
# Models trained elsewhere (midre.models.external, midre.checkpoint.check_external_checkpoint)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, build", [
    ("resnet18", lambda: tvm.resnet18(num_classes=7)),
    ("densenet121", lambda: tvm.densenet121(num_classes=7)),
    ("efficientnet_b0", lambda: tvm.efficientnet_b0(num_classes=7)),
    ("inception-v1", lambda: tvm.googlenet(num_classes=7, aux_logits=True, init_weights=True)),
])
def test_torchvision_state_dicts_are_checked_and_stored_in_the_registry_layout(
    tmp_path: Path, arch: str, build: object
) -> None:
    from safetensors.torch import load_file

    from midre.checkpoint import build_from_card, check_external_checkpoint

    net = build().eval()  # type: ignore[operator]
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "tv.safetensors")
    card = {"arch": arch, "num_classes": 7, "image_size": 64, "channels": 3}
    card = check_external_checkpoint(tmp_path / "tv.safetensors", card, save_to=tmp_path / "own.safetensors")
    model = build_from_card(card).eval()
    model.load_state_dict(load_file(tmp_path / "own.safetensors"), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), atol=1e-4, rtol=1e-4)


def test_a_card_is_bounded_before_reading_the_weights(tmp_path: Path) -> None:
    from midre.models.external import CardLimits, check_card, check_head, read_shapes

    limits = CardLimits(max_classes=1000, max_image_size=128)
    good = {"arch": "resnet18", "num_classes": 10, "image_size": 64, "channels": 3}
    assert check_card(good, limits)["num_classes"] == 10
    for bad, field in [({"num_classes": 1001}, "card.num_classes"), ({"image_size": 160}, "card.image_size"),
                       ({"image_size": 16}, "card.image_size"), ({"image_size": 64.0}, "card.image_size"),
                       ({"normalization": {"mean": [0.0] * 3, "std": [float("nan")] * 3}}, "card.normalization"),
                       ({"normalization": {"mean": [0.0] * 3, "std": [1.0, 1.0, 0.0]}}, "card.normalization"),
                       ({"channels": True}, "card.channels"), ({"arch": ["resnet18"]}, "card.arch")]:
        with pytest.raises(ConfigError) as refused:
            check_card({**good, **bad}, limits)
        assert refused.value.field == field, bad
    save_file({k: v.contiguous() for k, v in tvm.resnet18(num_classes=10).state_dict().items()},
              tmp_path / "w.safetensors")
    shapes = read_shapes(tmp_path / "w.safetensors")
    assert shapes["fc.weight"] == (10, 512) and check_head(shapes, good) is False  # torchvision's layout
    with pytest.raises(ConfigError, match="has 10 rows") as refused:
        check_head(shapes, {**good, "num_classes": 500})
    assert refused.value.field == "card.num_classes"
    (tmp_path / "junk.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError) as refused:
        read_shapes(tmp_path / "junk.safetensors")
    assert refused.value.field == "file"
