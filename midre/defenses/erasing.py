"""MIDRE and its ablations as defenses (paper Sec. 2.2 and Sec. 3.3, Table 1).

- ``nodef``: no defense.
- ``midre``: random erasing of every training image at every iteration, ``a_e ~ U[a_l, a_h]``
  (or a fixed ``a_e``), filled with the ImageNet mean. Applied last, after other augmentation,
  as in the authors' training recipe.
- ``fixed-erasing``: one square per image, drawn once, the same at every epoch.
- ``entire-erasing``: each epoch, a ``share`` of each identity's images is erased entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from midre.defenses.base import Defense, TrainContext, Transform, register_defense
from midre.erasing import EntireErasing, FixedErasing, RandomErasing, fill_value


@register_defense("nodef")
class NoDefense(Defense):
    """Standard training, the baseline every defense is compared with."""

    name = "nodef"
    no_transform = "is the baseline: the standard attack is already the one that knows its training"


def _erasing_transform(a_h: float, a_l: float, a_e: float | None, fill: Any, normalization: Any) -> Transform:
    """Fresh random squares of the defense's area law on every call (differentiable outside the squares)."""
    eraser = RandomErasing(a_h=a_h, a_l=a_l, a_e=a_e, fill=fill, normalization=normalization,
                           normalized=normalization is not None)
    return lambda x, generator: eraser(x, generator=generator)


@register_defense("midre")
class MIDRE(Defense):
    """Model Inversion Defense via Random Erasing.

    Args:
        a_h: upper bound of the erased area fraction (0.4 default, 0.8 the strong setting).
        a_l: lower bound (the paper fixes 0.1).
        a_e: a fixed area fraction instead of sampling (paper Fig. 2 / Table 1 sweeps).
        fill: "imagenet-mean" (paper), "reference-code" (the authors' code), or pixel values.
    """

    name = "midre"

    def __init__(
        self, a_h: float = 0.4, a_l: float = 0.1, a_e: float | None = None,
        fill: str | Sequence[float] = "imagenet-mean",
    ) -> None:
        super().__init__()
        self.eraser = RandomErasing(a_h=a_h, a_l=a_l, a_e=a_e, fill=fill)
        self.fill = list(fill) if not isinstance(fill, str) else fill

    def params(self) -> dict[str, Any]:
        return {"a_h": self.eraser.a_h, "a_l": self.eraser.a_l, "a_e": self.eraser.a_e, "fill": self.fill}

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        self.eraser = RandomErasing(
            a_h=self.eraser.a_h, a_l=self.eraser.a_l, a_e=self.eraser.a_e, fill=self.eraser.fill,
            normalization=context.normalization, normalized=context.normalization is not None,
        )

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        return self.eraser(x, generator=generator, inplace=True)  # x is a fresh batch

    def attack_transform(self, normalization: Any) -> Transform | None:
        e = self.eraser
        return _erasing_transform(e.a_h, e.a_l, e.a_e, e.fill, normalization)


@register_defense("fixed-erasing")
class FixedErasingDefense(Defense):
    """Fixed Erasing ablation: each image always loses the same square.

    Args:
        a_h, a_l, a_e, fill: as for ``midre``.
        seed: seed of the one-time draw (default: the training seed).
    """

    name = "fixed-erasing"

    def __init__(
        self, a_h: float = 0.4, a_l: float = 0.1, a_e: float | None = None,
        fill: str | Sequence[float] = "imagenet-mean", seed: int | None = None,
    ) -> None:
        super().__init__()
        RandomErasing(a_h=a_h, a_l=a_l, a_e=a_e, fill=fill)  # validate now
        self.a_h, self.a_l, self.a_e, self.fill, self.seed = a_h, a_l, a_e, fill, seed
        self.eraser: FixedErasing | None = None

    def params(self) -> dict[str, Any]:
        return {"a_h": self.a_h, "a_l": self.a_l, "a_e": self.a_e, "fill": self.fill, "seed": self.seed}

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        self.eraser = FixedErasing(
            len(context.train_labels), context.image_size, context.image_size,
            seed=context.seed if self.seed is None else self.seed, a_h=self.a_h, a_l=self.a_l, a_e=self.a_e,
            fill=self.fill, normalization=context.normalization, normalized=context.normalization is not None,
        ).to(context.device)

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        assert self.eraser is not None, "setup() was not called"
        return self.eraser(x, indices)

    def attack_transform(self, normalization: Any) -> Transform | None:
        # the fixed squares belong to the training images; a reconstruction gets fresh ones of the same law
        return _erasing_transform(self.a_h, self.a_l, self.a_e, self.fill, normalization)


@register_defense("entire-erasing")
class EntireErasingDefense(Defense):
    """Entire Erasing ablation: per epoch, a ``share`` of each identity's images is dropped.

    Args:
        share: fraction of each identity's images erased per epoch, in [0, 1).
        mode: "leave-out" (default: the images skip that epoch) or "fill" (kept, fully erased).
        seed: seed of the per-epoch choice (default: the training seed).
    """

    name = "entire-erasing"

    def __init__(self, share: float = 0.3, mode: str = "leave-out", seed: int | None = None) -> None:
        super().__init__()
        EntireErasing(torch.zeros(2, dtype=torch.long), share, mode=mode)  # validate now
        self.share, self.mode, self.seed = share, mode, seed
        self.eraser: EntireErasing | None = None

    def params(self) -> dict[str, Any]:
        return {"share": self.share, "mode": self.mode, "seed": self.seed}

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        self.eraser = EntireErasing(
            context.train_labels, self.share, seed=context.seed if self.seed is None else self.seed,
            mode=self.mode, normalization=context.normalization, normalized=context.normalization is not None,
        )

    def epoch_indices(self, epoch: int, n: int) -> Tensor | None:
        assert self.eraser is not None, "setup() was not called"
        return self.eraser.kept_indices(epoch) if self.mode == "leave-out" else None

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        assert self.eraser is not None, "setup() was not called"
        return self.eraser(x, indices, epoch)

    def attack_transform(self, normalization: Any) -> Transform | None:
        """Each image erased entirely with probability ``share`` (in either mode: what a training image
        met). Its expectation is the standard objective on the kept draws: the adaptive attack is the
        standard one with fewer effective samples per step, which the report can show is no stronger."""
        share = self.share

        def whole(x: Tensor, generator: torch.Generator) -> Tensor:
            hit = torch.rand(x.shape[0], generator=generator, device=generator.device) < share
            value = fill_value("imagenet-mean", x.shape[1], normalization).to(x.device, x.dtype)
            return torch.where(hit.to(x.device).view(-1, 1, 1, 1), value.view(1, -1, 1, 1), x)

        return whole
