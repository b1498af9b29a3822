"""The serving state of one API process: model cache, forward executor, batchers, metrics."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from services.serving.accounting import UsageMeter
from services.serving.batcher import DynamicBatcher
from services.serving.cache import LoadedModel, ModelCache, for_serving, load_from_store
from services.serving.config import ServingSettings
from services.serving.export import FORMATS, export_model
from services.storage import LocalStore

log = logging.getLogger(__name__)


def _set_threads(n: int) -> None:
    torch.get_num_threads()  # torch's lazy per-thread init first, or it later undoes the next line
    torch.set_num_threads(n)


def freeze_heap() -> None:
    """Collect garbage once, then exempt every object alive now from the cyclic garbage collector.

    A serving process holds a large, long-lived heap (torch, FastAPI, SQLAlchemy, the loaded
    models); every full (generation 2) collection walks all of it while the event loop and the
    forward thread stand still. Measured in the API process on 2 cores: 250 ms per full
    collection, one every few seconds under load, which stalled all 32 benchmark clients at once
    (p99 latency 310 ms). Frozen objects are still freed by reference counting; the previous
    freeze is undone first so that cycles of evicted models are collected here.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServingRuntime:
    """Everything a predict request needs besides the database, built lazily once per app.

    Args:
        settings: the ``MIDRE_SERVE_*`` settings.
        store: the artifact store the checkpoints are in.
        sessions: session factory of the service database (query accounting).
    """

    def __init__(
        self, settings: ServingSettings, store: LocalStore, sessions: Callable[[], Session] | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.usage: UsageMeter | None = (
            UsageMeter(sessions, enabled=settings.usage_flush_s > 0, lease=settings.usage_lease)
            if sessions is not None else None
        )
        self._flusher: asyncio.Task[None] | None = None
        self.device = torch.device(settings.torch_device())
        # One forward thread: forwards run one after another, each with `forward_threads` intra-op
        # threads (default: all cores but one, which the event loop needs for HTTP, JSON and
        # decoding; on 2 cores two intra-op threads and the loop fight over the cores).
        self.executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="midre-forward",
            initializer=_set_threads,
            initargs=(settings.forward_threads(),),
        )
        # torch's thread count is per thread, but set_num_threads also sets the default of threads
        # that start later: start the forward thread now, then put that default back.
        default_threads = torch.get_num_threads()
        self.executor.submit(int).result()
        torch.set_num_threads(default_threads)
        self.cache = ModelCache(
            settings.cache_models,
            lambda card_sha, weights_sha: load_from_store(store, card_sha, weights_sha, self.device),
            self.device,
            on_evict=self._evicted,
            prepare=for_serving,
        )
        self._cards: dict[str, dict[str, Any]] = {}
        self._export_lock = threading.Lock()
        self.batch_rows: Histogram | None = None
        self.images: Counter | None = None
        self.rejected: Counter | None = None

    # -- metrics ---------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry, tenant_registry: CollectorRegistry) -> None:
        """Per-process serving metrics (the DB-backed query counts are collected separately); series
        labelled with a model's job id go to ``tenant_registry`` (shown to the operator only)."""
        self.batch_rows = Histogram(
            "midre_serving_batch_images",
            "Images per model forward (dynamic batching)",
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.images = Counter(
            "midre_serving_images", "Images predicted by this process", ["job_id"], registry=tenant_registry
        )
        self.rejected = Counter(
            "midre_serving_budget_rejections",
            "Predict requests refused by this process because a query budget was spent",
            ["job_id"],
            registry=tenant_registry,
        )
        loaded = Gauge("midre_serving_models_loaded", "Models in this process's cache", registry=registry)
        loaded.set_function(lambda: len(self.cache))

    def _observe_batch(self, rows: int) -> None:
        if self.batch_rows is not None:
            self.batch_rows.observe(rows)

    # -- models ----------------------------------------------------------------------------------
    def card(self, card_sha: str) -> dict[str, Any]:
        """A checkpoint's card, read once per process (blobs are immutable)."""
        card = self._cards.get(card_sha)
        if card is None:
            with self.store.open(card_sha) as fh:
                card = json.load(fh)
            card.pop("history", None)
            if len(self._cards) > 1024:
                self._cards.clear()
            self._cards[card_sha] = card
        return card

    def model(self, card_sha: str, weights_sha: str) -> LoadedModel:
        """The loaded model (blocking on a miss: call off the event loop, or use :meth:`cached`)."""
        entry = self.cache.get(card_sha, weights_sha)
        if entry.batcher is None:
            freeze_heap()  # a model was just loaded: its objects are long-lived
            entry.batcher = DynamicBatcher(
                entry.probabilities,
                self.executor,
                wait_s=self.settings.batch_wait_ms / 1000.0,
                max_batch=self.settings.max_batch,
                enabled=self.settings.batching,
                on_batch=self._observe_batch,
            )
        return entry

    def cached(self, weights_sha: str) -> LoadedModel | None:
        """The loaded model when it is in the cache with its batcher, else None (never blocks long)."""
        entry = self.cache.peek(weights_sha)
        return entry if entry is not None and entry.batcher is not None else None

    @staticmethod
    def _evicted(entry: LoadedModel) -> None:
        if entry.batcher is not None:
            entry.batcher.close()

    async def predict(self, entry: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``[N, K]`` for the normalised batch ``x`` (batched with concurrent requests)."""
        assert entry.batcher is not None
        return await entry.batcher.submit(x)

    # -- export ----------------------------------------------------------------------------------
    def export(self, card_sha: str, weights_sha: str, fmt: str) -> Path:
        """The exported file of a checkpoint (made once, then kept next to the artifacts)."""
        dest = self.store.root / "exports" / f"{weights_sha}-{card_sha[:16]}{FORMATS[fmt]}"
        with self._export_lock:
            if not dest.is_file():
                model, card = load_from_store(self.store, card_sha, weights_sha, "cpu")
                export_model(model, card, fmt, dest)
        return dest

    # -- query accounting ------------------------------------------------------------------------
    def flush_usage(self) -> None:
        """Write the queries counted in memory (blocking; a no-op when nothing waits)."""
        if self.usage is not None and self.usage.dirty:
            self.usage.flush()

    def start(self) -> None:
        """Start writing the counted queries every ``usage_flush_s`` (call on the app's event loop)
        and freeze the start-up heap (:func:`freeze_heap`)."""
        freeze_heap()
        if self.usage is not None and self.usage.enabled and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="midre-usage-flush")

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.usage_flush_s)
            if self.usage is not None and self.usage.dirty:
                try:
                    await loop.run_in_executor(None, self.usage.flush)
                except Exception:  # noqa: BLE001 - the counts are kept for the next try
                    log.warning("writing the query accounting failed; retrying", exc_info=True)

    async def stop(self) -> None:
        """Stop the periodic writer and write what is left (the app's shutdown)."""
        task, self._flusher = self._flusher, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.usage is not None and self.usage.dirty:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.usage.flush)
            except Exception:  # noqa: BLE001 - logged with the count that is lost
                log.error("could not write %d counted queries at shutdown", self.usage.pending(), exc_info=True)

    def close(self) -> None:
        """Stop the batchers and the forward thread."""
        self.cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)


