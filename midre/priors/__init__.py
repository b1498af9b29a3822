"""Generative priors for the GAN-based model inversion attacks (GMI, KEDMI, LOMMA, PLG-MI).

See :mod:`midre.priors.prior` for training and caching and :mod:`midre.priors.gan` for the networks.
"""

from midre.priors.gan import ConditionalBatchNorm2d, Discriminator, Generator, gradient_penalty
from midre.priors.prior import (
    PRIOR_KINDS,
    GanPrior,
    PriorConfig,
    PublicData,
    build_networks,
    load_or_train_prior,
    prior_key,
    pseudo_label_public,
    realness_log_prob,
    train_prior,
)

__all__ = [
    "PRIOR_KINDS",
    "ConditionalBatchNorm2d",
    "Discriminator",
    "GanPrior",
    "Generator",
    "PriorConfig",
    "PublicData",
    "build_networks",
    "gradient_penalty",
    "load_or_train_prior",
    "prior_key",
    "pseudo_label_public",
    "realness_log_prob",
    "train_prior",
]
