"""Metrics against hand-computed values, accumulators vs their functional twins, feature analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from midre.evaluation import (
    Accuracy,
    AttackAccuracy,
    KnnDistance,
    RunStats,
    accuracy,
    attack_accuracy,
    convex_hull_2d,
    delta_feature,
    feature_space_analysis,
    knn_distance,
    mean_std,
    pca_2d,
    tradeoff_delta,
)


def test_tradeoff_delta_reproduces_paper_table3():
    assert round(tradeoff_delta(85.74, 53.64, 79.85, 26.62), 2) == 4.59
    assert round(tradeoff_delta(85.74, 72.96, 79.85, 41.82), 2) == 5.29  # LOMMA+KedMI row
    assert round(tradeoff_delta(85.74, 71.00, 80.02, 72.00), 2) == -0.17  # PLGMI, NLS row


def test_tradeoff_delta_op_and_bad_input():
    assert tradeoff_delta(90.0, 50.0, 91.0, 40.0) == "OP"
    assert tradeoff_delta(90.0, 50.0, 90.0, 40.0) == "OP"
    # no accuracy lost but no attack accuracy removed: not a win
    assert tradeoff_delta(90.0, 50.0, 91.0, 55.0) == "no gain"
    assert tradeoff_delta(90.0, 50.0, 90.0, 50.0) == "no gain"
    with pytest.raises(ValueError, match="acc_def"):
        tradeoff_delta(90.0, 50.0, float("nan"), 40.0)


def test_accuracy_and_attack_accuracy_by_hand():
    logits = torch.tensor([[5.0, 1.0, 0.0, 2.0, 3.0, 4.0],
                           [0.0, 1.0, 9.0, 2.0, 3.0, 4.0],
                           [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1, 5])
    assert accuracy(logits, labels) == pytest.approx(1 / 3)
    assert accuracy(torch.tensor([0, 1, 5]), labels) == 1.0
    assert attack_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    # top-5 of row 1 excludes only label 0 (value 0); row 2's label 5 is the smallest -> miss
    assert attack_accuracy(logits, labels, 5) == pytest.approx(2 / 3)


def test_knn_distance_and_delta_by_hand():
    private = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    private_labels = torch.tensor([0, 0, 1])
    recon = torch.tensor([[1.0, 0.0], [9.0, 1.0], [0.0, 3.0]])
    recon_labels = torch.tensor([0, 0, 1])
    # nearest same-identity squared distances: 1, 1+1=2, 4 (the [0,0] of identity 0 must not count)
    assert knn_distance(recon, recon_labels, private, private_labels) == pytest.approx((1 + 2 + 4) / 3)
    # per identity: id0 mean 1.5, id1 4 -> 2.75
    assert delta_feature(recon, recon_labels, private, private_labels) == pytest.approx(2.75)
    with pytest.raises(ValueError, match="identities"):
        knn_distance(recon, torch.tensor([0, 0, 3]), private, private_labels)


def test_accumulators_match_functions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen)
    labels = torch.randint(0, 7, (50,), generator=gen)
    acc, att1, att5 = Accuracy(), AttackAccuracy(1), AttackAccuracy(5)
    for sl in (slice(0, 20), slice(20, 50)):
        for m in (acc, att1, att5):
            m.update(logits[sl], labels[sl])
    assert acc.compute() == pytest.approx(accuracy(logits, labels))
    assert att5.compute() == pytest.approx(attack_accuracy(logits, labels, 5))
    assert att1.higher_is_better is False and acc.higher_is_better is True
    priv, plab = torch.randn(30, 4, generator=gen), torch.arange(30) % 7
    rec = torch.randn(50, 4, generator=gen)
    knn = KnnDistance(priv, plab)
    delta = KnnDistance(priv, plab, per_identity_mean=True)
    for sl in (slice(0, 25), slice(25, 50)):
        knn.update(rec[sl], labels[sl])
        delta.update(rec[sl], labels[sl])
    assert knn.compute() == pytest.approx(knn_distance(rec, labels, priv, plab))
    assert delta.compute() == pytest.approx(delta_feature(rec, labels, priv, plab))
    acc.reset()
    with pytest.raises(ValueError):
        acc.compute()


def test_mean_std_and_run_stats():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([4.0]) == (4.0, 0.0)
    stats = RunStats("attacc_top1", higher_is_better=False)
    for v in (10.0, 20.0):
        stats.update(v)
    out = stats.compute()
    assert out["mean"] == 15.0 and out["std"] == pytest.approx(math.sqrt(50)) and out["runs"] == [10.0, 20.0]


def test_pca_and_convex_hull():
    rng = np.random.default_rng(0)
    pts = np.stack([rng.normal(size=200) * 10, rng.normal(size=200), np.zeros(200)], 1)
    comps, mean, explained = pca_2d(pts)
    assert comps.shape == (3, 2) and explained > 0.99
    assert abs(comps[0, 0]) > 0.99  # the first component is the high-variance axis
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], dtype=float)
    hull = convex_hull_2d(square)
    assert len(hull) == 4 and not any((hull == [0.5, 0.5]).all(1))
    assert len(convex_hull_2d(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))) == 3  # collinear: points


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
        self.classifier = nn.Linear(6, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_feature_space_analysis_distances():
    torch.manual_seed(0)
    net = _Net().eval()
    priv = torch.rand(12, 1, 4, 4)
    plab = torch.arange(12) % 3
    # reconstructions = the private images themselves: recon<->priv distance is 0
    identity_erase = lambda x, generator=None: x  # noqa: E731
    res = feature_space_analysis(net, priv, plab, priv.clone(), plab.clone(), identities=[0, 1],
                                 erasing=identity_erase)
    assert res.distances["recon_priv_centroid"] == pytest.approx(0.0, abs=1e-6)
    assert res.distances["recon_priv_nn"] == pytest.approx(0.0, abs=1e-6)
    assert set(res.points) == {"private", "re_private", "recon"}
    assert res.points["private"].shape == (8, 2) and set(res.hulls["recon"]) == {0, 1}
    # the default eraser (midre.erasing.RandomErasing) changes the images -> non-zero RE distance
    res2 = feature_space_analysis(net, priv, plab, priv.clone(), plab.clone(), identities=[2], seed=3)
    assert res2.distances["re_priv_centroid"] > 0
    assert res2.to_dict()["counts"]["recon"] == 4
