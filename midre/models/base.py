"""The one model interface every architecture in the registry implements.

A model is split in two: a :class:`Backbone` that maps an image batch to its penultimate feature
vector, and ``classifier``, the final :class:`torch.nn.Linear`. Everything downstream relies on
that split:

* the trainer and the attacks call ``model(x)`` for logits;
* the evaluation (KNN distance, feature-space analysis, MIDRE paper Sec. 3.2) calls
  ``model.features(x)``, the input of the final linear layer;
* information-bottleneck defenses such as BiDO (Peng et al., KDD 2022,
  https://arxiv.org/abs/2206.05483) call ``model.forward_with_hidden(x)`` to reach a few
  intermediate block outputs.

``forward`` is defined once, here, as ``classifier(backbone(x))``, so
``model(x) == model.classifier(model.features(x))`` holds exactly for every architecture.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "ClassifierModel", "adapt_input_conv_weight", "replace_first_conv"]

logger = logging.getLogger(__name__)


class Backbone(nn.Module):
    """Image batch ``[N, C, H, W]`` -> penultimate features ``[N, feature_dim]``.

    Subclasses implement :meth:`_forward_impl` once; it appends the intermediate activations named
    in :attr:`hidden_names` to ``hidden`` when a list is given, so the plain forward and the
    forward with hidden activations share one code path.

    Attributes:
        feature_dim: length of the feature vector.
        hidden_names: one name per activation :meth:`forward_hidden` returns, in order.
    """

    feature_dim: int
    hidden_names: tuple[str, ...]

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x, None)

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the features and the intermediate activations named by :attr:`hidden_names`."""
        hidden: list[Tensor] = []
        features = self._forward_impl(x, hidden)
        return features, hidden

    def _forward_impl(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        raise NotImplementedError


class ClassifierModel(nn.Module):
    """A classifier made of a :class:`Backbone` and a final linear layer.

    Args:
        backbone: maps images to ``[N, backbone.feature_dim]`` features.
        num_classes: number of output logits.
        arch: the registry name the model was built under.
        image_size: the square input side the model was built for.
        in_channels: number of input channels.
        classifier: the final linear layer; a fresh ``nn.Linear(feature_dim, num_classes)`` when
            None (torchvision wrappers pass the head torchvision built, keeping its initialisation).

    Attributes:
        backbone, classifier: the two halves; ``forward == classifier(backbone(x))``.
        feature_dim, num_classes, arch, image_size, in_channels: as above.
        build_kwargs: the extra keyword arguments the registry built the model with (see
            :attr:`config`).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        arch: str,
        image_size: int,
        in_channels: int,
        classifier: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if classifier is None:
            classifier = nn.Linear(backbone.feature_dim, num_classes)
        if classifier.in_features != backbone.feature_dim or classifier.out_features != num_classes:
            raise ValueError(
                f"classifier is Linear({classifier.in_features}, {classifier.out_features}); "
                f"expected Linear({backbone.feature_dim}, {num_classes})"
            )
        self.backbone = backbone
        self.classifier = classifier
        self.feature_dim: int = backbone.feature_dim
        self.num_classes: int = num_classes
        self.arch: str = arch
        self.image_size: int = image_size
        self.in_channels: int = in_channels
        self.build_kwargs: dict[str, Any] = {}

    @property
    def hidden_names(self) -> tuple[str, ...]:
        """Names of the activations :meth:`forward_with_hidden` returns, in order."""
        return self.backbone.hidden_names

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture: ``create_model(**model.config)``."""
        return {
            "name": self.arch,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            **self.build_kwargs,
        }

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[N, feature_dim]``: the input of :attr:`classifier`."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]``."""
        return self.classifier(self.backbone(x))

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits plus a few intermediate block outputs (not flattened), for BiDO-style losses.

        The list is ordered from the input side to the output side; :attr:`hidden_names` names each
        entry. The tensors keep their autograd graph, so a loss on them trains the backbone.
        """
        features, hidden = self.backbone.forward_hidden(x)
        return self.classifier(features), hidden

    #: State-dict prefixes of the freshly initialised head: a weights file may lack these keys or
    #: hold them with another shape (another number of classes), and they are then skipped and
    #: logged instead of failing the load. Architectures whose head is more than the final
    #: linear layer (the MI targets' BatchNorm1d / embedding layers) extend it.
    head_prefixes: tuple[str, ...] = ("classifier.",)

    def remap_foreign_key(self, key: str) -> str | None:
        """Map a key of a state dict saved by another code base onto this model's keys.

        Called by :func:`midre.models.load_weights` for state dicts that are not in this model's
        own ``backbone.* / classifier.*`` layout (e.g. torchvision ImageNet weights, or the MI
        literature's published checkpoints). Return None to drop the key (it is logged).
        The default puts every key under ``backbone.``.
        """
        return "backbone." + key

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"image_size={self.image_size}, in_channels={self.in_channels}"
        )


def adapt_input_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a first-conv weight ``[O, C, kH, kW]`` to ``in_channels`` input channels.

    One channel: the sum over the input channels (a gray image fed to an RGB filter bank gives the
    same response as the gray value repeated on R, G and B). More channels: the filters are tiled
    over the new channels and rescaled by ``C / in_channels`` so the response scale is unchanged.

    Args:
        weight: the convolution weight to adapt.
        in_channels: the wanted number of input channels.

    Returns:
        A new tensor ``[O, in_channels, kH, kW]`` of the same dtype.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(weight.shape)}")
    old = weight.shape[1]
    if in_channels == old:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // old)
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return tiled * (old / in_channels)


def replace_first_conv(module: nn.Module, in_channels: int) -> str:
    """Swap the first :class:`torch.nn.Conv2d` of ``module`` for one taking ``in_channels``.

    The new convolution keeps every other setting of the old one, and its weight is the old
    (randomly initialised) weight adapted by :func:`adapt_input_conv_weight`, so the
    architecture's own initialisation scheme is kept.

    Args:
        module: the network to edit in place.
        in_channels: the wanted number of input channels.

    Returns:
        The dotted name of the replaced convolution.
    """
    found = next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(f"{type(module).__name__} has no Conv2d to adapt to in_channels={in_channels}")
    name, child = found
    if child.in_channels == in_channels:
        return name
    if child.groups != 1:
        raise ValueError(f"first conv {name!r} is grouped (groups={child.groups}); cannot adapt in_channels")
    new = nn.Conv2d(
        in_channels,
        child.out_channels,
        kernel_size=child.kernel_size,  # type: ignore[arg-type]
        stride=child.stride,  # type: ignore[arg-type]
        padding=child.padding,  # type: ignore[arg-type]
        dilation=child.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=child.bias is not None,
        padding_mode=child.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv_weight(child.weight, in_channels))
        if child.bias is not None and new.bias is not None:
            new.bias.copy_(child.bias)
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, new)
    logger.debug("replaced %s with a %d-channel conv", name, in_channels)
    return name
