"""Distribution metrics between an identity's reconstructions and its private images, in a feature space.

AttAcc asks a classifier whether a reconstruction is the person; a classifier can be fooled by images
that carry the identity's logit pattern without its face (Ho et al. 2025, arXiv:2505.03519). These
metrics compare the *sets* instead, per attacked identity, and average over identities:

- ``fid``: Fréchet distance between Gaussians fitted to the two sets (Heusel et al. 2017), in squared
  feature units (lower = closer). Computed exactly in sample space: with ``A``, ``B`` the centred sets,
  ``tr sqrt(S_A S_B)`` is the sum of the singular values of ``A B^T / sqrt((n_A - 1)(n_B - 1))``, so no
  ``D x D`` matrix square root is needed and rank-deficient covariances (a few images in hundreds of
  dimensions, the usual case here) are handled exactly. A set of one image has zero covariance.
  Per-identity FID from a handful of images is biased upwards; compare it between models judged on the
  same identities and image counts, never with published FIDs over thousands of images.
- ``precision``, ``recall``, ``density``, ``coverage`` (Naeem et al. 2020, "Reliable Fidelity and Diversity
  Metrics for Generative Models"), with k nearest neighbours ``k = min(5, n - 1)`` inside each set:
  precision = share of reconstructions inside some private image's k-NN ball (realism), recall = share
  of private images inside some reconstruction's ball (diversity; needs at least 2 reconstructions of
  the identity, else undefined and left out; with one reconstruction of every identity it is measured
  on the pooled sets, :func:`summarize_sets`), density = mean number of private balls holding a
  reconstruction / k, coverage = share of private images whose ball holds a reconstruction (in [0, 1]).
  Precision, recall and coverage are reported in percent by the study records.

The feature space is an evaluation model's penultimate layer (always available), or Inception-v3's pool
features when the operator gives its weights (:mod:`midre.evaluation.inception`); names say the space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Names of the per-identity set metrics, in the order reports show them.
NAMES = ("fid", "precision", "recall", "density", "coverage")
NEIGHBOURS = 5


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets ``[n, D]`` (see the module docstring)."""
    real, fake = real.double().cpu(), fake.double().cpu()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be [n, D] with the same D, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if not len(real) or not len(fake):
        raise ValueError("each set needs at least one image")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    a, b = real - mu_r, fake - mu_f
    nr, nf = max(len(real) - 1, 1), max(len(fake) - 1, 1)
    trace_r = float((a * a).sum()) / nr
    trace_f = float((b * b).sum()) / nf
    cross = float(torch.linalg.svdvals(a @ b.T).sum()) / math.sqrt(nr * nf)
    return float(((mu_r - mu_f) ** 2).sum()) + trace_r + trace_f - 2.0 * cross


def _radii(points: Tensor, k: int) -> Tensor:
    """Distance of each point to its k-th nearest other point of the same set."""
    d = torch.cdist(points, points)
    return d.topk(k + 1, dim=1, largest=False).values[:, k]  # column 0 is the point itself


def prdc(real: Tensor, fake: Tensor, k: int = NEIGHBOURS) -> dict[str, float | None]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (fractions; ``recall`` is
    ``None`` with a single fake image, every metric needs at least 2 real images)."""
    real, fake = real.double().cpu(), fake.double().cpu()
    if len(real) < 2:
        raise ValueError("precision/recall/density/coverage need at least 2 private images of the identity")
    k_real = min(k, len(real) - 1)
    real_r = _radii(real, k_real)
    cross = torch.cdist(real, fake)  # [R, F]
    inside = cross <= real_r[:, None]  # fake j inside real i's ball
    out: dict[str, float | None] = {
        "precision": float(inside.any(0).double().mean()),
        "density": float(inside.double().sum(0).mean()) / k_real,
        "coverage": float(inside.any(1).double().mean()),
        "recall": None,
    }
    if len(fake) >= 2:
        fake_r = _radii(fake, min(k, len(fake) - 1))
        out["recall"] = float((cross <= fake_r[None, :]).any(1).double().mean())
    return out


def per_identity(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                 private_labels: Tensor) -> dict[int, dict[str, float | None]]:
    """``{identity: {fid, precision, recall, density, coverage}}`` for every attacked identity with at
    least 2 private images (the others are left out: nothing to fit)."""
    recon_labels, private_labels = recon_labels.cpu(), private_labels.cpu()
    out = {}
    for identity in recon_labels.unique().tolist():
        real = private_feats[private_labels == identity]
        fake = recon_feats[recon_labels == identity]
        if len(real) < 2:
            continue
        out[int(identity)] = {"fid": frechet_distance(real, fake), **prdc(real, fake)}
    return out


def summarize_sets(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                   private_labels: Tensor) -> tuple[dict[int, dict[str, float | None]], dict[str, float]]:
    """Per-identity metrics and their means (:func:`per_identity`, :func:`averaged`). With one
    reconstruction per identity recall is undefined for every identity; it is then measured on the pooled
    sets (all reconstructions against the private images of the attacked identities), which says whether
    the reconstructions cover the private images at all, not per person."""
    per = per_identity(recon_feats, recon_labels, private_feats, private_labels)
    means = averaged(per)
    if "recall" not in means and len(recon_feats) >= 2:
        wanted = (private_labels.cpu()[:, None] == recon_labels.cpu().unique()[None, :]).any(1)
        if int(wanted.sum()) >= 2:
            pooled = prdc(private_feats[wanted], recon_feats)["recall"]
            if pooled is not None:
                means["recall"] = pooled
    return per, means


def averaged(per: dict[int, dict[str, float | None]]) -> dict[str, float]:
    """Mean over identities of each metric (an identity without a value for one is left out of it)."""
    out = {}
    for name in NAMES:
        values = [v[name] for v in per.values() if v.get(name) is not None]
        if values:
            out[name] = float(sum(values) / len(values))
    return out


__all__ = ["NAMES", "NEIGHBOURS", "averaged", "frechet_distance", "per_identity", "prdc", "summarize_sets"]
