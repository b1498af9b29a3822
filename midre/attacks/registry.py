"""The attack registry: ``name -> attack function``, in the style of :mod:`midre.models.registry`.

Each attack module registers its entry points with :func:`register_attack`; they are only ever
called through :func:`run_attack`, which validates the common arguments once and hands the attack
one :class:`AttackRequest`, so an attack function can assume a valid target, identities and options.

Example:
    >>> @register_attack("my-attack", options=MyOptions, paper="Someone et al., 2024")
    ... def my_attack(request: AttackRequest) -> AttackResult:
    ...     ...
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from midre.attacks.base import AttackBudget, AttackRequest, AttackResult, AttackTarget, identity_tensor
from midre.errors import ConfigError
from midre.priors.prior import PRIOR_KINDS, check_prior_options
from midre.progress import ProgressCallback, StopCallback

__all__ = [
    "ATTACKS",
    "AttackInfo",
    "AttackRequest",
    "get_attack",
    "list_attacks",
    "needs_public_data",
    "options_from_dict",
    "parse_options",
    "register_attack",
    "resolve_attack_name",
    "run_attack",
]

logger = logging.getLogger(__name__)

#: How an attack may use the target: white-box attacks get the model; the others an oracle.
ACCESS = ("white-box", "probabilities", "labels")


AttackFn = Callable[[AttackRequest], AttackResult]
F = TypeVar("F", bound=AttackFn)


@dataclass(frozen=True)
class AttackInfo:
    """What the registry knows about one attack.

    Attributes:
        name: the canonical name.
        run: ``run(request: AttackRequest) -> AttackResult``.
        options: the frozen dataclass of the attack's settings (built by :func:`parse_options`).
        needs: the kind of GAN prior the attack needs (``"gmi"``, ``"kedmi"``, ``"plg"``), or ``None``
            for the prior-free attacks.
        access: ``"white-box"`` (the model), ``"probabilities"`` or ``"labels"`` (a query oracle).
        paper: short citation.
        aliases: other accepted spellings.
        summary: first line of the function's docstring.
    """

    name: str
    run: AttackFn
    options: type
    needs: str | None
    access: str
    paper: str
    aliases: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, AttackInfo] = {}
_ALIASES: dict[str, str] = {}

#: ``name -> {"prior": needs, "paper": ..., ["access": ...]}`` in registration order: the summary
#: the CLI and the service read (``access`` only for the attacks that do not get the model).
ATTACKS: dict[str, dict[str, Any]] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_attack(name: str, *, options: type, needs: str | None = None, access: str = "white-box",
                    paper: str = "", aliases: Sequence[str] = ()) -> Callable[[F], F]:
    """Register ``run(request: AttackRequest) -> AttackResult`` under ``name`` (decorator).

    Args:
        name: the canonical name (lower case).
        options: the attack's frozen options dataclass; every field needs a default.
        needs: the GAN prior kind the attack needs (one of :data:`midre.priors.PRIOR_KINDS`) or ``None``.
        access: one of :data:`ACCESS`.
        paper: short citation shown by ``midre attack --help`` and the service.
        aliases: other spellings :func:`resolve_attack_name` accepts.

    Raises:
        ValueError: the name or an alias is taken, or ``needs`` / ``access`` is not a known value.
        TypeError: ``options`` is not a dataclass or the function does not take one request.
    """
    if _key(name) != name:
        raise ValueError(f"attack name {name!r} must be lower case without surrounding spaces")
    if needs is not None and needs not in PRIOR_KINDS:
        raise ValueError(f"needs must be None or one of {PRIOR_KINDS}, got {needs!r}")
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"options of {name!r} must be a dataclass, got {options!r}")

    def decorator(run: F) -> F:
        taken = [n for n in (name, *map(_key, aliases)) if n in _REGISTRY or n in _ALIASES]
        if taken:
            raise ValueError(f"attack name(s) {taken} already registered")
        if len(inspect.signature(run).parameters) != 1:
            raise TypeError(f"attack {name!r} must take exactly one AttackRequest")
        doc = inspect.getdoc(run) or ""
        _REGISTRY[name] = AttackInfo(name=name, run=run, options=options, needs=needs, access=access,
                                     paper=paper, aliases=tuple(map(_key, aliases)),
                                     summary=doc.splitlines()[0] if doc else "")
        _ALIASES.update({alias: name for alias in map(_key, aliases)})
        ATTACKS[name] = {"prior": needs, "paper": paper, **({} if access == "white-box" else {"access": access})}
        return run

    return decorator


def list_attacks() -> list[str]:
    """Names accepted by :func:`run_attack`, in registration order."""
    return list(_REGISTRY)


def get_attack(name: str) -> AttackInfo:
    """The :class:`AttackInfo` of ``name`` or an alias (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists every known name.
    """
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def resolve_attack_name(name: str) -> str:
    """Canonical attack name; ``ValueError`` listing every known name on a miss."""
    return get_attack(name).name


def needs_public_data(name: str) -> bool:
    """True for the attacks that need a GAN prior (trained on public data) or surrogate models."""
    return get_attack(name).needs is not None


def options_from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build an options dataclass; :class:`ConfigError` names an unknown or invalid option."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError("", f"options must be an object, got {type(data).__name__}")
    data = dict(data or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option of {cls.__name__}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        message = str(exc)
        field = next((k for k in sorted(known, key=len, reverse=True) if k in message), "")
        raise ConfigError(field, message) from exc


def parse_options(name: str, options: dict[str, Any] | None) -> Any:
    """The options object of attack ``name`` built from ``options`` (a JSON-like dict).

    Raises:
        ConfigError: naming the unknown or invalid option (``lr``, ``prior.width``); a service calls
            this before queueing so a misspelled option is refused at once, not in the worker.
    """
    info = get_attack(name)
    data = dict(options) if isinstance(options, dict) else options
    if isinstance(data, dict) and "prior" in data and "prior" in info.options.__dataclass_fields__:
        try:
            check_prior_options(data["prior"])
        except ConfigError as exc:
            raise exc.within("prior") from None
    return options_from_dict(info.options, data)


def run_attack(
    name: str,
    target: AttackTarget | nn.Module,
    identities: Sequence[int] | Tensor,
    *,
    per_identity: int = 4,
    prior: Any = None,
    public: Any = None,
    budget: AttackBudget | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    image_shape: tuple[int, int, int] | None = None,
    normalization: Any = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> AttackResult:
    """Reconstruct ``per_identity`` images of every identity in ``identities`` from ``target``.

    All reconstructions are optimised together in one batch (``budget.chunk_size`` bounds memory).

    Args:
        name: one of :func:`list_attacks` (aliases such as ``lomma`` -> ``lomma+gmi`` work).
        target: an :class:`AttackTarget`, or a bare model together with ``image_shape``/``normalization``.
        identities: class indices to attack.
        per_identity: reconstructions per identity.
        prior: a :class:`midre.priors.GanPrior` of the right kind; ``None`` trains one from ``public``
            (cached under ``cache_dir`` when given).
        public: :class:`midre.priors.PublicData` (needed by GAN attacks without ``prior`` and by LOMMA).
        budget: steps, restarts, step size, chunking, prior/surrogate training budget, and the
            query budget of the black-box / label-only attacks (``queries``).
        options: attack-specific settings (fields of the options class the attack registered, e.g.
            ``MIFaceOptions``, ``DeepInversionOptions``, ``GanAttackOptions``); an unknown field raises
            ``ValueError`` naming it.
        seed: seeds every random draw of the attack (initialisation, jitter, restarts).
        device: where to run.
        cache_dir: folder for priors and LOMMA surrogates to be reused across calls.
        progress: receives :class:`midre.progress.ProgressEvent` (stage ``attack``/``prior``/...).
        should_stop: polled every step; when it returns True, :class:`AttackCancelled` is raised.

    Returns:
        An :class:`AttackResult` (images in the target's input space, labels, target confidence).
    """
    info = get_attack(name)
    budget = budget or AttackBudget()
    device = torch.device(device)
    target = _as_target(target, image_shape, normalization)
    ids = _checked_identities(identities, target, per_identity)
    logger.info("attack %s: %d identities x %d images, %d steps x %d restarts on %s", info.name, ids.numel(),
                per_identity, budget.steps, budget.restarts, device)
    request = AttackRequest(name=info.name, target=target, identities=ids, per_identity=per_identity,
                            budget=budget, options=parse_options(info.name, options), seed=seed, device=device,
                            prior=prior, public=public, cache_dir=cache_dir, progress=progress,
                            should_stop=should_stop)
    return info.run(request)


def _as_target(target: AttackTarget | nn.Module, image_shape: tuple[int, int, int] | None,
               normalization: Any) -> AttackTarget:
    """``target`` as an :class:`AttackTarget`; a bare model needs its input shape (and normalisation)."""
    if isinstance(target, AttackTarget):
        return target
    if image_shape is None:
        raise ValueError("image_shape=(C, H, W) is required when target is a bare model")
    return AttackTarget(target, image_shape, normalization)


def _checked_identities(identities: Sequence[int] | Tensor, target: AttackTarget, per_identity: int) -> Tensor:
    """The identities as a tensor, each a class of ``target``; ``per_identity`` at least 1."""
    ids = identity_tensor(identities)
    if int(ids.min()) < 0 or int(ids.max()) >= int(target.num_classes or 0):
        raise ValueError(f"identities must lie in [0, {target.num_classes}), got {ids.tolist()[:10]}...")
    if per_identity < 1:
        raise ValueError(f"per_identity must be >= 1, got {per_identity}")
    return ids
