"""Hardened-model checkpoints: ``model.safetensors`` + a ``model.json`` sidecar.

The sidecar holds everything needed to rebuild and use the model with one call
(:func:`load_checkpoint`): architecture, classes, input size and channels, normalisation, the
defense and its parameters, metrics, seed, the training config and package versions. Weights are
stored with safetensors only (no pickle), so loading a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
CARD_SCHEMA_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions written into every sidecar, so a result can be traced to the code that made it."""
    import torchvision

    from midre import __version__

    return {
        "midre": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, out_dir: str | Path, card: dict[str, Any]) -> Path:
    """Save ``model``'s weights and its card into ``out_dir``; returns the weights path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".tmp")
    os.close(fd)
    save_file(state, tmp, metadata={"format": "pt", "arch": str(card.get("arch", ""))})
    os.replace(tmp, out / WEIGHTS_FILE)
    write_json_atomic(out / CARD_FILE, {"schema_version": CARD_SCHEMA_VERSION, **card})
    return out / WEIGHTS_FILE


def read_card(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's ``model.json``; errors name the file and the missing key."""
    path = Path(checkpoint_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model card; is {checkpoint_dir} a midre checkpoint folder?")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("arch", "num_classes", "image_size", "channels"):
        if key not in card:
            raise ValueError(f"{path}: missing key {key!r}")
    return card


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """An untrained model with the architecture (and defense-side changes) the card describes."""
    from midre.defenses import build_defense
    from midre.models import create_model

    model = create_model(
        card["arch"], card["num_classes"], image_size=card["image_size"], in_channels=card["channels"]
    )
    defense = card.get("defense")
    if defense:
        model = build_defense(defense).prepare_model(model)
    return model


def load_checkpoint(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from ``model.safetensors`` + ``model.json``.

    Returns:
        ``(model, card)``: the model in eval mode on ``device``, predicting exactly as it did when
        saved, and the card (a dict, see :func:`midre.train.train` for its keys).
    """
    card = read_card(checkpoint_dir)
    weights = Path(checkpoint_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file missing")
    model = build_from_card(card)
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device).eval(), card


def card_normalization(card: dict[str, Any]):
    """The :class:`midre.data.Normalization` a checkpoint's inputs need, or None for [0, 1]."""
    from midre.data import Normalization

    norm = card.get("normalization")
    return Normalization(tuple(norm["mean"]), tuple(norm["std"])) if norm else None


def check_external_checkpoint(
    weights: str | Path, card: dict[str, Any], *, limits: Any = None, save_to: str | Path | None = None
) -> dict[str, Any]:
    """Check a model trained elsewhere (a safetensors state dict + its card) and return its full card.

    The card needs ``arch`` (a registered architecture), ``num_classes`` or ``class_names``,
    ``image_size``, ``channels`` and optionally ``normalization`` (``{"mean", "std"}``, one finite
    value per channel, std > 0; absent: inputs in [0, 1]). A ``model.json`` written by
    :func:`midre.train.train` is accepted as it is. Checks run cheapest first, so a bad card costs
    no memory (see :mod:`midre.models.external`): the card alone within ``limits``
    (:class:`~midre.models.external.CardLimits`), then the file's header (the final layer's rows
    must be the card's classes), and only then the model is built; the weights are read with
    safetensors (never unpickled), must fit it exactly, in this project's key layout or the
    architecture's foreign one (torchvision's own state dicts for the torchvision families), and
    one forward pass on a dummy batch must give ``[N, num_classes]`` finite logits.

    Args:
        weights: the safetensors file.
        card: the card (parsed JSON).
        limits: a :class:`~midre.models.external.CardLimits` (default: its defaults).
        save_to: where to write the checked weights in this project's layout (what
            :func:`load_checkpoint` reads); None writes nothing.

    Raises:
        ConfigError: ``field`` is ``card.<key>`` or ``file`` (the weights).
    """
    from safetensors import SafetensorError

    from midre.errors import ConfigError
    from midre.models.external import CardLimits, check_card, check_head, read_shapes, to_own_layout

    limits = limits or CardLimits()
    full = check_card(card, limits)
    check_head(read_shapes(weights, limits.max_header_bytes), full)
    try:
        model = build_from_card(full)
    except ConfigError as exc:
        raise exc.within("card") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError("card", str(exc)) from exc
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError("file", f"not a readable safetensors file ({exc})") from None
    state = to_own_layout(model, state, full)
    model.load_state_dict(state, strict=False)
    model.eval()
    side, classes = full["image_size"], full["num_classes"]
    with torch.no_grad():
        logits = model(torch.rand(2, full["channels"], side, side))
    if tuple(logits.shape) != (2, classes) or not bool(torch.isfinite(logits).all()):
        raise ConfigError("file", f"a forward pass gives {tuple(logits.shape)} (finite: "
                                  f"{bool(torch.isfinite(logits).all())}), expected (2, {classes})")
    if save_to is not None:
        own = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(own, str(save_to), metadata={"format": "pt", "arch": str(full["arch"])})
    return full
