"""``midre worker --ping``, the compose worker healthcheck, against a real worker on Redis."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from services.db.migrate import upgrade
from tests.service._support import REPO, settings_env, stop_group, wait_for
from tests.service.conftest import REDIS_URL, make_settings

pytestmark = pytest.mark.service


def ping(env: dict[str, str], node: str, timeout: float = 3.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midre.cli", "worker", "--ping", "--hostname", node,
                           "--ping-timeout", str(timeout)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # starts a Redis worker to ping; /readyz's live-worker list is tested by default
def test_ping_answers_for_a_live_worker_only(redis_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", broker_url=REDIS_URL, broker_prefix=redis_prefix)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    env = settings_env(settings)
    node = f"ping{secrets.token_hex(3)}@%h"
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "midre.cli", "worker", "--queues", "cpu", "--hostname", node],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and " ready." in log_path.read_text(errors="replace"), 120,
                 what="the worker")
        alive = ping(env, node)
        assert alive.returncode == 0, (alive.stdout, alive.stderr)
        assert alive.stdout.strip().endswith(": pong")
        other = ping(env, f"nobody{secrets.token_hex(3)}@%h", timeout=1.0)
        assert other.returncode == 1 and "no reply" in other.stderr
    finally:
        stop_group(proc)
