"""Privacy and utility metrics of model inversion studies, as pure functions plus accumulators.

Definitions (see ``shared/DESIGN.md`` §2 and the papers cited per function):

* Acc: top-1 accuracy of the target on the held-out private test split.
* AttAcc top-k (Zhang et al. 2020, GMI, Sec. 4.1): an independent *evaluation model* classifies
  each reconstruction; a hit when the attacked identity is among its top-k predictions.
* KNN distance (GMI, Sec. 4.1): for each reconstruction, the smallest squared L2 distance between
  its evaluation-model penultimate features and those of the attacked identity's private *training*
  images; averaged over reconstructions.
* delta_eval (Struppek et al. 2022, PPA, Sec. 4.1): the same nearest-neighbour squared distance,
  averaged per identity first and then over identities (equal to KNN when every identity has the
  same number of reconstructions). ``delta_face`` is this function applied to a face-embedding
  model's features, which the caller supplies.
* Delta trade-off (MIDRE paper, Sec. 4.2, Table 3):
  ``(AttAcc_NoDef - AttAcc_def) / (Acc_NoDef - Acc_def)``; ``"OP"`` when the defense loses no accuracy
  and lowers AttAcc, ``"no gain"`` when it loses no accuracy and does not lower AttAcc.

Accumulators follow the torchmetrics pattern (``update`` / ``compute`` / ``reset`` with a declared
``higher_is_better``), each with a functional twin that holds the math.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# --------------------------------------------------------------------------- pure functions


def accuracy(logits_or_preds: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1] from logits ``[N, K]`` or predicted labels ``[N]``."""
    preds = logits_or_preds.argmax(1) if logits_or_preds.dim() == 2 else logits_or_preds
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float((preds.cpu() == labels.cpu()).float().mean())


def topk_hits(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Boolean ``[N]``: is ``labels[i]`` among the ``k`` largest ``logits[i]``?"""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices.cpu()
    return (top == labels.cpu()[:, None]).any(1)


def attack_accuracy(eval_logits: Tensor, target_labels: Tensor, k: int = 1) -> float:
    """AttAcc top-k in [0, 1]: share of reconstructions the evaluation model assigns to their identity
    within its top-k predictions (GMI, Zhang et al. 2020, Sec. 4.1)."""
    if target_labels.numel() == 0:
        raise ValueError("attack accuracy of zero reconstructions is undefined")
    return float(topk_hits(eval_logits, target_labels, k).float().mean())


def nearest_private_sq_dist(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                            private_labels: Tensor) -> Tensor:
    """Per reconstruction ``[N]``: min squared L2 to the private features of its own identity.

    Raises:
        ValueError: an attacked identity has no private images.
    """
    recon_feats, private_feats = recon_feats.double().cpu(), private_feats.double().cpu()
    recon_labels, private_labels = recon_labels.cpu(), private_labels.cpu()
    d2 = torch.cdist(recon_feats, private_feats).pow(2)  # [N, P]
    same = recon_labels[:, None] == private_labels[None, :]
    missing = ~same.any(1)
    if bool(missing.any()):
        raise ValueError(f"no private images of identities {sorted(set(recon_labels[missing].tolist()))}")
    return d2.masked_fill(~same, float("inf")).min(1).values


def nearest_identity_match(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                           private_labels: Tensor) -> Tensor:
    """Boolean ``[N]``: is reconstruction ``i`` nearer (squared L2) to some private image of its own
    identity than to every private image of every other identity?

    The feature-space check against adversarial-example-like reconstructions (Ho et al. 2025,
    arXiv:2505.03519): a judge can be fooled by an image that carries the identity's logit pattern
    but not its face; in an independent model's features such an image is not nearest to the
    identity's real images. Ties count as a miss. An identity with no private images raises.
    """
    own = nearest_private_sq_dist(recon_feats, recon_labels, private_feats, private_labels)
    recon_feats, private_feats = recon_feats.double().cpu(), private_feats.double().cpu()
    d2 = torch.cdist(recon_feats, private_feats).pow(2)
    same = recon_labels.cpu()[:, None] == private_labels.cpu()[None, :]
    other = d2.masked_fill(same, float("inf")).min(1).values
    return own < other


def knn_distance(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                 private_labels: Tensor) -> float:
    """KNN distance (GMI): mean over reconstructions of the min squared L2 to the identity's
    private training features (lower = reconstructions closer to the real person)."""
    return float(nearest_private_sq_dist(recon_feats, recon_labels, private_feats, private_labels).mean())


def delta_feature(recon_feats: Tensor, recon_labels: Tensor, private_feats: Tensor,
                  private_labels: Tensor) -> float:
    """PPA's delta (Struppek et al. 2022): nearest-neighbour squared distance averaged per identity,
    then over identities. Pass evaluation-model features for delta_eval, face-embedding for delta_face."""
    d = nearest_private_sq_dist(recon_feats, recon_labels, private_feats, private_labels)
    labels = recon_labels.cpu()
    per_class = [d[labels == c].mean() for c in labels.unique()]
    return float(torch.stack(per_class).mean())


def tradeoff_delta(acc_nodef: float, attacc_nodef: float, acc_def: float, attacc_def: float) -> float | str:
    """MIDRE's Delta = (AttAcc_NoDef - AttAcc_def) / (Acc_NoDef - Acc_def) (paper Sec. 4.2, Table 3).

    Attack-accuracy points removed per accuracy point lost; higher is better. When the defense
    costs no accuracy (``acc_def >= acc_nodef``) the ratio is undefined and the paper writes
    ``"OP"`` (the defense outperforms NoDef in utility). The paper's defenses all lower AttAcc;
    where one does not, ``"OP"`` would read as a win, so here it is ``"no gain"`` instead: no
    accuracy lost, but no attack accuracy removed either.

    Example:
        >>> round(tradeoff_delta(85.74, 53.64, 79.85, 26.62), 2)
        4.59
    """
    for name, value in (("acc_nodef", acc_nodef), ("attacc_nodef", attacc_nodef), ("acc_def", acc_def),
                        ("attacc_def", attacc_def)):
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"tradeoff_delta: {name} must be a finite number, got {value!r}")
    if acc_def >= acc_nodef:
        return "OP" if attacc_def < attacc_nodef else "no gain"
    return (attacc_nodef - attacc_def) / (acc_nodef - acc_def)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of repeated runs."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def summarize(values: Sequence[float]) -> dict[str, float | list[float] | int]:
    """``{"mean", "std", "runs", "n"}`` as stored in report.json."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "runs": [float(v) for v in values], "n": len(values)}


# --------------------------------------------------------------------------- accumulators


class Metric:
    """Base accumulator: ``update`` with batches, ``compute`` the value, ``reset`` to start over."""

    higher_is_better: bool | None = None
    name: str = "metric"

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, *args: Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy of a classifier (utility; higher is better)."""

    higher_is_better = True
    name = "acc"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        preds = logits.argmax(1) if logits.dim() == 2 else logits
        self.correct += int((preds.cpu() == labels.cpu()).sum())
        self.total += int(labels.numel())

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError("Accuracy.compute() before any update")
        return self.correct / self.total


class AttackAccuracy(Metric):
    """AttAcc top-k of reconstructions judged by the evaluation model (privacy leak; lower is better
    for the defender, so ``higher_is_better`` is False)."""

    higher_is_better = False

    def __init__(self, top_k: int = 1) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.name = f"attacc_top{top_k}"
        self.reset()

    def reset(self) -> None:
        self.hits, self.total = 0, 0

    def update(self, eval_logits: Tensor, target_labels: Tensor) -> None:
        self.hits += int(topk_hits(eval_logits, target_labels, self.top_k).sum())
        self.total += int(target_labels.numel())

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError("AttackAccuracy.compute() before any update")
        return self.hits / self.total


class KnnDistance(Metric):
    """KNN distance against fixed private features (``higher_is_better``: True, a larger distance
    means reconstructions further from the private images, i.e. better privacy)."""

    higher_is_better = True
    name = "knn_dist"

    def __init__(self, private_feats: Tensor, private_labels: Tensor, per_identity_mean: bool = False) -> None:
        self.private_feats, self.private_labels = private_feats.cpu(), private_labels.cpu()
        self.per_identity_mean = per_identity_mean
        if per_identity_mean:
            self.name = "delta_eval"
        self.reset()

    def reset(self) -> None:
        self.dists: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, recon_feats: Tensor, recon_labels: Tensor) -> None:
        self.dists.append(nearest_private_sq_dist(recon_feats, recon_labels, self.private_feats,
                                                  self.private_labels))
        self.labels.append(recon_labels.cpu())

    def compute(self) -> float:
        if not self.dists:
            raise ValueError("KnnDistance.compute() before any update")
        d, labels = torch.cat(self.dists), torch.cat(self.labels)
        if not self.per_identity_mean:
            return float(d.mean())
        return float(torch.stack([d[labels == c].mean() for c in labels.unique()]).mean())


@dataclass
class RunStats:
    """Collects one value per repeated run and reports mean ± std (the paper's ± over runs)."""

    name: str
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        self.values: list[float] = []

    def update(self, value: float) -> None:
        self.values.append(float(value))

    def compute(self) -> dict[str, float | list[float] | int]:
        return summarize(self.values)
