"""Export a served model as TorchScript or ONNX: input images in [0, 1], output probabilities.

The exported graph is the served computation after decoding: the card's normalisation, the model
and the softmax. Feed it ``float32 [N, C, S, S]`` = decoded uint8 pixels / 255 (decode and resize
as :func:`midre.data.images.decode_image` does) and it returns the ``full``-policy probabilities.
Output policies are a property of the service, not of the file: exporting is for the owner.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from midre.checkpoint import card_normalization

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ServedModel(nn.Module):
    """``softmax(model(normalize(x)))`` with the normalisation constants baked in."""

    def __init__(self, model: nn.Module, card: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        norm = card_normalization(card)
        channels = int(card["channels"])
        mean = torch.tensor(norm.mean if norm else (0.0,) * channels).view(1, -1, 1, 1)
        std = torch.tensor(norm.std if norm else (1.0,) * channels).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((x - self.mean) / self.std), dim=1)


def export_model(model: nn.Module, card: dict[str, Any], fmt: str, dest: Path) -> Path:
    """Write ``model`` (on the CPU, eval mode) as ``fmt`` to ``dest`` atomically; returns ``dest``."""
    if fmt not in FORMATS:
        raise ValueError(f"format: use one of {', '.join(FORMATS)}")
    wrapper = ServedModel(model.cpu().eval(), card).eval()
    size, channels = int(card["image_size"]), int(card["channels"])
    example = torch.rand(2, channels, size, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, example)
                traced.save(tmp)
            else:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    tmp,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
