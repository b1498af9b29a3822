"""What a client feels when others send hostile requests to the embedded service, on a loaded machine.

``midre serve --no-worker`` runs in a temporary MIDRE_HOME (SQLite + file-system broker). While
``--load`` busy processes keep the cores occupied (a loaded machine), a prober sends ``GET /healthz``
every 50 ms throughout, and one ordinary ``jobs`` key sends, one scenario after another:

1. an archive of ``--members`` one-byte junk ``.png`` members behind 9 real images to
   ``POST /v1/datasets`` (the refusal's answer time);
2. three bad model cards on a real torchvision ``resnet18`` weights file (``num_classes: 1000000``,
   ``image_size: 2048``, ``normalization.std: [NaN, NaN, NaN]``), each time with the API process's
   resident memory before and after;
3. 64 job submissions and 64 uploads of the good archive at once (statuses, wall time).

Baselines from the same run: ``/healthz`` with no request but the probes (before anything else), a
good archive of the same 9 images, and a good card on the same weights file (the model is built,
loaded and run once); the same torchvision state dict in torchvision's own key layout is sent too.
Goals: the refused archive answers within 10 s; the bad cards answer 422 within 2 s each with the
API's memory growing by under 100 MB; the burst all 201; ``/healthz`` never over 1 s.

Run: ``uv run python benchmarks/availability.py`` (``--members 30000``, ``--load 2``, ``--burst 64``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _serve import Service  # benchmarks/_serve.py (the script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROBE_EVERY_S = 0.05
TRAIN = {"kind": "train", "dataset": "digits", "arch": "cnn-small", "device": "cpu",
         "training": {"epochs": 1, "image_size": 16}}


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), ((seed * 37) % 256, (seed * 91) % 256, 128)).save(buf, format="PNG")
    return buf.getvalue()


def archive(junk: int) -> bytes:
    """9 real images in 3 identity folders, then ``junk`` one-byte members named like images."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(9):
            zf.writestr(f"faces/p{i % 3}/{i}.png", png(i))
        for i in range(junk):
            zf.writestr(f"faces/p{i % 3}/junk{i}.png", b"x")
    return buf.getvalue()


def resnet18_weights(layout: str) -> bytes:
    """A 10-class resnet18 state dict in the registry's own key layout or in torchvision's."""
    import torchvision
    from safetensors.torch import save

    from midre.models import create_model

    model = create_model("resnet18", 10, image_size=32) if layout == "own" else torchvision.models.resnet18(
        num_classes=10)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


#: The prober: its own process, so the benchmark's own work (sending bodies) cannot delay a probe.
PROBE = """
import sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=60) as client:
    while True:
        start = time.time()
        try:
            ok = client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        print(start, time.time() - start if ok else "inf", flush=True)
        time.sleep(float(sys.argv[2]))
"""


class Prober:
    """``GET /healthz`` every 50 ms from another process; each probe is filed under the phase it started in."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, url, str(PROBE_EVERY_S)], stdout=subprocess.PIPE,
                                     text=True)
        self.phases: list[tuple[str, float]] = [("idle", time.time())]

    def enter(self, phase: str) -> None:
        self.phases.append((phase, time.time()))

    def stop(self) -> dict[str, list[float]]:
        """Stop probing; every probe's time by phase."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=120)
        times: dict[str, list[float]] = {}
        for line in out.splitlines():
            start, took = line.split()
            phase = next((name for name, since in reversed(self.phases) if since <= float(start)), "idle")
            times.setdefault(phase, []).append(float(took))
        return times


async def timed(prober: Prober, phase: str, call: Callable[[], Awaitable[httpx.Response]]) -> tuple[int, float]:
    prober.enter(phase)
    start = time.perf_counter()
    response = await call()
    took = time.perf_counter() - start
    prober.enter("between")
    return response.status_code, took


async def scenarios(service: Service, key: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    good, hostile = archive(0), archive(args.members)  # every payload is ready before probing starts
    own, torchvision_layout = resnet18_weights("own"), resnet18_weights("torchvision")
    prober = Prober(service.url)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=1200) as client:
        await asyncio.sleep(5.0)  # the baseline of /healthz: no request but the probes

        async def upload(name: str, data: bytes) -> httpx.Response:
            return await client.post("/v1/datasets", files={"file": (name, data, "application/zip")})

        for phase, data in (("good archive (baseline)", good), (f"archive of {args.members} junk members", hostile)):
            status, took = await timed(prober, phase, lambda d=data: upload("faces.zip", d))
            rows.append({"phase": phase, "status": status, "seconds": took})

        weights = own
        base = {"arch": "resnet18", "num_classes": 10, "image_size": 32, "channels": 3}
        cards = [("good card (baseline)", base, weights),
                 ("card num_classes 1000000", {**base, "num_classes": 1_000_000}, weights),
                 ("card image_size 2048", {**base, "image_size": 2048}, weights),
                 ("card std NaN", {**base, "normalization": {"mean": [0.5] * 3, "std": [math.nan] * 3}}, weights),
                 ("good card, torchvision's keys", base, torchvision_layout)]
        for phase, card, data in cards:
            before = rss_mb(service.proc.pid)
            status, took = await timed(prober, phase, lambda c=card, d=data: client.post(
                "/v1/models", files={"file": ("w.safetensors", d)}, data={"card": json.dumps(c)}))
            rows.append({"phase": phase, "status": status, "seconds": took,
                         "rss_mb": rss_mb(service.proc.pid) - before})

        burst_phase = f"{args.burst} submissions + {args.burst} uploads"

        async def burst() -> httpx.Response:
            answers = await asyncio.gather(
                *[client.post("/v1/jobs", json={**TRAIN, "training": {**TRAIN["training"], "seed": i}},
                              headers={"Idempotency-Key": f"burst-{i}"}) for i in range(args.burst)],
                *[upload(f"faces{i}.zip", good) for i in range(args.burst)])
            rows.append({"phase": burst_phase, "statuses": Counter(r.status_code for r in answers)})
            return answers[0]

        _, took = await timed(prober, burst_phase, burst)
        rows[-1]["seconds"] = took
    times_by_phase = prober.stop()
    rows.insert(0, {"phase": "idle"})
    for row in rows:
        times = times_by_phase.get(row["phase"]) or [math.nan]
        row["healthz_p50"], row["healthz_max"], row["probes"] = statistics.median(times), max(times), len(times)
    rows[0]["phase"] = "no request (baseline)"
    return rows


def report(rows: list[dict[str, Any]], load: int) -> None:
    print(f"embedded service (SQLite), {load} busy processes on the machine's cores meanwhile")
    print(f"{'scenario':34s} {'answer':>16s} {'time':>8s} {'API RSS':>9s} {'/healthz p50 / max (probes)':>30s}")
    for row in rows:
        status = row.get("statuses") and ", ".join(f"{n}x {s}" for s, n in sorted(row["statuses"].items()))
        status = status or (str(row["status"]) if "status" in row else "")
        seconds = f"{row['seconds']:.2f} s" if "seconds" in row else ""
        rss = f"{row['rss_mb']:+.0f} MB" if "rss_mb" in row else ""
        probes = f"{row['healthz_p50'] * 1000:.0f} / {row['healthz_max'] * 1000:.0f} ms ({row['probes']})"
        print(f"{row['phase']:34s} {status:>16s} {seconds:>8s} {rss:>9s} {probes:>30s}")
    idle_p50, idle_max = rows[0]["healthz_p50"], rows[0]["healthz_max"]
    worst = max(r["healthz_max"] for r in rows[1:])
    bad_cards = [r for r in rows if r["phase"].startswith("card ")]
    burst = rows[-1]
    hostile = next(r for r in rows if "junk" in r["phase"])
    print(f"worst /healthz under hostile requests {worst * 1000:.0f} ms (goal <= 1000 ms); with no request: "
          f"p50 {idle_p50 * 1000:.0f} ms, max {idle_max * 1000:.0f} ms")
    print(f"hostile archive: {hostile['status']} in {hostile['seconds']:.2f} s (goal: refused within 10 s)")
    print(f"burst: {dict(burst['statuses'])} in {burst['seconds']:.2f} s (goal: all 201)")
    print(f"bad cards: {[r['status'] for r in bad_cards]} in at most {max(r['seconds'] for r in bad_cards):.2f} s, "
          f"API RSS +{max(r['rss_mb'] for r in bad_cards):.0f} MB at most (goal: 422 within 2 s, < 100 MB); "
          f"median card time {statistics.median(r['seconds'] for r in bad_cards):.2f} s vs the good card's "
          f"{next(r['seconds'] for r in rows if r['phase'].startswith('good card')):.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=30_000, help="junk members of the hostile archive")
    parser.add_argument("--load", type=int, default=2, help="busy processes loading the machine meanwhile")
    parser.add_argument("--burst", type=int, default=64, help="job submissions, and as many uploads, at once")
    args = parser.parse_args()
    busy: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="midre-avail-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        service = Service(home, workers=0, inherit_settings=False, ready_s=180)
        try:
            key = service.create_key()
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
            rows = asyncio.run(scenarios(service, key, args))
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
            service.stop()
    report(rows, args.load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
