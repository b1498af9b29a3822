"""`ImageSet` and `DatasetSplits`: the in-memory result of `load_dataset`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from midre.data.normalization import Normalization


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


@dataclass
class ImageSet:
    """Images of one split, kept in memory as uint8.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]`` (convert a batch with `to_float` on the device).
        labels: int64 tensor ``[N]``; indices into the matching class-name list of `DatasetSplits`.
        paths: Source of each image: a file path, ``"<archive>!<member>"`` for an archive extracted to
            a temporary folder, or ``"digits:<i>"`` for the built-in digits (``i`` = sklearn index).

    Raises:
        ValueError: naming ``images``, ``labels`` or ``paths`` when shapes, dtypes or lengths disagree.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.images, torch.Tensor)
            or self.images.dtype != torch.uint8
            or self.images.ndim != 4
        ):
            raise ValueError(
                f"ImageSet.images must be a uint8 tensor [N, C, H, W], got {_describe(self.images)}"
            )
        n = self.images.shape[0]
        if (
            not isinstance(self.labels, torch.Tensor)
            or self.labels.dtype != torch.int64
            or self.labels.shape != (n,)
        ):
            raise ValueError(
                f"ImageSet.labels must be an int64 tensor of shape [{n}], got {_describe(self.labels)}"
            )
        self.paths = list(self.paths)
        if len(self.paths) != n:
            raise ValueError(f"ImageSet.paths must have {n} entries, got {len(self.paths)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """Return a new `ImageSet` with the given rows (in the given order)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSet(self.images[index], self.labels[index], [self.paths[i] for i in index.tolist()])

    def counts(self, num_classes: int) -> list[int]:
        """Images per label, for labels ``0..num_classes-1``."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class DatasetSplits:
    """What `load_dataset` returns.

    Attributes:
        train: Training images of the private identities.
        test: Held-out images of the private identities (empty if ``test_fraction == 0``).
        public: All images of the public identities (labels ``0..P-1``), or None without
            ``num_private``.
        class_names: Private identity names; index = label.
        public_class_names: Public identity names; index = public label (empty without ``num_private``).
        normalization: The normalisation the images are meant to get (`IMAGENET` adapted to the
            channel count), or None when ``normalize=False`` (plain [0, 1]).
        summary: JSON-ready description: ``source``, ``source_kind``, ``identities``,
            ``private_identities``, ``public_identities``, ``images`` (per split and total),
            ``rejected`` (list of ``{"path", "reason"}``, at most 1000; ``rejected_count`` is the total),
            ``image_size``, ``channels``, ``normalize``, ``test_fraction``, ``split_seed``, ``resize``,
            ``load_seconds`` (and ``archive`` for archive sources).
    """

    train: ImageSet
    test: ImageSet
    public: ImageSet | None
    class_names: list[str]
    public_class_names: list[str]
    normalization: Normalization | None
    summary: dict[str, Any]

    @property
    def num_classes(self) -> int:
        """Number of private identities (the classifier's output size)."""
        return len(self.class_names)
