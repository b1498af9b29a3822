"""Generative priors for the GAN-based model inversion attacks (GMI, KEDMI, LOMMA, PLG-MI, PPA, IF-GMI, MIRROR).

See :mod:`midre.priors.prior` for training and caching, :mod:`midre.priors.gan` for the networks,
:mod:`midre.priors.generator` for the interface the high-resolution attacks use and
:mod:`midre.priors.stylegan2` for the StyleGAN2 generator.
"""

from midre.priors.gan import ConditionalBatchNorm2d, Discriminator, Generator, gradient_penalty
from midre.priors.generator import GanPriorGenerator, ImageGenerator, StyleGAN2Generator, as_image_generator
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
from midre.priors.stylegan2 import StyleGAN2, StyleGAN2Config, load_stylegan2, save_stylegan2

__all__ = [
    "PRIOR_KINDS",
    "ConditionalBatchNorm2d",
    "Discriminator",
    "GanPrior",
    "GanPriorGenerator",
    "Generator",
    "ImageGenerator",
    "PriorConfig",
    "PublicData",
    "StyleGAN2",
    "StyleGAN2Config",
    "StyleGAN2Generator",
    "as_image_generator",
    "build_networks",
    "gradient_penalty",
    "load_or_train_prior",
    "load_stylegan2",
    "prior_key",
    "pseudo_label_public",
    "realness_log_prob",
    "save_stylegan2",
    "train_prior",
]
