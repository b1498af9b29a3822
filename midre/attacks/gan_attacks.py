"""GAN-prior white-box attacks: GMI, KEDMI, LOMMA (+GMI / +KEDMI) and PLG-MI.

All latent searches run every reconstruction (identities x ``per_identity`` x restarts) in one batch.
Losses are *summed* over the batch so each latent's gradient does not depend on how many others
share the batch: the batched attack and a per-identity loop of it do the same work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.attacks.base import (
    AttackBudget,
    AttackResult,
    PixelCodec,
    StepReporter,
    attack_prior,
    chunks,
    differentiable_augment,
    expand_labels,
    freeze,
    max_margin_loss,
    select_best_restart,
    target_confidence,
)
from midre.attacks.registry import AttackRequest, register_attack
from midre.priors.prior import GanPrior, realness_log_prob
from midre.priors.surrogates import SurrogateConfig, distill_surrogates, mean_public_features
from midre.progress import no_progress, scaled

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GanAttackOptions:
    """Settings of the GAN-based attacks (paper defaults in brackets).

    Attributes:
        identity_weight: lambda weighting the identity loss against the prior loss (GMI/KEDMI: 100).
        clip_latent: clamp GMI latents to ``[-c, c]`` after each step (GMI: 1); 0 disables.
        momentum: SGD momentum of GMI's latent search (0.9).
        lomma_reg_weight: LOMMA's weight of ``||phi(x) - p_reg||^2`` in the logit loss.
        surrogates: LOMMA surrogate architectures (``midre.models`` names).
        prior: extra :class:`~midre.priors.PriorConfig` fields for a prior trained on demand.
        augment: PLG-MI optimises against randomly augmented copies (True in the paper).
    """

    identity_weight: float = 100.0
    clip_latent: float = 1.0
    momentum: float = 0.9
    lomma_reg_weight: float = 1.0
    surrogates: tuple[str, ...] = ("cnn-small",)
    prior: dict[str, Any] = field(default_factory=dict)
    augment: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.surrogates, list):  # a JSON list
            object.__setattr__(self, "surrogates", tuple(self.surrogates))


# default step sizes from the papers, for a loss summed over images
DEFAULT_LR = {"gmi": 0.02, "kedmi": 0.02, "plg": 0.1}


class IdentityLoss:
    """Per-image identity loss of ``[0, 1]`` images, averaged over one or more white-box models.

    ``kind="ce"`` is GMI/KEDMI's cross-entropy; ``kind="lomma"`` is LOMMA's logit loss
    ``-l_y(x) + w * ||phi(x) - p_reg||^2`` (Nguyen et al. 2023, Eq. 6), where ``phi`` is the
    penultimate representation and ``p_reg`` its mean over public images.
    """

    def __init__(self, models: list[nn.Module], codec: PixelCodec, kind: str = "ce",
                 p_regs: list[Tensor] | None = None, reg_weight: float = 1.0) -> None:
        self.models, self.codec, self.kind = models, codec, kind
        self.p_regs, self.reg_weight = p_regs, reg_weight

    def __call__(self, x01: Tensor, y: Tensor) -> Tensor:
        xin = self.codec.to_input(x01)
        total = torch.zeros(x01.shape[0], device=x01.device)
        for i, model in enumerate(self.models):
            if self.kind == "ce":
                total = total + F.cross_entropy(model(xin), y, reduction="none")
            else:
                feats = model.features(xin)
                logits = model.classifier(feats)
                reg = (feats - self.p_regs[i]).pow(2).mean(1)
                total = total + (-logits.gather(1, y[:, None]).squeeze(1) + self.reg_weight * reg)
        return total / len(self.models)


def _register(name: str, kind: str, *, lomma: bool, paper: str, summary: str, version: int,
              aliases: tuple[str, ...] = ()) -> Callable[[AttackRequest], AttackResult]:
    """Register the GAN attack ``name``: the latent search of prior ``kind``, with LOMMA on top or not
    (``version``: see :func:`midre.attacks.registry.attack_id`)."""

    def run(request: AttackRequest) -> AttackResult:
        return _run_gan_attack(request, kind, lomma=lomma)

    run.__name__ = run.__qualname__ = "run_" + name.replace("+", "_").replace("-", "_")
    run.__doc__ = summary
    return register_attack(name, options=GanAttackOptions, needs=kind, paper=paper, aliases=aliases,
                           version=version)(run)


run_gmi = _register("gmi", "gmi", lomma=False, version=1, paper="Zhang et al., CVPR 2020",
                    summary="GMI: latent search in a GAN prior trained on public images.")
run_kedmi = _register("kedmi", "kedmi", lomma=False, version=1, paper="Chen et al., ICCV 2021",
                      summary="KEDMI: a latent distribution per identity in a target-aware GAN prior.")
run_lomma_gmi = _register("lomma+gmi", "gmi", lomma=True, version=1, paper="Nguyen et al., CVPR 2023",
                          aliases=("lomma", "gmi+lomma"),
                          summary="LOMMA's logit loss and model augmentation on top of GMI.")
run_lomma_kedmi = _register("lomma+kedmi", "kedmi", lomma=True, version=1, paper="Nguyen et al., CVPR 2023",
                            aliases=("kedmi+lomma",),
                            summary="LOMMA's logit loss and model augmentation on top of KEDMI.")
run_plg_mi = _register("plg-mi", "plg", lomma=False, version=1, paper="Yuan et al., AAAI 2023",
                       aliases=("plgmi", "plg"),
                       summary="PLG-MI: class-conditional latent search in a prior trained on pseudo-labelled "
                               "public images.")


def _run_gan_attack(request: AttackRequest, kind: str, *, lomma: bool) -> AttackResult:
    """Train or reuse the ``kind`` prior (and LOMMA surrogates), then run the attack's latent search."""
    name, target, budget, options = request.name, request.target, request.budget, request.options
    seed, device, public = request.seed, request.device, request.public
    cache_dir, should_stop = request.cache_dir, request.should_stop
    progress = request.progress or no_progress
    start = time.monotonic()
    model = freeze(target.model.to(device))
    prep_end = 0.5 if request.prior is None else (0.3 if lomma else 0.0)
    prior, extra = attack_prior(request, kind, scaled(progress, 0.0, 0.35 if lomma else prep_end), target_aware=True)
    freeze(prior.discriminator)
    codec = PixelCodec(target.normalization, target.image_shape[0], device)
    models = [model]
    id_kind = "ce"
    p_regs = None
    if lomma:
        if public is None:
            raise ValueError(f"{name} needs public= images to distill its surrogate models")
        t0 = time.monotonic()
        scfg = SurrogateConfig(archs=tuple(options.surrogates), epochs=budget.surrogate_epochs, seed=seed)
        models = models + distill_surrogates(scfg, target, public, prior=prior, cache_dir=cache_dir,
                                             device=device, progress=scaled(progress, 0.35, 0.5),
                                             should_stop=should_stop)
        p_regs = [mean_public_features(m, public, codec, device) for m in models]
        extra["surrogate_seconds"] = time.monotonic() - t0
        id_kind = "lomma"
        prep_end = 0.5
    identity = IdentityLoss(models, codec, id_kind, p_regs, options.lomma_reg_weight)
    search = {"gmi": _gmi_search, "kedmi": _kedmi_search, "plg": _plg_search}[kind]
    t0 = time.monotonic()
    images01, labels, final, queries = search(
        prior, identity, request.identities, request.per_identity, budget, options, seed, device,
        StepReporter(name, 1, scaled(progress, prep_end, 1.0), should_stop))
    extra["search_seconds"] = time.monotonic() - t0
    extra["final_identity_loss"] = float(final.mean())
    images = codec.to_input(images01).detach()
    conf = target_confidence(model, images, labels.to(device))
    return AttackResult(images=images.cpu(), labels=labels, confidence=conf, queries=queries + labels.numel(),
                        seconds=time.monotonic() - start, normalization=target.normalization, attack=name,
                        extra=extra)


def _gmi_search(prior: GanPrior, identity: IdentityLoss, identities: Tensor, per_identity: int,
                budget: AttackBudget, options: GanAttackOptions, seed: int, device: torch.device,
                reporter: StepReporter) -> tuple[Tensor, Tensor, Tensor, int]:
    """GMI's latent search (Zhang et al. 2020, Eq. 4-5): ``min_z  -D(G(z)) + lambda * L_id(G(z))``
    with SGD + momentum, latents clipped to ``[-1, 1]``, several random restarts."""
    labels = expand_labels(identities, per_identity)
    n, r = labels.numel(), budget.restarts
    y_all = labels.repeat(r).to(device)
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn(n * r, prior.config.latent_dim, generator=gen).to(device)
    if options.clip_latent > 0:
        z_all = z_all.clamp(-options.clip_latent, options.clip_latent)
    lr = budget.lr if budget.lr is not None else DEFAULT_LR["gmi"]
    slices = chunks(n * r, budget.chunk_size)
    reporter.total = max(1, budget.steps * len(slices))
    final = torch.zeros(n * r)
    queries = 0
    for sl in slices:
        z = z_all[sl].clone().requires_grad_(True)
        y = y_all[sl]
        opt = torch.optim.SGD([z], lr=lr, momentum=options.momentum)
        for _ in range(budget.steps):
            x = prior.generator(z)
            prior_loss = -prior.discriminator(x).squeeze(1)
            loss = (prior_loss + options.identity_weight * identity(x, y)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if options.clip_latent > 0:
                with torch.no_grad():
                    z.clamp_(-options.clip_latent, options.clip_latent)
            queries += z.shape[0] * len(identity.models)
            reporter.step(float(loss.detach()) / z.shape[0])
        with torch.no_grad():
            z_all[sl] = z.detach()
            final[sl] = identity(prior.generator(z), y).cpu()
    best = select_best_restart(final, n, r) if r > 1 else torch.arange(n)
    with torch.no_grad():
        images = prior.generator(z_all[best.to(device)])
    return images, labels, final[best], queries


def _kedmi_search(prior: GanPrior, identity: IdentityLoss, identities: Tensor, per_identity: int,
                  budget: AttackBudget, options: GanAttackOptions, seed: int, device: torch.device,
                  reporter: StepReporter) -> tuple[Tensor, Tensor, Tensor, int]:
    """KEDMI's distributional recovery (Chen et al. 2021, Sec. 3.3, Eq. 7): learn ``mu_k, log sigma_k``
    per identity; sample ``z = mu + sigma * eps`` (reparameterised) and minimise
    ``-log D_real(G(z)) + lambda * CE(T(G(z)), k)``; the final images are fresh samples."""
    ids = torch.as_tensor(identities, dtype=torch.long).flatten()
    k, r, d = ids.numel(), budget.restarts, prior.config.latent_dim
    gen = torch.Generator().manual_seed(seed)
    ids_all = ids.repeat(r).to(device)  # one distribution per (restart, identity)
    mu_all = torch.zeros(k * r, d, device=device)
    log_sigma_all = torch.zeros(k * r, d, device=device)
    lr = budget.lr if budget.lr is not None else DEFAULT_LR["kedmi"]
    m = per_identity
    slices = chunks(k * r, None if budget.chunk_size is None else max(1, budget.chunk_size // m))
    reporter.total = max(1, budget.steps * len(slices))
    final = torch.zeros(k * r)
    queries = 0
    for sl in slices:
        mu = mu_all[sl].clone().requires_grad_(True)
        log_sigma = log_sigma_all[sl].clone().requires_grad_(True)
        y = ids_all[sl].repeat_interleave(m)
        opt = torch.optim.Adam([mu, log_sigma], lr=lr)
        for _ in range(budget.steps):
            eps = torch.randn(mu.shape[0] * m, d, generator=gen).to(device)
            z = mu.repeat_interleave(m, 0) + log_sigma.exp().repeat_interleave(m, 0) * eps
            x = prior.generator(z)
            prior_loss = -realness_log_prob(prior.discriminator(x))[0]
            per = prior_loss + options.identity_weight * identity(x, y)
            loss = per.sum() / m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            queries += z.shape[0] * len(identity.models)
            reporter.step(float(loss.detach()) / mu.shape[0])
        with torch.no_grad():
            mu_all[sl], log_sigma_all[sl] = mu.detach(), log_sigma.detach()
            x = prior.generator(mu.detach())
            final[sl] = identity(x, ids_all[sl]).cpu()
    best = select_best_restart(final, k, r) if r > 1 else torch.arange(k)
    best = best.to(device)
    with torch.no_grad():
        eps = torch.randn(k * m, d, generator=gen).to(device)
        z = mu_all[best].repeat_interleave(m, 0) + log_sigma_all[best].exp().repeat_interleave(m, 0) * eps
        images = prior.generator(z)
    labels = ids.repeat_interleave(m)
    return images, labels, final[best.cpu()].repeat_interleave(m), queries


def _plg_search(prior: GanPrior, identity: IdentityLoss, identities: Tensor, per_identity: int,
                budget: AttackBudget, options: GanAttackOptions, seed: int, device: torch.device,
                reporter: StepReporter) -> tuple[Tensor, Tensor, Tensor, int]:
    """PLG-MI's class-conditional latent search (Yuan et al. 2023, Sec. 3.3, Eq. 5): minimise the
    max-margin loss of the target on augmented ``G(z, k)`` with Adam; keep the best restart."""
    labels = expand_labels(identities, per_identity)
    n, r = labels.numel(), budget.restarts
    y_all = labels.repeat(r).to(device)
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn(n * r, prior.config.latent_dim, generator=gen).to(device)
    lr = budget.lr if budget.lr is not None else DEFAULT_LR["plg"]
    slices = chunks(n * r, budget.chunk_size)
    reporter.total = max(1, budget.steps * len(slices))
    final = torch.zeros(n * r)
    queries = 0

    def margin(x01: Tensor, y: Tensor) -> Tensor:
        total = torch.zeros(x01.shape[0], device=x01.device)
        for model in identity.models:
            total = total + max_margin_loss(model(identity.codec.to_input(x01)), y)
        return total / len(identity.models)

    for sl in slices:
        z = z_all[sl].clone().requires_grad_(True)
        y = y_all[sl]
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(budget.steps):
            x = prior.generator(z, y)
            if options.augment:
                x = differentiable_augment(x, gen)
            loss = margin(x, y).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            queries += z.shape[0] * len(identity.models)
            reporter.step(float(loss.detach()) / z.shape[0])
        with torch.no_grad():
            z_all[sl] = z.detach()
            final[sl] = margin(prior.generator(z, y), y).cpu()
    best = select_best_restart(final, n, r) if r > 1 else torch.arange(n)
    with torch.no_grad():
        images = prior.generator(z_all[best.to(device)], labels.to(device))
    return images, labels, final[best], queries
