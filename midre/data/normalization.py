"""Per-channel normalisation and the uint8 -> float conversion done per batch on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` on images in [0, 1] space.

    Works on ``[C, H, W]`` or ``[N, C, H, W]`` float tensors on any device; the constants are built
    on the input's device and dtype.

    Args:
        mean: One mean per channel, in [0, 1] pixel space.
        std: One positive standard deviation per channel.

    Raises:
        ValueError: naming ``mean`` or ``std`` when they are empty, of different lengths, not finite,
            or when a std is not positive.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> torch.allclose(IMAGENET.denormalize(IMAGENET.normalize(x)), x, atol=1e-6)
        True
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            mean = tuple(float(m) for m in self.mean)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Normalization.mean must be a sequence of floats, got {self.mean!r}") from exc
        try:
            std = tuple(float(s) for s in self.std)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Normalization.std must be a sequence of floats, got {self.std!r}") from exc
        if not mean or not all(math.isfinite(m) for m in mean):
            raise ValueError(f"Normalization.mean must be non-empty and finite, got {self.mean!r}")
        if len(std) != len(mean):
            raise ValueError(
                f"Normalization.std must have one value per channel ({len(mean)}), got {self.std!r}"
            )
        if not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"Normalization.std must be finite and > 0, got {self.std!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        """Number of channels this normalisation applies to."""
        return len(self.mean)

    def _constants(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"expected a [..., {self.channels}, H, W] tensor for this {self.channels}-channel "
                f"normalization, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected a floating point tensor, got {x.dtype}; use to_float() for uint8")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] to normalised space: ``(x - mean) / std`` (out of place)."""
        mean, std = self._constants(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] space: ``x * std + mean`` (not clamped)."""
        mean, std = self._constants(x)
        return x * std + mean

    def for_channels(self, channels: int) -> Normalization:
        """Return this normalisation for ``channels`` channels.

        Equal channel counts return ``self``; asking a multi-channel normalisation for 1 channel
        averages its means and stds (ImageNet -> mean 0.449, std 0.226), which is what a grayscale
        image repeated to RGB would see on average.

        Raises:
            ValueError: naming ``channels`` for any other conversion.
        """
        if channels == self.channels:
            return self
        if channels == 1:
            return Normalization((sum(self.mean) / self.channels,), (sum(self.std) / self.channels,))
        raise ValueError(f"channels: cannot adapt a {self.channels}-channel normalization to {channels}")

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"mean": [...], "std": [...]}`` (for checkpoint sidecars)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of `to_dict`."""
        return cls(tuple(data["mean"]), tuple(data["std"]))


#: ImageNet mean/std in [0, 1] space (torchvision's pretrained-weights convention). The mean is the
#: pixel MIDRE fills erased squares with (paper Sec. 2.2): zero after this normalisation.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def to_float(
    images_uint8: torch.Tensor,
    normalization: Normalization | None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Convert uint8 images to float on their own device, scaled to [0, 1], then normalised.

    The data sets keep images as uint8 (4x smaller); the trainer moves a batch to the device and
    calls this there, so no DataLoader workers are needed.

    Args:
        images_uint8: uint8 tensor ``[N, C, H, W]`` (or ``[C, H, W]``) on any device.
        normalization: Applied after scaling to [0, 1]; None returns plain [0, 1] values.
        dtype: Floating point result dtype.

    Returns:
        A new float tensor of the same shape on the same device.

    Raises:
        TypeError: naming ``images_uint8`` when it is not a uint8 tensor, or ``dtype`` when it is
            not a floating point dtype.
    """
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        got = images_uint8.dtype if isinstance(images_uint8, torch.Tensor) else type(images_uint8).__name__
        raise TypeError(f"images_uint8 must be a torch.uint8 tensor, got {got}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
    x = images_uint8.to(dtype).div_(255.0)
    if normalization is None:
        return x
    mean, std = normalization._constants(x)
    return x.sub_(mean).div_(std)
