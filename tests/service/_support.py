"""Helpers shared by the service tests: settings -> env, worker processes, archives, polling."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.settings import Settings

REPO = Path(__file__).resolve().parents[2]

#: Fast timings so lost workers are noticed within seconds in tests.
FAST = {
    "heartbeat_s": 1.0,
    "stale_after_s": 8.0,
    "reaper_interval_s": 2.0,
    "cancel_poll_s": 0.2,
    "max_attempts": 3,
}

TRAIN_SPEC: dict[str, Any] = {
    "kind": "train",
    "dataset": "digits",
    "arch": "cnn-small",
    "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 2, "image_size": 16, "batch_size": 64, "seed": 0},
    "data": {"max_images_per_identity": 100},  # 1,000 of the 1,797 digits: faster on 2 cores
}


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``MIDRE_*`` environment that reproduces ``settings`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        env[f"MIDRE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class WorkerProcess:
    """A real ``midre worker`` process (own process group, so it can be SIGKILLed whole)."""

    def __init__(self, settings: Settings, log_path: Path, queues: str = "gpu,cpu") -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "midre.cli", "worker", "--queues", queues, "--concurrency", "1",
             "--loglevel", "INFO"],
            env=settings_env(settings),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the worker logs that it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), like an OOM kill or lost node."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self) -> None:
        """Ask for a warm shutdown and return at once (``stop`` waits for it)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 15.0) -> None:
        """Warm shutdown, then SIGKILL if it takes longer than ``grace``."""
        self.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._log.close()


def stop_group(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """:func:`services.cli.processes.stop_group` with the tests' longer grace (a clean exit is asserted after it)."""
    from services.cli.processes import stop_group as stop

    stop(proc, grace)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def load_checkpoint(folder: Path) -> tuple[Any, dict[str, Any]]:
    """``midre``'s checkpoint loader (the contract names ``midre.train.load_checkpoint``; it lives in
    ``midre.checkpoint``)."""
    import midre.train

    loader = getattr(midre.train, "load_checkpoint", None)
    if loader is None:
        from midre.checkpoint import load_checkpoint as loader
    return loader(folder)


def predict_digits_accuracy(folder: Path) -> float:
    """Load a downloaded checkpoint and return its accuracy on the test split it was trained with."""
    import torch

    from midre.data import DatasetSpec, load_dataset, to_float

    model, card = load_checkpoint(folder)
    splits = load_dataset(DatasetSpec.from_dict(card["config"]["data"]))
    with torch.no_grad():
        predicted = model(to_float(splits.test.images, splits.normalization)).argmax(1)
    return float((predicted == splits.test.labels).float().mean())


def png_bytes(seed: int, size: int = 12) -> bytes:
    """A small, valid PNG whose pixels depend on ``seed``."""
    from PIL import Image

    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    for i in range(size):
        img.putpixel((i, (i + seed) % size), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    """A zip archive of ``{name: data}``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz archive of ``{name: data}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def face_folder_members(identities: int = 3, per_identity: int = 4, root: str = "faces") -> dict[str, bytes]:
    """An ImageFolder layout: ``root/person_i/img_j.png`` plus a README that must be rejected."""
    members = {
        f"{root}/person_{i}/img_{j}.png": png_bytes(i * 10 + j)
        for i in range(identities)
        for j in range(per_identity)
    }
    members[f"{root}/README.txt"] = b"not an image"
    return members


def files_under(path: Path) -> list[Path]:
    """Every file below ``path`` (empty when it does not exist)."""
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProcess:
    """A real ``midre serve`` process on a free loopback port (own process group): the API alone, or
    with ``worker=True`` the API and its worker process, as a user starts it."""

    def __init__(self, settings: Settings, log_path: Path, worker: bool = False) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = settings_env(settings)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        serve = [sys.executable, "-m", "midre.cli", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            serve if worker else [*serve, "--no-worker"],
            env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``/readyz`` answers 200 (database and broker reachable)."""
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, what="the API to answer /readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace``."""
        stop_group(self.proc, grace)
        self._log.close()


def add_job(settings: Settings, spec: dict[str, Any] | None = None, **values: Any) -> str:
    """A job row (``spec``, default a ``train`` job) with its resolved config, on the ``cpu`` queue (``queued``
    unless ``values`` say otherwise), of the first tenant in the database (one is created with a key when
    there is none)."""
    from sqlalchemy import select

    from services.db.keys import create_api_key
    from services.db.models import ApiKey, Job
    from services.db.session import session_scope
    from services.db.types import new_id, utcnow
    from services.jobspec import resolve

    with session_scope(settings.db_url) as session:
        tenant_id = session.scalar(select(ApiKey.tenant_id).limit(1))
        if tenant_id is None:
            create_api_key(session, "t")
            tenant_id = session.scalar(select(ApiKey.tenant_id).limit(1))
        spec = spec or TRAIN_SPEC
        fields = {"status": "queued", "progress": 0.0, "attempt": 0, "cancel_requested": False,
                  "created_at": utcnow(), "resolved": resolve(spec), **values}
        job = Job(id=new_id("job"), tenant_id=tenant_id, kind=spec["kind"], spec=spec,
                  queue=settings.queue_name("cpu"), **fields)
        session.add(job)
        return job.id


def job_row(settings: Settings, job_id: str) -> Any:
    """The job's row as it is in the database now."""
    from services.db.models import Job
    from services.db.session import session_factory

    with session_factory(settings.db_url)() as session:
        return session.get(Job, job_id)


def delete_queues(dispatcher: Any, settings: Settings) -> None:
    """Remove this test's gpu/cpu queues and exchanges from an AMQP broker."""
    with dispatcher.celery.connection_for_write() as conn:
        for logical in ("gpu", "cpu"):
            with conn.channel() as channel:
                channel.queue_delete(settings.queue_name(logical))
                channel.exchange_delete(settings.queue_name(logical))


class InlineDispatcher:
    """A dispatcher for :func:`run_job_inline`: unit messages are kept, in order, to be run in this process."""

    def __init__(self, settings: Settings) -> None:
        from services.queue.dispatch import Dispatcher

        self.real = Dispatcher(settings)
        self.units: list[str] = []

    def send(self, job_id: str, queue: str, countdown: float | None = None) -> None:
        self.real.send(job_id, queue)

    def send_unit(self, job_id: str, key: str, queue: str, countdown: float | None = None) -> None:
        self.units.append(key)


def run_job_inline(settings: Settings, job_id: str, library: Any = None, worker: str | None = None) -> str:
    """Run a job through the worker's own engine in this process: plan it, then every unit as the engine sends
    it. Returns the job's status afterwards, or ``skipped`` when this call did not plan it."""
    from services.worker.engine import execute_unit, plan_job
    from services.worker.library import StudyLibrary

    library = library or StudyLibrary()
    dispatcher = InlineDispatcher(settings)
    planned = plan_job(settings, job_id, library, worker=worker, dispatcher=dispatcher)
    done = 0
    # the units this call sent are its messages: a late delivery of a planned job may be the one that sends
    # them, and a worker would receive them
    while done < len(dispatcher.units):
        execute_unit(settings, job_id, dispatcher.units[done], library, worker=worker, dispatcher=dispatcher)
        done += 1
    return planned if planned == "skipped" else str(job_row(settings, job_id).status)


class OneUnitLibrary:
    """A library whose jobs are one ``train`` unit running ``body(out_dir, progress, should_stop)``, and whose
    outcome is ``metrics``: the engine's own path with a unit body a test controls."""

    def __init__(self, body: Callable[[Path, Callable[[Any], None], Callable[[], bool]], None],
                 metrics: dict[str, float] | None = None) -> None:
        self.body = body
        self.metrics = metrics or {}

    def plan(self, config: Any) -> list[dict[str, Any]]:
        return [{"key": "train", "kind": "train", "weight": 2.0}]

    def run(self, config: Any, out_dir: Path, unit: dict[str, Any], progress: Callable[[Any], None],
            should_stop: Callable[[], bool]) -> list[dict[str, Any]]:
        self.body(out_dir, progress, should_stop)
        return []

    def outcome(self, config: Any, out_dir: Path) -> Any:
        from services.worker.ending import Outcome

        return Outcome(self.metrics)


def train_outside(out: Path, epochs: int, max_images_per_identity: int) -> tuple[Path, dict[str, Any]]:
    """A 16 px digits ``cnn-small`` trained with the library, outside the service: its weights file and the
    minimal card an upload needs (architecture, classes, input shape, normalisation)."""
    from midre.data import DatasetSpec
    from midre.train import TrainConfig, train

    cfg = TrainConfig(data=DatasetSpec(source="digits", image_size=16, channels=1,
                                       max_images_per_identity=max_images_per_identity),
                      arch="cnn-small", defense={"name": "nodef"}, epochs=epochs, device="cpu")
    train(cfg, out)
    card = json.loads((out / "model.json").read_text())
    return out / "model.safetensors", {k: card[k] for k in ("arch", "class_names", "image_size", "channels",
                                                              "normalization")}
