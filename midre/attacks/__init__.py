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
ppa            Struppek et al., "Plug & Play Attacks", ICML 2022                GAN / StyleGAN2
if-gmi         Qiu et al., "A Closer Look at GAN Priors", ECCV 2024             GAN / StyleGAN2
mirror         An et al., "MIRROR", NDSS 2022 (white-box)                       GAN / StyleGAN2
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

from midre.attacks.base import (
    AttackBudget,
    AttackCancelled,
    AttackRequest,
    AttackResult,
    AttackTarget,
    PixelCodec,
    max_margin_loss,
    total_variation,
    weights_key,
)
from midre.attacks.registry import (
    ATTACKS,
    AttackInfo,
    attack_id,
    get_attack,
    list_attacks,
    needs_public_data,
    parse_options,
    register_attack,
    resolve_attack_name,
    run_attack,
)

# isort: off
# Importing an attack module registers its attacks; this order is the order of list_attacks().
from midre.attacks import image_space  # noqa: F401  prior-free white-box
from midre.attacks import gan_attacks  # noqa: F401  GAN-prior white-box
from midre.attacks import rlb_mi  # noqa: F401  black-box (probabilities)
from midre.attacks import brep_mi  # noqa: F401  label-only
from midre.attacks import highres  # noqa: F401  high-resolution white-box (PPA, IF-GMI, MIRROR)
# isort: on

__all__ = [
    "ATTACKS",
    "AttackBudget",
    "AttackCancelled",
    "AttackInfo",
    "AttackRequest",
    "AttackResult",
    "AttackTarget",
    "PixelCodec",
    "attack_id",
    "get_attack",
    "list_attacks",
    "max_margin_loss",
    "needs_public_data",
    "parse_options",
    "register_attack",
    "resolve_attack_name",
    "run_attack",
    "total_variation",
    "weights_key",
]
