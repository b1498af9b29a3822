"""What an attack needs from an image prior, behind one interface: :class:`ImageGenerator`.

PPA, IF-GMI and MIRROR search the latent space of a generator and read its images at the target's
size; IF-GMI also optimises the features *between* synthesis blocks. This module gives them one
contract that both kinds of prior implement:

* :class:`GanPriorGenerator` wraps the WGAN-GP priors the study trains on public data
  (:class:`midre.priors.GanPrior`, DCGAN networks of :mod:`midre.priors.gan`). Its "W space" is its
  latent space (no mapping network; truncation scales towards the zero mean latent), and its
  critic gives the optional discriminator score.
* :class:`StyleGAN2Generator` wraps :class:`midre.priors.stylegan2.StyleGAN2` (user-supplied weights
  or a random initialisation): W space, truncation towards ``w_avg``, the P space of MIRROR, and an
  optional centre crop (PPA crops FFHQ's 1024 px faces to the central 800 px before resizing).

Images leave :meth:`ImageGenerator.synthesize` as ``[0, 1]`` pixels at the target's side and
channel count, so every attack scores them the same way.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.priors.prior import GanPrior
from midre.priors.stylegan2 import StyleGAN2

__all__ = ["GanPriorGenerator", "ImageGenerator", "StyleGAN2Generator", "as_image_generator", "fit_image"]

#: A state between synthesis blocks: features first (what IF-GMI optimises), then whatever else the
#: generator carries along (StyleGAN2: the RGB skip image so far).
State = tuple[Tensor, ...]


def fit_image(x01: Tensor, size: int, channels: int, crop_fraction: float = 1.0) -> Tensor:
    """``[0, 1]`` images to the target's ``channels`` and ``size`` (optional centre crop first).

    RGB -> grey is the channel mean; grey -> RGB repeats the channel. Down-sampling is anti-aliased
    bilinear (as torchvision's ``Resize`` on tensors).
    """
    if crop_fraction < 1.0:
        side = x01.shape[-1]
        keep = max(1, round(side * crop_fraction))
        top = (side - keep) // 2
        x01 = x01[..., top:top + keep, top:top + keep]
    if x01.shape[1] != channels:
        if channels == 1:
            x01 = x01.mean(1, keepdim=True)
        elif x01.shape[1] == 1:
            x01 = x01.expand(-1, channels, -1, -1)
        else:
            raise ValueError(f"cannot map {x01.shape[1]} generator channels to {channels} target channels")
    if x01.shape[-1] != size or x01.shape[-2] != size:
        x01 = F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=x01.shape[-1] > size)
    return x01


class ImageGenerator(abc.ABC):
    """An attacker's image prior: latents -> W -> (blocks) -> ``[0, 1]`` images at the target's size.

    Attributes:
        name: ``"gan"`` or ``"stylegan2"`` (reported in the attack's ``extra``).
        z_dim: size of a sampled latent ``z``.
        w_dim: size of one intermediate latent ``w`` (the space PPA/MIRROR optimise).
        num_blocks: synthesis blocks that :meth:`run_blocks` can stop after / resume from.
        image_size, channels: the images :meth:`synthesize` returns (the target's input).
    """

    name: str
    z_dim: int
    w_dim: int
    num_blocks: int
    image_size: int
    channels: int

    # ------------------------------------------------------------------ latents
    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` latents from the prior's latent distribution (CPU; move them yourself)."""
        return torch.randn(n, self.z_dim, generator=generator)

    @abc.abstractmethod
    def mapping(self, z: Tensor, psi: float = 1.0) -> Tensor:
        """``z [N, z_dim] -> w [N, w_dim]`` with truncation ``w_avg + psi (w - w_avg)``."""

    @property
    @abc.abstractmethod
    def w_avg(self) -> Tensor:
        """The truncation centre ``[w_dim]`` (on the generator's device)."""

    def to_p(self, w: Tensor) -> Tensor:
        """W -> the space MIRROR bounds (StyleGAN: P, the mapping output before its last leaky ReLU)."""
        return w

    def from_p(self, p: Tensor) -> Tensor:
        """Inverse of :meth:`to_p`."""
        return p

    # ------------------------------------------------------------------ synthesis
    @abc.abstractmethod
    def run_blocks(self, state: State | None, w: Tensor, start: int, stop: int) -> State:
        """Run synthesis blocks ``[start, stop)``; ``state=None`` (only with ``start=0``) begins from ``w``."""

    @abc.abstractmethod
    def finish(self, state: State) -> Tensor:
        """The ``[0, 1]`` images at the target's size from the state after the last block."""

    def synthesize(self, w: Tensor) -> Tensor:
        """``w -> [0, 1]`` images ``[N, channels, image_size, image_size]``."""
        return self.finish(self.run_blocks(None, w, 0, self.num_blocks))

    def features(self, w: Tensor, k: int) -> State:
        """The state after the first ``k`` blocks (IF-GMI's intermediate features)."""
        return self.run_blocks(None, w, 0, k)

    def resume(self, state: State, w: Tensor, k: int) -> Tensor:
        """Continue from the state after block ``k`` to the ``[0, 1]`` images."""
        return self.finish(self.run_blocks(state, w, k, self.num_blocks))

    def discriminator_score(self, x01: Tensor) -> Tensor | None:
        """Realness score per image ``[N]`` (higher: more real), or ``None`` without a discriminator."""
        return None

    # ------------------------------------------------------------------ bookkeeping
    @abc.abstractmethod
    def modules(self) -> list[nn.Module]:
        """The networks (for freezing and moving)."""

    def to(self, device: torch.device | str) -> ImageGenerator:
        for m in self.modules():
            m.to(device)
        return self

    def freeze(self) -> ImageGenerator:
        """Eval mode and no parameter gradients (attacks optimise latents and features, never weights)."""
        for m in self.modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        return self

    def describe(self) -> dict[str, Any]:
        return {"generator": self.name, "z_dim": self.z_dim, "w_dim": self.w_dim, "blocks": self.num_blocks}


class GanPriorGenerator(ImageGenerator):
    """The interface over an unconditional WGAN-GP :class:`GanPrior` (GMI's prior).

    Blocks: 0 = the latent projection to 4x4 features, then one per transposed convolution; the
    final convolution, sigmoid and resize run in :meth:`finish`.
    """

    name = "gan"

    def __init__(self, prior: GanPrior, image_shape: tuple[int, int, int]) -> None:
        if prior.generator.num_classes:
            raise ValueError("a class-conditional prior cannot serve PPA / IF-GMI / MIRROR; use a 'gmi' prior")
        self.prior = prior
        self.net = prior.generator
        self.channels, self.image_size = int(image_shape[0]), int(image_shape[-1])
        self.z_dim = self.w_dim = int(self.net.latent_dim)
        self.num_blocks = 1 + len(self.net.ups)

    def modules(self) -> list[nn.Module]:
        return [self.prior.generator, self.prior.discriminator]

    @property
    def w_avg(self) -> Tensor:
        return torch.zeros(self.w_dim, device=self.net.fc.weight.device)

    def mapping(self, z: Tensor, psi: float = 1.0) -> Tensor:
        return z * psi

    def run_blocks(self, state: State | None, w: Tensor, start: int, stop: int) -> State:
        g = self.net
        if state is None:
            if start != 0:
                raise ValueError("state=None starts at block 0")
            x = None
        else:
            x = state[0]
        for b in range(start, stop):
            if b == 0:
                x = g.fc(w).view(w.shape[0], g.start_channels, 4, 4)
                x = F.relu(g.norms[0](x))
            else:
                x = F.relu(g.norms[b](g.ups[b - 1](x)))
        if x is None:
            raise ValueError("run_blocks needs at least one block when starting from w")
        return (x,)

    def finish(self, state: State) -> Tensor:
        x = torch.sigmoid(self.net.out(state[0]))
        return fit_image(x, self.image_size, self.channels)

    def discriminator_score(self, x01: Tensor) -> Tensor | None:
        return self.prior.discriminator(x01).reshape(x01.shape[0], -1)[:, 0]


class StyleGAN2Generator(ImageGenerator):
    """The interface over a :class:`StyleGAN2` (W space, truncation to ``w_avg``, per-block synthesis).

    Args:
        net: the generator.
        image_shape: the target's ``(C, H, W)``.
        crop_fraction: centre crop kept before resizing (PPA on FFHQ 1024 px: 800 / 1024).
        noise_mode: ``const`` (default: deterministic), ``random`` or ``none``.
    """

    name = "stylegan2"

    def __init__(self, net: StyleGAN2, image_shape: tuple[int, int, int], crop_fraction: float = 1.0,
                 noise_mode: str = "const") -> None:
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")
        self.net = net
        cfg = net.config
        self.z_dim, self.w_dim, self.num_blocks = cfg.z_dim, cfg.w_dim, cfg.num_blocks
        self.channels, self.image_size = int(image_shape[0]), int(image_shape[-1])
        self.crop_fraction, self.noise_mode = crop_fraction, noise_mode

    def modules(self) -> list[nn.Module]:
        return [self.net]

    @property
    def w_avg(self) -> Tensor:
        return self.net.w_avg

    def mapping(self, z: Tensor, psi: float = 1.0) -> Tensor:
        return self.net.mapping(z, psi)

    def to_p(self, w: Tensor) -> Tensor:
        return F.leaky_relu(w, 5.0)  # inverse of the mapping network's last leaky ReLU (slope 0.2)

    def from_p(self, p: Tensor) -> Tensor:
        return F.leaky_relu(p, 0.2)

    def run_blocks(self, state: State | None, w: Tensor, start: int, stop: int) -> State:
        st = None if state is None else (state[0], state[1] if len(state) > 1 else None)
        x, img = self.net.run_blocks(st, w, start, stop, self.noise_mode)
        return (x,) if img is None else (x, img)

    def finish(self, state: State) -> Tensor:
        img = state[1]
        x01 = ((img + 1) / 2).clamp(0, 1)
        return fit_image(x01, self.image_size, self.channels, self.crop_fraction)


def as_image_generator(prior: Any, image_shape: tuple[int, int, int]) -> ImageGenerator:
    """An :class:`ImageGenerator` for ``prior`` (an ImageGenerator, a GanPrior or a bare StyleGAN2)."""
    if isinstance(prior, ImageGenerator):
        return prior
    if isinstance(prior, GanPrior):
        return GanPriorGenerator(prior, image_shape)
    if isinstance(prior, StyleGAN2):
        return StyleGAN2Generator(prior, image_shape)
    raise TypeError(f"not an image prior: {type(prior).__name__}")
