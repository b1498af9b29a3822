"""Artifact storage: one interface, two stores (a local folder, an S3-compatible object store), and the
factory that picks one from the settings (``MIDRE_STORAGE_URL``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from services.storage.base import StoreUnavailable
from services.storage.local import LocalStore, StoredBlob, sha256_file

if TYPE_CHECKING:
    from services.settings import Settings

_STORES: dict[tuple[object, ...], LocalStore] = {}
_LOCK = threading.Lock()


def open_store(settings: Settings) -> LocalStore:
    """The store of these settings, one per process and configuration: the local data folder, or with
    ``MIDRE_STORAGE_URL=s3://...`` the object store with that folder as this machine's bounded cache."""
    key = (settings.storage_url, settings.s3_endpoint_url, str(settings.storage_dir), settings.cache_max_bytes,
           settings.s3_multipart_bytes, settings.s3_timeout_s)
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            if settings.storage_url:
                from services.storage.s3 import S3Store

                store = S3Store(settings.storage_url, settings.storage_dir, endpoint_url=settings.s3_endpoint_url,
                                cache_max_bytes=settings.cache_max_bytes, multipart_bytes=settings.s3_multipart_bytes,
                                timeout_s=settings.s3_timeout_s, presign_s=settings.s3_presign_s)
            else:
                store = LocalStore(settings.storage_dir)
            _STORES[key] = store
        return store


__all__ = ["LocalStore", "StoreUnavailable", "StoredBlob", "open_store", "sha256_file"]
