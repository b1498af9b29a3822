"""Artifact storage: one interface, two stores (a local folder, an S3-compatible object store), and the
factory that picks one from the settings (``MIDRE_STORAGE_URL``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from services.storage.base import StoreUnavailable
from services.storage.local import LocalStore, StoredBlob, sha256_file

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from services.settings import Settings
    from services.storage.orphans import SweepCounts

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


def sweep_store(settings: Settings, sessions: sessionmaker[Session] | None = None,
                full: bool | None = None) -> SweepCounts:
    """:func:`sweep` of the service's store with its settings (``MIDRE_ORPHAN_GRACE_S``): what the
    reaper calls every pass and the API when it starts."""
    from services.db.session import session_factory
    from services.storage.orphans import sweep

    sessions = sessions or session_factory(settings.db_url, settings.pool)
    return sweep(settings.storage_dir, sessions, settings.orphan_grace_s, full=full, store=open_store(settings))


__all__ = ["LocalStore", "StoreUnavailable", "StoredBlob", "open_store", "sha256_file", "sweep_store"]
