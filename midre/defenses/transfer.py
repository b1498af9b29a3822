"""Transfer-learning based defense (TL-DMI) as a defense.

Ho, Hao, Chandrasegaran, Nguyen & Cheung, "Model Inversion Robustness: Can Transfer Learning
Help?", CVPR 2024, https://arxiv.org/abs/2405.05588.

TL-DMI limits how many parameters ever see the private data: the network is first trained on
*public* data, then only its last layers are fine-tuned on the private data while the earlier
layers stay as the public training left them. The paper's analysis (Fisher information per layer)
shows that MI attacks draw mainly on the early layers' private-data information, which this
removes.

In this trainer:

- ``pretrained``: the public pretraining, a midre checkpoint folder (``model.safetensors`` +
  ``model.json``, e.g. ``midre train`` on the public identities) or a weights file; loaded with
  :func:`midre.models.load_weights` (a classifier head of another size, e.g. public identities,
  is skipped and re-initialised). ``None``: the model's weights are already pretrained, e.g. through
  ``TrainConfig.weights_path``.
- ``trainable``: which last layers stay trainable: an int ``t`` (the last ``t`` units of
  :func:`layer_units`; the classifier is the last unit) or a list of unit / parameter-name
  prefixes (``["backbone.body.layer4", "classifier"]``).
- everything else is frozen: ``requires_grad = False`` **and** every BatchNorm of a frozen unit
  stays in eval mode during training (a forward pre-hook), so its running statistics do not drift
  towards the private data either. Frozen parameters and buffers are therefore bit-identical
  before and after training.

The pretrained weights are loaded only when training (after :meth:`setup`); :meth:`prepare_model`
without :meth:`setup` (checkpoint reload) only freezes, so a checkpoint reloads without the public
weights file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from midre.defenses.base import Defense, TrainContext, register_defense
from midre.models.base import ClassifierModel

log = logging.getLogger(__name__)

__all__ = ["TransferLearningDefense", "freeze_except", "layer_units"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def layer_units(model: nn.Module) -> list[str]:
    """The model's layer units from input to output, the granularity ``trainable=int`` counts in.

    - a torchvision backbone (``ChainBackbone``): its forward steps that hold parameters (ResNet:
      ``conv1, bn1, layer1, layer2, layer3, layer4``; VGG: each layer);
    - any other backbone: its children in order, with ``nn.Sequential`` / ``nn.ModuleList`` children
      expanded one level (``cnn-small``: ``blocks.0`` .. ``blocks.3``; IR-ResNets: the input layer,
      each IR unit, the output layer);
    - then ``classifier``.
    """
    if not isinstance(model, ClassifierModel):
        raise ValueError(f"arch: tl-dmi needs a registry model (midre.models), got {type(model).__name__}")
    backbone = model.backbone
    units: list[str] = []
    steps = getattr(backbone, "steps", None)
    body = getattr(backbone, "body", None)
    if steps is not None and isinstance(body, nn.Module):
        for step in steps:
            if not step.startswith("@") and _has_params(body.get_submodule(step)):
                units.append(f"backbone.body.{step}")
    else:
        for name, child in backbone.named_children():
            if isinstance(child, _CONTAINERS):
                units += [f"backbone.{name}.{i}" for i, c in child.named_children() if _has_params(c)]
            elif _has_params(child):
                units.append(f"backbone.{name}")
    units.append("classifier")
    return units


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False


def freeze_except(model: nn.Module, trainable: Sequence[str]) -> tuple[list[str], list[str]]:
    """Freeze every parameter whose name does not start with one of ``trainable`` (unit names).

    Frozen BatchNorm layers get a forward pre-hook that keeps them in eval mode. Returns
    ``(trainable parameter names, frozen parameter names)``.
    """
    prefixes = tuple(p if p.endswith(".") else p + "." for p in trainable)

    def is_trainable(name: str) -> bool:
        return (name + ".").startswith(prefixes)

    kept, frozen = [], []
    for name, param in model.named_parameters():
        if is_trainable(name):
            kept.append(name)
        else:
            param.requires_grad_(False)
            frozen.append(name)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_trainable(name):
            module.register_forward_pre_hook(_keep_eval)
    return kept, frozen


@register_defense("tl-dmi")
class TransferLearningDefense(Defense):
    """TL-DMI: public pretraining, then only the last ``trainable`` units learn from private data.

    Args:
        pretrained: checkpoint folder or weights file of the public pretraining; None when the
            model's initial weights already are (``TrainConfig.weights_path``).
        trainable: number of last units kept trainable (>= 1; the classifier counts as one), or a
            list of unit / parameter-name prefixes (see :func:`layer_units`).
    """

    name = "tl-dmi"
    path_params = ("pretrained",)

    def __init__(self, pretrained: str | None = None, trainable: int | Sequence[str] = 2) -> None:
        super().__init__()
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained.strip()):
            raise ValueError(f"pretrained must be a path (string) or null, got {pretrained!r}")
        if isinstance(trainable, bool) or not isinstance(trainable, (int, Sequence)) or isinstance(trainable, bytes):
            raise ValueError(f"trainable must be an int >= 1 or a list of layer names, got {trainable!r}")
        if isinstance(trainable, int):
            if trainable < 1:
                raise ValueError(f"trainable must be >= 1 (the classifier at least), got {trainable}")
        else:
            if isinstance(trainable, str):
                trainable = [trainable]
            if not trainable or any(not isinstance(t, str) or not t for t in trainable):
                raise ValueError(f"trainable must be an int >= 1 or a non-empty list of layer names, got {trainable!r}")
            trainable = list(trainable)
        self.pretrained, self.trainable = pretrained, trainable
        self.trainable_names: list[str] = []
        self.frozen_names: list[str] = []

    def params(self) -> dict[str, Any]:
        return {"pretrained": self.pretrained, "trainable": self.trainable}

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        if self.pretrained is not None and not Path(self.pretrained).expanduser().exists():
            raise ValueError(f"defense.pretrained: {self.pretrained} does not exist")

    def _weights_file(self) -> Path:
        path = Path(self.pretrained).expanduser()  # type: ignore[arg-type]
        if path.is_dir():
            card = path / "model.json"
            if card.is_file():
                return path / "model.safetensors"
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise ValueError(f"defense.pretrained: {path} holds no model.json and not exactly one .safetensors")
            return files[0]
        return path

    def _load_pretrained(self, model: nn.Module) -> None:
        from midre.models import load_weights

        path = Path(self.pretrained).expanduser()  # type: ignore[arg-type]
        if path.is_dir() and (path / "model.json").is_file():
            card = json.loads((path / "model.json").read_text())
            arch = getattr(model, "arch", None)
            if card.get("arch") != arch:
                raise ValueError(f"defense.pretrained: {path} holds a {card.get('arch')!r} model, "
                                 f"the target is {arch!r}")
            defense = (card.get("defense") or {}).get("name", "nodef")
            if defense in ("mid", "mi-rad", "tl-dmi", "loft") or "+" in defense:
                log.warning("tl-dmi: %s was trained with defense %r; only plain-architecture checkpoints "
                            "load reliably", path, defense)
        report = load_weights(model, self._weights_file())
        log.info("tl-dmi: loaded %d tensors from %s (head re-initialised: %s)", len(report.loaded),
                 self.pretrained, ", ".join(report.skipped) or "none")

    def resolve(self, model: nn.Module) -> list[str]:
        """The unit / prefix names that stay trainable for ``model``."""
        units = layer_units(model)
        if isinstance(self.trainable, int):
            if self.trainable > len(units):
                raise ValueError(f"defense.trainable: {self.trainable} is more than the {len(units)} layer units of "
                                 f"this model ({', '.join(units)})")
            return units[-self.trainable:]
        names = dict(model.named_parameters())
        for prefix in self.trainable:
            if not any((n + ".").startswith(prefix.rstrip(".") + ".") for n in names):
                raise ValueError(f"defense.trainable: {prefix!r} matches no parameter; layer units: {', '.join(units)}")
        return list(self.trainable)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.context is not None and self.pretrained is not None:
            self._load_pretrained(model)
        self.trainable_names, self.frozen_names = freeze_except(model, self.resolve(model))
        log.info("tl-dmi: %d parameter tensors trainable, %d frozen", len(self.trainable_names), len(self.frozen_names))
        return model
