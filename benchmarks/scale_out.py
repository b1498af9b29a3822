"""One study on a fleet whose machines share only PostgreSQL, Redis and an S3-compatible store: 1 worker, then
2 workers, against a baseline in the same run (1 worker on one shared data folder, no object store).

    uv run python benchmarks/scale_out.py [--seeds 2] [--epochs 3] [--steps 40] [--threads 1]

Every configuration starts a fresh API (``midre serve --no-worker``) and fresh ``midre worker`` processes, each
with its own empty ``MIDRE_HOME`` (so nothing is cached from a previous run), a fresh PostgreSQL database on
``$MIDRE_TEST_PG_ADMIN`` (default the local server), a fresh Redis key prefix and, for the object store runs,
the standalone ``moto[server]`` on loopback. Each worker runs one unit at a time with
``MIDRE_WORKER_THREADS=--threads``, like a machine of that many cores. Printed per configuration: the wall
time from the POST to ``succeeded``, the units' own seconds added up, units run at once on average, how many
units each worker ran, the bytes the store holds afterwards; then each wall's ratio to the baseline.
On one 2-core host the two workers share its cores with the API, PostgreSQL, Redis and the S3 server, so
this measures how units spread and what the object store costs, not a network between machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from tests.service._fleet import Fleet, S3Server  # noqa: E402
from tests.service.conftest import PG_ADMIN_URL, REDIS_URL  # noqa: E402


def study(args: argparse.Namespace) -> dict[str, Any]:
    """A digits pipeline: NoDef and MIDRE, ``--seeds`` seeds, MI-Face, one small judge."""
    return {
        "kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "device": "cpu",
        "defense": {"name": "midre", "a_h": 0.4}, "seeds": args.seeds, "attacks": ["mi-face"],
        "training": {"epochs": args.epochs, "image_size": 32, "batch_size": 64},
        "data": {"channels": 1, "max_images_per_identity": 60},
        "evaluation": {"arch": "cnn-small", "epochs": 2, "per_identity": 1, "identities": 4, "feature_identities": 0},
        "attack_budgets": {"mi-face": {"steps": args.steps}},
    }


def _database() -> str:
    name = f"midre_bench_{secrets.token_hex(4)}"
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop(url: str) -> None:
    from services.db.session import dispose_all

    dispose_all()
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def _seconds(unit: dict[str, Any]) -> float:
    if not unit["started_at"] or not unit["finished_at"]:
        return 0.0
    started, finished = (dt.datetime.fromisoformat(unit[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def run(label: str, workers: int, object_store: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="midre-scale-") as tmp:
        root = Path(tmp)
        s3 = S3Server(root / "s3.log") if object_store else None
        url = _database()
        fleet = None
        try:
            fleet = Fleet(root, s3, url, REDIS_URL, f"midre-bench-{secrets.token_hex(3)}-", workers=workers,
                          worker_threads=args.threads)
            start = time.perf_counter()
            job_id = fleet.submit(study(args))
            job = fleet.wait(job_id, timeout=3600)
            wall = time.perf_counter() - start
            if job["status"] != "succeeded":
                raise SystemExit(f"{label}: the study {job['status']}: {job.get('error')}")
            units = fleet.http.get(f"/v1/jobs/{job_id}/units").json()["items"]
            per_worker = Counter(fleet.worker_of(u["worker"]) for u in units if u.get("worker"))
            unit_s = sum(_seconds(u) for u in units)
            stored = 0
            if s3 is not None:
                pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=fleet.prefix)
                stored = sum(obj["Size"] for page in pages for obj in page.get("Contents") or [])
            return {"label": label, "wall": wall, "unit_s": unit_s, "units": len(units),
                    "per_worker": [per_worker.get(i, 0) for i in range(workers)], "stored": stored}
        finally:
            if fleet is not None:
                fleet.stop()
            if s3 is not None:
                s3.stop()
            _drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="MIDRE_WORKER_THREADS of each worker")
    args = parser.parse_args()
    rows = [run("shared folder, 1 worker (baseline)", 1, False, args),
            run("object store, 1 worker", 1, True, args),
            run("object store, 2 workers", 2, True, args)]
    base = rows[0]["wall"]
    print(f"{'configuration':36s} {'wall s':>7s} {'unit s':>7s} {'at once':>7s} {'units/worker':>13s} "
          f"{'stored MiB':>10s} {'ratio':>6s}")
    for row in rows:
        print(f"{row['label']:36s} {row['wall']:7.1f} {row['unit_s']:7.1f} {row['unit_s'] / row['wall']:7.2f} "
              f"{'/'.join(map(str, row['per_worker'])):>13s} {row['stored'] / 2**20:10.1f} {row['wall'] / base:5.2f}x")


if __name__ == "__main__":
    main()
