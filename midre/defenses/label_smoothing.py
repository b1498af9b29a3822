"""Negative Label Smoothing (NLS) as a defense.

Struppek, Hintersdorf & Kersting, "Be Careful What You Smooth For: Label Smoothing Can Be a Privacy
Shield but Also a Catalyst for Model Inversion Attacks", ICLR 2024, https://arxiv.org/abs/2310.06549.

Label smoothing trains on ``q = (1 - alpha) * onehot(y) + alpha / C`` instead of the one-hot target.
With a *positive* ``alpha`` this helps model inversion; with a *negative* ``alpha`` the target puts
``1 - alpha + alpha / C > 1`` on the true class and the negative mass ``alpha / C`` on every other
class, which pushes the logits of other classes down and flattens the loss surface an inversion
attack climbs (paper Sec. 4-5). The loss is the soft-target cross-entropy ``-sum_c q_c log p_c``
(``torch.nn.functional.cross_entropy`` accepts only ``alpha`` in [0, 1], so it is written out).

Schedule (what we implement; the paper notes that training with a negative factor from the first
epoch converges badly, so the factor is brought in after the model has learned the task):

- epochs ``[0, W)``: ``alpha = initial`` (0 by default: plain cross-entropy; a small positive value
  gives ordinary label smoothing in the warm-up), with ``W = floor(warmup * epochs)``;
- epochs ``[W, W + R)``: ``alpha`` moves linearly from ``initial`` to ``smoothing``, reaching it at
  epoch ``W + R - 1``, with ``R = ceil(ramp * epochs)``;
- from then on ``alpha = smoothing``.

With 100 epochs and the defaults (warmup 0.5, ramp 0.25) that is 50 epochs of cross-entropy, a
25-epoch ramp and 25 epochs at the final factor. ``ramp=0`` switches at epoch ``W`` at once.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, register_defense

__all__ = ["NegativeLabelSmoothing", "nls_factor", "smoothed_cross_entropy", "smoothed_targets"]


def smoothed_targets(labels: Tensor, num_classes: int, alpha: float) -> Tensor:
    """Label-smoothed targets ``(1 - alpha) * onehot + alpha / C``, ``[N, C]`` (rows sum to 1)."""
    onehot = F.one_hot(labels, num_classes).float()
    return (1.0 - alpha) * onehot + alpha / num_classes


def smoothed_cross_entropy(logits: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """Mean soft-target cross-entropy ``-sum_c q_c log softmax(logits)_c`` with smoothing ``alpha``.

    Equals ``F.cross_entropy(logits, labels, label_smoothing=alpha)`` for ``alpha`` in [0, 1] and
    extends it to negative ``alpha``.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    q = smoothed_targets(labels, logits.shape[1], alpha).to(logp.device)
    return -(q * logp).sum(1).mean()


def nls_factor(epoch: int, epochs: int, smoothing: float, initial: float = 0.0, warmup: float = 0.5,
               ramp: float = 0.25) -> float:
    """The smoothing factor of 0-based ``epoch`` out of ``epochs`` under the schedule above."""
    start = math.floor(warmup * epochs)
    length = math.ceil(ramp * epochs)
    if epoch < start:
        return initial
    if length == 0:
        return smoothing
    t = min(1.0, (epoch - start + 1) / length)
    return initial + (smoothing - initial) * t


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (a share of the epochs), got {value!r}")
    return float(value)


@register_defense("nls")
class NegativeLabelSmoothing(Defense):
    """Negative label smoothing with a warm-up / ramp schedule (Struppek et al., ICLR 2024).

    Loss: soft-target cross-entropy with ``q = (1 - alpha_e) onehot + alpha_e / C``, ``alpha_e`` from
    :func:`nls_factor`. Logged per epoch: ``nls_alpha`` (the factor used).

    Args:
        smoothing: the final factor, in [-1, 1); small and negative for the defense (e.g. -0.05).
            A positive value gives ordinary label smoothing.
        initial: the factor during the warm-up, in [0, 1) (0: plain cross-entropy).
        warmup: share of the epochs trained with ``initial`` before the ramp starts, in [0, 1].
        ramp: share of the epochs over which the factor moves linearly to ``smoothing``, in [0, 1].
    """

    name = "nls"

    def __init__(self, smoothing: float = -0.05, initial: float = 0.0, warmup: float = 0.5,
                 ramp: float = 0.25) -> None:
        super().__init__()
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not -1.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be a number in [-1, 1), got {smoothing!r}")
        if isinstance(initial, bool) or not isinstance(initial, (int, float)) or not 0.0 <= initial < 1.0:
            raise ValueError(f"initial must be a number in [0, 1), got {initial!r}")
        self.smoothing, self.initial = float(smoothing), float(initial)
        self.warmup, self.ramp = _fraction(warmup, "warmup"), _fraction(ramp, "ramp")

    def params(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "initial": self.initial, "warmup": self.warmup, "ramp": self.ramp}

    def factor(self, epoch: int) -> float:
        """The smoothing factor of 0-based ``epoch`` (needs :meth:`setup` for the number of epochs)."""
        epochs = self.context.epochs if self.context is not None else 1
        return nls_factor(epoch, epochs, self.smoothing, self.initial, self.warmup, self.ramp)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        alpha = self.factor(epoch)
        logits = model(x)
        return smoothed_cross_entropy(logits, y, alpha), logits, {"nls_alpha": alpha}

