"""Bilateral Dependency Optimization (BiDO) as a defense.

Peng, Liu, Wang, Pang, Han & Ji, "Bilateral Dependency Optimization: Defending Against
Model-inversion Attacks", KDD 2022, https://arxiv.org/abs/2206.05483.

An inversion attack needs the latent representations ``Z_j`` to carry a lot of information about
the input ``X``; classification only needs them to carry information about the label ``Y``. BiDO
trains with

    L = CE(f(X), Y) + lambda_x * sum_j d(X, Z_j) - lambda_y * sum_j d(Y, Z_j)

over the hidden layers ``Z_j`` the model's ``forward_with_hidden`` returns, where ``d`` is a
kernel dependence measure estimated on the mini-batch (paper Sec. 4):

- ``kernel="hsic"``: the Hilbert-Schmidt Independence Criterion with Gaussian kernels
  (Gretton et al., ALT 2005): ``HSIC(K, L) = tr(K H L H) / (n - 1)^2``, ``H = I - 11^T / n``;
- ``kernel="coco"``: constrained covariance (Gretton et al., AISTATS 2005):
  ``COCO(K, L) = sqrt(lambda_max(HKH HLH)) / n``.

Our choices, documented because they matter for the scale of ``lambda_x`` / ``lambda_y``:

- every kernel is Gaussian, ``k(a, b) = exp(-|a - b|^2 / (2 s^2))`` on the flattened tensor
  (images, activations, one-hot labels), with ``s^2 = sigma^2 * median(|a_i - a_j|^2)`` over the
  batch (the median heuristic, without gradient); on one-hot labels this is an affine map of the
  "same class" kernel, which centring reduces to a scale;
- ``normalized=True`` (default) divides by the self-dependences,
  ``d(K, L) / sqrt(d(K, K) d(L, L))``, which puts every layer's terms in [0, 1] regardless of its
  width (for HSIC this is centred kernel alignment); the authors' code, as we read it, also uses
  a normalised estimate (through a regularised cross-covariance operator), so the paper's lambda
  ranges are of the right order but not interchangeable with ours;
- ``lambda_max(K~ L~)`` is taken as ``||B^T A||_2^2`` with Cholesky factors
  ``K~ + eps I = A A^T``, ``L~ + eps I = B B^T`` (float64), which has a well-defined gradient where
  an eigen-decomposition of the (highly degenerate) label kernel would not.

Logged per epoch (batch means): ``bido_ce``, ``bido_dep_xz`` = ``sum_j d(X, Z_j)``,
``bido_dep_yz`` = ``sum_j d(Y, Z_j)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from midre.defenses.base import Defense, register_defense

__all__ = ["BiDO", "center_gram", "coco", "dependence", "gaussian_gram", "hsic"]

KERNELS = ("hsic", "coco")


def gaussian_gram(a: Tensor, sigma: float = 1.0) -> Tensor:
    """Gaussian Gram matrix ``[n, n]`` of the rows of ``a`` (flattened), median-heuristic bandwidth.

    ``K_ij = exp(-|a_i - a_j|^2 / (2 s^2))`` with ``s^2 = sigma^2 * median_{i != j} |a_i - a_j|^2``
    (falling back to the mean, then 1, when the median is 0). Computed in float32 at least.
    """
    a = a.flatten(1)
    a = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
    sq = (a * a).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
    with torch.no_grad():
        n = a.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=a.device)]
        scale = off.median() if off.numel() else d2.new_tensor(1.0)
        if scale <= 0:
            scale = off.mean() if off.numel() else scale
        if scale <= 0:
            scale = d2.new_tensor(1.0)
    return torch.exp(-d2 / (2.0 * sigma**2 * scale))


def center_gram(k: Tensor) -> Tensor:
    """``H K H`` with ``H = I - 11^T / n`` (double centring, without forming H)."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(k: Tensor, l: Tensor, normalized: bool = False) -> Tensor:  # noqa: E741
    """Biased HSIC estimate ``tr(K H L H) / (n - 1)^2`` of two Gram matrices (Gretton et al. 2005).

    ``normalized``: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` (centred kernel alignment), in [0, 1].
    """
    kc, lc = center_gram(k), center_gram(l)
    n = k.shape[0]
    value = (kc * lc).sum() / (n - 1) ** 2
    if not normalized:
        return value
    kk = (kc * kc).sum() / (n - 1) ** 2
    ll = (lc * lc).sum() / (n - 1) ** 2
    return value / (kk * ll).clamp_min(1e-24).sqrt()


def _cholesky_factor(kc: Tensor) -> Tensor:
    n = kc.shape[0]
    eye = torch.eye(n, dtype=kc.dtype, device=kc.device)
    jitter = 1e-6 * float(kc.diagonal().mean().abs().detach()) + 1e-10
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(kc + jitter * eye)
        if int(info) == 0:
            return factor
        jitter *= 10.0
    raise RuntimeError("coco: the centred Gram matrix is not positive semi-definite")


def coco(k: Tensor, l: Tensor, normalized: bool = False) -> Tensor:  # noqa: E741
    """Constrained covariance ``sqrt(lambda_max(K~ L~)) / n`` of two Gram matrices (Gretton et al. 2005).

    ``K~ = H K H``. ``normalized``: divided by ``sqrt(COCO(K, K) COCO(L, L))``, in [0, 1].
    Computed in float64 through Cholesky factors (see the module docstring).
    """
    n = k.shape[0]
    a = _cholesky_factor(center_gram(k.double()))
    b = _cholesky_factor(center_gram(l.double()))
    top = torch.linalg.matrix_norm(b.T @ a, ord=2)  # sqrt(lambda_max(K~ L~))
    if normalized:
        ka = torch.linalg.matrix_norm(a, ord=2) ** 2  # lambda_max(K~)
        lb = torch.linalg.matrix_norm(b, ord=2) ** 2
        return (top / (ka * lb).clamp_min(1e-24).sqrt()).to(k.dtype)
    return (top / n).to(k.dtype)


def dependence(kind: str, k: Tensor, l: Tensor, normalized: bool = True) -> Tensor:  # noqa: E741
    """``hsic`` or ``coco`` of two Gram matrices."""
    if kind == "hsic":
        return hsic(k, l, normalized)
    if kind == "coco":
        return coco(k, l, normalized)
    raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kind!r}")


def _weight(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@register_defense("bido")
class BiDO(Defense):
    """BiDO: CE + lambda_x * sum_j d(X, Z_j) - lambda_y * sum_j d(Y, Z_j) (Peng et al., KDD 2022).

    Args:
        kernel: ``"hsic"`` (BiDO-HSIC) or ``"coco"`` (BiDO-COCO).
        lambda_x: weight of the input-latent dependence (minimised).
        lambda_y: weight of the label-latent dependence (maximised).
        sigma: bandwidth multiplier of the median heuristic (see :func:`gaussian_gram`).
        normalized: normalise each dependence by the self-dependences (see the module docstring).
        layers: indices into the model's ``forward_with_hidden`` list to regularise (negative
            indices count from the end); None for all of them, as in the paper.
    """

    name = "bido"

    def __init__(self, kernel: str = "hsic", lambda_x: float = 0.05, lambda_y: float = 0.5, sigma: float = 1.0,
                 normalized: bool = True, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        self.lambda_x, self.lambda_y = _weight(lambda_x, "lambda_x"), _weight(lambda_y, "lambda_y")
        self.sigma = _weight(sigma, "sigma")
        if self.sigma == 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        if not isinstance(normalized, bool):
            raise ValueError(f"normalized must be true or false, got {normalized!r}")
        self.normalized = normalized
        if layers is not None:
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers or any(
                isinstance(i, bool) or not isinstance(i, int) for i in layers
            ):
                raise ValueError(f"layers must be a non-empty list of ints or null, got {layers!r}")
            layers = [int(i) for i in layers]
        self.layers = layers

    def params(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "lambda_x": self.lambda_x, "lambda_y": self.lambda_y, "sigma": self.sigma,
                "normalized": self.normalized, "layers": self.layers}

    def select(self, hidden: list[Tensor]) -> list[Tensor]:
        if self.layers is None:
            return hidden
        try:
            return [hidden[i] for i in self.layers]
        except IndexError:
            raise ValueError(f"layers: {self.layers} out of range; the model returns {len(hidden)} hidden "
                             "activations") from None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        logits, hidden = model.forward_with_hidden(x)
        ce = F.cross_entropy(logits, y)
        hidden = self.select(hidden)
        if x.shape[0] < 3 or not hidden:  # no dependence estimate from one or two samples
            return ce, logits, {"bido_ce": float(ce.detach()), "bido_dep_xz": 0.0, "bido_dep_yz": 0.0}
        with torch.autocast(x.device.type, enabled=False):
            kx = gaussian_gram(x, self.sigma)
            ky = gaussian_gram(F.one_hot(y, logits.shape[1]).float(), self.sigma)
            dep_xz = x.new_zeros((), dtype=torch.float32)
            dep_yz = x.new_zeros((), dtype=torch.float32)
            for z in hidden:
                kz = gaussian_gram(z, self.sigma)
                dep_xz = dep_xz + dependence(self.kernel, kx, kz, self.normalized)
                dep_yz = dep_yz + dependence(self.kernel, ky, kz, self.normalized)
        loss = ce + self.lambda_x * dep_xz - self.lambda_y * dep_yz
        return loss, logits, {"bido_ce": float(ce.detach()), "bido_dep_xz": float(dep_xz.detach()),
                              "bido_dep_yz": float(dep_yz.detach())}
