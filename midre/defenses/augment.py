"""Data-augmentation baselines of the paper's Table 4: CutMix, random resized crop, Gaussian blur.

The MIDRE paper (Sec. 3.4, Table 4) asks whether *any* augmentation defends against model
inversion as well as random erasing does, and compares with three common ones. Each is written
here as a batched, on-device op on the normalised training batch (one vectorised op per batch,
randomness from the trainer's seeded device generator), so it costs no data-loader work:

- ``cutmix`` (Yun et al., ICCV 2019, https://arxiv.org/abs/1905.04899): a box of a shuffled
  partner image is pasted into every image and the loss mixes the two labels by area. It owns
  the loss, so it combines with data-only defenses (``midre+cutmix``) but not with NLS/BiDO/MID.
- ``random-crop``: a random resized crop per image (area share ``scale``, aspect ``ratio``),
  resized back to the input size with bilinear sampling (one ``grid_sample`` per batch).
- ``gaussian-blur``: a Gaussian blur per image with ``sigma ~ U[sigma_min, sigma_max]`` (separable,
  one grouped convolution per direction and batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, Transform, register_defense

__all__ = [
    "CutMix", "GaussianBlurDefense", "RandomCropDefense", "cutmix_box", "gaussian_blur", "gaussian_kernels1d",
    "resized_crop",
]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _probability(value: Any, name: str) -> float:
    value = _number(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _range(value: Any, name: str, low: float, high: float, *, open_low: bool = False) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [min, max], got {value!r}")
    a, b = (_number(v, name) for v in value)
    if not (low < a if open_low else low <= a) or not a <= b <= high:
        raise ValueError(f"{name} must be a pair [min, max] with {low} {'<' if open_low else '<='} min <= max "
                         f"<= {high}, got {list(value)}")
    return a, b


def _batch_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the trainer's device generator: per-batch scalars (a Beta draw,
    a permutation) stay reproducible and follow the trainer's seeding, at one sync per batch."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed))


# --- CutMix ------------------------------------------------------------------------------------

def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The CutMix box for a mixing ratio ``lam`` (Yun et al. 2019, Alg. A1).

    The box has sides ``W*sqrt(1-lam)`` x ``H*sqrt(1-lam)`` around a uniformly drawn centre and is
    clipped at the image border, so its area may be smaller than ``(1-lam)*W*H``; the caller
    re-computes ``lam`` from the clipped box. Returns ``(x0, y0, x1, y1)``, end-exclusive.
    """
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(width * cut), int(height * cut)
    cx, cy = int(rng.integers(width)), int(rng.integers(height))
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    return x0, y0, x1, y1


@register_defense("cutmix")
class CutMix(Defense):
    """CutMix (Yun et al., ICCV 2019): paste a box of another image, mix the labels by area.

    Per batch, with probability ``prob``: ``lam ~ Beta(alpha, alpha)``, a partner permutation of the
    batch, and one box (:func:`cutmix_box`) in which every image takes its partner's pixels; the
    loss is ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[partner])`` with ``lam`` set to the
    share of pixels each image kept. This follows the paper's algorithm (one ``lam`` and one box
    per mini-batch). Logged: ``cutmix_lambda`` (mean kept share; 1 for unmixed batches).

    Args:
        alpha: Beta distribution parameter (1.0 in the paper: ``lam`` uniform on [0, 1]).
        prob: probability that a batch is mixed (the paper's ``cutmix_prob``; 1.0 = every batch).
    """

    name = "cutmix"
    no_transform = ("mixes pairs of training images and their labels: there is no per-image transform for an "
                    "attacker to optimise a reconstruction through")

    def __init__(self, alpha: float = 1.0, prob: float = 1.0) -> None:
        super().__init__()
        self.alpha = _number(alpha, "alpha")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.prob = _probability(prob, "prob")
        self._mix: tuple[Tensor, float, int] | None = None  # (partner, lam, batch size) of the last batch

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "prob": self.prob}

    def mix(self, x: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor | None, float]:
        """Mix one batch; returns ``(mixed, partner indices or None, lam)`` (pure given ``rng``)."""
        n, _, h, w = x.shape
        if n < 2 or rng.random() >= self.prob:
            return x, None, 1.0
        lam = float(rng.beta(self.alpha, self.alpha))
        partner = torch.from_numpy(rng.permutation(n)).to(x.device)
        x0, y0, x1, y1 = cutmix_box(lam, h, w, rng)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
        lam = 1.0 - (x1 - x0) * (y1 - y0) / (w * h)
        return mixed, partner, lam

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        mixed, partner, lam = self.mix(x, _batch_rng(generator))
        self._mix = (partner, lam, x.shape[0]) if partner is not None else None
        return mixed

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        logits = model(x)
        mix, self._mix = self._mix, None
        if mix is None or mix[2] != x.shape[0]:
            return F.cross_entropy(logits, y), logits, {"cutmix_lambda": 1.0}
        partner, lam, _ = mix
        loss = lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[partner])
        return loss, logits, {"cutmix_lambda": lam}


# --- random resized crop -------------------------------------------------------------------------

def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop each image to its box and resize it back to the input size (bilinear), batched.

    Args:
        x: float batch ``[N, C, H, W]``.
        boxes: ``[N, 4]`` float ``(x0, y0, w, h)`` in pixels (sub-pixel positions allowed).

    One affine ``grid_sample``: output coordinate ``u`` in [-1, 1] maps to
    ``centre + (w / W) * u`` in the input (``align_corners=False`` pixel-edge convention).
    """
    n, _, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    bx, by, bw, bh = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = bw / w
    theta[:, 0, 2] = (2 * bx + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * by + bh) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


@register_defense("random-crop")
class RandomCropDefense(Defense):
    """Random resized crop (the "random cropping" baseline of paper Table 4), batched on the device.

    Per image: area share ``s ~ U[scale]``, aspect ratio ``r ~ logU[ratio]``, crop ``w = W*sqrt(s*r)``,
    ``h = H*sqrt(s/r)`` (clipped to the image), top-left uniform over the positions where it fits,
    then resized back to ``H x W`` (torchvision ``RandomResizedCrop`` semantics, with clipping instead
    of its retry loop). Applied to each image with probability ``prob``.

    Args:
        scale: range of the crop's share of the image area, within (0, 1].
        ratio: range of the crop's aspect ratio w/h, positive.
        prob: probability that an image is cropped.
    """

    name = "random-crop"

    def __init__(self, scale: Sequence[float] = (0.5, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 prob: float = 1.0) -> None:
        super().__init__()
        self.scale = _range(scale, "scale", 0.0, 1.0, open_low=True)
        self.ratio = _range(ratio, "ratio", 0.0, math.inf, open_low=True)
        self.prob = _probability(prob, "prob")

    def params(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "ratio": list(self.ratio), "prob": self.prob}

    def sample_boxes(self, n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """``[n, 4]`` float ``(x0, y0, w, h)`` boxes, on the generator's device."""
        u = torch.rand(n, 4, generator=generator, device=generator.device)
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u[:, 1]
        r = log_r.exp()
        bw = (width * (s * r).sqrt()).clamp(max=width)
        bh = (height * (s / r).sqrt()).clamp(max=height)
        bx = (width - bw) * u[:, 2]
        by = (height - bh) * u[:, 3]
        return torch.stack([bx, by, bw, bh], 1)

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        boxes = self.sample_boxes(n, h, w, generator)
        apply = torch.rand(n, generator=generator, device=generator.device) < self.prob
        cropped = resized_crop(x, boxes)
        return torch.where(apply.to(x.device).view(-1, 1, 1, 1), cropped, x)

    def attack_transform(self, normalization: Any) -> Transform | None:
        return lambda x, generator: self.transform(x, x.new_zeros(0), x.new_zeros(0), 0, generator)


# --- Gaussian blur -------------------------------------------------------------------------------

def gaussian_kernels1d(sigma: Tensor, size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[N, size]`` for per-image ``sigma`` ``[N]`` (``size`` odd)."""
    t = torch.arange(size, device=sigma.device, dtype=torch.float32) - size // 2
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None].float() ** 2))
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Blur image ``i`` of ``x`` ``[N, C, H, W]`` with a ``size``-tap Gaussian of std ``sigma[i]``.

    Separable: one grouped convolution along H, one along W, each covering the whole batch.
    Borders are reflected (replicated when the image is smaller than the kernel's half width).
    """
    n, c, h, w = x.shape
    k = gaussian_kernels1d(sigma.to(x.device), size).to(x.dtype)  # [N, K]
    weight = k.repeat_interleave(c, dim=0)  # [N*C, K]
    pad = size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode=mode), weight.view(n * c, 1, size, 1), groups=n * c)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode=mode), weight.view(n * c, 1, 1, size), groups=n * c)
    return y.view(n, c, h, w)


@register_defense("gaussian-blur")
class GaussianBlurDefense(Defense):
    """Gaussian blur (the "Gaussian blur" baseline of paper Table 4), batched on the device.

    Per image: ``sigma ~ U[sigma_min, sigma_max]`` (pixels), blurred with a ``kernel_size``-tap
    separable Gaussian (default ``2*ceil(3*sigma_max)+1``: +-3 sigma), with probability ``prob``.
    The defaults are torchvision ``GaussianBlur``'s sigma range (0.1, 2.0).

    Args:
        sigma: ``[sigma_min, sigma_max]``, positive.
        kernel_size: odd number of taps, or None for ``2*ceil(3*sigma_max)+1``.
        prob: probability that an image is blurred.
    """

    name = "gaussian-blur"

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0), kernel_size: int | None = None,
                 prob: float = 1.0) -> None:
        super().__init__()
        self.sigma = _range(sigma, "sigma", 0.0, math.inf, open_low=True)
        if kernel_size is not None and (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
                                        or kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be an odd positive int or null, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.prob = _probability(prob, "prob")

    @property
    def size(self) -> int:
        return self.kernel_size or 2 * math.ceil(3 * self.sigma[1]) + 1

    def params(self) -> dict[str, Any]:
        return {"sigma": list(self.sigma), "kernel_size": self.kernel_size, "prob": self.prob}

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        n = x.shape[0]
        u = torch.rand(n, 2, generator=generator, device=generator.device)
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[:, 0]
        blurred = gaussian_blur(x, sigma, self.size)
        return torch.where((u[:, 1] < self.prob).to(x.device).view(-1, 1, 1, 1), blurred, x)

    def attack_transform(self, normalization: Any) -> Transform | None:
        return lambda x, generator: self.transform(x, x.new_zeros(0), x.new_zeros(0), 0, generator)
