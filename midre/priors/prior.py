"""Training, saving and caching the GAN priors of the GAN-based attacks.

A prior is trained on *public* images only (the non-private identities of the same data set or a
separate data set) and is saved as ``generator.safetensors`` + ``discriminator.safetensors`` +
``prior.json``. :func:`load_or_train_prior` looks it up by a cache key built from everything that
determines it: the kind, the public data's key, the image shape, the architecture sizes, the step
budget, the seed and, for the target-specific kinds (KEDMI's soft labels, PLG-MI's pseudo-labels),
the target's weights key. A GMI prior is therefore reused by every attack and every target of the
same data set, as in the papers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from midre.errors import ConfigError
from midre.priors.gan import Discriminator, Generator, gradient_penalty
from midre.progress import ProgressCallback, StepReporter, StopCallback
from midre.target import AttackTarget, PixelCodec, max_margin_loss
from midre.target import differentiable_augment as _augment

logger = logging.getLogger(__name__)

PRIOR_KINDS = ("gmi", "kedmi", "plg")
TARGET_SPECIFIC = {"kedmi", "plg"}


@dataclass
class PublicData:
    """Public images the attacker may use: ``images`` uint8 ``[P, C, H, W]`` and a stable ``key``."""

    images: Tensor
    key: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[0] == 0:
            raise ValueError(f"PublicData.images must be a non-empty [P, C, H, W] tensor, "
                             f"got shape {tuple(self.images.shape)}")

    @classmethod
    def from_images(cls, images: Tensor, description: str = "") -> PublicData:
        """Key the data by a hash of its bytes (so equal data shares cached priors)."""
        digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
        return cls(images=images, key=digest, description=description)

    def batch(self, idx: Tensor, flip: Tensor | None = None) -> Tensor:
        x = self.images[idx].float() / 255.0
        if flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


@dataclass(frozen=True)
class PriorConfig:
    """How a GAN prior is trained.

    Attributes:
        kind: ``gmi`` (WGAN-GP, Zhang et al. 2020), ``kedmi`` (soft-label semi-supervised GAN,
            Chen et al. 2021) or ``plg`` (pseudo-label conditional GAN, Yuan et al. 2023).
        steps: generator iterations.
        batch_size: images per step.
        latent_dim: latent size (100 in GMI/KEDMI).
        width: base channel width of G and D (the papers use 64; 32 keeps CPU training practical).
        lr: Adam learning rate (2e-4 in all three papers).
        n_critic: discriminator steps per generator step (5 for WGAN-GP).
        gp_weight: WGAN-GP penalty weight (10).
        entropy_weight: KEDMI's entropy term on fake samples' class posterior.
        top_n: PLG-MI pseudo-labelled public images per class.
        inversion_weight: PLG-MI's weight of the inversion loss in the generator objective.
        seed: random seed.
        resolution: side at which G draws and D judges (``None``: the image size). The generator's
            output is resized to the image size, so attacks see full-size images; 32 for 64 px
            images makes a prior about 4x cheaper on a CPU (our CPU default), at the cost of detail.
    """

    kind: str = "gmi"
    steps: int = 1500
    batch_size: int = 64
    latent_dim: int = 100
    width: int = 32
    lr: float = 2e-4
    n_critic: int = 5
    gp_weight: float = 10.0
    entropy_weight: float = 1e-4
    top_n: int = 30
    inversion_weight: float = 0.2
    seed: int = 0
    resolution: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise ValueError(f"PriorConfig.kind must be one of {PRIOR_KINDS}, got {self.kind!r}")
        for name in ("steps", "batch_size", "latent_dim", "width", "n_critic", "top_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "steps" else 1):
                raise ValueError(f"PriorConfig.{name} must be a positive integer, got {value!r}")
        if self.resolution is not None and (isinstance(self.resolution, bool) or not isinstance(self.resolution, int)
                                            or self.resolution < 8):
            raise ValueError(f"PriorConfig.resolution must be an integer >= 8 or None, got {self.resolution!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: PriorConfig fields an attack sets itself (from its name, its budget and its seed).
ATTACK_SET_PRIOR_FIELDS = ("kind", "steps", "seed")


def check_prior_options(options: Any) -> None:
    """Refuse prior options (``PriorConfig`` fields other than those an attack sets) that are unknown
    or invalid; :class:`ConfigError` names the field."""
    if not isinstance(options, dict):
        raise ConfigError("", f"must be an object, got {type(options).__name__}")
    known = [f for f in PriorConfig.__dataclass_fields__ if f not in ATTACK_SET_PRIOR_FIELDS]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown prior option; known: {', '.join(known)}")
    try:
        PriorConfig(**options)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        field = next((k for k in sorted(known, key=len, reverse=True) if f".{k} " in message), "")
        raise ConfigError(field, message) from exc


@dataclass
class GanPrior:
    """A trained generator + discriminator pair and the facts needed to rebuild and reuse it."""

    generator: Generator
    discriminator: Discriminator
    config: PriorConfig
    image_shape: tuple[int, int, int]
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.config.kind

    def to(self, device: torch.device | str) -> GanPrior:
        self.generator.to(device)
        self.discriminator.to(device)
        return self

    def sample(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z, y if self.generator.num_classes else None)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.generator.state_dict().items()},
                  str(path / "generator.safetensors"))
        save_file({k: v.contiguous() for k, v in self.discriminator.state_dict().items()},
                  str(path / "discriminator.safetensors"))
        meta = {"config": self.config.to_dict(), "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "info": self.info}
        tmp = path / "prior.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(path / "prior.json")  # written last: its presence marks a finished prior
        return path

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> GanPrior:
        from safetensors.torch import load_file

        path = Path(directory)
        meta_path = path / "prior.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no prior.json in {path}")
        meta = json.loads(meta_path.read_text())
        config = PriorConfig(**meta["config"])
        shape = tuple(meta["image_shape"])
        gen, disc = build_networks(config, shape, meta.get("num_classes"))
        gen.load_state_dict(load_file(str(path / "generator.safetensors")))
        disc.load_state_dict(load_file(str(path / "discriminator.safetensors")))
        gen.eval()
        disc.eval()
        prior = cls(gen, disc, config, shape, meta.get("num_classes"), meta.get("info", {}))
        return prior.to(device)


def build_networks(config: PriorConfig, image_shape: tuple[int, int, int],
                   num_classes: int | None) -> tuple[Generator, Discriminator]:
    c, _, w = image_shape
    res = min(config.resolution, w) if config.resolution else None
    if config.kind == "gmi":
        return (Generator(config.latent_dim, w, c, config.width, resolution=res),
                Discriminator(w, c, config.width, outputs=1, norm="instance", resolution=res))
    if num_classes is None:
        raise ValueError(f"a {config.kind} prior needs num_classes (the target's identities)")
    if config.kind == "kedmi":
        return (Generator(config.latent_dim, w, c, config.width, resolution=res),
                Discriminator(w, c, config.width, outputs=num_classes, norm="instance", resolution=res))
    return (Generator(config.latent_dim, w, c, config.width, num_classes=num_classes, resolution=res),
            Discriminator(w, c, config.width, outputs=1, num_classes=num_classes, norm="none", spectral=True,
                          resolution=res))


def prior_key(config: PriorConfig, public: PublicData, image_shape: tuple[int, int, int],
              target: AttackTarget | None = None) -> str:
    """Cache key of a prior: everything that determines its weights (see module docstring)."""
    parts: dict[str, Any] = {"config": config.to_dict(), "public": public.key, "shape": list(image_shape)}
    if config.kind in TARGET_SPECIFIC:
        if target is None:
            raise ValueError(f"a {config.kind} prior is target-specific: pass the target")
        parts["target"] = target.key or "unkeyed"
    blob = json.dumps(parts, sort_keys=True).encode()
    return f"{config.kind}-{hashlib.sha256(blob).hexdigest()[:16]}"


def load_or_train_prior(config: PriorConfig, public: PublicData, image_shape: tuple[int, int, int], *,
                        cache_dir: str | Path | None = None, target: AttackTarget | None = None,
                        device: torch.device | str = "cpu", progress: ProgressCallback | None = None,
                        should_stop: StopCallback | None = None) -> GanPrior:
    """Return the cached prior for this key, training (and caching) it first when missing."""
    key = prior_key(config, public, image_shape, target)
    if cache_dir is not None:
        directory = Path(cache_dir) / "priors" / key
        if (directory / "prior.json").is_file():
            logger.info("reusing GAN prior %s", directory)
            return GanPrior.load(directory, device)
    prior = train_prior(config, public, image_shape, target=target, device=device, progress=progress,
                        should_stop=should_stop)
    prior.info["key"] = key
    if cache_dir is not None:
        prior.save(Path(cache_dir) / "priors" / key)
    return prior


def train_prior(config: PriorConfig, public: PublicData, image_shape: tuple[int, int, int], *,
                target: AttackTarget | None = None, device: torch.device | str = "cpu",
                progress: ProgressCallback | None = None,
                should_stop: StopCallback | None = None) -> GanPrior:
    """Train a GAN prior of ``config.kind`` on ``public`` (see the module docstring for the papers).

    Raises:
        ValueError: public images of another shape, or a target-specific kind without a target.
        midre.progress.Cancelled: ``should_stop`` returned True (nothing is saved).
    """
    device = torch.device(device)
    if tuple(public.images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"public images have shape {tuple(public.images.shape[1:])}, the prior needs "
                         f"{tuple(image_shape)} (load the public data at the target's size and channels)")
    if config.kind in TARGET_SPECIFIC and target is None:
        raise ValueError(f"a {config.kind} prior uses the target's predictions: pass target=")
    torch.manual_seed(config.seed)
    gen_rng = torch.Generator().manual_seed(config.seed)
    num_classes = target.num_classes if target is not None and config.kind in TARGET_SPECIFIC else None
    generator, disc = build_networks(config, image_shape, num_classes)
    generator.to(device).train()
    disc.to(device).train()
    betas = (0.0, 0.9) if config.kind == "plg" else (0.5, 0.999)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
    reporter = StepReporter(f"prior:{config.kind}", config.steps, progress, should_stop, stage="prior")
    start = time.monotonic()
    trainer = {"gmi": _train_gmi, "kedmi": _train_kedmi, "plg": _train_plg}[config.kind]
    last = trainer(config, public, generator, disc, opt_g, opt_d, target, device, gen_rng, reporter)
    generator.eval()
    disc.eval()
    seconds = time.monotonic() - start
    logger.info("trained %s prior: %d steps in %.1fs", config.kind, config.steps, seconds)
    info = {"seconds": seconds, "public": public.key, "public_description": public.description,
            "public_images": int(public.images.shape[0]), "final_losses": last,
            "target": target.key if target is not None and config.kind in TARGET_SPECIFIC else None}
    return GanPrior(generator, disc, config, tuple(image_shape), num_classes, info)


def _real_batch(public: PublicData, idx_pool: Tensor | None, n: int, device: torch.device,
                rng: torch.Generator) -> tuple[Tensor, Tensor]:
    pool = idx_pool if idx_pool is not None else None
    size = pool.numel() if pool is not None else public.images.shape[0]
    pick = torch.randint(0, size, (n,), generator=rng)
    idx = pool[pick] if pool is not None else pick
    flip = torch.rand(n, generator=rng) < 0.5
    return public.batch(idx, flip).to(device), idx


def _train_gmi(config: PriorConfig, public: PublicData, g: Generator, d: Discriminator,
               opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, target: AttackTarget | None,
               device: torch.device, rng: torch.Generator, reporter: StepReporter) -> dict[str, float]:
    """WGAN-GP (GMI, Zhang et al. 2020, Sec. 3.2 trains its prior with the Wasserstein-GP loss)."""
    bs = config.batch_size
    d_loss = g_loss = torch.zeros(())
    for _ in range(config.steps):
        for _ in range(config.n_critic):
            real, _ = _real_batch(public, None, bs, device, rng)
            z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
            with torch.no_grad():
                fake = g(z)
            d_loss = d(fake).mean() - d(real).mean() + config.gp_weight * gradient_penalty(d, real, fake, rng)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
        g_loss = -d(g(z)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        reporter.step(float(d_loss.detach()))
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}


def realness_log_prob(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(real)`` and ``log p(fake)`` of a K-logit discriminator (Salimans et al. 2016; KEDMI Eq. 4).

    ``p(real) = Z / (Z + 1)`` with ``Z = sum_k exp(l_k)``.
    """
    lse = torch.logsumexp(logits, dim=1)
    return lse - F.softplus(lse), -F.softplus(lse)


@torch.no_grad()
def _target_probs(target: AttackTarget, x01: Tensor, codec: PixelCodec) -> Tensor:
    return target.model(codec.to_input(x01)).softmax(1)


def _train_kedmi(config: PriorConfig, public: PublicData, g: Generator, d: Discriminator,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, target: AttackTarget | None,
                 device: torch.device, rng: torch.Generator, reporter: StepReporter) -> dict[str, float]:
    """KEDMI's inversion-specific GAN (Chen et al. 2021, Sec. 3.2, Eq. 3-6).

    D: soft-label loss ``-sum_k T(x)_k log D(x)_k`` on public images (knowledge from the target)
    plus the unsupervised real/fake loss. G: feature matching on D's penultimate features plus an
    entropy term that makes each fake sample look like one identity.
    """
    if target is None:
        raise ValueError("a kedmi prior needs the target")
    target.model.to(device).eval()
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    bs = config.batch_size
    d_loss = g_loss = torch.zeros(())
    for _ in range(config.steps):
        for _ in range(config.n_critic):
            real, _ = _real_batch(public, None, bs, device, rng)
            soft = _target_probs(target, real, codec)
            z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
            with torch.no_grad():
                fake = g(z)
            logits_real, logits_fake = d(real), d(fake)
            sup = -(soft * logits_real.log_softmax(1)).sum(1).mean()
            unsup = -realness_log_prob(logits_real)[0].mean() - realness_log_prob(logits_fake)[1].mean()
            d_loss = sup + unsup
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        real, _ = _real_batch(public, None, bs, device, rng)
        z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
        fake = g(z)
        with torch.no_grad():
            f_real = d.features(real).mean(0)
        f_fake = d.features(fake)
        logits = d.head(f_fake)
        probs = logits.softmax(1)
        entropy = -(probs * logits.log_softmax(1)).sum(1).mean()
        g_loss = (f_real - f_fake.mean(0)).pow(2).mean() + config.entropy_weight * entropy
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        reporter.step(float(d_loss.detach()))
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}


@torch.no_grad()
def pseudo_label_public(target: AttackTarget, public: PublicData, top_n: int, device: torch.device,
                        batch: int = 256) -> tuple[Tensor, Tensor]:
    """PLG-MI's top-n selection (Yuan et al. 2023, Sec. 3.1): per class, the ``top_n`` public images
    the target is most confident belong to it. Returns (public indices, pseudo-labels), class-major.
    """
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    model = target.model.to(device).eval()
    probs = []
    for start in range(0, public.images.shape[0], batch):
        x = public.batch(torch.arange(start, min(start + batch, public.images.shape[0]))).to(device)
        probs.append(model(codec.to_input(x)).softmax(1).cpu())
    p = torch.cat(probs)
    k = min(top_n, p.shape[0])
    idx = p.topk(k, dim=0).indices.T.contiguous()  # [K, k]
    labels = torch.arange(p.shape[1])[:, None].expand_as(idx)
    return idx.flatten(), labels.flatten()


def _train_plg(config: PriorConfig, public: PublicData, g: Generator, d: Discriminator,
               opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, target: AttackTarget | None,
               device: torch.device, rng: torch.Generator, reporter: StepReporter) -> dict[str, float]:
    """PLG-MI's conditional GAN (Yuan et al. 2023, Sec. 3.2, Eq. 3-4): hinge loss with a projection
    discriminator on pseudo-labelled public images; the generator also minimises the max-margin
    inversion loss of the target on augmented samples of the requested class.
    """
    if target is None:
        raise ValueError("a plg prior needs the target")
    model = target.model.to(device).eval()
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    idx_pool, label_pool = pseudo_label_public(target, public, config.top_n, device)
    num_classes = int(target.num_classes or 0)
    bs = config.batch_size
    d_loss = g_loss = torch.zeros(())
    for _ in range(config.steps):
        for _ in range(config.n_critic):
            pick = torch.randint(0, idx_pool.numel(), (bs,), generator=rng)
            flip = torch.rand(bs, generator=rng) < 0.5
            real = public.batch(idx_pool[pick], flip).to(device)
            y_real = label_pool[pick].to(device)
            z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
            y_fake = torch.randint(0, num_classes, (bs,), generator=rng).to(device)
            with torch.no_grad():
                fake = g(z, y_fake)
            d_loss = F.relu(1 - d(real, y_real)).mean() + F.relu(1 + d(fake, y_fake)).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        z = torch.randn(bs, config.latent_dim, generator=rng).to(device)
        y = torch.randint(0, num_classes, (bs,), generator=rng).to(device)
        fake = g(z, y)
        inv = max_margin_loss(model(codec.to_input(_augment(fake, rng))), y).mean()
        g_loss = -d(fake, y).mean() + config.inversion_weight * inv
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        reporter.step(float(d_loss.detach()))
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}



