"""Migrations (upgrade head / downgrade base on SQLite and PostgreSQL, models == migrations), the
committed OpenAPI spec, and docker-compose validation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.db.migrate import downgrade, upgrade
from services.db.models import Base
from services.db.session import make_engine
from tests.service._support import REPO
from tests.service.conftest import PgDatabases

TABLES = {"tenants", "api_keys", "datasets", "jobs", "job_events", "metrics", "artifacts"}


def check_round_trip(url: str) -> None:
    upgrade(url)
    engine = make_engine(url, pooled=False)
    try:
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        downgrade(url, "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)  # and back up again: downgrade left nothing behind
        assert TABLES <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_sqlite(tmp_path: Path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'm.sqlite3'}")


@pytest.mark.service
def test_migrations_postgresql(pg_databases: PgDatabases) -> None:
    check_round_trip(pg_databases.create())


def test_openapi_spec_is_committed_and_current() -> None:
    from services.gateway.openapi import SPEC_PATH, render

    assert SPEC_PATH.is_file(), "run: uv run python -m services.gateway.openapi > api_spec/openapi.yaml"
    assert SPEC_PATH.read_text() == render(), (
        "api_spec/openapi.yaml is stale; regenerate it with "
        "`uv run python -m services.gateway.openapi > api_spec/openapi.yaml`"
    )
    doc = yaml.safe_load(SPEC_PATH.read_text())
    paths = doc["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{name}", "/v1/datasets",
                 "/v1/datasets/{dataset_id}", "/v1/models/{job_id}", "/healthz", "/readyz"):
        assert path in paths, path
    assert "Problem" in doc["components"]["schemas"]


def _compose_command() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return cmd
    return None


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = os.environ | {"POSTGRES_PASSWORD": "validation-only"}
    result = subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    # and with the generated override for 4 GPUs (scripts/compose_gpus.py), as the header says
    override = tmp_path / "docker-compose.gpus.yml"
    generated = subprocess.run([sys.executable, str(REPO / "scripts" / "compose_gpus.py"), "--gpus", "4"],
                               capture_output=True, text=True, cwd=REPO)
    assert generated.returncode == 0, generated.stderr
    override.write_text(generated.stdout)
    merged = subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "-f", str(override), "config"],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    assert {f"worker-gpu{k}" for k in range(4)} <= set(services)


def test_docker_compose_shape() -> None:
    """Checked without docker: the stack the issue asks for, wired the way the settings expect."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"migrate", "api", "redis", "postgres"} <= set(services)
    workers = {name: svc for name, svc in services.items() if name.startswith("worker")}
    assert len(workers) >= 2, "one worker service per GPU"
    for name in ("migrate", "api", *workers):
        env = services[name]["environment"]
        assert env["MIDRE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["MIDRE_BROKER_URL"].startswith("redis://")
        assert services[name]["build"]["dockerfile"] == "Dockerfile"

    # migrations: one one-shot service that everything else waits for; the API does not migrate itself
    assert services["migrate"]["command"] == ["midre", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name in ("api", *workers):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["environment"]["MIDRE_AUTO_MIGRATE"] == "false"
    api_command = " ".join(services["api"]["command"])
    assert "alembic" not in api_command and "migrate" not in api_command

    # one GPU per worker, each pinned to its own device, each with a healthcheck that pings it
    device_ids: list[str] = []
    nodes: list[str] = []
    for name, svc in workers.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        assert "count" not in devices[0], f"{name}: device_ids, not count, pins a worker to one GPU"
        assert len(devices[0]["device_ids"]) == 1, name
        device_ids += devices[0]["device_ids"]
        command = svc["command"]
        node = command[command.index("--hostname") + 1]
        nodes.append(node)
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "midre", "worker", "--ping"] and test[test.index("--hostname") + 1] == node, name
    assert len(set(device_ids)) == len(device_ids), f"two workers share a GPU: {device_ids}"
    assert len(set(nodes)) == len(nodes), f"two workers share a Celery node name: {nodes}"

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "uv sync --frozen" in dockerfile and "--extra service" in dockerfile
    # the image installs the checkout (editable), so `midre migrate` reads /app/migrations
    assert "COPY migrations ./migrations" in dockerfile


def test_compose_gpu_override_adds_distinct_workers() -> None:
    """scripts/compose_gpus.py: the override for 4 GPUs adds gpu2, gpu3 next to the base file's two."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_gpus", REPO / "scripts" / "compose_gpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    added = module.gpu_workers(base, 4)
    assert set(added) == {"worker-gpu2", "worker-gpu3"}
    merged = {name: svc for name, svc in (base["services"] | added).items() if name.startswith("worker")}
    ids = [svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0] for svc in merged.values()]
    assert sorted(ids) == ["0", "1", "2", "3"]
    assert added["worker-gpu3"]["healthcheck"]["test"][-1] == "gpu3@%h"
    assert added["worker-gpu3"]["command"][-1] == "gpu3@%h"


def test_every_setting_is_documented() -> None:
    from services.settings import Settings

    doc = (REPO / "docs" / "service.md").read_text()
    missing = [f"MIDRE_{name.upper()}" for name in Settings.model_fields if f"`MIDRE_{name.upper()}`" not in doc]
    assert not missing, f"docs/service.md lacks {missing}"
