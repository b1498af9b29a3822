"""Loading local weight files into registry models, never downloading anything.

Accepted files: ``.safetensors`` (read with :func:`safetensors.torch.load_file`) and torch
state dicts ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.tar`` (read with
``torch.load(weights_only=True)``, which refuses pickled code). A torch file may also hold the
state dict under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``.

Accepted layouts:

* this project's own ``backbone.* / classifier.*`` state dict (``model.state_dict()``);
* a foreign state dict, whose keys the model maps with
  :meth:`~midre.models.base.ClassifierModel.remap_foreign_key`: torchvision ImageNet weights for
  the torchvision architectures, torchvision ``vgg16_bn`` for the MI ``vgg16``, and the MI
  literature's published ``VGG16`` / ``IR152`` / ``FaceNet64`` checkpoints (GMI/KEDMI layout,
  ``module.`` prefixes stripped).

The backbone must match exactly (a missing, unexpected or mis-shaped backbone key is an error,
except a first-conv weight whose only difference is the number of input channels, which is
adapted). Head keys (``model.head_prefixes``: ``classifier.*``, plus ``backbone.bn.*`` of the MI
``vgg16`` and ``backbone.output_layer.*`` of ``ir152`` / ``facenet64``, which their reference
implementations train from scratch on top of a pretrained backbone) are loaded when their shape
matches and otherwise skipped, so ImageNet weights load into a model with another number of
classes. Every skip is logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from midre.models.base import ClassifierModel, adapt_input_conv_weight

__all__ = ["LoadReport", "load_weights", "load_state_dict_flexible", "read_state_dict"]

logger = logging.getLogger(__name__)

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass
class LoadReport:
    """What :func:`load_state_dict_flexible` did.

    Attributes:
        loaded: model keys filled from the file.
        skipped: head keys (``model.head_prefixes``: the classifier, plus the MI targets'
            BatchNorm1d / embedding layer) left as initialised: absent from the file or of another
            shape.
        adapted: first-conv keys whose input channels were adapted.
        dropped: file keys that the model has no use for (foreign heads, auxiliary classifiers).
        foreign: whether the file was in a foreign key layout.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    foreign: bool = False


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a local file.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: unknown suffix, or the file holds no tensor state dict.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    if suffix not in _TORCH_SUFFIXES:
        raise ValueError(
            f"weights file {file} has an unknown suffix {suffix!r}; use .safetensors or one of "
            f"{sorted(_TORCH_SUFFIXES)}"
        )
    obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict) and _is_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not _is_tensor_dict(obj):
        raise ValueError(f"weights file {file} does not hold a state dict of tensors")
    return dict(obj)


def _is_tensor_dict(obj: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def load_weights(model: ClassifierModel, path: str | os.PathLike[str]) -> LoadReport:
    """Load a local weights file into ``model`` in place (see the module docstring).

    Args:
        model: a registry model.
        path: local ``.safetensors`` / ``.pt`` / ``.pth`` file.

    Returns:
        A :class:`LoadReport`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the backbone in the file does not fit the model (the message lists the keys).
    """
    state = read_state_dict(path)
    report = load_state_dict_flexible(model, state, source=str(path))
    logger.info(
        "loaded %d tensors from %s into %s (%d skipped, %d adapted, %d dropped)",
        len(report.loaded),
        path,
        model.arch,
        len(report.skipped),
        len(report.adapted),
        len(report.dropped),
    )
    return report


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_flexible(
    model: ClassifierModel, state: dict[str, Tensor], *, source: str = "state dict"
) -> LoadReport:
    """Load ``state`` into ``model``: strict on the backbone, lenient on the classifier.

    Args:
        model: a registry model.
        state: a state dict in the model's own layout or a foreign one.
        source: how to name the state dict in messages.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: missing, unexpected or mis-shaped backbone keys.
    """
    report = LoadReport()
    state = _own_layout(model, state, report)
    own = model.state_dict()
    to_load, misfit = _match(model, own, state, report, source)
    for key in state:
        if key not in own:
            if key.startswith(model.head_prefixes):
                report.dropped.append(key)
            else:
                misfit.unexpected.append(key)
    misfit.raise_if_any(source, model.arch)

    if report.skipped:
        logger.info("%s: head keys left as initialised: %s", source, _short(report.skipped))
    if report.dropped:
        logger.info("%s: dropped keys the model does not use: %s", source, _short(report.dropped))
    result = model.load_state_dict(to_load, strict=False)
    leftover = [k for k in result.missing_keys if k not in report.skipped and not k.endswith("num_batches_tracked")]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise ValueError(f"{source}: inconsistent load, missing {leftover}, unexpected {result.unexpected_keys}")
    report.loaded = sorted(to_load)
    return report


@dataclass
class _Misfit:
    """Backbone keys that stop a load: each list is reported, none is loaded."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def raise_if_any(self, source: str, arch: str) -> None:
        """One ValueError that lists every kind of misfit (a few keys of each), or nothing."""
        parts = []
        if self.missing:
            parts.append(f"missing backbone keys: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys: {_short(self.unexpected)}")
        if self.mismatched:
            parts.append(f"shape mismatches: {_short(self.mismatched)}")
        if parts:
            raise ValueError(f"{source} does not fit {arch!r}: " + "; ".join(parts))


def _own_layout(model: ClassifierModel, state: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    """``state`` without DataParallel's ``module.`` prefix and, when it has no ``backbone.`` key (a
    foreign layout: torchvision's, the MI literature's), renamed by the model; keys the model has no
    name for are recorded as dropped."""
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(key.startswith("backbone.") for key in state):
        return state
    report.foreign = True
    remapped: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key = model.remap_foreign_key(key)
        if new_key is None:
            report.dropped.append(key)
        else:
            remapped[new_key] = value
    return remapped


def _adaptable_input_conv(value: Tensor, target: Tensor, in_channels: int) -> bool:
    """Whether ``value`` is the first convolution for another number of input channels (RGB weights
    for a grayscale model, or the reverse): same filters and kernel, only the channel count differs."""
    return (
        value.ndim == 4
        and target.ndim == 4
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
        and target.shape[1] == in_channels
    )


def _match(model: ClassifierModel, own: dict[str, Tensor], state: dict[str, Tensor], report: LoadReport,
           source: str) -> tuple[dict[str, Tensor], _Misfit]:
    """Pair each of the model's tensors with the state's: what to load, and what does not fit.

    Head (classifier) keys that are absent or shaped differently are skipped, left as initialised; an
    input convolution for another channel count is adapted; any other backbone difference is a misfit.
    """
    to_load: dict[str, Tensor] = {}
    misfit = _Misfit()
    for key, target in own.items():
        is_head = key.startswith(model.head_prefixes)
        if key not in state:
            if is_head:
                report.skipped.append(key)
            elif not key.endswith("num_batches_tracked"):
                misfit.missing.append(key)
            continue
        value = state[key]
        if value.shape == target.shape:
            to_load[key] = value
        elif is_head:
            report.skipped.append(key)
            logger.log(
                logging.INFO if key.startswith("classifier.") else logging.WARNING,
                "%s: skipping %s of shape %s (model has %s)",
                source,
                key,
                tuple(value.shape),
                tuple(target.shape),
            )
        elif _adaptable_input_conv(value, target, model.in_channels):
            to_load[key] = adapt_input_conv_weight(value, model.in_channels)
            report.adapted.append(key)
            logger.info("%s: adapted %s from %d to %d input channels", source, key, value.shape[1], target.shape[1])
        else:
            misfit.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    return to_load, misfit
