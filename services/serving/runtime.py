"""The serving state of one API process: model cache, forward executor, batchers, metrics."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.serving.batcher import DynamicBatcher
from services.serving.cache import LoadedModel, ModelCache, load_from_store
from services.serving.config import ServingSettings
from services.serving.export import FORMATS, export_model
from services.storage import LocalStore


class ServingRuntime:
    """Everything a predict request needs besides the database, built lazily once per app.

    Args:
        settings: the ``MIDRE_SERVE_*`` settings.
        store: the artifact store the checkpoints are in.
    """

    def __init__(self, settings: ServingSettings, store: LocalStore) -> None:
        self.settings = settings
        self.store = store
        self.device = torch.device(settings.torch_device())
        if settings.threads:
            torch.set_num_threads(settings.threads)
        # One forward thread: forwards run one after another at full intra-op parallelism.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midre-forward")
        self.cache = ModelCache(
            settings.cache_models,
            lambda card_sha, weights_sha: load_from_store(store, card_sha, weights_sha, self.device),
            self.device,
            on_evict=self._evicted,
        )
        self._cards: dict[str, dict[str, Any]] = {}
        self._export_lock = threading.Lock()
        self.batch_rows: Histogram | None = None
        self.images: Counter | None = None
        self.rejected: Counter | None = None

    # -- metrics ---------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Per-process serving metrics (the DB-backed query counts are collected separately)."""
        self.batch_rows = Histogram(
            "midre_serving_batch_images",
            "Images per model forward (dynamic batching)",
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.images = Counter(
            "midre_serving_images", "Images predicted by this process", ["job_id"], registry=registry
        )
        self.rejected = Counter(
            "midre_serving_budget_rejections",
            "Predict requests refused by this process because a query budget was spent",
            ["job_id"],
            registry=registry,
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

    def close(self) -> None:
        """Stop the batchers and the forward thread."""
        self.cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)


