"""Content-addressed artifact store on a local (or shared network) folder.

Blobs live at ``<root>/blobs/<sha[:2]>/<sha>``; the database maps ``(job, name)`` to a sha256, so
an artifact's bytes are verified by construction and identical files are stored once. The same
interface (``put_file``, ``open``, ``path``, ``delete``; ``pull_tree``/``push_tree`` for the named files of
datasets, job folders and caches) is what :class:`services.storage.s3.S3Store` implements over an
S3-compatible object store; here the folder is the store, so a tree needs no synchronising.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredBlob:
    """Where a stored file went and what it is."""

    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStore:
    """Artifacts as content-addressed blobs under ``root``.

    Args:
        root: the folder (created on demand); for several machines, a shared volume.
    """

    #: Whether files live elsewhere than this machine's folder (trees must be pulled and pushed).
    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_root = self.root / "blobs"

    def check(self) -> None:
        """Nothing to reach: the folder is local (an object store checks its bucket here)."""

    def describe(self) -> str:
        """Where the store is, for logs."""
        return str(self.root)

    def exists(self, sha256: str) -> bool:
        """Whether the store holds the blob."""
        return self._blob_path(sha256).is_file()

    def _blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blob_root / sha256[:2] / sha256

    def put_file(self, path: Path) -> StoredBlob:
        """Copy ``path`` into the store (hashing while copying) and return its digest and size."""
        self.blob_root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=self.blob_root)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = self._blob_path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, dest)  # atomic; an identical blob is simply overwritten
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredBlob(sha256=sha, size=size)

    def path(self, sha256: str) -> Path:
        """The local file of a blob (raises FileNotFoundError when missing)."""
        path = self._blob_path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"blob {sha256} is missing from {self.blob_root}")
        return path

    def open(self, sha256: str) -> BinaryIO:
        """Open a blob for reading."""
        return open(self.path(sha256), "rb")

    def verify(self, sha256: str) -> bool:
        """True when the stored bytes still hash to ``sha256``."""
        return sha256_file(self.path(sha256)) == sha256

    def delete(self, sha256: str) -> None:
        """Remove a blob (the caller checks nothing else references it)."""
        self._blob_path(sha256).unlink(missing_ok=True)

    # Trees of named files (a dataset's images, a job's working files, a tenant's cache): here the folder
    # under ``root`` is both the store and the working copy, so synchronising does nothing.

    def pull_tree(self, area: str, local: Path) -> int:
        """Bring ``area`` into ``local`` (nothing to do on a local folder); returns files fetched."""
        return 0

    def push_tree(self, local: Path, area: str) -> int:
        """Send ``local``'s new files to ``area`` (nothing to do on a local folder); returns files sent."""
        return 0

    def delete_tree(self, area: str) -> int:
        """Delete ``area`` from the store (its local folder is the caller's); returns objects deleted."""
        return 0

    # Folders next to the blobs, for things that are not content-addressed.

    def dataset_dir(self, dataset_id: str) -> Path:
        """Where an uploaded dataset is extracted."""
        return self.root / "datasets" / dataset_id

    def upload_dir(self, tenant_id: str | None = None) -> Path:
        """Scratch folder for uploads in flight (same filesystem as ``datasets``), one per tenant so
        its storage quota can count them (:func:`services.storage.orphans.pending_upload_bytes`)."""
        from services.storage.orphans import tenant_upload_dir

        path = tenant_upload_dir(self.root, tenant_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pending_upload_bytes(self, tenant_id: str, exclude: Path | None = None) -> int:
        """Bytes of the tenant's uploads in flight, ``exclude`` (the caller's own upload) left out."""
        from services.storage.orphans import pending_upload_bytes

        return pending_upload_bytes(self.root, tenant_id, exclude)

    def work_dir(self, job_id: str) -> Path:
        """A job's work folder: its outputs and resume checkpoints (kept across redeliveries)."""
        return self.root / "work" / job_id

    def remove_tree(self, path: Path) -> None:
        """Delete a folder under the store root (refuses anything outside it)."""
        path = Path(path).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"refusing to delete {path}: not under {self.root}")
        shutil.rmtree(path, ignore_errors=True)
