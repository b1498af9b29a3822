"""Decoding image files to fixed-size uint8 arrays, and scanning ImageFolder-style directories.

Resizing policy: every image is converted to the target mode ("L" or "RGB") and then resized to
``image_size x image_size`` with PIL's bilinear filter. The aspect ratio is *not* kept (a plain
stretch, like ``torchvision.transforms.Resize((s, s))``): the face data sets used here are already
cropped around the face, and stretching loses no part of it. PIL widens the bilinear filter when
shrinking, so downscaling is antialiased. JPEGs are first decoded at a reduced DCT scale when that
is still at least ``image_size`` (``Image.draft``), which makes large photos cheap to load.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from midre.data.errors import DatasetError, RejectedFile

logger = logging.getLogger(__name__)

#: File name extensions (lower case) treated as images; anything else is skipped and reported.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
)

#: PIL decoders we allow (PGM/PPM are PIL's "PPM"; an ".mpo" phone JPEG opens through "JPEG").
#: Restricting the decoders keeps exotic plugins (EPS -> Ghostscript, etc.) out of upload handling.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "PPM", "BMP", "DIB", "TIFF", "GIF", "WEBP")

#: Largest accepted image, in pixels (about 67 MP; a 8K photo is 33 MP). Guards against
#: decompression bombs before any pixel is decoded.
MAX_IMAGE_PIXELS = 64 * 2**20
#: Most bytes one decode may hold in memory: pixels x (bytes per pixel of the file's mode, plus the
#: float32 working copy that 16/32-bit gray needs). An 8192x8192 16-bit PNG (6 bytes a pixel, 384 MiB)
#: is refused before its pixels are read; a 4096x4096 one (96 MiB) decodes.
MAX_DECODE_BYTES = 256 * 2**20
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                    "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 8, "F": 8}

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_GRAY_MODES = frozenset({"1", "L", "I", "F"}) | _SIXTEEN_BIT_MODES


def is_image_name(name: str) -> bool:
    """True if ``name`` has one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_hidden_name(name: str) -> bool:
    """True for dot-files/folders and macOS archive litter (``__MACOSX``)."""
    return name.startswith(".") or name == "__MACOSX"


def _sniff_format(path: str) -> str | None:
    """Name the format of a file our restricted decoders refused, if PIL knows it (header only)."""
    try:
        with Image.open(path) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any failure just means "unknown format"
        return None


def decode_bytes(mode: str, width: int, height: int) -> int:
    """Bytes a decode of a ``width x height`` image in PIL ``mode`` holds (see :data:`MAX_DECODE_BYTES`)."""
    per_pixel = 6 if mode in _SIXTEEN_BIT_MODES else _BYTES_PER_PIXEL.get(mode, 8)
    return width * height * per_pixel


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB"; 16-bit and 32-bit grayscale are scaled, not clipped, to 8 bits."""
    if img.mode == mode:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return img if mode == "L" else img.convert(mode)
    return img.convert(mode)


def decode_image(path: str, image_size: int, channels: int, *, display: str | None = None) -> np.ndarray:
    """Decode one image file to a ``[S, S]`` (channels 1) or ``[S, S, 3]`` uint8 array.

    Multi-frame files (GIF, TIFF) give their first frame; EXIF orientation is applied; alpha is
    dropped; colour to gray uses PIL's ITU-R 601-2 luma. See the module docstring for the resize.

    Args:
        path: The file to read.
        image_size: Side ``S`` of the square output.
        channels: 1 (gray) or 3 (RGB).
        display: How to name the file in errors (e.g. ``"data.zip!s1/1.png"``); defaults to ``path``.

    Raises:
        DatasetError: naming the file when it cannot be opened, is in an unsupported format, is
            larger than `MAX_IMAGE_PIXELS`, or is truncated/corrupt.
    """
    name = display or path
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{name}: image is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} allowed",
                    path=name,
                )
            needed = decode_bytes(img.mode, width, height)
            if needed > MAX_DECODE_BYTES:
                raise DatasetError(
                    f"{name}: a {width}x{height} {img.mode} image needs {needed // 2**20} MiB to decode, more "
                    f"than the {MAX_DECODE_BYTES // 2**20} MiB allowed",
                    path=name,
                )
            img.draft(mode, (image_size, image_size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            # Gray sources are resized while still one channel, then repeated (3x less work).
            gray = img.mode in _GRAY_MODES
            out = _to_mode(img, "L" if gray else mode)
            if out.size != (image_size, image_size):
                out = out.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(out, dtype=np.uint8)
            if gray and channels == 3:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            return arr
    except DatasetError:
        raise
    except UnidentifiedImageError as exc:
        fmt = _sniff_format(path)
        if fmt is not None:
            raise DatasetError(
                f"{name}: unsupported image format {fmt} (supported: {', '.join(ALLOWED_FORMATS)})",
                path=name,
            ) from exc
        raise DatasetError(
            f"{name}: cannot identify image file (corrupt or not an image)", path=name
        ) from exc
    except Exception as exc:  # noqa: BLE001 - PIL plugins raise many types on corrupt data
        raise DatasetError(f"{name}: cannot read image ({type(exc).__name__}: {exc})", path=name) from exc


def decode_images(
    paths: Sequence[str],
    image_size: int,
    channels: int,
    *,
    displays: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> np.ndarray:
    """Decode many files into one ``[N, S, S, C]`` uint8 array (threaded; PIL releases the GIL).

    Args:
        paths: Files to read, in output order.
        image_size: Output side ``S``.
        channels: 1 or 3.
        displays: Names for errors, parallel to ``paths``.
        num_workers: Decoder threads; default ``min(4, cpu_count)``, one thread for small inputs.

    Raises:
        DatasetError: for the first unreadable file in ``paths`` order.
    """
    n = len(paths)
    out = np.empty((n, image_size, image_size, channels), dtype=np.uint8)
    names = list(displays) if displays is not None else list(paths)

    def work(i: int) -> None:
        arr = decode_image(paths[i], image_size, channels, display=names[i])
        out[i] = arr if arr.ndim == 3 else arr[:, :, None]

    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    if workers <= 1 or n < 64:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="midre-decode") as pool:
            for _ in pool.map(work, range(n)):  # map re-raises the first failure in input order
                pass
    return out


@dataclass
class FolderScan:
    """Result of `scan_image_folder`.

    Attributes:
        root: The scanned folder.
        identities: Identity folder names, sorted (index = label).
        files: Per identity, image paths relative to ``root`` (POSIX style), sorted.
        rejected: Skipped entries (paths relative to ``root``) with the reason.
    """

    root: Path
    identities: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)
    rejected: list[RejectedFile] = field(default_factory=list)


def scan_image_folder(root: Path) -> FolderScan:
    """List an ImageFolder-style directory: ``root/<identity>/**/<image>``.

    Identity folders are sorted by name (label order, like ``torchvision.datasets.ImageFolder``),
    images inside each are found recursively and sorted by relative path. Hidden entries (names
    starting with '.', ``__MACOSX``), non-image files, files directly in ``root`` and symlinked
    sub-folders are skipped and listed in ``rejected``. No image is decoded here and no count is
    checked (see `check_identity_counts`).

    Raises:
        DatasetError: naming ``root`` when it is not a readable directory.
    """
    scan = FolderScan(root=root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(
            f"source: cannot list folder {root}: {exc}", path=str(root), field="source"
        ) from exc
    for entry in entries:
        if is_hidden_name(entry.name):
            scan.rejected.append(RejectedFile(entry.name, "hidden file or folder"))
        elif entry.is_dir():  # follows a symlink at the top level: the user pointed us at it
            scan.identities.append(entry.name)
            scan.files[entry.name] = _scan_identity(root, entry.name, scan.rejected)
        elif is_image_name(entry.name):
            scan.rejected.append(RejectedFile(entry.name, "image outside any identity folder"))
        else:
            scan.rejected.append(RejectedFile(entry.name, _not_image_reason(entry.name)))
    return scan


def _not_image_reason(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return f"not an image file ({ext or 'no extension'})"


def _scan_identity(root: Path, identity: str, rejected: list[RejectedFile]) -> list[str]:
    files: list[str] = []
    base = root / identity
    for dirpath, dirnames, filenames in os.walk(base, onerror=None, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        keep = []
        for d in dirnames:
            if is_hidden_name(d):
                rejected.append(RejectedFile(f"{rel_dir}/{d}", "hidden file or folder"))
            elif os.path.islink(os.path.join(dirpath, d)):
                rejected.append(RejectedFile(f"{rel_dir}/{d}", "symlinked folder not followed"))
            else:
                keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            rel = f"{rel_dir}/{f}"
            if is_hidden_name(f):
                rejected.append(RejectedFile(rel, "hidden file or folder"))
            elif not is_image_name(f):
                rejected.append(RejectedFile(rel, _not_image_reason(f)))
            else:
                files.append(rel)
    files.sort()
    return files


def check_identity_counts(scan: FolderScan, display_root: str, display_base: str | None = None) -> None:
    """Check there are >= 2 identities and every identity has >= 2 images.

    Args:
        scan: The folder listing.
        display_root: How to name the folder in errors.
        display_base: Prefix naming a path relative to the folder (default ``display_root + "/"``).

    Raises:
        DatasetError: naming the folder (no/too few identities) or the identity folder (too few images).
    """
    if not scan.identities:
        if not scan.rejected:
            raise DatasetError(f"source: folder {display_root} is empty", path=display_root, field="source")
        raise DatasetError(
            f"source: no identity sub-folders in {display_root} (expected one sub-folder of images per "
            f"identity; found only {len(scan.rejected)} skipped file(s), e.g. {scan.rejected[0].path!r})",
            path=display_root,
            field="source",
        )
    if len(scan.identities) < 2:
        raise DatasetError(
            f"source: {display_root} has only 1 identity folder ({scan.identities[0]!r}); "
            "at least 2 are needed",
            path=display_root,
            field="source",
        )
    for identity in scan.identities:
        n = len(scan.files[identity])
        if n < 2:
            where = f"{display_base if display_base is not None else display_root + '/'}{identity}"
            raise DatasetError(
                f"identity {identity!r} ({where}) has {n} image(s); at least 2 are needed "
                f"(one for train, one for test)",
                path=where,
            )
