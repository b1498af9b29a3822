"""Model inversion attacks behind one interface: :func:`run_attack`.

============== ================================================================ =============
name           paper                                                            needs
============== ================================================================ =============
mi-face        Fredrikson, Jha & Ristenpart, CCS 2015 (Alg. 1)                   --
deepinversion  Yin et al., "Dreaming to Distill", CVPR 2020 (Eq. 2-4)            BatchNorm
gmi            Zhang et al., "The Secret Revealer", CVPR 2020                   GAN prior
kedmi          Chen et al., "Knowledge-Enriched Distributional MI", ICCV 2021   KEDMI prior
lomma+gmi      Nguyen et al., "Re-thinking Model Inversion Attacks", CVPR 2023  GAN prior
lomma+kedmi    (LOMMA's logit loss + model augmentation on top of GMI / KEDMI)  KEDMI prior
plg-mi         Yuan et al., "Pseudo Label-Guided MI", AAAI 2023                 cGAN prior
rlb-mi         Han et al., "RL-Based Black-Box MI", CVPR 2023 (probabilities)   GAN prior
brep-mi        Kahla et al., "Label-Only MI via Boundary Repulsion", CVPR 2022  GAN prior
============== ================================================================ =============

``rlb-mi`` and ``brep-mi`` never see the model: they get a query-counting
:class:`~midre.attacks.blackbox.ProbabilityOracle` / :class:`~midre.attacks.blackbox.LabelOracle`
and stop at ``AttackBudget.queries`` (see :mod:`midre.attacks.blackbox`).

Example:
    >>> from midre.attacks import AttackBudget, AttackTarget, run_attack
    >>> result = run_attack("deepinversion", AttackTarget(model, (3, 64, 64), normalization),
    ...                     identities=range(40), per_identity=2, budget=AttackBudget(steps=300))
    >>> result.images.shape            # [80, 3, 64, 64] in the target's input space
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from midre.attacks.base import (
    AttackBudget,
    AttackCancelled,
    AttackResult,
    AttackTarget,
    PixelCodec,
    max_margin_loss,
    total_variation,
    weights_key,
)
from midre.errors import ConfigError
from midre.progress import ProgressCallback, StopCallback

logger = logging.getLogger(__name__)

ATTACKS: dict[str, dict[str, Any]] = {
    "mi-face": {"prior": None, "paper": "Fredrikson et al., CCS 2015"},
    "deepinversion": {"prior": None, "paper": "Yin et al., CVPR 2020"},
    "gmi": {"prior": "gmi", "paper": "Zhang et al., CVPR 2020"},
    "kedmi": {"prior": "kedmi", "paper": "Chen et al., ICCV 2021"},
    "lomma+gmi": {"prior": "gmi", "paper": "Nguyen et al., CVPR 2023"},
    "lomma+kedmi": {"prior": "kedmi", "paper": "Nguyen et al., CVPR 2023"},
    "plg-mi": {"prior": "plg", "paper": "Yuan et al., AAAI 2023"},
    "rlb-mi": {"prior": "gmi", "paper": "Han et al., CVPR 2023", "access": "probabilities"},
    "brep-mi": {"prior": "gmi", "paper": "Kahla et al., CVPR 2022", "access": "labels"},
}
_ALIASES = {"lomma": "lomma+gmi", "plgmi": "plg-mi", "plg": "plg-mi", "miface": "mi-face",
            "di": "deepinversion", "rlbmi": "rlb-mi", "brepmi": "brep-mi",
            "kedmi+lomma": "lomma+kedmi", "gmi+lomma": "lomma+gmi"}


def list_attacks() -> list[str]:
    """Names accepted by :func:`run_attack`."""
    return list(ATTACKS)


def resolve_attack_name(name: str) -> str:
    """Canonical attack name; ``ValueError`` listing every known name on a miss."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    return key


def needs_public_data(name: str) -> bool:
    """True for the attacks that need a GAN prior (trained on public data) or surrogate models."""
    return ATTACKS[resolve_attack_name(name)]["prior"] is not None


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
        options: attack-specific settings (fields of ``MIFaceOptions``, ``DeepInversionOptions`` or
            ``GanAttackOptions``); an unknown field raises ``ValueError`` naming it.
        seed: seeds every random draw of the attack (initialisation, jitter, restarts).
        device: where to run.
        cache_dir: folder for priors and LOMMA surrogates to be reused across calls.
        progress: receives :class:`midre.progress.ProgressEvent` (stage ``attack``/``prior``/...).
        should_stop: polled every step; when it returns True, :class:`AttackCancelled` is raised.

    Returns:
        An :class:`AttackResult` (images in the target's input space, labels, target confidence).
    """
    from midre.attacks import gan_attacks, image_space

    name = resolve_attack_name(name)
    budget = budget or AttackBudget()
    device = torch.device(device)
    if not isinstance(target, AttackTarget):
        if image_shape is None:
            raise ValueError("image_shape=(C, H, W) is required when target is a bare model")
        target = AttackTarget(target, image_shape, normalization)
    ids = torch.as_tensor(list(identities) if not isinstance(identities, Tensor) else identities,
                          dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("identities must name at least one class")
    if int(ids.min()) < 0 or int(ids.max()) >= int(target.num_classes or 0):
        raise ValueError(f"identities must lie in [0, {target.num_classes}), got {ids.tolist()[:10]}...")
    if per_identity < 1:
        raise ValueError(f"per_identity must be >= 1, got {per_identity}")
    logger.info("attack %s: %d identities x %d images, %d steps x %d restarts on %s", name, ids.numel(),
                per_identity, budget.steps, budget.restarts, device)
    opts = parse_options(name, options)
    if name in ("mi-face", "deepinversion"):
        return image_space.run_image_space_attack(
            name, target, ids, per_identity=per_identity, budget=budget, seed=seed, device=device,
            options=opts, progress=progress, should_stop=should_stop)
    if name in ("rlb-mi", "brep-mi"):
        from midre.attacks import blackbox

        return blackbox.run_query_attack(
            name, target, ids, per_identity=per_identity, budget=budget, seed=seed, device=device,
            options=opts, prior=prior, public=public, cache_dir=cache_dir, progress=progress,
            should_stop=should_stop)

    return gan_attacks.run_gan_attack(
        name, target, ids, per_identity=per_identity, budget=budget, seed=seed, device=device, options=opts,
        prior=prior, public=public, cache_dir=cache_dir, progress=progress, should_stop=should_stop)


def parse_options(name: str, options: dict[str, Any] | None) -> Any:
    """The options object of attack ``name`` built from ``options`` (a JSON-like dict).

    Raises:
        ConfigError: naming the unknown or invalid option (``lr``, ``prior.width``); a service calls
            this before queueing so a misspelled option is refused at once, not in the worker.
    """
    from midre.attacks import brep_mi, gan_attacks, image_space, rlb_mi
    from midre.priors.prior import check_prior_options

    name = resolve_attack_name(name)
    classes = {"mi-face": image_space.MIFaceOptions, "deepinversion": image_space.DeepInversionOptions,
               "rlb-mi": rlb_mi.RLBMIOptions, "brep-mi": brep_mi.BREPMIOptions}
    data = dict(options or {}) if isinstance(options, dict) or options is None else options
    if name not in classes and isinstance(data, dict):
        if "surrogates" in data and isinstance(data["surrogates"], list):
            data["surrogates"] = tuple(data["surrogates"])
        if "prior" in data:
            try:
                check_prior_options(data["prior"])
            except ConfigError as exc:
                raise exc.within("prior") from None
    return image_space.options_from_dict(classes.get(name, gan_attacks.GanAttackOptions), data)

__all__ = [
    "ATTACKS",
    "AttackBudget",
    "AttackCancelled",
    "AttackResult",
    "AttackTarget",
    "PixelCodec",
    "list_attacks",
    "max_margin_loss",
    "needs_public_data",
    "parse_options",
    "resolve_attack_name",
    "run_attack",
    "total_variation",
    "weights_key",
]
