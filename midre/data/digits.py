"""scikit-learn's bundled 8x8 handwritten digits as a 10-identity offline demo data set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from midre.data.errors import DatasetError

#: Class names of the digits data set (index = label).
DIGITS_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))

_CHUNK = 256


def load_digits_images(image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load ``sklearn.datasets.load_digits`` (1797 images, ~180 per digit) as uint8 images.

    The 8x8 images (values 0..16, ink bright on a dark background) are scaled to [0, 255], resized
    to ``image_size`` with bilinear interpolation (antialiased when shrinking) and, for
    ``channels == 3``, the gray channel is repeated. scikit-learn is imported here, lazily: it ships
    the data inside the package, so nothing is downloaded.

    Args:
        image_size: Output side.
        channels: 1 or 3.

    Returns:
        ``(images uint8 [N, C, S, S], labels int64 [N], paths ["digits:<i>", ...])`` in sklearn order.

    Raises:
        DatasetError: naming ``source`` if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a project dependency
        raise DatasetError("source: 'digits' needs scikit-learn installed", field="source") from exc
    bunch = load_digits()
    raw = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1)  # [N, 1, 8, 8], 0..16
    n = raw.shape[0]
    out = torch.empty((n, channels, image_size, image_size), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):  # bounded float memory at large image sizes
        x = raw[start : start + _CHUNK] * (255.0 / 16.0)
        if image_size != 8:
            x = F.interpolate(
                x,
                size=(image_size, image_size),
                mode="bilinear",
                align_corners=False,
                antialias=image_size < 8,
            )
        out[start : start + _CHUNK] = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, channels, -1, -1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    paths = [f"digits:{i}" for i in range(n)]
    return out, labels, paths
