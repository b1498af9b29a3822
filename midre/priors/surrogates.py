"""LOMMA's model augmentation: surrogate students distilled from the target on public data.

Nguyen et al., "Re-thinking Model Inversion Attacks Against Deep Neural Networks", CVPR 2023,
Sec. 4.2: a few models of *other* architectures are trained by knowledge distillation to mimic the
target's soft predictions on public images (and on images from the GAN prior); the inversion loss is
then averaged over the target and these surrogates, so that the reconstruction does not overfit
the target's idiosyncrasies. Surrogates are cached next to the priors under a key of the target's
weights, the public data, the architectures and the budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.priors.prior import GanPrior, PublicData
from midre.progress import ProgressCallback, StepReporter, StopCallback
from midre.target import AttackTarget, PixelCodec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurrogateConfig:
    """Distillation settings.

    Attributes:
        archs: architectures from :func:`midre.models.create_model` (one surrogate each).
        epochs: passes over the public images.
        batch_size: images per step; half public, half prior samples when a prior is given.
        lr: Adam learning rate.
        temperature: softmax temperature of the distillation KL (Hinton et al. 2015).
        seed: random seed.
    """

    archs: tuple[str, ...] = ("cnn-small",)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"archs": list(self.archs), "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "temperature": self.temperature, "seed": self.seed}


def surrogate_key(config: SurrogateConfig, target: AttackTarget, public: PublicData,
                  prior: GanPrior | None) -> str:
    blob = json.dumps({"config": config.to_dict(), "target": target.key or "unkeyed", "public": public.key,
                       "prior": (prior.info.get("key") if prior is not None else None)}, sort_keys=True)
    return "surrogates-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _create(arch: str, target: AttackTarget) -> nn.Module:
    from midre.models import create_model

    c, _, w = target.image_shape
    return create_model(arch, num_classes=int(target.num_classes or 0), image_size=w, in_channels=c)


def distill_surrogates(config: SurrogateConfig, target: AttackTarget, public: PublicData, *,
                       prior: GanPrior | None = None, cache_dir: str | Path | None = None,
                       device: torch.device | str = "cpu", progress: ProgressCallback | None = None,
                       should_stop: StopCallback | None = None) -> list[nn.Module]:
    """Train (or load cached) surrogate students of ``target`` (LOMMA's model augmentation)."""
    device = torch.device(device)
    key = surrogate_key(config, target, public, prior)
    directory = Path(cache_dir) / "surrogates" / key if cache_dir is not None else None
    if directory is not None and (directory / "surrogates.json").is_file():
        models = _load_cached(config, target, directory, device)
        logger.info("reusing LOMMA surrogates %s", directory)
        return models
    rng = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    teacher = target.model.to(device).eval()
    steps_per_epoch = max(1, public.images.shape[0] // config.batch_size)
    total = steps_per_epoch * config.epochs * len(config.archs)
    reporter = StepReporter("lomma:surrogates", total, progress, should_stop, stage="surrogates")
    models: list[nn.Module] = []
    start = time.monotonic()
    agreement: list[float] = []
    for arch in config.archs:
        student = _create(arch, target).to(device).train()
        _distill(student, teacher, config, public, prior, codec, rng, config.epochs * steps_per_epoch, reporter,
                 device)
        student.eval()
        agreement.append(_agreement(student, teacher, public, codec, device))
        models.append(student)
    seconds = time.monotonic() - start
    logger.info("distilled %d LOMMA surrogates in %.1fs (top-1 agreement with target on public: %s)",
                len(models), seconds, [round(a, 3) for a in agreement])
    if directory is not None:
        _save(models, directory, {"config": config.to_dict(), "agreement": agreement, "seconds": seconds})
    for model in models:
        for p in model.parameters():
            p.requires_grad_(False)
    return models


def _load_cached(config: SurrogateConfig, target: AttackTarget, directory: Path,
                 device: torch.device) -> list[nn.Module]:
    """The surrogates an earlier run saved in ``directory`` (same key: same target, data and config)."""
    from safetensors.torch import load_file

    models = []
    for i, arch in enumerate(config.archs):
        model = _create(arch, target)
        model.load_state_dict(load_file(str(directory / f"surrogate{i}.safetensors")))
        models.append(model.to(device).eval())
    return models


def _save(models: list[nn.Module], directory: Path, summary: dict[str, Any]) -> None:
    """Each surrogate as ``surrogate<i>.safetensors``, then ``surrogates.json`` (written last: it marks
    the folder complete for :func:`_load_cached`)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for i, model in enumerate(models):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(directory / f"surrogate{i}.safetensors"))
    (directory / "surrogates.json").write_text(json.dumps(summary, indent=2))


def _distill(student: nn.Module, teacher: nn.Module, config: SurrogateConfig, public: PublicData,
             prior: GanPrior | None, codec: PixelCodec, rng: torch.Generator, steps: int,
             reporter: StepReporter, device: torch.device) -> None:
    """Knowledge distillation: ``steps`` Adam steps on the KL divergence between the student's and the
    teacher's tempered softmax, on public images (half of each batch from ``prior`` when given)."""
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    t = config.temperature
    n_pub = public.images.shape[0]
    for _ in range(steps):
        n_real = config.batch_size if prior is None else config.batch_size // 2
        idx = torch.randint(0, n_pub, (n_real,), generator=rng)
        x = public.batch(idx, torch.rand(n_real, generator=rng) < 0.5).to(device)
        if prior is not None:
            with torch.no_grad():
                n_fake = config.batch_size - n_real
                z = torch.randn(n_fake, prior.config.latent_dim, generator=rng).to(device)
                y = (torch.randint(0, prior.num_classes, (z.shape[0],), generator=rng).to(device)
                     if prior.num_classes else None)
                x = torch.cat([x, prior.sample(z, y)])
        xin = codec.to_input(x)
        with torch.no_grad():
            soft = (teacher(xin) / t).softmax(1)
        loss = F.kl_div((student(xin) / t).log_softmax(1), soft, reduction="batchmean") * t * t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reporter.step(float(loss.detach()))


@torch.no_grad()
def _agreement(student: nn.Module, teacher: nn.Module, public: PublicData, codec: PixelCodec,
               device: torch.device) -> float:
    hits = 0
    n = public.images.shape[0]
    for start in range(0, n, 256):
        x = codec.to_input(public.batch(torch.arange(start, min(n, start + 256))).to(device))
        hits += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
    return hits / n


@torch.no_grad()
def mean_public_features(model: nn.Module, public: PublicData, codec: PixelCodec,
                         device: torch.device) -> Tensor:
    """LOMMA's ``p_reg``: the mean penultimate representation of public images under ``model``."""
    feats = []
    n = public.images.shape[0]
    for start in range(0, n, 256):
        x = codec.to_input(public.batch(torch.arange(start, min(n, start + 256))).to(device))
        feats.append(model.features(x))
    return torch.cat(feats).mean(0)
