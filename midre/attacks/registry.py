"""The attack registry: ``name -> attack function``, in the style of :mod:`midre.models.registry`.

Each attack module registers its entry points with :func:`register_attack`; they are only ever
called through :func:`run_attack`, which validates the common arguments once and hands the attack
one :class:`AttackRequest`, so an attack function can assume a valid target, identities and options.

Every attack carries an implementation ``version``; :func:`attack_id` names a run's attack as
``name@version+hash`` (the hash of the settings it ran with), so two results are comparable when their
ids are equal. Bump ``version`` when a change to the attack's code or to its options' defaults changes
what it reconstructs for the same settings (a refactor that leaves results alone keeps it).

Example:
    >>> @register_attack("my-attack", options=MyOptions, paper="Someone et al., 2024", version=1)
    ... def my_attack(request: AttackRequest) -> AttackResult:
    ...     ...
    >>> attack_id("my-attack", AttackBudget(steps=50), {"scale": 2.0})  # 'my-attack@1+' and 8 hex digits
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
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
    "attack_id",
    "get_attack",
    "list_attacks",
    "needs_public_data",
    "options_from_dict",
    "parse_attack_id",
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
        version: the implementation version (see :func:`attack_id`): bumped when a change to the code or
            to the options' defaults changes results for the same settings.
    """

    name: str
    run: AttackFn
    options: type
    needs: str | None
    access: str
    paper: str
    aliases: tuple[str, ...]
    summary: str
    version: int = 1


_REGISTRY: dict[str, AttackInfo] = {}
_ALIASES: dict[str, str] = {}

#: ``name -> {"prior": needs, "paper": ..., ["access": ...]}`` in registration order: the summary
#: the CLI and the service read (``access`` only for the attacks that do not get the model).
ATTACKS: dict[str, dict[str, Any]] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_attack(name: str, *, options: type, needs: str | None = None, access: str = "white-box",
                    paper: str = "", aliases: Sequence[str] = (), version: int = 1) -> Callable[[F], F]:
    """Register ``run(request: AttackRequest) -> AttackResult`` under ``name`` (decorator).

    Args:
        name: the canonical name (lower case).
        options: the attack's frozen options dataclass; every field needs a default.
        needs: the GAN prior kind the attack needs (one of :data:`midre.priors.PRIOR_KINDS`) or ``None``.
        access: one of :data:`ACCESS`.
        paper: short citation shown by ``midre attack --help`` and the service.
        aliases: other spellings :func:`resolve_attack_name` accepts.
        version: the implementation version, from 1; bump it when a change to the attack's code or to its
            options' defaults changes results for the same settings (it is part of :func:`attack_id`).

    Raises:
        ValueError: the name or an alias is taken, ``needs`` / ``access`` is not a known value, or
            ``version`` is not a positive integer.
        TypeError: ``options`` is not a dataclass or the function does not take one request.
    """
    if _key(name) != name:
        raise ValueError(f"attack name {name!r} must be lower case without surrounding spaces")
    if needs is not None and needs not in PRIOR_KINDS:
        raise ValueError(f"needs must be None or one of {PRIOR_KINDS}, got {needs!r}")
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version of {name!r} must be a positive integer, got {version!r}")
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
                                     summary=doc.splitlines()[0] if doc else "", version=version)
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


def attack_id(name: str, budget: AttackBudget | dict[str, Any] | None = None,
              options: dict[str, Any] | None = None) -> str:
    """The versioned id of an attack as it ran: ``<name>@<version>+<8 hex>``, e.g. ``gmi@1+5d41402a``.

    The hash is over the effective settings: the budget's and the options' fields that differ from their
    class defaults (canonical JSON, sorted keys), so spelling a default out or adding a new option with a
    default leaves the id as it was, while any setting that changes the run changes it. What the defaults
    themselves do is covered by the attack's ``version`` (see :func:`register_attack`). Aliases resolve
    to the canonical name first (``lomma`` -> ``lomma+gmi@1+...``).

    Raises:
        ValueError: unknown attack or budget field; :class:`ConfigError` for an unknown or invalid option.
    """
    info = get_attack(name)
    if not isinstance(budget, AttackBudget):
        budget = AttackBudget.from_dict(dict(budget or {}))
    settings = {"budget": _non_default(budget), "options": _non_default(parse_options(info.name, options))}
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return f"{info.name}@{info.version}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def parse_attack_id(value: str) -> tuple[str, int, str] | None:
    """``(name, version, hash)`` of an id from :func:`attack_id`; ``None`` for anything else."""
    name, _, rest = str(value).rpartition("@")
    version, _, digest = rest.partition("+")
    if not name or not version.isdigit() or len(digest) != 8:
        return None
    return name, int(version), digest


def _non_default(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` whose values differ from the field's default, as plain JSON values."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, dataclasses as dicts and whole floats as ints, so equal settings give
    equal JSON (``2`` and ``2.0`` alike)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
