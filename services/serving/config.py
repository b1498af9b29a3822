"""Serving settings, read from ``MIDRE_SERVE_*`` environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """How an API process serves models (each process has its own cache and batcher)."""

    model_config = SettingsConfigDict(env_prefix="MIDRE_SERVE_", extra="ignore", env_file=None)

    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'.")
    cache_models: int = Field(8, ge=1, description="Models kept loaded per process (least recently used go).")
    batching: bool = Field(True, description="Run requests for one model that arrive together in one forward.")
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a lone request waits for others before its forward starts. 0 (default): "
        "it runs at once, and the requests that arrive during that forward form the next batch; "
        "a window idles the forward thread (measured on 2 cores: 3 ms cost 19 % of throughput).",
    )
    max_batch: int = Field(256, ge=1, description="Most images in one forward.")
    max_images: int = Field(64, ge=1, description="Most images in one predict request.")
    max_image_bytes: int = Field(8 * 1024**2, ge=1, description="Largest encoded image accepted.")
    max_request_bytes: int = Field(
        64 * 1024**2, ge=1, description="Largest predict (/v1) or infer (/v2) request body read (413 above, "
        "before reading when declared, while streaming otherwise)."
    )
    default_top_k: int = Field(5, ge=1, description="Identities returned when the request names no top_k.")
    threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads for CPU forwards; 0: one fewer than the CPU cores (at least 1), "
        "so the event loop keeps a core.",
    )
    usage_flush_s: float = Field(
        0.5,
        ge=0,
        description="Models without a budget: count queries in memory and write them every this many "
        "seconds (and at shutdown); 0 writes every request. Budgeted models are always exact.",
    )
    usage_lease: int = Field(
        100,
        ge=0,
        description="Models without a budget: queries per API key counted in memory between two exact database "
        "charges. Bounds the overspend of a budget set on another replica while this one still believes the "
        "model unbudgeted (up to 2 s): at most this many queries per key and replica; 0 charges every request.",
    )

    def forward_threads(self) -> int:
        """torch intra-op threads of the forward thread (``threads``, or one fewer than the cores)."""
        if self.threads:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores - 1)

    def torch_device(self) -> str:
        """The device forwards run on."""
        from midre.device import resolve_device

        return str(resolve_device(self.device))


PolicyName = Literal["full", "top-k", "rounded", "label-only", "shield"]
POLICIES: tuple[str, ...] = ("full", "top-k", "rounded", "label-only", "shield")
