"""A small in-process cache with a time-to-live whose misses are loaded once, not once per caller.

Hot request paths (the API key check, a served model's database record) remember their answer for
a few seconds. When such an entry expires under load, every request in flight misses at the same
moment; loading the value once per request (a "thundering herd") put 32 identical database
lookups in the thread pool at once and stalled all 32 clients of the serving benchmark for about
300 ms every time the entry expired. Here concurrent misses of one key share one load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Values remembered for ``ttl`` seconds (``ttl`` <= 0 remembers nothing); ``None`` is never stored.

    Args:
        ttl: seconds an entry lives.
        max_entries: when full, the cache is emptied (entries are cheap to reload).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}
        self._pending: dict[K, asyncio.Future[V | None]] = {}

    def get(self, key: K) -> V | None:
        """The live value of ``key``, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0 or value is None:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (value, time.monotonic() + self.ttl)

    def forget(self, key: K) -> None:
        """Drop ``key``; a load already under way still answers its callers but is not stored."""
        self._entries.pop(key, None)
        self._pending.pop(key, None)

    async def get_or_load(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The live value, or ``load()`` run once in the thread pool for all concurrent callers.

        An exception of ``load`` reaches every caller waiting on it and nothing is stored.
        """
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self._pending.get(key)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(self._load(key, load))
            self._pending[key] = pending
        # shield: a caller that goes away (client disconnect) does not cancel the others' load
        return await asyncio.shield(pending)

    async def _load(self, key: K, load: Callable[[], V | None]) -> V | None:
        try:
            value = await anyio.to_thread.run_sync(load)
        finally:
            current = self._pending.get(key) is asyncio.current_task()  # not forgotten meanwhile
            if current:
                del self._pending[key]
        if current:
            self.put(key, value)
        return value
