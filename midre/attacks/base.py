"""Shared pieces of every model inversion attack: budgets, results, regularisers, running helpers.

Every attack optimises images (or generator latents) in *pixel space* ``[0, 1]`` and feeds
``normalize(x)`` to the target, so the same code serves targets trained with or without ImageNet
normalisation. The result is returned in the target's *input space* (normalised exactly as the
target was trained) together with the :class:`~midre.data.Normalization` needed to get pixels back.

The target wrapper and what the priors share with the attacks live in :mod:`midre.target`, the loop
reporter and :class:`AttackCancelled` in :mod:`midre.progress` (so :mod:`midre.priors` never imports
:mod:`midre.attacks`); they are re-exported here for the attack modules.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from midre.priors.prior import GanPrior, PriorConfig, load_or_train_prior
from midre.progress import AttackCancelled, ProgressCallback, StepReporter, StopCallback
from midre.target import (
    AttackTarget,
    PixelCodec,
    differentiable_augment,
    load_checkpoint,
    max_margin_loss,
    weights_key,
)

__all__ = [
    "AttackBudget",
    "AttackCancelled",
    "AttackRequest",
    "AttackResult",
    "AttackTarget",
    "PixelCodec",
    "StepReporter",
    "attack_prior",
    "chunks",
    "differentiable_augment",
    "expand_labels",
    "freeze",
    "identity_tensor",
    "load_checkpoint",
    "max_margin_loss",
    "random_jitter_flip",
    "select_best_restart",
    "target_confidence",
    "total_variation",
    "weights_key",
]


@dataclass(frozen=True)
class AttackBudget:
    """How much work an attack may do.

    Attributes:
        steps: optimisation iterations of the image / latent search (per restart).
        restarts: random restarts run *in the same batch*; per image the restart with the lowest
            final identity loss is kept (GMI, Zhang et al. 2020, Sec. 4 uses several).
        lr: step size; ``None`` uses the attack's paper default.
        chunk_size: at most this many images are optimised at once (``None``: all in one batch).
            Chunks split the batch of *images*, not identities, so every chunk still mixes identities.
        prior_steps: generator iterations when a GAN prior must be trained for this attack.
        surrogate_epochs: distillation epochs per LOMMA surrogate model.
        queries: target queries (images submitted) the black-box / label-only attacks may make in
            total, over all identities; ``None``: bounded by ``steps`` only. White-box attacks ignore it.
    """

    steps: int = 300
    restarts: int = 1
    lr: float | None = None
    chunk_size: int | None = None
    prior_steps: int = 1500
    surrogate_epochs: int = 30
    queries: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "restarts", "prior_steps", "surrogate_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name != "restarts"
                                                                                   else 1):
                raise ValueError(f"AttackBudget.{name} must be a non-negative integer (restarts >= 1), "
                                 f"got {value!r}")
        if self.lr is not None and not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"AttackBudget.lr must be a positive number or None, got {self.lr!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"AttackBudget.chunk_size must be a positive integer or None, "
                             f"got {self.chunk_size!r}")
        if self.queries is not None and (isinstance(self.queries, bool) or not isinstance(self.queries, int)
                                         or self.queries < 1):
            raise ValueError(f"AttackBudget.queries must be a positive integer or None, got {self.queries!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackBudget:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"AttackBudget: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        images: reconstructions ``[N, C, H, W]`` in the target's input space (normalised as trained).
        labels: the attacked identity of each reconstruction ``[N]``.
        confidence: the target's softmax probability of that identity for each image ``[N]``.
        queries: forward passes of the target (one image counts once per pass).
        seconds: wall time of the attack (prior training excluded; see ``extra``).
        normalization: the target's normalisation (``None``: images are already ``[0, 1]`` pixels).
        extra: attack-specific numbers (final losses, prior training time, ...).
        checkpoints: ``(queries used, [0, 1] pixels)`` snapshots of the reconstructions during a
            query-budgeted attack (AttAcc vs queries); empty for the white-box attacks.
    """

    images: Tensor
    labels: Tensor
    confidence: Tensor
    queries: int
    seconds: float
    normalization: Any = None
    attack: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[tuple[int, Tensor]] = field(default_factory=list)

    def pixels(self) -> Tensor:
        """The reconstructions as ``[0, 1]`` pixels (for display and for models with other inputs)."""
        if self.normalization is None:
            return self.images.clamp(0, 1)
        codec = PixelCodec(self.normalization, self.images.shape[1], self.images.device)
        return codec.to_pixels(self.images).clamp(0, 1)


@dataclass(frozen=True)
class AttackRequest:
    """One attack run, validated by :func:`run_attack` (see its arguments for each field).

    Attributes:
        name: the canonical attack name.
        target: the classifier under attack.
        identities: the class indices to attack, ``[K]`` int64 on the CPU, each in ``[0, num_classes)``.
        per_identity: reconstructions per identity (>= 1).
        budget: steps, restarts, step size, chunking, prior / surrogate training and query budget.
        options: the attack's options object (the class it was registered with).
        seed: seeds every random draw of the attack.
        device: where to run.
        prior: a trained :class:`midre.priors.GanPrior`, or ``None`` to train one from ``public``.
        public: :class:`midre.priors.PublicData` for priors and LOMMA surrogates.
        cache_dir: folder for priors and surrogates reused across calls.
        progress: receives :class:`midre.progress.ProgressEvent`.
        should_stop: polled every step; True raises :class:`midre.progress.AttackCancelled`.
    """

    name: str
    target: AttackTarget
    identities: Tensor
    per_identity: int
    budget: AttackBudget
    options: Any
    seed: int
    device: torch.device
    prior: Any = None
    public: Any = None
    cache_dir: str | None = None
    progress: ProgressCallback | None = None
    should_stop: StopCallback | None = None


def attack_prior(request: AttackRequest, kind: str, progress: ProgressCallback, *,
                 target_aware: bool) -> tuple[GanPrior, dict[str, Any]]:
    """The GAN prior of ``kind`` the attack runs in, ready on the device with a frozen generator.

    ``request.prior`` when given, else one trained on ``request.public`` (reused from ``cache_dir``).

    Args:
        request: the attack run (its budget's ``prior_steps``, seed and ``options.prior`` set the prior).
        kind: the prior kind the attack needs.
        progress: receives the prior training's progress.
        target_aware: hand the target to the prior training (KEDMI's and PLG-MI's priors read it);
            False for the query-only attacks, whose GMI prior never sees the target.

    Returns:
        ``(prior, extra)``; ``extra`` holds ``prior_key`` and, when it was trained, ``prior_seconds``.
    """
    extra: dict[str, Any] = {}
    prior = request.prior
    if prior is None:
        if request.public is None:
            raise ValueError(f"{request.name} needs a GAN prior: pass prior= or public= (public images to train one)")
        cfg = PriorConfig(**{"kind": kind, "steps": request.budget.prior_steps, "seed": request.seed,
                             **request.options.prior})
        t0 = time.monotonic()
        prior = load_or_train_prior(cfg, request.public, request.target.image_shape, cache_dir=request.cache_dir,
                                    target=request.target if target_aware else None, device=request.device,
                                    progress=progress, should_stop=request.should_stop)
        extra["prior_seconds"] = time.monotonic() - t0
    if prior.kind != kind:
        raise ValueError(f"{request.name} needs a '{kind}' prior, got a '{prior.kind}' prior")
    if tuple(prior.image_shape) != tuple(request.target.image_shape):
        raise ValueError(f"prior image shape {prior.image_shape} != target input {request.target.image_shape}")
    prior.to(request.device)
    freeze(prior.generator)
    extra["prior_key"] = prior.info.get("key")
    return prior, extra


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients for the parameters (the attacks optimise images, never weights)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- regularisers and losses


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per image ``[N]`` (mean absolute difference of neighbours).

    Used as an image prior by MI-Face (Fredrikson et al. 2015) and DeepInversion (Yin et al. 2020,
    Eq. 3, R_TV); the mean (not sum) keeps the weight independent of the resolution.
    """
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def random_jitter_flip(x: Tensor, max_shift: int, flip: bool, generator: torch.Generator) -> Tensor:
    """One random roll (same for the batch) and a random horizontal flip (DeepInversion, Sec. 3.2).

    Rolling the whole batch by the same offset is what the paper does; it is one tensor op.
    """
    if max_shift > 0:
        dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


# --------------------------------------------------------------------------- running helpers


def identity_tensor(identities: Sequence[int] | Tensor) -> Tensor:
    """The attacked class indices as a flat int64 tensor; ``ValueError`` when there are none."""
    ids = torch.as_tensor(list(identities) if not isinstance(identities, Tensor) else identities,
                          dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("identities must name at least one class")
    return ids


def expand_labels(identities: Sequence[int] | Tensor, per_identity: int) -> Tensor:
    """``[k0, k1]`` with ``per_identity=2`` -> ``[k0, k0, k1, k1]`` (int64)."""
    ids = identity_tensor(identities)
    if per_identity < 1:
        raise ValueError(f"per_identity must be >= 1, got {per_identity}")
    return ids.repeat_interleave(per_identity)


def chunks(n: int, size: int | None) -> list[slice]:
    size = n if size is None else max(1, size)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def target_confidence(model: nn.Module, x: Tensor, labels: Tensor, batch: int = 256) -> Tensor:
    """Softmax probability of ``labels`` under ``model`` for input-space images ``x``."""
    out = []
    for sl in chunks(x.shape[0], batch):
        probs = model(x[sl]).softmax(1)
        out.append(probs.gather(1, labels[sl, None]).squeeze(1))
    return torch.cat(out).cpu()


def select_best_restart(losses: Tensor, n: int, restarts: int) -> Tensor:
    """Indices of the best restart per image: ``losses`` is ``[restarts * n]`` laid out restart-major."""
    best = losses.view(restarts, n).argmin(0)
    return best * n + torch.arange(n)
