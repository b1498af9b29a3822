"""Low-rank feature filtering (LoFt) as a defense.

Yu, Qiu, Fang, Zhuang, Chen, Yu, Wang, Xia & Xu, "Rank Matters: Understanding and Defending Model
Inversion Attacks via Low-Rank Feature Filtering", arXiv 2410.05814 (v4, 2025), https://arxiv.org/abs/2410.05814;
the authors' code: https://github.com/Chrisqcwx/LoFt (scripts on the Model-Inversion-Attack-ToolBox).

The paper measures privacy leakage by an *ideal inversion error* and finds it grows as the rank of
the intermediate representation the attack inverts shrinks: higher-rank features leak more. LoFt
therefore filters the penultimate features through a low-rank layer. The classification head
``Linear(d, C)`` becomes

    h = backbone(x)                       # [N, d]
    z = act(Linear(d, r)(BatchNorm1d(h)))  # [N, r], the filtered features, r < d
    logits = Linear(r, C)(z)

so every feature vector (and every logit vector, up to the bias) lies in an ``r``-dimensional
space, and ``act = tanh`` (the authors' choice) saturates, which also weakens the gradient an
inversion climbs. This is the authors' ``NeckWrapper`` head (BatchNorm1d, Linear to ``neck_dim``,
tanh, Linear), trained end to end with plain cross-entropy; nothing changes in the loss.

The model change is made by :meth:`LoFt.prepare_model`, which needs no :meth:`setup`, so
:func:`midre.checkpoint.load_checkpoint` rebuilds the same architecture from ``model.json``.
``model.features(x)`` is ``z`` (``feature_dim == rank``); ``forward_with_hidden`` still returns the
original backbone's hidden activations.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, register_defense
from midre.models.base import Backbone, ClassifierModel

__all__ = ["ACTIVATIONS", "LoFt", "LowRankBackbone", "wrap_with_filter"]

ACTIVATIONS = ("tanh", "relu", "none")


class LowRankBackbone(Backbone):
    """A backbone followed by the low-rank filter ``act(Linear(d, r)(BatchNorm1d(h)))``.

    Args:
        trunk: the original backbone (``d = trunk.feature_dim``).
        rank: ``r``, the size (and so the largest rank) of the filtered features.
        activation: ``"tanh"`` (the paper's), ``"relu"`` or ``"none"``.

    A training batch of one image cannot give BatchNorm statistics; it is normalised with the
    running ones instead of failing.
    """

    def __init__(self, trunk: Backbone, rank: int, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.trunk = trunk
        self.norm = nn.BatchNorm1d(trunk.feature_dim)
        self.proj = nn.Linear(trunk.feature_dim, rank)
        self.activation = activation
        self.feature_dim = rank
        self.hidden_names = tuple(getattr(trunk, "hidden_names", ()))

    def extra_repr(self) -> str:
        return f"rank={self.feature_dim}, activation={self.activation!r}"

    def _normalize(self, h: Tensor) -> Tensor:
        if self.training and h.shape[0] < 2:
            bn = self.norm
            return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.norm(h)

    def filter(self, h: Tensor) -> Tensor:
        """The filtered features ``[N, r]`` of trunk features ``h`` ``[N, d]``."""
        z = self.proj(self._normalize(h))
        if self.activation == "tanh":
            return z.tanh()
        if self.activation == "relu":
            return F.relu(z)
        return z

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        return self.filter(self.trunk._forward_impl(x, hidden))


def wrap_with_filter(model: nn.Module, rank: int, activation: str = "tanh") -> ClassifierModel:
    """A :class:`ClassifierModel` with ``model``'s backbone, the low-rank filter and a new
    ``Linear(rank, num_classes)`` classifier; keeps ``arch`` / ``image_size`` / ``in_channels`` /
    ``build_kwargs`` and the training mode.

    Raises:
        ValueError: ``arch: ...`` for a model outside the registry, ``defense.rank: ...`` when the
            rank is not below the backbone's feature size (there would be nothing to filter).
    """
    if not isinstance(model, ClassifierModel) or not isinstance(model.backbone, Backbone):
        raise ValueError(f"arch: loft needs a registry model (midre.models), got {type(model).__name__}")
    d = model.feature_dim
    if rank >= d:
        raise ValueError(f"defense.rank: must be below the backbone's feature size {d} ({model.arch}), got {rank}")
    wrapped = ClassifierModel(
        LowRankBackbone(model.backbone, rank, activation), num_classes=model.num_classes, arch=model.arch,
        image_size=model.image_size, in_channels=model.in_channels,
    )
    wrapped.build_kwargs = dict(model.build_kwargs)
    return wrapped.train(model.training)


@register_defense("loft")
class LoFt(Defense):
    """LoFt: a low-rank filter before the classifier (Yu et al., arXiv 2410.05814).

    Defaults from the authors' training script ``scripts/ffhq256_facescrub224/classifier/loft.py``
    (ResNet-152, FaceScrub 224x224, 530 classes): ``neck_dim=50``, ``neck_activation='tanh'``.

    Args:
        rank: size ``r`` of the filtered features, >= 1 and below the backbone's feature size
            (checked when the model is built: cnn-small has 128 features, ResNet-18 512).
        activation: after the low-rank projection: ``"tanh"`` (paper), ``"relu"`` or ``"none"``.
    """

    name = "loft"
    no_transform = ("changes the model's head (a low-rank feature filter that the attacker's gradients already "
                    "pass through), not its input images: there is no training-time transform for an attacker "
                    "to optimise through")

    def __init__(self, rank: int = 50, activation: str = "tanh") -> None:
        super().__init__()
        if isinstance(rank, float) and rank.is_integer():  # a sweep range's 10.0, a JSON client's 10.0
            rank = int(rank)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.rank, self.activation = rank, activation

    def params(self) -> dict[str, Any]:
        return {"rank": self.rank, "activation": self.activation}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return wrap_with_filter(model, self.rank, self.activation)
