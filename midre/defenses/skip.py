"""MI-resilient architecture designs (MI-RAD) as a defense, for ResNet-family targets.

Koh, Ho, Nguyen & Cheung, "On the Vulnerability of Skip Connections to Model Inversion Attacks",
ECCV 2024, https://arxiv.org/abs/2409.01696.

Skip connections let the inversion's gradient bypass the residual branches; the paper finds the
skip connections of the *last stage* matter most, and proposes three designs:

- ``rolss`` (Removal of Last-Stage Skip-connections): every residual block of the last ``stages``
  stage(s) computes ``relu(F(x))`` instead of ``relu(F(x) + shortcut(x))``; no identity path and
  no projection path is left (the projection's parameters stay in the state dict, unused, so
  torchvision / pretrained weights still load).
- ``ssf`` (Skip-connection Scaling Factor): those blocks compute ``relu(F(x) + scale * shortcut(x))``
  with ``0 < scale < 1`` (``scale=0`` is RoLSS, 1 the plain network).
- ``tts`` (Two-stage Training Scheme), our reading: the skip connections make a deep network
  easy to train, the attack only needs them in the released model. Stage 1 (the first
  ``switch`` share of the epochs) trains the plain network with every skip connection; stage 2
  removes the last-stage skip connections (RoLSS) and continues training from the stage-1 weights,
  so the released model has the RoLSS architecture but starts its last stage from a well-trained
  point. The switch happens at the start of an epoch (this defense's ``epoch_indices`` hook, which
  the trainer calls once per epoch and which selects no subset).

Supported targets: torchvision ``resnet18/34/50/101/152`` (``BasicBlock`` / ``Bottleneck``, stages
``layer1..layer4``) and the MI literature's IR-ResNets ``ir152`` / ``facenet64`` (``IRUnit``, four
stages). Other architectures raise ``ValueError``. The model change is made by
:meth:`MIRAD.prepare_model`, which needs no :meth:`setup` (checkpoint reload builds the final
architecture); the block modules keep their children's names, so state dicts are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from midre.defenses.base import Defense, TrainContext, register_defense

__all__ = ["MIRAD", "ScaledSkipBasicBlock", "ScaledSkipBottleneck", "ScaledSkipIRUnit", "residual_stages",
           "scale_skips"]

VARIANTS = ("rolss", "ssf", "tts")


class _ScaledSkip(nn.Module):
    """A residual block whose shortcut is multiplied by ``skip_scale`` (0: removed, not computed).

    Built from an existing block, adopting its children under the same names (same state-dict keys).
    """

    _optional: tuple[str, ...] = ()

    def __init__(self, block: nn.Module, skip_scale: float) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        for name in self._optional:  # submodules the block may hold as None (no child then)
            if name not in self._modules:
                setattr(self, name, getattr(block, name, None))
        self.skip_scale = float(skip_scale)

    def extra_repr(self) -> str:
        return f"skip_scale={self.skip_scale}"

    def _shortcut(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _add_skip(self, out: Tensor, x: Tensor) -> Tensor:
        if self.skip_scale == 0.0:
            return out
        skip = self._shortcut(x)
        return out + (skip if self.skip_scale == 1.0 else self.skip_scale * skip)


class ScaledSkipBasicBlock(_ScaledSkip):
    """torchvision ``BasicBlock`` with a scaled skip: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s*shortcut)``."""

    _optional = ("downsample",)

    def _shortcut(self, x: Tensor) -> Tensor:
        return self.downsample(x) if self.downsample is not None else x

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self._add_skip(out, x))


class ScaledSkipBottleneck(_ScaledSkip):
    """torchvision ``Bottleneck`` with a scaled skip."""

    _optional = ("downsample",)

    def _shortcut(self, x: Tensor) -> Tensor:
        return self.downsample(x) if self.downsample is not None else x

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self._add_skip(out, x))


class ScaledSkipIRUnit(_ScaledSkip):
    """IR-ResNet unit with a scaled skip: ``res_layer(x) + s * shortcut_layer(x)`` (no activation)."""

    def _shortcut(self, x: Tensor) -> Tensor:
        return self.shortcut_layer(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._add_skip(self.res_layer(x), x)


def _wrapper_for(block: nn.Module) -> type[_ScaledSkip] | None:
    if isinstance(block, _ScaledSkip):
        return type(block)
    from torchvision.models.resnet import BasicBlock, Bottleneck  # here: torchvision costs seconds to import

    if isinstance(block, BasicBlock):
        return ScaledSkipBasicBlock
    if isinstance(block, Bottleneck):
        return ScaledSkipBottleneck
    from midre.models.mi_targets import IRUnit

    if isinstance(block, IRUnit):
        return ScaledSkipIRUnit
    return None


def residual_stages(model: nn.Module) -> list[tuple[nn.Sequential, list[int]]]:
    """The residual stages of a ResNet-family model, input side first: ``(container, block indices)``.

    Raises:
        ValueError: the model has no supported residual stages (the message starts with ``arch:``).
    """
    from midre.models.mi_targets import IRBackbone

    for module in model.modules():
        body = getattr(module, "body", None)
        if isinstance(module, IRBackbone):
            ends = sorted(module._stage_ends)
            starts = [0] + [e + 1 for e in ends[:-1]]
            return [(module.body, list(range(s, e + 1))) for s, e in zip(starts, ends, strict=True)]
        if isinstance(body, nn.Module) and all(hasattr(body, f"layer{i}") for i in range(1, 5)):
            stages = []
            for i in range(1, 5):
                layer = getattr(body, f"layer{i}")
                if isinstance(layer, nn.Sequential) and len(layer) and all(_wrapper_for(b) for b in layer):
                    stages.append((layer, list(range(len(layer)))))
            if len(stages) == 4:
                return stages
    arch = getattr(model, "arch", type(model).__name__)
    raise ValueError(f"arch: mi-rad needs a ResNet-family target with residual stages (resnet18/34/50/101/152, "
                     f"ir152, facenet64); {arch!r} has none")


def scale_skips(model: nn.Module, stages: int, skip_scale: float) -> list[_ScaledSkip]:
    """Replace the blocks of the last ``stages`` residual stages by scaled-skip blocks, in place.

    Returns the new block modules (their ``skip_scale`` may be changed later, e.g. by TTS).
    """
    found = residual_stages(model)
    if stages > len(found):
        raise ValueError(f"defense.stages: the model has {len(found)} residual stages, got {stages}")
    blocks: list[_ScaledSkip] = []
    for container, indices in found[-stages:]:
        for i in indices:
            old = container[i]
            new = old if isinstance(old, _ScaledSkip) else _wrapper_for(old)(old, skip_scale)  # type: ignore[misc]
            new.skip_scale = float(skip_scale)
            container[i] = new
            blocks.append(new)
    return blocks


@register_defense("mi-rad")
class MIRAD(Defense):
    """MI-RAD: remove (``rolss``), scale (``ssf``) or remove after a first stage (``tts``) the skip
    connections of the last residual stage(s) (Koh et al., ECCV 2024).

    Args:
        variant: ``"rolss"``, ``"ssf"`` or ``"tts"``.
        stages: how many last residual stages are changed (1: the last stage, the paper's finding).
        scale: the skip-connection factor of ``ssf``, in (0, 1); None for 0.5. Only for ``ssf``.
        switch: for ``tts``, the share of the epochs trained with skip connections, in (0, 1)
            (stage 2 starts at epoch ``floor(switch * epochs)``, kept within [1, epochs - 1]).
    """

    name = "mi-rad"

    def __init__(self, variant: str = "rolss", stages: int = 1, scale: float | None = None,
                 switch: float = 0.5) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"stages must be an int >= 1, got {stages!r}")
        if scale is not None:
            if variant != "ssf":
                raise ValueError(f"scale is only used by variant 'ssf', not {variant!r}")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < 1.0:
                raise ValueError(f"scale must be a number in (0, 1), got {scale!r}")
        if isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0.0 < switch < 1.0:
            raise ValueError(f"switch must be a number in (0, 1), got {switch!r}")
        self.variant, self.stages, self.switch = variant, stages, float(switch)
        self.scale = float(scale) if scale is not None else (0.5 if variant == "ssf" else None)
        self.blocks: list[_ScaledSkip] = []
        self._switch_epoch = 0

    def params(self) -> dict[str, Any]:
        return {"variant": self.variant, "stages": self.stages, "scale": self.scale, "switch": self.switch}

    @property
    def final_scale(self) -> float:
        """The skip factor of the released model."""
        return self.scale if self.variant == "ssf" else 0.0  # type: ignore[return-value]

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        if self.variant == "tts":
            if context.epochs < 2:
                raise ValueError("defense.variant: 'tts' trains in two stages and needs epochs >= 2")
            self._switch_epoch = min(max(1, math.floor(self.switch * context.epochs)), context.epochs - 1)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.blocks = scale_skips(model, self.stages, self.final_scale)
        return model

    def skip_scale(self, epoch: int) -> float:
        """The factor used during 0-based ``epoch`` (TTS: 1 before the switch)."""
        if self.variant == "tts" and self.context is not None and epoch < self._switch_epoch:
            return 1.0
        return self.final_scale

    def epoch_indices(self, epoch: int, n: int) -> None:
        if self.variant == "tts":
            scale = self.skip_scale(epoch)
            for block in self.blocks:
                block.skip_scale = scale
        return None
