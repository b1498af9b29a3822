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


#: Card fields a model trained elsewhere must (or may) give; everything else of a card is kept as is.
CARD_REQUIRED = ("arch", "image_size", "channels")


def check_external_checkpoint(weights: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Check a model trained elsewhere (a safetensors state dict + its card) and return its full card.

    The card needs ``arch`` (a registered architecture), ``num_classes`` or ``class_names``,
    ``image_size``, ``channels`` and optionally ``normalization`` (``{"mean", "std"}``, one value per
    channel; absent: inputs in [0, 1]). A ``model.json`` written by :func:`midre.train.train` is
    accepted as it is. The weights are read with safetensors (never unpickled), must fit the
    architecture exactly (no missing, extra or mis-shaped tensors), and one forward pass on a dummy
    batch must give ``[N, num_classes]`` finite logits.

    Raises:
        ConfigError: ``field`` is ``card.<key>`` or ``file`` (the weights).
    """
    from midre.errors import ConfigError

    if not isinstance(card, dict):
        raise ConfigError("card", "must be a JSON object")
    num_classes = _check_card(card)
    full = {**card, "num_classes": num_classes}
    try:
        model = build_from_card(full)
    except ConfigError as exc:
        raise exc.within("card") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError("card", str(exc)) from exc
    _load_exactly(model, weights, f"a {card['arch']!r} with {num_classes} classes")
    model.eval()
    side = card["image_size"]
    with torch.no_grad():
        logits = model(torch.rand(2, card["channels"], side, side))
    if tuple(logits.shape) != (2, num_classes) or not bool(torch.isfinite(logits).all()):
        raise ConfigError("file", f"a forward pass gives {tuple(logits.shape)} (finite: "
                                  f"{bool(torch.isfinite(logits).all())}), expected (2, {num_classes})")
    return full


def _check_card(card: dict[str, Any]) -> int:
    """Check an external model's card field by field; returns its number of classes.

    Raises:
        ConfigError: ``field`` is ``card.<key>``.
    """
    from midre.errors import ConfigError
    from midre.models import check_input_size, list_models

    for key in CARD_REQUIRED:
        if key not in card:
            raise ConfigError(f"card.{key}", "is required")
    if card["arch"] not in list_models():
        raise ConfigError("card.arch", f"unknown architecture {card['arch']!r}; known: {', '.join(list_models())}")
    names = card.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ConfigError("card.class_names", "must be a list of identity names")
    num_classes = card.get("num_classes", len(names) if names else None)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 1_000_000:
        raise ConfigError("card.num_classes", f"must be an integer >= 2 (or give class_names), got {num_classes!r}")
    if names is not None and len(names) != num_classes:
        raise ConfigError("card.class_names", f"has {len(names)} names for {num_classes} classes")
    if card["channels"] not in (1, 3) or isinstance(card["channels"], bool):
        raise ConfigError("card.channels", f"must be 1 or 3, got {card['channels']!r}")
    try:
        check_input_size(card["arch"], card["image_size"])
    except ConfigError as exc:
        raise exc.within("card") from None
    norm = card.get("normalization")
    if norm is not None:
        ok = isinstance(norm, dict) and all(
            isinstance(norm.get(k), list) and len(norm[k]) == card["channels"]
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in norm[k]) for k in ("mean", "std")
        )
        if not ok or any(v <= 0 for v in norm["std"]):
            raise ConfigError("card.normalization", "must be {\"mean\": [...], \"std\": [...]} with one value per "
                                                   "channel and std > 0")
    return num_classes


def _load_exactly(model: torch.nn.Module, weights: str | Path, what: str) -> None:
    """Read ``weights`` with safetensors (never unpickled) and load them only if they fit ``model``
    exactly: no missing, extra or mis-shaped tensor (``what`` names the architecture in the error).

    Raises:
        ConfigError: ``field`` is ``file``.
    """
    from safetensors import SafetensorError

    from midre.errors import ConfigError

    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError("file", f"not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError("file", f"does not fit {what}: missing "
                                  f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                                  f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigError("file", f"tensor {name!r} has shape {tuple(tensor.shape)}, the architecture needs "
                                      f"{tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)
