"""Smoke run of ``benchmarks/fuzz_api.py``: about 100 schemathesis-generated requests over every operation
of a live API (uvicorn in a thread on a free loopback port), with no 5xx answer, on the embedded
SQLite database and on PostgreSQL (which refuses more strings, e.g. a NUL character).

The full run (``uv run python benchmarks/fuzz_api.py``, ``--postgres ADMIN_URL`` for PostgreSQL)
sends over 1,000 requests and also seeds a trained model; this one seeds a data set, a queued job
and a spare key only.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import uvicorn

from services.db.keys import create_api_key
from services.db.session import dispose_all, session_scope
from services.gateway.app import create_app
from tests.service._support import REPO
from tests.service.conftest import make_settings


def load_fuzz_module() -> ModuleType:
    """``benchmarks/fuzz_api.py`` as the module ``fuzz_api`` (``benchmarks`` is not a package), loaded once."""
    if "fuzz_api" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fuzz_api", REPO / "benchmarks" / "fuzz_api.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fuzz_api"] = module  # its dataclasses look their module up while being created
        spec.loader.exec_module(module)
    return sys.modules["fuzz_api"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def live_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of an API served by uvicorn in a background thread, on each database."""
    fuzz_api = load_fuzz_module()
    database = {"database_url": request.getfixturevalue("pg_databases").create()} if request.param != "sqlite" else {}
    settings = make_settings(tmp_path / "home", **database)
    port = fuzz_api.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzz-smoke-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with session_scope(settings.db_url) as session:
            key = create_api_key(session, "fuzz")
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        dispose_all()


@pytest.mark.timeout(300)
def test_generated_requests_get_no_5xx(live_api: tuple[str, str]) -> None:
    fuzz_api = load_fuzz_module()
    base_url, key = live_api
    seeds = fuzz_api.seed_objects(base_url, key)
    assert httpx.get(f"{base_url}/v1/datasets/{seeds['dataset_id'][0]}",
                     headers={"Authorization": f"Bearer {key}"}).status_code == 200

    report = fuzz_api.fuzz(base_url, key, per_operation=5, seeds=seeds, seed=0, budget_s=60)
    print(fuzz_api.summary(report))  # shown with -rP / -s

    assert not report.stopped_early
    assert len(report.operations) >= 20, report.operations
    assert report.unfuzzed() == [], fuzz_api.summary(report)
    assert report.total >= 80, fuzz_api.summary(report)
    assert report.server_errors == 0, fuzz_api.summary(report)
