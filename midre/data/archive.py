"""Safe extraction of uploaded ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` image archives.

Archives come from users (the web service passes uploads straight here), so extraction trusts
nothing in them:

* every member name is checked before use: absolute names (``/x``, ``C:x``), ``..`` components and
  NUL bytes refuse the whole archive, as do symlinks, hard links, devices, FIFOs and encrypted
  members (`DatasetError` naming the member); nothing is written for a refused archive and anything
  already written is removed again;
* more than ``max_files`` entries (of any kind) refuses the archive, counted from the member list
  before anything is created (a zip's central directory; a tar's headers, read in a first pass that
  writes nothing), so refusing a many-entry archive costs a listing, never the creation and removal
  of its files; every other check that needs no member data (names, types, sizes) runs then too;
* more than ``max_total_bytes`` uncompressed refuses it; the sizes the headers declare are summed
  first, and the bytes actually written are counted as well (a member may not produce more than its
  header says), so a zip bomb costs at most ``max_total_bytes`` of work and disk;
* files are only ever created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a destination that must
  be empty, at paths built from the checked components (no ``TarFile.extract``/``extractall``);
* hidden members (``.*``, ``__MACOSX``) and non-image members are skipped and reported, never
  written; so are images lying directly in the data root, outside any identity folder;
* a member named as an image whose first bytes are no image format's signature refuses the archive
  when it is reached, before its bytes are written (it could never decode): thousands of junk "images"
  cost one member's work, not thousands of files.

A single top-level folder wrapping the identity folders (``faces/s1/1.png``) is unwrapped: the
report's ``root`` points at ``dest/faces``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from midre.data.errors import DatasetError, RejectedFile
from midre.data.images import is_hidden_name, is_image_name

logger = logging.getLogger(__name__)

#: Archive file name endings `load_dataset` treats as archives (case-insensitive).
ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip", ".tar.gz", ".tgz", ".tar")
#: Default cap on the number of archive entries (files, folders, anything).
DEFAULT_MAX_FILES = 100_000
#: Default cap on the uncompressed size of an archive (2 GiB).
DEFAULT_MAX_TOTAL_BYTES = 2 * 2**30
#: An archive that declares more than this many times its own size, and over
#: :data:`RATIO_FLOOR_BYTES` uncompressed, is refused before anything is written: images are already
#: compressed, so such ratios are the mark of a decompression bomb, not of a face data set.
MAX_EXPANSION_RATIO = 100
RATIO_FLOOR_BYTES = 64 * 2**20

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Leading bytes of the formats `midre.data.images.ALLOWED_FORMATS` decodes (PGM/PPM: ``P`` + a digit).
_IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
    *(b"P" + bytes([c]) for c in b"1234567fF"),
)


def looks_like_image(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts like a PNG, JPEG, GIF, BMP, TIFF, WebP or PGM/PPM file."""
    return head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_archive_path(path: str | os.PathLike[str]) -> bool:
    """True if the file name ends with one of `ARCHIVE_SUFFIXES`."""
    return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class ExtractReport:
    """What `safe_extract` wrote (or `inspect_archive` would write).

    Attributes:
        archive: The archive path.
        dest: The destination folder (None for `inspect_archive`).
        root: The folder holding the identity folders: ``dest`` plus the unwrapped top-level folder
            (None for `inspect_archive`).
        root_prefix: The unwrapped wrapper folder(s), POSIX style, ``""`` if none.
        files: Image files written, POSIX paths relative to ``dest``, in archive order.
        identities: Images per identity folder (relative to ``root``), sorted by name.
        rejected: Skipped members (``path`` is the member name as stored in the archive) with reasons.
        entries: Entries in the archive (files, folders and everything else).
        total_bytes: Bytes written (for `inspect_archive`: bytes the headers declare for all files).
    """

    archive: str
    dest: str | None
    root: str | None
    root_prefix: str
    files: tuple[str, ...]
    identities: dict[str, int]
    rejected: tuple[RejectedFile, ...]
    entries: int
    total_bytes: int

    @property
    def images(self) -> int:
        """Number of image files extracted (or to be extracted)."""
        return len(self.files)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``rejected`` as ``{"path", "reason"}`` dicts, ``images`` included)."""
        return {
            "archive": self.archive,
            "dest": self.dest,
            "root": self.root,
            "root_prefix": self.root_prefix,
            "files": list(self.files),
            "identities": dict(self.identities),
            "images": self.images,
            "rejected": [r.to_dict() for r in self.rejected],
            "entries": self.entries,
            "total_bytes": self.total_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractReport:
        """Inverse of `to_dict`."""
        return cls(
            archive=data["archive"],
            dest=data["dest"],
            root=data["root"],
            root_prefix=data["root_prefix"],
            files=tuple(data["files"]),
            identities=dict(data["identities"]),
            rejected=tuple(RejectedFile(r["path"], r["reason"]) for r in data["rejected"]),
            entries=int(data["entries"]),
            total_bytes=int(data["total_bytes"]),
        )


@dataclass
class _Member:
    name: str
    kind: str  # "file" | "dir" | a reason the member type is refused
    size: int
    open: Callable[[], IO[bytes]] = field(repr=False)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        fmt = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir():
            kind = "dir"
        elif fmt == stat.S_IFLNK:
            kind = "symbolic link"
        elif fmt not in (0, stat.S_IFREG):
            kind = "special file (device, FIFO or socket)"
        elif info.flag_bits & 0x1:
            kind = "encrypted member"
        else:
            kind = "file"
        yield _Member(info.filename, kind, info.file_size, lambda info=info: zf.open(info))


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for info in tf:  # lazy: members are read one header at a time
        if info.isreg():
            kind = "file"
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symbolic link"
        elif info.islnk():
            kind = "hard link"
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = "special file (device or FIFO)"
        else:
            kind = "unsupported member type"

        def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
            fobj = tf.extractfile(info)
            if fobj is None:  # pragma: no cover - isreg() members always have data
                raise DatasetError(f"{tf.name}!{info.name}: member has no data", path=info.name)
            return fobj

        yield _Member(info.name, kind, info.size, opener)


def _check_expansion(label: str, declared: int, archive_bytes: int, at: str | None = None) -> None:
    """Refuse an archive whose members declare more than :data:`MAX_EXPANSION_RATIO` times its size."""
    if declared > RATIO_FLOOR_BYTES and declared > MAX_EXPANSION_RATIO * max(archive_bytes, 1):
        where = f" (at member {at})" if at else ""
        raise DatasetError(
            f"{label}: declares {declared} uncompressed bytes from {archive_bytes} archive bytes{where}, more "
            f"than {MAX_EXPANSION_RATIO}x: refused as a likely decompression bomb before anything was written",
            path=label,
            field="max_total_bytes",
        )


@contextmanager
def _open_archive(path: Path, max_files: int, max_total_bytes: int) -> Iterator[Iterator[_Member]]:
    label = str(path)
    if not path.is_file():
        raise DatasetError(f"archive: no such file: {label}", path=label, field="source")
    if path.name.lower().endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise DatasetError(f"{label}: not a valid zip archive ({exc})", path=label) from exc
        with zf:
            infos = zf.infolist()
            if len(infos) > max_files:
                raise DatasetError(
                    f"{label}: archive has {len(infos)} entries, more than max_files={max_files}",
                    path=label,
                    field="max_files",
                )
            declared = sum(i.file_size for i in infos if not i.is_dir())
            _check_expansion(label, declared, path.stat().st_size)
            if declared > max_total_bytes:
                raise DatasetError(
                    f"{label}: archive declares {declared} uncompressed bytes, more than "
                    f"max_total_bytes={max_total_bytes}",
                    path=label,
                    field="max_total_bytes",
                )
            yield _zip_members(zf)
    else:
        try:
            tf = tarfile.open(path, mode="r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{label}: not a valid tar archive ({exc})", path=label) from exc
        with tf:
            yield _tar_members(tf)


def _safe_parts(name: str, label: str) -> tuple[str, ...]:
    """Split a member name into safe components, or refuse the archive."""
    if "\x00" in name:
        raise DatasetError(f"{label}!{name!r}: member name contains a NUL byte", path=name)
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise DatasetError(f"{label}!{name}: absolute member path refused", path=name)
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DatasetError(
            f"{label}!{name}: member path escapes the archive ('..') and was refused", path=name
        )
    return parts


def _check_limits(max_files: object, max_total_bytes: object) -> None:
    for name, value in (("max_files", max_files), ("max_total_bytes", max_total_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"{name} must be a positive int, got {value!r}", field=name)


def _write_member(member: _Member, target: Path, label: str, budget: int) -> int:
    """Stream one member to ``target``; return bytes written. Refuses to exceed the header or budget."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError as exc:
        raise DatasetError(f"{label}!{member.name}: duplicate member", path=member.name) from exc
    except OSError as exc:
        raise DatasetError(f"{label}!{member.name}: cannot be written ({exc})", path=member.name) from exc
    written = 0
    with os.fdopen(fd, "wb") as out:
        try:
            with member.open() as src:
                first = src.read(_CHUNK)
                if not looks_like_image(first):
                    raise DatasetError(
                        f"{label}!{member.name}: not an image (its first bytes match no PNG, JPEG, GIF, BMP, TIFF, "
                        "WebP or PGM/PPM file)",
                        path=member.name,
                    )
                chunk = first
                while chunk:
                    written += len(chunk)
                    if written > member.size:
                        raise DatasetError(
                            f"{label}!{member.name}: member holds more data than its header's "
                            f"{member.size} bytes",
                            path=member.name,
                        )
                    if written > budget:
                        raise DatasetError(
                            f"{label}!{member.name}: archive expands past max_total_bytes",
                            path=member.name,
                            field="max_total_bytes",
                        )
                    out.write(chunk)
                    chunk = src.read(_CHUNK)
        except DatasetError:
            raise
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, RuntimeError, ValueError) as exc:
            raise DatasetError(f"{label}!{member.name}: corrupt member ({exc})", path=member.name) from exc
    return written


@dataclass
class _Tally:
    """What a pass over an archive's members found: image paths (as parts), rejected files, counts;
    ``archive_bytes`` (the archive's size on disk) bounds the expansion ratio."""

    archive_bytes: int
    images: list[tuple[str, ...]] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    seen: set[tuple[str, ...]] = field(default_factory=set)
    entries: int = 0
    declared: int = 0
    written: int = 0


def _process(archive: Path, dest: Path | None, max_files: int, max_total_bytes: int) -> ExtractReport:
    label = str(archive)
    tally = _Tally(archive_bytes=archive.stat().st_size if archive.is_file() else 0)
    try:
        with _open_archive(archive, max_files, max_total_bytes) as members:
            for member in members:
                _take(member, tally, archive, dest, max_files, max_total_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DatasetError(f"{label}: corrupt or truncated archive ({exc})", path=label) from exc
    prefix = _wrapper_prefix(tally.images)
    kept = _drop_loose_images(tally, prefix, dest)
    identities = dict(sorted(Counter(p[len(prefix)] for p in kept).items()))
    root = None if dest is None else str(dest.joinpath(*prefix))
    return ExtractReport(
        archive=label,
        dest=None if dest is None else str(dest),
        root=root,
        root_prefix="/".join(prefix),
        files=tuple("/".join(p) for p in kept),
        identities=identities,
        rejected=tuple(tally.rejected),
        entries=tally.entries,
        total_bytes=tally.written if dest is not None else tally.declared,
    )


def _take(member: _Member, tally: _Tally, archive: Path, dest: Path | None, max_files: int,
          max_total_bytes: int) -> None:
    """Check one member against every limit and rule, then count it as an image (written to ``dest``
    when given), a rejected file, or nothing (a folder). Raises DatasetError naming the member."""
    label = str(archive)
    tally.entries += 1
    if tally.entries > max_files:
        raise DatasetError(f"{label}: more than max_files={max_files} entries", path=label, field="max_files")
    parts = _safe_parts(member.name, label)
    if member.kind not in ("file", "dir"):
        raise DatasetError(f"{label}!{member.name}: {member.kind} refused", path=member.name)
    if member.kind == "dir" or not parts:
        return
    tally.declared += member.size
    _check_expansion(label, tally.declared, tally.archive_bytes, at=member.name)
    if tally.declared > max_total_bytes:
        raise DatasetError(
            f"{label}: more than max_total_bytes={max_total_bytes} uncompressed (at member {member.name})",
            path=member.name,
            field="max_total_bytes",
        )
    if any(is_hidden_name(p) for p in parts):
        tally.rejected.append(RejectedFile(member.name, "hidden file or folder"))
        return
    if not is_image_name(parts[-1]):
        ext = os.path.splitext(parts[-1])[1].lower()
        tally.rejected.append(RejectedFile(member.name, f"not an image file ({ext or 'no extension'})"))
        return
    if parts in tally.seen:
        raise DatasetError(f"{label}!{member.name}: duplicate member", path=member.name)
    tally.seen.add(parts)
    if dest is not None:
        tally.written += _write_member(member, dest.joinpath(*parts), label, max_total_bytes - tally.written)
    tally.images.append(parts)


def _wrapper_prefix(images: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The wrapper folders to unwrap: while every image sits >= 2 levels below one shared top folder."""
    prefix: tuple[str, ...] = ()
    while (
        images
        and all(len(p) >= len(prefix) + 3 for p in images)
        and len({p[len(prefix)] for p in images}) == 1
    ):
        prefix = (*prefix, images[0][len(prefix)])
    return prefix


def _drop_loose_images(tally: _Tally, prefix: tuple[str, ...], dest: Path | None) -> list[tuple[str, ...]]:
    """The images inside an identity folder below ``prefix``; the others are rejected (and their
    extracted files removed, their bytes uncounted)."""
    kept: list[tuple[str, ...]] = []
    for parts in tally.images:
        if len(parts) - len(prefix) < 2:
            tally.rejected.append(RejectedFile("/".join(parts), "image outside any identity folder"))
            if dest is not None:
                target = dest.joinpath(*parts)
                tally.written -= target.stat().st_size
                target.unlink()
        else:
            kept.append(parts)
    return kept


def inspect_archive(
    archive_path: str | os.PathLike[str],
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> ExtractReport:
    """Check an archive and report what `safe_extract` would write, without writing anything.

    Applies every check of `safe_extract` that needs no data (names, member types, entry count,
    declared sizes). A ``.tar.gz`` is decompressed once to read its headers.

    Returns:
        An `ExtractReport` with ``dest`` and ``root`` None and ``total_bytes`` = declared bytes.

    Raises:
        DatasetError: naming the archive, member or limit that refuses it.
    """
    _check_limits(max_files, max_total_bytes)
    return _process(Path(archive_path), None, max_files, max_total_bytes)


def safe_extract(
    archive_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> ExtractReport:
    """Extract the image files of an untrusted archive into ``dest``; see the module docstring.

    Args:
        archive_path: A ``.zip``, or a ``.tar``/``.tar.gz``/``.tgz`` (any tar compression Python reads).
        dest: Destination folder; created if missing, must be empty if it exists.
        max_files: Most archive entries accepted (all kinds).
        max_total_bytes: Most uncompressed bytes accepted (all files, images or not).

    Returns:
        An `ExtractReport` of the images written, the identities and the skipped members.

    Raises:
        DatasetError: naming the member or limit that refused the archive (nothing is left in
            ``dest``), or ``dest`` if it is not an empty folder.

    Example:
        >>> report = safe_extract("upload.zip", "/tmp/upload")  # doctest: +SKIP
        >>> report.identities, report.images, report.rejected  # doctest: +SKIP
    """
    _check_limits(max_files, max_total_bytes)
    archive = Path(archive_path)
    out = Path(dest)
    created = not out.exists()
    if not created and (not out.is_dir() or out.is_symlink() or any(out.iterdir())):
        raise DatasetError(f"dest: {out} must be an empty folder", path=str(out), field="dest")
    # Every check that needs no member data (count, names, types, declared sizes) runs before anything
    # is created: a tar lists its members only as it is read, so it is read once without writing.
    _process(archive, None, max_files, max_total_bytes)
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = _process(archive, out, max_files, max_total_bytes)
    except BaseException:
        _clear(out, remove_self=created)
        raise
    logger.info(
        "extracted %s: %d images, %d identities, %d skipped, %d bytes",
        archive,
        report.images,
        len(report.identities),
        len(report.rejected),
        report.total_bytes,
    )
    return report


def _clear(folder: Path, *, remove_self: bool) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if remove_self:
        folder.rmdir()
