"""The classifier under attack, as both :mod:`midre.attacks` and :mod:`midre.priors` see it.

The attacks invert a target; the priors and LOMMA surrogates they train also read it (PLG-MI
pseudo-labels public images with it and trains its generator against it, KEDMI's prior and the
surrogates distil it). Everything those two packages share lives here, so the import graph runs
``attacks -> priors -> target`` and never back:

* :class:`AttackTarget`: the model, its input shape and normalisation, loadable from a checkpoint;
* :class:`PixelCodec`: ``[0, 1]`` pixels <-> the target's normalised input, on one device;
* :func:`max_margin_loss` and :func:`differentiable_augment`: PLG-MI's identity loss and its
  augmentation, used by the attack's latent search and by the training of its conditional prior.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttackTarget",
    "PixelCodec",
    "differentiable_augment",
    "load_checkpoint",
    "max_margin_loss",
    "weights_key",
]


def _norm_tensors(normalization: Any, channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` as ``[1, C, 1, 1]``; zeros/ones when the target takes plain ``[0, 1]`` pixels."""
    if normalization is None or getattr(normalization, "mean", None) is None:
        return torch.zeros(1, channels, 1, 1, device=device), torch.ones(1, channels, 1, 1, device=device)
    mean = torch.as_tensor(normalization.mean, dtype=torch.float32, device=device).flatten()
    std = torch.as_tensor(normalization.std, dtype=torch.float32, device=device).flatten()
    if mean.numel() != channels:  # e.g. ImageNet stats for a 1-channel model: use the channel mean
        mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
    return mean.view(1, channels, 1, 1), std.view(1, channels, 1, 1)


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
    #: The model as served (:class:`midre.deployment.Deployment`): query attacks then see what a client
    #: of the deployment sees, within its budget. ``None``: the model itself.
    deployment: Any = None

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
    """:func:`midre.checkpoint.load_checkpoint`, with the model put in eval mode."""
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


def max_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Max-margin identity loss per image: ``-l_y + max_{j != y} l_j`` (PLG-MI, Yuan et al. 2023, Eq. 5)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return -true + others.max(1).values


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
    grid = F.affine_grid(theta.to(device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
