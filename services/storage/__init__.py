"""Artifact storage: a small interface and a local content-addressed folder behind it."""

from services.storage.local import LocalStore, StoredBlob, sha256_file

__all__ = ["LocalStore", "StoredBlob", "sha256_file"]
