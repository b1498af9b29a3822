"""Device slots of one machine: a training unit with ``training.devices: N`` runs only where N are free.

Every worker process of a machine shares its ``MIDRE_HOME``; slot ``i`` is free while nobody holds an
exclusive ``flock`` on ``$MIDRE_HOME/devices/slot-<i>.lock``. The kernel drops a lock when its process dies,
so a killed worker never leaks a slot. A GPU slot is a CUDA device index (the unit's processes see those
devices only, through ``CUDA_VISIBLE_DEVICES``); a CPU machine offers its cores by default.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from services.settings import Settings


def capacity(settings: Settings) -> int:
    """Devices this machine offers: ``MIDRE_WORKER_DEVICES``, else the visible CUDA devices, else its cores."""
    if settings.worker_devices:
        return settings.worker_devices
    if _has_cuda():
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


@contextlib.contextmanager
def hold(settings: Settings, count: int) -> Iterator[list[int] | None]:
    """Hold ``count`` free slots for the ``with`` block: yields their indices, or None when fewer are free now
    (the caller sends the unit on, to run later here or on another machine)."""
    if count <= 1:
        yield []
        return
    folder = Path(settings.home) / "devices"
    folder.mkdir(parents=True, exist_ok=True)
    held: list[tuple[int, int]] = []
    try:
        for index in range(capacity(settings)):
            fd = os.open(folder / f"slot-{index}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            held.append((index, fd))
            if len(held) == count:
                break
        if len(held) < count:
            yield None
            return
        yield [index for index, _ in held]
    finally:
        for _, fd in held:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def visible(indices: list[int]) -> Iterator[None]:
    """Let processes started in the block see only the CUDA devices ``indices`` (on a GPU machine)."""
    if not indices or not _has_cuda():
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in before.split(",")] if before else None  # slots index the devices we were given
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names[i] if names else str(i) for i in indices)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _has_cuda() -> bool:
    """Whether torch sees a usable CUDA device (False where torch or its driver cannot say)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


__all__ = ["capacity", "hold", "visible"]
