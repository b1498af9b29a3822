"""Artifacts, uploads, datasets and job working files in an S3-compatible object store.

``MIDRE_STORAGE_URL=s3://<bucket>/<prefix>`` (with ``MIDRE_S3_ENDPOINT_URL`` for MinIO, Ceph or another
S3-compatible server; credentials from the standard AWS chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION``, a profile, or an instance role). Under the prefix:

* ``blobs/<sha[:2]>/<sha>``: content-addressed files (artifacts, uploaded models), as in
  :class:`~services.storage.local.LocalStore`; an identical file is uploaded once;
* ``datasets/<id>/...``: an uploaded dataset's extracted images;
* ``work/<job>/out/...``: a running job's working files (what its units wrote), deleted when it ends;
* ``cache/<tenant>/...``: a tenant's cached judges, priors and surrogates.

Every machine keeps only a **bounded local cache**: blobs it read (least recently used evicted past
``MIDRE_CACHE_MAX_BYTES``) and the trees its units work in. Transfers are streamed between file and
network in parts (``s3transfer``: multipart past ``MIDRE_S3_MULTIPART_BYTES``), never a whole file in memory.

boto3 is the client: the AWS SDK itself, kept in step with S3's API, with the standard credential chain,
retries with back-off and multipart transfers built in, and tested against MinIO and other S3-compatible
servers by their makers. An unreachable store raises :class:`~services.storage.base.StoreUnavailable`
(the API answers 503, a unit is retried); a missing object raises :class:`FileNotFoundError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from services.settings import parse_storage_url
from services.storage.base import StoreUnavailable
from services.storage.local import CHUNK, LocalStore, StoredBlob, sha256_file

log = logging.getLogger(__name__)

#: Bookkeeping of a synchronised tree (what was last pulled or pushed), never synchronised itself.
SYNC_MANIFEST = ".midre-sync.json"
SYNC_LOCK = ".midre-sync.lock"


def _unavailable(exc: BaseException) -> bool:
    """Whether a client error means "the store cannot be reached or is failing" (not "no such object")."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError")
    return isinstance(exc, BotoCoreError | OSError)


def _missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound") or exc.response.get("ResponseMetadata", {}).get(
        "HTTPStatusCode") == 404


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turn the client's errors into the store's: FileNotFoundError, StoreUnavailable, or as they are."""
    from botocore.exceptions import ClientError

    try:
        yield
    except (FileNotFoundError, StoreUnavailable):
        raise
    except Exception as exc:
        if _missing(exc):
            raise FileNotFoundError(f"{what}: no such object in the store") from exc
        if _unavailable(exc):
            raise StoreUnavailable(f"the object store is unavailable ({what}: {type(exc).__name__}: {exc})") from exc
        if isinstance(exc, ClientError):
            raise StoreUnavailable(f"the object store refused {what}: {exc}") from exc
        raise


class S3Store(LocalStore):
    """The store on an S3-compatible service, with this machine's folder ``root`` as a bounded cache.

    Args:
        url: ``s3://<bucket>/<prefix>``.
        root: this machine's data folder (blob cache, extracted datasets, working copies of job folders).
        endpoint_url: an S3-compatible server's address (None: AWS S3).
        cache_max_bytes: the blob cache's size; least recently read blobs are evicted past it.
        multipart_bytes: files larger than this go up and down in parts of this size.
        timeout_s: connect and read timeout of one request (the client retries 3 times with back-off).
        presign_s: lifetime of a presigned download URL.
    """

    remote = True

    def __init__(self, url: str, root: Path, *, endpoint_url: str | None = None,
                 cache_max_bytes: int = 20 * 1024**3, multipart_bytes: int = 64 * 1024**2,
                 timeout_s: float = 30.0, presign_s: int = 300) -> None:
        super().__init__(root)
        self.url = url
        self.bucket, self.prefix = parse_storage_url(url)
        self.endpoint_url = endpoint_url or None
        self.cache_max_bytes = int(cache_max_bytes)
        self.multipart_bytes = max(5 * 1024**2, int(multipart_bytes))  # S3's smallest part
        self.timeout_s = float(timeout_s)
        self.presign_s = int(presign_s)
        self.cache_root = self.root / "blob-cache"
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._evict_lock = threading.Lock()

    # ------------------------------------------------------------------ the client

    @property
    def client(self) -> Any:
        """The boto3 S3 client (one per store; boto3 clients are thread-safe)."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
                                retries={"max_attempts": 3, "mode": "standard"},
                                s3={"addressing_style": "path"} if self.endpoint_url else None)
                self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes,
                              max_concurrency=4, io_chunksize=CHUNK)

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def check(self) -> None:
        """Reach the bucket (``HeadBucket``): StoreUnavailable saying why when it cannot."""
        with _store_errors(f"bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)

    def describe(self) -> str:
        """Where the store is, for logs and /readyz (no credentials)."""
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    # ------------------------------------------------------------------ content-addressed blobs

    def _blob_key(self, sha256: str) -> str:
        self._blob_path(sha256)  # validates the digest
        return self.key("blobs", sha256[:2], sha256)

    def _cache_path(self, sha256: str) -> Path:
        self._blob_path(sha256)
        return self.cache_root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether the store holds the blob."""
        try:
            with _store_errors(f"blob {sha256}"):
                self.client.head_object(Bucket=self.bucket, Key=self._blob_key(sha256))
            return True
        except FileNotFoundError:
            return False

    def put_file(self, path: Path) -> StoredBlob:
        """Hash ``path`` (streamed) and upload it under its digest unless the store has it already."""
        path = Path(path)
        sha, size = sha256_file(path), path.stat().st_size
        if not self.exists(sha):
            with _store_errors(f"upload of blob {sha}"):
                self.client.upload_file(str(path), self.bucket, self._blob_key(sha), Config=self._transfer(),
                                        ExtraArgs={"Metadata": {"sha256": sha}})
        return StoredBlob(sha256=sha, size=size)

    def path(self, sha256: str) -> Path:
        """The blob as a file of this machine's cache, downloaded (streamed to disk, verified) if need be."""
        cached = self._cache_path(sha256)
        if cached.is_file():
            with contextlib.suppress(OSError):
                os.utime(cached)  # recently used: evicted last
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=cached.parent)
        os.close(fd)
        try:
            with _store_errors(f"blob {sha256}"):
                self.client.download_file(self.bucket, self._blob_key(sha256), tmp, Config=self._transfer())
            if sha256_file(Path(tmp)) != sha256:
                raise OSError(f"blob {sha256} came down with other bytes (damaged in the store or in transit)")
            os.replace(tmp, cached)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._evict(keep=cached)
        return cached

    def verify(self, sha256: str) -> bool:
        """True when the stored object's bytes hash to ``sha256`` (read from the store, not the cache)."""
        digest = hashlib.sha256()
        with _store_errors(f"blob {sha256}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._blob_key(sha256))["Body"]
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha256

    def delete(self, sha256: str) -> None:
        with _store_errors(f"deletion of blob {sha256}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._blob_key(sha256))
        self._cache_path(sha256).unlink(missing_ok=True)

    def presigned_url(self, sha256: str, filename: str, content_type: str | None = None) -> str:
        """A time-limited GET URL of the blob (``presign_s`` seconds), served as ``filename``."""
        params = {"Bucket": self.bucket, "Key": self._blob_key(sha256),
                  "ResponseContentDisposition": f'attachment; filename="{filename}"'}
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_s)

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as ``(sha256, last-modified epoch seconds)``, for the orphan sweep."""
        for obj in self._objects(self.key("blobs") + "/"):
            name = obj["Key"].rsplit("/", 1)[-1]
            yield name, obj["LastModified"].timestamp()

    def _evict(self, keep: Path | None = None) -> None:
        """Delete least recently used cached blobs until the cache fits ``cache_max_bytes`` (never ``keep``, the
        blob just fetched for a caller: a cache smaller than one file still serves that file)."""
        with self._evict_lock:
            files = []
            total = 0
            for path in self.cache_root.rglob("*"):
                with contextlib.suppress(OSError):
                    if path.is_file() and not path.name.startswith(".incoming-"):
                        st = path.stat()
                        total += st.st_size
                        if path != keep:
                            files.append((st.st_mtime, st.st_size, path))
            for _, size, path in sorted(files):
                if total <= self.cache_max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size

    # ------------------------------------------------------------------ trees (named files, not content-addressed)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        with _store_errors(f"listing of {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                yield from page.get("Contents") or []

    def pull_tree(self, area: str, local: Path) -> int:
        """Bring the objects under ``<prefix>/<area>/`` into ``local``: those it lacks, and those changed in the
        store since this machine last had them. A file changed here and not pushed yet is kept. Returns how
        many files came down."""
        local = Path(local)
        local.mkdir(parents=True, exist_ok=True)
        base = self.key(area) + "/"
        fetched = 0
        with _tree_lock(local):
            manifest = _read_manifest(local)
            for obj in self._objects(base):
                rel = _safe_rel(obj["Key"][len(base):])
                if rel is None:
                    continue
                target = local / rel
                known = manifest.get(rel)
                here = _stamp(target)
                if here is not None and (known is None or not _same(here, known)):
                    continue  # written on this machine since the last sync: ours is newer
                if here is not None and known is not None and known["etag"] == obj["ETag"]:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
                os.close(fd)
                try:
                    with _store_errors(f"{area}/{rel}"):
                        self.client.download_file(self.bucket, obj["Key"], tmp, Config=self._transfer())
                    os.replace(tmp, target)
                finally:
                    Path(tmp).unlink(missing_ok=True)
                size, mtime_ns, ino = _stamp(target) or (0, 0, 0)
                manifest[rel] = {"etag": obj["ETag"], "size": size, "mtime_ns": mtime_ns, "ino": ino}
                fetched += 1
            _write_manifest(local, manifest)
        return fetched

    def push_tree(self, local: Path, area: str) -> int:
        """Upload the files of ``local`` that are new or changed since the last pull or push to
        ``<prefix>/<area>/``. Returns how many went up."""
        local = Path(local)
        if not local.is_dir():
            return 0
        sent = 0
        with _tree_lock(local):
            manifest = _read_manifest(local)
            for path in sorted(local.rglob("*")):
                rel = path.relative_to(local).as_posix()
                if (_safe_rel(rel) is None or path.is_symlink() or not path.is_file()
                        or path.name.startswith((".incoming-", ".midre-sync"))):
                    continue
                stamp = _stamp(path)
                known = manifest.get(rel)
                if stamp is None or (known is not None and _same(stamp, known)):
                    continue
                key = self.key(area, rel)
                try:
                    with _store_errors(f"upload of {area}/{rel}"):
                        self.client.upload_file(str(path), self.bucket, key, Config=self._transfer())
                        etag = self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
                except FileNotFoundError:
                    continue  # a temporary file that its writer renamed meanwhile
                manifest[rel] = {"etag": etag, "size": stamp[0], "mtime_ns": stamp[1], "ino": stamp[2]}
                sent += 1
            _write_manifest(local, manifest)
        return sent

    def delete_tree(self, area: str) -> int:
        """Delete every object under ``<prefix>/<area>/``; returns how many."""
        keys = [obj["Key"] for obj in self._objects(self.key(area) + "/")]
        for start in range(0, len(keys), 1000):
            with _store_errors(f"deletion of {area}"):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
        return len(keys)


def _safe_rel(rel: str) -> str | None:
    """A relative path that stays inside its tree (no absolute, empty, '.' or '..' parts), or None."""
    if not rel or rel.startswith("/"):
        return None
    parts = PurePosixPath(rel).parts
    if any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        return None
    if parts[-1].startswith(".midre-sync"):
        return None
    return "/".join(parts)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file changed: size, modification time and inode (a file replaced by a rename, as the
    library writes its outputs, has a new inode even within the file system's clock tick)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if path.is_file() else None


def _same(stamp: tuple[int, int, int], known: dict[str, Any]) -> bool:
    return stamp == (known.get("size"), known.get("mtime_ns"), known.get("ino"))


def _read_manifest(local: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((local / SYNC_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(local: Path, manifest: dict[str, dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".midre-sync-", dir=local)
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh)
    os.replace(tmp, local / SYNC_MANIFEST)


@contextlib.contextmanager
def _tree_lock(local: Path) -> Iterator[None]:
    """One sync of a tree at a time on this machine (several worker processes share its folders)."""
    with open(local / SYNC_LOCK, "a+") as fh:
        started = time.monotonic()
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 5:
            log.info("waited %.1f s for another process's sync of %s", waited, local)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


__all__ = ["S3Store", "SYNC_MANIFEST", "parse_storage_url"]
