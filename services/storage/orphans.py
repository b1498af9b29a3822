"""Clean-up of what a crash or a failed request leaves in the store, and the uploads still in flight.

Three things can outlive the request or job that made them:

* a **partial upload** (``uploads/<tenant>/upload-<host>~<pid>-*``): the API process was killed while
  the body streamed in. Its name says which process wrote it, so one whose process is gone (same
  host) is deleted at once; any other is deleted once untouched for ``MIDRE_ORPHAN_GRACE_S``;
* an **extraction folder** (``datasets/<id>``) without its dataset row: the API died between
  extracting and saving; deleted once older than the grace period;
* a **blob** (``blobs/<sha[:2]>/<sha>``) no artifact refers to: its upload or job failed at the
  database step, or a redelivered job replaced its artifacts; and a ``.incoming-*`` copy a killed
  ``put_file`` left. Deleted once older than the grace period (a writer stores blobs first and
  commits their rows right after, well within it). With an object store, the same holds for its blobs;
* a **working folder** (``work/<job>``) of a job that has ended: with an object store every machine that ran
  one of the job's units keeps a working copy, and only the one that finished the job deletes its own.

:func:`sweep` runs in every reaper pass (partial uploads each time, the rest at most every quarter
of the grace period) and when the API starts. :func:`pending_upload_bytes` lets the storage quota
count a tenant's uploads in flight.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.models import Artifact, Dataset
from services.db.types import host_id

log = logging.getLogger(__name__)

UPLOADS = "uploads"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_OWNER = re.compile(r"^upload-(?P<host>.+)~(?P<pid>\d+)-")


def scratch_prefix() -> str:
    """File name prefix of a scratch upload written by this process (``upload-<host>~<pid>-``)."""
    return f"upload-{_SAFE.sub('_', host_id())}~{os.getpid()}-"


def tenant_upload_dir(root: Path, tenant_id: str | None) -> Path:
    """A tenant's scratch folder for uploads in flight (``uploads/`` itself without a tenant)."""
    base = Path(root) / UPLOADS
    return base / _SAFE.sub("_", tenant_id) if tenant_id else base


def _owner_gone(name: str) -> bool:
    """True when ``name`` was written by a process of this host that no longer exists."""
    found = _OWNER.match(name)
    if found is None or found["host"] != _SAFE.sub("_", host_id()):
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def pending_upload_bytes(root: Path, tenant_id: str, exclude: Path | None = None) -> int:
    """Bytes of the tenant's uploads in flight (every API process sharing the store), minus ``exclude``."""
    total = 0
    folder = tenant_upload_dir(root, tenant_id)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if exclude is not None and entry.path == str(exclude):
            continue
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


@dataclass
class SweepCounts:
    """What one sweep deleted."""

    uploads: int = 0
    datasets: int = 0
    blobs: int = 0
    work: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.uploads or self.datasets or self.blobs or self.work)


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _unlink(path: Path, counts: SweepCounts) -> bool:
    try:
        size = path.lstat().st_size
        path.unlink()
    except FileNotFoundError:
        return False
    counts.bytes += size
    return True


def sweep_uploads(root: Path, cutoff: float, counts: SweepCounts) -> None:
    """Delete partial uploads whose process is gone or that were untouched since ``cutoff``."""
    base = Path(root) / UPLOADS
    if not base.is_dir():
        return
    for path in base.rglob("*"):
        if path.is_file() and (_owner_gone(path.name) or _old(path, cutoff)) and _unlink(path, counts):
            counts.uploads += 1


def sweep_datasets(root: Path, sessions: sessionmaker[Session], cutoff: float, counts: SweepCounts) -> None:
    """Delete extraction folders older than ``cutoff`` whose dataset row does not exist."""
    base = Path(root) / "datasets"
    if not base.is_dir():
        return
    candidates = {p.name: p for p in base.iterdir() if p.is_dir() and not p.is_symlink() and _old(p, cutoff)}
    if not candidates:
        return
    with sessions() as session:
        known = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(list(candidates)))))
    for name, path in candidates.items():
        if name not in known:
            shutil.rmtree(path, ignore_errors=True)
            counts.datasets += 1


def sweep_blobs(root: Path, sessions: sessionmaker[Session], cutoff: float, counts: SweepCounts) -> None:
    """Delete blobs older than ``cutoff`` that no artifact refers to, and stale ``.incoming-*`` copies."""
    base = Path(root) / "blobs"
    if not base.is_dir():
        return
    old = [p for p in base.rglob("*") if p.is_file() and _old(p, cutoff)]
    if not old:
        return
    with sessions() as session:  # read after listing: a blob committed meanwhile is kept
        referenced = set(session.scalars(select(Artifact.sha256).distinct()))
    for path in old:
        orphan = path.name.startswith(".incoming-") or path.name not in referenced
        if orphan and _old(path, cutoff) and _unlink(path, counts):  # re-checked: put_file may have just replaced it
            counts.blobs += 1


def sweep_remote_blobs(store: Any, sessions: sessionmaker[Session], cutoff: float,
                       counts: SweepCounts) -> None:
    """Delete an object store's blobs older than ``cutoff`` that no artifact refers to."""
    old = [sha for sha, modified in store.list_blobs() if modified < cutoff]
    if not old:
        return
    with sessions() as session:
        referenced = set(session.scalars(select(Artifact.sha256).distinct()))
    for sha in old:
        if sha not in referenced:
            store.delete(sha)
            counts.blobs += 1


def sweep_work(root: Path, sessions: sessionmaker[Session], counts: SweepCounts) -> None:
    """Delete this machine's working folders of jobs that have ended (or no longer exist)."""
    from services.db.jobs import TERMINAL
    from services.db.models import Job

    base = Path(root) / "work"
    if not base.is_dir():
        return
    folders = {p.name: p for p in base.iterdir() if p.is_dir() and not p.is_symlink()}
    if not folders:
        return
    with sessions() as session:
        live = set(session.scalars(select(Job.id).where(Job.id.in_(list(folders)), Job.status.not_in(list(TERMINAL)))))
    for name, path in folders.items():
        if name not in live:
            shutil.rmtree(path, ignore_errors=True)
            counts.work += 1


_last_full: dict[str, float] = {}
_lock = threading.Lock()


def sweep(root: Path, sessions: sessionmaker[Session], grace_s: float, *, full: bool | None = None,
          store: Any = None) -> SweepCounts:
    """One clean-up pass over the store under ``root``; never raises (problems are logged and counted).

    Args:
        root: the store's root folder.
        sessions: the service database.
        grace_s: age after which an orphan is deleted (``MIDRE_ORPHAN_GRACE_S``).
        full: also sweep extraction folders, blobs and ended jobs' working folders; None does so when this
            process last did more than a quarter of ``grace_s`` ago (partial uploads are swept every time).
        store: an object store (:class:`services.storage.s3.S3Store`) whose blobs are swept too.
    """
    counts = SweepCounts()
    now = time.time()
    cutoff = now - grace_s
    with _lock:
        if full is None:
            full = now - _last_full.get(str(root), 0.0) > grace_s / 4
        if full:
            _last_full[str(root)] = now
    steps = [("uploads", lambda: sweep_uploads(root, cutoff, counts))]
    if full:
        steps += [("datasets", lambda: sweep_datasets(root, sessions, cutoff, counts)),
                  ("blobs", lambda: sweep_blobs(root, sessions, cutoff, counts)),
                  ("work", lambda: sweep_work(root, sessions, counts))]
        if store is not None and store.remote:
            steps.append(("stored blobs", lambda: sweep_remote_blobs(store, sessions, cutoff, counts)))
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a clean-up must never take its caller down
            log.warning("orphan sweep of %s failed: %s", name, exc)
            counts.errors.append(f"{name}: {exc}")
    if counts.any():
        log.info("orphans deleted: %d uploads, %d extraction folders, %d blobs (%d bytes), %d working folders",
                 counts.uploads, counts.datasets, counts.blobs, counts.bytes, counts.work)
    return counts
