"""Several devices inside one training run: N rank processes and DistributedDataParallel.

:func:`midre.train.train` with ``TrainConfig.devices = N > 1`` calls :func:`launch`, which starts N
rank processes (``python -m midre.distributed SPEC``: plain subprocesses, because the caller may be a
Celery prefork child, a daemonic process that may not have ``multiprocessing`` children) and waits for
them. Each rank runs the spec's entry, a ``midre`` function named ``"module:function"`` (the trainer's
rank body), with a :class:`Ranks` telling it its place in the group and the spec's JSON payload (the
config as ``TrainConfig.to_dict()``; nothing is pickled). This module names no trainer code, so the
trainer can import it.

The ranks meet through a TCP store that the parent serves on 127.0.0.1, on a free port the OS picks
(the ranks get ``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE``): NCCL on CUDA with rank
r on ``cuda:r``, Gloo on the CPU with ``max(1, cpu_count // N)`` threads per rank.

How a training step is shared (:class:`Ranks`):

- data: every rank draws the one-process run's seeded permutation of the epoch's images and cuts
  the same global batches of ``batch_size`` images; rank r trains on the r-th of N near-equal slices
  of each (:meth:`Ranks.share`), so the images of a step and the order of the steps are those of the
  one-process run. Each rank's loss is weighted by its share of the batch, so the averaged gradient
  is the gradient of the mean loss over the global batch (exactly, for a loss that is a mean over
  images). When a last batch has fewer images than there are ranks, a rank left without a slice
  runs the whole batch with weight 0, so every rank still takes part in the gradient all-reduce.
- model: every rank builds it from the same seed, and DistributedDataParallel broadcasts rank 0's
  parameters and buffers and averages the gradients, so every rank takes the same step. BatchNorm
  normalises by each rank's slice; the running statistics kept are rank 0's. The defense's loss runs
  inside the DDP forward (:class:`_LossModule`), so a loss that calls parts of the model (BiDO's
  hidden layers, MID's bottleneck) is synchronised like a plain one; ``find_unused_parameters`` is
  on for defenses that leave parameters unused (MI-RAD's removed skip connections).
- random draws: shuffling uses the one-process seed on every rank (same data order); the per-rank
  draws (augmentation, MIDRE's erasing squares, dropout) come from
  ``rank_seed(epoch seed, rank, N)`` (:func:`midre.seeding.rank_seed`): each rank erases its slice
  with a stream of its own, new every epoch, reproducible from ``(seed, epoch, rank, N)`` (so a
  resumed run repeats it). One process keeps the epoch seed itself.

What the device count changes: a global batch holds the same images, but their random squares
(flips, shifts, dropout masks) differ, BatchNorm sees slices of the batch and floats are summed in
another order. A run over N devices is therefore not bit-identical to one process, only
statistically equivalent (same recipe, data order and erasing distribution); ``devices`` (from 2 up)
is part of ``TrainConfig.fingerprint``, so one device count never resumes another's state.

Progress, stop and failures: rank 0 writes its progress events as JSON lines into a file the parent
reads and hands to the caller's ``progress`` callback, the same events a one-process run gives; the
parent polls ``should_stop`` meanwhile and, when it turns True, ends the ranks and raises
:class:`midre.progress.Cancelled` (rank 0 replaces the resume state atomically after each epoch, so
the last finished epoch's stays). A rank that exits non-zero or is killed makes the parent end the
others at once and raise :class:`midre.errors.TransientError` naming the rank, its exit code and the
tail of its output; a rank that failed on its configuration or a file (``ConfigError``,
``ValueError``, ``FileNotFoundError``: another try would meet it again) has that error raised
instead. The ranks are always reaped, and a rank whose parent dies ends itself.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from midre.data.errors import DatasetError
from midre.errors import ConfigError, TransientError
from midre.progress import Cancelled, ProgressCallback, ProgressEvent, StopCallback, no_progress
from midre.seeding import rank_seed

__all__ = ["Ranks", "check_devices", "check_visible_devices", "launch", "main"]

log = logging.getLogger(__name__)

#: How long a rank waits to meet the others (connecting to the parent's store, setting up the group):
#: a rank that never comes makes the others fail after this long rather than wait for ever.
INIT_TIMEOUT = timedelta(minutes=5)
#: How long a rank waits in one collective of the training (the others wait in one while rank 0
#: evaluates the test split), on a group of its own made after the set-up.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
#: How often the parent reads rank 0's events, checks the ranks and polls ``should_stop``.
POLL_SECONDS = 0.1
#: Seconds a rank has to exit after SIGTERM before it gets SIGKILL.
GRACE_SECONDS = 5.0
EVENTS_FILE = "events.jsonl"
_REPO = Path(__file__).resolve().parents[1]


def check_devices(devices: int, device: str, batch_size: int, defenses: Sequence[Any]) -> None:
    """``TrainConfig``'s checks of ``devices`` > 1 against its other fields (``defenses``: the parts of
    its defense): refused as :class:`ConfigError` naming the field."""
    if devices == 1:
        return
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError("devices", f"{devices} devices need device 'auto', 'cpu' or 'cuda' (rank r trains on "
                                     f"cuda:r; CUDA_VISIBLE_DEVICES picks the GPUs), got {device!r}")
    if batch_size < devices:
        raise ConfigError("batch_size", f"the global batch is split over the {devices} devices, so it needs at "
                                        f"least {devices} images, got {batch_size}")
    unsupported = [d.name for d in defenses if not d.data_parallel]
    if unsupported:
        raise ConfigError("devices", f"{devices} devices are not supported with defense {unsupported[0]} (it "
                                     "trains state outside the model that each rank would move its own way); "
                                     "train it on one device")


def check_visible_devices(devices: int, device: str) -> None:
    """Refuse ``devices`` > 1 that this machine cannot give: more CUDA processes than visible GPUs
    (``device`` "cuda", or "auto" on a CUDA machine), or no ``torch.distributed`` at all."""
    if devices == 1:
        return
    if not dist.is_available():
        raise ConfigError("devices", f"{devices} devices need torch.distributed, which this PyTorch build lacks")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        visible = torch.cuda.device_count()
        if devices > visible:
            raise ConfigError("devices", f"{devices} processes on CUDA need {devices} GPUs; {visible} visible")


@dataclass(frozen=True)
class Ranks:
    """Where a process stands in its training group; ``Ranks()`` is one process alone, for which every
    method leaves things as they are (a one-process run draws and steps as it always did)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # the rank's device (None alone: the caller's)
    events: Path | None = None  # where rank 0 writes its progress events
    group: Any = None  # the process group of the training's collectives

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that evaluates, writes the resume state and the checkpoint, reports progress."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed of a per-rank stream that one process seeds with ``seed``."""
        return rank_seed(seed, self.rank, self.world_size)

    def share(self, batch: Tensor) -> tuple[Tensor, float]:
        """This rank's slice of a global batch (of image indices) and the weight of its loss: the
        slice's share of the batch times the number of ranks (1 alone; 0 for a rank left without a
        slice, which then runs the whole batch only to take part in the gradient all-reduce)."""
        if not self.distributed:
            return batch, 1.0
        part = batch.tensor_split(self.world_size)[self.rank]
        if len(part) == 0:
            return batch, 0.0
        return part, len(part) * self.world_size / len(batch)

    def loss_fn(self, model: nn.Module, loss: Callable[..., Any]) -> Callable[..., Any]:
        """``(x, y, epoch) -> loss(model, x, y, epoch)``; over several ranks through DDP, which
        averages the gradients of the backward pass that follows."""
        if not self.distributed:
            return lambda x, y, epoch: loss(model, x, y, epoch)
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(_LossModule(model, loss), device_ids=ids, process_group=self.group,
                                       find_unused_parameters=True)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks."""
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.group)
        return total.tolist()

    def barrier(self) -> None:
        if self.distributed:
            cuda = self.device is not None and self.device.type == "cuda"
            dist.barrier(group=self.group, device_ids=[self.device.index] if cuda else None)

    def progress(self) -> ProgressCallback:
        """Rank 0's progress callback (events for the parent); the others report nothing."""
        if not self.main or self.events is None:
            return no_progress
        path = self.events

        def write(event: ProgressEvent) -> None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event.to_dict()) + "\n")

        return write


class _LossModule(nn.Module):
    """The model with a loss as its forward, so DDP sees every use of the model in a step."""

    def __init__(self, model: nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor, y: Tensor, epoch: int) -> Any:
        return self.loss(self.model, x, y, epoch)


# --- the parent ------------------------------------------------------------------------------------
def launch(entry: str, payload: Mapping[str, Any], world_size: int, *, cuda: bool,
           progress: ProgressCallback, should_stop: StopCallback) -> None:
    """Run ``entry`` (``"midre.module:function"``, called as ``function(ranks, payload)``) in
    ``world_size`` rank processes and wait until all of them have exited.

    Raises:
        Cancelled: ``should_stop()`` turned True (the ranks were ended).
        TransientError: a rank exited non-zero or was killed (the others were ended).
        ConfigError, ValueError, FileNotFoundError: what a rank raised for its configuration or a file.
    """
    backend = "nccl" if cuda else "gloo"
    threads = max(1, (os.cpu_count() or 1) // world_size)
    log.info("training with %d processes (DistributedDataParallel, %s%s)", world_size, backend,
             "" if cuda else f", {threads} threads each")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="midre-ranks-") as tmp:
        store = _serve_store(world_size)
        folder = Path(tmp)
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"entry": entry, "backend": backend, "threads": threads, "payload": payload}))
        try:
            for rank in range(world_size):
                procs.append(_start(rank, world_size, store.port, spec, None if cuda else threads))
            _wait(procs, folder, progress, should_stop)
        finally:
            _end(procs)


def _serve_store(world_size: int) -> dist.TCPStore:
    """The ranks' TCP store, served by this process on a free port of 127.0.0.1. Left to itself the
    store listens on every interface; it is unauthenticated, so it gets a socket bound to the loopback
    interface where the platform allows (``master_listen_fd``: Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        store = dist.TCPStore("127.0.0.1", sock.getsockname()[1], world_size, is_master=True, timeout=INIT_TIMEOUT,
                              wait_for_workers=False, master_listen_fd=sock.fileno())
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        sock.close()
        log.warning("the ranks' store listens on every interface (%s)", exc)
        return dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=INIT_TIMEOUT, wait_for_workers=False)
    sock.detach()  # the store owns the descriptor now and closes it
    return store


def _start(rank: int, world_size: int, port: int, spec: Path, threads: int | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
           "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "MIDRE_PARENT_PID": str(os.getpid())}
    if _REPO.name not in ("site-packages", "dist-packages"):  # a source checkout: importable from any cwd
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if sys.platform == "linux":  # the ranks' own connections on the loopback interface too (unless set)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    with open(spec.parent / f"rank{rank}.log", "wb") as out:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "midre.distributed", str(spec)], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen[bytes]], folder: Path, progress: ProgressCallback,
          should_stop: StopCallback) -> None:
    """Relay rank 0's events and watch the ranks until all exited 0, one failed, or a stop is asked."""
    events = _EventReader(folder / EVENTS_FILE)
    finished: int | None = None  # the last epoch the run has finished (and saved)
    while True:
        codes = [p.poll() for p in procs]
        for event in events.read():
            if event.stage == "epoch" or (event.stage == "train" and event.step is None):
                finished = event.epoch
            progress(event)
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            raise _failure(procs, failed, folder)
        if all(code == 0 for code in codes):
            return
        if should_stop():
            raise Cancelled(f"stopped during epoch {finished + 1}; will resume after epoch {finished}"
                            if finished is not None else "stopped before the first epoch finished")
        time.sleep(POLL_SECONDS)


class _EventReader:
    """The complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[ProgressEvent]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [ProgressEvent(**json.loads(line)) for line in lines if line.strip()]


def _failure(procs: list[subprocess.Popen[bytes]], failed: list[int], folder: Path) -> Exception:
    """The error to raise for the failed ranks: a configuration or file error one of them reported,
    else a TransientError about the rank that most likely failed first (one killed by a signal before
    one that lost its peers)."""
    reports = {rank: _read_json(folder / f"rank{rank}.error.json") for rank in failed}
    permanent = [rank for rank in failed if reports[rank] and not reports[rank]["retry"]]
    if permanent:
        return _rebuild(reports[permanent[0]])
    rank = min(failed, key=lambda r: (procs[r].returncode >= 0, r))  # type: ignore[operator]
    code = procs[rank].returncode
    assert code is not None
    how = f"was killed by {signal.Signals(-code).name} (exit code {code})" if code < 0 else f"exited with code {code}"
    return TransientError(f"training rank {rank} of {len(procs)} {how}; the other ranks were stopped. "
                          f"Last lines of its output:\n{_tail(folder / f'rank{rank}.log')}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rebuild(report: Mapping[str, Any]) -> Exception:
    """The error a rank reported, as the same class where it is one of the library's."""
    if report["type"] == "DatasetError":
        return DatasetError(report["message"], path=report.get("path"), field=report.get("field"))
    if "field" in report:
        return ConfigError(report["field"], report["message"])
    if report["type"] == "FileNotFoundError":
        return FileNotFoundError(report["text"])
    return ValueError(report["text"])


def _tail(path: Path, lines: int = 20, chars: int = 4000) -> str:
    try:
        text = path.read_bytes()[-chars:].decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the ranks still running (SIGTERM, then SIGKILL after :data:`GRACE_SECONDS`) and reap all."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- a rank ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """A rank process: ``python -m midre.distributed SPEC`` with the environment :func:`launch` sets."""
    spec_path = Path((sys.argv[1:] if argv is None else argv)[0])
    spec = json.loads(spec_path.read_text())
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    _exit_with_parent(int(os.environ["MIDRE_PARENT_PID"]))
    try:
        _run_rank(spec, rank, world_size, spec_path.parent)
    except Exception as exc:
        report = {"type": type(exc).__name__, "text": str(exc),
                  "retry": not isinstance(exc, ValueError | FileNotFoundError)}
        if isinstance(exc, ConfigError):
            report.update(field=exc.field, message=exc.message, path=getattr(exc, "path", None))
        (spec_path.parent / f"rank{rank}.error.json").write_text(json.dumps(report))
        raise
    return 0


def _run_rank(spec: Mapping[str, Any], rank: int, world_size: int, folder: Path) -> None:
    if spec["backend"] == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(spec["threads"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=INIT_TIMEOUT)
    dist.init_process_group(spec["backend"], store=store, rank=rank, world_size=world_size, timeout=INIT_TIMEOUT)
    try:
        group = dist.new_group(timeout=COLLECTIVE_TIMEOUT)
        _entry(spec["entry"])(Ranks(rank, world_size, device, folder / EVENTS_FILE, group), spec["payload"])
    finally:
        dist.destroy_process_group()


def _entry(name: str) -> Callable[[Ranks, Any], None]:
    module, _, function = name.partition(":")
    if not module.startswith("midre.") or not function:
        raise ValueError(f"entry: expected 'midre.<module>:<function>', got {name!r}")
    return getattr(importlib.import_module(module), function)


def _exit_with_parent(parent: int) -> None:
    """End this rank when the parent that started it is gone (killed before it could end the ranks)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="midre-parent-watch", daemon=True).start()


if __name__ == "__main__":
    from midre.distributed import main as rank_main  # the importable module, the one the trainer sees

    sys.exit(rank_main())
