"""The adaptive attacker: a white-box attack that knows the defense's training-time transform.

A defense that only holds against an attacker who ignores it is the "false hope" of the paper's title.
The model was trained on transformed images (for MIDRE: randomly erased ones); an attacker who knows
that optimises the reconstruction through the same transform, as in expectation over transformation
(Athalye et al. 2018): every forward pass of the target sees ``samples`` fresh transformed copies of each
image and returns the mean of their logits (and features). Any white-box attack then runs unchanged on
the wrapped target, and its gradient is that of the expected logits: it flows through the pixels a draw
keeps and not through the ones it erases (``tests/unit/test_adaptive.py`` shows this on a tiny model).

The transform's parameters are the defense's as recorded in the target's card (``model.json``
``defense``); the draws are seeded by the attack's seed. :func:`adaptive_target` refuses, with the reason,
an attack that does not get the model (black-box and label-only attacks query an oracle) and a defense
with nothing to adapt to (NoDef; defenses that change the loss or the model, not the input).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from midre.errors import ConfigError

#: Transformed copies per image and forward pass unless ``eot_samples`` says otherwise.
EOT_SAMPLES = 4


class ExpectationOverTransform(nn.Module):
    """``model`` seen through a random transform: mean logits (and features) over ``samples`` draws.

    Args:
        model: the target classifier (normalised input).
        transform: ``(x, generator) -> x'``, differentiable in ``x`` (:meth:`midre.defenses.Defense.attack_transform`).
        samples: draws per image and forward pass.
        seed: seeds the draws (one generator per device).
    """

    def __init__(self, model: nn.Module, transform: Any, samples: int = EOT_SAMPLES, seed: int = 0) -> None:
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError("eot_samples", f"must be a positive integer, got {samples!r}")
        self.model = model
        self.transform = transform
        self.samples = samples
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        classifier = getattr(model, "classifier", None)
        if classifier is not None:
            self.classifier = classifier  # what attacks read the class count from

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _expected(self, x: Tensor, head: Any) -> Tensor:
        n = x.shape[0]
        draws = self.transform(x.repeat(self.samples, 1, 1, 1), self._generator(x.device))
        out = head(draws)
        return out.view(self.samples, n, *out.shape[1:]).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return self._expected(x, self.model)

    def features(self, x: Tensor) -> Tensor:
        return self._expected(x, self.model.features)


def adaptive_target(target: Any, attack: str, *, samples: int = EOT_SAMPLES, seed: int = 0) -> Any:
    """``target`` (an :class:`~midre.target.AttackTarget`) with its model wrapped in
    :class:`ExpectationOverTransform` of the defense its card records.

    Raises:
        ConfigError: ``adaptive``: the attack does not get the model, or the defense has no transform.
    """
    from midre.defenses import build_defense

    check_white_box(attack)
    spec = target.card.get("defense")
    if not isinstance(spec, dict | list) or not spec:
        raise ConfigError("adaptive", "the model's card names no defense: an adaptive attacker needs to know how "
                                      "it was trained (model.json 'defense')")
    defense = build_defense(spec)
    transform = defense.attack_transform(target.normalization)
    if transform is None:
        raise ConfigError("adaptive", f"{defense.name} {defense.no_transform}")
    wrapped = ExpectationOverTransform(target.model, transform, samples=samples, seed=seed).eval()
    return dataclasses.replace(target, model=wrapped)


def check_white_box(attack: str, where: str = "adaptive") -> None:
    """Refuse an adaptive variant of an attack that queries an oracle instead of getting the model."""
    from midre.attacks.registry import get_attack, list_attacks

    info = get_attack(attack)
    if info.access != "white-box":
        white = [a for a in list_attacks() if get_attack(a).access == "white-box"]
        raise ConfigError(where, f"{info.name} only queries the model ({info.access}); an adaptive attacker "
                                 f"optimises through the model's gradients, so only white-box attacks adapt: "
                                 f"{', '.join(white)}")


__all__ = ["EOT_SAMPLES", "ExpectationOverTransform", "adaptive_target", "check_white_box"]
