"""Benchmark serving: dynamic batching vs one request per forward, in one run.

A ``cnn-small`` is trained on ``digits`` in-process (1 epoch) and registered as a succeeded job of a
fresh tenant in a temporary MIDRE_HOME (embedded SQLite); then the API is started twice with
uvicorn on loopback, once with ``MIDRE_SERVE_BATCHING=true`` and once with ``false`` (every request
its own forward), and N concurrent clients (default 32, each with its own keep-alive connection)
send the same single-image predict request (JSON base64) for a fixed time. Printed per mode:
requests per second, p50 / p99 latency, mean images per forward (from /metrics), and the CPU time
per request of the server process and of the load generator; then the throughput ratio.

The load generator is a plain asyncio HTTP/1.1 client (about 0.2 ms of CPU per request): it shares
the machine's cores with the server, and ``httpx`` spent about 3 ms per request on it, as much as
the server itself. Both modes get byte-identical requests at the same concurrency; every answer's
status is checked and each connection's first answer is parsed.

Run: ``uv run python benchmarks/serving.py`` (options: ``--clients``, ``--seconds``,
``--image-size``, ``--device``, ``--wait-ms``, ``--threads``, ``--rounds``). The goal on CPU is a
ratio >= 3 for cnn-small.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _http import HttpClient  # benchmarks/_http.py (the script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def register_model(home: Path, image_size: int) -> tuple[str, str, bytes]:
    """Train a model, store it as a succeeded job; returns (job id, API key, one PNG)."""
    from PIL import Image

    from midre.data import DatasetSpec, load_dataset
    from midre.train import TrainConfig, train
    from services.db.keys import create_api_key
    from services.db.migrate import upgrade
    from services.db.models import Artifact, Job
    from services.db.session import session_scope
    from services.db.types import new_id
    from services.settings import Settings
    from services.storage import LocalStore

    settings = Settings(home=home)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    data = DatasetSpec(source="digits", image_size=image_size, channels=3)
    out = home / "trained"
    train(TrainConfig(data=data, arch="cnn-small", defense={"name": "midre", "a_h": 0.4}, epochs=1, device="cpu"), out)
    store = LocalStore(settings.storage_dir)
    job_id = new_id("job")
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "bench")
        tenant_id = session.execute(
            __import__("sqlalchemy").text("select tenant_id from api_keys where key_id = :k"),
            {"k": key.split("_")[1]},
        ).scalar_one()
        session.add(Job(id=job_id, tenant_id=tenant_id, kind="train", status="succeeded", spec={}, queue="cpu"))
        session.flush()
        for name, ctype in (("model.json", "application/json"), ("model.safetensors", "application/octet-stream")):
            blob = store.put_file(out / name)
            session.add(Artifact(job_id=job_id, name=name, size=blob.size, sha256=blob.sha256, content_type=ctype))
    arr = load_dataset(DatasetSpec(source="digits", image_size=32, channels=1)).test.images[0, 0].numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return job_id, key, buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, batching: bool, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")}
    env.update(
        MIDRE_HOME=str(home),
        MIDRE_SERVE_BATCHING=str(batching).lower(),
        MIDRE_SERVE_BATCH_WAIT_MS=str(args.wait_ms),
        MIDRE_SERVE_DEVICE=args.device,
        MIDRE_SERVE_THREADS=str(args.threads),
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "services.gateway.app:app", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env=env, cwd=REPO, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def predict_request(url: str, key: str, job_id: str, png: bytes) -> bytes:
    """The bytes of one predict request: JSON with one base64 image and ``top_k`` 3."""
    body = json.dumps({"images": [base64.b64encode(png).decode()], "top_k": 3}).encode()
    host = url.removeprefix("http://")
    head = (
        f"POST /v1/models/{job_id}/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(url: str, key: str, job_id: str, png: bytes, clients: int, seconds: float) -> list[float]:
    raw = predict_request(url, key, job_id, png)
    host, _, port = url.removeprefix("http://").partition(":")
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        http = HttpClient(host, int(port))
        first = True
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                status, body = await http.request(raw)
                if status != 200:
                    raise RuntimeError(f"{status}: {body[:500]!r}")
                latencies.append(time.perf_counter() - t)
                if first:  # one full check per connection: a real answer for the one image
                    answer = json.loads(body)
                    assert len(answer["predictions"]) == 1 and answer["usage"]["queries"] >= 1, answer
                    first = False
        finally:
            http.close()

    # This process trained a model: its heap is large, and a full garbage collection of it stalls
    # every client at once (measured: 250-350 ms, once or twice per run, the whole p99). Freeze it.
    gc.collect()
    gc.freeze()
    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        gc.unfreeze()
    return latencies


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` and its threads so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_mean(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^midre_serving_batch_images_sum (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^midre_serving_batch_images_count (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    return total / max(count, 1.0)


def forward_ceiling(home: Path, args: argparse.Namespace) -> dict[str, float]:
    """The most batching can gain in compute: the served model's forward alone, in this process,
    per image at batch 1 and at a batch of ``--clients`` images, with the server's intra-op
    threads; plus the FLOP rate each reaches (torch's FLOP counter on the eager model).

    If one image per forward already runs near the cores' arithmetic peak, no batcher can beat
    it by more than ``batch1 / batchN``, whatever the HTTP layer does.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from midre.checkpoint import load_checkpoint
    from services.serving.cache import for_serving
    from services.serving.config import ServingSettings

    device = torch.device(args.device if args.device != "auto" else ServingSettings().torch_device())
    model, card = load_checkpoint(home / "trained", device=device)  # what register_model stored
    model.eval()
    shape = (int(card["channels"]), int(card["image_size"]), int(card["image_size"]))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, *shape, device=device))
    flops = counter.get_total_flops()
    served, channels_last = for_serving(model, card, device)
    previous = torch.get_num_threads()
    threads = args.threads or ServingSettings().forward_threads()
    torch.set_num_threads(threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        per_image = {}
        for n in (1, args.clients):
            x = torch.rand(n, *shape, device=device).contiguous(memory_format=fmt)
            with torch.inference_mode():
                for _ in range(5):
                    served(x)
                times = []
                for _ in range(7):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(max(1, 64 // n)):
                        served(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append((time.perf_counter() - t0) / (max(1, 64 // n) * n))
            per_image[n] = statistics.median(times)
    finally:
        torch.set_num_threads(previous)
    one, many = per_image[1], per_image[args.clients]
    return {"flops": flops, "one_ms": 1000 * one, "many_ms": 1000 * many, "one_gflops": flops / one / 1e9,
            "many_gflops": flops / many / 1e9, "ceiling": one / many, "threads": threads}


def run_mode(home: Path, batching: bool, job: tuple[str, str, bytes], args: argparse.Namespace) -> dict[str, Any]:
    job_id, key, png = job
    proc, url = start_server(home, batching, args)
    try:
        asyncio.run(load(url, key, job_id, png, args.clients, 2.0))  # warm-up: load the model, JIT paths
        server0, client0 = process_cpu_s(proc.pid), time.process_time()
        start = time.perf_counter()
        lat = asyncio.run(load(url, key, job_id, png, args.clients, args.seconds))
        elapsed = time.perf_counter() - start
        server1, client1 = process_cpu_s(proc.pid), time.process_time()
        lat.sort()
        return {
            "rps": len(lat) / elapsed,
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "requests": len(lat),
            "batch": batch_mean(url),
            "server_cpu_ms": None if server0 is None or server1 is None else 1000 * (server1 - server0) / len(lat),
            "client_cpu_ms": 1000 * (client1 - client0) / len(lat),
        }
    finally:
        stop_server(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--wait-ms", type=float, default=0.0,
                        help="MIDRE_SERVE_BATCH_WAIT_MS: how long a lone request waits for company")
    parser.add_argument("--threads", type=int, default=0,
                        help="MIDRE_SERVE_THREADS for both modes (0: the server's default, all cores but one)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each mode this many times, alternating (B S S B ...), and report medians")
    args = parser.parse_args()
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.2f} (1 min) {load5:.2f} (5 min)", flush=True)
    with tempfile.TemporaryDirectory(prefix="midre-serving-bench-") as tmp:
        home = Path(tmp)
        print(f"training cnn-small on digits at {args.image_size}px (1 epoch) ...", flush=True)
        job = register_model(home, args.image_size)
        c = forward_ceiling(home, args)
        print(f"forward alone ({args.device}, {c['threads']} threads, {c['flops'] / 1e6:.0f} MFLOP per image): "
              f"batch 1 {c['one_ms']:.2f} ms/image ({c['one_gflops']:.0f} GFLOP/s), batch {args.clients} "
              f"{c['many_ms']:.2f} ms/image ({c['many_gflops']:.0f} GFLOP/s): batching can gain at most "
              f"{c['ceiling']:.2f}x in compute", flush=True)
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        order = [True, False]
        for _ in range(args.rounds):
            for batching in order:
                name = "dynamic batching" if batching else "one request per forward"
                r = run_mode(home, batching, job, args)
                runs[batching].append(r)
                cpu = f"server {r['server_cpu_ms']:.2f}" if r["server_cpu_ms"] is not None else "server ?"
                print(
                    f"{name:>24}: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                    f"({r['requests']} requests, {r['batch']:.1f} images/forward, {args.clients} clients, "
                    f"{args.device}; CPU per request: {cpu} ms, load generator {r['client_cpu_ms']:.2f} ms)",
                    flush=True,
                )
            order.reverse()
        rps = {mode: statistics.median(r["rps"] for r in rs) for mode, rs in runs.items()}
        ratio = rps[True] / rps[False]
        what = "" if args.rounds == 1 else f" (medians of {args.rounds} rounds)"
        print(f"throughput ratio (batching / one per forward): {ratio:.2f}x{what}  (goal >= 3x on CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
