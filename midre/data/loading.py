"""`load_dataset`: spec -> in-memory uint8 splits."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midre.data.archive import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    ExtractReport,
    is_archive_path,
    safe_extract,
)
from midre.data.containers import DatasetSplits, ImageSet
from midre.data.digits import DIGITS_CLASS_NAMES, load_digits_images
from midre.data.errors import DatasetError, RejectedFile
from midre.data.images import check_identity_counts, decode_images, scan_image_folder
from midre.data.normalization import IMAGENET
from midre.data.spec import DatasetSpec
from midre.data.split import stratified_split

logger = logging.getLogger(__name__)

#: At most this many rejected files are listed in ``summary["rejected"]`` (``rejected_count`` has all).
MAX_REJECTED_LISTED = 1000

_RESIZE_NOTE = "plain resize to a square (aspect ratio not kept), bilinear, antialiased when shrinking"


@dataclass
class _Raw:
    """All images of all identities, before the split. Labels index ``names`` (sorted)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    names: list[str]
    kind: str
    rejected: list[RejectedFile] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    spec: DatasetSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    num_workers: int | None = None,
) -> DatasetSplits:
    """Load the data set a `DatasetSpec` describes and split it.

    Sources:
        * ``"digits"``: scikit-learn's bundled digits, classes ``"0"``..``"9"``, paths ``"digits:<i>"``.
        * a folder: ``<source>/<identity>/**/<image>``; identities sorted by folder name = label order
          (see `midre.data.images.scan_image_folder`; the resize policy is in `midre.data.images`).
        * an archive: extracted with `safe_extract` (same layout inside; one wrapper folder is
          unwrapped). With ``cache_dir`` the extraction is kept in
          ``cache_dir/<name>-<sha256[:16]>/`` and reused (paths point at those files); without it a
          temporary folder is used and deleted after loading, and paths read ``"<archive>!<member>"``.

    Every image is decoded up front into one uint8 tensor; ``max_images_per_identity`` keeps each
    identity's first images (sorted) and is applied before decoding. Identities
    ``[0, num_private)`` are split train/test by `midre.data.split.stratified_split`; the rest go,
    relabelled ``0..P-1``, to ``public``.

    Args:
        spec: What to load.
        cache_dir: Where archives are extracted and cached (optional).
        max_files: Archive entry limit (see `safe_extract`).
        max_total_bytes: Archive uncompressed size limit (see `safe_extract`).
        num_workers: Image decoding threads (default ``min(4, cpu_count)``).

    Returns:
        The `DatasetSplits`.

    Raises:
        DatasetError: (a `ValueError`) naming the file, folder, archive member or spec field at fault:
            missing source, unsupported file type, empty folder, no identity folders, fewer than 2
            identities, an identity with fewer than 2 images, an unreadable or unsupported image,
            an unsafe archive, or ``num_private`` outside ``[2, n_identities - 1]``.
    """
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"spec must be a DatasetSpec, got {type(spec).__name__}")
    start = time.perf_counter()
    raw = _load_raw(spec, cache_dir, max_files, max_total_bytes, num_workers)
    splits = _split(raw, spec)
    splits.summary["load_seconds"] = round(time.perf_counter() - start, 3)
    _log_loaded(spec, raw, splits)
    return splits


def _load_raw(spec: DatasetSpec, cache_dir: str | os.PathLike[str] | None, max_files: int, max_total_bytes: int,
              num_workers: int | None) -> _Raw:
    """Every image of the spec's source, decoded, before the split: digits, a folder or an archive."""
    if spec.is_digits:
        return _load_digits(spec)
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise DatasetError(f"source: no such file or folder: {path}", path=str(path), field="source")
    if path.is_dir():
        raw = _load_folder(path, spec, f"{path}/", num_workers)
        raw.kind = "folder"
        return raw
    if path.is_file() and is_archive_path(path):
        return _load_archive(path, spec, cache_dir, max_files, max_total_bytes, num_workers)
    raise DatasetError(
        f"source: {path} is not a folder or a .zip/.tar.gz/.tgz/.tar archive (unsupported format)",
        path=str(path),
        field="source",
    )


def _log_loaded(spec: DatasetSpec, raw: _Raw, splits: DatasetSplits) -> None:
    """One line with the split sizes and timing, and a warning naming a skipped file when any was."""
    logger.info(
        "loaded %s (%s): %d identities, train %d, test %d, public %d, %d files skipped, %.2fs",
        spec.source,
        raw.kind,
        len(raw.names),
        len(splits.train),
        len(splits.test),
        0 if splits.public is None else len(splits.public),
        len(raw.rejected),
        splits.summary["load_seconds"],
    )
    if raw.rejected:
        logger.warning(
            "%s: skipped %d non-image/hidden file(s), e.g. %s (%s)",
            spec.source,
            len(raw.rejected),
            raw.rejected[0].path,
            raw.rejected[0].reason,
        )


def _cap(items: list[Any], spec: DatasetSpec) -> list[Any]:
    return items if spec.max_images_per_identity is None else items[: spec.max_images_per_identity]


def _load_digits(spec: DatasetSpec) -> _Raw:
    images, labels, paths = load_digits_images(spec.image_size, spec.channels)
    if spec.max_images_per_identity is not None:
        keep = (
            torch.cat(
                [
                    torch.nonzero(labels == c).flatten()[: spec.max_images_per_identity]
                    for c in range(len(DIGITS_CLASS_NAMES))
                ]
            )
            .sort()
            .values
        )
        images, labels, paths = images[keep], labels[keep], [paths[i] for i in keep.tolist()]
    return _Raw(images, labels, paths, list(DIGITS_CLASS_NAMES), "digits")


def _load_folder(root: Path, spec: DatasetSpec, display_base: str, num_workers: int | None) -> _Raw:
    """Load ``root/<identity>/...``; ``display_base`` + relative path names a file in paths/errors."""
    scan = scan_image_folder(root)
    check_identity_counts(scan, display_base.rstrip("/") or display_base, display_base)
    files: list[str] = []
    labels: list[int] = []
    for label, identity in enumerate(scan.identities):
        chosen = _cap(scan.files[identity], spec)
        files.extend(chosen)
        labels.extend([label] * len(chosen))
    displays = [display_base + rel for rel in files]
    array = decode_images(
        [str(root / rel) for rel in files],
        spec.image_size,
        spec.channels,
        displays=displays,
        num_workers=num_workers,
    )
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    rejected = [RejectedFile(display_base + r.path, r.reason) for r in scan.rejected]
    return _Raw(
        images, torch.tensor(labels, dtype=torch.int64), displays, list(scan.identities), "folder", rejected
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_archive(
    archive: Path,
    spec: DatasetSpec,
    cache_dir: str | os.PathLike[str] | None,
    max_files: int,
    max_total_bytes: int,
    num_workers: int | None,
) -> _Raw:
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="midre-archive-") as tmp:
            report = safe_extract(
                archive, Path(tmp) / "data", max_files=max_files, max_total_bytes=max_total_bytes
            )
            _check_has_images(report)
            base = f"{archive}!{report.root_prefix + '/' if report.root_prefix else ''}"
            raw = _load_folder(Path(report.root or tmp), spec, base, num_workers)
    else:
        report = _cached_extract(archive, Path(cache_dir), max_files, max_total_bytes)
        _check_has_images(report)
        raw = _load_folder(Path(report.root or ""), spec, f"{report.root}/", num_workers)
    raw.kind = "archive"
    raw.rejected = [RejectedFile(f"{archive}!{r.path}", r.reason) for r in report.rejected] + raw.rejected
    raw.extra["archive"] = {
        "path": str(archive),
        "root_prefix": report.root_prefix,
        "entries": report.entries,
        "extracted_images": report.images,
        "extracted_bytes": report.total_bytes,
        "cache": report.dest if cache_dir is not None else None,
    }
    return raw


def _check_has_images(report: ExtractReport) -> None:
    if report.images == 0:
        example = (
            f"; skipped e.g. {report.rejected[0].path!r} ({report.rejected[0].reason})"
            if report.rejected
            else ""
        )
        raise DatasetError(
            f"source: archive {report.archive} holds no images in identity folders{example}",
            path=report.archive,
            field="source",
        )


def _cached_extract(archive: Path, cache_dir: Path, max_files: int, max_total_bytes: int) -> ExtractReport:
    """Extract into ``cache_dir/<name>-<sha>/data`` once; concurrent loaders race safely via rename."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in archive.name)[:80]
    final = cache_dir / f"{stem}-{_sha256(archive)[:16]}"
    marker = final / "report.json"
    if marker.is_file():
        logger.info("reusing extracted %s from %s", archive, final)
        return ExtractReport.from_dict(json.loads(marker.read_text(encoding="utf-8")))
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{stem}.{uuid.uuid4().hex}.partial"
    try:
        report = safe_extract(archive, staging / "data", max_files=max_files, max_total_bytes=max_total_bytes)
        final_data = final / "data"
        final_root = final_data.joinpath(*report.root_prefix.split("/")) if report.root_prefix else final_data
        report = ExtractReport.from_dict(
            {**report.to_dict(), "dest": str(final_data), "root": str(final_root)}
        )
        (staging / "report.json").write_text(json.dumps(report.to_dict()), encoding="utf-8")
        try:
            os.rename(staging, final)
        except OSError:  # another loader finished first (or a stale, marker-less folder is in the way)
            if not marker.is_file():
                raise
            report = ExtractReport.from_dict(json.loads(marker.read_text(encoding="utf-8")))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _split(raw: _Raw, spec: DatasetSpec) -> DatasetSplits:
    n_ids = len(raw.names)
    k = n_ids if spec.num_private is None else spec.num_private
    if spec.num_private is not None and not 2 <= k <= n_ids - 1:
        raise DatasetError(
            f"num_private must be in [2, {n_ids - 1}] for this data set of {n_ids} identities, got {k}",
            field="num_private",
        )
    labels_np = raw.labels.numpy()
    groups = [np.flatnonzero(labels_np == c).tolist() for c in range(k)]
    train_idx, test_idx = stratified_split(groups, raw.names[:k], spec.test_fraction, spec.split_seed)
    train = _subset(raw, train_idx, 0)
    test = _subset(raw, test_idx, 0)
    public = None
    if k < n_ids:
        public = _subset(raw, np.flatnonzero(labels_np >= k).tolist(), k)
    normalization = IMAGENET.for_channels(spec.channels) if spec.normalize else None
    summary: dict[str, Any] = {
        "source": spec.source,
        "source_kind": raw.kind,
        "identities": n_ids,
        "private_identities": k,
        "public_identities": n_ids - k,
        "images": {
            "train": len(train),
            "test": len(test),
            "public": 0 if public is None else len(public),
            "total": int(raw.labels.numel()),
        },
        "rejected": [r.to_dict() for r in raw.rejected[:MAX_REJECTED_LISTED]],
        "rejected_count": len(raw.rejected),
        "image_size": spec.image_size,
        "channels": spec.channels,
        "normalize": spec.normalize,
        "normalization": None if normalization is None else normalization.to_dict(),
        "test_fraction": spec.test_fraction,
        "split_seed": spec.split_seed,
        "max_images_per_identity": spec.max_images_per_identity,
        "resize": _RESIZE_NOTE,
        **raw.extra,
    }
    return DatasetSplits(
        train=train,
        test=test,
        public=public,
        class_names=list(raw.names[:k]),
        public_class_names=list(raw.names[k:]),
        normalization=normalization,
        summary=summary,
    )


def _subset(raw: _Raw, indices: list[int], label_offset: int) -> ImageSet:
    index = torch.tensor(indices, dtype=torch.int64)
    return ImageSet(
        images=raw.images.index_select(0, index),
        labels=raw.labels.index_select(0, index) - label_offset,
        paths=[raw.paths[i] for i in indices],
    )
