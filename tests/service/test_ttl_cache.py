"""The service's TTL cache: concurrent misses of one key share one load (no thundering herd)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.ttl_cache import TTLCache


def _counting_loader(value, delay: float = 0.05):
    calls = []
    lock = threading.Lock()

    def load():
        with lock:
            calls.append(threading.get_ident())
        time.sleep(delay)
        if isinstance(value, Exception):
            raise value
        return value

    return load, calls


def test_concurrent_misses_share_one_load_and_the_value_is_kept_for_ttl() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=0.3)
    load, calls = _counting_loader("tenant")

    async def main() -> None:
        got = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(32)))
        assert got == ["tenant"] * 32
        assert len(calls) == 1
        assert await cache.get_or_load("k", load) == "tenant" and len(calls) == 1  # a hit
        await asyncio.sleep(0.35)  # expired: loaded again, once
        await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(8)))
        assert len(calls) == 2

    asyncio.run(main())


def test_failures_reach_every_waiter_and_are_not_stored() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=10)
    load, calls = _counting_loader(RuntimeError("database down"))
    none_load, none_calls = _counting_loader(None)

    async def main() -> None:
        results = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and len(calls) == 1
        assert cache.get("k") is None
        assert await cache.get_or_load("bad-key", none_load) is None
        assert await cache.get_or_load("bad-key", none_load) is None
        assert len(none_calls) == 2  # None (an unknown API key) is never remembered

    asyncio.run(main())


def test_forget_during_a_load_keeps_its_answer_out_of_the_cache() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=10)
    load, calls = _counting_loader("old policy", delay=0.1)

    async def main() -> None:
        pending = asyncio.ensure_future(cache.get_or_load("k", load))
        await asyncio.sleep(0.02)
        cache.forget("k")  # e.g. the owner changed the model's policy meanwhile
        assert await pending == "old policy"
        assert cache.get("k") is None

    asyncio.run(main())


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_ttl_of_zero_remembers_nothing(ttl: float) -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=ttl)
    load, calls = _counting_loader("v", delay=0)

    async def main() -> None:
        await cache.get_or_load("k", load)
        await cache.get_or_load("k", load)

    asyncio.run(main())
    assert len(calls) == 2
