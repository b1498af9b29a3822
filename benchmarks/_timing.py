"""Timing helpers shared by the benchmark scripts (torch only: they run on a bare GPU machine too)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer sees it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``fn()`` (after one warm-up call), the device synchronised."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)
