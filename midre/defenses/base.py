"""The defense interface the trainer calls, the registry, and composition.

A defense may change three things, each through one hook, all default no-ops:

- which images take part in an epoch (:meth:`Defense.epoch_indices`; Entire Erasing),
- the batch the model sees (:meth:`Defense.transform`; MIDRE random erasing, augmentations),
- the model or the loss (:meth:`Defense.prepare_model`, :meth:`Defense.loss`; NLS, BiDO, MID, ...).

What a defense learns outside the model (Trap-MID's triggers) goes into the trainer's resume state
through :meth:`Defense.state_dict` / :meth:`Defense.load_state_dict`; it is not part of the checkpoint.

Parameters are validated when the defense is built, and every error names the field as
``defense.<param>`` so the CLI and the REST API can point at it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from midre.errors import ConfigError


@dataclass
class TrainContext:
    """What a defense may need to know about the training run, given once before training."""

    train_labels: Tensor  # [N] labels of the training set (dataset order)
    num_classes: int
    image_size: int
    channels: int
    normalization: Any  # object with .mean/.std, or None for [0, 1] pixels
    seed: int
    epochs: int
    device: torch.device


class Defense:
    """Base class: NoDef behaviour (plain cross-entropy on untouched images)."""

    name = "nodef"
    #: Parameters that name files (e.g. pretrained weights): a service must not take them from a
    #: client; it gives the defense a folder of its own choosing instead.
    path_params: tuple[str, ...] = ()
    #: Whether the trainer may run this defense over several devices (``TrainConfig.devices``): each
    #: rank process applies the hooks to its own slice of the batch and only the model's gradients are
    #: averaged, so a defense that trains state of its own outside the model (Trap-MID's triggers)
    #: would let that state drift apart between the ranks; it sets this False and is refused.
    data_parallel: bool = True

    def __init__(self) -> None:
        self.context: TrainContext | None = None

    # --- configuration -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The defense's parameters, as written into ``model.json``."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    # --- hooks -----------------------------------------------------------------------------------
    def setup(self, context: TrainContext) -> None:
        """Called once before training with what the defense needs to know about the data."""
        self.context = context

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Return the model to train (a wrapped or modified one for model-side defenses)."""
        return model

    def epoch_indices(self, epoch: int, n: int) -> Tensor | None:
        """Indices of the training images used in ``epoch``; None means all of them."""
        return None

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        """Change a normalised training batch on the device (never called at evaluation)."""
        return x

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Training loss; returns ``(loss, logits, extra numbers to log)``."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits, {}

    # --- state that is not the model's ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the defense learns during training outside the model (Trap-MID's triggers), for the
        trainer's per-epoch resume state; tensors, numbers and nested dicts only (``weights_only``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume (after :meth:`setup` and :meth:`prepare_model`)."""

    # --- what an adaptive attacker knows ----------------------------------------------------------
    #: Why an adaptive attacker has nothing of this defense to optimise through (when
    #: :meth:`attack_transform` gives ``None``).
    no_transform = ("changes the training loss or the model, not its input images: there is no training-time "
                    "transform for an attacker to optimise through")

    def attack_transform(self, normalization: Any) -> Transform | None:
        """The training-time input transform as an attacker who knows the defense applies it to a
        reconstruction: ``(x, generator) -> x'`` on a normalised model-input batch, differentiable in ``x``
        and drawn afresh on every call (an expectation over it is what an adaptive attack optimises);
        ``None`` when the defense has none (:attr:`no_transform` says why).

        Args:
            normalization: the target's input normalisation (``None``: ``[0, 1]`` pixels).
        """
        return None


#: ``(batch, generator) -> batch``: a defense's input transform as an attacker applies it.
Transform = Callable[[Tensor, torch.Generator], Tensor]
DefenseFactory = Callable[..., Defense]
_REGISTRY: dict[str, DefenseFactory] = {}


def register_defense(name: str) -> Callable[[DefenseFactory], DefenseFactory]:
    """Class decorator adding a defense to the registry under ``name``."""

    def add(factory: DefenseFactory) -> DefenseFactory:
        if name in _REGISTRY:
            raise ValueError(f"defense {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def adaptive_refusal(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str | None:
    """Why an adaptive attacker cannot adapt to the defense ``spec`` (``None``: it has a training-time
    transform to optimise through)."""
    defense = build_defense(spec)
    if defense.attack_transform(None) is not None:
        return None
    return f"{defense_label(defense.spec()) if isinstance(spec, Mapping) else defense.name} {defense.no_transform}"


def defense_names() -> list[str]:
    """Names accepted by :func:`build_defense`."""
    return sorted(_REGISTRY)


def defense_label(defense: Mapping[str, Any]) -> str:
    """Folder-safe label of a defense spec: ``midre``, ``midre-a_h0.8`` when parameters are given,
    ``midre-a_h0.8+nls`` composed (each part's parameters under its own name)."""
    if "+" in defense["name"]:
        return "+".join(defense_label({"name": n, **dict(defense.get(n) or {})}) for n in defense["name"].split("+"))
    extra = "-".join(f"{k}{v}" for k, v in sorted(defense.items()) if k != "name")
    return defense["name"] + (f"-{extra}" if extra else "")


def defense_path_params(name: str) -> tuple[str, ...]:
    """Parameters of defense ``name`` that name files (empty for an unknown name)."""
    return tuple(getattr(_REGISTRY.get(name), "path_params", ()))


def _build_one(spec: Mapping[str, Any], prefix: str) -> Defense:
    if not isinstance(spec, Mapping):
        raise ConfigError(prefix, f"expected an object with a 'name', got {type(spec).__name__}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"{prefix}.name", f"unknown defense {name!r}; known: {', '.join(defense_names())}")
    factory = _REGISTRY[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]}",
            f"unknown parameter for defense {name!r}; accepted: {', '.join(accepted) or 'none'}",
        )
    try:
        return factory(**params)
    except ConfigError as exc:
        raise exc.within(prefix) from None
    except (TypeError, ValueError) as exc:
        # A defense's own check names its parameter first ("a_h must be ...").
        message = str(exc)
        field = next((p for p in accepted if message.startswith(p)), None)
        raise ConfigError(f"{prefix}.{field}" if field else prefix, message) from exc


def build_defense(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Defense:
    """Build a defense from its spec.

    Args:
        spec: a name (``"midre"``), a mapping ``{"name": "midre", "a_h": 0.4}``, a list of
            mappings, or a mapping whose name joins several defenses with ``+`` and gives each
            one's parameters under its own name (``{"name": "midre+nls", "midre": {"a_h": 0.4}}``).

    Raises:
        ValueError: naming the field (``defense.a_h: ...``) when the spec is wrong.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and "+" in spec["name"]:
        names = spec["name"].split("+")
        extra = sorted(set(spec) - {"name", *names})
        if extra:
            raise ConfigError(f"defense.{extra[0]}", f"give each part's parameters under its name ({names})")
        spec = [{"name": n, **dict(spec.get(n) or {})} for n in names]
    if isinstance(spec, Mapping):
        return _build_one(spec, "defense")
    parts = [_build_one(s, f"defense[{i}]") for i, s in enumerate(spec)]
    if not parts:
        raise ConfigError("defense", "empty list; use 'nodef' for no defense")
    return parts[0] if len(parts) == 1 else ComposedDefense(parts)


class ComposedDefense(Defense):
    """Several defenses applied together, in order (e.g. MIDRE + NLS, paper Table 5).

    Data hooks chain; at most one part may own the loss (the others must keep the default).
    """

    def __init__(self, parts: Sequence[Defense]) -> None:
        super().__init__()
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        owners = [p for p in self.parts if type(p).loss is not Defense.loss]
        if len(owners) > 1:
            raise ConfigError("defense", f"{owners[0].name} and {owners[1].name} both define the loss")
        self._loss_owner = owners[0] if owners else None

    def params(self) -> dict[str, Any]:
        return {p.name: p.params() for p in self.parts}

    @property
    def data_parallel(self) -> bool:  # type: ignore[override]
        return all(p.data_parallel for p in self.parts)

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        for p in self.parts:
            p.setup(context)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        for p in self.parts:
            model = p.prepare_model(model)
        return model

    def epoch_indices(self, epoch: int, n: int) -> Tensor | None:
        keep: Tensor | None = None
        for p in self.parts:
            idx = p.epoch_indices(epoch, n)
            if idx is not None:
                keep = idx if keep is None else keep[torch.isin(keep, idx)]
        return keep

    def transform(self, x: Tensor, y: Tensor, indices: Tensor, epoch: int, generator: torch.Generator) -> Tensor:
        for p in self.parts:
            x = p.transform(x, y, indices, epoch, generator)
        return x

    @property
    def no_transform(self) -> str:  # type: ignore[override]
        return "; ".join(f"{p.name} {p.no_transform}" for p in self.parts)

    def attack_transform(self, normalization: Any) -> Transform | None:
        steps = [t for p in self.parts if (t := p.attack_transform(normalization)) is not None]
        if not steps:
            return None

        def chained(x: Tensor, generator: torch.Generator) -> Tensor:
            for step in steps:
                x = step(x, generator)
            return x

        return chained

    def state_dict(self) -> dict[str, Any]:
        return {str(i): s for i, p in enumerate(self.parts) if (s := p.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, p in enumerate(self.parts):
            if str(i) in state:
                p.load_state_dict(state[str(i)])

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        if self._loss_owner is None:
            return super().loss(model, x, y, epoch)
        return self._loss_owner.loss(model, x, y, epoch)
