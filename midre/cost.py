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

The judges (evaluation models) and the GAN priors a study trains are estimated the same way, at zero
when the cache holds them already. The figures are estimates: data loading and surrogate training are
not included, and a CPU that other processes share times slower than an idle one.
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

__all__ = ["estimate_attack", "estimate_prior", "estimate_study", "estimate_training", "measure", "print_estimate"]

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


def estimate_prior(prior_cfg: Any, image_shape: tuple[int, int, int], *, device: str | torch.device | None = None
                   ) -> dict[str, Any]:
    """Seconds and peak memory of training one GAN prior, from one timed WGAN-GP step at its batch size
    (``n_critic`` critic updates with the gradient penalty, then a generator update)."""
    from midre.priors.gan import gradient_penalty
    from midre.priors.prior import build_networks

    dev = _device(device)
    gen, disc = build_networks(prior_cfg, image_shape, None)
    gen, disc = gen.to(dev).train(), disc.to(dev).train()
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 1e-4), torch.optim.Adam(disc.parameters(), 1e-4)
    bs, rng = prior_cfg.batch_size, torch.Generator().manual_seed(0)
    real = torch.rand(bs, *image_shape, device=dev)

    def step() -> None:
        for _ in range(prior_cfg.n_critic):
            fake = gen(torch.randn(bs, prior_cfg.latent_dim, device=dev)).detach()
            loss = disc(fake).mean() - disc(real).mean() + gradient_penalty(disc, real, fake, rng)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        loss = -disc(gen(torch.randn(bs, prior_cfg.latent_dim, device=dev))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    m = measure(step, dev, warmup=1, repeats=1, fixed_bytes=_param_bytes(gen, disc))
    return {"kind": prior_cfg.kind, "steps": prior_cfg.steps, "seconds_per_step": m["seconds"],
            "seconds": m["seconds"] * prior_cfg.steps, "peak_bytes": m["peak_bytes"],
            "memory_method": m["memory_method"]}


def _study_shape(config: Any) -> dict[str, Any]:
    """Architecture, image shape, classes, training images and the private data spec of a study."""
    import dataclasses

    from midre.study import PipelineConfig

    notes: list[str] = []
    if isinstance(config, PipelineConfig):
        data = config.data
        total = _count_classes(data.source)
        num_private = data.num_private
        if num_private is None and total and config.splits_public and config.public_data is None:
            num_private = max(2, total - max(1, math.ceil(config.public_fraction * total)))
        classes = num_private or total or 10
        images = _count_images(data.source)
        if images is None:
            images = classes * 20
            notes.append("image count unknown (archive or unreadable path): assumed 20 per identity")
        elif total:
            images = int(images * classes / total)
        spec = dataclasses.replace(data, num_private=num_private) if num_private != data.num_private else data
        return {"arch": config.arch, "shape": (data.channels, data.image_size, data.image_size), "classes": classes,
                "train_images": int(images * (1 - data.test_fraction)), "spec": spec, "notes": notes}
    card = json.loads((Path(config.target) / "model.json").read_text())
    size = int(card.get("image_size") or card.get("data", {}).get("image_size", 64))
    classes = int(card.get("num_classes", 10))
    try:
        spec = config.dataset_spec()
        images = _count_images(spec.source) or classes * 20
    except ValueError:  # a model trained elsewhere without its data spec: the judges' size is a guess
        spec, images = None, classes * 20
        notes.append("the private data set is unknown here: assumed 20 images per identity for the judges")
    return {"arch": card.get("arch", "cnn-small"), "classes": classes, "spec": spec, "notes": notes,
            "shape": (int(card.get("channels") or card.get("data", {}).get("channels", 3)), size, size),
            "train_images": int(images * 0.8)}


def _judges(config: Any, study: dict[str, Any], dev: torch.device) -> list[dict[str, Any]]:
    """Each judge the study trains: its estimate, or zero seconds when it is in the cache already."""
    from midre.evaluation.eval_model import eval_model_key

    if getattr(config, "eval_model", None):
        return []
    out = []
    for cfg in config.judge_configs():
        key = eval_model_key(study["spec"], cfg) if study["spec"] is not None else None
        cached = bool(config.cache_dir and key and (Path(config.cache_dir) / "evaluation" / key / "evaluation.json")
                      .is_file())
        if cached:
            out.append({"arch": cfg.arch, "seed": cfg.seed, "cached": True, "seconds": 0.0, "peak_bytes": 0})
            continue
        est = estimate_training(cfg.arch, study["shape"], study["classes"], batch_size=cfg.batch_size,
                                train_images=study["train_images"], epochs=cfg.epochs, device=dev)
        out.append({"arch": cfg.arch, "seed": cfg.seed, "cached": False, **est})
    return out


def _priors(config: Any, study: dict[str, Any], dev: torch.device) -> list[dict[str, Any]]:
    """Each GAN prior the study trains: its estimate, or zero seconds when an equal one is in the cache."""
    from midre.planners import gmi_prior_config

    out, seen = [], set()
    for attack in config.attacks:
        cfg = gmi_prior_config(config, attack)
        if cfg is None or json.dumps(cfg.to_dict(), sort_keys=True) in seen:
            continue
        seen.add(json.dumps(cfg.to_dict(), sort_keys=True))
        if _prior_cached(config.cache_dir, cfg.to_dict(), study["shape"]):
            out.append({"kind": cfg.kind, "steps": cfg.steps, "cached": True, "seconds": 0.0, "peak_bytes": 0})
        else:
            out.append({"cached": False, **estimate_prior(cfg, study["shape"], device=dev)})
    return out


def _prior_cached(cache_dir: str | None, config: dict[str, Any], shape: tuple[int, int, int]) -> bool:
    """Whether the cache holds a prior with this config and image shape (trained on any public data)."""
    if not cache_dir or not (Path(cache_dir) / "priors").is_dir():
        return False
    for path in (Path(cache_dir) / "priors").glob("*/prior.json"):
        info = json.loads(path.read_text())
        if info.get("config") == config and list(info.get("image_shape") or []) == list(shape):
            return True
    return False


def estimate_study(config: Any, device: str | torch.device | None = None) -> dict[str, Any]:
    """Expected seconds (GPU-seconds on a CUDA device) and peak memory of a study, before it runs.

    Every unit is counted: the judges and GAN priors it trains (zero when the cache holds them), the
    targets (a pipeline's), and every attack run.

    Args:
        config: a :class:`midre.study.PipelineConfig` (or its dict), or an
            :class:`midre.study.AttackEvalConfig` (the target's card gives arch and size).
        device: where to calibrate (default: the config's device; ``auto`` picks CUDA when present).

    Returns:
        A JSON-able dict: ``device``, ``memory_method``, ``judges``, ``priors``, ``training`` (per target
        and total; ``None`` for an audit), ``attacks`` (per run and total for each attack),
        ``total_seconds``, ``gpu_seconds`` (``None`` off CUDA), ``peak_bytes`` (the largest phase) and the
        assumptions made.
    """
    from midre.study import AttackEvalConfig, PipelineConfig

    if isinstance(config, dict):
        config = (AttackEvalConfig if "target" in config else PipelineConfig).from_dict(config)
    dev = _device(device or getattr(config, "device", None))
    study = _study_shape(config)
    arch, shape, classes = study["arch"], study["shape"], study["classes"]
    training, runs = None, len(config.seed_list)
    if isinstance(config, PipelineConfig):
        targets = len(config.defenses) * len(config.seed_list)
        training = estimate_training(arch, shape, classes, batch_size=config.batch_size,
                                     train_images=study["train_images"], epochs=config.epochs, device=dev)
        training.update({"targets": targets, "total_seconds": training["seconds"] * targets,
                         "train_images": study["train_images"]})
        runs = targets
    ids = min(config.identities or classes, classes)
    attacks: dict[str, Any] = {}
    for name in config.attacks:
        est = estimate_attack(name, arch, shape, classes, identities=ids, per_identity=config.per_identity,
                              budget=config.budget_for(name), options=config.options_for(name), device=dev)
        est.update({"runs": runs, "total_seconds": est["seconds"] * runs})
        attacks[name] = est
    attacks.update(_adaptive(config, attacks))
    judges, priors = _judges(config, study, dev), _priors(config, study, dev)
    phases = [*judges, *priors, *([training] if training else []), *attacks.values()]
    total = sum(p.get("total_seconds", p["seconds"]) for p in phases)
    return {"device": str(dev), "memory_method": next(iter(attacks.values()))["memory_method"] if attacks else None,
            "judges": judges, "priors": priors, "training": training, "attacks": attacks, "total_seconds": total,
            "gpu_seconds": total if dev.type == "cuda" else None,
            "peak_bytes": max((p["peak_bytes"] for p in phases), default=0),
            "notes": study["notes"] + ["excludes data loading, surrogate training (LOMMA) and the report"]}


def _adaptive(config: Any, attacks: dict[str, Any]) -> dict[str, Any]:
    """The adaptive attacker's runs (``<attack>@adaptive``): the standard run's time and memory times its
    expectation samples (an upper bound: the generator's share is not repeated), one run per seed of each
    target whose defense has a transform."""
    from midre.defenses import adaptive_refusal
    from midre.study import PipelineConfig

    chosen = config.adaptive_attacks()
    if not chosen:
        return {}
    seeds = len(config.seed_list)
    if isinstance(config, PipelineConfig):
        runs = seeds * sum(adaptive_refusal(d) is None for d in config.defenses[1:])
    else:
        runs = seeds
    out = {}
    for name in chosen:
        k = config.eot_samples_for(name)
        base = attacks[name]
        out[f"{name}@adaptive"] = {**base, "seconds": base["seconds"] * k, "peak_bytes": base["peak_bytes"] * k,
                                   "eot_samples": k, "runs": runs, "total_seconds": base["seconds"] * k * runs}
    return out


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
    for judge in est.get("judges") or []:
        what = "cached" if judge["cached"] else f"{judge['seconds']:.0f} s, peak {_fmt_bytes(judge['peak_bytes'])}"
        lines.append(f"  judge      {judge['arch']} (seed {judge['seed']}): {what}")
    for prior in est.get("priors") or []:
        what = "cached" if prior["cached"] else f"{prior['seconds']:.0f} s, peak {_fmt_bytes(prior['peak_bytes'])}"
        lines.append(f"  prior      {prior['kind']} ({prior['steps']} steps): {what}")
    if est["training"]:
        t = est["training"]
        lines.append(f"  training   {t['targets']} x {t['seconds']:.0f} s, peak {_fmt_bytes(t['peak_bytes'])}")
    for name, a in est["attacks"].items():
        lines.append(f"  {name:<10} {a['runs']} x {a['seconds']:.0f} s, peak {_fmt_bytes(a['peak_bytes'])}")
    lines.append(f"  total      {est['total_seconds']:.0f} {unit} (every judge, prior, target and attack run)")
    print("\n".join(lines), file=sys.stderr)
    if estimate_only:
        print(json.dumps(est, indent=2))
    return estimate_only
