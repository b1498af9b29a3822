"""Trapdoor-based Model Inversion Defense (Trap-MID) as a defense.

Liu & Chen, "Trap-MID: Trapdoor-based Defense against Model Inversion Attacks", NeurIPS 2024,
https://arxiv.org/abs/2411.08460; the authors' code: https://github.com/ntuaislab/Trap-MID.

A model inversion attack searches for inputs the model assigns to a class with high confidence.
Trap-MID gives it a shortcut: the model also learns a *trapdoor* per class ``c``, a trigger pattern
``t_c`` whose light blend into *any* image makes the model predict ``c``. Optimising towards class
``c`` then tends to find the trigger instead of the private features of ``c``.

Each training step, for a batch ``(x, y)`` and trapdoor labels ``y'`` (one per image, every class
equally often within a batch):

1. trigger update (model in eval mode, weights untouched): ``x' = (1 - alpha) x + alpha t_{y'}``,
   ``L_t = CE(f(x'), y')`` (+ a discriminator's "this is a clean image" loss when
   ``discriminator`` is on), one signed-gradient step ``t <- clip(t - step_size * sign(grad_t L_t),
   0, 1)``;
2. model update on the clean batch and its poisoned copies with the new triggers, in one forward
   pass: ``L = (1 - beta) CE(f(x), y) + beta CE(f(x'), y')``.

Triggers live in ``[0, 1]`` pixel space, ``[classes, channels, side, side]``, drawn uniformly at
the start (the paper's setup); the blend is done on the normalised batch, which is the same thing
because normalisation is affine per channel and the blend weights sum to one:
``norm((1 - a) p + a t) = (1 - a) norm(p) + a norm(t)``.

Nothing changes at inference: :meth:`TrapMID.prepare_model` returns the model as it is (it only
builds the optional discriminator, when training), so a checkpoint reloads as a plain model. The
triggers are the defender's secret and are not written into the checkpoint; the trainer keeps them
in its per-epoch resume state (:meth:`TrapMID.state_dict`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, TrainContext, register_defense
from midre.seeding import TRAPDOOR_STREAM, epoch_seed

__all__ = ["TrapMID", "balanced_targets", "blend"]


def blend(x: Tensor, trigger: Tensor, alpha: float) -> Tensor:
    """Inject a trigger: ``(1 - alpha) * x + alpha * trigger`` (both in the same space)."""
    return (1.0 - alpha) * x + alpha * trigger


def balanced_targets(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """``n`` trapdoor labels in which every class occurs ``floor(n / C)`` or ``ceil(n / C)`` times,
    in random order and from a random starting class (the authors' code balances them per epoch)."""
    device = generator.device
    order = torch.rand(n, generator=generator, device=device).argsort()
    start = torch.randint(0, num_classes, (1,), generator=generator, device=device)
    return (order + start) % num_classes


def _number(value: Any, name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    return float(value)


@register_defense("trap-mid")
class TrapMID(Defense):
    """Trap-MID: a trapdoor per class, learned with the model; the triggers are optimised too.

    Defaults are the paper's (experimental setup: "typically ... alpha = 0.02 and ... beta = 0.2")
    and the authors' ``config/classify_trap.json`` (``alpha 0.02``, ``beta 0.2``, ``step_size 1e-2``,
    optimised triggers). The authors' default also trains a discriminator for trigger naturalness
    (``discriminator_loss: true``); it is off here by default (see ``discriminator``). On small data
    alpha = 0.02 may not be learned in a short run: watch ``trap_trapdoor_acc`` (docs/defenses.md).

    Logged per epoch (batch means): ``trap_ce`` (clean CE), ``trap_trapdoor_ce`` and
    ``trap_trapdoor_acc`` (the poisoned copies against their trapdoor labels), ``trap_trigger_loss``
    (the trigger step's loss), and ``trap_disc_loss`` with the discriminator.

    Args:
        alpha: blend ratio of the trigger, in (0, 1).
        beta: weight of the trapdoor loss, in [0, 1); the clean loss has ``1 - beta``.
        step_size: signed-gradient step of the trigger update per batch (pixel units); 0 keeps the
            random initial triggers (the authors' ``optimized: false``).
        discriminator: also train a discriminator (the target's architecture with one output, its
            own SGD: lr 0.01, momentum 0.9, weight decay 1e-4, the authors' settings) to tell clean
            from poisoned images, and add its "clean" loss to the trigger update (trigger naturalness).
            Roughly doubles the cost of a step.
    """

    name = "trap-mid"
    no_transform = ("trains a trapdoor into the model (a trigger per class, blended into poisoned copies of the "
                    "training images) and does not transform the training images themselves: there is no "
                    "training-time transform for an attacker to optimise through")
    # The triggers (and the optional discriminator) are updated from each step's own batch outside the
    # model; over several devices every rank would move them by its own slice and they would drift apart.
    data_parallel = False

    def __init__(self, alpha: float = 0.02, beta: float = 0.2, step_size: float = 0.01,
                 discriminator: bool = False) -> None:
        super().__init__()
        self.alpha = _number(alpha, "alpha", 0.0, 1.0, low_open=True, high_open=True)
        self.beta = _number(beta, "beta", 0.0, 1.0, low_open=False, high_open=True)
        self.step_size = _number(step_size, "step_size", 0.0, 1.0, low_open=False, high_open=False)
        if not isinstance(discriminator, bool):
            raise ValueError(f"discriminator must be true or false, got {discriminator!r}")
        self.discriminator = discriminator
        self.triggers: Tensor | None = None  # [C, channels, side, side] in [0, 1], after setup()
        self.disc: nn.Module | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        self._targets: tuple[Tensor, int] | None = None  # trapdoor labels of the batch transform() saw

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "step_size": self.step_size,
                "discriminator": self.discriminator}

    # --- set-up ----------------------------------------------------------------------------------
    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        gen = torch.Generator().manual_seed(epoch_seed(context.seed, 0, TRAPDOOR_STREAM))
        shape = (context.num_classes, context.channels, context.image_size, context.image_size)
        self.triggers = torch.rand(shape, generator=gen).to(context.device)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model unchanged; with ``discriminator`` and after :meth:`setup`, also builds it."""
        if self.discriminator and self.context is not None:
            from midre.models import create_model

            arch = getattr(model, "arch", None)
            if arch is None:
                raise ValueError(f"arch: trap-mid's discriminator needs a registry model, got {type(model).__name__}")
            self.disc = create_model(arch, 1, image_size=self.context.image_size,
                                     in_channels=self.context.channels).to(self.context.device)
            self.disc_opt = torch.optim.SGD(self.disc.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return model

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.triggers is not None:
            state["triggers"] = self.triggers.detach().cpu().clone()
        if self.disc is not None and self.disc_opt is not None:
            state["discriminator"] = self.disc.state_dict()
            state["discriminator_optimizer"] = self.disc_opt.state_dict()
        return state

    def load_state_dict(self, state: Any) -> None:
        if "triggers" in state:
            device = self.context.device if self.context is not None else torch.device("cpu")
            self.triggers = state["triggers"].to(device)
        if self.disc is not None and self.disc_opt is not None and "discriminator" in state:
            self.disc.load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["discriminator_optimizer"])

    # --- the trapdoor ----------------------------------------------------------------------------
    def trigger_images(self, triggers: Tensor | None = None) -> Tensor:
        """The triggers in model-input space (normalised like the training batches)."""
        t = triggers if triggers is not None else self.triggers
        if t is None:
            raise ValueError("trap-mid: no triggers yet; call setup() first")
        norm = self.context.normalization if self.context is not None else None
        return norm.normalize(t) if norm is not None else t

    def inject(self, x: Tensor, targets: Tensor, triggers: Tensor | None = None) -> Tensor:
        """Poisoned copies of the normalised batch ``x``: trigger ``t_{targets[i]}`` blended into ``x[i]``."""
        return blend(x, self.trigger_images(triggers)[targets].to(x.dtype), self.alpha)

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        """Draw the batch's trapdoor labels (from the trainer's seeded generator); the batch is unchanged."""
        self._targets = (balanced_targets(x.shape[0], self._num_classes(), generator).to(y.device), x.shape[0])
        return x

    def _batch_targets(self, x: Tensor) -> Tensor:
        saved, self._targets = self._targets, None
        if saved is not None and saved[1] == x.shape[0]:
            return saved[0]
        gen = torch.Generator(device=x.device).manual_seed(int(torch.randint(0, 2**62, (1,))))
        return balanced_targets(x.shape[0], self._num_classes(), gen)

    def _num_classes(self) -> int:
        if self.triggers is None:
            raise ValueError("trap-mid: no triggers yet; call setup() first")
        return int(self.triggers.shape[0])

    def _discriminator_step(self, x: Tensor, poisoned: Tensor) -> tuple[Tensor, float]:
        """Train the discriminator one step (clean = 1, poisoned = 0); return the triggers' "clean"
        loss through it (differentiable in the triggers) and the discriminator's loss."""
        if self.disc is None or self.disc_opt is None:
            raise RuntimeError("trap-mid: no discriminator; prepare_model() builds it after setup()")
        n = x.shape[0]
        self.disc.train()
        out = self.disc(torch.cat([x, poisoned.detach()])).float().squeeze(1)
        labels = torch.cat([out.new_ones(n), out.new_zeros(n)])
        d_loss = F.binary_cross_entropy_with_logits(out, labels)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        self.disc.eval()
        fooled = self.disc(poisoned).float().squeeze(1)
        return F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled)), float(d_loss.detach())

    def update_triggers(self, model: nn.Module, x: Tensor, targets: Tensor) -> dict[str, float]:
        """One signed-gradient step on the triggers with the model in eval mode (its weights and
        their gradients are left alone). Returns the numbers to log."""
        was_training = model.training
        model.eval()
        t = self.triggers.detach().clone().requires_grad_(True)  # type: ignore[union-attr]
        poisoned = self.inject(x.detach(), targets, t)
        trigger_loss = F.cross_entropy(model(poisoned).float(), targets)
        logs: dict[str, float] = {}
        if self.disc is not None:
            natural, logs["trap_disc_loss"] = self._discriminator_step(x.detach(), poisoned)
            trigger_loss = trigger_loss + natural
        (grad,) = torch.autograd.grad(trigger_loss, t)
        self.triggers = (t.detach() - self.step_size * grad.sign()).clamp_(0.0, 1.0)
        model.train(was_training)
        logs["trap_trigger_loss"] = float(trigger_loss.detach())
        return logs

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        targets = self._batch_targets(x)
        logs = self.update_triggers(model, x, targets) if self.step_size > 0 else {}
        n = x.shape[0]
        both = model(torch.cat([x, self.inject(x, targets)]))
        logits, trap_logits = both[:n], both[n:]
        ce = F.cross_entropy(logits, y)
        trap_ce = F.cross_entropy(trap_logits, targets)
        loss = (1.0 - self.beta) * ce + self.beta * trap_ce
        trap_acc = (trap_logits.detach().argmax(1) == targets).float().mean()
        logs.update({"trap_ce": float(ce.detach()), "trap_trapdoor_ce": float(trap_ce.detach()),
                     "trap_trapdoor_acc": float(trap_acc)})
        return loss, logits, logs
