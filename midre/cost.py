"""Cost estimate of a study before it runs, from a short calibration on the real shapes.

A couple of training steps of the target architecture (at the study's image size and a batch of up
to ``calibration_batch`` images) and a couple of attack steps (generator + target, forward and
backward, on a batch of latents) are timed on the device; the estimate scales them by the work the
study will do (epochs x batches x targets, attack steps x latents x runs). Everything is returned
as one JSON-able dict.

Peak memory is measured two ways, named in ``memory_method``:

* ``cuda_max_memory_allocated``: on a CUDA device, ``torch.cuda.max_memory_allocated`` during the
  calibration at the real batch size (training) or the attack's batch of latents;
* ``parameters_and_saved_activations``: elsewhere, a count: the bytes of the parameters, their
  gradients and Adam's two moments, plus every tensor autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``), scaled to the real batch size. Resident-set growth
  was not used: the allocator keeps freed memory, so it mostly measures earlier work.

The figures are estimates: data loading, evaluation models and prior training are not included, and
a CPU that other processes share times slower than an idle one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["estimate_attack", "estimate_study", "estimate_training", "measure", "print_estimate"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def measure(step: Callable[[], None], device: torch.device, *, warmup: int = 1, repeats: int = 2,
            fixed_bytes: int = 0) -> dict[str, Any]:
    """Time ``step`` (after ``warmup`` calls) and measure its peak memory.

    Args:
        step: one unit of work (e.g. one training step).
        device: where it runs.
        fixed_bytes: memory held regardless of the step (parameters, optimiser state), added to the
            saved-activation count on non-CUDA devices.

    Returns:
        ``{"seconds": per call, "peak_bytes": ..., "memory_method": ...}``.
    """
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    t0 = time.perf_counter()
    for i in range(repeats):
        if not cuda and i == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step()
        else:
            step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / repeats
    if cuda:
        peak = int(torch.cuda.max_memory_allocated(device))
        return {"seconds": seconds, "peak_bytes": peak, "memory_method": "cuda_max_memory_allocated",
                "baseline_bytes": int(base)}
    return {"seconds": seconds, "peak_bytes": int(saved[0] + fixed_bytes),
            "memory_method": "parameters_and_saved_activations"}


def _param_bytes(*modules: nn.Module, trainable_copies: int = 4) -> int:
    """Parameters x copies (weights, gradients, Adam's two moments for training; 1 for frozen nets)."""
    total = 0
    for m in modules:
        total += sum(p.numel() * p.element_size() for p in m.parameters())
    return total * trainable_copies


def estimate_training(arch: str, image_shape: tuple[int, int, int], num_classes: int, *, batch_size: int,
                      train_images: int, epochs: int, device: str | torch.device | None = None,
                      calibration_batch: int | None = None) -> dict[str, Any]:
    """Seconds and peak memory of training one target (``epochs`` over ``train_images``)."""
    from midre.models import create_model

    dev = _device(device)
    c, h, _ = image_shape
    model = create_model(arch, num_classes, image_size=h, in_channels=c).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    calib = batch_size if dev.type == "cuda" else min(batch_size, calibration_batch or 8)
    x = torch.rand(calib, c, h, h, device=dev)
    y = torch.randint(0, num_classes, (calib,), device=dev)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    m = measure(step, dev, fixed_bytes=0)
    scale = batch_size / calib
    steps = math.ceil(train_images / batch_size) * epochs
    per_step = m["seconds"] * scale
    peak = m["peak_bytes"] if dev.type == "cuda" else int(m["peak_bytes"] * scale) + _param_bytes(model)
    return {"arch": arch, "image_shape": list(image_shape), "batch_size": batch_size, "calibration_batch": calib,
            "steps": steps, "seconds_per_step": per_step, "seconds": per_step * steps, "peak_bytes": peak,
            "memory_method": m["memory_method"]}


def _calibration_generator(attack: str, options: dict[str, Any], image_shape: tuple[int, int, int],
                           dev: torch.device) -> tuple[Any, int]:
    """The attack's generator with random weights at its real size, and its latent size."""
    from midre.priors.gan import Generator
    from midre.priors.generator import fit_image
    from midre.priors.stylegan2 import CONFIG_METADATA_KEY, StyleGAN2Config, load_stylegan2

    c, h, _ = image_shape
    if options.get("stylegan2") or options.get("stylegan2_random") is not None:
        if options.get("stylegan2"):
            from safetensors import safe_open

            with safe_open(str(options["stylegan2"]), framework="pt") as handle:
                cfg = StyleGAN2Config.from_dict(json.loads((handle.metadata() or {})[CONFIG_METADATA_KEY]))
        else:
            cfg = StyleGAN2Config.from_dict(options["stylegan2_random"])
        net = load_stylegan2(None, cfg).to(dev)
        crop = float(options.get("crop_fraction", 1.0))

        def synth(z: torch.Tensor) -> torch.Tensor:
            return fit_image(((net.synthesis(net.mapping(z)) + 1) / 2).clamp(0, 1), h, c, crop)

        return (net, synth), cfg.z_dim
    prior = dict(options.get("prior", {}))
    width, latent = int(prior.get("width", 32)), int(prior.get("latent_dim", 100))
    gen = Generator(latent, h, c, width, resolution=prior.get("resolution")).to(dev).eval()
    return (gen, gen), latent


def estimate_attack(attack: str, arch: str, image_shape: tuple[int, int, int], num_classes: int, *,
                    identities: int, per_identity: int, budget: Any, options: dict[str, Any] | None = None,
                    device: str | torch.device | None = None) -> dict[str, Any]:
    """Seconds and peak memory of one attack run, from two timed latent-search steps at its batch size.

    The work is counted in latent-steps (one generator + target forward and backward pass of one latent):
    ``steps x latents`` for the optimisation, and for PPA / IF-GMI also the candidate scoring
    (``search_space`` x 2 forward passes, counted as 2/3 of a latent-step) and the final selection
    (``final_transforms`` target forwards per candidate, counted as 1/3).
    """
    from midre.attacks import get_attack
    from midre.models import create_model

    dev = _device(device)
    info = get_attack(attack)
    opts = {f: getattr(info.options(), f) for f in info.options.__dataclass_fields__}
    opts.update(options or {})
    c, h, _ = image_shape
    target = create_model(arch, num_classes, image_size=h, in_channels=c).to(dev).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    latents = identities * per_identity * max(1, budget.restarts)
    steps = budget.steps
    extra_units = 0.0
    if attack in ("ppa", "if-gmi"):
        latents = identities * max(int(opts["candidates"]), per_identity)
        if attack == "if-gmi":
            layers = int(opts["layers"])
            steps = budget.steps + layers * int(opts.get("feature_steps") or budget.steps)
        extra_units = int(opts["search_space"]) * 2 / 3 + latents * int(opts["final_transforms"]) / 3
    batch = min(latents, budget.chunk_size or int(opts.get("batch_size", latents) or latents))
    if info.needs is None:  # prior-free attacks optimise pixels
        z = torch.rand(batch, c, h, h, device=dev, requires_grad=True)
        modules: list[nn.Module] = [target]

        def forward() -> torch.Tensor:
            return target(z)
    else:
        (net, synth), zdim = _calibration_generator(attack, opts, image_shape, dev)
        for p in net.parameters():
            p.requires_grad_(False)
        z = torch.randn(batch, zdim, device=dev, requires_grad=True)
        modules = [target, net]

        def forward() -> torch.Tensor:
            return target(synth(z))

    def step() -> None:
        z.grad = None
        forward().logsumexp(1).sum().backward()

    m = measure(step, dev, fixed_bytes=_param_bytes(*modules, trainable_copies=1))
    per_latent_step = m["seconds"] / batch
    units = steps * latents + extra_units
    return {"attack": attack, "latents": latents, "batch": batch, "steps": steps,
            "seconds_per_latent_step": per_latent_step, "seconds": per_latent_step * units,
            "peak_bytes": m["peak_bytes"], "memory_method": m["memory_method"],
            "excludes": "prior training, surrogate training, evaluation"}


def _count_images(data: str) -> int | None:
    if data == "digits":
        return 1797
    root = Path(data)
    if not root.is_dir():
        return None
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)


def _count_classes(data: str) -> int | None:
    if data == "digits":
        return 10
    root = Path(data)
    return sum(1 for p in root.iterdir() if p.is_dir()) if root.is_dir() else None


def estimate_study(config: Any, device: str | torch.device | None = None) -> dict[str, Any]:
    """Expected seconds (GPU-seconds on a CUDA device) and peak memory of a study, before it runs.

    Args:
        config: a :class:`midre.study.PipelineConfig` (or its dict), or an
            :class:`midre.study.AttackEvalConfig` (attacks only; the target's card gives arch and size).
        device: where to calibrate (default: the config's device; ``auto`` picks CUDA when present).

    Returns:
        A JSON-able dict: ``device``, ``memory_method``, ``training`` (per target and total), ``attacks``
        (per run and total for each attack), ``total_seconds``, ``gpu_seconds`` (``None`` off CUDA),
        ``peak_bytes`` (the largest phase) and the assumptions made.
    """
    from midre.study import AttackEvalConfig, PipelineConfig

    if isinstance(config, dict):
        config = (AttackEvalConfig if "target" in config else PipelineConfig).from_dict(config)
    dev = _device(device or getattr(config, "device", None))
    notes: list[str] = []
    if isinstance(config, PipelineConfig):
        data = config.data
        arch, shape = config.arch, (data.channels, data.image_size, data.image_size)
        classes = data.num_private or _count_classes(data.source) or 10
        images = _count_images(data.source)
        if images is None:
            images = classes * 20
            notes.append("image count unknown (archive or unreadable path): assumed 20 per identity")
        train_images = int(images * (1 - data.test_fraction))
        if data.num_private is None:
            train_images = int(train_images * (1 - config.public_fraction))
        targets = len(config.defenses) * len(config.seed_list)
        training = estimate_training(arch, shape, classes, batch_size=config.batch_size,
                                     train_images=train_images, epochs=config.epochs, device=dev)
        training.update({"targets": targets, "total_seconds": training["seconds"] * targets,
                         "train_images": train_images})
        runs = targets
    else:
        card = json.loads((Path(config.target) / "model.json").read_text())
        arch = card.get("arch", "cnn-small")
        size = int(card.get("image_size") or card.get("data", {}).get("image_size", 64))
        shape = (int(card.get("channels") or card.get("data", {}).get("channels", 3)), size, size)
        classes = int(card.get("num_classes", 10))
        training = None
        runs = len(config.seed_list)
    ids = min(config.identities or classes, classes)
    attacks: dict[str, Any] = {}
    for name in config.attacks:
        est = estimate_attack(name, arch, shape, classes, identities=ids, per_identity=config.per_identity,
                              budget=config.budget_for(name), options=config.options_for(name), device=dev)
        est.update({"runs": runs, "total_seconds": est["seconds"] * runs})
        attacks[name] = est
    total = (training["total_seconds"] if training else 0.0) + sum(a["total_seconds"] for a in attacks.values())
    peaks = [a["peak_bytes"] for a in attacks.values()] + ([training["peak_bytes"]] if training else [])
    return {"device": str(dev), "memory_method": next(iter(attacks.values()))["memory_method"] if attacks else None,
            "training": training, "attacks": attacks, "total_seconds": total,
            "gpu_seconds": total if dev.type == "cuda" else None, "peak_bytes": max(peaks) if peaks else 0,
            "notes": notes + ["excludes evaluation models, prior / surrogate training and data loading"]}


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_estimate(config: Any, *, estimate_only: bool = False, enabled: bool = True) -> bool:
    """Print the study's cost estimate (one line per phase, then the JSON when ``estimate_only``).

    Returns True when the command should stop here (``estimate_only``). A failed calibration prints why
    and lets the study run.
    """
    import sys

    if not (enabled or estimate_only):
        return False
    try:
        est = estimate_study(config)
    except Exception as exc:  # an estimate must never keep a study from running
        print(f"cost estimate unavailable: {exc}", file=sys.stderr)
        return estimate_only
    unit = "GPU-seconds" if est["gpu_seconds"] is not None else "CPU-seconds"
    lines = [f"estimate on {est['device']} ({est['memory_method']}):"]
    if est["training"]:
        t = est["training"]
        lines.append(f"  training   {t['targets']} x {t['seconds']:.0f} s, peak {_fmt_bytes(t['peak_bytes'])}")
    for name, a in est["attacks"].items():
        lines.append(f"  {name:<10} {a['runs']} x {a['seconds']:.0f} s, peak {_fmt_bytes(a['peak_bytes'])}")
    lines.append(f"  total      {est['total_seconds']:.0f} {unit} (excludes evaluation models and priors)")
    print("\n".join(lines), file=sys.stderr)
    if estimate_only:
        print(json.dumps(est, indent=2))
    return estimate_only
