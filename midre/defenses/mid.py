"""Mutual Information regularisation based Defense (MID) as a defense.

Wang, Zhang, Song, Guo & Li, "Improving Robustness to Model Inversion Attacks via Mutual
Information Regularization", AAAI 2021, https://arxiv.org/abs/2009.05241.

MID limits the information the model's prediction carries about its input, ``I(X; Y_hat)``. It is
trained through a variational information bottleneck (Alemi et al., "Deep Variational Information
Bottleneck", ICLR 2017, https://arxiv.org/abs/1612.00410) placed before the classifier:

    h = backbone(x);  (mu, s) = encoder(h);  std = softplus(s - 5);  z = mu + std * eps;
    logits = classifier(z);  L = CE(logits, y) + beta * KL(N(mu, std^2) || N(0, I))

with ``KL = 0.5 * sum_k (mu_k^2 + std_k^2 - 2 log std_k - 1)``, averaged over the batch. The
``softplus(s - 5)`` parameterisation (Alemi et al.'s) starts training with small noise. At
evaluation the model is deterministic: ``z = mu``.

The model change is done by :meth:`MID.prepare_model`, which needs no :meth:`setup`, so
:func:`midre.checkpoint.load_checkpoint` rebuilds the same architecture from ``model.json``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, register_defense
from midre.models.base import Backbone, ClassifierModel

__all__ = ["MID", "VIBBackbone", "gaussian_kl", "wrap_with_bottleneck"]


def gaussian_kl(mu: Tensor, std: Tensor) -> Tensor:
    """Mean over the batch of ``KL(N(mu, std^2) || N(0, I))``, summed over the latent dimensions."""
    mu, std = mu.float(), std.float()
    return 0.5 * (mu.pow(2) + std.pow(2) - 2.0 * std.log() - 1.0).sum(1).mean()


class VIBBackbone(Backbone):
    """A backbone followed by a stochastic bottleneck: features ``z = mu + std * eps`` (training)
    or ``mu`` (evaluation), of size ``bottleneck``.

    Args:
        trunk: the original backbone (its features feed the encoder).
        bottleneck: latent size ``k``; the encoder is ``Linear(trunk.feature_dim, 2k)``.

    Attributes:
        hidden_names: the trunk's, so ``forward_with_hidden`` returns the same activations.
    """

    def __init__(self, trunk: Backbone, bottleneck: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.encoder = nn.Linear(trunk.feature_dim, 2 * bottleneck)
        self.feature_dim = bottleneck
        self.hidden_names = tuple(getattr(trunk, "hidden_names", ()))

    def stats(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, std)`` of the latent given trunk features ``h``."""
        mu, s = self.encoder(h).chunk(2, dim=1)
        return mu, F.softplus(s - 5.0) + 1e-8

    def sample(self, mu: Tensor, std: Tensor) -> Tensor:
        return mu + std * std.new_empty(std.shape).normal_() if self.training else mu

    def encode(self, x: Tensor, hidden: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, mu, std)`` for an image batch (``z`` sampled in training mode, ``mu`` in eval)."""
        mu, std = self.stats(self.trunk._forward_impl(x, hidden))
        return self.sample(mu, std), mu, std

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        return self.encode(x, hidden)[0]


def wrap_with_bottleneck(model: nn.Module, bottleneck: int | None) -> ClassifierModel:
    """A :class:`ClassifierModel` with ``model``'s backbone, a VIB bottleneck and a new classifier.

    ``features(x)`` is the bottleneck sample (``mu`` in eval mode), ``classifier`` the new
    ``Linear(k, num_classes)``, ``feature_dim`` is ``k``; ``forward_with_hidden`` returns the
    original backbone's hidden activations. Keeps ``arch`` / ``image_size`` / ``in_channels`` /
    ``build_kwargs``.
    """
    if not isinstance(model, ClassifierModel) or not isinstance(model.backbone, Backbone):
        raise ValueError(f"arch: mid needs a registry model (midre.models), got {type(model).__name__}")
    k = bottleneck if bottleneck is not None else max(1, model.feature_dim // 2)
    wrapped = ClassifierModel(
        VIBBackbone(model.backbone, k), num_classes=model.num_classes, arch=model.arch,
        image_size=model.image_size, in_channels=model.in_channels,
    )
    wrapped.build_kwargs = dict(model.build_kwargs)
    return wrapped.train(model.training)


def find_bottleneck(model: nn.Module) -> VIBBackbone:
    found = next((m for m in model.modules() if isinstance(m, VIBBackbone)), None)
    if found is None:
        raise ValueError("mid: the model has no information bottleneck; was prepare_model() applied?")
    return found


@register_defense("mid")
class MID(Defense):
    """MID: variational information bottleneck before the classifier, loss CE + beta * KL.

    Logged per epoch (batch means): ``mid_ce``, ``mid_kl``.

    Args:
        beta: weight of the KL term (the information-bottleneck trade-off), >= 0.
        bottleneck: latent size ``k``; None for half the backbone's feature size.
    """

    name = "mid"

    def __init__(self, beta: float = 0.01, bottleneck: int | None = None) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < float("inf"):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        if bottleneck is not None and (isinstance(bottleneck, bool) or not isinstance(bottleneck, int)
                                       or bottleneck < 1):
            raise ValueError(f"bottleneck must be a positive int or null, got {bottleneck!r}")
        self.beta, self.bottleneck = float(beta), bottleneck

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "bottleneck": self.bottleneck}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return wrap_with_bottleneck(model, self.bottleneck)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        vib = find_bottleneck(model)
        z, mu, std = vib.encode(x)
        logits = model.classifier(z)
        ce = F.cross_entropy(logits, y)
        kl = gaussian_kl(mu, std)
        return ce + self.beta * kl, logits, {"mid_ce": float(ce.detach()), "mid_kl": float(kl.detach())}
