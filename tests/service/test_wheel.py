"""The built wheel, installed into fresh virtual environments, runs outside the source tree.

Two environments, each made from scratch in a temporary folder:

- ``midre[service]``: ``midre serve`` started in an empty folder answers ``GET /healthz`` (so the
  migrations, the Swagger UI assets and every service module ship in the wheel), and ``/docs`` loads
  its script from the package.
- the core alone: ``import midre.erasing`` (and ``midre``, ``midre.train``, ``midre.models``) works
  without FastAPI & co., the science commands parse, and a service command answers with one line
  that names the missing extra.

How torch gets there without a multi-GB download: the dependencies are installed with
``uv sync --frozen --offline --no-install-project`` into the new environment
(``UV_PROJECT_ENVIRONMENT``), i.e. exactly the locked versions, taken from uv's cache, which
``uv sync`` of the project filled; uv hardlinks them from its cache, so this takes about a second
on the same file system. Then the wheel itself goes in with ``uv pip install --offline
'<wheel>[service]'`` (its requirements are already satisfied, so nothing is fetched). Nothing from
the project's own ``.venv`` is shared. When uv's cache lacks a locked package (the resolver says so)
the test is skipped rather than downloading gigabytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.service._support import REPO, free_port, stop_group


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed")
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the running venv's and the service's settings."""
    drop = ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MIDRE_")}
    return env | extra


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``uv build --wheel`` of the working tree."""
    out = tmp_path_factory.mktemp("dist")
    result = _run([_uv(), "build", "--wheel", "--offline", "--out-dir", str(out), str(REPO)], REPO, _clean_env())
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("midre-*.whl")
    return path


def make_venv(wheel: Path, venv: Path, service: bool) -> Path:
    """A new environment with the locked dependencies (+ the service extra) and the wheel; its bin/."""
    uv = _uv()
    sync = [uv, "sync", "--project", str(REPO), "--frozen", "--offline", "--no-dev", "--no-install-project", "-q"]
    if service:
        sync += ["--extra", "service"]
    env = _clean_env(UV_PROJECT_ENVIRONMENT=str(venv))
    result = _run(sync, venv.parent, env)
    if result.returncode != 0 and "cache" in result.stderr:
        pytest.skip(f"uv's cache lacks a locked package; not downloading it: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr
    target = f"{wheel}[service]" if service else str(wheel)
    install = [uv, "pip", "install", "--offline", "-q", "--python", str(venv / "bin" / "python"), target]
    if not service:
        install.insert(3, "--no-deps")
    result = _run(install, venv.parent, _clean_env())
    assert result.returncode == 0, result.stderr
    return venv / "bin"


def test_wheel_ships_migrations_and_entry_point(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    # the checkout's top-level migrations/ is mapped into the package, every revision included
    revisions = sorted(p.name for p in (REPO / "migrations" / "versions").glob("*.py"))
    assert revisions and all(f"services/db/migrations/versions/{name}" in names for name in revisions)
    assert "services/db/migrations/env.py" in names and "services/db/migrations/script.py.mako" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "midre = midre.cli:main" in text and "services.cli:register" in text
    assert not any(n.startswith(("tests/", "migrations/")) for n in names)


@pytest.mark.slow  # builds and installs a wheel in a fresh venv
def test_wheel_with_service_extra_serves(wheel: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    bin_dir = make_venv(wheel, tmp_path / "venv", service=True)
    installed = time.monotonic() - started
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = _clean_env(MIDRE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="2")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(bin_dir / "midre"), "serve", "--port", str(port), "--no-worker"], cwd=empty,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert health is not None and health.status_code == 200, log_path.read_text()[-3000:]
        assert health.json()["status"] == "ok"
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200  # migrated from the packaged scripts
        assert httpx.get(f"{url}/static/apidocs/swagger-ui-bundle.js", timeout=10).status_code == 200
    finally:
        stop_group(proc)
    log_text = log_path.read_text()
    assert "alembic" not in log_text.lower(), log_text
    assert list(empty.iterdir()) == [], "midre serve wrote into its working folder"
    print(f"service venv ready in {installed:.1f}s; served in {time.monotonic() - started:.1f}s")


@pytest.mark.slow  # builds and installs a wheel in a fresh venv
def test_core_only_install_imports_science_and_explains_service(wheel: Path, tmp_path: Path) -> None:
    bin_dir = make_venv(wheel, tmp_path / "venv", service=False)
    python = str(bin_dir / "python")
    env = _clean_env()
    code = (
        "import importlib.util as u\n"
        "assert u.find_spec('fastapi') is None and u.find_spec('sqlalchemy') is None, 'not a core-only venv'\n"
        "import midre, midre.erasing, midre.train, midre.models, midre.data, midre.attacks\n"
        "print(midre.erasing.__name__)\n"
    )
    imported = _run([python, "-c", code], tmp_path, env)
    assert imported.returncode == 0, imported.stderr
    assert "midre.erasing" in imported.stdout

    helped = _run([str(bin_dir / "midre"), "train", "--help"], tmp_path, env)
    assert helped.returncode == 0, helped.stderr
    listed = _run([str(bin_dir / "midre"), "--help"], tmp_path, env)
    assert listed.returncode == 0 and "serve" in listed.stdout

    served = _run([str(bin_dir / "midre"), "serve"], tmp_path, env)
    assert served.returncode == 2
    lines = served.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in served.stderr, served.stderr
    assert "pip install 'midre[service]'" in lines[0] and lines[0].startswith("midre serve:")
    jobs = _run([str(bin_dir / "midre"), "jobs", "list"], tmp_path, env)
    assert jobs.returncode == 2 and "midre[service]" in jobs.stderr
