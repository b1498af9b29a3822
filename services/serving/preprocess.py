"""Images in a predict request -> the float batch the model was trained on.

Exactly the training pipeline, from the checkpoint's card: :func:`midre.data.images.decode_image`
(restricted PIL decoders, EXIF orientation, L/RGB per ``channels``, bilinear resize to
``image_size``) then :func:`midre.data.to_float` with the card's normalisation.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from midre.checkpoint import card_normalization
from midre.data import to_float
from midre.data.errors import DatasetError
from midre.data.images import decode_image


class InputError(ValueError):
    """A request input that cannot be used; ``field`` names it (``files[1]``, ``images[0].data``)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def decode_base64(field: str, text: str, limit: int, name: str = "") -> bytes:
    """The bytes of a base64 image (a ``data:`` URL prefix allowed), at most ``limit`` of them.

    Raises:
        InputError: 413 past ``limit`` (checked on the text's length, before decoding), 422 for bad base64.
    """
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limit * 4 // 3 + 8:
        raise InputError(field, f"{name or 'the image'} is larger than {limit} bytes", status=413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(field, f"{name or 'the image'} is not valid base64 ({exc})") from exc


@dataclass(frozen=True)
class RawImage:
    """One submitted image: its encoded bytes, the field it came in and the name the client gave it."""

    field: str
    name: str
    data: bytes


def decode_uint8(images: list[RawImage], card: dict[str, Any]) -> torch.Tensor:
    """Decode ``images`` as training did: uint8 ``[N, C, S, S]`` (S, C from the card).

    Raises:
        InputError: naming the field and file of the first image that cannot be decoded.
    """
    size, channels = int(card["image_size"]), int(card["channels"])
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        display = f"{image.field} ({image.name})" if image.name else image.field
        if not image.data:
            raise InputError(image.field, f"{image.name or 'image'} is empty")
        try:
            arr = decode_image(io.BytesIO(image.data), size, channels, display=display)  # type: ignore[arg-type]
        except DatasetError as exc:
            raise InputError(image.field, str(exc).removeprefix(f"{display}: ") + _named(image)) from exc
        out[i] = arr if arr.ndim == 3 else arr[:, :, None]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _named(image: RawImage) -> str:
    return f" (file {image.name!r})" if image.name else ""


def preprocess(images: list[RawImage], card: dict[str, Any]) -> torch.Tensor:
    """The normalised float batch ``[N, C, S, S]`` the model expects."""
    return to_float(decode_uint8(images, card), card_normalization(card))
