"""``cnn-small``: a small, fast CNN for CPU tests, demos and smoke runs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from midre.models.base import Backbone, ClassifierModel
from midre.models.registry import register_model

__all__ = ["SmallCNNBackbone", "cnn_small"]


class SmallCNNBackbone(Backbone):
    """Conv3x3-BatchNorm-ReLU-MaxPool blocks, then global average pooling.

    The classic VGG-style block (Simonyan & Zisserman, ICLR 2015, https://arxiv.org/abs/1409.1556)
    with batch normalisation (Ioffe & Szegedy, ICML 2015, https://arxiv.org/abs/1502.03167);
    global average pooling (Lin et al., "Network In Network", https://arxiv.org/abs/1312.4400)
    makes the feature size independent of the input size.

    Args:
        in_channels: input channels.
        widths: output channels of each block; the last one is ``feature_dim``.
    """

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        blocks = []
        previous = in_channels
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = previous
        self.hidden_names = tuple(f"blocks.{i}" for i in range(len(blocks)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        for block in self.blocks:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        return self.pool(x).flatten(1)


@register_model("cnn-small", min_image_size=16)
def cnn_small(
    *,
    num_classes: int,
    image_size: int,
    in_channels: int,
    widths: Sequence[int] = (32, 64, 96, 128),
) -> ClassifierModel:
    """Small 4-block CNN (about 190k parameters, feature_dim 128) for fast CPU training.

    Four Conv3x3-BN-ReLU-MaxPool2 blocks (32, 64, 96, 128 channels), global average pooling,
    then the linear classifier. At 64x64 a forward pass costs about 45 MMAC per image, so a few
    epochs on a small face data set take seconds on two CPU cores. ``image_size`` >= 16 (four
    2x poolings).

    Args:
        num_classes: number of classes.
        image_size: input side (>= 16).
        in_channels: input channels.
        widths: channels of each block (any number of blocks; needs ``image_size >= 2**len``).
    """
    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be positive ints, got {widths}")
    if image_size < 2 ** len(widths):
        raise ValueError(f"image_size={image_size} is too small for {len(widths)} blocks: minimum {2 ** len(widths)}")
    backbone = SmallCNNBackbone(in_channels, widths)
    return ClassifierModel(
        backbone, num_classes=num_classes, arch="cnn-small", image_size=image_size, in_channels=in_channels
    )
