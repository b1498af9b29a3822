"""Checking a model trained elsewhere (a safetensors state dict and its card) before it is trusted.

A card and a weights file come from a user, so everything that costs memory or time is bounded by
checks that cost neither, in this order:

1. :func:`check_card`: the card alone (no torch module): a registered ``arch``, a number of classes
   and an input side within :class:`CardLimits` and what the architecture takes, ``channels`` 1 or
   3, a finite ``normalization`` with ``std > 0``. A card asking for a million classes or a
   2048-pixel input is refused here, before a byte of weights is read.
2. :func:`read_shapes`: the safetensors header only (its JSON, capped), no tensor data; the final
   linear layer's rows must equal the card's classes (:func:`check_head`), so a card cannot make the
   service build a model much larger than the file it sent.
3. Only then the model is built, the tensors are read and must fit it exactly
   (:func:`to_own_layout`), and one forward pass must give finite logits of the right shape.

Two key layouts are accepted: this project's own (``backbone.* / classifier.*``) and the foreign
layout each architecture declares in the registry (``ModelInfo.foreign_head`` /
``foreign_source``: torchvision's own state dicts for the torchvision families, whose keys timm's
ResNets and DenseNets share, and the MI literature's checkpoints), mapped with the model's
:meth:`~midre.models.base.ClassifierModel.remap_foreign_key`. Unlike
:func:`midre.models.load_weights`, nothing is lenient here: an upload must be a complete trained
model, head included.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from midre.errors import ConfigError
from midre.models.base import ClassifierModel
from midre.models.registry import ModelInfo, check_input_size, get_model_info, list_models

__all__ = ["CardLimits", "check_card", "check_head", "read_shapes", "to_own_layout"]

#: Card fields a model trained elsewhere must give; everything else of a card is kept as is.
CARD_REQUIRED = ("arch", "image_size", "channels")
#: The final linear layer in this project's own layout.
OWN_HEAD = "classifier"


@dataclass(frozen=True)
class CardLimits:
    """What a card may ask for, whatever the architecture allows.

    Attributes:
        max_classes: most classes (the head's rows).
        max_image_size: largest input side: every later forward pass (predict, attacks) costs
            in proportion to its square.
        max_header_bytes: largest safetensors header (JSON) read.
        classes_hint: appended to the classes limit's message (e.g. the setting that sets it).
        image_size_hint: appended to the input side limit's message.
    """

    max_classes: int = 100_000
    max_image_size: int = 512
    max_header_bytes: int = 16 * 2**20
    classes_hint: str = ""
    image_size_hint: str = ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_classes(card: dict[str, Any], limits: CardLimits) -> int:
    names = card.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ConfigError("card.class_names", "must be a list of identity names")
    num_classes = card.get("num_classes", len(names) if names else None)
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError("card.num_classes", f"must be an integer >= 2 (or give class_names), got {num_classes!r}")
    if num_classes > limits.max_classes:
        raise ConfigError("card.num_classes", f"{num_classes} classes is more than the {limits.max_classes} "
                                              f"accepted{limits.classes_hint}")
    if names is not None and len(names) != num_classes:
        raise ConfigError("card.class_names", f"has {len(names)} names for {num_classes} classes")
    return num_classes


def _check_image_size(card: dict[str, Any], limits: CardLimits) -> None:
    size = card["image_size"]
    if not _is_int(size) or size <= 0:
        raise ConfigError("card.image_size", f"must be a positive integer, got {size!r}")
    if size > limits.max_image_size:
        raise ConfigError("card.image_size", f"{size} px is larger than the {limits.max_image_size} px "
                                             f"accepted{limits.image_size_hint}")
    try:
        check_input_size(card["arch"], size)
    except ConfigError as exc:
        raise exc.within("card") from None


def _check_normalization(card: dict[str, Any]) -> None:
    norm = card.get("normalization")
    if norm is None:
        return
    channels = card["channels"]
    ok = isinstance(norm, dict) and all(
        isinstance(norm.get(k), list) and len(norm[k]) == channels
        and all(_is_number(v) and math.isfinite(v) for v in norm[k]) for k in ("mean", "std")
    )
    if not ok or any(v <= 0 for v in norm["std"]):
        raise ConfigError("card.normalization", f"must be {{\"mean\": [...], \"std\": [...]}} with {channels} finite "
                                                "value(s) each (one per channel) and every std > 0")


def check_card(card: object, limits: CardLimits | None = None) -> dict[str, Any]:
    """Check a card without building or reading anything; returns it with ``num_classes`` filled in.

    Raises:
        ConfigError: ``field`` is ``card`` or ``card.<key>``.
    """
    limits = limits or CardLimits()
    if not isinstance(card, dict):
        raise ConfigError("card", "must be a JSON object")
    for key in CARD_REQUIRED:
        if key not in card:
            raise ConfigError(f"card.{key}", "is required")
    if not isinstance(card["arch"], str) or card["arch"] not in list_models():
        raise ConfigError("card.arch", f"unknown architecture {card['arch']!r}; known: {', '.join(list_models())}")
    num_classes = _check_classes(card, limits)
    if card["channels"] not in (1, 3) or not _is_int(card["channels"]):
        raise ConfigError("card.channels", f"must be 1 or 3, got {card['channels']!r}")
    _check_image_size(card, limits)
    _check_normalization(card)
    defense = card.get("defense")
    if defense is not None and not isinstance(defense, dict | str | list):
        raise ConfigError("card.defense", "must be a defense object such as {\"name\": \"midre\", \"a_h\": 0.4}")
    return {**card, "num_classes": num_classes}


def read_shapes(weights: str | Path, max_header_bytes: int = CardLimits.max_header_bytes) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares, from its header alone (no tensor is read).

    Raises:
        ConfigError: ``field="file"`` when the file is not a safetensors file or its header is too large.
    """
    path = Path(weights)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            header = json.loads(fh.read(length)) if 2 <= length <= min(max_header_bytes, size - 8) else None
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ConfigError("file", f"not a readable safetensors file ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ConfigError("file", "not a readable safetensors file (no valid header within "
                                  f"{max_header_bytes} bytes)")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ConfigError("file", f"not a readable safetensors file (tensor {name!r} has no valid shape)")
        shapes[name.removeprefix("module.")] = tuple(shape)
    if not shapes:
        raise ConfigError("file", "the safetensors file holds no tensors")
    return shapes


def is_own_layout(keys: Any) -> bool:
    """True for this project's ``backbone.* / classifier.*`` layout (what :func:`midre.models.load_weights` uses)."""
    return any(key.startswith("backbone.") for key in keys)


def _how_to_fit(info: ModelInfo, card: dict[str, Any]) -> str:
    arch, classes = info.name, card["num_classes"]
    own = (f"the state_dict() of midre.models.create_model({arch!r}, {classes}, image_size={card['image_size']}, "
           f"in_channels={card['channels']})")
    foreign = f" or of {info.foreign_source} with {classes} classes" if info.foreign_source else ""
    return f"upload {own}{foreign}, saved with safetensors.torch.save_file (docs/integrations.md shows how)"


def check_head(shapes: dict[str, tuple[int, ...]], card: dict[str, Any]) -> bool:
    """Check the final linear layer's rows against the card's classes; returns whether the file is
    in the project's own layout (else the architecture's foreign one).

    Raises:
        ConfigError: ``card.num_classes`` when the head has another number of rows, ``file`` when
            the file has no head the architecture knows.
    """
    info = get_model_info(card["arch"])
    own = is_own_layout(shapes)
    if not own and info.foreign_head is None:
        raise ConfigError("file", f"its keys are not a {info.name!r} state dict (no 'backbone.*' keys): "
                                  + _how_to_fit(info, card))
    head = f"{OWN_HEAD if own else info.foreign_head}.weight"
    shape = shapes.get(head)
    if shape is None or len(shape) != 2:
        raise ConfigError("file", f"no final linear layer {head!r} of shape [classes, features]: "
                                  + _how_to_fit(info, card))
    if shape[0] != card["num_classes"]:
        raise ConfigError("card.num_classes", f"the card says {card['num_classes']} classes but the weights' final "
                                              f"layer {head!r} has {shape[0]} rows")
    return own


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{keys[:3]}{more}"


def to_own_layout(model: ClassifierModel, state: dict[str, Tensor], card: dict[str, Any]) -> dict[str, Tensor]:
    """``state`` in ``model``'s own key layout, checked to fit it exactly (mapped when foreign).

    BatchNorm's ``num_batches_tracked`` counters may be absent (they do not change a prediction).

    Raises:
        ConfigError: ``field="file"``, listing the missing, unexpected or mis-shaped tensors and
            saying which state dicts fit.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if not is_own_layout(state):
        mapped = ((model.remap_foreign_key(key), value) for key, value in state.items())
        state = {key: value for key, value in mapped if key is not None}
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (needs {tuple(expected[k].shape)})"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshaped:
        info = get_model_info(card["arch"])
        problems = [f"{what} {_listed(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise ConfigError("file", f"does not fit a {info.name!r} with {card['num_classes']} classes and "
                                  f"{card['channels']} channel(s): {'; '.join(problems)}. To fix: "
                                  + _how_to_fit(info, card))
    return {key: value for key, value in state.items() if key in expected}
