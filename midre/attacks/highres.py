"""The high-resolution white-box attacks: PPA, IF-GMI and MIRROR, on any :class:`ImageGenerator`.

* ``ppa`` -- Plug & Play Attacks (Struppek et al., ICML 2022): sample a shared pool of latents,
  keep per identity the ``candidates`` the target is most confident about (Sec. 3.2), optimise their
  W vectors with Adam on randomly augmented images under the Poincaré loss (Sec. 3.3, Eq. 2), and
  keep per identity the ``per_identity`` results whose confidence is highest on average over
  random transformations (final selection, Sec. 3.4).
* ``if-gmi`` -- Intermediate-Features GMI (Qiu et al., ECCV 2024): PPA's W stage, then the generator
  is split block by block and the features after each block are optimised in turn, restricted to an
  l1 ball around their initial value (Sec. 3.2-3.3); final selection as in PPA.
* ``mirror`` -- MIRROR white-box (An et al., NDSS 2022): start from the most confident sampled W
  vectors, optimise them with the cross-entropy on randomly flipped images, and after every step
  clip them into the prior's range: per dimension ``mean ± p_std * std`` of mapped random latents in
  the P space (the mapping network's output before its last leaky ReLU, Sec. IV-C).

All reconstructions (identities x candidates) are optimised in batches of ``budget.chunk_size`` (or
``options.batch_size``) latents, and scored without gradients in batches four times larger; a batch
that runs out of device memory is halved and retried (:class:`BatchFallback`). Images are scored by
the target in its input space after :class:`~midre.target.PixelCodec` normalisation, as in the other
attacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.attacks.base import (
    AttackResult,
    PixelCodec,
    StepReporter,
    attack_prior,
    expand_labels,
    freeze,
    target_confidence,
)
from midre.attacks.registry import AttackRequest, register_attack
from midre.priors.generator import GanPriorGenerator, ImageGenerator, StyleGAN2Generator, as_image_generator
from midre.priors.stylegan2 import StyleGAN2, load_stylegan2
from midre.progress import ProgressEvent, no_progress, scaled

__all__ = [
    "BatchFallback",
    "IFGMIOptions",
    "MirrorOptions",
    "PPAOptions",
    "is_out_of_memory",
    "poincare_loss",
    "project_l1_ball",
    "random_resized_crop",
    "robust_selection",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


# --------------------------------------------------------------------------- options


def _pair(value: Any, name: str, lo: float, hi: float) -> tuple[float, float]:
    if isinstance(value, list):
        value = tuple(value)
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not lo < value[0] <= value[1] <= hi):
        raise ValueError(f"{name} must be two increasing numbers in ({lo}, {hi}], got {value!r}")
    return (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class HighResOptions:
    """Settings shared by PPA, IF-GMI and MIRROR (the authors' defaults; see docs/attacks.md).

    Attributes:
        prior: extra :class:`~midre.priors.PriorConfig` fields of the WGAN-GP prior trained on demand.
        stylegan2: path of a StyleGAN2 safetensors file (``midre convert-stylegan2``); used instead of
            the WGAN-GP prior when set.
        stylegan2_random: :class:`~midre.priors.stylegan2.StyleGAN2Config` fields of a *randomly
            initialised* StyleGAN2 (tests and cost estimates; its images are noise-like).
        crop_fraction: centre crop of the generator's images before resizing to the target (PPA on
            FFHQ 1024 px keeps the central 800 px: 0.78125).
        truncation_psi: truncation of the sampled latents (PPA 0.5, MIRROR 0.7).
        search_space: latents sampled once and scored for every identity (PPA: 2000).
        candidates: latents optimised per identity (PPA: 200; MIRROR uses ``per_identity``).
        batch_size: latents per optimisation batch when ``budget.chunk_size`` is unset (PPA: 20).
        flip: random horizontal flips during the optimisation.
        augment_scale: area range of the random resized crop during the optimisation (PPA: 0.9-1.0).
        final_transforms: random transformations averaged by the final selection (PPA: 100).
        final_scale, final_ratio: their crop area and aspect ranges (PPA: 0.5-0.9, 0.8-1.2).
    """

    prior: dict[str, Any] = field(default_factory=dict)
    stylegan2: str | None = None
    stylegan2_random: dict[str, Any] | None = None
    crop_fraction: float = 1.0
    truncation_psi: float = 0.5
    search_space: int = 2000
    candidates: int = 200
    batch_size: int = 20
    flip: bool = True
    augment_scale: tuple[float, float] = (0.9, 1.0)
    final_transforms: int = 100
    final_scale: tuple[float, float] = (0.5, 0.9)
    final_ratio: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        for name in ("search_space", "candidates", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.final_transforms, bool) or not isinstance(self.final_transforms, int) \
                or self.final_transforms < 0:
            raise ValueError(f"final_transforms must be an integer >= 0, got {self.final_transforms!r}")
        if not (isinstance(self.truncation_psi, int | float) and 0.0 <= self.truncation_psi <= 1.0):
            raise ValueError(f"truncation_psi must lie in [0, 1], got {self.truncation_psi!r}")
        if not (isinstance(self.crop_fraction, int | float) and 0.0 < self.crop_fraction <= 1.0):
            raise ValueError(f"crop_fraction must lie in (0, 1], got {self.crop_fraction!r}")
        if self.stylegan2 is not None and not isinstance(self.stylegan2, str):
            raise ValueError(f"stylegan2 must be a file path, got {self.stylegan2!r}")
        if self.stylegan2_random is not None and not isinstance(self.stylegan2_random, dict):
            raise ValueError(f"stylegan2_random must be an object of StyleGAN2Config fields, "
                             f"got {self.stylegan2_random!r}")
        object.__setattr__(self, "augment_scale", _pair(self.augment_scale, "augment_scale", 0.0, 1.0))
        object.__setattr__(self, "final_scale", _pair(self.final_scale, "final_scale", 0.0, 1.0))
        object.__setattr__(self, "final_ratio", _pair(self.final_ratio, "final_ratio", 0.0, 10.0))


@dataclass(frozen=True)
class PPAOptions(HighResOptions):
    """PPA: :class:`HighResOptions` + Adam's betas (0.1, 0.1) and the Poincaré loss's clip of the one-hot."""

    betas: tuple[float, float] = (0.1, 0.1)
    poincare_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "betas", _pair(self.betas, "betas", -1e-9, 0.9999))
        if not (isinstance(self.poincare_eps, int | float) and 0 < self.poincare_eps < 0.5):
            raise ValueError(f"poincare_eps must lie in (0, 0.5), got {self.poincare_eps!r}")


@dataclass(frozen=True)
class IFGMIOptions(PPAOptions):
    """IF-GMI: PPA's settings + the intermediate-feature stages.

    Attributes:
        layers: blocks whose output features are optimised after the W stage (capped at the
            generator's blocks - 1).
        feature_steps: steps per feature stage (``None``: ``budget.steps``).
        ball_radius: l1 radius of each feature's ball *per feature element* (the radius is
            ``ball_radius * C * H * W`` of that block, so one value serves every width).
    """

    layers: int = 3
    feature_steps: int | None = None
    ball_radius: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be a positive integer, got {self.layers!r}")
        if self.feature_steps is not None and (isinstance(self.feature_steps, bool)
                                               or not isinstance(self.feature_steps, int) or self.feature_steps < 1):
            raise ValueError(f"feature_steps must be a positive integer or null, got {self.feature_steps!r}")
        if not (isinstance(self.ball_radius, int | float) and self.ball_radius >= 0):
            raise ValueError(f"ball_radius must be >= 0, got {self.ball_radius!r}")


@dataclass(frozen=True)
class MirrorOptions(HighResOptions):
    """MIRROR white-box: truncation 0.7 for the initial samples and the P-space bound ``p_std``."""

    truncation_psi: float = 0.7
    p_std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.p_std, int | float) and self.p_std > 0):
            raise ValueError(f"p_std must be a positive number, got {self.p_std!r}")


#: Step sizes when ``budget.lr`` is unset: PPA's Adam 0.005 (IF-GMI keeps it), MIRROR's 0.1 (ours).
DEFAULT_LR = {"ppa": 0.005, "if-gmi": 0.005, "mirror": 0.1}


# --------------------------------------------------------------------------- losses and transforms


def poincare_loss(logits: Tensor, labels: Tensor, eps: float = 1e-5) -> Tensor:
    """PPA's Poincaré loss per image (Struppek et al. 2022, Eq. 2).

    ``u = logits / ||logits||_1`` and ``v = one_hot(labels)`` clipped to ``[0, 1 - eps]`` (both inside
    the unit ball); the loss is the hyperbolic distance
    ``arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2) (1 - ||v||^2)))``.
    """
    u = logits / logits.abs().sum(1, keepdim=True).clamp_min(1e-12)
    v = F.one_hot(labels, logits.shape[1]).to(logits.dtype).clamp(0.0, 1.0 - eps)
    delta = 2 * (u - v).pow(2).sum(1) / ((1 - u.pow(2).sum(1)) * (1 - v.pow(2).sum(1)))
    return torch.acosh(1 + delta)


def random_resized_crop(x: Tensor, scale: tuple[float, float], ratio: tuple[float, float], flip: bool,
                        generator: torch.Generator) -> Tensor:
    """A random resized crop (area ``scale``, aspect ``ratio``) + optional flip per image, batched and
    differentiable (``affine_grid``); the output keeps the input's size."""
    n = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=generator)
    r = log_r.exp()
    sw = (area * r).sqrt().clamp(max=1.0)
    sh = (area / r).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sw)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sh)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * sign
    theta[:, 1, 1] = sh
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def project_l1_ball(delta: Tensor, radius: float | Tensor) -> Tensor:
    """Euclidean projection of every row of ``delta`` (flattened per sample) onto ``{||d||_1 <= radius}``.

    Duchi et al. (ICML 2008), Fig. 1: rows already inside are returned unchanged; the others are
    soft-thresholded by the ``theta`` that puts them on the sphere.
    """
    shape = delta.shape
    d = delta.reshape(shape[0], -1)
    r = torch.as_tensor(radius, dtype=d.dtype, device=d.device).reshape(-1, 1).expand(d.shape[0], 1)
    a = d.abs()
    inside = a.sum(1, keepdim=True) <= r
    mu = a.sort(1, descending=True).values
    cums = mu.cumsum(1)
    ks = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = mu - (cums - r) / ks > 0
    rho = cond.to(d.dtype).mul(ks).argmax(1, keepdim=True)  # last index where the condition holds
    theta = ((cums.gather(1, rho) - r) / (rho + 1).to(d.dtype)).clamp_min(0)
    projected = d.sign() * (a - theta).clamp_min(0)
    return torch.where(inside, d, projected).reshape(shape)


# --------------------------------------------------------------------------- out-of-memory fallback


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's ``OutOfMemoryError`` and the ``RuntimeError`` "out of memory" of other devices."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class BatchFallback:
    """Runs work in batches, halving the batch size on out-of-memory and retrying the failed batch.

    The size reached is kept for the later phases of the same attack; ``fallbacks`` counts halvings.

    Example:
        >>> batches = BatchFallback(64)
        >>> parts = batches.map(lambda sl: model(x[sl]), x.shape[0], "scoring")
    """

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.fallbacks = 0

    def map(self, fn: Callable[[slice], T], n: int, what: str = "batch") -> list[T]:
        """``[fn(slice) for consecutive slices of 0..n]``; an OOM halves the size and retries the slice."""
        out: list[T] = []
        start = 0
        while start < n:
            sl = slice(start, min(n, start + self.batch_size))
            try:
                out.append(fn(sl))
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.fallbacks += 1
                logger.warning("%s: out of memory with %d items; retrying with batches of %d", what,
                               sl.stop - sl.start, self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start = sl.stop
        return out


# --------------------------------------------------------------------------- shared phases


class _Scorer:
    """Target scoring of ``[0, 1]`` images, counting queries."""

    def __init__(self, model: nn.Module, codec: PixelCodec) -> None:
        self.model, self.codec, self.queries = model, codec, 0

    def logits(self, x01: Tensor) -> Tensor:
        self.queries += x01.shape[0]
        return self.model(self.codec.to_input(x01))

    def confidence(self, x01: Tensor, labels: Tensor) -> Tensor:
        return self.logits(x01).softmax(1).gather(1, labels[:, None]).squeeze(1)


@torch.no_grad()
def select_candidates(gen: ImageGenerator, scorer: _Scorer, identities: Tensor, per_identity: int,
                      options: HighResOptions, batches: BatchFallback, rng: torch.Generator,
                      device: torch.device) -> Tensor:
    """PPA's candidate selection (Sec. 3.2): ``search_space`` truncated W vectors, scored once by the
    target (mean confidence of the image and its mirror), the ``per_identity`` best per identity.

    Returns ``[K * per_identity, w_dim]`` (CPU), identity-major.
    """
    pool = max(options.search_space, per_identity)
    z = gen.sample_z(pool, rng)
    ids = identities.to(device)

    def score(sl: slice) -> tuple[Tensor, Tensor]:
        w = gen.mapping(z[sl].to(device), options.truncation_psi)
        x = gen.synthesize(w)
        probs = (scorer.logits(x).softmax(1) + scorer.logits(x.flip(3)).softmax(1)) / 2
        return w.cpu(), probs[:, ids].cpu()

    parts = batches.map(score, pool, "candidate scoring")
    ws = torch.cat([p[0] for p in parts])
    conf = torch.cat([p[1] for p in parts])  # [pool, K]
    top = conf.topk(per_identity, dim=0).indices.T.reshape(-1)  # identity-major
    return ws[top]


@torch.no_grad()
def robust_selection(confidence: Callable[[Tensor, Tensor], Tensor], x01: Tensor, labels: Tensor, group: int,
                     keep: int, options: HighResOptions, rng: torch.Generator, batches: BatchFallback,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """PPA's final selection (Sec. 3.4): per identity keep the ``keep`` images whose mean target
    confidence over ``final_transforms`` random resized crops + flips is highest.

    Args:
        confidence: ``(x01, labels) -> [N]`` target confidence of the labels.
        x01: the candidates ``[K * group, ...]``, identity-major.
        labels: their identities ``[K * group]``.
        group: candidates per identity.
        keep: images kept per identity.

    Returns:
        ``(indices into x01 [K * keep], their mean robust confidence)``.
    """
    n = x01.shape[0]
    per = group
    k = n // per
    if options.final_transforms == 0:
        scores = torch.cat(batches.map(lambda sl: confidence(x01[sl].to(device), labels[sl].to(device)).cpu(),
                                       n, "final selection"))
    else:
        def one(sl: slice) -> Tensor:
            x, y = x01[sl].to(device), labels[sl].to(device)
            total = torch.zeros(x.shape[0], device=device)
            for _ in range(options.final_transforms):
                total += confidence(random_resized_crop(x, options.final_scale, options.final_ratio, True, rng), y)
            return (total / options.final_transforms).cpu()

        scores = torch.cat(batches.map(one, n, "final selection"))
    best = scores.view(k, per).topk(min(keep, per), dim=1).indices
    idx = (best + torch.arange(k)[:, None] * per).reshape(-1)
    return idx, scores[idx]


# --------------------------------------------------------------------------- the generator of a run


def attack_generator(request: AttackRequest, progress: Any) -> tuple[ImageGenerator, dict[str, Any]]:
    """The :class:`ImageGenerator` of a run: ``options.stylegan2`` / ``stylegan2_random`` when set, else
    ``request.prior`` (an ImageGenerator, a StyleGAN2 or a GMI prior), else a GMI prior trained on the
    public data (reused from the cache)."""
    opts, shape = request.options, request.target.image_shape
    extra: dict[str, Any] = {}
    if opts.stylegan2 is not None or opts.stylegan2_random is not None:
        net = load_stylegan2(opts.stylegan2, None if opts.stylegan2 else opts.stylegan2_random, seed=0)
        gen: ImageGenerator = StyleGAN2Generator(net, shape, crop_fraction=opts.crop_fraction)
    elif isinstance(request.prior, ImageGenerator | StyleGAN2):
        gen = as_image_generator(request.prior, shape)
    else:
        prior, extra = attack_prior(request, "gmi", progress, target_aware=False)
        gen = GanPriorGenerator(prior, shape)
    gen.to(request.device).freeze()
    extra.update(gen.describe())
    return gen, extra


# --------------------------------------------------------------------------- the attacks


def _run(request: AttackRequest, kind: str) -> AttackResult:
    """Common frame: generator, candidates, the attack's optimisation, final selection, result."""
    start = time.monotonic()
    target, budget, options, device = request.target, request.budget, request.options, request.device
    progress = request.progress or no_progress
    model = freeze(target.model.to(device))
    prep = 0.3 if request.prior is None and options.stylegan2 is None and options.stylegan2_random is None else 0.0
    gen, extra = attack_generator(request, scaled(progress, 0.0, prep) if prep else progress)
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    scorer = _Scorer(model, codec)
    rng = torch.Generator().manual_seed(request.seed)
    batches = BatchFallback(budget.chunk_size or options.batch_size)
    # forward-only phases (candidate scoring, final selection) keep no activations for a backward pass:
    # they start at 4x the optimisation batch and fall back on their own
    scoring = BatchFallback(4 * batches.batch_size)
    per_id = request.per_identity
    n_cand = per_id if kind == "mirror" else max(options.candidates, per_id)
    ids = request.identities
    t0 = time.monotonic()
    w0 = select_candidates(gen, scorer, ids, n_cand, options, scoring, rng, device)
    labels = expand_labels(ids, n_cand)
    extra["candidate_seconds"] = time.monotonic() - t0
    lr = budget.lr if budget.lr is not None else DEFAULT_LR[kind]
    layers = min(options.layers, gen.num_blocks - 1) if kind == "if-gmi" else 0
    stage_steps = [budget.steps] + [options.feature_steps or budget.steps] * layers if kind == "if-gmi" else \
        [budget.steps]
    reporter = StepReporter(request.name, 1, scaled(progress, prep, 1.0), request.should_stop)
    reporter.total = max(1, sum(stage_steps) * math.ceil(labels.numel() / batches.batch_size))
    bounds = _p_bounds(gen, options, rng, device) if kind == "mirror" else None

    def optimise(sl: slice) -> Tensor:
        y = labels[sl].to(device)
        if kind == "mirror":
            return _mirror_batch(gen, scorer, w0[sl].to(device), y, budget.steps, lr, options, bounds, rng, reporter)
        return _ppa_batch(gen, scorer, w0[sl].to(device), y, stage_steps, lr, options, rng, reporter)

    t0 = time.monotonic()
    images01 = torch.cat(batches.map(optimise, labels.numel(), f"{request.name} optimisation"))
    extra["search_seconds"] = time.monotonic() - t0
    if kind == "mirror":
        keep_idx = torch.arange(labels.numel())
    else:
        keep_idx, robust = robust_selection(scorer.confidence, images01, labels, n_cand, per_id, options, rng,
                                            scoring, device)
        extra["final_robust_confidence"] = float(robust.mean())
    images = codec.to_input(images01[keep_idx].to(device)).detach()
    final_labels = labels[keep_idx]
    conf = target_confidence(model, images, final_labels.to(device))
    extra.update({"candidates_per_identity": n_cand, "batch_size": batches.batch_size,
                  "oom_fallbacks": batches.fallbacks + scoring.fallbacks, "stages": len(stage_steps)})
    progress(ProgressEvent(stage="attack", fraction=1.0, message=request.name, step=reporter.total,
                           steps=reporter.total))
    return AttackResult(images=images.cpu(), labels=final_labels, confidence=conf,
                        queries=scorer.queries + final_labels.numel(), seconds=time.monotonic() - start,
                        normalization=target.normalization, attack=request.name, extra=extra)


def _augment(x01: Tensor, options: HighResOptions, rng: torch.Generator) -> Tensor:
    return random_resized_crop(x01, options.augment_scale, (1.0, 1.0), options.flip, rng)


def _ppa_batch(gen: ImageGenerator, scorer: _Scorer, w_init: Tensor, y: Tensor, stage_steps: list[int], lr: float,
               options: PPAOptions, rng: torch.Generator, reporter: StepReporter) -> Tensor:
    """PPA's W optimisation (stage 0) and, for IF-GMI, the l1-bounded feature stages; ``[0, 1]`` images (CPU)."""
    w = w_init.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr, betas=options.betas)
    for _ in range(stage_steps[0]):
        x = gen.synthesize(w)
        loss = poincare_loss(scorer.logits(_augment(x, options, rng)), y, options.poincare_eps).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reporter.step(float(loss.detach()) / y.numel())
    if len(stage_steps) == 1:
        with torch.no_grad():
            return gen.synthesize(w).cpu()
    # IF-GMI: optimise the features after block k (k = 1..layers) inside an l1 ball, with w for the rest
    with torch.no_grad():
        state = gen.features(w, 1)
    for k, steps in enumerate(stage_steps[1:], start=1):
        f0 = state[0].detach()
        rest = tuple(s.detach() for s in state[1:])
        radius = options.ball_radius * f0[0].numel()
        f = f0.clone().requires_grad_(True)
        opt = torch.optim.Adam([f, w], lr=lr, betas=options.betas)
        for _ in range(steps):
            x = gen.resume((f, *rest), w, k)
            loss = poincare_loss(scorer.logits(_augment(x, options, rng)), y, options.poincare_eps).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                f.copy_(f0 + project_l1_ball(f - f0, radius))
            reporter.step(float(loss.detach()) / y.numel())
        with torch.no_grad():
            state = (f.detach(), *rest)
            if k < len(stage_steps) - 1:
                state = gen.run_blocks(state, w, k, k + 1)
    with torch.no_grad():
        return gen.resume(state, w, len(stage_steps) - 1).cpu()


@torch.no_grad()
def _p_bounds(gen: ImageGenerator, options: MirrorOptions, rng: torch.Generator,
              device: torch.device) -> tuple[Tensor, Tensor]:
    """MIRROR's prior range: per-dimension ``mean ± p_std * std`` of mapped random latents in P space."""
    z = gen.sample_z(max(options.search_space, 2), rng).to(device)
    p = torch.cat([gen.to_p(gen.mapping(z[i:i + 1000])) for i in range(0, z.shape[0], 1000)])
    mean, std = p.mean(0), p.std(0, unbiased=False)
    return mean - options.p_std * std, mean + options.p_std * std


def _mirror_batch(gen: ImageGenerator, scorer: _Scorer, w_init: Tensor, y: Tensor, steps: int, lr: float,
                  options: MirrorOptions, bounds: tuple[Tensor, Tensor] | None, rng: torch.Generator,
                  reporter: StepReporter) -> Tensor:
    """MIRROR's white-box W search: Adam on the cross-entropy of randomly flipped images, with the latents
    clipped into the P-space range after each step and the step size decayed by a cosine schedule."""
    w = w_init.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    lo, hi = bounds if bounds is not None else (None, None)
    for _ in range(steps):
        x = gen.synthesize(w)
        if options.flip:
            x = random_flip(x, rng)
        loss = F.cross_entropy(scorer.logits(x), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if lo is not None:
            with torch.no_grad():
                w.copy_(gen.from_p(torch.maximum(torch.minimum(gen.to_p(w), hi), lo)))
        reporter.step(float(loss.detach()) / y.numel())
    with torch.no_grad():
        return gen.synthesize(w).cpu()


@register_attack("ppa", options=PPAOptions, needs="gmi", paper="Struppek et al., ICML 2022",
                 aliases=("plug-and-play",), version=1)
def run_ppa(request: AttackRequest) -> AttackResult:
    """PPA: W search with the Poincaré loss on augmented images, candidates and final selection by confidence."""
    return _run(request, "ppa")


@register_attack("if-gmi", options=IFGMIOptions, needs="gmi", paper="Qiu et al., ECCV 2024", aliases=("ifgmi",),
                 version=1)
def run_if_gmi(request: AttackRequest) -> AttackResult:
    """IF-GMI: PPA's W stage, then the generator's intermediate features block by block in l1 balls."""
    return _run(request, "if-gmi")


@register_attack("mirror", options=MirrorOptions, needs="gmi", paper="An et al., NDSS 2022", version=1)
def run_mirror(request: AttackRequest) -> AttackResult:
    """MIRROR (white-box): W search from the most confident samples, clipped into the prior's P-space range."""
    return _run(request, "mirror")
