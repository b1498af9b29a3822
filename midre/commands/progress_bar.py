"""A dependency-free text progress bar for the CLI, fed by :class:`midre.progress.ProgressEvent`."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from midre.progress import ProgressEvent


class ProgressBar:
    """Draws one line ``[#####.....]  45% train epoch 2/3 loss 0.41 acc 0.88`` on a terminal.

    On a non-terminal stream (CI logs, pipes) it prints one line per stage change or per 10%, so
    logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self._last_stage = ""
        self._last_decile = -1
        self._start = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        frac = min(max(event.fraction, 0.0), 1.0)
        filled = int(round(frac * self.width))
        parts = [f"[{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}%", event.stage]
        if event.epoch is not None and event.epochs:
            parts.append(f"epoch {event.epoch}/{event.epochs}")
        if event.step is not None and event.steps:
            parts.append(f"step {event.step}/{event.steps}")
        parts += [f"{k} {v:.4g}" for k, v in event.metrics.items()]
        if event.message:
            parts.append(event.message)
        parts.append(f"{time.monotonic() - self._start:.0f}s")
        line = "  ".join(parts)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:200])
            if frac >= 1.0:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if event.stage != self._last_stage or decile != self._last_decile or frac >= 1.0:
                self.stream.write(line + "\n")
            self._last_stage, self._last_decile = event.stage, decile
        self.stream.flush()
