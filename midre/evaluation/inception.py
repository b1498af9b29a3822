"""Inception-v3 pool features for the distribution metrics, from weights the operator supplies.

FID is usually measured in Inception-v3's 2048-d pool features. Nothing here downloads: the operator
saves torchvision's ``inception_v3`` state dict as a safetensors file once (on a machine with internet:
``save_file(inception_v3(weights="DEFAULT").state_dict(), "inception_v3.safetensors")``) and names it in
the study's ``inception_weights`` (the service: ``MIDRE_INCEPTION_WEIGHTS``). The metrics are then also
reported as ``inception_fid``, ``inception_precision``... beside the ones in the first judge's features.
Images are resized to 299 px (bilinear), grey images repeated to three channels, and normalised with
ImageNet statistics, as torchvision's weights expect.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from midre.errors import ConfigError

SIZE = 299
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class InceptionFeatures:
    """Callable: ``[N, C, H, W]`` images in ``[0, 1]`` (float) or uint8 -> ``[N, 2048]`` pool features.

    Raises:
        ConfigError: ``inception_weights``: the file is missing or is not an ``inception_v3`` state dict.
    """

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from safetensors.torch import load_file
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise ConfigError("inception_weights", f"no such file: {path}")
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises several kinds for a file that is not one
            raise ConfigError("inception_weights", f"{path.name} is not a safetensors file ({exc})") from None
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError("inception_weights", f"{path.name} is not torchvision's inception_v3 state dict: "
                                                   f"{str(exc).splitlines()[0]}") from None
        net.fc = nn.Identity()
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = []
        mean = torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size].to(self.device)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            out.append(self.net((x - mean) / std).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2048)


__all__ = ["InceptionFeatures", "SIZE"]
