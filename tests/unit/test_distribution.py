"""Distribution metrics against known truths: FID against the closed form, PRDC on sets with known overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midre.evaluation import distribution


def _fid_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID with the D x D matrix square root (eigendecomposition), the textbook way."""
    a, b = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ cb @ root)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb)
                 - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("n_a,n_b,d", [(40, 50, 6), (5, 3, 32)])  # full rank, and rank-deficient
def test_fid_matches_the_closed_form(n_a, n_b, d):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n_a, d, generator=g)
    b = 2 * torch.randn(n_b, d, generator=g) + 1
    assert distribution.frechet_distance(a, b) == pytest.approx(_fid_reference(a, b), rel=1e-6, abs=1e-6)


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
    a = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    assert distribution.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert distribution.frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)  # |shift|^2


def test_prdc_on_the_same_set_and_on_a_distant_one():
    real = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    same = distribution.prdc(real, real, k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] >= 1.0  # every point sits in its own ball and its neighbours'
    far = distribution.prdc(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_half_of_the_fakes_realistic():
    real = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    fake = torch.cat([real[:10] + 1e-3, real[:10] + 100.0])
    m = distribution.prdc(real, fake, k=5)
    assert m["precision"] == pytest.approx(0.5) and m["coverage"] <= 1.0


def test_recall_needs_two_reconstructions_and_per_identity_averages():
    real = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    assert distribution.prdc(real, real[:1])["recall"] is None
    feats = torch.cat([real, real + 50.0])
    labels = torch.tensor([0] * 6 + [1] * 6)
    per = distribution.per_identity(feats[[0, 1, 6]], torch.tensor([0, 0, 1]), feats, labels)
    assert set(per) == {0, 1} and per[1]["recall"] is None and per[0]["recall"] is not None
    mean = distribution.averaged(per)
    assert mean["recall"] == per[0]["recall"]  # identity 1 has no recall: left out, not counted as 0
    assert mean["precision"] == pytest.approx((per[0]["precision"] + per[1]["precision"]) / 2)


def test_inception_features_from_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    from midre.errors import ConfigError
    from midre.evaluation.inception import InceptionFeatures

    torch.manual_seed(0)
    path = tmp_path / "inception_v3.safetensors"
    save_file({k: v.contiguous() for k, v in inception_v3(weights=None, aux_logits=True, init_weights=False)
               .state_dict().items()}, str(path))
    features = InceptionFeatures(path)
    out = features((torch.rand(2, 1, 32, 32) * 255).to(torch.uint8))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    (tmp_path / "other.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(ConfigError) as err:
        InceptionFeatures(tmp_path / "other.safetensors")
    assert err.value.field == "inception_weights"
    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConfigError, match="inception_v3 state dict"):
        InceptionFeatures(tmp_path / "wrong.safetensors")


def test_recall_with_one_reconstruction_per_identity_is_measured_on_the_pooled_sets():
    real = torch.randn(12, 3, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0] * 6 + [1] * 6)
    per, means = distribution.summarize_sets(real[[0, 6]], torch.tensor([0, 1]), real, labels)
    assert all(v["recall"] is None for v in per.values()) and 0 <= means["recall"] <= 1
