"""DCGAN-style generators and discriminators used as image priors by the GAN-based attacks.

* GMI (Zhang et al., CVPR 2020, Sec. 3.2): a generator/critic pair trained with WGAN-GP on public
  images; the critic's score is the "prior loss" of the latent search.
* KEDMI (Chen et al., ICCV 2021, Sec. 3.2): the discriminator has one output per private identity
  and learns the *target's soft labels* on public images; realness is ``logsumexp`` of its logits.
* PLG-MI (Yuan et al., AAAI 2023, Sec. 3.2): a conditional generator (class-conditional BatchNorm)
  and a projection discriminator with spectral normalisation (Miyato & Koyama 2018).

All networks work at any square resolution >= 8 px: they are built for the next power of two and
resize at the ends, so the tiny test images (16-32 px) and the 64 px attack setting share code.
Generators output ``[0, 1]`` pixels (sigmoid); discriminators take ``[0, 1]`` pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pow2(size: int) -> int:
    if size < 8:
        raise ValueError(f"image_size must be >= 8 for a GAN prior, got {size}")
    return 1 << math.ceil(math.log2(size))


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (PLG-MI's conditional generator)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.bn(x)
        return self.gamma(y)[:, :, None, None] * out + self.beta(y)[:, :, None, None]


class Generator(nn.Module):
    """DCGAN generator ``z [N, latent_dim] -> x [N, C, S, S]`` in ``[0, 1]`` (optionally class-conditional).

    Args:
        latent_dim: size of the latent code (GMI/KEDMI use 100).
        image_size: output side S.
        channels: output channels.
        width: channels of the last up-sampling block; doubled per block up to ``8 * width``.
        resolution: side at which the network draws (default ``image_size``); a smaller one (e.g.
            32 for 64 px targets) makes the prior about 4x cheaper, the output is still resized
            to ``image_size``.
        num_classes: if set, every BatchNorm is class-conditional and ``forward`` needs labels.
    """

    def __init__(self, latent_dim: int = 100, image_size: int = 64, channels: int = 3, width: int = 32,
                 num_classes: int | None = None, resolution: int | None = None) -> None:
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        self.width, self.num_classes = width, num_classes
        side = _pow2(resolution or image_size)
        n_up = int(math.log2(side // 4))
        chans = [min(width * 2 ** (n_up - i), width * 8) for i in range(n_up + 1)]
        self.start_channels = chans[0]
        self.fc = nn.Linear(latent_dim, chans[0] * 16, bias=False)
        self.norms = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.norms.append(self._norm(chans[0]))
        for i in range(n_up):
            self.ups.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False))
            self.norms.append(self._norm(chans[i + 1]))
        self.out = nn.Conv2d(chans[-1], channels, 3, 1, 1)

    def _norm(self, c: int) -> nn.Module:
        return ConditionalBatchNorm2d(c, self.num_classes) if self.num_classes else nn.BatchNorm2d(c)

    def _apply_norm(self, norm: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return norm(x, y) if isinstance(norm, ConditionalBatchNorm2d) else norm(x)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes and y is None:
            raise ValueError("this generator is class-conditional: pass labels y")
        x = self.fc(z).view(z.shape[0], self.start_channels, 4, 4)
        x = F.relu(self._apply_norm(self.norms[0], x, y))
        for up, norm in zip(self.ups, self.norms[1:], strict=True):
            x = F.relu(self._apply_norm(norm, up(x), y))
        x = torch.sigmoid(self.out(x))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return x


class Discriminator(nn.Module):
    """DCGAN discriminator/critic on ``[0, 1]`` images.

    Args:
        image_size, channels, width: as for :class:`Generator` (width of the first conv block).
        resolution: side at which images are judged (inputs are resized to it; default ``image_size``).
        outputs: 1 for a GMI critic; the number of private identities for KEDMI.
        num_classes: if set, adds a projection term ``<embed(y), h>`` (PLG-MI's projection D).
        norm: ``"instance"`` (WGAN-GP critics must not use BatchNorm), ``"batch"`` or ``"none"``.
        spectral: wrap every weight layer in spectral normalisation (PLG-MI).
    """

    def __init__(self, image_size: int = 64, channels: int = 3, width: int = 32, outputs: int = 1,
                 num_classes: int | None = None, norm: str = "instance", spectral: bool = False,
                 resolution: int | None = None) -> None:
        super().__init__()
        if norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {norm!r}")
        self.image_size, self.side = image_size, _pow2(resolution or image_size)
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        n_down = int(math.log2(self.side // 4))
        layers: list[nn.Module] = []
        cin = channels
        for i in range(n_down):
            cout = min(width * 2 ** i, width * 8)
            layers.append(sn(nn.Conv2d(cin, cout, 4, 2, 1)))
            if i > 0 and norm == "instance":
                layers.append(nn.InstanceNorm2d(cout, affine=True))
            elif i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin * 16
        self.head = sn(nn.Linear(self.feature_dim, outputs))
        self.embed = sn(nn.Embedding(num_classes, self.feature_dim)) if num_classes else None

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.body(x * 2 - 1).flatten(1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.features(x)
        out = self.head(h)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is a projection discriminator: pass labels y")
            out = out + (self.embed(y) * h).sum(1, keepdim=True)
        return out


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
    """WGAN-GP penalty ``E[(||grad D(x_hat)|| - 1)^2]`` on random interpolates (Gulrajani et al. 2017)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
