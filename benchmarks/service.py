"""Benchmark the service against the library, measured in one run.

1. Job wall time through the service (REST submit -> worker -> ``succeeded`` seen by polling) vs the
   same ``midre.train.train`` call in-process, on the same machine, one after the other. The goal is
   a ratio <= 1.05 for a job of >= 1 minute: the service adds a queue hop, DB writes per epoch,
   heartbeats and artifact hashing, none of which should matter next to training.
2. Latency of ``GET /v1/jobs/{id}`` (p50 / p99 / max, and requests per second) under N concurrent
   loopback clients (default 50), each with its own connection.

The service is ``midre serve`` in a temporary MIDRE_HOME (embedded: SQLite + file-system broker + one
worker process) unless MIDRE_DATABASE_URL / MIDRE_BROKER_URL point it at PostgreSQL / Redis.

Run: ``uv run python benchmarks/service.py`` (options: ``--epochs``, ``--image-size``, ``--clients``,
``--requests``, ``--device``). The defaults train ``cnn-small`` on ``digits`` at 32x32 for a job of
about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _http import HttpClient  # benchmarks/_http.py (the script's folder is on sys.path)
from _serve import Service  # benchmarks/_serve.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kind": "train",
        "dataset": "digits",
        "arch": "cnn-small",
        "defense": {"name": "midre", "a_h": 0.4},
        "training": {"epochs": args.epochs, "image_size": args.image_size, "batch_size": 64, "seed": 0},
        "device": args.device,
    }


def run_in_process(args: argparse.Namespace, out_dir: Path) -> float:
    """The library call the worker makes, timed in this process."""
    from midre.train import train
    from services.jobspec import bind, resolve

    cfg = bind(resolve(spec(args)), lookup=str)  # digits: no dataset or job to bind
    start = time.perf_counter()
    train(cfg, out_dir)
    return time.perf_counter() - start


def overhead_breakdown(client: httpx.Client, job_id: str) -> dict[str, float]:
    """Where the service's own time went, from the job's event timestamps (robust to CPU noise):
    ``queue`` = POST to claimed by a worker, ``run`` = claimed to the trainer's last event,
    ``finish`` = trainer's last event to ``succeeded`` (artifacts hashed and stored, metrics written)."""
    import datetime as dt

    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).raise_for_status().json()["items"]

    def at(event: dict[str, Any]) -> float:
        return dt.datetime.fromisoformat(event["created_at"]).timestamp()

    statuses = {e["data"].get("status"): e for e in events if e["type"] == "status"}
    done = max(at(e) for e in events if e["type"] != "status")
    return {
        "queue": at(statuses["running"]) - at(statuses["queued"]),
        "run": done - at(statuses["running"]),
        "finish": at(statuses["succeeded"]) - done,
        "callbacks": float(statuses["succeeded"]["data"].get("callback_seconds", float("nan"))),
    }


def run_through_service(client: httpx.Client, args: argparse.Namespace) -> tuple[float, str]:
    start = time.perf_counter()
    job = client.post("/v1/jobs", json=spec(args)).raise_for_status().json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    elapsed = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
    return elapsed, job["id"]


async def latency(url: str, key: str, path: str, clients: int, requests: int,
                  conditional: bool = False) -> tuple[list[float], float]:
    """``clients`` concurrent keep-alive connections, each sending ``requests`` GETs of ``path`` back
    to back (with ``conditional``, the ``ETag`` of the first answer as ``If-None-Match``, as a poller
    does). The lean client keeps the load generator's own CPU small next to the server's."""
    host, port = url.removeprefix("http://").split(":")
    etag = httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}).headers.get("etag")
    extra = f"If-None-Match: {etag}\r\n" if conditional and etag else ""
    raw = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n{extra}\r\n").encode()
    times: list[float] = []

    async def one_client() -> None:
        http = HttpClient(host, int(port))
        try:
            await http.request(raw)  # connect + warm up
            for _ in range(requests):
                t = time.perf_counter()
                status, _ = await http.request(raw)
                times.append(time.perf_counter() - t)
                if status not in (200, 304):
                    raise RuntimeError(f"GET {path} answered {status}")
        finally:
            http.close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return times, time.perf_counter() - start


def latency_table(url: str, key: str, job_id: str, clients: int, requests: int, rounds: int) -> None:
    """GET /v1/jobs/{id} (plain and conditional) against GET /healthz, the floor of this stack,
    interleaved over ``rounds`` so load on the machine hits all three alike; medians over rounds."""
    cases = {"GET /healthz (floor)": ("/healthz", False), "GET /v1/jobs/{id}": (f"/v1/jobs/{job_id}", False),
             "GET /v1/jobs/{id} + If-None-Match": (f"/v1/jobs/{job_id}", True)}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (path, conditional) in cases.items():
            times, wall = asyncio.run(latency(url, key, path, clients, requests, conditional))
            ms = [t * 1000 for t in times]
            results[name].append((statistics.median(ms), percentile(ms, 99), len(ms) / wall))
    floor = statistics.median(r[1] for r in results["GET /healthz (floor)"])
    print(f"{clients} concurrent loopback clients x {requests} requests, median of {rounds} rounds:")
    for name, rows in results.items():
        p50, p99, rps = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {name:36s} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  {rps:6.0f} req/s  p99 / floor {p99 / floor:5.2f}x")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="GETs per client")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds (interleaved, medians reported)")
    parser.add_argument("--latency-only", action="store_true", help="skip the training comparison: submit a job "
                        "(it stays queued: no worker) and measure the read latency only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="midre-bench-") as tmp:
        tmp_path = Path(tmp)
        print(f"job: cnn-small on digits {args.image_size}x{args.image_size}, {args.epochs} epochs, "
              f"MIDRE a_h=0.4, device {args.device}")
        home = tmp_path / "home"
        home.mkdir()
        service = Service(home, workers=0 if args.latency_only else 1, ready_s=180)
        try:
            key = service.create_key()
            if args.latency_only:
                with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                                  timeout=60) as client:
                    job_id = client.post("/v1/jobs", json=spec(args)).raise_for_status().json()["id"]
                latency_table(service.url, key, job_id, args.clients, args.requests, args.rounds)
                return 0
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60) as client:
                base_1 = run_in_process(args, tmp_path / "inproc-1")
                print(f"in-process midre.train.train     : {base_1:7.2f} s")
                via_service, job_id = run_through_service(client, args)
                print(f"through the service (REST->worker): {via_service:7.2f} s")
                base_2 = run_in_process(args, tmp_path / "inproc-2")
                print(f"in-process again                  : {base_2:7.2f} s")
                parts = overhead_breakdown(client, job_id)
            baseline = (base_1 + base_2) / 2
            print(f"ratio service / in-process        : {via_service / baseline:7.3f}x "
                  f"(goal <= 1.05; in-process spread {abs(base_1 - base_2) / baseline * 100:.1f}%)")
            outside = via_service - parts["run"]
            print(f"service time outside the library  : {outside:7.2f} s = queue {parts['queue']:.2f} s + "
                  f"finish {parts['finish']:.2f} s + polling/HTTP {outside - parts['queue'] - parts['finish']:.2f} s"
                  f" -> ratio {(baseline + outside) / baseline:.3f}x at this baseline")
            print(f"service time inside training      : {parts['callbacks']:7.2f} s in the progress / cancel "
                  f"callbacks (DB writes); estimated ratio {(baseline + outside + parts['callbacks']) / baseline:.3f}x")

            latency_table(service.url, key, job_id, args.clients, args.requests, args.rounds)
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
