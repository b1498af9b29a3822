"""Prior-free white-box attacks that optimise pixels directly: MI-Face and DeepInversion.

Both run every requested reconstruction (all identities x ``per_identity`` x restarts) as *one*
batch through the target per step; ``AttackBudget.chunk_size`` only bounds memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.attacks.base import (
    AttackRequest,
    AttackResult,
    PixelCodec,
    StepReporter,
    chunks,
    expand_labels,
    freeze,
    random_jitter_flip,
    select_best_restart,
    target_confidence,
    total_variation,
)
from midre.attacks.registry import register_attack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MIFaceOptions:
    """MI-Face (Fredrikson, Jha & Ristenpart, CCS 2015, Alg. 1) settings.

    Attributes:
        loss: ``"paper"`` uses the paper's cost ``1 - p_y(x)``; ``"ce"`` uses ``-log p_y(x)``
            (a common modern variant with non-vanishing gradients far from the optimum).
        tv_weight, l2_weight: the image-space regularisers (the paper's ``AuxTerm``).
        optimizer: ``"sgd"`` is the paper's plain gradient descent (step ``lr``, default 0.1).
    """

    loss: str = "paper"
    tv_weight: float = 0.05
    l2_weight: float = 0.001
    optimizer: str = "sgd"


@dataclass(frozen=True)
class DeepInversionOptions:
    """DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020, Eq. 2-4) settings.

    Defaults follow the authors' published low-resolution (CIFAR-10, 32 px) configuration, the one
    closest to the 64 px targets here: ``tv_l2`` 1e-3, ``l2`` 0, Adam at 0.1, no extra weight on
    the first BatchNorm layer, random flips and a roll of up to 2 px per 32 px (scaled to the
    image), except ``bn_weight``: 1 instead of their ``r_feature`` 10. The calibration sweep
    (``benchmarks/attack_calibration.py``, docs/attacks.md) measured on AT&T faces at 64 px,
    3 NoDef seeds: 2000 steps give 41.1 % top-1 AttAcc with weight 1 against 12.8 % with 10 (200
    steps: 22.2 % with 1). An evaluation that under-reports leakage is the dangerous error, so the
    stronger measured setting is the default. Their ImageNet configuration (224 px) is ``bn_weight=0.01,
    first_bn_multiplier=10, tv_weight=1e-4, l2_weight=1e-5``, lr 0.25 with a cosine schedule and a
    30 px jitter; pass those through ``options`` / ``AttackBudget.lr`` to use it.

    Attributes:
        bn_weight: weight of the feature-distribution regulariser R_feature (Eq. 4).
        first_bn_multiplier: extra weight of the first BatchNorm layer.
        tv_weight: weight of the L2 total variation (norm of neighbour differences).
        l2_weight: weight of the image L2 norm.
        jitter: max roll in pixels; ``None`` scales 2 px per 32 px to the image width.
        flip: random horizontal flips.
        cosine: cosine learning-rate decay (the ImageNet recipe).
        low_res_fraction: share of the steps optimised at ``1 / low_res_factor`` of the image side
            before the images are upsampled (bilinear) and refined at full size: the authors'
            multi-resolution ImageNet schedule (2k iterations at 112 px, then 1k at 224 px is
            ``low_res_fraction=2/3, low_res_factor=2``). 0 turns it off. While low-res, the target
            sees the upsampled image, so every step is a full-size forward.
        low_res_factor: how much smaller the first phase's images are.
    """

    bn_weight: float = 1.0
    first_bn_multiplier: float = 1.0
    tv_weight: float = 1e-3
    l2_weight: float = 0.0
    jitter: int | None = None
    flip: bool = True
    cosine: bool = False
    low_res_fraction: float = 0.0
    low_res_factor: int = 2


class BatchNormStatsHook:
    """Forward hooks on every BatchNorm layer measuring ``||mu - mu_BN|| + ||var - var_BN||``.

    DeepInversion's R_feature (Yin et al. 2020, Eq. 4): the batch statistics of the features
    entering each BatchNorm layer should match the running statistics stored in it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.running_mean is not None]
        self.losses: list[Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.losses.append(torch.linalg.vector_norm(mean - module.running_mean, 2)
                           + torch.linalg.vector_norm(var - module.running_var, 2))

    def take(self, first_multiplier: float) -> Tensor | None:
        if not self.losses:
            return None
        weights = [first_multiplier] + [1.0] * (len(self.losses) - 1)
        total = sum(w * loss for w, loss in zip(weights, self.losses, strict=True))
        self.losses = []
        return total

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _tv_l2(x: Tensor) -> Tensor:
    """DeepInversion's ``tv_l2``: L2 norms of the four neighbour-difference images (batch sum)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


class _PixelSearch:
    """What MI-Face and DeepInversion share: the frozen target, the restart-major batch of images
    (in the target's input space) they optimise chunk by chunk, and the bookkeeping of the search.

    Images are drawn ``init_std * N(0, I)`` in the input space (clamped to valid pixels) from the
    request's seeded generator, which the attack keeps drawing from (jitter, flips).
    """

    def __init__(self, request: AttackRequest, init_std: float) -> None:
        self.request = request
        self.start = time.monotonic()
        device = request.device
        self.model = freeze(request.target.model.to(device))
        c, h, w = request.target.image_shape
        self.codec = PixelCodec(request.target.normalization, c, device)
        self.labels = expand_labels(request.identities, request.per_identity)
        self.all_labels = self.labels.repeat(request.budget.restarts).to(device)
        total = self.all_labels.numel()
        self.gen = torch.Generator().manual_seed(request.seed)
        self.x_all = self.codec.clamp_input(init_std * torch.randn(total, c, h, w, generator=self.gen).to(device))
        # DI (CIFAR setting) and MI-Face both use a step size of 0.1
        self.lr = request.budget.lr if request.budget.lr is not None else 0.1
        self.slices = chunks(total, request.budget.chunk_size)
        self.reporter = StepReporter(request.name, request.budget.steps * len(self.slices), request.progress,
                                     request.should_stop)
        self.final_loss = torch.zeros(total)
        self.queries = 0

    def step(self, x: Tensor, loss: Tensor, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """One descent step of the images ``x`` on ``loss`` (one forward of ``x`` counted), kept valid pixels."""
        self.queries += x.shape[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            x.copy_(self.codec.clamp_input(x))
        value = float(loss.detach())
        self.reporter.step(value if math.isfinite(value) else None)

    @torch.no_grad()
    def keep(self, sl: slice, x: Tensor) -> None:
        """Store a finished chunk and its identity loss (cross-entropy), which picks the best restart."""
        self.final_loss[sl] = F.cross_entropy(self.model(x), self.all_labels[sl], reduction="none").cpu()
        self.queries += x.shape[0]
        self.x_all[sl] = x.detach()

    def result(self) -> AttackResult:
        """The best restart of every image, with its target confidence."""
        request, n, restarts = self.request, self.labels.numel(), self.request.budget.restarts
        best = select_best_restart(self.final_loss, n, restarts) if restarts > 1 else torch.arange(n)
        images = self.x_all[best.to(request.device)].detach()
        conf = target_confidence(self.model, images, self.labels.to(request.device))
        self.queries += n
        return AttackResult(images=images.cpu(), labels=self.labels, confidence=conf, queries=self.queries,
                            seconds=time.monotonic() - self.start, normalization=request.target.normalization,
                            attack=request.name, extra={"final_identity_loss": float(self.final_loss[best].mean())})


@register_attack("mi-face", options=MIFaceOptions, paper="Fredrikson et al., CCS 2015", aliases=("miface",),
                 version=1)
def run_mi_face(request: AttackRequest) -> AttackResult:
    """MI-Face: gradient descent on the pixels of every reconstruction, from the mean image (Alg. 1)."""
    options: MIFaceOptions = request.options
    # the all-zero (mean) image; a little noise separates the per-identity copies
    search = _PixelSearch(request, init_std=0.05)
    optimizer_class = torch.optim.Adam if options.optimizer == "adam" else torch.optim.SGD
    for sl in search.slices:
        x = search.x_all[sl].clone().requires_grad_(True)
        y = search.all_labels[sl]
        optimizer = optimizer_class([x], lr=search.lr)
        for _ in range(request.budget.steps):
            logits = search.model(x)
            if options.loss == "paper":
                main = 1 - logits.softmax(1).gather(1, y[:, None]).squeeze(1)
            else:
                main = F.cross_entropy(logits, y, reduction="none")
            per = main + options.tv_weight * total_variation(x) + options.l2_weight * x.pow(2).flatten(1).mean(1)
            search.step(x, per.sum(), optimizer)  # sum: each image's gradient is independent of the batch size
        search.keep(sl, x)
    return search.result()


def _low_res_steps(options: DeepInversionOptions, steps: int) -> int:
    """Steps of DeepInversion's low-resolution phase (0: none)."""
    if options.low_res_fraction <= 0:
        return 0
    if not 0 < options.low_res_fraction < 1 or options.low_res_factor < 2:
        raise ValueError("deepinversion: low_res_fraction must be in [0, 1) and low_res_factor >= 2")
    return min(int(round(steps * options.low_res_fraction)), steps - 1)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _di_optimizer(x: Tensor, lr: float, options: DeepInversionOptions, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.Adam([x], lr=lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps)) if options.cosine else None


@register_attack("deepinversion", options=DeepInversionOptions, paper="Yin et al., CVPR 2020", aliases=("di",),
                 version=1)
def run_deepinversion(request: AttackRequest) -> AttackResult:
    """DeepInversion: pixels from noise matching the target's BatchNorm statistics (Eq. 2-4)."""
    options: DeepInversionOptions = request.options
    steps = request.budget.steps
    _, h, w = request.target.image_shape
    low_steps = _low_res_steps(options, steps)
    search = _PixelSearch(request, init_std=1.0)  # Gaussian noise in the (normalised) input space
    jitter = options.jitter if options.jitter is not None else max(1, int(round(w * 2 / 32)))
    hooks = BatchNormStatsHook(search.model)
    if not hooks.layers:
        logger.warning("deepinversion: the target has no BatchNorm layers; R_feature is skipped")
    try:
        for sl in search.slices:
            y = search.all_labels[sl]
            if low_steps:
                low_side = (max(4, h // options.low_res_factor), max(4, w // options.low_res_factor))
                x = F.interpolate(search.x_all[sl], size=low_side, mode="bilinear", align_corners=False,
                                  antialias=True).requires_grad_(True)
            else:
                x = search.x_all[sl].clone().requires_grad_(True)
            optimizer, scheduler = _di_optimizer(x, search.lr, options, steps)
            for step in range(steps):
                if low_steps and step == low_steps:  # multi-resolution: continue at full size
                    x = _upsample(x.detach(), (h, w)).requires_grad_(True)
                    optimizer, scheduler = _di_optimizer(x, search.lr, options, steps)
                full = x if x.shape[-1] == w else _upsample(x, (h, w))
                loss = F.cross_entropy(search.model(random_jitter_flip(full, jitter, options.flip, search.gen)), y)
                bn = hooks.take(options.first_bn_multiplier)
                if bn is not None:
                    loss = loss + options.bn_weight * bn
                loss = loss + options.tv_weight * _tv_l2(x) + options.l2_weight * x.flatten(1).norm(dim=1).mean()
                search.step(x, loss, optimizer, scheduler)
            search.keep(sl, x)
            hooks.losses = []  # the statistics of that last forward are no step's loss
    finally:
        hooks.close()
    return search.result()
