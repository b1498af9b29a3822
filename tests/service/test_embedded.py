"""Embedded mode end to end, as a user runs it: ``midre serve`` (SQLite + file-system broker + a real
worker process), ``midre admin create-key``, ``midre jobs submit|wait|download``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service._support import (
    REPO,
    TRAIN_SPEC,
    ApiProcess,
    load_checkpoint,
    predict_digits_accuracy,
)
from tests.service.conftest import make_settings


def midre(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "midre.cli", *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """``midre serve`` (API + worker) on a free port with MIDRE_HOME in a temporary folder."""
    api = ApiProcess(make_settings(tmp_path / "home"), tmp_path / "serve.log", worker=True)
    try:
        api.wait_ready()
        yield api.url, api.env, api.log_path
    finally:
        api.stop(30.0)
    assert api.proc.returncode == 0, api.log()[-3000:]


# The default suite runs the same `midre serve` + worker + `admin create-key` + `jobs submit/wait` flow in
# tests/service/test_cli.py's fixture, and downloads with sha256 checks in test_ui_browser.py.
@pytest.mark.slow
def test_embedded_serve_with_cli(server: tuple[str, dict[str, str], Path], tmp_path: Path) -> None:
    url, env, log_path = server
    home = Path(env["MIDRE_HOME"])
    created = midre(env, "admin", "create-key", "--tenant", "e2e")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1].split()[-1]
    assert key.startswith("mk_")
    cli = ["--url", url, "--api-key", key]

    spec = TRAIN_SPEC | {"training": {**TRAIN_SPEC["training"], "epochs": 1}}
    submitted = midre(env, "jobs", "submit", json.dumps(spec), *cli)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1].split()[-1]
    assert job_id.startswith("job_")

    waited = midre(env, "jobs", "wait", job_id, "--timeout", "240", *cli)
    assert waited.returncode == 0, (waited.stdout, waited.stderr, log_path.read_text()[-4000:])
    assert "succeeded" in waited.stdout and "100.0%" in waited.stderr

    dest = tmp_path / "download"
    downloaded = midre(env, "jobs", "download", job_id, "--dest", str(dest), *cli)
    assert downloaded.returncode == 0, downloaded.stderr
    listing = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts", headers={"Authorization": f"Bearer {key}"}).json()
    for item in listing["items"]:
        assert hashlib.sha256((dest / item["name"]).read_bytes()).hexdigest() == item["sha256"]
    _, card = load_checkpoint(dest)
    assert card["defense"]["name"] == "midre"
    assert predict_digits_accuracy(dest) > 0.5

    status = midre(env, "jobs", "status", job_id, *cli)
    assert json.loads(status.stdout)["status"] == "succeeded"
    # Everything lives under MIDRE_HOME: the database, the file-system broker, the artifacts.
    assert (home / "midre.sqlite3").is_file()
    assert list((home / "broker" / "processed").glob("*.msg"))
    assert list((home / "data" / "blobs").rglob("*"))

    bad = midre(env, "jobs", "submit", json.dumps(TRAIN_SPEC | {"arch": "nope"}), *cli)
    assert bad.returncode == 1 and "arch" in bad.stderr
    unauthorized = midre(env, "jobs", "status", job_id, "--url", url, "--api-key", "mk_x_y")
    assert unauthorized.returncode == 1 and "401" in unauthorized.stderr
