"""The architecture registry: ``name -> builder``, in the style of timm's ``_registry.py``.

Builders are registered with :func:`register_model` and only ever called through
:func:`create_model`, which validates the common arguments once, so each builder can assume
valid ``num_classes`` / ``image_size`` / ``in_channels``.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from midre.errors import ConfigError
from midre.models.base import ClassifierModel

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]

Builder = Callable[..., ClassifierModel]
B = TypeVar("B", bound=Builder)

#: The architecture arguments every builder receives from :func:`create_model`.
_COMMON_ARGS = ("num_classes", "image_size", "in_channels")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture before building it.

    Attributes:
        name: the registry name.
        builder: ``builder(*, num_classes, image_size, in_channels, **kwargs) -> ClassifierModel``.
        min_image_size: the smallest ``image_size`` the architecture accepts.
        image_size_multiple: ``image_size`` must be a multiple of this.
        summary: first line of the builder's docstring.
        options: the extra keyword arguments the builder accepts.
        foreign_head: dotted name of the final linear layer in the state dicts of the code base the
            architecture comes from (torchvision's ``fc``, the MI literature's ``fc_layer``), None
            when only this project's own layout exists. Lets a weights file's number of classes be
            read from its header, before anything is built.
        foreign_source: what those state dicts are, for messages (``torchvision.models.resnet18``).
    """

    name: str
    builder: Builder
    min_image_size: int
    image_size_multiple: int
    summary: str
    options: tuple[str, ...]
    foreign_head: str | None = None
    foreign_source: str | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_model(
    name: str,
    *,
    min_image_size: int = 32,
    image_size_multiple: int = 1,
    foreign_head: str | None = None,
    foreign_source: str | None = None,
) -> Callable[[B], B]:
    """Register ``builder`` under ``name`` (decorator).

    Args:
        name: the registry name (matched case-insensitively, ``_`` and ``-`` alike).
        min_image_size: the smallest square input side the architecture accepts.
        image_size_multiple: the input side must be a multiple of this.
        foreign_head: the final linear layer's name in foreign state dicts (see :class:`ModelInfo`).
        foreign_source: what those foreign state dicts are (see :class:`ModelInfo`).

    Raises:
        ValueError: ``name`` (or its canonical form) is registered already.
    """

    def decorator(builder: B) -> B:
        if any(_canonical(known) == _canonical(name) for known in _REGISTRY):
            raise ValueError(f"model name {name!r} is already registered")
        params = inspect.signature(builder).parameters
        missing = [arg for arg in _COMMON_ARGS if arg not in params]
        if missing:
            raise TypeError(f"builder for {name!r} must accept {missing}")
        doc = inspect.getdoc(builder) or ""
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            min_image_size=min_image_size,
            image_size_multiple=image_size_multiple,
            summary=doc.splitlines()[0] if doc else "",
            options=tuple(p for p in params if p not in _COMMON_ARGS),
            foreign_head=foreign_head,
            foreign_source=foreign_source,
        )
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registry names, optionally filtered by a shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``.

    Raises:
        ValueError: unknown name; the message lists every known name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str):
        wanted = _canonical(name)
        for known, info in _REGISTRY.items():
            if _canonical(known) == wanted:
                return info
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def _check_positive_int(value: Any, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{arg} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{arg} must be >= 1, got {value}")
    return value


def check_input_size(name: str, image_size: int) -> None:
    """Refuse an input size the architecture ``name`` cannot take (too small, or not a multiple it needs).

    Raises:
        ConfigError: ``field="image_size"``, with the architecture's minimum / multiple in the message.
    """
    info = get_model_info(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError("image_size", f"must be a positive integer, got {image_size!r}")
    if image_size < info.min_image_size:
        raise ConfigError(
            "image_size", f"{image_size} is too small for {info.name!r}: the minimum is {info.min_image_size}"
        )
    if image_size % info.image_size_multiple:
        raise ConfigError(
            "image_size",
            f"{image_size} does not suit {info.name!r}: it must be a multiple of {info.image_size_multiple} "
            f"(minimum {info.min_image_size})",
        )


def create_model(
    name: str,
    num_classes: int,
    *,
    image_size: int = 64,
    in_channels: int = 3,
    weights_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ClassifierModel:
    """Build a registered architecture, randomly initialised or from a local weights file.

    Nothing is ever downloaded: torchvision architectures are built with ``weights=None`` and
    pretrained weights come only from ``weights_path``.

    Args:
        name: a name from :func:`list_models` (case-insensitive; ``_`` and ``-`` alike).
        num_classes: number of output logits (identities).
        image_size: square input side the model will see; some architectures have a minimum or
            need a multiple (see :func:`get_model_info`).
        in_channels: input channels (3 for RGB, 1 for gray).
        weights_path: optional local ``.safetensors`` / ``.pt`` / ``.pth`` state dict, loaded with
            :func:`midre.models.load_weights` (a head of another size is skipped and logged).
        **kwargs: architecture options (see each builder); None values are dropped, as in timm.

    Returns:
        A :class:`~midre.models.base.ClassifierModel` in training mode on the CPU.

    Raises:
        ValueError: unknown ``name`` (the message lists every known name) or an invalid
            ``num_classes`` / ``image_size`` / ``in_channels`` (the message names it).
        TypeError: an option the architecture does not accept.
        FileNotFoundError: ``weights_path`` does not exist.

    Example:
        >>> import torch
        >>> model = create_model("cnn-small", num_classes=40, image_size=64)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 40])
    """
    info = get_model_info(name)
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    check_input_size(name, image_size)
    options = {key: value for key, value in kwargs.items() if value is not None}
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        accepted = ", ".join(info.options) or "none"
        raise TypeError(f"{info.name!r} got unexpected option(s) {unknown}; accepted options: {accepted}")
    if weights_path is not None and not Path(weights_path).is_file():  # fail before a costly build
        raise FileNotFoundError(f"weights file not found: {weights_path}")
    model = info.builder(num_classes=num_classes, image_size=image_size, in_channels=in_channels, **options)
    if not isinstance(model, ClassifierModel) or model.arch != info.name:
        raise TypeError(f"builder for {info.name!r} must return a ClassifierModel with arch={info.name!r}")
    model.build_kwargs = dict(options)
    if weights_path is not None:
        from midre.models.weights import load_weights

        load_weights(model, weights_path)
    return model
