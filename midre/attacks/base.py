"""Shared pieces of every model inversion attack: the target wrapper, budgets, results, regularisers.

Every attack optimises images (or generator latents) in *pixel space* ``[0, 1]`` and feeds
``normalize(x)`` to the target, so the same code serves targets trained with or without ImageNet
normalisation. The result is returned in the target's *input space* (normalised exactly as the
target was trained) together with the :class:`~midre.data.Normalization` needed to get pixels back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from midre.progress import Cancelled, ProgressCallback, ProgressEvent, StopCallback, never_stop, no_progress

logger = logging.getLogger(__name__)


class AttackCancelled(Cancelled):
    """Raised by an attack whose ``should_stop`` callback returned True."""


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


class _NoNormalization:
    """Identity normalisation for targets trained on plain ``[0, 1]`` pixels."""

    mean = None
    std = None

    def normalize(self, x: Tensor) -> Tensor:
        return x

    def denormalize(self, x: Tensor) -> Tensor:
        return x


def _norm_tensors(normalization: Any, channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if normalization is None or getattr(normalization, "mean", None) is None:
        return torch.zeros(1, channels, 1, 1, device=device), torch.ones(1, channels, 1, 1, device=device)
    mean = torch.as_tensor(normalization.mean, dtype=torch.float32, device=device).flatten()
    std = torch.as_tensor(normalization.std, dtype=torch.float32, device=device).flatten()
    if mean.numel() != channels:  # e.g. ImageNet stats for a 1-channel model: use the channel mean
        mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
    return mean.view(1, channels, 1, 1), std.view(1, channels, 1, 1)


@dataclass
class AttackTarget:
    """A trained classifier under attack plus what is needed to feed it images.

    Attributes:
        model: the classifier; ``model(x)`` returns logits, ``model.features(x)`` the penultimate
            activations (used by LOMMA's feature regulariser and the feature-space analysis).
        image_shape: ``(C, H, W)`` of the target's input.
        normalization: a :class:`midre.data.Normalization` (or ``None`` for plain ``[0, 1]`` input).
        num_classes: number of private identities the target classifies.
        key: a stable identifier (e.g. a hash of the weights) used to cache target-specific priors.
    """

    model: nn.Module
    image_shape: tuple[int, int, int]
    normalization: Any = None
    num_classes: int | None = None
    key: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3:
            raise ValueError(f"AttackTarget.image_shape must be (C, H, W), got {self.image_shape!r}")
        self.image_shape = tuple(int(v) for v in self.image_shape)  # type: ignore[assignment]
        if self.num_classes is None:
            classifier = getattr(self.model, "classifier", None)
            if isinstance(classifier, nn.Linear):
                self.num_classes = classifier.out_features
            else:
                raise ValueError("AttackTarget.num_classes is required when model.classifier is not "
                                 "an nn.Linear")

    @classmethod
    def from_checkpoint(cls, directory: str, device: str | torch.device = "cpu") -> AttackTarget:
        """Load a target trained by :func:`midre.train.train` (``model.safetensors`` + ``model.json``)."""
        model, card = load_checkpoint(directory, device=device)
        return cls.from_model_card(model, card, key=weights_key(directory))

    @classmethod
    def from_model_card(cls, model: nn.Module, card: dict[str, Any], key: str = "") -> AttackTarget:
        """Build from a loaded model and its JSON sidecar (tolerates nested or flat card layouts)."""
        size = _card_get(card, "image_size", "input_size")
        channels = _card_get(card, "in_channels", "channels") or 3
        if isinstance(size, list | tuple):
            size = size[-1]
        if size is None:
            raise ValueError("model card has no image_size / input_size")
        norm = _card_get(card, "normalization")
        normalization = None
        if isinstance(norm, dict) and norm.get("mean") is not None:
            from midre.data import Normalization

            normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]))
        elif norm is not None and hasattr(norm, "mean"):
            normalization = norm
        num_classes = _card_get(card, "num_classes")
        return cls(model=model, image_shape=(int(channels), int(size), int(size)),
                   normalization=normalization, num_classes=num_classes, key=key, card=card)


def load_checkpoint(directory: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``midre.train.load_checkpoint`` (the contract), falling back to ``midre.checkpoint``."""
    try:
        from midre.train import load_checkpoint as _load
    except ImportError:
        from midre.checkpoint import load_checkpoint as _load
    model, card = _load(directory, device=device)
    model.eval()
    return model, card


def _card_get(card: dict[str, Any], *names: str) -> Any:
    """Find the first of ``names`` in a model card, looking one level into nested dicts."""
    for name in names:
        if name in card:
            return card[name]
    for value in card.values():
        if isinstance(value, dict):
            for name in names:
                if name in value:
                    return value[name]
    return None


def weights_key(directory: str) -> str:
    """A short content hash of a checkpoint directory's weights file (for prior/surrogate caches)."""
    import hashlib
    from pathlib import Path

    path = Path(directory)
    candidates = [path / "model.safetensors", *sorted(path.glob("*.safetensors"))]
    for candidate in candidates:
        if candidate.is_file():
            digest = hashlib.sha256()
            with candidate.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()[:16]
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


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
        mean, std = _norm_tensors(self.normalization, self.images.shape[1], self.images.device)
        return (self.images * std + mean).clamp(0, 1)


class PixelCodec:
    """Converts between ``[0, 1]`` pixels and the target's normalised input, on one device."""

    def __init__(self, normalization: Any, channels: int, device: torch.device) -> None:
        self.mean, self.std = _norm_tensors(normalization, channels, device)
        self.lo = (0 - self.mean) / self.std
        self.hi = (1 - self.mean) / self.std

    def to_input(self, x01: Tensor) -> Tensor:
        return (x01 - self.mean) / self.std

    def to_pixels(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def clamp_input(self, x: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(x, self.hi), self.lo)


# --------------------------------------------------------------------------- regularisers and losses


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per image ``[N]`` (mean absolute difference of neighbours).

    Used as an image prior by MI-Face (Fredrikson et al. 2015) and DeepInversion (Yin et al. 2020,
    Eq. 3, R_TV); the mean (not sum) keeps the weight independent of the resolution.
    """
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def l2_norm_sq(x: Tensor) -> Tensor:
    """Mean squared value per image ``[N]`` (the R_l2 image prior)."""
    return x.pow(2).flatten(1).mean(1)


def max_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Max-margin identity loss per image: ``-l_y + max_{j != y} l_j`` (PLG-MI, Yuan et al. 2023, Eq. 5)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return -true + others.max(1).values


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


def differentiable_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random resized-crop (scale 0.8-1) + horizontal flip + small rotation-free shift, batched.

    PLG-MI (Yuan et al. 2023, Sec. 3.3) optimises against augmented copies so that the generated
    image is robust and not an adversarial example; ``affine_grid`` keeps it differentiable.
    """
    n = x.shape[0]
    device = x.device
    scale = 0.8 + 0.2 * torch.rand(n, generator=generator)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - scale)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = torch.nn.functional.affine_grid(theta.to(device), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


# --------------------------------------------------------------------------- running helpers


def expand_labels(identities: Sequence[int] | Tensor, per_identity: int) -> Tensor:
    """``[k0, k1]`` with ``per_identity=2`` -> ``[k0, k0, k1, k1]`` (int64)."""
    ids = torch.as_tensor(list(identities) if not isinstance(identities, Tensor) else identities,
                          dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("identities must name at least one class")
    if per_identity < 1:
        raise ValueError(f"per_identity must be >= 1, got {per_identity}")
    return ids.repeat_interleave(per_identity)


def chunks(n: int, size: int | None) -> list[slice]:
    size = n if size is None else max(1, size)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


class StepReporter:
    """Throttled progress + cooperative cancellation for an optimisation loop."""

    def __init__(self, name: str, total: int, progress: ProgressCallback | None,
                 should_stop: StopCallback | None, stage: str = "attack") -> None:
        self.name = name
        self.total = max(1, total)
        self.progress = progress or no_progress
        self.should_stop = should_stop or never_stop
        self.stage = stage
        self.done = 0
        self._every = max(1, self.total // 50)
        self._last = time.monotonic()

    def step(self, loss: float | None = None, message: str = "") -> None:
        self.done += 1
        if self.should_stop():
            raise AttackCancelled(f"{self.name}: stopped after {self.done} of {self.total} steps")
        if self.done % self._every == 0 or self.done == self.total:
            metrics = {} if loss is None or not math.isfinite(loss) else {"loss": float(loss)}
            self.progress(ProgressEvent(stage=self.stage, fraction=min(1.0, self.done / self.total),
                                        message=message or self.name, step=self.done, steps=self.total,
                                        metrics=metrics))


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


Loss = Callable[[Tensor, Tensor], Tensor]
