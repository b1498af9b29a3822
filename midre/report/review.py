"""What people need to review a study's reconstructions blind: ``review.safetensors`` in the study folder.

Human review (the paper's user study) shows a reconstruction beside a few candidate identities and
asks whose face it is. The candidates must be real private images, and the wrong ones (decoys) must be
plausible, or picking the right one says little. A study's report step therefore writes, once:

- ``attacked``: the identities the attacks reconstructed; ``decoys`` ``[A, D]``: for each, the ``D``
  other private identities whose mean features in the first judge's space are most similar (cosine),
  most similar first;
- ``identities`` and ``portraits`` ``[I, C, H, W]`` (uint8): one training image of every identity that
  can appear as a candidate (attacked ones and their decoys): the one nearest its identity's mean feature,
  so the portrait is a typical picture rather than an outlier;
- ``controls`` ``[A, C, H, W]`` (uint8) with ``has_control`` ``[A]``: one held-out (test) image of each
  attacked identity, a real photo a reviewer should recognise among its candidates.

The reconstructions themselves stay in their attack runs (``recon.safetensors``, with each judge's
top-1 answer per image in ``judge_top1``); a review service draws trials from both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

REVIEW_FILE = "review.safetensors"

#: Decoys kept per attacked identity (a trial draws its wrong candidates from these).
DECOYS = 8


def _centroids(feats: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Mean feature per identity ``[count, D]`` (zeros for an identity without images)."""
    sums = torch.zeros(count, feats.shape[1], dtype=feats.dtype).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=count).clamp(min=1).to(feats.dtype)
    return sums / counts[:, None]


def _portrait_index(feats: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, identity: int) -> int:
    """The training image of ``identity`` nearest its mean feature."""
    idx = (labels == identity).nonzero().flatten()
    dist = (feats[idx] - centroids[identity]).pow(2).sum(1)
    return int(idx[int(dist.argmin())])


def review_material(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                    test_labels: torch.Tensor, attacked: list[int], features: torch.Tensor,
                    decoys: int = DECOYS) -> dict[str, torch.Tensor]:
    """The tensors of ``review.safetensors`` (see the module docstring).

    Args:
        train_images, train_labels: the private training images (uint8 ``[N, C, H, W]``) and identities.
        test_images, test_labels: the private held-out images and identities.
        attacked: the identities the attacks reconstructed.
        features: the first judge's features of ``train_images`` ``[N, D]``.
        decoys: decoys kept per attacked identity (fewer when the data has fewer other identities).
    """
    labels = train_labels.cpu().long()
    feats = features.detach().float().cpu()
    count = int(labels.max()) + 1
    present = torch.bincount(labels, minlength=count) > 0
    raw = _centroids(feats, labels, count)
    cent = torch.nn.functional.normalize(raw, dim=1)
    sim = cent @ cent.T
    sim[:, ~present] = -2.0  # an identity without training images has no portrait to show
    sim.fill_diagonal_(-3.0)
    k = max(0, min(decoys, int(present.sum()) - 1))
    attacked_t = torch.tensor(attacked, dtype=torch.int64)
    near = sim[attacked_t].topk(k, dim=1).indices if k else torch.zeros(len(attacked), 0, dtype=torch.int64)
    shown = sorted(set(attacked) | set(near.flatten().tolist()))
    portraits = torch.stack([train_images[_portrait_index(feats, labels, raw, i)] for i in shown])
    controls, has = [], []
    for identity in attacked:
        idx = (test_labels == identity).nonzero().flatten()
        has.append(bool(idx.numel()))
        controls.append(test_images[int(idx[0])] if idx.numel() else torch.zeros_like(train_images[0]))
    return {"attacked": attacked_t, "decoys": near.to(torch.int64).contiguous(),
            "identities": torch.tensor(shown, dtype=torch.int64), "portraits": portraits.to(torch.uint8).contiguous(),
            "controls": torch.stack(controls).to(torch.uint8).contiguous(),
            "has_control": torch.tensor(has, dtype=torch.uint8)}


def write_review_material(out_dir: Path, splits: Any, attacked: list[int], judge: Any) -> Path:
    """Write ``review.safetensors`` of a study (the judge's features decide the decoys); return its path."""
    from safetensors.torch import save_file

    train = splits.train
    feats, _ = judge.private_features(train.images, train.labels)
    tensors = review_material(train.images, train.labels, splits.test.images, splits.test.labels, attacked, feats)
    path = Path(out_dir) / REVIEW_FILE
    save_file(tensors, str(path))
    return path


__all__ = ["DECOYS", "REVIEW_FILE", "review_material", "write_review_material"]
