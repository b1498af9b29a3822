"""torchvision architectures behind the registry's common interface.

Every model is built with ``weights=None`` (nothing is downloaded) and ``num_classes`` set, so the
head torchvision creates (with torchvision's own initialisation) becomes our ``classifier``; in the
torchvision module it is replaced by :class:`torch.nn.Identity`. The torchvision module lives
under ``backbone.body``, so its parameters keep their torchvision names there; torchvision
ImageNet state dicts therefore load through :meth:`TorchvisionClassifier.remap_foreign_key`
(``<head>.*`` -> ``classifier.*``, everything else -> ``backbone.body.*``).

The backbone replays each torchvision ``forward`` as a chain of named steps, so that
``features`` stops right before the final linear layer and ``forward_with_hidden`` can tap the
stage outputs without hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.models.base import Backbone, ClassifierModel, replace_first_conv
from midre.models.registry import register_model

__all__ = ["ChainBackbone", "TorchvisionClassifier", "maxvit_partition_size"]

def _tvm() -> Any:
    """``torchvision.models``, imported when a torchvision architecture is first built: importing torchvision
    costs seconds (it loads ``torch._dynamo``), which every process that never builds one (a worker training
    the small CNNs, a rank, the API) is spared."""
    import torchvision.models

    return torchvision.models


#: Parameter-free steps a chain may use between torchvision modules (``@name``).
_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "@flatten": lambda x: torch.flatten(x, 1),
    # not in place: the tensor before it may have been handed out as a hidden activation
    "@relu": F.relu,
    "@gap": lambda x: F.adaptive_avg_pool2d(x, 1),
}


class ChainBackbone(Backbone):
    """Runs ``body``'s submodules one after another, as listed in ``steps``.

    Args:
        body: the torchvision network (its head already replaced by ``nn.Identity``).
        steps: dotted submodule names of ``body``, or ``@flatten`` / ``@relu`` / ``@gap``.
        taps: the steps whose outputs :meth:`forward_hidden` returns.
        feature_dim: length of the final step's output.
    """

    def __init__(self, body: nn.Module, steps: Sequence[str], taps: Sequence[str], feature_dim: int) -> None:
        super().__init__()
        for step in steps:
            if step.startswith("@"):
                if step not in _OPS:
                    raise ValueError(f"unknown chain op {step!r}")
            else:
                body.get_submodule(step)  # raises AttributeError on a typo
        unknown = set(taps) - set(steps)
        if unknown:
            raise ValueError(f"taps {sorted(unknown)} are not steps")
        self.body = body
        self.steps = tuple(steps)
        self.taps = frozenset(taps)
        self.hidden_names = tuple(step for step in self.steps if step in self.taps)
        self.feature_dim = feature_dim

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        for step in self.steps:
            x = _OPS[step](x) if step.startswith("@") else self.body.get_submodule(step)(x)
            if hidden is not None and step in self.taps:
                hidden.append(x)
        return x


class TorchvisionClassifier(ClassifierModel):
    """A :class:`ClassifierModel` around a torchvision network.

    Args:
        backbone: the :class:`ChainBackbone` around the torchvision network.
        head_key: dotted name of the torchvision head in the torchvision state dict (``fc``,
            ``classifier``, ``classifier.6``, ...).
        drop_prefixes: torchvision state-dict prefixes this model has no module for (e.g.
            GoogLeNet's auxiliary classifiers).
        key_rewrites: ``(pattern, replacement)`` regex rewrites applied to foreign keys first
            (e.g. DenseNet's legacy ``norm.1`` names).
        **kwargs: passed to :class:`ClassifierModel`.
    """

    def __init__(
        self,
        backbone: ChainBackbone,
        *,
        head_key: str,
        drop_prefixes: Sequence[str] = (),
        key_rewrites: Sequence[tuple[str, str]] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(backbone, **kwargs)  # type: ignore[arg-type]
        self._head_prefix = head_key + "."
        self._drop_prefixes = tuple(drop_prefixes)
        self._key_rewrites = tuple((re.compile(p), r) for p, r in key_rewrites)

    def remap_foreign_key(self, key: str) -> str | None:
        for pattern, replacement in self._key_rewrites:
            key = pattern.sub(replacement, key)
        if key.startswith(self._head_prefix):
            return "classifier." + key[len(self._head_prefix) :]
        if self._drop_prefixes and key.startswith(self._drop_prefixes):
            return None
        return "backbone.body." + key


@dataclass(frozen=True)
class _Spec:
    """How to wrap one torchvision family."""

    head: str
    steps: tuple[str, ...]
    taps: tuple[str, ...]
    drop_prefixes: tuple[str, ...] = ()
    key_rewrites: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _wrap(
    net: nn.Module, spec: _Spec, *, arch: str, num_classes: int, image_size: int, in_channels: int
) -> TorchvisionClassifier:
    head = net.get_submodule(spec.head)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{arch}: {spec.head} is {type(head).__name__}, expected nn.Linear")
    parent_name, _, attr = spec.head.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, nn.Identity())
    if in_channels != 3:
        replace_first_conv(net, in_channels)
    backbone = ChainBackbone(net, spec.steps, spec.taps, head.in_features)
    return TorchvisionClassifier(
        backbone,
        head_key=spec.head,
        drop_prefixes=spec.drop_prefixes,
        key_rewrites=spec.key_rewrites,
        num_classes=num_classes,
        arch=arch,
        image_size=image_size,
        in_channels=in_channels,
        classifier=head,
    )


# --- ResNet -----------------------------------------------------------------------------------

_RESNET = _Spec(
    head="fc",
    steps=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "@flatten"),
    taps=("layer1", "layer2", "layer3", "layer4"),
)


def _resnet_builder(name: str, feature_dim: int) -> Callable[..., ClassifierModel]:
    def build(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
        net = getattr(_tvm(), name)(weights=None, num_classes=num_classes)
        return _wrap(net, _RESNET, arch=name, num_classes=num_classes, image_size=image_size, in_channels=in_channels)

    build.__name__ = name
    build.__doc__ = f"""torchvision {name} (He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016, https://arxiv.org/abs/1512.03385); feature_dim {feature_dim}.

    ``features`` is the global-average-pooled ``layer4`` output; hidden activations are the
    outputs of ``layer1`` .. ``layer4``. Any ``image_size`` >= 32 works (the ImageNet stem
    downsamples 32x). ImageNet torchvision weights load through ``weights_path``.
    """
    return build


for _name, _dim in (
    ("resnet18", 512),
    ("resnet34", 512),
    ("resnet50", 2048),
    ("resnet101", 2048),
    ("resnet152", 2048),
):
    register_model(_name, min_image_size=32, foreign_head=_RESNET.head,
                   foreign_source=f"torchvision.models.{_name} (timm's {_name} has the same keys)")(
        _resnet_builder(_name, _dim)
    )


# --- DenseNet ---------------------------------------------------------------------------------

_DENSENET = _Spec(
    head="classifier",
    steps=(
        "features.conv0",
        "features.norm0",
        "features.relu0",
        "features.pool0",
        "features.denseblock1",
        "features.transition1",
        "features.denseblock2",
        "features.transition2",
        "features.denseblock3",
        "features.transition3",
        "features.denseblock4",
        "features.norm5",
        "@relu",
        "@gap",
        "@flatten",
    ),
    taps=("features.transition1", "features.transition2", "features.transition3", "features.norm5"),
    # torchvision's published DenseNet weights still use the old ``norm.1`` / ``conv.2`` names
    key_rewrites=((r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2."),),
)


def _densenet_builder(name: str, feature_dim: int) -> Callable[..., ClassifierModel]:
    def build(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
        net = getattr(_tvm(), name)(weights=None, num_classes=num_classes)
        return _wrap(net, _DENSENET, arch=name, num_classes=num_classes, image_size=image_size, in_channels=in_channels)

    build.__name__ = name
    build.__doc__ = f"""torchvision {name} (Huang et al., "Densely Connected Convolutional Networks",
    CVPR 2017, https://arxiv.org/abs/1608.06993); feature_dim {feature_dim}.

    ``features`` is ReLU + global average pooling of the last dense block (after ``norm5``);
    hidden activations are the three transition outputs and the ``norm5`` map (before that ReLU).
    ``image_size`` >= 32 (32x downsampling).
    """
    return build


for _name, _dim in (("densenet121", 1024), ("densenet169", 1664)):
    register_model(_name, min_image_size=32, foreign_head=_DENSENET.head,
                   foreign_source=f"torchvision.models.{_name} (timm's {_name} has the same keys)")(
        _densenet_builder(_name, _dim)
    )


# --- VGG16-BN (torchvision, with its two 4096-wide FC layers) ---------------------------------

_VGG_POOLS = (6, 13, 23, 33, 43)  # indices of the MaxPool2d layers in vgg16_bn.features
_VGG16_BN = _Spec(
    head="classifier.6",
    steps=(
        *(f"features.{i}" for i in range(44)),
        "avgpool",
        "@flatten",
        *(f"classifier.{i}" for i in range(6)),
    ),
    taps=tuple(f"features.{i}" for i in _VGG_POOLS),
)


@register_model("vgg16_bn", min_image_size=32, foreign_head=_VGG16_BN.head,
                foreign_source="torchvision.models.vgg16_bn")
def vgg16_bn(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
    """torchvision vgg16_bn (Simonyan & Zisserman, ICLR 2015); feature_dim 4096.

    Paper: "Very Deep Convolutional Networks for Large-Scale Image Recognition",
    https://arxiv.org/abs/1409.1556.

    The full torchvision model: conv features, adaptive average pooling to 7x7, then
    FC-ReLU-Dropout-FC-ReLU-Dropout; ``features`` is the second 4096-wide FC output (after its
    ReLU and dropout), i.e. the input of torchvision's last linear layer. About 134M parameters.
    Hidden activations are the outputs of the five max-pool stages. ``image_size`` >= 32.
    For the MI literature's 64x64 VGG16 target use ``vgg16``.
    """
    net = _tvm().vgg16_bn(weights=None, num_classes=num_classes)
    return _wrap(
        net,
        _VGG16_BN,
        arch="vgg16_bn",
        num_classes=num_classes,
        image_size=image_size,
        in_channels=in_channels,
    )


# --- EfficientNet-B0 --------------------------------------------------------------------------

_EFFICIENTNET = _Spec(
    head="classifier.1",
    steps=(*(f"features.{i}" for i in range(9)), "avgpool", "@flatten", "classifier.0"),
    taps=("features.2", "features.3", "features.5", "features.8"),
)


@register_model("efficientnet_b0", min_image_size=32, foreign_head=_EFFICIENTNET.head,
                foreign_source="torchvision.models.efficientnet_b0")
def efficientnet_b0(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
    """torchvision efficientnet_b0 (Tan & Le, ICML 2019, https://arxiv.org/abs/1905.11946); feature_dim 1280.

    ``features`` is the pooled 1280-d vector after torchvision's head dropout (p=0.2, identity in
    eval mode), i.e. the input of the last linear layer. Hidden activations are the stage outputs
    at strides 4, 8, 16 and 32. ``image_size`` >= 32.
    """
    net = _tvm().efficientnet_b0(weights=None, num_classes=num_classes)
    return _wrap(
        net,
        _EFFICIENTNET,
        arch="efficientnet_b0",
        num_classes=num_classes,
        image_size=image_size,
        in_channels=in_channels,
    )


# --- MaxViT-T ---------------------------------------------------------------------------------

_MAXVIT = _Spec(
    head="classifier.5",
    steps=("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", *(f"classifier.{i}" for i in range(5))),
    taps=("blocks.0", "blocks.1", "blocks.2", "blocks.3"),
)


def maxvit_partition_size(image_size: int, preferred: int = 7) -> int:
    """The MaxViT window/grid partition size used at ``image_size``.

    MaxViT's block/grid attention needs every stage's feature map (``image_size / 4, / 8, / 16,
    / 32``) to be divisible by the partition size; the paper uses 7 at 224x224. We take the
    largest divisor of ``image_size / 32`` that is <= ``preferred`` (7 at 224, 2 at 64).
    """
    final = image_size // 32
    return max(p for p in range(1, min(preferred, final) + 1) if final % p == 0)


@register_model("maxvit_t", min_image_size=64, image_size_multiple=32, foreign_head=_MAXVIT.head,
                foreign_source="torchvision.models.MaxVit built with the same partition size")
def maxvit_t(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
    """torchvision MaxViT-T (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022,
    https://arxiv.org/abs/2204.01697); feature_dim 512.

    torchvision's ``maxvit_t`` configuration (stem 64, blocks [64, 128, 256, 512] x [2, 2, 5, 2],
    head dim 32, stochastic depth 0.2) built for ``image_size``: MaxViT fixes its attention grid at
    build time, so the model only accepts inputs of exactly ``image_size``, which must be a
    multiple of 32 and >= 64. The partition size is :func:`maxvit_partition_size` (7 at 224, as in
    the paper; 2 at 64); ImageNet weights therefore load only at image sizes whose partition size
    is 7 (224, 448, ...). ``features`` is the 512-d output of the Tanh pre-logits layer (pool,
    LayerNorm, Linear, Tanh); hidden activations are the four block outputs.
    """
    partition = maxvit_partition_size(image_size)
    net = _tvm().MaxVit(
        input_size=(image_size, image_size),
        stem_channels=64,
        partition_size=partition,
        block_channels=[64, 128, 256, 512],
        block_layers=[2, 2, 5, 2],
        head_dim=32,
        stochastic_depth_prob=0.2,
        num_classes=num_classes,
    )
    return _wrap(net, _MAXVIT, arch="maxvit_t", num_classes=num_classes, image_size=image_size, in_channels=in_channels)


# --- Inception-v1 (GoogLeNet) -----------------------------------------------------------------

_GOOGLENET = _Spec(
    head="fc",
    steps=(
        "conv1",
        "maxpool1",
        "conv2",
        "conv3",
        "maxpool2",
        "inception3a",
        "inception3b",
        "maxpool3",
        "inception4a",
        "inception4b",
        "inception4c",
        "inception4d",
        "inception4e",
        "maxpool4",
        "inception5a",
        "inception5b",
        "avgpool",
        "@flatten",
        "dropout",
    ),
    taps=("inception3b", "inception4e", "inception5b"),
    drop_prefixes=("aux1.", "aux2."),
)


@register_model("inception-v1", min_image_size=32, foreign_head=_GOOGLENET.head,
                foreign_source="torchvision.models.googlenet(aux_logits=False, transform_input=False)")
def inception_v1(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
    """torchvision GoogLeNet / Inception-v1 (Szegedy et al., "Going Deeper with Convolutions",
    CVPR 2015, https://arxiv.org/abs/1409.4842); feature_dim 1024.

    Built with ``aux_logits=False`` and ``transform_input=False`` (inputs are normalised by the
    data pipeline) and torchvision's own truncated-normal initialisation (``init_weights=True``,
    no download). ``features`` is the pooled 1024-d vector after the head dropout (p=0.2,
    identity in eval mode). Hidden activations are the outputs of inception3b, 4e and 5b.
    ``image_size`` >= 32: the network downsamples 32x with ceil-mode pooling; below 32 the map
    is 1x1 from inception4 on, and below 16 torchvision's GoogLeNet fails outright (a max-pool
    gets an empty output). Auxiliary-classifier weights in a torchvision state dict are dropped
    on load.
    """
    net = _tvm().googlenet(
        weights=None, num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True
    )
    return _wrap(
        net,
        _GOOGLENET,
        arch="inception-v1",
        num_classes=num_classes,
        image_size=image_size,
        in_channels=in_channels,
    )
