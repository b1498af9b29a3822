"""MIDRE random erasing and its ablations, batched on the device.

Paper: *Random Erasing vs. Model Inversion: A Promising Defense or a False Hope?* (TMLR 2025),
Sec. 2.2 and Alg. 1 (Supp.). For every private training image of size W x H, at every iteration:

1. draw the erased area fraction ``a_e ~ U[a_l, a_h]`` (``a_l = 0.1`` in the paper, ``a_h`` the one
   hyper-parameter: 0.4 by default, 0.8 for the strong setting);
2. the square's side is ``s = sqrt(W * H * a_e)`` (rounded to whole pixels here);
3. draw a top-left corner ``(x_e, y_e)`` inside the image and re-draw until the square fits,
   ``x_e + s <= W`` and ``y_e + s <= H``;
4. fill the square with the ImageNet mean pixel.

Step 3 is rejection sampling whose accepted corner is uniform over the positions where the square
fits, so :func:`sample_boxes` draws it from that distribution directly (no loop). Only the corner
is re-drawn, not ``a_e``: re-drawing ``a_e`` too would bias accepted areas towards small squares.

Randomness is drawn once (:func:`sample_boxes`) and applied by a pure function
(:func:`erase_boxes`), the same split torchvision's ``transforms.v2`` uses, so tests can check both
halves apart and a seeded ``torch.Generator`` reproduces a run exactly.

Fill values. The paper fills with the ImageNet mean pixel, (0.485, 0.456, 0.406) in [0, 1] pixel
space, which is exactly 0 once the image is ImageNet-normalised. The authors' public code instead
calls torchvision's ``RandomErasing(value=(0.485, 0.456, 0.406))`` *after* a mean-0.5/std-0.5
normalisation, so the value lands in normalised space and means the light grey pixel
(0.7425, 0.728, 0.703). Both are offered: ``fill="imagenet-mean"`` (the paper, default) and
``fill="reference-code"`` (the authors' code), plus any explicit pixel value in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from midre.seeding import ENTIRE_ERASING_STREAM, epoch_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The authors' code: ImageNet mean given as a value in mean-0.5/std-0.5 normalised space.
REFERENCE_CODE_FILL = tuple(0.5 + 0.5 * m for m in IMAGENET_MEAN)
FILLS = ("imagenet-mean", "reference-code")


class NormalizationLike(Protocol):
    """Anything with per-channel ``mean`` and ``std`` (e.g. :class:`midre.data.Normalization`)."""

    mean: Sequence[float]
    std: Sequence[float]


def _check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (low < value <= high) or math.isnan(value):
        raise ValueError(f"{name} must be in ({low}, {high}], got {value}")
    return float(value)


def validate_area(a_l: float, a_h: float, a_e: float | None) -> tuple[float, float, float | None]:
    """Check the erased-area parameters; return them as floats. Errors name the argument."""
    a_l = _check_fraction("a_l", a_l)
    a_h = _check_fraction("a_h", a_h)
    if a_h < a_l:
        raise ValueError(f"a_h must be >= a_l ({a_l}), got {a_h}")
    if a_e is not None:
        a_e = _check_fraction("a_e", a_e)
    return a_l, a_h, a_e


def square_side(area_fraction: Tensor, height: int, width: int) -> Tensor:
    """Side in pixels of the square covering ``area_fraction`` of an ``height x width`` image.

    ``round(sqrt(W * H * a_e))``, at least 1 and at most ``min(H, W)`` (on a non-square image a
    large fraction would otherwise never fit and the paper's retry loop would not end).
    """
    side = torch.round(torch.sqrt(area_fraction * float(height * width)))
    return side.clamp_(1, min(height, width)).long()


def sample_boxes(
    n: int,
    height: int,
    width: int,
    *,
    a_l: float = 0.1,
    a_h: float = 0.4,
    a_e: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``n`` MIDRE erasing squares for ``height x width`` images.

    Args:
        n: number of squares (one per image).
        height, width: image size in pixels.
        a_l, a_h: bounds of the erased area fraction, ``a_e ~ U[a_l, a_h]`` (paper: a_l = 0.1).
        a_e: a fixed area fraction instead of sampling one (the paper's Fig. 2 / Table 1 sweeps).
        generator: a ``torch.Generator`` for reproducible draws; its device is used.
        device: device for the result when no generator is given (default CPU).

    Returns:
        ``LongTensor[n, 4]`` of ``(x0, y0, x1, y1)`` with ``x1 - x0 == y1 - y0`` (half-open: the
        square covers columns ``x0 .. x1 - 1``), always inside the image.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_boxes(2, 64, 64, a_h=0.4, generator=g).shape
        torch.Size([2, 4])
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    a_l, a_h, a_e = validate_area(a_l, a_h, a_e)
    dev = generator.device if generator is not None else torch.device(device or "cpu")
    if a_e is None:
        area = a_l + (a_h - a_l) * torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    else:
        area = torch.full((n,), a_e, device=dev, dtype=torch.float64)
    side = square_side(area, height, width)
    # Corner uniform over the feasible positions {0, ..., W - s} x {0, ..., H - s}.
    u = torch.rand(n, 2, generator=generator, device=dev, dtype=torch.float64)
    x0 = torch.floor(u[:, 0] * (width - side + 1)).long()
    y0 = torch.floor(u[:, 1] * (height - side + 1)).long()
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean masks ``[N, 1, H, W]``, True inside each box.

    Built as the product of a row mask ``[N, 1, H, 1]`` and a column mask ``[N, 1, 1, W]``, so the
    full-size mask is materialised once.
    """
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    rows = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    b = boxes.view(-1, 4, 1, 1, 1)
    in_cols = (cols >= b[:, 0]) & (cols < b[:, 2])
    in_rows = (rows >= b[:, 1]) & (rows < b[:, 3])
    return in_rows & in_cols


def fill_value(
    fill: str | Sequence[float],
    channels: int,
    normalization: NormalizationLike | None,
) -> Tensor:
    """The fill as a per-channel value in the *input* space of the batch.

    Args:
        fill: ``"imagenet-mean"`` (paper), ``"reference-code"`` (authors' code), or pixel values in
            [0, 1] (one per channel, or one for all).
        channels: channels of the batch; a 3-value fill on a 1-channel batch uses its mean.
        normalization: how the batch was normalised (``None``: pixels in [0, 1]).
    """
    if isinstance(fill, str):
        if fill == "imagenet-mean":
            pixel = IMAGENET_MEAN
        elif fill == "reference-code":
            pixel = REFERENCE_CODE_FILL
        else:
            raise ValueError(f"fill must be one of {FILLS} or pixel values in [0, 1], got {fill!r}")
    else:
        pixel = tuple(float(v) for v in fill)
        if not pixel or any(not 0.0 <= v <= 1.0 for v in pixel):
            raise ValueError(f"fill pixel values must be in [0, 1], got {fill!r}")
    value = torch.tensor(pixel, dtype=torch.float64)
    if value.numel() == 1:
        value = value.expand(channels)
    elif value.numel() != channels:
        if channels == 1:
            value = value.mean().reshape(1)
        else:
            raise ValueError(f"fill has {value.numel()} values but the batch has {channels} channels")
    if normalization is not None:
        mean = torch.tensor(normalization.mean, dtype=torch.float64)
        std = torch.tensor(normalization.std, dtype=torch.float64)
        if mean.numel() != channels:
            mean, std = mean.mean().expand(channels), std.mean().expand(channels)
        value = (value - mean) / std
    return value.float()


def erase_boxes(x: Tensor, boxes: Tensor, value: Tensor, *, inplace: bool = False) -> Tensor:
    """Pure erase: ``x`` ([N, C, H, W]) with each box filled by ``value`` ([C]).

    Pixels outside the boxes are returned unchanged, bit for bit. With ``inplace=True`` the batch
    itself is overwritten (one masked write per channel, no copy of the batch): the trainer uses
    this on the fresh float batch it has just built.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch [N, C, H, W], got shape {tuple(x.shape)}")
    if boxes.shape != (x.shape[0], 4):
        raise ValueError(f"boxes must be [{x.shape[0]}, 4], got {tuple(boxes.shape)}")
    if value.numel() != x.shape[1]:
        raise ValueError(f"value must have one entry per channel ({x.shape[1]}), got {value.numel()}")
    mask = box_masks(boxes.to(x.device), x.shape[2], x.shape[3])
    # The fill is written as Python numbers, never copied to the device as a tensor: a blocking
    # host-to-device copy per batch would make the host wait for the GPU (a sync every step).
    values = value.tolist()
    uniform = all(v == values[0] for v in values)
    if not inplace:
        if uniform:
            return torch.where(mask, values[0], x)
        x = x.clone()
    if uniform:
        return x.masked_fill_(mask, values[0])
    for c, v in enumerate(values):  # a loop over channels (3), not over images
        x[:, c].masked_fill_(mask[:, 0], v)
    return x


def _input_normalization(normalization: NormalizationLike | None, normalized: bool) -> NormalizationLike | None:
    """The normalisation of the input batch: the given one, ImageNet's by default, None for [0, 1]."""
    if normalization is None and normalized:
        return _IMAGENET
    return normalization


class _Eraser(nn.Module):
    """Shared validation for the three erasing schemes."""

    def __init__(
        self,
        a_h: float,
        a_l: float,
        a_e: float | None,
        fill: str | Sequence[float],
        normalization: NormalizationLike | None,
    ) -> None:
        super().__init__()
        self.a_l, self.a_h, self.a_e = validate_area(a_l, a_h, a_e)
        fill_value(fill, 3, None)  # validate now, not on the first batch
        self.fill = fill
        self.normalization = normalization

    def _value(self, x: Tensor) -> Tensor:
        return fill_value(self.fill, x.shape[1], self.normalization)

    def extra_repr(self) -> str:
        area = f"a_e={self.a_e}" if self.a_e is not None else f"a_e~U[{self.a_l}, {self.a_h}]"
        return f"{area}, fill={self.fill!r}"


class RandomErasing(_Eraser):
    """MIDRE random erasing: one fresh square per image per call, vectorised over the batch.

    Input: a float batch ``[N, C, H, W]`` on any device. By default the batch is assumed to be
    **ImageNet-normalised** (as :mod:`midre.data` produces by default), so the ImageNet-mean fill
    is written as 0; pass ``normalized=False`` for a batch of [0, 1] pixels (the fill is then the
    mean pixel itself), or ``normalization=`` the dataset's own mean/std.

    Args:
        a_h: upper bound of the erased area fraction (paper default 0.4; 0.8 the strong setting).
        a_l: lower bound (paper: 0.1).
        a_e: fixed area fraction instead of sampling (Fig. 2 / Table 1 sweeps).
        fill: ``"imagenet-mean"`` (paper), ``"reference-code"`` or pixel values in [0, 1].
        normalization: mean/std the input batch was normalised with (default: ImageNet's).
        normalized: False when the batch holds plain [0, 1] pixels and ``normalization`` is None.

    Example:
        >>> erase = RandomErasing(a_h=0.4)
        >>> out = erase(torch.randn(8, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    """

    def __init__(
        self,
        a_h: float = 0.4,
        a_l: float = 0.1,
        a_e: float | None = None,
        fill: str | Sequence[float] = "imagenet-mean",
        normalization: NormalizationLike | None = None,
        *,
        normalized: bool = True,
    ) -> None:
        super().__init__(a_h, a_l, a_e, fill, _input_normalization(normalization, normalized))

    def forward(self, x: Tensor, generator: torch.Generator | None = None, *, inplace: bool = False) -> Tensor:
        """Erase one fresh square per image; ``inplace=True`` overwrites ``x`` instead of copying."""
        boxes = sample_boxes(
            x.shape[0], x.shape[2], x.shape[3], a_l=self.a_l, a_h=self.a_h, a_e=self.a_e,
            generator=generator, device=x.device,
        )
        return erase_boxes(x, boxes.to(x.device), self._value(x), inplace=inplace)


class FixedErasing(_Eraser):
    """Fixed Erasing ablation (paper Sec. 3.3, Table 1): one square per image, drawn once.

    The square of image ``i`` is drawn from ``seed`` when the object is built and reused at every
    epoch, so some pixels of each image are never seen in training.

    Args:
        num_images: size of the training set (squares are indexed by image index).
        height, width: image size.
        seed: seed of the one-time draw.
        a_h, a_l, a_e, fill, normalization: as in :class:`RandomErasing`.
    """

    def __init__(
        self,
        num_images: int,
        height: int,
        width: int,
        *,
        seed: int = 0,
        a_h: float = 0.4,
        a_l: float = 0.1,
        a_e: float | None = None,
        fill: str | Sequence[float] = "imagenet-mean",
        normalization: NormalizationLike | None = None,
        normalized: bool = True,
    ) -> None:
        super().__init__(a_h, a_l, a_e, fill, _input_normalization(normalization, normalized))
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "boxes", sample_boxes(num_images, height, width, a_l=a_l, a_h=a_h, a_e=a_e, generator=gen)
        )

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        """Erase each image's own fixed square; ``indices`` are the images' dataset indices."""
        boxes = self.boxes.to(x.device)[indices.to(x.device)]
        return erase_boxes(x, boxes, self._value(x))


class EntireErasing(nn.Module):
    """Entire Erasing ablation (paper Sec. 3.3, Table 1): drop a share of each identity's images.

    Each epoch, ``round(share * n_k)`` of the ``n_k`` images of identity ``k`` are erased entirely,
    chosen afresh per epoch from ``seed`` and the epoch number (so a resumed run repeats the choice).
    ``mode="leave-out"`` (default, the paper's "reduce the number of samples per ID") removes them
    from that epoch; ``mode="fill"`` keeps them as images filled completely with the mean pixel.

    Args:
        labels: identity label of every training image.
        share: fraction of each identity's images erased per epoch, in [0, 1).
        seed: seed of the per-epoch choice.
        mode: ``"leave-out"`` or ``"fill"``.
        fill, normalization: fill for ``mode="fill"``, as in :class:`RandomErasing`.
    """

    MODES = ("leave-out", "fill")

    def __init__(
        self,
        labels: Tensor,
        share: float,
        *,
        seed: int = 0,
        mode: str = "leave-out",
        fill: str | Sequence[float] = "imagenet-mean",
        normalization: NormalizationLike | None = None,
        normalized: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
            raise ValueError(f"share must be a number in [0, 1), got {share!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        fill_value(fill, 3, None)
        self.share, self.seed, self.mode, self.fill = float(share), int(seed), mode, fill
        self.normalization = _input_normalization(normalization, normalized)
        self.register_buffer("labels", labels.detach().long().cpu().clone())

    def erased(self, epoch: int) -> Tensor:
        """Boolean mask ``[N]`` of the images erased in ``epoch`` (deterministic)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, ENTIRE_ERASING_STREAM))
        order = torch.randperm(len(self.labels), generator=gen)
        mask = torch.zeros(len(self.labels), dtype=torch.bool)
        for k in torch.unique(self.labels):
            members = order[self.labels[order] == k]  # this identity's images in random order
            mask[members[: int(round(self.share * len(members)))]] = True
        return mask

    def kept_indices(self, epoch: int) -> Tensor:
        """Indices that take part in ``epoch`` (all of them in ``mode="fill"``)."""
        if self.mode == "fill":
            return torch.arange(len(self.labels))
        return torch.nonzero(~self.erased(epoch)).flatten()

    def forward(self, x: Tensor, indices: Tensor, epoch: int) -> Tensor:
        if self.mode == "leave-out":
            return x
        hit = self.erased(epoch).to(x.device)[indices.to(x.device)].view(-1, 1, 1, 1)
        value = fill_value(self.fill, x.shape[1], self.normalization).to(x.device, x.dtype)
        return torch.where(hit, value.view(1, -1, 1, 1), x)


class _ImageNetStats:
    mean = IMAGENET_MEAN
    std = IMAGENET_STD


_IMAGENET = _ImageNetStats()
