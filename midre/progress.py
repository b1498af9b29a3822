"""Progress reporting and cooperative cancellation shared by every long-running `midre` job.

Training, attacks and the pipeline all report through the same :class:`ProgressEvent`, so the CLI
can draw one kind of progress bar and the service worker can store one kind of event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class Cancelled(RuntimeError):
    """Raised inside a job when its ``should_stop`` callback asked it to stop.

    The job has saved whatever state lets it resume before raising.
    """


class AttackCancelled(Cancelled):
    """Raised by an attack (or the prior / surrogates it trains) whose ``should_stop`` returned True."""


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes:
        stage: what the job is doing ("load", "train", "eval", "attack", "report", "done", ...).
        fraction: progress of the whole job in [0, 1].
        message: one human-readable line.
        epoch, epochs, step, steps: position inside the stage, when it has one.
        metrics: numbers worth storing (loss, accuracy, ...), keyed by name.
    """

    stage: str
    fraction: float
    message: str = ""
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]
StopCallback = Callable[[], bool]


def no_progress(event: ProgressEvent) -> None:
    """Default callback: ignore progress."""


def never_stop() -> bool:
    """Default stop check: never asks to stop."""
    return False


def scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """Map a sub-job's fraction in [0, 1] onto [start, end] of the parent job."""

    def report(event: ProgressEvent) -> None:
        frac = start + (end - start) * min(max(event.fraction, 0.0), 1.0)
        progress(ProgressEvent(**{**event.to_dict(), "fraction": frac}))

    return report


class StepReporter:
    """Throttled progress + cooperative cancellation for an optimisation loop.

    Used by the attacks and by the priors and surrogates they train: about 50 events per loop,
    and ``should_stop`` polled at every step (raising :class:`AttackCancelled`).
    """

    def __init__(self, name: str, total: int, progress: ProgressCallback | None,
                 should_stop: StopCallback | None, stage: str = "attack") -> None:
        self.name = name
        self.total = max(1, total)
        self.progress = progress or no_progress
        self.should_stop = should_stop or never_stop
        self.stage = stage
        self.done = 0
        self._every = max(1, self.total // 50)

    def step(self, loss: float | None = None, message: str = "") -> None:
        self.done += 1
        if self.should_stop():
            raise AttackCancelled(f"{self.name}: stopped after {self.done} of {self.total} steps")
        if self.done % self._every == 0 or self.done == self.total:
            metrics = {} if loss is None or not math.isfinite(loss) else {"loss": float(loss)}
            self.progress(ProgressEvent(stage=self.stage, fraction=min(1.0, self.done / self.total),
                                        message=message or self.name, step=self.done, steps=self.total,
                                        metrics=metrics))
