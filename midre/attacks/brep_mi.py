"""BREP-MI: label-only model inversion by boundary repulsion (Kahla et al., CVPR 2022).

Paper: "Label-Only Model Inversion Attacks via Boundary Repulsion", arXiv:2203.01925.

The attacker sees only the target's top-1 label (:class:`~midre.attacks.blackbox.LabelOracle`) and
walks in the latent space of a GAN prior trained on public images (the GMI generator, Sec. 3.2):

1. Initial points (Sec. 3.3): draw latents ``z ~ N(0, I)`` (clamped to ``[-1.5, 1.5]``) in batches
   until the target labels ``G(z)`` as the identity; every image counts as a query.
2. Boundary repulsion (Sec. 3.4, Alg. 1): on a sphere of radius ``R`` around ``z`` sample ``N``
   directions ``u_n`` (``||u_n|| = R``), query the labels of ``G(z + u_n)`` and estimate the direction
   away from the decision boundary as ``M(z) = (1/N) sum_n Phi(z + u_n) u_n / R`` with
   ``Phi = -1`` for a point labelled otherwise and 0 for a point in the class ("repulsion only", the
   authors' default), i.e. the negated mean direction towards the points outside the class.
3. Step ``z <- clamp(z + min(R/3, 3) * M(z))``, accepted only if ``G(z)`` is still labelled as the
   identity (one more query); when (nearly) all sphere points are in the class, ``R <- 1.3 R``.
   A walk ends after ``patience`` iterations without growing its sphere, or when the budget is spent.

All walks (identities x ``per_identity``) run in one batch; finished walks stop spending queries.
The reconstruction is ``G(z)`` at the walk's last accepted point (always labelled as the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from midre.attacks.base import AttackBudget, AttackResult, StepReporter, expand_labels
from midre.attacks.blackbox import LabelOracle, QueryBudgetExceeded, run_query_attack
from midre.attacks.registry import AttackRequest, register_attack
from midre.progress import ProgressCallback, StopCallback


@dataclass(frozen=True)
class BREPMIOptions:
    """BREP-MI settings (the authors' defaults in brackets).

    Attributes:
        sphere_points: ``N``, points sampled on each sphere [32].
        initial_radius: ``R_0`` [2].
        expansion: factor applied to ``R`` when the sphere is inside the class [1.3].
        expand_fraction: share of sphere points that must be in the class to grow ``R``
            (paper text: all, 1.0; the authors' code uses 0.75).
        max_step_size: the step is ``min(R / 3, max_step_size)`` [3].
        clamp: latents are clamped to ``[-clamp, clamp]`` [1.5].
        patience: iterations at one radius before a walk terminates [1000].
        max_radius: also stop a walk once ``R`` reaches this (``None``: no limit).
        init_batch: latents per batch of the initial-point search [256].
        init_fraction: share of ``AttackBudget.queries`` the initial-point search may use.
        init_max_batches: cap on initial-point batches when there is no query budget.
        checkpoints: fractions of the budget at which the current images are snapshotted.
        prior: extra :class:`~midre.priors.PriorConfig` fields for a GMI prior trained on demand.
    """

    sphere_points: int = 32
    initial_radius: float = 2.0
    expansion: float = 1.3
    expand_fraction: float = 1.0
    max_step_size: float = 3.0
    clamp: float = 1.5
    patience: int = 1000
    max_radius: float | None = None
    init_batch: int = 256
    init_fraction: float = 0.5
    init_max_batches: int = 20
    checkpoints: tuple[float, ...] = (0.25, 0.5, 1.0)
    prior: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(float(c) for c in self.checkpoints))
        for name in ("sphere_points", "patience", "init_batch", "init_max_batches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"BREPMIOptions.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (self.initial_radius > 0 and self.expansion > 1 and self.clamp > 0 and self.max_step_size > 0):
            raise ValueError("BREPMIOptions: initial_radius, clamp, max_step_size must be > 0 and expansion > 1")
        if not 0 < self.expand_fraction <= 1 or not 0 < self.init_fraction <= 1:
            raise ValueError("BREPMIOptions.expand_fraction and init_fraction must be in (0, 1]")


def sphere_directions(center: Tensor, points: int, radius: Tensor, generator: torch.Generator) -> Tensor:
    """``[n, points, d]`` offsets uniform on spheres of radius ``radius [n]`` (normalised Gaussians)."""
    u = torch.randn(center.shape[0], points, center.shape[1], generator=generator).to(center.device)
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12) * radius[:, None, None]


def repulsion_direction(offsets: Tensor, inside: Tensor, radius: Tensor) -> Tensor:
    """BREP-MI's update direction ``M(z) = mean_n Phi_n u_n / R`` (Phi = -1 outside the class, 0 inside).

    Args:
        offsets: ``[n, N, d]`` sphere offsets ``u_n``; inside: ``[n, N]`` bool; radius: ``[n]``.
    """
    phi = -(~inside).to(offsets.dtype)
    return (phi[..., None] * offsets).mean(1) / radius[:, None]


class BREPMI:
    """The BREP-MI attack. Holds the label oracle and the attacker's own generator only."""

    def __init__(self, oracle: LabelOracle, generator: nn.Module, options: BREPMIOptions | None = None,
                 *, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if not isinstance(oracle, LabelOracle):
            raise TypeError("BREP-MI is a label-only attack: it takes a LabelOracle")
        self.oracle = oracle
        self.generator = generator
        self.options = options or BREPMIOptions()
        self.seed = seed
        self.device = torch.device(device)

    def _generate(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            return self.generator(z)

    def _labels(self, z: Tensor) -> Tensor:
        return self.oracle.predict_label(self._generate(z)).to(self.device)

    def initial_points(self, y: Tensor, max_queries: int | None, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One latent per walk that the target labels ``y[j]`` (Sec. 3.3); ``found`` marks the successes."""
        opt, dim = self.options, int(self.generator.latent_dim)
        m = y.numel()
        z = torch.randn(m, dim, generator=gen).to(self.device).clamp(-opt.clamp, opt.clamp)
        found = torch.zeros(m, dtype=torch.bool, device=self.device)
        spent = 0
        for _ in range(opt.init_max_batches if max_queries is None else 1 << 30):
            if bool(found.all()):
                break
            batch = opt.init_batch if max_queries is None else min(opt.init_batch, max_queries - spent)
            if batch < 1:
                break
            cand = torch.randn(batch, dim, generator=gen).to(self.device).clamp(-opt.clamp, opt.clamp)
            labels = self._labels(cand)
            spent += batch
            used = torch.zeros(batch, dtype=torch.bool, device=self.device)
            for cls in y[~found].unique().tolist():
                slots = ((y == cls) & ~found).nonzero().squeeze(1)
                hits = ((labels == cls) & ~used).nonzero().squeeze(1)[: slots.numel()]
                if hits.numel():
                    z[slots[: hits.numel()]] = cand[hits]
                    found[slots[: hits.numel()]] = True
                    used[hits] = True
        return z, found

    def run(self, identities: Tensor, per_identity: int, budget: AttackBudget, *,
            progress: ProgressCallback | None = None, should_stop: StopCallback | None = None) -> dict[str, Any]:
        """Run every walk until it terminates or the query budget (or ``budget.steps`` iterations) is spent.

        Returns a dict with ``pixels`` ``[K * per_identity, C, H, W]`` in ``[0, 1]``, ``labels``,
        ``checkpoints`` (``(queries, pixels)``) and ``extra``.
        """
        opt, dev = self.options, self.device
        labels = expand_labels(identities, per_identity)
        y = labels.to(dev)
        m = y.numel()
        gen = torch.Generator().manual_seed(self.seed)
        limit = budget.queries
        init_cap = None if limit is None else max(1, int(limit * opt.init_fraction))
        z, found = self.initial_points(y, init_cap, gen)
        init_queries = self.oracle.queries
        per_iter = m * (opt.sphere_points + 1)
        est_iters = budget.steps if limit is None else max(1, (limit - init_queries) // max(1, per_iter))
        reporter = StepReporter("brep-mi", est_iters, progress, should_stop)
        marks = sorted({max(1, round(f * (limit if limit is not None else budget.steps)))
                        for f in opt.checkpoints if 0 < f <= 1})
        snapshots: list[tuple[int, Tensor]] = []
        radius = torch.full((m,), float(opt.initial_radius), device=dev)
        since_growth = torch.zeros(m, dtype=torch.long, device=dev)
        active = found.clone()
        it = accepted = proposed = 0

        def snap(position: int) -> None:
            while marks and position >= marks[0]:
                marks.pop(0)
                if not snapshots or snapshots[-1][0] != self.oracle.queries:  # one snapshot per count
                    snapshots.append((self.oracle.queries, self._generate(z).cpu()))

        if limit is not None:
            snap(self.oracle.queries)
        while bool(active.any()) and (limit is not None or it < budget.steps):
            idx = self._affordable(active, gen)
            if idx is None:
                break
            try:
                grow, ok, tried = self._move(z, y, idx, radius, gen)
            except QueryBudgetExceeded:  # cannot happen with the sizing above; keep the walk's state
                break
            accepted, proposed = accepted + ok, proposed + tried
            active &= ~self._grow(radius, since_growth, idx, grow)
            it += 1
            snap(self.oracle.queries if limit is not None else it)
            reporter.step(float(radius[found].mean()) if bool(found.any()) else None,
                          message=f"brep-mi iteration {it}, mean radius {float(radius.mean()):.2f}")
        pixels = self._generate(z).cpu()
        if not snapshots or snapshots[-1][0] != self.oracle.queries:
            snapshots.append((self.oracle.queries, pixels))
        extra = {"iterations": it, "initial_queries": init_queries, "initial_found": float(found.float().mean()),
                 "mean_radius": float(radius[found].mean()) if bool(found.any()) else 0.0,
                 "max_radius_reached": float(radius.max()), "accepted_steps": accepted,
                 "proposed_steps": proposed, "walks_finished": int((found & ~active).sum()),
                 # walks still going when the queries ran out: the budget, not the walks, ended the attack
                 "budget_exhausted": limit is not None and bool(active.any())}
        return {"pixels": pixels, "labels": labels, "checkpoints": snapshots, "extra": extra}

    def _affordable(self, active: Tensor, gen: torch.Generator) -> Tensor | None:
        """The walks to move in this iteration: every active one, or a random subset that the queries
        left pay for; ``None`` when not even one walk fits."""
        n_pts = self.options.sphere_points
        idx = active.nonzero().squeeze(1)
        remaining = self.oracle.remaining
        if remaining is not None and remaining < idx.numel() * (n_pts + 1):
            fit = remaining // (n_pts + 1)
            if fit < 1:
                return None
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:fit].to(self.device)]
        return idx

    def _move(self, z: Tensor, y: Tensor, idx: Tensor, radius: Tensor, gen: torch.Generator) -> tuple[Tensor, int, int]:
        """One step of the walks ``idx`` (Sec. 3.2): label points on a sphere of each walk's radius, step
        away from those outside the class, keep a step whose label is still the class (``z`` changes in
        place). Returns which spheres are mostly inside the class (they grow), accepted and proposed steps.
        """
        opt = self.options
        r = radius[idx]
        offsets = sphere_directions(z[idx], opt.sphere_points, r, gen)
        inside = (self._labels((z[idx, None] + offsets).reshape(-1, z.shape[1])).view(idx.numel(), opt.sphere_points)
                  == y[idx, None])
        direction = repulsion_direction(offsets, inside, r)
        grow = inside.float().mean(1) >= opt.expand_fraction
        move = ~inside.all(1)  # all in class: M(z) = 0, the point would not move (no query)
        if not bool(move.any()):
            return grow, 0, 0
        step = (r[move] / 3).clamp(max=opt.max_step_size)
        cand = (z[idx[move]] + step[:, None] * direction[move]).clamp(-opt.clamp, opt.clamp)
        ok = self._labels(cand) == y[idx[move]]
        z[idx[move][ok]] = cand[ok]
        return grow, int(ok.sum()), int(move.sum())

    def _grow(self, radius: Tensor, since_growth: Tensor, idx: Tensor, grow: Tensor) -> Tensor:
        """Grow the radius of the spheres that were mostly inside the class (in place); the walks that
        end now: no growth for ``patience`` iterations, or the radius reached ``max_radius``."""
        opt = self.options
        radius[idx[grow]] *= opt.expansion
        since_growth[idx] += 1
        since_growth[idx[grow]] = 0
        done = since_growth >= opt.patience
        if opt.max_radius is not None:
            done |= radius >= opt.max_radius
        return done


@register_attack("brep-mi", options=BREPMIOptions, needs="gmi", access="labels", paper="Kahla et al., CVPR 2022",
                 aliases=("brepmi",), version=1)
def run_brep_mi(request: AttackRequest) -> AttackResult:
    """BREP-MI through a :class:`~midre.attacks.blackbox.LabelOracle` in a GMI prior's latent space."""
    return run_query_attack(request, LabelOracle, BREPMI)


__all__ = ["BREPMI", "BREPMIOptions", "repulsion_direction", "run_brep_mi", "sphere_directions"]
