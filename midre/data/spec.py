"""`DatasetSpec`: the validated, JSON-serialisable description of a data set and its splits."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from midre.data.errors import DatasetError

#: The reserved `DatasetSpec.source` value for scikit-learn's bundled 8x8 digits (offline demo data).
#: A folder that happens to be called ``digits`` is loaded with ``source="./digits"``.
DIGITS_SOURCE = "digits"

#: Bounds for `DatasetSpec.image_size` (square side in pixels).
MIN_IMAGE_SIZE = 2
MAX_IMAGE_SIZE = 2048


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DatasetSpec:
    """What to load and how to split it; validated on construction.

    Args:
        source: ``"digits"`` (scikit-learn's bundled 8x8 digits, the offline demo data), a path to an
            ImageFolder-style directory (one sub-folder per identity), or a path to a ``.zip``,
            ``.tar.gz``, ``.tgz`` or ``.tar`` archive holding such folders. Stored as ``str``.
        image_size: Side of the square images after resizing, in ``[2, 2048]``. Images are resized
            to ``image_size x image_size`` without keeping the aspect ratio (bilinear, antialiased).
        channels: 1 keeps/converts to grayscale; 3 converts to RGB (grayscale repeated).
        normalize: If True, `DatasetSplits.normalization` is ImageNet mean/std (`IMAGENET`, averaged
            to one channel when ``channels == 1``); if False it is None and `to_float` gives [0, 1].
        test_fraction: Share of each private identity's images held out for the test split, in
            ``[0, 1)``. See `midre.data.split.split_counts` for the exact rounding.
        split_seed: Non-negative seed of the train/test split.
        num_private: If given, only the first K identities (sorted by name) are private and split into
            train/test; the others form the `public` split. Must be in ``[2, n_identities - 1]``;
            the upper bound is checked by `load_dataset`, which knows the number of identities.
        max_images_per_identity: If given (>= 2), keep only each identity's first images (sorted
            by relative path; by index for ``digits``).

    Raises:
        DatasetError: (a `ValueError`) naming the offending field.

    Example:
        >>> spec = DatasetSpec(source="digits", image_size=32, channels=1)
        >>> spec.test_fraction
        0.2
    """

    source: str
    image_size: int = 64
    channels: int = 3
    normalize: bool = True
    test_fraction: float = 0.2
    split_seed: int = 42
    num_private: int | None = None
    max_images_per_identity: int | None = None

    def __post_init__(self) -> None:
        source = self.source
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if not isinstance(source, str) or not source.strip():
            raise DatasetError(
                f"DatasetSpec.source must be 'digits' or a non-empty path, got {self.source!r}",
                field="source",
            )
        object.__setattr__(self, "source", source)

        if not _is_int(self.image_size) or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise DatasetError(
                f"DatasetSpec.image_size must be an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], "
                f"got {self.image_size!r}",
                field="image_size",
            )
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise DatasetError(
                f"DatasetSpec.channels must be 1 or 3, got {self.channels!r}", field="channels"
            )
        if not isinstance(self.normalize, bool):
            raise DatasetError(
                f"DatasetSpec.normalize must be a bool, got {self.normalize!r}", field="normalize"
            )
        fraction = self.test_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not math.isfinite(fraction)
            or not 0.0 <= fraction < 1.0
        ):
            raise DatasetError(
                f"DatasetSpec.test_fraction must be a number in [0, 1), got {fraction!r}",
                field="test_fraction",
            )
        object.__setattr__(self, "test_fraction", float(fraction))
        if not _is_int(self.split_seed) or not 0 <= self.split_seed < 2**63:
            raise DatasetError(
                f"DatasetSpec.split_seed must be an int in [0, 2**63), got {self.split_seed!r}",
                field="split_seed",
            )
        if self.num_private is not None and (not _is_int(self.num_private) or self.num_private < 2):
            raise DatasetError(
                f"DatasetSpec.num_private must be None or an int >= 2, got {self.num_private!r}",
                field="num_private",
            )
        cap = self.max_images_per_identity
        if cap is not None and (not _is_int(cap) or cap < 2):
            raise DatasetError(
                f"DatasetSpec.max_images_per_identity must be None or an int >= 2 "
                f"(an identity needs a train and a test image), got {cap!r}",
                field="max_images_per_identity",
            )

    @property
    def is_digits(self) -> bool:
        """True for the built-in scikit-learn digits source."""
        return self.source == DIGITS_SOURCE

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-ready dict (the inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        """Build a spec from a dict such as `to_dict` returns.

        Raises:
            DatasetError: naming an unknown key or an invalid field.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(
                f"DatasetSpec: unknown field(s) {unknown}; known fields: {sorted(known)}", field=unknown[0]
            )
        if "source" not in data:
            raise DatasetError("DatasetSpec.source is required", field="source")
        return cls(**data)
