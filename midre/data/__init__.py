"""Data sets for MIDRE: specs, loading (built-in digits, ImageFolder folders, archives), splits.

See ``docs/library-api.md`` ("Data") for the contract. Quick start:

    >>> from midre.data import DatasetSpec, load_dataset, to_float
    >>> splits = load_dataset(DatasetSpec(source="digits", image_size=32))
    >>> x = to_float(splits.train.images[:8], splits.normalization)  # on any device
    >>> x.shape, splits.class_names[:3]
    (torch.Size([8, 3, 32, 32]), ['0', '1', '2'])
"""

from midre.data.archive import (
    ARCHIVE_SUFFIXES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    ExtractReport,
    inspect_archive,
    safe_extract,
)
from midre.data.containers import DatasetSplits, ImageSet
from midre.data.errors import DatasetError, RejectedFile
from midre.data.images import IMAGE_EXTENSIONS
from midre.data.loading import load_dataset
from midre.data.normalization import IMAGENET, Normalization, to_float
from midre.data.spec import DatasetSpec
from midre.data.split import split_counts

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "IMAGENET",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetSpec",
    "DatasetSplits",
    "ExtractReport",
    "ImageSet",
    "Normalization",
    "RejectedFile",
    "inspect_archive",
    "load_dataset",
    "safe_extract",
    "split_counts",
    "to_float",
]
