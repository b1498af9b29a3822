"""The Open Inference Protocol (KServe v2 / Triton HTTP/REST) on the embedded service: plain JSON
per the protocol through the TestClient (FP32 and BYTES inputs, the binary tensor data extension,
each output policy, the shared query budget, 401/403/404, bad requests), against ``/v1`` predict on
the same images.

The model is the ``model_id`` fixture of ``test_scopes`` (a tiny ``cnn-small`` on 16 px digits,
trained in-process by the worker's handlers).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from services.serving.preprocess import RawImage, preprocess
from tests.service._support import TRAIN_SPEC, ApiProcess, run_job_inline
from tests.service.conftest import Api
from tests.service.test_scopes import mint, model_id  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(600)


def images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` different PNGs of odd sizes (the server resizes them, as training did)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(12 + i, 20), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(api: Api, key: str, model: str, data: list[bytes], **extra: Any) -> Any:
    r = api.client.post(f"/v1/models/{model}/predict", json={"images": [b64(d) for d in data], **extra},
                        headers=api.auth(key))
    assert r.status_code == 200, r.text
    return r.json()


def infer(api: Api, key: str, model: str, body: Any, **kw: Any) -> Any:
    return api.client.post(f"/v2/models/{model}/infer", json=body, headers=api.auth(key), **kw)


def bytes_body(data: list[bytes], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [len(data)], "data": [b64(d) for d in data]}],
            **extra}


def fp32_tensor(api: Api, key: str, model: str, data: list[bytes]) -> torch.Tensor:
    """The images preprocessed as the model's metadata (the card) says: what an FP32 client sends."""
    meta = api.client.get(f"/v2/models/{model}", headers=api.auth(key)).json()["parameters"]
    card = {"image_size": meta["image_size"], "channels": meta["channels"], "normalization": meta["normalization"]}
    return preprocess([RawImage(f"x{i}", "", d) for i, d in enumerate(data)], card)


def fp32_body(x: torch.Tensor, nested: bool = False) -> dict[str, Any]:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    return {"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": data}]}


def output(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert len(outs) == 1
    return outs[0]


def assert_error(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert body["status"] == status and body["error"] == body["detail"] and body["error"]
    if field is not None:
        assert body["errors"][0]["field"] == field, body
        assert field in body["error"]
    return body


def test_health_metadata_and_readiness(api: Api, key_a: str, key_b: str, model_id: str) -> None:  # noqa: F811
    for path, member in [("/v2/health/live", "live"), ("/v2/health/ready", "ready")]:
        r = api.client.get(path)  # no key
        assert r.status_code == 200 and r.json() == {member: True}
    assert api.client.get("/v2").json()["extensions"] == ["classification", "binary_tensor_data"]

    r = api.client.get(f"/v2/models/{model_id}", headers=api.auth(key_a))
    assert r.status_code == 200, r.text
    meta = r.json()
    assert (meta["name"], meta["platform"], meta["versions"]) == (model_id, "pytorch", ["1"])
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["policy"] == {"name": "full"} and len(meta["parameters"]["class_names"]) == 10
    r = api.client.get(f"/v2/models/{model_id}/ready", headers=api.auth(key_a))
    assert r.status_code == 200 and r.json() == {"name": model_id, "ready": True}

    for path in (f"/v2/models/{model_id}", f"/v2/models/{model_id}/ready"):
        assert_error(api.client.get(path), 401)
        assert_error(api.client.get(path, headers=api.auth(key_b)), 404)  # another tenant's model
    assert_error(api.client.get("/v2/models/job_doesnotexist", headers=api.auth(key_a)), 404)
    assert_error(infer(api, key_b, model_id, bytes_body(images(1))), 404)


def test_fp32_and_bytes_infer_equal_v1_predict(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    data = images(3)
    expected = torch.tensor([p["probabilities"] for p in v1(api, key_a, model_id, data)["predictions"]])
    x = fp32_tensor(api, key_a, model_id, data)
    for nested in (False, True):
        r = infer(api, key_a, model_id, fp32_body(x, nested))
        out = output(r)
        assert (r.json()["model_name"], r.json()["id"]) == (model_id, "req-1")
        assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 10])
        torch.testing.assert_close(torch.tensor(out["data"]).reshape(3, 10), expected, atol=1e-5, rtol=1e-4)

    out = output(infer(api, key_a, model_id, bytes_body(data)))
    torch.testing.assert_close(torch.tensor(out["data"]).reshape(3, 10), expected, atol=1e-5, rtol=1e-4)
    # [N, 1] and data: URLs are fine too.
    body = bytes_body(data)
    body["inputs"][0]["shape"] = [3, 1]
    body["inputs"][0]["data"] = [f"data:image/png;base64,{b64(d)}" for d in data]
    torch.testing.assert_close(torch.tensor(output(infer(api, key_a, model_id, body))["data"]).reshape(3, 10),
                               expected, atol=1e-5, rtol=1e-4)

    # The binary tensor data extension (what tritonclient sends by default): FP32 little endian...
    raw = x.numpy().astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 3, 16, 16],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    r = api.client.post(f"/v2/models/{model_id}/infer", content=head + raw,
                        headers={**api.auth(key_a), "Inference-Header-Content-Length": str(len(head)),
                                 "Content-Type": "application/octet-stream"})
    torch.testing.assert_close(torch.tensor(output(r)["data"]).reshape(3, 10), expected, atol=1e-5, rtol=1e-4)
    # ... and BYTES as 4-byte length-prefixed elements.
    raw = b"".join(struct.pack("<I", len(d)) + d for d in data)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [3],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    r = api.client.post(f"/v2/models/{model_id}/infer", content=head + raw,
                        headers={**api.auth(key_a), "Inference-Header-Content-Length": str(len(head))})
    torch.testing.assert_close(torch.tensor(output(r)["data"]).reshape(3, 10), expected, atol=1e-5, rtol=1e-4)

    # A gzip-compressed body (tritonclient's request_compression_algorithm).
    r = api.client.post(f"/v2/models/{model_id}/infer", content=gzip.compress(json.dumps(bytes_body(data)).encode()),
                        headers={**api.auth(key_a), "Content-Encoding": "gzip"})
    torch.testing.assert_close(torch.tensor(output(r)["data"]).reshape(3, 10), expected, atol=1e-5, rtol=1e-4)

    # Each image was one query of the key, on /v1 and /v2 alike.
    queries = api.client.get(f"/v1/models/{model_id}/policy", headers=api.auth(key_a)).json()["usage"][0]["queries"]
    assert queries == 3 * 8


def parse_classes(out: dict[str, Any]) -> list[list[tuple[float, int, str]]]:
    n, k = out["shape"]
    items = [(float(s.split(":")[0]), int(s.split(":")[1]), s.split(":", 2)[2]) for s in out["data"]]
    return [items[i * k:(i + 1) * k] for i in range(n)]


def test_each_output_policy(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    data = images(2, seed=1)
    url = f"/v1/models/{model_id}/policy"
    auth = api.auth(key_a)

    # full, asking for the classification extension itself.
    ask = {"outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    out = output(infer(api, key_a, model_id, bytes_body(data, **ask)))
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 2])
    full = v1(api, key_a, model_id, data, top_k=2)["predictions"]
    for row, pred in zip(parse_classes(out), full, strict=True):
        assert [(i, name) for _, i, name in row] == [(t["label"], t["identity"]) for t in pred["top"]]
        np.testing.assert_allclose([s for s, _, _ in row], [t["probability"] for t in pred["top"]], atol=1e-5)

    assert api.client.patch(url, json={"policy": "top-k", "top_k": 3}, headers=auth).status_code == 200
    meta = api.client.get(f"/v2/models/{model_id}", headers=auth).json()
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "BYTES", "shape": [-1, 3]}]
    r = infer(api, key_a, model_id, bytes_body(data))
    out = output(r)
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "BYTES", [2, 3])
    assert r.json()["parameters"]["policy"] == "top-k"
    topk = v1(api, key_a, model_id, data)["predictions"]
    for row, pred in zip(parse_classes(out), topk, strict=True):
        assert [i for _, i, _ in row] == [t["label"] for t in pred["top"]] and row[0][1] == pred["label"]
    # A request can narrow k, never widen it.
    for k, width in [(1, 1), (50, 3)]:
        body = bytes_body(data, outputs=[{"name": "probabilities", "parameters": {"classification": k}}])
        assert output(infer(api, key_a, model_id, body))["shape"] == [2, width]

    assert api.client.patch(url, json={"policy": "rounded", "top_k": 2, "decimals": 1}, headers=auth).status_code == 200
    out = output(infer(api, key_a, model_id, bytes_body(data)))
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 2])
    rounded = v1(api, key_a, model_id, data)["predictions"]
    for row, pred in zip(parse_classes(out), rounded, strict=True):
        assert [(s, i) for s, i, _ in row] == [(t["probability"], t["label"]) for t in pred["top"]]
        assert all(s == round(s, 1) for s, _, _ in row)

    assert api.client.patch(url, json={"policy": "label-only"}, headers=auth).status_code == 200
    meta = api.client.get(f"/v2/models/{model_id}", headers=auth).json()
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    out = output(infer(api, key_a, model_id, bytes_body(data)))
    assert (out["name"], out["datatype"], out["shape"]) == ("label", "INT64", [2])
    assert out["data"] == [p["label"] for p in v1(api, key_a, model_id, data)["predictions"]]
    # Nothing under label-only reveals a score.
    r = infer(api, key_a, model_id, bytes_body(data, outputs=[{"name": "probabilities"}]))
    assert_error(r, 422, "outputs[0].name")
    r = infer(api, key_a, model_id, bytes_body(data, outputs=[{"name": "label", "parameters": {"classification": 3}}]))
    assert_error(r, 422, "outputs[0].parameters.classification")


def test_budget_is_shared_with_v1_and_the_allow_list_holds(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    r = api.client.patch(f"/v1/models/{model_id}/policy", json={"budget": 5}, headers=api.auth(key_a))
    assert r.status_code == 200, r.text
    key = mint(api, key_a, scopes=["predict"], models=[model_id])["key"]
    r = infer(api, key, model_id, bytes_body(images(2)))
    assert r.status_code == 200 and r.json()["parameters"] == {"policy": "full", "queries": 2, "budget": 5,
                                                               "remaining": 3}
    x = fp32_tensor(api, key, model_id, images(2))
    assert infer(api, key, model_id, fp32_body(x)).json()["parameters"]["remaining"] == 1
    body = assert_error(infer(api, key, model_id, bytes_body(images(2))), 429)  # would be queries 6 and 7
    assert body["code"] == "query_budget_exceeded"
    assert v1(api, key, model_id, images(1))["usage"]["remaining"] == 0  # the fifth query, on /v1
    assert_error(infer(api, key, model_id, bytes_body(images(1))), 429)
    assert api.client.post(f"/v1/models/{model_id}/predict", json={"images": [b64(images(1)[0])]},
                           headers=api.auth(key)).status_code == 429

    # A key limited to the tenant's other model gets 403 for this one.
    spec = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1, "seed": 1},
            "data": {"max_images_per_identity": 20}}
    other = api.client.post("/v1/jobs", json=spec, headers=api.auth(key_a)).json()["id"]
    assert run_job_inline(api.settings, other) == "succeeded"
    limited = mint(api, key_a, scopes=["predict"], models=[other])["key"]
    assert output(infer(api, limited, other, bytes_body(images(1))))["shape"] == [1, 10]
    for method, path in [("GET", f"/v2/models/{model_id}"), ("GET", f"/v2/models/{model_id}/ready"),
                         ("POST", f"/v2/models/{model_id}/infer")]:
        r = api.client.request(method, path, json=bytes_body(images(1)), headers=api.auth(limited))
        assert assert_error(r, 403)["code"] == "forbidden"
    queued = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a)).json()["id"]
    assert_error(api.client.get(f"/v2/models/{queued}", headers=api.auth(key_a)), 409)  # not trained yet


def test_bad_requests_are_4xx_naming_the_field(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    def fp32(shape: list[int], data: Any, **item: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data, **item}]}

    one = [0.0] * 768  # the model takes [N, 3, 16, 16]
    cases: list[tuple[Any, str]] = [
        (fp32([1, 1, 16, 16], [0.0] * 256), "inputs[0].shape"),  # C differs from the card
        (fp32([1, 3, 8, 8], [0.0] * 192), "inputs[0].shape"),  # H, W differ
        (fp32([768], one), "inputs[0].shape"),
        (fp32([1, 3, 16, 16], one[:-1]), "inputs[0].data"),  # shape vs data length
        (fp32([2, 3, 16, 16], one), "inputs[0].data"),
        (fp32([1, 3, 16, 16], ["0.0"] * 256), "inputs[0].data"),
        (fp32([1, 3, 16, 16], [1e39] + one[1:]), "inputs[0].data"),  # not a finite FP32
        (fp32([65, 3, 16, 16], [0.0] * 65 * 768), "inputs[0].shape"),  # N over MIDRE_SERVE_MAX_IMAGES (64)
        (fp32([0, 3, 16, 16], []), "inputs[0].shape"),
        (fp32([1, 3, 16, -16], one), "inputs[0].shape"),
        (fp32([1, 3, 16, 16], one, datatype="INT8"), "inputs[0].datatype"),
        (fp32([1, 3, 16, 16], one, name="images"), "inputs[0].name"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [fp32([1, 3, 16, 16], one)["inputs"][0]] * 2}, "inputs"),
        ([1, 2], "body"),
        ({**fp32([1, 3, 16, 16], one), "id": 7}, "id"),
        ({**fp32([1, 3, 16, 16], one), "outputs": [{"name": "logits"}]}, "outputs[0].name"),
        ({**fp32([1, 3, 16, 16], one), "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]},
         "outputs[0].parameters.classification"),
        (bytes_body(images(2)) | {"inputs": [{**bytes_body(images(2))["inputs"][0], "shape": [3]}]}, "inputs[0].data"),
        (bytes_body(images(1)) | {"inputs": [{**bytes_body(images(1))["inputs"][0], "shape": [1, 2]}]},
         "inputs[0].shape"),
        (bytes_body(images(1)) | {"inputs": [{**bytes_body(images(1))["inputs"][0], "data": ["%%%"]}]},
         "inputs[0].data[0]"),
        (bytes_body(images(1)) | {"inputs": [{**bytes_body(images(1))["inputs"][0], "data": [3]}]},
         "inputs[0].data[0]"),
        (bytes_body([b"not an image"]), "inputs[0].data[0]"),
    ]
    for body, field in cases:
        assert_error(infer(api, key_a, model_id, body), 422, field)
    r = api.client.post(f"/v2/models/{model_id}/infer", content=b"{not json", headers=api.auth(key_a))
    assert_error(r, 422, "body")
    r = api.client.post(f"/v2/models/{model_id}/infer", content=b'{"inputs": [NaN]}', headers=api.auth(key_a))
    assert_error(r, 422, "body")
    head = json.dumps(fp32([1, 3, 16, 16], one)).encode()
    r = api.client.post(f"/v2/models/{model_id}/infer", content=head + b"xx",
                        headers={**api.auth(key_a), "Inference-Header-Content-Length": str(len(head))})
    assert_error(r, 422, "Inference-Header-Content-Length")
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    r = api.client.post(f"/v2/models/{model_id}/infer", content=head + b"\0" * 8,
                        headers={**api.auth(key_a), "Inference-Header-Content-Length": str(len(head))})
    assert_error(r, 422, "inputs[0].parameters.binary_data_size")

    plain = json.dumps(fp32([1, 3, 16, 16], one)).encode()
    r = api.client.post(f"/v2/models/{model_id}/infer", content=plain,
                        headers={**api.auth(key_a), "Content-Encoding": "br"})
    assert_error(r, 415, "Content-Encoding")
    r = api.client.post(f"/v2/models/{model_id}/infer", content=plain,
                        headers={**api.auth(key_a), "Content-Encoding": "gzip"})
    assert_error(r, 422, "body")

    # The body is bounded before it is read: a declared length, then while streaming; and inflated.
    api.client.app.state.serving.settings.max_request_bytes = 1024  # type: ignore[attr-defined]
    assert_error(infer(api, key_a, model_id, fp32([1, 3, 16, 16], one)), 413, "body")

    def chunks() -> Any:
        yield b'{"inputs": ['
        for _ in range(100):
            yield b" " * 100

    r = api.client.post(f"/v2/models/{model_id}/infer", content=chunks(), headers=api.auth(key_a))
    assert_error(r, 413, "body")
    bomb = gzip.compress(b'{"inputs": []' + b" " * 1_000_000 + b"}")
    assert len(bomb) < 1024
    r = api.client.post(f"/v2/models/{model_id}/infer", content=bomb,
                        headers={**api.auth(key_a), "Content-Encoding": "gzip"})
    assert_error(r, 413, "body")
    # None of the refused requests cost a query.
    assert api.client.get(f"/v1/models/{model_id}/policy", headers=api.auth(key_a)).json()["usage"] == []


@pytest.mark.slow  # interop with the tritonclient package; the OIP routes are tested by default
def test_tritonclient_against_a_real_server(api: Api, key_a: str, model_id: str, tmp_path: Path) -> None:  # noqa: F811
    """Triton's own HTTP client (binary tensors by default, JSON on request) against ``midre serve``."""
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    data = images(3, seed=2)
    expected = np.array([p["probabilities"] for p in v1(api, key_a, model_id, data)["predictions"]])
    x = fp32_tensor(api, key_a, model_id, data).numpy()
    server = ApiProcess(api.settings, tmp_path / "api.log")
    try:
        server.wait_ready()
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        auth = api.auth(key_a)

        def key() -> dict[str, str]:
            # tritonclient sends no bearer header by itself, and writes Inference-Header-Content-Length
            # into the headers dict it is given: a fresh one for each call.
            return dict(auth)

        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "midre"
        assert client.is_model_ready(model_id, headers=key()) and not client.is_model_ready(model_id)
        meta = client.get_model_metadata(model_id, headers=key())
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}

        for binary in (True, False):
            fp32 = httpclient.InferInput("input", list(x.shape), "FP32")
            fp32.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(model_id, [fp32], headers=key(), request_id="r1")
            assert result.get_response()["id"] == "r1"
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)

            encoded = httpclient.InferInput("input", [len(data)], "BYTES")
            # Raw bytes with the binary extension, base64 text in JSON.
            elements = data if binary else [b64(d).encode() for d in data]
            encoded.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
            result = client.infer(model_id, [encoded], headers=key(),
                                  request_compression_algorithm="gzip" if binary else None)
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)

        # The classification extension through the client, and the policy's top-k answer.
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2)]
        result = client.infer(model_id, [encoded], outputs=wanted, headers=key())
        top = result.as_numpy("probabilities")
        assert top.shape == (3, 2)
        assert [int(str(s).split(":")[1]) for s in top[:, 0]] == expected.argmax(axis=1).tolist()

        time.sleep(1.0)  # the server writes its counted queries (every 0.5 s) before the reset below
        r = api.client.patch(f"/v1/models/{model_id}/policy",
                             json={"policy": "label-only", "budget": 4, "reset_usage": True}, headers=auth)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10  # the server re-reads the model's policy within 2 s
        while client.get_model_metadata(model_id, headers=key())["outputs"][0]["name"] != "label":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        result = client.infer(model_id, [encoded], headers=key())
        assert result.as_numpy("label").tolist() == expected.argmax(axis=1).tolist()

        with pytest.raises(InferenceServerException, match="missing API key"):
            client.infer(model_id, [encoded])
        with pytest.raises(InferenceServerException, match="inputs\\[0\\].shape"):
            bad = httpclient.InferInput("input", [1, 1, 16, 16], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 1, 16, 16), dtype=np.float32))
            client.infer(model_id, [bad], headers=key())
        assert result.get_response()["parameters"] == {"policy": "label-only", "queries": 3, "budget": 4,
                                                       "remaining": 1}
        with pytest.raises(InferenceServerException, match="has used 3 of the 4 queries"):
            client.infer(model_id, [encoded], headers=key())
        client.close()
    finally:
        server.stop()
