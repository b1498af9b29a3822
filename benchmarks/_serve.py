"""``midre serve`` in a subprocess for the service benchmarks, waited on until the API and every
worker are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``midre serve --workers N`` (``N = 0``: the API alone) with its home in ``home``.

    Args:
        home: the service's ``MIDRE_HOME`` (database, broker folder, store, ``serve.log``).
        workers: worker processes to start and wait for.
        env: extra environment variables (e.g. ``MIDRE_WORKER_THREADS``).
        inherit_settings: keep the caller's ``MIDRE_*`` variables (e.g. a PostgreSQL database URL);
            ``False`` starts from the embedded defaults.
    """

    def __init__(self, home: Path, workers: int = 1, env: dict[str, str] | None = None,
                 inherit_settings: bool = True, ready_s: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "serve.log"
        base = os.environ if inherit_settings else {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")}
        self.env = {**base, "MIDRE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
        worker_args = ["--workers", str(workers)] if workers else ["--no-worker"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "midre.cli", "serve", "--port", str(self.port), *worker_args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text())
            try:
                up = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and self.log_path.read_text(errors="replace").count(" ready.") >= workers:
                return
            time.sleep(0.3)
        raise TimeoutError("service not ready:\n" + self.log_path.read_text())

    def create_key(self) -> str:
        out = subprocess.run([sys.executable, "-m", "midre.cli", "admin", "create-key", "--tenant", "bench"],
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1].split()[-1]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
