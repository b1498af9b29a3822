"""``midre demo``, the README's main job, end to end on a fresh MIDRE_HOME (slow: ~2-3 minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service._support import REPO, settings_env
from tests.service.conftest import make_settings

pytestmark = pytest.mark.slow


def test_demo_runs_and_leaves_checkpoint_and_report(tmp_path: Path) -> None:
    env = settings_env(make_settings(tmp_path / "home"))
    for name in ("MIDRE_DATABASE_URL", "MIDRE_BROKER_URL", "MIDRE_DATA_DIR"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "midre.cli", "demo", "--epochs", "1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    checkpoint = Path(next(line for line in lines if "checkpoint:" in line).split("checkpoint:")[1].strip())
    report = Path(next(line for line in lines if "report:" in line).split("report:")[1].strip())
    assert checkpoint.is_file() and checkpoint.suffix == ".safetensors"
    assert report.is_file()
    assert lines[-1].startswith("done: results in ")
