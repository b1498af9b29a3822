"""The Open Inference Protocol (KServe v2 / Triton HTTP/REST) for served models: parse an infer
request's input tensor, describe a model, and encode its answer under the model's output policy.

One input, ``input``: either ``FP32`` ``[N, C, S, S]`` already preprocessed and normalised as the
checkpoint's card says (what :func:`services.serving.preprocess.preprocess` produces), or ``BYTES``
``[N]`` (or ``[N, 1]``) of encoded images that are preprocessed here exactly as ``/v1`` predict does.
Tensor data comes as JSON (``data``, flat or nested row-major; a ``BYTES`` element is a base64
string) or, with the binary tensor data extension (``Inference-Header-Content-Length``), as raw
bytes after the JSON header (``FP32`` little endian; ``BYTES`` elements each prefixed by their
4-byte little-endian length).

One output, as the output policy allows (:mod:`services.serving.policy`):

* ``full``: ``probabilities`` ``FP32`` ``[N, classes]``;
* ``top-k`` / ``rounded``: ``probabilities`` in the classification extension's form, ``BYTES``
  ``[N, k]`` of ``"<score>:<index>:<label>"`` (scores rounded for ``rounded``);
* ``label-only``: ``label`` ``INT64`` ``[N]``.

Under ``full`` a client may ask for the classification form itself (``outputs: [{"name":
"probabilities", "parameters": {"classification": k}}]``); under ``top-k`` / ``rounded`` the same
parameter can only narrow the policy's k.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from services.serving.policy import OutputPolicy, apply_policy, classification_strings, effective_k
from services.serving.preprocess import InputError, RawImage, decode_base64

INPUT = "input"
PROBABILITIES = "probabilities"
LABEL = "label"
#: The binary tensor data extension: the JSON header's length, the binary tensors follow it.
HEADER_LENGTH = "inference-header-content-length"
#: Bytes a JSON FP32 element may take (``-1.2345678901234567e-05, ``) when bounding a body.
JSON_FLOAT_BYTES = 32
#: Room for the JSON around the tensor data.
ENVELOPE_BYTES = 64 * 1024


class ProtocolError(InputError):
    """An infer request the protocol or the model cannot take; ``field`` names the part."""


@dataclass(frozen=True)
class InferInput:
    """The request's one input: a normalised float batch (``FP32``) or encoded images (``BYTES``)."""

    datatype: str
    count: int
    tensor: torch.Tensor | None = None
    images: tuple[RawImage, ...] = ()


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names (``classification``: the extension's k, when asked)."""

    name: str
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request."""

    id: str | None
    input: InferInput
    outputs: tuple[RequestedOutput, ...]


def input_shape(card: dict[str, Any]) -> list[int]:
    """``[C, S, S]`` of the model's ``FP32`` input."""
    size = int(card["image_size"])
    return [int(card["channels"]), size, size]


def body_limit(card: dict[str, Any], max_images: int, max_image_bytes: int, cap: int) -> int:
    """The largest infer body worth reading for this model: ``max_images`` FP32 images as JSON
    text or base64 images of ``max_image_bytes``, whichever is larger, never above ``cap``."""
    fp32 = max_images * math.prod(input_shape(card)) * JSON_FLOAT_BYTES
    encoded = max_images * (max_image_bytes * 4 // 3 + 8)
    return min(cap, max(fp32, encoded) + ENVELOPE_BYTES)


def model_metadata(
    model_id: str, card: dict[str, Any], policy: OutputPolicy, budget: int | None, default_k: int
) -> dict[str, Any]:
    """The protocol's model metadata; ``parameters`` say what an ``FP32`` client must do to an image."""
    classes = int(card.get("num_classes") or len(card.get("class_names") or []))
    if policy.name == "label-only":
        output = {"name": LABEL, "datatype": "INT64", "shape": [-1]}
    elif policy.name == "full":
        output = {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]}
    else:
        k = effective_k(policy, None, default_k, classes)
        output = {"name": PROBABILITIES, "datatype": "BYTES", "shape": [-1, k]}
    norm = card.get("normalization")
    return {
        "name": model_id,
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *input_shape(card)]}],
        "outputs": [output],
        "parameters": {
            "arch": card.get("arch"),
            "class_names": [str(c) for c in card.get("class_names") or []],
            "image_size": card.get("image_size"),
            "channels": card.get("channels"),
            "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"])} if norm else None,
            "fp32_input": "decoded pixels / 255, then (x - mean) / std per channel (none: [0, 1])",
            "bytes_input": "encoded images [N], preprocessed by the server as /v1 predict does",
            "policy": policy.describe(),
            "budget": budget,
        },
    }


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body of a ``Content-Encoding: gzip | deflate`` request (``tritonclient``'s
    ``request_compression_algorithm``), inflated to at most ``limit`` bytes (413 past it)."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    if name not in ("gzip", "deflate"):
        raise ProtocolError("Content-Encoding", f"must be gzip, deflate or identity, got {encoding!r}", status=415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if name == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError("body", f"not valid {name} data ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError("body", f"inflates past this model's {limit}-byte limit", status=413)
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON header of an infer body (parsed; NaN and Infinity refused) and the binary tensor data."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError("Inference-Header-Content-Length", f"must be the JSON header's length, at most "
                                f"{len(body)}, got {header_length!r}")
        body, binary = body[: int(header_length)], body[int(header_length):]

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number the protocol allows")

    try:
        return json.loads(body, parse_constant=no_constant), binary
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("body", f"not a JSON infer request ({exc})") from exc


def _shape(field: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise ProtocolError(field, "must be a list of non-negative integers")
    return value


def _flat(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _b64(field: str, text: str, limit: int) -> bytes:
    try:
        return decode_base64(field, text, limit)
    except InputError as exc:
        raise ProtocolError(exc.field, exc.message, exc.status) from exc


def _binary_elements(field: str, raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ProtocolError(field, "binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise ProtocolError(field, f"binary BYTES element {len(out)} declares {size} bytes past the data's end")
        out.append(raw[at + 4: at + 4 + size])
        at += 4 + size
    return out


def _fp32(field: str, shape: list[int], card: dict[str, Any], data: Any, raw: bytes | None) -> torch.Tensor:
    want = input_shape(card)
    if len(shape) != 4 or shape[1:] != want:
        raise ProtocolError(f"{field}.shape", f"must be [N, {', '.join(map(str, want))}] (N images of channels, "
                            f"height, width as the model card says), got {shape}")
    expected = math.prod(shape)
    if raw is not None:
        if len(raw) != expected * 4:
            raise ProtocolError(f"{field}.parameters.binary_data_size",
                                f"{len(raw)} bytes for shape {shape}: expects {expected * 4} (FP32 little endian)")
        tensor = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
    else:
        if not isinstance(data, list):
            raise ProtocolError(f"{field}.data", "must be a list of numbers (flat or nested row-major)")
        flat = _flat(data)
        if len(flat) != expected:
            raise ProtocolError(f"{field}.data", f"{len(flat)} elements for shape {shape}: expects {expected}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
            raise ProtocolError(f"{field}.data", "FP32 elements must be numbers")
        tensor = torch.tensor(flat, dtype=torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ProtocolError(f"{field}.data", "holds a NaN or an infinity (or a number out of FP32 range)")
    return tensor.reshape(shape)


def _encoded(field: str, shape: list[int], data: Any, raw: bytes | None, max_image_bytes: int) -> list[RawImage]:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ProtocolError(f"{field}.shape", f"BYTES images must be [N] or [N, 1], got {shape}")
    if raw is not None:
        elements = _binary_elements(f"{field}.parameters.binary_data_size", raw)
    else:
        if not isinstance(data, list):
            raise ProtocolError(f"{field}.data", "must be a list of base64 strings")
        elements = _flat(data)
    if len(elements) != shape[0]:
        raise ProtocolError(f"{field}.data", f"{len(elements)} elements for shape {shape}: expects {shape[0]}")
    images = []
    for i, element in enumerate(elements):
        where = f"{field}.data[{i}]"
        if isinstance(element, str):
            element = _b64(where, element, max_image_bytes)
        elif not isinstance(element, bytes):
            raise ProtocolError(where, "a BYTES element in JSON must be a base64 string")
        if len(element) > max_image_bytes:
            raise ProtocolError(where, f"the image is larger than {max_image_bytes} bytes", status=413)
        images.append(RawImage(where, "", element))
    return images


def _outputs(value: Any, policy: OutputPolicy) -> tuple[RequestedOutput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolError("outputs", "must be a list of {name, parameters?}")
    offered = LABEL if policy.name == "label-only" else PROBABILITIES
    out = []
    for i, item in enumerate(value):
        field = f"outputs[{i}]"
        if not isinstance(item, dict) or item.get("name") != offered:
            name = item.get("name") if isinstance(item, dict) else item
            raise ProtocolError(f"{field}.name", f"this model (policy {policy.name}) has one output, "
                                f"{offered!r}; got {name!r}")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"{field}.parameters", "must be an object")
        k = params.get("classification")
        if k is not None:
            if policy.name == "label-only":
                raise ProtocolError(f"{field}.parameters.classification", "the label-only policy reveals no scores")
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100_000:
                raise ProtocolError(f"{field}.parameters.classification", "must be an integer in [1, 100000]")
        out.append(RequestedOutput(offered, k))
    return tuple(out)


def parse_request(
    head: Any, binary: bytes, card: dict[str, Any], policy: OutputPolicy, *, max_images: int, max_image_bytes: int
) -> InferRequest:
    """Check an infer request against the protocol and the model (shape vs data, C/H/W vs the card,
    datatype, at most ``max_images`` images) and take its input apart.

    Raises:
        ProtocolError: naming the first field that is wrong (``inputs[0].shape``, ``outputs[0].name``).
    """
    if not isinstance(head, dict):
        raise ProtocolError("body", "must be a JSON object {id?, inputs, outputs?, parameters?}")
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id", "must be a string")
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError("inputs", f"must hold exactly one tensor, {INPUT!r}")
    item, field = inputs[0], "inputs[0]"
    if item.get("name") != INPUT:
        raise ProtocolError(f"{field}.name", f"this model's input is {INPUT!r}, got {item.get('name')!r}")
    shape = _shape(f"{field}.shape", item.get("shape"))
    count = shape[0] if shape else 0
    if not 1 <= count <= max_images:
        raise ProtocolError(f"{field}.shape", f"N (the first dimension) must be 1 to {max_images} images per "
                            f"request, got {count}")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{field}.parameters", "must be an object")
    raw: bytes | None = None
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise ProtocolError(f"{field}.parameters.binary_data_size",
                                f"must equal the {len(binary)} bytes after the JSON header, got {size!r}")
        if "data" in item:
            raise ProtocolError(f"{field}.data", "give either data or binary_data_size, not both")
        raw = binary
    elif binary:
        raise ProtocolError("Inference-Header-Content-Length", f"{len(binary)} bytes follow the JSON header but no "
                            "input declares binary_data_size")
    datatype = item.get("datatype")
    data = item.get("data")
    if datatype == "FP32":
        parsed = InferInput("FP32", count, tensor=_fp32(field, shape, card, data, raw))
    elif datatype == "BYTES":
        parsed = InferInput("BYTES", count, images=tuple(_encoded(field, shape, data, raw, max_image_bytes)))
    else:
        raise ProtocolError(f"{field}.datatype", f"must be FP32 (preprocessed, normalised [N, "
                            f"{', '.join(map(str, input_shape(card)))}]) or BYTES (encoded images), got {datatype!r}")
    return InferRequest(request_id, parsed, _outputs(head.get("outputs"), policy))


def encode_outputs(
    probs: torch.Tensor,
    class_names: list[str],
    policy: OutputPolicy,
    requested: tuple[RequestedOutput, ...],
    *,
    default_k: int,
) -> list[dict[str, Any]]:
    """The response's ``outputs`` for probabilities ``[N, K]``, holding only what ``policy`` allows."""
    n = int(probs.shape[0])
    if policy.name == "label-only":
        labels = [a["label"] for a in apply_policy(probs, class_names, policy, requested_k=None, default_k=default_k)]
        return [{"name": LABEL, "datatype": "INT64", "shape": [n], "data": labels}]
    k = next((r.classification for r in requested if r.classification is not None), None)
    if policy.name == "full" and k is None:
        return [{"name": PROBABILITIES, "datatype": "FP32", "shape": [n, int(probs.shape[1])],
                 "data": probs.reshape(-1).tolist()}]
    answers = apply_policy(probs, class_names, policy, requested_k=k, default_k=default_k)
    rows = classification_strings(answers)
    width = len(rows[0]) if rows else 0
    return [{"name": PROBABILITIES, "datatype": "BYTES", "shape": [n, width], "data": [s for row in rows for s in row]}]
