"""Bring your own model (embedded service, no servers): upload a model trained outside the service,
audit it with ``attack_eval``, harden it with ``init_from``; bad uploads are 4xx naming the problem
and store nothing. Jobs run in this process through the worker's own engine (``run_job_inline``)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save

from tests.service._support import run_job_inline, train_outside
from tests.service.conftest import Api, make_settings
from tests.service.test_jobspec import STUDY, job_count, submit

DATA = {"max_images_per_identity": 20}


@pytest.fixture(scope="module")
def outside_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """Weights and a minimal card of a model trained with the library, outside the service."""
    weights, minimal = train_outside(tmp_path_factory.mktemp("outside"), epochs=1, max_images_per_identity=20)
    return weights.read_bytes(), minimal


def upload(api: Api, key: str, weights: bytes, card: Any, name: str = "their-model") -> Any:
    files = {"file": ("their.safetensors", weights, "application/octet-stream")}
    text = card if isinstance(card, str) else json.dumps(card)
    return api.client.post("/v1/models", files=files, data={"card": text, "name": name}, headers=api.auth(key))


def test_upload_audit_and_harden_a_model_trained_elsewhere(
    api: Api, key_a: str, key_b: str, outside_model: tuple[bytes, dict[str, Any]]
) -> None:
    weights, card = outside_model
    r = upload(api, key_a, weights, card)
    assert r.status_code == 201, r.text
    model = r.json()
    model_id = model["id"]
    assert model["job_id"] == model_id  # one id space: the model's id is its (upload) job's id
    assert model["arch"] == "cnn-small" and model["num_classes"] == 10
    assert model["card"]["origin"]["kind"] == "upload" and model["card"]["origin"]["name"] == "their-model"
    listed = api.client.get("/v1/models", headers=api.auth(key_a)).json()["items"]
    assert [(m["job_id"], m["kind"]) for m in listed] == [(model_id, "upload")]
    assert api.client.get(f"/v1/models/{model_id}", headers=api.auth(key_b)).status_code == 404

    # Audit: the private data it was trained on is named by the spec (the card does not know it).
    audit = submit(api, key_a, {"kind": "attack_eval", "model": model_id, "dataset": "digits", "data": DATA,
                                **STUDY})
    assert audit.status_code == 201, audit.text
    assert audit.json()["resolved"]["config"]["target"] == f"job:{model_id}"
    assert run_job_inline(api.settings, audit.json()["id"]) == "succeeded"
    events = api.client.get(f"/v1/jobs/{audit.json()['id']}/events", params={"limit": 1000},
                            headers=api.auth(key_a)).json()["items"]
    (estimate,) = [e for e in events if e["type"] == "estimate"]  # calibrated before the attacks ran
    assert estimate["data"]["attacks"]["mi-face"]["runs"] == 1 and estimate["data"]["training"] is None
    report = json.loads(api.client.get(f"/v1/jobs/{audit.json()['id']}/artifacts/report.json",
                                       headers=api.auth(key_a)).content)
    target = report["models"]["target"]
    assert target["origin"]["kind"] == "upload" and target["origin"]["name"] == "their-model"
    assert 0 < target["metrics"]["test_accuracy"] <= 1  # measured on the held-out split, the card had none
    # The model's card now carries the audit, and so does its Markdown form.
    view = api.client.get(f"/v1/models/{model_id}", headers=api.auth(key_a)).json()
    (evaluation,) = view["evaluations"]
    assert evaluation["attack"] == "mi-face" and evaluation["job_id"] == audit.json()["id"]
    assert 0 <= evaluation["attacc_top1"] <= 100 and evaluation["judge"] == "cnn-small" and evaluation["seeds"] == 1
    card_md = api.client.get(f"/v1/models/{model_id}/README.md", headers=api.auth(key_a))
    assert card_md.status_code == 200 and card_md.headers["content-type"].startswith("text/markdown")
    front = yaml.safe_load(card_md.text.split("---")[1])
    (model_index,) = front["model-index"]
    assert model_index["name"] == "their-model"
    assert any(r["task"].get("name") == "mi-face" for r in model_index["results"]), model_index
    from huggingface_hub import ModelCard  # the Hub's own parser: the real audit is an attacc_top1 result

    (top1,) = [r for r in ModelCard(card_md.text).data.eval_results if r.metric_type == "attacc_top1"]
    assert top1.metric_config.startswith("mi-face@1+") and top1.metric_args["audit"] == audit.json()["id"]
    assert "| mi-face |" in card_md.text
    # Without the data set the worker could not know the private data: refused before queueing.
    r = submit(api, key_a, {"kind": "attack_eval", "model": model_id, **STUDY})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset", r.text

    # Harden it: fine-tune with MIDRE from its weights.
    spec = {"kind": "train", "dataset": "digits", "arch": "cnn-small", "init_from": model_id, "device": "cpu",
            "defense": {"name": "midre", "a_h": 0.4}, "training": {"epochs": 1, "image_size": 16},
            "data": {"channels": 1, **DATA}}
    hardened = submit(api, key_a, spec)
    assert hardened.status_code == 201, hardened.text
    assert run_job_inline(api.settings, hardened.json()["id"]) == "succeeded"
    card_after = api.client.get(f"/v1/models/{hardened.json()['id']}", headers=api.auth(key_a)).json()["card"]
    assert card_after["init_from"] == f"job:{model_id}" and card_after["defense"]["name"] == "midre"
    assert str(api.settings.home) not in json.dumps(card_after)


def test_bad_uploads_are_4xx_naming_the_problem_and_store_nothing(
    api: Api, key_a: str, outside_model: tuple[bytes, dict[str, Any]]
) -> None:
    weights, card = outside_model
    zip_head = b"PK\x03\x04" + bytes(64)
    cases = [
        (b"not a safetensors file at all", card, "file"),
        (zip_head, card, "file"),
        (weights, {**card, "class_names": card["class_names"][:5]}, "card.num_classes"),  # the head has 10 rows
        (weights, {**card, "arch": "resnet18"}, "card.image_size"),  # 16 px is too small for it
        (weights, {**card, "arch": "no-such-net"}, "card.arch"),
        (weights, {k: v for k, v in card.items() if k != "image_size"}, "card.image_size"),
        (weights, {**card, "channels": 2}, "card.channels"),
        (weights, {**card, "normalization": {"mean": [0.5, 0.5], "std": [0.5]}}, "card.normalization"),
        (weights, "{not json", "card"),
    ]
    for data, bad_card, field in cases:
        r = upload(api, key_a, data, bad_card)
        assert r.status_code == 422, (field, r.status_code, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (field, r.text)
    assert job_count(api) == 0
    assert not any(p.is_file() for p in (api.settings.storage_dir / "uploads").rglob("*"))


def test_an_oversized_model_is_413(tmp_path: Path, outside_model: tuple[bytes, dict[str, Any]]) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    settings = make_settings(tmp_path / "home", max_model_bytes=1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        small = Api(settings, client)
        key = small.key("t")
        r = upload(small, key, outside_model[0], outside_model[1])
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file", r.text
        assert job_count(small) == 0



@contextmanager
def parameters_created() -> Iterator[list[str]]:
    """Names of the torch parameters registered in this process meanwhile (any module built, any thread)."""
    created: list[str] = []
    handle = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, param: created.append(f"{type(module).__name__}.{name}"))
    try:
        yield created
    finally:
        handle.remove()


def test_bad_cards_are_refused_before_any_model_is_built(
    api: Api, key_a: str, outside_model: tuple[bytes, dict[str, Any]]
) -> None:
    """A card asking for a huge head or input, a non-finite normalisation, or classes its weights do not
    have is a 422 naming the card field, decided from the card and the file's header alone."""
    weights, card = outside_model
    resnet = {"arch": "resnet18", "num_classes": 10, "image_size": 32, "channels": 3}
    cases = [
        ({**resnet, "num_classes": 1_000_000}, "card.num_classes"),
        ({**resnet, "image_size": 2048}, "card.image_size"),
        ({**resnet, "image_size": 10**9}, "card.image_size"),
        ({**resnet, "normalization": {"mean": [0.5] * 3, "std": [float("nan")] * 3}}, "card.normalization"),
        ({**resnet, "normalization": {"mean": [float("inf")] * 3, "std": [1.0] * 3}}, "card.normalization"),
        ({**card, "class_names": None, "num_classes": 50}, "card.num_classes"),  # the file's head has 10 rows
        ({**card, "class_names": [*card["class_names"][:9], "nul\x00"]}, "card.class_names[9]"),
    ]
    with parameters_created() as created:
        for bad_card, field in cases:
            r = upload(api, key_a, weights, {k: v for k, v in bad_card.items() if v is not None})
            assert r.status_code == 422, (field, r.status_code, r.text)
            assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    assert created == []  # no architecture was instantiated for any of them
    assert job_count(api) == 0
    assert not any(p.is_file() for p in (api.settings.storage_dir / "uploads").rglob("*"))
    with parameters_created() as created:  # the probe sees a build: the good card is built and checked
        assert upload(api, key_a, weights, card).status_code == 201
    assert "Conv2d.weight" in created


def png(seed: int, side: int = 32) -> bytes:
    pixels = torch.Generator().manual_seed(seed)
    array = (torch.rand(side, side, 3, generator=pixels) * 255).to(torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(array, "RGB").save(out, format="PNG")
    return out.getvalue()


def test_a_torchvision_state_dict_uploads_and_predicts(api: Api, key_a: str) -> None:
    """``torchvision.models.resnet18(num_classes=10)``'s own state dict (keys ``conv1.weight``, ``fc.bias``...)
    is mapped to the registry's layout and predicts as torchvision does; one that does not fit says what would."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    card = {"arch": "resnet18", "num_classes": 10, "image_size": 32, "channels": 3}
    r = upload(api, key_a, save(net.state_dict()), card, name="tv-resnet18")
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]

    images = [png(i) for i in range(3)]
    files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = api.client.post(f"/v1/models/{model_id}/predict", files=files, headers=api.auth(key_a))
    assert r.status_code == 200, r.text
    x = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(d)))).permute(2, 0, 1) for d in images]) / 255
    with torch.no_grad():
        expected = torch.softmax(net(x), dim=1)
    served = torch.tensor([p["probabilities"] for p in r.json()["predictions"]])
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)

    other = torchvision.models.resnet34(num_classes=10).state_dict()
    r = upload(api, key_a, save(other), card)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file", r.text
    message = r.json()["errors"][0]["message"]
    assert "unexpected" in message and "torchvision.models.resnet18" in message and "docs/integrations.md" in message
