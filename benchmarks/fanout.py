"""One small sweep through the embedded service with 1 worker, then with 2 workers (one thread each).

    uv run python benchmarks/fanout.py [--seeds 2] [--candidates "midre:a_h=0.4|0.8"] [--workers 1,2]

Each run starts ``midre serve --workers N`` in a fresh temporary ``MIDRE_HOME`` (SQLite + file
broker; no study cache carried over), with ``MIDRE_WORKER_THREADS=1``, submits the same ``sweep``
job over REST and polls until it succeeded. Printed per run: the wall time from the POST to
``succeeded``, the units' own seconds added up (from ``GET /v1/jobs/{id}/units``), and how many
units ran at once on average (unit-seconds / wall). Then the ratio of the walls (goal: <= 0.6x for
2 workers against 1 on two cores) and the load average before and after, since on a shared
machine other work changes the walls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _serve import Service  # benchmarks/_serve.py (the script's folder is on sys.path)


def sweep_spec(args: argparse.Namespace) -> dict[str, Any]:
    """A digits sweep: NoDef + the candidates, ``--seeds`` seeds, MI-Face, two small judges."""
    return {
        "kind": "sweep", "dataset": "digits", "arch": "cnn-small", "device": "cpu",
        "candidates": args.candidates, "seeds": args.seeds, "attacks": ["mi-face"],
        "training": {"epochs": args.epochs, "image_size": 32, "batch_size": 64},
        "data": {"channels": 1, "max_images_per_identity": 60},
        "evaluation": {"arch": "cnn-small", "epochs": 2, "per_identity": 1, "identities": 4, "feature_identities": 0},
        "attack_budgets": {"mi-face": {"steps": 40}},
    }


def _seconds(unit: dict[str, Any]) -> float:
    if not unit["started_at"] or not unit["finished_at"]:
        return 0.0
    started, finished = (dt.datetime.fromisoformat(unit[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def run(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One sweep on a fresh ``midre serve --workers N``; its wall time and unit figures."""
    with tempfile.TemporaryDirectory(prefix=f"midre-fanout-{workers}w-") as tmp:
        service = Service(Path(tmp), workers, env={"MIDRE_WORKER_THREADS": str(args.threads)}, inherit_settings=False)
        try:
            key = service.create_key()
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                start = time.perf_counter()
                job = client.post("/v1/jobs", json=sweep_spec(args)).raise_for_status().json()
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.5)
                    job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
                wall = time.perf_counter() - start
                if job["status"] != "succeeded":
                    raise RuntimeError(f"{workers} worker(s): job {job['status']}: {job['error']}")
                units = client.get(f"/v1/jobs/{job['id']}/units").raise_for_status().json()["items"]
        finally:
            service.stop()
    busy = sum(_seconds(u) for u in units)
    return {"workers": workers, "wall": wall, "units": len(units), "unit_seconds": busy, "parallel": busy / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default="midre:a_h=0.4|0.8", help="the sweep's grid (NoDef is added)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="MIDRE_WORKER_THREADS of every worker")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in this order")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"{os.cpu_count()} cores; {args.threads} thread(s) per worker", flush=True)
    results = []
    for n in counts:
        result = run(n, args)
        results.append(result)
        print(f"{n} worker(s): wall {result['wall']:.1f} s, {result['units']} units, unit-seconds "
              f"{result['unit_seconds']:.1f}, units running at once {result['parallel']:.2f}", flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    base = results[0]
    for result in results[1:]:
        print(f"wall ratio {result['workers']} vs {base['workers']} worker(s): {result['wall'] / base['wall']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
