"""GPU benchmark suite: every figure is a ratio against a baseline measured in the same run.

One script for a bare GPU machine (it imports only torch, torchvision, numpy, safetensors, the
standard library and the project's ``midre``; the service's batcher is used when it imports with
torch alone, else an in-script copy of its policy). Sections:

1. ``epoch``: one training epoch with MIDRE vs NoDef (resnet18, 224 px, batch 128, synthetic uint8
   images already on the device; with ``--images FOLDER`` also decoded real images), run through
   the trainer's own per-epoch step (``midre.train._train_epoch``). Goal: overhead <= 2 %. Also the
   erasing's cost per batch (``RandomErasing`` on a [128, 3, 224, 224] batch) as a share of a NoDef
   step, and whether it synchronises with the host (run under ``torch.cuda.set_sync_debug_mode("error")``).
2. ``trainer``: the trainer vs a bare PyTorch loop of the same model and data, with the same bfloat16
   autocast + channels_last on CUDA; throughput ratio. Goal: >= 0.95x.
3. ``attack_deepinversion`` / ``attack_gmi``: identity-steps per second of one attack batched over
   100 identities vs a loop of one attack per identity (``midre.attacks.run_attack``, same budget;
   GMI with a freshly initialised, untrained GAN prior: the cost of a step does not depend on the
   weights). Also the achieved share of the card's peak FLOP/s (FLOPs per attack step counted with
   ``torch.utils.flop_counter.FlopCounterMode``; peak from a table of known cards, else "unknown").
4. ``serving``: predictions per second with dynamic batching vs one request per forward, resnet18
   at 224 px, 64 concurrent in-process asyncio clients; p50 / p99 latency. Goal: >= 3x.

Run on a GPU machine (about 2 minutes on an H100-class card; at most 8)::

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --json gpu_suite.json [--images FOLDER]

``--device cpu --quick`` runs every section at tiny sizes in well under a minute (a smoke test of
the script, not a measurement). A section that fails prints its error and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import best_time, sync  # noqa: E402  (benchmarks/_timing.py: the script's folder is on sys.path)

from midre.data import IMAGENET, DatasetSpec, load_dataset  # noqa: E402
from midre.defenses import TrainContext, build_defense  # noqa: E402
from midre.erasing import RandomErasing  # noqa: E402
from midre.models import create_model  # noqa: E402
from midre.progress import never_stop, no_progress  # noqa: E402
from midre.train import TrainConfig, _Run, _train_batch, _train_epoch  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run: the real ones on a GPU, tiny ones for ``--quick``."""

    train_arch: str = "resnet18"
    train_size: int = 224
    batch: int = 128
    steps_per_epoch: int = 20
    classes: int = 100
    rounds: int = 4  # measured rounds of interleaved epochs (after one warm-up round)
    erase_repeats: int = 50
    attack_arch: str = "resnet18"
    attack_size: int = 64
    identities: int = 100
    per_identity: int = 2
    attack_steps: int = 30
    prior_width: int = 64  # GMI's generator / discriminator base width (the papers' 64)
    serve_arch: str = "resnet18"
    serve_size: int = 224
    clients: int = 64
    serve_seconds: float = 5.0


QUICK = Sizes(train_arch="cnn-small", train_size=32, batch=8, steps_per_epoch=4, classes=10, rounds=2,
              erase_repeats=5, attack_arch="cnn-small", attack_size=32, identities=4, per_identity=1,
              attack_steps=2, prior_width=16, serve_arch="cnn-small", serve_size=32, clients=8, serve_seconds=0.5)

# Dense peak throughput in TFLOP/s (fp32 on CUDA cores, TF32 and bf16 on tensor cores, no sparsity),
# from the vendors' data sheets. The first name contained in the device name wins, so more specific
# names come first (A100 before A10, L40S and L40 before L4, H100 PCIe before H100).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("GH200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0}),
    ("L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    ("V100", {"fp32": 15.7, "tf32": 15.7, "bf16": 15.7}),  # no TF32 / bf16 tensor cores: fp32 rate
    ("T4", {"fp32": 8.1, "tf32": 8.1, "bf16": 8.1}),
)


# ----------------------------------------------------------------------------------------- helpers


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def host_sync_check(device: torch.device, fn) -> str:
    """Run ``fn`` with CUDA's sync debug mode set to "error": "no host sync", or the error's first line."""
    if device.type != "cuda":
        return "n/a"
    sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "no host sync"
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["RuntimeError"])[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        sync(device)
    return f"host sync: {first}{_sync_site(device, fn)}"


def _sync_site(device: torch.device, fn) -> str:
    """Where ``fn`` first synchronises: run again in "warn" mode, the warning names the Python line."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    except Exception:  # noqa: BLE001 - the site is a hint; the error above is the finding
        return ""
    finally:
        torch.cuda.set_sync_debug_mode(0)
        sync(device)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            return f" (at {Path(w.filename).name}:{w.lineno})"
    return ""


def peak_for_name(name: str) -> tuple[str, dict[str, float] | None]:
    """The card of :data:`PEAK_TFLOPS` a device name belongs to and its peaks, or ``("unknown", None)``."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return key, peaks
    return "unknown", None


def peak_flops(device: torch.device) -> tuple[str, dict[str, float] | None]:
    if device.type != "cuda":
        return "unknown", None
    return peak_for_name(torch.cuda.get_device_name(device))


def conv_precision() -> str:
    """"tf32" when cuDNN may run fp32 convolutions on TF32 tensor cores (PyTorch's default), else "fp32"."""
    try:
        setting = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
        if setting in ("tf32", "ieee"):
            return "tf32" if setting == "tf32" else "fp32"
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    except Exception:  # noqa: BLE001 - an API this torch does not have: assume the default
        return "tf32"


def fmt_ratio(value: Any, suffix: str = "x") -> str:
    return f"{value:.3f}{suffix}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


# ------------------------------------------------------------------- 1 + 2: training epoch, trainer


def make_run(sizes: Sizes, defense_name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             normalization: Any, device: torch.device, seed: int) -> _Run:
    """A trainer run over the given uint8 images on the device, built the way ``midre.train`` builds one."""
    cfg = TrainConfig(data=DatasetSpec(source="digits", image_size=images.shape[-1], channels=3),
                      arch=sizes.train_arch, defense={"name": defense_name}, epochs=1000,
                      batch_size=sizes.batch, device=str(device), seed=seed)
    torch.manual_seed(seed)
    model = create_model(cfg.arch, num_classes, image_size=images.shape[-1], in_channels=3)
    defense = build_defense(cfg.defense)
    defense.setup(TrainContext(train_labels=labels.cpu(), num_classes=num_classes, image_size=images.shape[-1],
                               channels=3, normalization=normalization, seed=seed, epochs=cfg.epochs,
                               device=device))
    model = defense.prepare_model(model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return _Run(cfg=cfg, out=Path("."), fingerprint="gpu-suite", device=device,
                splits=SimpleNamespace(normalization=normalization), model=model, defense=defense, opt=opt,
                sched=None, images=images, labels=labels)


class BareLoop:
    """A plain PyTorch training loop of the same model, optimizer, data and precision as the trainer."""

    def __init__(self, sizes: Sizes, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 normalization: Any, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = create_model(sizes.train_arch, num_classes, image_size=images.shape[-1],
                                  in_channels=3).to(device)
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.images, self.labels, self.batch, self.device = images, labels, sizes.batch, device
        self.mean = torch.tensor(normalization.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(normalization.std, device=device).view(1, -1, 1, 1)
        self.shuffle = torch.Generator().manual_seed(seed)

    def epoch(self) -> None:
        self.model.train()
        order = torch.randperm(len(self.labels), generator=self.shuffle).to(self.device)
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            x = self.images[idx].float().div_(255).sub_(self.mean).div_(self.std)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                loss = F.cross_entropy(self.model(x), self.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def synthetic_images(sizes: Sizes, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    n = sizes.batch * sizes.steps_per_epoch
    s = sizes.train_size
    images = torch.randint(0, 256, (n, 3, s, s), generator=gen, device=device, dtype=torch.uint8)
    labels = torch.randint(0, sizes.classes, (n,), generator=gen, device=device)
    return images, labels


def real_images(folder: str, sizes: Sizes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, Any]:
    """Decoded images of ``folder`` (an ImageFolder-style layout), at most one synthetic epoch's worth."""
    splits = load_dataset(DatasetSpec(source=folder, image_size=sizes.train_size, channels=3))
    n = min(len(splits.train), sizes.batch * sizes.steps_per_epoch)
    norm = splits.normalization or IMAGENET
    return (splits.train.images[:n].to(device), splits.train.labels[:n].to(device),
            len(splits.class_names), norm)


def epoch_times(sizes: Sizes, images: torch.Tensor, labels: torch.Tensor, num_classes: int, normalization: Any,
                device: torch.device, seed: int, *, bare: bool) -> dict[str, list[float]]:
    """Seconds per epoch of NoDef, MIDRE (and the bare loop): one warm-up round, then interleaved rounds."""
    runs = {name: make_run(sizes, name, images, labels, num_classes, normalization, device, seed)
            for name in ("nodef", "midre")}
    loops: dict[str, Any] = {name: (lambda r=run, e=[0]: _epoch(r, e)) for name, run in runs.items()}
    if bare:
        loop = BareLoop(sizes, images, labels, num_classes, normalization, device, seed)
        loops["bare"] = loop.epoch
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(sizes.rounds + 1):
        for name, fn in loops.items():  # interleaved, so drift hits every variant alike
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r:
                times[name].append(time.perf_counter() - t)
    return times


def _epoch(run: _Run, counter: list[int]) -> None:
    _train_epoch(run, counter[0], no_progress, never_stop)
    counter[0] += 1


def section_epoch_and_trainer(sizes: Sizes, device: torch.device, seed: int,
                              images_folder: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    images, labels = synthetic_images(sizes, device, seed)
    times = epoch_times(sizes, images, labels, sizes.classes, IMAGENET, device, seed, bare=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    n_img = len(labels)
    epoch = {
        "what": f"{sizes.train_arch} {sizes.train_size}px batch {sizes.batch}, {n_img} synthetic images on the "
                f"device, median of {sizes.rounds} interleaved epochs",
        "baseline": "nodef", "nodef_s": med["nodef"], "midre_s": med["midre"],
        "ratio": med["midre"] / med["nodef"], "overhead_pct": 100 * (med["midre"] / med["nodef"] - 1),
        "goal": "overhead <= 2 %", "runs": times,
    }
    # The erasing alone on one full batch, and whether it (or the trainer's batch preparation) syncs.
    s = sizes.train_size
    x = torch.randn(sizes.batch, 3, s, s, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    eraser = RandomErasing(a_h=0.4)
    t_inplace = best_time(lambda: eraser(x, generator=gen, inplace=True), device, sizes.erase_repeats)
    t_copy = best_time(lambda: eraser(x, generator=gen), device, sizes.erase_repeats)
    step_s = med["nodef"] / sizes.steps_per_epoch
    run = make_run(sizes, "midre", images, labels, sizes.classes, IMAGENET, device, seed)
    aug = torch.Generator(device=device).manual_seed(seed)
    idx = torch.arange(sizes.batch, device=device)
    epoch["erasing"] = {
        "batch_shape": list(x.shape),
        "inplace_ms": 1e3 * t_inplace, "copy_ms": 1e3 * t_copy,
        "share_of_nodef_step_pct": 100 * t_inplace / step_s,
        "host_sync": host_sync_check(device, lambda: eraser(x, generator=gen, inplace=True)),
        "host_sync_copy": host_sync_check(device, lambda: eraser(x, generator=gen)),
        "host_sync_trainer_batch": host_sync_check(device, lambda: _train_batch(run, idx, 0, aug)),
    }
    if images_folder:
        try:
            r_images, r_labels, r_classes, r_norm = real_images(images_folder, sizes, device)
            r_times = epoch_times(sizes, r_images, r_labels, r_classes, r_norm, device, seed, bare=False)
            r_med = {name: statistics.median(v) for name, v in r_times.items()}
            epoch["real_images"] = {"folder": images_folder, "images": len(r_labels), "nodef_s": r_med["nodef"],
                                    "midre_s": r_med["midre"], "ratio": r_med["midre"] / r_med["nodef"],
                                    "runs": r_times}
        except Exception as exc:  # noqa: BLE001 - reported, the synthetic figure still stands
            epoch["real_images"] = {"folder": images_folder, "error": f"{type(exc).__name__}: {exc}"}
    trainer = {
        "what": f"NoDef through midre.train's epoch step vs a bare loop ({'bf16 autocast + channels_last' if device.type == 'cuda' else 'fp32'}), same model/data",  # noqa: E501
        "baseline": "bare", "bare_img_s": n_img / med["bare"], "trainer_img_s": n_img / med["nodef"],
        "ratio": med["bare"] / med["nodef"], "goal": ">= 0.95x",
    }
    return epoch, trainer


# ----------------------------------------------------------------------------------- 3: attacks


def section_attack(name: str, sizes: Sizes, device: torch.device, seed: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from midre.attacks import AttackBudget, AttackTarget, run_attack

    s = sizes.attack_size
    torch.manual_seed(seed)
    model = create_model(sizes.attack_arch, sizes.identities, image_size=s, in_channels=3).to(device).eval()
    target = AttackTarget(model, (3, s, s), IMAGENET)
    prior = None
    if name == "gmi":
        from midre.priors import GanPrior, PriorConfig, build_networks

        # An untrained prior: GMI searches its latent space, and a step costs the same whatever the weights.
        config = PriorConfig(kind="gmi", seed=seed, width=sizes.prior_width)
        torch.manual_seed(seed)
        generator, discriminator = build_networks(config, (3, s, s), None)
        prior = GanPrior(generator, discriminator, config, (3, s, s), info={"key": "untrained"})
    ids = list(range(sizes.identities))

    def attack(identities: list[int], steps: int):
        return run_attack(name, target, identities, per_identity=sizes.per_identity, prior=prior,
                          budget=AttackBudget(steps=steps), seed=seed, device=device)

    attack(ids[:2], 1)  # warm-up
    t_batched = best_time(lambda: attack(ids, sizes.attack_steps), device, 2)  # after a warm-up run
    t0 = time.perf_counter()
    for i in ids:
        attack([i], sizes.attack_steps)
    sync(device)
    t_loop = time.perf_counter() - t0

    # FLOPs of one attack step over the whole batch: the count for two steps minus the count for one.
    counts = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            attack(ids, steps)
        counts.append(counter.get_total_flops())
    step_flops = max(counts[1] - counts[0], 0)
    achieved = step_flops * sizes.attack_steps / t_batched
    card, peaks = peak_flops(device)
    precision = conv_precision() if device.type == "cuda" else "fp32"
    share: float | str = "unknown"
    if peaks is not None:
        share = achieved / (peaks[precision] * 1e12)
    id_steps = sizes.identities * sizes.attack_steps
    prior_note = f", untrained GMI prior (width {sizes.prior_width})" if name == "gmi" else ""
    return {
        "what": f"{name}: {sizes.attack_arch} target {s}px, {sizes.identities} identities x {sizes.per_identity}, "
                f"{sizes.attack_steps} steps{prior_note}",
        "baseline": "per-identity loop", "batched_s": t_batched, "loop_s": t_loop,
        "batched_identity_steps_per_s": id_steps / t_batched, "loop_identity_steps_per_s": id_steps / t_loop,
        "ratio": t_loop / t_batched, "step_gflop": step_flops / 1e9, "achieved_tflops": achieved / 1e12,
        "peak": {"card": card, "precision": precision, "tflops": peaks[precision] if peaks else None},
        "peak_share": share,
    }


# ----------------------------------------------------------------------------------- 4: serving


class MicroBatcher:
    """The service's batching policy in a few lines (``services.serving.batcher.DynamicBatcher``):
    one collector task takes the first waiting request and whatever else is queued (up to
    ``max_batch`` rows), with no extra wait window, and runs one forward in a one-thread executor;
    requests arriving meanwhile form the next batch. ``enabled=False``: one forward per request."""

    def __init__(self, forward, executor, *, max_batch: int = 256, enabled: bool = True, on_batch=None) -> None:
        self.forward, self.executor, self.max_batch = forward, executor, max_batch
        self.enabled, self.on_batch = enabled, on_batch
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            if self.on_batch:
                self.on_batch(x.shape[0])
            return await loop.run_in_executor(self.executor, self.forward, x)
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._collect())
        future = loop.create_future()
        self.queue.put_nowait((x, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            rows = batch[0][0].shape[0]
            while not self.queue.empty() and rows + self.queue._queue[0][0].shape[0] <= self.max_batch:
                batch.append(self.queue.get_nowait())
                rows += batch[-1][0].shape[0]
            if self.on_batch:
                self.on_batch(rows)
            inputs = torch.cat([x for x, _ in batch])
            try:
                out = await loop.run_in_executor(self.executor, self.forward, inputs)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            start = 0
            for x, f in batch:
                if not f.done():
                    f.set_result(out[start:start + x.shape[0]])
                start += x.shape[0]

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def batcher_class() -> tuple[Any, str]:
    """The service's DynamicBatcher when it imports with torch alone, else the in-script copy."""
    try:
        from services.serving.batcher import DynamicBatcher

        return DynamicBatcher, "services.serving.batcher.DynamicBatcher (in-process)"
    except Exception as exc:  # noqa: BLE001 - a bare GPU box may lack the service's packages
        return MicroBatcher, f"in-script asyncio micro-batcher mirroring the service's policy ({type(exc).__name__})"


async def _drive(batcher, x: torch.Tensor, clients: int, seconds: float) -> tuple[int, list[float], float]:
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    latencies: list[float] = []

    async def client() -> None:
        while loop.time() < stop:
            t = time.perf_counter()
            await batcher.submit(x)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies, time.perf_counter() - t0


def section_serving(sizes: Sizes, device: torch.device, seed: int) -> dict[str, Any]:
    cls, which = batcher_class()
    s = sizes.serve_size
    torch.manual_seed(seed)
    model = create_model(sizes.serve_arch, 100, image_size=s, in_channels=3).to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:  # as services.serving.cache.LoadedModel.probabilities
        with torch.inference_mode():
            return torch.softmax(model(x.to(device, non_blocking=True)).float(), dim=1).cpu()

    x = torch.randn(1, 3, s, s)  # one preprocessed image per request, on the CPU like a decoded upload
    results: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-suite-forward") as executor:
        for mode, enabled in (("unbatched", False), ("batched", True)):
            rows: list[int] = []
            batcher = cls(forward, executor, max_batch=256, enabled=enabled, on_batch=rows.append)

            async def measure(b=batcher):
                await _drive(b, x, sizes.clients, min(1.0, sizes.serve_seconds / 2))  # warm-up
                return await _drive(b, x, sizes.clients, sizes.serve_seconds)

            rows_before = len(rows)
            n, lat, elapsed = asyncio.run(measure())
            batcher.close()
            forwards = rows[rows_before:]
            lat.sort()
            results[mode] = {"predictions_per_s": n / elapsed, "requests": n,
                             "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
                             "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
                             "mean_batch": sum(forwards) / max(len(forwards), 1)}
    return {
        "what": f"{sizes.serve_arch} {s}px, {sizes.clients} concurrent clients, {sizes.serve_seconds:g} s per mode",
        "batcher": which, "baseline": "unbatched", **results,
        "ratio": results["batched"]["predictions_per_s"] / results["unbatched"]["predictions_per_s"],
        "goal": ">= 3x",
    }


# ------------------------------------------------------------------------------------- report


def print_table(report: dict[str, Any]) -> None:
    sec = report["sections"]
    print(f"\n{'section':<24} {'baseline':>14} {'measured':>14} {'ratio':>9}  goal / notes")

    def row(key: str, base: str, meas: str, ratio: str, note: str) -> None:
        print(f"{key:<24} {base:>14} {meas:>14} {ratio:>9}  {note}")

    def failed(key: str) -> bool:
        """True (after printing why) when the section did not run or failed."""
        if key not in sec:
            row(key, "-", "-", "-", "not run (--only)")
            return True
        if "error" in sec[key]:
            row(key, "-", "-", "-", "FAILED: " + sec[key]["error"].splitlines()[0][:100])
            return True
        return False

    if not failed("epoch"):
        e = sec["epoch"]
        row("epoch midre/nodef", f"{e['nodef_s'] * 1e3:.1f} ms", f"{e['midre_s'] * 1e3:.1f} ms",
            fmt_ratio(e["ratio"]), f"overhead {e['overhead_pct']:+.1f} % (goal <= 2 %)")
        er = e["erasing"]
        row("  erasing per batch", "nodef step", f"{er['inplace_ms']:.2f} ms", "-",
            f"{er['share_of_nodef_step_pct']:.1f} % of a step, copy {er['copy_ms']:.2f} ms; {er['host_sync']}")
        row("  sync: erasing copy", "-", "-", "-", er["host_sync_copy"])
        row("  sync: trainer batch", "-", "-", "-", er["host_sync_trainer_batch"])
        if "real_images" in e:
            ri = e["real_images"]
            if "error" in ri:
                row("  real images", "-", "-", "-", "skipped: " + ri["error"][:100])
            else:
                row("  real images", f"{ri['nodef_s'] * 1e3:.1f} ms", f"{ri['midre_s'] * 1e3:.1f} ms",
                    fmt_ratio(ri["ratio"]), f"{ri['images']} decoded images")
    if not failed("trainer"):
        t = sec["trainer"]
        row("trainer/bare loop", f"{t['bare_img_s']:.0f} img/s", f"{t['trainer_img_s']:.0f} img/s",
            fmt_ratio(t["ratio"]), "goal >= 0.95x")
    for key in ("attack_deepinversion", "attack_gmi"):
        if failed(key):
            continue
        a = sec[key]
        share = a["peak_share"]
        share_s = f"{100 * share:.1f} % of {a['peak']['card']} {a['peak']['precision']} peak" \
            if isinstance(share, float) else "peak share unknown"
        row(key, f"{a['loop_identity_steps_per_s']:.1f} id-st/s", f"{a['batched_identity_steps_per_s']:.1f} id-st/s",
            fmt_ratio(a["ratio"]), f"batched vs per-identity loop; {a['achieved_tflops']:.3f} TFLOP/s, {share_s}")
    if not failed("serving"):
        s = sec["serving"]
        u, b = s["unbatched"], s["batched"]
        row("serving batched/1-by-1", f"{u['predictions_per_s']:.0f} pred/s", f"{b['predictions_per_s']:.0f} pred/s",
            fmt_ratio(s["ratio"]), f"goal >= 3x; p50/p99 {b['p50_ms']:.1f}/{b['p99_ms']:.1f} ms "
            f"(1-by-1 {u['p50_ms']:.1f}/{u['p99_ms']:.1f}), mean batch {b['mean_batch']:.1f}")
        print(f"  serving batcher: {s['batcher']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, not a measurement")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--images", metavar="FOLDER", help="also time the epochs on these decoded real images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", choices=("epoch", "attacks", "serving"), help="run only these sections")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else Sizes()
    wanted = set(args.only or ("epoch", "attacks", "serving"))
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "suite": "gpu_suite", "date": date, "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick, "sizes": vars(sizes).copy(),
        "sections": {},
    }
    print(f"MIDRE GPU suite  {date}  device: {report['device_name']}  torch {torch.__version__}"
          + ("  [--quick: tiny sizes, not a measurement]" if args.quick else ""))
    t_start = time.perf_counter()
    jobs: list[tuple[str, Any]] = []
    if "epoch" in wanted:
        jobs.append(("epoch+trainer", lambda: section_epoch_and_trainer(sizes, device, args.seed, args.images)))
    if "attacks" in wanted:
        jobs += [(f"attack_{n}", lambda n=n: section_attack(n, sizes, device, args.seed)) for n in ("deepinversion",
                                                                                                     "gmi")]
    if "serving" in wanted:
        jobs.append(("serving", lambda: section_serving(sizes, device, args.seed)))
    for name, job in jobs:
        t = time.perf_counter()
        try:
            result = job()
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}", "ratio": None}
            if name == "epoch+trainer":
                result = (result, dict(result))
        if name == "epoch+trainer":
            report["sections"]["epoch"], report["sections"]["trainer"] = result
        else:
            report["sections"][name] = result
        print(f"  [{name} done in {time.perf_counter() - t:.1f} s]", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    print_table(report)
    print(f"\ntotal {report['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
