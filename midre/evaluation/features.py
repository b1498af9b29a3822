"""Feature-space analysis of MIDRE's effect (paper Sec. 3.2, Figs. 3-4).

Penultimate-layer features of the *target* model for three groups of a few identities:
``f_priv`` (private training images), ``f_RE`` (the same images after MIDRE random erasing) and
``f_recon`` (the attack's reconstructions). The paper's claim (Property P3): under NoDef,
``f_recon`` overlaps ``f_priv``; under MIDRE, ``f_recon`` follows ``f_RE`` (the model's actual
training distribution) and drifts from ``f_priv``. The numeric summary reports, per identity and
averaged, the distance between group centroids and the mean nearest-neighbour distance of
``f_recon`` to ``f_priv`` and to ``f_RE``; the plot data are a 2-D PCA projection with convex hulls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

GROUPS = ("private", "re_private", "recon")


@dataclass
class FeatureSpaceResult:
    """2-D points, convex hulls and distances of the three feature groups.

    Attributes:
        points: ``{group: array [n, 2]}`` projected features.
        labels: ``{group: array [n]}`` identity of each point.
        hulls: ``{group: {identity: array [m, 2]}}`` hull vertices in order (fewer than 3 distinct
            points: the points themselves).
        distances: ``recon_priv_centroid``, ``recon_re_centroid``, ``recon_priv_nn``, ``recon_re_nn``,
            ``re_priv_centroid`` (means over identities, in the target's feature units).
        explained_variance: share of variance the 2-D projection keeps.
    """

    points: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    hulls: dict[str, dict[int, np.ndarray]]
    distances: dict[str, float]
    explained_variance: float
    identities: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (distances and projection quality; points are in the plot)."""
        return {"identities": self.identities, "distances": self.distances,
                "explained_variance_2d": self.explained_variance,
                "counts": {g: int(len(self.labels[g])) for g in self.labels}}


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Project rows of ``features`` onto their top-2 principal components (via SVD).

    Returns (projection matrix [D, 2], mean [D], explained variance ratio of the 2 components).
    """
    mean = features.mean(0)
    centred = features - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2].T
    if comps.shape[1] < 2:
        comps = np.pad(comps, ((0, 0), (0, 2 - comps.shape[1])))
    total = float((s ** 2).sum())
    explained = float((s[:2] ** 2).sum() / total) if total > 0 else 1.0
    return comps, mean, explained


def convex_hull_2d(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of 2-D ``points`` in order (``scipy.spatial.ConvexHull``).

    Degenerate inputs (fewer than 3 points, or collinear) return the distinct points themselves.
    """
    from scipy.spatial import ConvexHull, QhullError

    uniq = np.unique(points, axis=0)
    if len(uniq) < 3:
        return uniq
    try:
        hull = ConvexHull(uniq)
    except QhullError:
        return uniq
    return uniq[hull.vertices]


def _centroid_dist(a: Tensor, la: Tensor, b: Tensor, lb: Tensor, ids: list[int]) -> float:
    return float(torch.stack([(a[la == i].mean(0) - b[lb == i].mean(0)).norm() for i in ids]).mean())


def _nn_dist(a: Tensor, la: Tensor, b: Tensor, lb: Tensor, ids: list[int]) -> float:
    vals = [torch.cdist(a[la == i], b[lb == i]).min(1).values.mean() for i in ids]
    return float(torch.stack(vals).mean())


@torch.no_grad()
def penultimate(model: nn.Module, x: Tensor, batch: int = 128) -> Tensor:
    """``model.features`` of input-space images, batched, on the model's device, returned on CPU."""
    device = next(model.parameters()).device
    return torch.cat([model.features(x[i:i + batch].to(device)).cpu() for i in range(0, x.shape[0], batch)])


def feature_space_analysis(model: nn.Module, private_inputs: Tensor, private_labels: Tensor,
                           recon_inputs: Tensor, recon_labels: Tensor, *, identities: list[int] | None = None,
                           erasing: Any = None, a_h: float = 0.4, normalization: Any = None,
                           seed: int = 0) -> FeatureSpaceResult:
    """Compute the paper's Fig. 3 analysis for a target ``model``.

    Args:
        model: the target (with ``features``); put in eval mode.
        private_inputs, private_labels: private training images in the target's input space.
        recon_inputs, recon_labels: reconstructions in the target's input space.
        identities: identities to analyse (default: the first three attacked ones).
        erasing: a callable ``erasing(x, generator=g)`` (default
            ``midre.erasing.RandomErasing(a_h=a_h, normalization=normalization)``, as in the paper
            with ``a_e`` up to 0.4).
        a_h, normalization: used to build the default eraser.
        seed: seeds the erasing.
    """
    model.eval()
    if identities is None:
        identities = [int(i) for i in recon_labels.unique()[:3]]
    ids = torch.as_tensor(identities)
    pm = torch.isin(private_labels, ids)
    rm = torch.isin(recon_labels, ids)
    if not bool(pm.any()) or not bool(rm.any()):
        raise ValueError(f"no private images or reconstructions of identities {identities}")
    x_priv, y_priv = private_inputs[pm].float(), private_labels[pm]
    x_rec, y_rec = recon_inputs[rm].float(), recon_labels[rm]
    if erasing is None:
        from midre.erasing import RandomErasing

        erasing = RandomErasing(a_h=a_h, normalization=normalization, normalized=normalization is not None)
    gen = torch.Generator().manual_seed(seed)
    x_re = erasing(x_priv.clone(), generator=gen)
    feats = {"private": penultimate(model, x_priv), "re_private": penultimate(model, x_re),
             "recon": penultimate(model, x_rec)}
    labels = {"private": y_priv, "re_private": y_priv, "recon": y_rec}
    stacked = torch.cat([feats[g] for g in GROUPS]).double().numpy()
    comps, mean, explained = pca_2d(stacked)
    points = {g: (feats[g].double().numpy() - mean) @ comps for g in GROUPS}
    hulls = {g: {int(i): convex_hull_2d(points[g][labels[g].numpy() == i]) for i in identities}
             for g in GROUPS}
    f, lab = feats, labels
    distances = {
        "recon_priv_centroid": _centroid_dist(f["recon"], lab["recon"], f["private"], lab["private"], identities),
        "recon_re_centroid": _centroid_dist(f["recon"], lab["recon"], f["re_private"], lab["re_private"],
                                            identities),
        "re_priv_centroid": _centroid_dist(f["re_private"], lab["re_private"], f["private"], lab["private"],
                                           identities),
        "recon_priv_nn": _nn_dist(f["recon"], lab["recon"], f["private"], lab["private"], identities),
        "recon_re_nn": _nn_dist(f["recon"], lab["recon"], f["re_private"], lab["re_private"], identities),
    }
    return FeatureSpaceResult(points=points, labels={g: labels[g].numpy() for g in GROUPS}, hulls=hulls,
                              distances=distances, explained_variance=explained, identities=list(identities))
