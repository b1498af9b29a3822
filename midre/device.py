"""Which device a job runs on: one rule for training, attacks, the pipeline and the serving runtime."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device named ``name``; ``"auto"`` is CUDA when present, else the CPU.

    A CUDA device that is not there is refused here, before any work, rather than by the first
    tensor moved to it.

    Raises:
        ValueError: CUDA was requested but no CUDA device is available, or ``name`` is no device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: {name!r} is not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was requested but no CUDA device is available")
    return device
