"""The model-inversion literature's 64x64 target classifiers: ``vgg16``, ``ir152``, ``facenet64``.

These are the targets of the low-resolution MI benchmarks (GMI, Zhang et al., CVPR 2020,
https://arxiv.org/abs/1911.07135; KEDMI, Chen et al., ICCV 2021, https://arxiv.org/abs/2010.04092;
LOMMA, Nguyen et al., CVPR 2023, https://arxiv.org/abs/2304.05219; PLG-MI, Yuan et al., AAAI 2023),
which the MIDRE paper's Table 2 attacks. They are written here from their published descriptions:

* ``vgg16``: VGG16-BN convolutional features (Simonyan & Zisserman, ICLR 2015) on a 64x64 input
  give a 512x2x2 map, flattened to a 2048-d vector, batch-normalised (BatchNorm1d without shift,
  i.e. its bias frozen at 0) and fed to the linear classifier.
* ``ir152`` / ``facenet64``: the improved-residual (IR) ResNets of ArcFace (Deng et al., CVPR 2019,
  https://arxiv.org/abs/1801.07698, network settings), with a stride-1
  3x3 input layer (Conv-BN-PReLU), four stages of IR units ([3, 8, 36, 3] units for IR-152,
  [3, 4, 14, 3] for IR-50, the first unit of each stage with stride 2) and the "output layer"
  BN-Dropout-Flatten-FC(512)-BN1d that gives the 512-d embedding; the classifier follows. At 64x64
  the last stage is 512x4x4.

Known MI-literature checkpoints (keys ``feature.*``, ``bn.*``, ``output_layer.*``, ``fc_layer.*``,
with or without the DataParallel ``module.`` prefix) load through ``weights_path``; for the IR
models pass ``unit="evolve"`` (see :class:`IRUnit`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from midre.models.base import Backbone, ClassifierModel
from midre.models.registry import register_model

__all__ = ["IRBackbone", "IRClassifier", "IRUnit", "MIVGG16", "MIVGG16Backbone"]

#: VGG configuration "D" (VGG16): channels of each 3x3 conv, "M" a 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class MIVGG16Backbone(Backbone):
    """VGG16-BN conv features -> flatten -> BatchNorm1d (bias frozen at zero).

    ``features`` uses torchvision's ``vgg16_bn.features`` layout (Conv-BN-ReLU per conv, max-pool
    after each stage), so its keys match torchvision's ImageNet weights.

    Args:
        in_channels: input channels.
        image_size: input side; the flattened map has ``512 * (image_size // 32) ** 2`` values.
    """

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        pools: list[int] = []
        previous = in_channels
        for item in _VGG16_CFG:
            if item == "M":
                pools.append(len(layers))
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(previous, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                previous = width
        self.features = nn.Sequential(*layers)
        self._pools = frozenset(pools)
        side = image_size // 32
        self.feature_dim = 512 * side * side
        self.bn = nn.BatchNorm1d(self.feature_dim)
        # "no shift": the MI reference implementation freezes this bias at its initial 0
        self.bn.bias.requires_grad_(False)
        self.hidden_names = tuple(f"features.{i}" for i in pools)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        for index, layer in enumerate(self.features):
            x = layer(x)
            if hidden is not None and index in self._pools:
                hidden.append(x)
        return self.bn(x.flatten(1))


class MIVGG16(ClassifierModel):
    """The MI ``VGG16`` target; maps torchvision ``vgg16_bn`` and MI-literature keys on load.

    The BatchNorm1d belongs to the head: ImageNet ``vgg16_bn`` weights fill only the conv features.
    """

    head_prefixes = ("classifier.", "backbone.bn.")

    def remap_foreign_key(self, key: str) -> str | None:
        for prefix, target in (
            ("features.", "backbone.features."),  # torchvision vgg16_bn
            ("feature.", "backbone.features."),  # GMI / KEDMI checkpoints
            ("bn.", "backbone.bn."),
            ("fc_layer.", "classifier."),
        ):
            if key.startswith(prefix):
                return target + key[len(prefix) :]
        if key.startswith("classifier."):  # torchvision's 4096-wide FC head has no counterpart
            return None
        return "backbone." + key


@register_model("vgg16", min_image_size=32, foreign_head="fc_layer",
                foreign_source="the MI literature's VGG16 checkpoints (GMI / KEDMI layout)")
def vgg16(*, num_classes: int, image_size: int, in_channels: int) -> ClassifierModel:
    """MI-literature VGG16 target (GMI/KEDMI 'VGG16'); feature_dim 2048 at 64x64.

    VGG16-BN conv features (Simonyan & Zisserman, ICLR 2015, https://arxiv.org/abs/1409.1556), no
    FC layers: at 64x64 the 512x2x2 map is flattened to 2048 values, then BatchNorm1d with its
    bias frozen at 0, then the linear classifier (Zhang et al., CVPR 2020; Chen et al., ICCV 2021).
    ``feature_dim = 512 * (image_size // 32) ** 2`` (2048 at 64, 512 at 32); ``image_size`` >= 32.
    Hidden activations are the five max-pool stage outputs (the BiDO paper's VGG16 taps).
    ImageNet ``vgg16_bn`` torchvision weights load into the conv features.
    """
    backbone = MIVGG16Backbone(in_channels, image_size)
    return MIVGG16(backbone, num_classes=num_classes, arch="vgg16", image_size=image_size, in_channels=in_channels)


class IRUnit(nn.Module):
    """An improved-residual unit (``bottleneck_IR``) of ArcFace's IR-ResNets.

    ``res_layer(x) + shortcut_layer(x)`` with no activation after the sum. The residual branch is

    * ``"arcface"``: BN-Conv3x3-BN-PReLU-Conv3x3(stride)-BN, the improved residual unit the ArcFace
      paper describes in its network settings (Deng et al., CVPR 2019, https://arxiv.org/abs/1801.07698);
    * ``"evolve"``: BN-Conv3x3-PReLU-Conv3x3(stride)-BN, the face.evoLVe implementation the MI
      literature's published IR152 / FaceNet64 checkpoints were trained with (one BN fewer).

    The shortcut is a strided 1x1 max-pool (identity subsampling) when the width is unchanged,
    else a strided 1x1 conv + BN.

    Args:
        in_channels: input width.
        depth: output width.
        stride: 1 or 2.
        unit: ``"arcface"`` or ``"evolve"``.
    """

    def __init__(self, in_channels: int, depth: int, stride: int, unit: str = "arcface") -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        first: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
        ]
        if unit == "arcface":
            first.append(nn.BatchNorm2d(depth))
        elif unit != "evolve":
            raise ValueError(f"unit must be 'arcface' or 'evolve', got {unit!r}")
        self.res_layer = nn.Sequential(
            *first, nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(Backbone):
    """IR-ResNet at low resolution with the ArcFace "output layer" (512-d embedding).

    ``input_layer`` (Conv3x3 stride 1-BN-PReLU, 64 channels), ``body`` (the IR units of four stages
    of widths 64, 128, 256, 512, each starting with a stride-2 unit) and ``output_layer``
    (BN2d-Dropout-Flatten-Linear(512 * s * s, 512)-BN1d, ``s`` the last map side: 4 at 64x64).
    Weights are initialised as in face.evoLVe: Xavier-uniform conv/linear weights, zero biases.

    Args:
        in_channels: input channels.
        image_size: input side (the output layer's linear size depends on it).
        stage_units: number of IR units per stage ([3, 8, 36, 3] for IR-152, [3, 4, 14, 3] for IR-50).
        unit: residual unit style, see :class:`IRUnit`.
        dropout: dropout probability in the output layer (0.5 as in the reference).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        stage_units: Sequence[int],
        unit: str = "arcface",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        if len(stage_units) != len(widths) or any(n < 1 for n in stage_units):
            raise ValueError(f"stage_units must be 4 positive ints, got {tuple(stage_units)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        stage_ends: list[int] = []
        previous = 64
        side = image_size
        for width, count in zip(widths, stage_units, strict=True):
            for index in range(count):
                units.append(IRUnit(previous, width, 2 if index == 0 else 1, unit))
                previous = width
            stage_ends.append(len(units) - 1)
            side = (side + 1) // 2  # 3x3/stride-2/pad-1 conv and 1x1/stride-2 pool both give ceil(s/2)
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * side * side, 512),
            nn.BatchNorm1d(512),
        )
        self._stage_ends = frozenset(stage_ends)
        self.hidden_names = tuple(f"body.{i}" for i in stage_ends)
        self.feature_dim = 512
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        x = self.input_layer(x)
        for index, block in enumerate(self.body):
            x = block(x)
            if hidden is not None and index in self._stage_ends:
                hidden.append(x)
        return self.output_layer(x)


class IRClassifier(ClassifierModel):
    """IR-ResNet target; maps the MI literature's checkpoint keys on load.

    The output layer belongs to the head (its linear size depends on ``image_size``), so a
    face-recognition backbone trained at 112x112 loads into the 64x64 model.
    """

    head_prefixes = ("classifier.", "backbone.output_layer.")

    def remap_foreign_key(self, key: str) -> str | None:
        if key.startswith("feature.output_layer."):  # an unused 112x112 head in the reference backbone
            return None
        for prefix, target in (
            ("feature.", "backbone."),
            ("output_layer.", "backbone.output_layer."),
            ("fc_layer.", "classifier."),
        ):
            if key.startswith(prefix):
                return target + key[len(prefix) :]
        return "backbone." + key


def _ir_model(
    arch: str,
    stage_units: Sequence[int],
    *,
    num_classes: int,
    image_size: int,
    in_channels: int,
    unit: str,
    dropout: float,
) -> ClassifierModel:
    if unit not in ("arcface", "evolve"):
        raise ValueError(f"unit must be 'arcface' or 'evolve', got {unit!r}")
    backbone = IRBackbone(in_channels, image_size, stage_units, unit=unit, dropout=dropout)
    return IRClassifier(backbone, num_classes=num_classes, arch=arch, image_size=image_size, in_channels=in_channels)


@register_model("ir152", min_image_size=16, foreign_head="fc_layer",
                foreign_source="the MI literature's IR152 checkpoints (GMI / KEDMI layout)")
def ir152(
    *, num_classes: int, image_size: int, in_channels: int, unit: str = "arcface", dropout: float = 0.5
) -> ClassifierModel:
    """MI-literature IR-152 target (ArcFace improved-residual ResNet-152 at 64x64); feature_dim 512.

    Stages of [3, 8, 36, 3] IR units (Deng et al., "ArcFace", CVPR 2019,
    https://arxiv.org/abs/1801.07698; the 64x64 variant of GMI/KEDMI), output layer
    BN-Dropout-Flatten-Linear(512*4*4 -> 512)-BN1d at 64x64, then the classifier. Any
    ``image_size`` >= 16 works (the output linear layer is sized for it). Hidden activations are
    the four stage outputs.

    Args:
        num_classes: number of classes.
        image_size: input side.
        in_channels: input channels.
        unit: ``"arcface"`` (paper: BN-Conv-BN-PReLU-Conv-BN) or ``"evolve"`` (face.evoLVe /
            published MI checkpoints: BN-Conv-PReLU-Conv-BN).
        dropout: output-layer dropout probability.
    """
    return _ir_model(
        "ir152",
        (3, 8, 36, 3),
        num_classes=num_classes,
        image_size=image_size,
        in_channels=in_channels,
        unit=unit,
        dropout=dropout,
    )


@register_model("facenet64", min_image_size=16, foreign_head="fc_layer",
                foreign_source="the MI literature's FaceNet64 checkpoints (GMI / KEDMI layout)")
def facenet64(
    *, num_classes: int, image_size: int, in_channels: int, unit: str = "arcface", dropout: float = 0.5
) -> ClassifierModel:
    """MI-literature FaceNet64 target: IR-50 backbone at 64x64 with a 512-d embedding; feature_dim 512.

    Stages of [3, 4, 14, 3] IR units (ArcFace's IR-50, Deng et al., CVPR 2019,
    https://arxiv.org/abs/1801.07698), the same output layer as ``ir152``
    (BN-Dropout-Flatten-Linear(512*4*4 -> 512)-BN1d at 64x64), then the classifier; the
    'FaceNet64' target of KEDMI/LOMMA/PLG-MI. ``image_size`` >= 16. Hidden activations are the
    four stage outputs.

    Args:
        num_classes: number of classes.
        image_size: input side.
        in_channels: input channels.
        unit: ``"arcface"`` or ``"evolve"``, see :func:`ir152`.
        dropout: output-layer dropout probability.
    """
    return _ir_model(
        "facenet64",
        (3, 4, 14, 3),
        num_classes=num_classes,
        image_size=image_size,
        in_channels=in_channels,
        unit=unit,
        dropout=dropout,
    )
