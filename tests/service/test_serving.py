"""Serving on the real stack: PostgreSQL + Redis + a real Celery worker trains a tiny
``cnn-small`` on digits (16 px, 1 epoch) once; the tests then predict with it over the API.

Covers: endpoint predictions == the in-process model's, every output policy returns only what it
promises, a budget of N answers 429 on query N+1 (and shows in /metrics), another tenant gets 404,
bad inputs are 4xx naming the file or field, TorchScript/ONNX exports reproduce the predictions, the
client and ``midre predict``; write-behind query accounting (exact answers, views and /metrics, written at
shutdown; budgets stay exact across replicas); plus unit tests of the dynamic batcher, the LRU cache and
the usage meter (SQLite and PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.service._support import TRAIN_SPEC, WorkerProcess, load_checkpoint, wait_for
from tests.service.conftest import REDIS_URL, Api, PgDatabases, make_settings

pytestmark = pytest.mark.service

METRICS_TOKEN = "operator-secret"
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "errors"}


@pytest.fixture(scope="module")
def stack(pg_databases: PgDatabases, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("serving-home")
    settings = make_settings(
        home, database_url=pg_databases.create(), broker_url=REDIS_URL, broker_prefix=f"{redis_prefix}serving-",
        metrics_token=METRICS_TOKEN,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(settings, client)


@pytest.fixture(scope="module")
def key(stack: Api) -> str:
    return stack.key("owner")


@pytest.fixture(scope="module")
def trained(stack: Api, key: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One digits model trained by a real worker; returns (job id, folder of its downloaded checkpoint)."""
    worker = WorkerProcess(stack.settings, tmp_path_factory.mktemp("logs") / "worker.log", queues="cpu")
    try:
        worker.wait_ready()
        spec = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1}}
        r = stack.client.post("/v1/jobs", json=spec, headers=stack.auth(key))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        def done() -> dict[str, Any] | None:
            job = stack.client.get(f"/v1/jobs/{job_id}", headers=stack.auth(key)).json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(done, 240, what="training")
        assert job["status"] == "succeeded", (job, worker.log()[-3000:])
    finally:
        worker.stop()
    folder = tmp_path_factory.mktemp("checkpoint")
    for name in ("model.json", "model.safetensors"):
        r = stack.client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=stack.auth(key))
        (folder / name).write_bytes(r.content)
    return job_id, folder


def images(n: int = 4) -> list[bytes]:
    """Digit-like PNGs of several sizes and modes (gray and RGB), so resize and conversion matter."""
    from PIL import Image

    from midre.data import DatasetSpec, load_dataset

    test = load_dataset(DatasetSpec(source="digits", image_size=16, channels=1)).test
    out = []
    for i in range(n):
        arr = test.images[i, 0].numpy()
        img = Image.fromarray(arr, "L").resize((24 + 8 * i, 24 + 8 * i), Image.Resampling.NEAREST)
        if i % 2:
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def reference_probs(folder: Path, data: list[bytes]) -> torch.Tensor:
    """What the in-process model says: training's decode + to_float + the model + softmax."""
    from midre.checkpoint import card_normalization
    from midre.data import to_float
    from midre.data.images import decode_image

    model, card = load_checkpoint(folder)
    arrs = [decode_image(io.BytesIO(d), card["image_size"], card["channels"]) for d in data]  # type: ignore[arg-type]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return torch.softmax(model(to_float(x, card_normalization(card))), dim=1)


def upload(data: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"img{i}.png", d, "image/png")) for i, d in enumerate(data)]


def set_policy(stack: Api, key: str, job_id: str, **body: Any) -> dict[str, Any]:
    r = stack.client.put(f"/v1/models/{job_id}/policy", json=body, headers=stack.auth(key))
    assert r.status_code == 200, r.text
    return r.json()


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert PROBLEM_KEYS <= set(body)
    if code:
        assert body["code"] == code
    return body


def test_predictions_equal_the_in_process_model(stack: Api, key: str, trained: tuple[str, Path]) -> None:
    job_id, folder = trained
    set_policy(stack, key, job_id, policy="full")
    data = images(4)
    expected = reference_probs(folder, data)

    r = stack.client.post(f"/v1/models/{job_id}/predict", files=upload(data), headers=stack.auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == job_id and body["policy"] == {"name": "full"}
    got = torch.tensor([p["probabilities"] for p in body["predictions"]])
    assert got.shape == (4, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert [p["label"] for p in body["predictions"]] == expected.argmax(1).tolist()
    assert [p["input"] for p in body["predictions"]] == [f"files[{i}] (img{i}.png)" for i in range(4)]
    assert body["predictions"][0]["identity"] == str(body["predictions"][0]["label"])

    # The same images as base64 JSON (plain strings and {name, data} objects) answer the same.
    payload = {"images": [base64.b64encode(data[0]).decode()] + [
        {"name": f"j{i}.png", "data": base64.b64encode(d).decode()} for i, d in enumerate(data[1:], 1)
    ], "top_k": 3}
    r = stack.client.post(f"/v1/models/{job_id}/predict", json=payload, headers=stack.auth(key))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    torch.testing.assert_close(torch.tensor([p["probabilities"] for p in preds]), expected, atol=1e-5, rtol=1e-4)
    assert all(len(p["top"]) == 3 for p in preds)
    assert preds[0]["input"] == "images[0]" and preds[1]["input"] == "images[1] (j1.png)"


def test_list_models_shows_cards(stack: Api, key: str, trained: tuple[str, Path]) -> None:
    job_id, _ = trained
    r = stack.client.get("/v1/models", headers=stack.auth(key))
    assert r.status_code == 200, r.text
    item = next(m for m in r.json()["items"] if m["job_id"] == job_id)
    assert item["arch"] == "cnn-small" and item["num_classes"] == 10 and item["image_size"] == 16
    assert item["class_names"] == [str(d) for d in range(10)]
    assert item["defense"]["name"] == "midre"
    assert 0 < item["metrics"]["acc"] <= 100


def test_each_output_policy_returns_only_what_it_promises(stack: Api, key: str, trained: tuple[str, Path]) -> None:
    job_id, folder = trained
    data = images(2)
    expected = reference_probs(folder, data)

    def ask(**params: Any) -> dict[str, Any]:
        r = stack.client.post(
            f"/v1/models/{job_id}/predict", files=upload(data), params=params, headers=stack.auth(key)
        )
        assert r.status_code == 200, r.text
        return r.json()

    set_policy(stack, key, job_id, policy="top-k", top_k=2)
    body = ask(top_k=9)
    assert body["policy"] == {"name": "top-k", "top_k": 2}
    for pred, probs in zip(body["predictions"], expected, strict=True):
        assert set(pred) == {"input", "label", "identity", "top"}
        assert len(pred["top"]) == 2  # the policy caps the request's 9
        values, labels = probs.topk(2)
        assert [t["label"] for t in pred["top"]] == labels.tolist()
        assert [t["probability"] for t in pred["top"]] == pytest.approx(values.tolist(), abs=1e-5)
    assert len(ask(top_k=1)["predictions"][0]["top"]) == 1  # a request can narrow it

    set_policy(stack, key, job_id, policy="rounded", decimals=1)
    body = ask()
    assert body["policy"] == {"name": "rounded", "decimals": 1}
    for pred, probs in zip(body["predictions"], expected, strict=True):
        assert set(pred) == {"input", "label", "identity", "top"}
        assert len(pred["top"]) == 10
        for t in pred["top"]:
            assert t["probability"] == round(t["probability"], 1)
            assert abs(t["probability"] - float(probs[t["label"]])) <= 0.05 + 1e-6

    set_policy(stack, key, job_id, policy="label-only")
    body = ask(top_k=5)
    assert body["policy"] == {"name": "label-only"}
    for pred, probs in zip(body["predictions"], expected, strict=True):
        assert set(pred) == {"input", "label", "identity"}
        assert pred["label"] == int(probs.argmax())
    assert "probabilit" not in str(body["predictions"])

    set_policy(stack, key, job_id, policy="full")
    pred = ask(top_k=4)["predictions"][0]
    assert set(pred) == {"input", "label", "identity", "top", "probabilities"} and len(pred["top"]) == 4

    bad = stack.client.put(f"/v1/models/{job_id}/policy", json={"policy": "top-k"}, headers=stack.auth(key))
    assert assert_problem(bad, 422)["errors"][0]["field"] == "top_k"
    bad = stack.client.put(f"/v1/models/{job_id}/policy", json={"policy": "nope"}, headers=stack.auth(key))
    assert assert_problem(bad, 422)["errors"][0]["field"] == "policy"


def test_budget_of_n_answers_429_on_query_n_plus_1(stack: Api, key: str, trained: tuple[str, Path]) -> None:
    job_id, _ = trained
    other_key = stack.key("owner")  # a second key of the same tenant has its own count
    set_policy(stack, key, job_id, policy="label-only", budget=3, reset_usage=True)
    one = upload(images(1))
    for i in range(3):
        r = stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
        assert r.status_code == 200, r.text
        assert r.json()["usage"] == {"queries": i + 1, "budget": 3, "remaining": 2 - i}
    r = stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
    body = assert_problem(r, 429, "query_budget_exceeded")
    assert job_id in body["detail"]
    r = stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(other_key))
    assert r.status_code == 200, r.text

    key_id = key.split("_")[1]
    view = stack.client.get(f"/v1/models/{job_id}/policy", headers=stack.auth(key)).json()
    usage = {u["key_id"]: u for u in view["usage"]}
    assert usage[key_id]["queries"] == 3 and usage[key_id]["rejected"] == 1
    assert stack.client.get("/metrics").status_code == 401  # the token is required once set
    metrics = stack.client.get("/metrics", headers=OPERATOR).text
    assert f'midre_model_queries{{job_id="{job_id}",key_id="{key_id}"}} 3.0' in metrics
    assert f'midre_model_queries_rejected{{job_id="{job_id}",key_id="{key_id}"}} 1.0' in metrics
    assert "midre_serving_batch_images_count" in metrics

    set_policy(stack, key, job_id, policy="full", budget=None, reset_usage=True)
    assert stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key)).status_code == 200


def test_another_tenants_model_is_404(stack: Api, trained: tuple[str, Path]) -> None:
    job_id, _ = trained
    stranger = stack.auth(stack.key("stranger"))
    one = upload(images(1))
    for method, path, kwargs in [
        ("POST", f"/v1/models/{job_id}/predict", {"files": one}),
        ("GET", f"/v1/models/{job_id}/policy", {}),
        ("PUT", f"/v1/models/{job_id}/policy", {"json": {"policy": "full"}}),
        ("GET", f"/v1/models/{job_id}/export", {}),
        ("POST", "/v1/models/job_nope/predict", {"files": one}),
    ]:
        assert_problem(stack.client.request(method, path, headers=stranger, **kwargs), 404, "not_found")
    assert all(m["job_id"] != job_id for m in stack.client.get("/v1/models", headers=stranger).json()["items"])
    assert_problem(stack.client.post(f"/v1/models/{job_id}/predict", files=one), 401)


def test_bad_inputs_are_4xx_naming_the_file(stack: Api, key: str, trained: tuple[str, Path]) -> None:
    job_id, _ = trained
    url, auth = f"/v1/models/{job_id}/predict", stack.auth(key)
    good = images(1)[0]
    files = [("files", ("ok.png", good, "image/png")), ("files", ("broken.png", good[:40], "image/png"))]
    body = assert_problem(stack.client.post(url, files=files, headers=auth), 422, "invalid_image")
    assert "broken.png" in body["detail"] and body["errors"][0]["field"] == "files[1]"

    files = [("files", ("notes.txt", b"hello, not an image", "text/plain"))]
    body = assert_problem(stack.client.post(url, files=files, headers=auth), 422)
    assert "notes.txt" in body["detail"] and body["errors"][0]["field"] == "files[0]"

    body = assert_problem(stack.client.post(url, json={"images": ["%%%"]}, headers=auth), 422)
    assert body["errors"][0]["field"] == "images[0]"
    body = assert_problem(stack.client.post(url, json={"images": []}, headers=auth), 422)
    assert body["errors"][0]["field"] == "images"
    body = assert_problem(stack.client.post(url, data={"x": "1"}, files=[("other", ("a", b"1"))], headers=auth), 422)
    assert body["errors"][0]["field"] == "files"
    assert_problem(stack.client.post(url, content=b"raw", headers=auth | {"content-type": "image/png"}), 415)
    body = assert_problem(stack.client.post(url, files=upload([good]), params={"top_k": 0}, headers=auth), 422)
    assert body["errors"][0]["field"] == "top_k"

    rt = stack.client.app.state.serving  # type: ignore[attr-defined]
    limit = rt.settings.max_image_bytes
    rt.settings.max_image_bytes = 100
    try:
        body = assert_problem(stack.client.post(url, files=upload([good]), headers=auth), 413, "image_too_large")
        assert "img0.png" in body["detail"]
    finally:
        rt.settings.max_image_bytes = limit
    assert stack.client.post(url, files=upload([good]), headers=auth).status_code == 200


def test_exports_reproduce_the_served_predictions(
    stack: Api, key: str, trained: tuple[str, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort

    from midre.data.images import decode_image

    job_id, folder = trained
    set_policy(stack, key, job_id, policy="full")
    data = images(3)
    r = stack.client.post(f"/v1/models/{job_id}/predict", files=upload(data), headers=stack.auth(key))
    served = torch.tensor([p["probabilities"] for p in r.json()["predictions"]])
    _, card = load_checkpoint(folder)
    pixels = np.stack([decode_image(io.BytesIO(d), 16, card["channels"]) for d in data])  # type: ignore[arg-type]
    x01 = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0

    r = stack.client.get(f"/v1/models/{job_id}/export", params={"format": "onnx"}, headers=stack.auth(key))
    assert r.status_code == 200, r.text
    assert r.headers["x-input-shape"] == "N,3,16,16"
    (tmp_path / "m.onnx").write_bytes(r.content)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(["probabilities"], {"images": x01.numpy()})[0])
    torch.testing.assert_close(onnx_out, served, atol=1e-5, rtol=1e-4)

    r = stack.client.get(f"/v1/models/{job_id}/export", params={"format": "torchscript"}, headers=stack.auth(key))
    assert r.status_code == 200, r.text
    scripted = torch.jit.load(io.BytesIO(r.content))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x01), served, atol=1e-5, rtol=1e-4)
    bad = stack.client.get(f"/v1/models/{job_id}/export", params={"format": "pickle"}, headers=stack.auth(key))
    assert assert_problem(bad, 422)["errors"][0]["field"] == "format"


def test_client_and_cli_predict(
    stack: Api, key: str, trained: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from services.cli import models as cli
    from services.client import Client

    job_id, folder = trained
    set_policy(stack, key, job_id, policy="full")
    paths = []
    for i, d in enumerate(images(2)):
        paths.append(tmp_path / f"digit{i}.png")
        paths[-1].write_bytes(d)
    expected = reference_probs(folder, [p.read_bytes() for p in paths])

    def client(_: argparse.Namespace) -> Client:
        c = Client("http://testserver", key)
        c.http = stack.client  # the in-process app behind the real client code
        c.close = lambda: None  # type: ignore[method-assign]  # the module's TestClient stays open
        stack.client.headers["Authorization"] = f"Bearer {key}"
        return c

    monkeypatch.setattr(cli, "client", client)
    try:
        parser = argparse.ArgumentParser()
        cli.register(parser.add_subparsers())
        args = parser.parse_args(["predict", "--model", job_id, *map(str, paths), "--top-k", "2"])
        assert args.func(args) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "policy: full"
        labels = expected.argmax(1).tolist()
        assert out[1].startswith(f"files[0] (digit0.png): {labels[0]}") and out[2].startswith("files[1] (digit1.png)")
        assert any(m["job_id"] == job_id for m in client(args).models())
        args = parser.parse_args(["predict", "--model", "job_nope", str(paths[0])])
        assert args.func(args) == 1 and "not_found" in capsys.readouterr().err
    finally:
        stack.client.headers.pop("Authorization", None)


# -- units: batcher and cache -------------------------------------------------------------------
def test_dynamic_batcher_runs_concurrent_requests_in_one_forward() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from services.serving.batcher import DynamicBatcher

    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return x * 2

    async def main(enabled: bool, max_batch: int = 256) -> list[torch.Tensor]:
        batcher = DynamicBatcher(forward, pool, wait_s=0.02, max_batch=max_batch, enabled=enabled)
        inputs = [torch.full((1 + i % 3, 2), float(i)) for i in range(10)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        batcher.close()
        for x, y in zip(inputs, outs, strict=True):
            assert torch.equal(y, x * 2)
        return outs

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(main(True))
        assert calls == [19]
        calls.clear()
        asyncio.run(main(True, max_batch=8))
        assert sum(calls) == 19 and max(calls) <= 8 and len(calls) < 10
        calls.clear()
        asyncio.run(main(False))
        assert len(calls) == 10


def test_dynamic_batcher_without_a_window_batches_what_arrives_during_a_forward() -> None:
    """The default (no window): a lone request runs at once; requests that arrive while its forward
    runs wait for it and then share the next forward."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from services.serving.batcher import DynamicBatcher

    calls: list[int] = []
    started = threading.Event()  # the first forward is running
    release = threading.Event()  # lets it finish

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        started.set()
        assert release.wait(30), "the test never released the first forward"
        return x + 1

    async def main() -> None:
        batcher = DynamicBatcher(forward, pool)
        assert batcher.wait_s == 0
        first = asyncio.ensure_future(batcher.submit(torch.zeros(1, 2)))
        # no waiting for company: the lone request's forward starts while nothing else was submitted
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        assert calls == [1]
        rest = [asyncio.ensure_future(batcher.submit(torch.full((1, 2), float(i)))) for i in range(5)]
        for _ in range(10):  # let the five submissions reach the batcher's queue
            await asyncio.sleep(0)
        assert calls == [1] and not first.done()
        release.set()
        outs = await asyncio.gather(first, *rest)
        batcher.close()
        assert calls == [1, 5]
        assert [float(o[0, 0]) for o in outs] == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(main())


def test_model_cache_is_a_bounded_lru() -> None:
    from services.serving.cache import ModelCache

    loads: list[str] = []
    evicted: list[str] = []

    def loader(card: str, weights: str) -> tuple[torch.nn.Module, dict[str, Any]]:
        loads.append(weights)
        return torch.nn.Identity(), {"arch": weights}

    cache = ModelCache(2, loader, torch.device("cpu"), on_evict=lambda e: evicted.append(e.key))
    cache.get("c", "a")
    cache.get("c", "b")
    cache.get("c", "a")  # hit: a becomes the most recent
    cache.get("c", "c")  # evicts b
    assert loads == ["a", "b", "c"] and evicted == ["b"] and len(cache) == 2
    assert "a" in cache and "b" not in cache


# -- write-behind query accounting ----------------------------------------------------------------
def _usage(url: str, job_id: str) -> dict[str, tuple[int, int]]:
    """{key_id: (queries, rejected)} of ``job_id`` straight from the database."""
    from sqlalchemy import select

    from services.db.models import ModelUsage
    from services.db.session import session_scope

    with session_scope(url) as session:
        rows = session.execute(
            select(ModelUsage.key_id, ModelUsage.queries, ModelUsage.rejected).where(ModelUsage.job_id == job_id)
        ).all()
    return {k: (int(q), int(r)) for k, q, r in rows}


@pytest.fixture(params=["sqlite", "postgresql"])
def usage_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """A migrated database with one job and two API keys: (url, job id, key id, other key id)."""
    from services.db.keys import create_api_key
    from services.db.migrate import upgrade
    from services.db.models import Job
    from services.db.session import session_scope

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_databases").create()
    upgrade(url)
    with session_scope(url) as session:
        keys = [create_api_key(session, "meter").split("_")[1] for _ in range(2)]
        tenant_id = session.execute(
            __import__("sqlalchemy").text("select tenant_id from api_keys where key_id = :k"), {"k": keys[0]}
        ).scalar_one()
        session.add(Job(id="job_meter", tenant_id=tenant_id, kind="train", status="succeeded", spec={}, queue="cpu"))
    yield url, "job_meter", keys[0], keys[1]


@pytest.fixture
def metered(usage_db: tuple[str, str, str, str]) -> tuple[str, str, str, str, Any, Any]:
    """``usage_db`` plus its session factory and a fresh write-behind ``UsageMeter`` on it."""
    from services.db.session import session_factory
    from services.serving.accounting import UsageMeter

    sessions = session_factory(usage_db[0])
    return (*usage_db, sessions, UsageMeter(sessions))


def test_usage_meter_counts_in_memory_and_writes_on_flush(metered: tuple[str, str, str, str, Any, Any]) -> None:
    from services.serving.accounting import UsageMeter, charge

    url, job, key, other, sessions, meter = metered
    assert meter.add(key, job, 1) is None  # the pair's count is not known yet: charge in the DB
    with sessions() as session:
        assert meter.charge(session, key, job, 1, None).queries == 1
    assert [meter.add(key, job, n) for n in (1, 2, 1)] == [2, 4, 5]  # in memory, exact
    assert _usage(url, job) == {key: (1, 0)} and meter.dirty and meter.pending(key, job) == 4

    # Another replica's queries (a direct charge) show after this process's next flush.
    with sessions() as session:
        charge(session, key, job, 10, None)
    assert meter.flush() == 1 and not meter.dirty
    assert _usage(url, job) == {key: (15, 0)}
    assert meter.add(key, job, 1) == 16
    assert meter.flush() == 1 and meter.flush() == 0
    assert _usage(url, job)[key] == (16, 0)

    # A failed flush keeps its counts for the next one.
    meter.add(key, job, 3)
    broken = UsageMeter(lambda: (_ for _ in ()).throw(RuntimeError("database down")))  # type: ignore[arg-type]
    broken._base, broken._pending = dict(meter._base), dict(meter._pending)
    with pytest.raises(RuntimeError):
        broken.flush()
    assert broken.pending(key, job) == 3 and broken.add(key, job, 1) == 20
    meter.flush()
    assert _usage(url, job)[key] == (19, 0)

    # forget() (after a reset): the next query re-syncs from the database.
    meter.forget(job)
    assert meter.add(key, job, 1) is None
    # A second key has its own count; write-through (enabled=False) never counts in memory.
    with sessions() as session:
        assert meter.charge(session, other, job, 2, None).queries == 2
    assert meter.add(other, job, 1) == 3
    off = UsageMeter(sessions, enabled=False)
    with sessions() as session:
        off.charge(session, other, job, 1, None)
    assert off.add(other, job, 1) is None and not off.dirty


def test_usage_meter_budgeted_charge_sees_pending_queries(metered: tuple[str, str, str, str, Any, Any]) -> None:
    from services.db.models import ModelPolicy

    url, job, key, _, sessions, meter = metered
    with sessions() as session:
        meter.charge(session, key, job, 1, None)
    meter.add(key, job, 2)  # counted while the model had no budget; not written yet
    with sessions() as session:
        # The owner sets a budget of 3: the exact charge writes the pending 2 first and refuses.
        session.add(ModelPolicy(job_id=job, policy="full", budget=3))
        session.commit()
        spent = meter.charge(session, key, job, 1, 3)
    assert not spent.allowed and spent.queries == 3
    assert _usage(url, job)[key] == (3, 1) and not meter.dirty


def test_usage_meter_drops_counts_of_a_deleted_key(metered: tuple[str, str, str, str, Any, Any]) -> None:
    from sqlalchemy import delete

    from services.db.models import ApiKey
    from services.db.session import session_scope

    url, job, key, other, sessions, meter = metered
    with sessions() as session:
        meter.charge(session, key, job, 1, None)
        meter.charge(session, other, job, 1, None)
    meter.add(key, job, 5)
    meter.add(other, job, 7)
    with session_scope(url) as session:
        session.execute(delete(ApiKey).where(ApiKey.key_id == other))
    assert meter.flush() == 2  # the deleted key's 7 are dropped, the other key's 5 are written
    assert _usage(url, job) == {key: (6, 0)} and not meter.dirty


def _replica(stack: Api, home: Path, monkeypatch: pytest.MonkeyPatch, flush_s: float) -> TestClient:
    """Another API process on the same database and artifacts (a second serving replica)."""
    monkeypatch.setenv("MIDRE_SERVE_USAGE_FLUSH_S", str(flush_s))
    settings = make_settings(
        home,
        database_url=stack.settings.database_url,
        broker_url=stack.settings.broker_url,
        broker_prefix=stack.settings.broker_prefix,
        data_dir=stack.settings.storage_dir,
        metrics_token=METRICS_TOKEN,
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_unbudgeted_usage_is_exact_in_answers_views_metrics_and_after_shutdown(
    stack: Api, key: str, trained: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = trained
    key_id = key.split("_")[1]
    set_policy(stack, key, job_id, policy="label-only", budget=None, reset_usage=True)
    one = upload(images(1))
    # A replica that writes its counts only when asked or at shutdown (flush interval of an hour).
    with _replica(stack, tmp_path / "replica", monkeypatch, 3600) as replica:
        got = []
        for _ in range(6):
            r = replica.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
            assert r.status_code == 200, r.text
            got.append(r.json()["usage"])
        assert [u["queries"] for u in got] == [1, 2, 3, 4, 5, 6] and "budget" not in got[0]
        # Only the first query (which learnt the count) reached the database; the rest wait.
        assert _usage(stack.settings.db_url, job_id)[key_id] == (1, 0)
        rt = replica.app.state.serving  # type: ignore[attr-defined]
        assert rt.usage.pending(key_id, job_id) == 5

        # A multi-image request counts every image; the policy view writes the counts first.
        r = replica.post(f"/v1/models/{job_id}/predict", files=upload(images(3)), headers=stack.auth(key))
        assert r.json()["usage"]["queries"] == 9
        view = replica.get(f"/v1/models/{job_id}/policy", headers=stack.auth(key)).json()
        assert {u["key_id"]: u["queries"] for u in view["usage"]}[key_id] == 9
        replica.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
        metrics = replica.get("/metrics", headers=OPERATOR).text
        assert f'midre_model_queries{{job_id="{job_id}",key_id="{key_id}"}} 10.0' in metrics
        for _ in range(2):
            assert replica.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key)).status_code == 200
        assert _usage(stack.settings.db_url, job_id)[key_id] == (10, 0)
    # Shutdown wrote the last two.
    assert _usage(stack.settings.db_url, job_id)[key_id] == (12, 0)

    # With the default interval (0.5 s) the counts land without anyone asking.
    r = stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
    r = stack.client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
    assert r.json()["usage"]["queries"] == 14
    wait_for(lambda: _usage(stack.settings.db_url, job_id)[key_id] == (14, 0) or None, 10, what="flush")
    set_policy(stack, key, job_id, policy="full", budget=None, reset_usage=True)


def test_budget_holds_across_replicas_after_unbudgeted_queries(
    stack: Api, key: str, trained: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = trained
    key_id = key.split("_")[1]
    set_policy(stack, key, job_id, policy="label-only", budget=None, reset_usage=True)
    one = upload(images(1))
    with _replica(stack, tmp_path / "replica", monkeypatch, 3600) as replica:
        for _ in range(3):  # unbudgeted: 1 written, 2 pending in the replica
            assert replica.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key)).status_code == 200
        # The owner sets a budget of 6 on the replica: its pending queries are written first.
        r = replica.put(f"/v1/models/{job_id}/policy", json={"policy": "label-only", "budget": 6},
                        headers=stack.auth(key))
        assert r.status_code == 200, r.text
        assert {u["key_id"]: u["queries"] for u in r.json()["usage"]}[key_id] == 3
        answers = []
        for i in range(5):  # alternate replicas: 3 more are allowed, then 429 on both
            client = replica if i % 2 else stack.client
            r = client.post(f"/v1/models/{job_id}/predict", files=one, headers=stack.auth(key))
            answers.append((r.status_code, r.json().get("usage", {}).get("queries")))
        assert answers == [(200, 4), (200, 5), (200, 6), (429, None), (429, None)]
    assert _usage(stack.settings.db_url, job_id)[key_id] == (6, 2)
    set_policy(stack, key, job_id, policy="full", budget=None, reset_usage=True)


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18", "vgg16"])
def test_served_model_form_predicts_like_the_checkpoint(arch: str) -> None:
    """Folded batch norms, the channels-last layout and the traced graph change nothing but float
    rounding, for any batch size."""
    from midre.models import create_model
    from services.serving.cache import LoadedModel, for_serving

    torch.manual_seed(0)
    model = create_model(arch, num_classes=7, image_size=64, in_channels=3).eval()
    for module in model.modules():  # non-trivial running statistics, so folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.softmax(model(x), dim=1)
    card = {"arch": arch, "image_size": 64, "channels": 3}
    served, channels_last = for_serving(model, card, torch.device("cpu"))
    assert channels_last and isinstance(served, torch.jit.ScriptModule)
    if arch == "cnn-small":  # every BN follows a convolution in a Sequential
        plain = create_model(arch, num_classes=7, image_size=64, in_channels=3).eval()
        folded, _ = for_serving(plain, {}, torch.device("cpu"))  # no card: not traced
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    entry = LoadedModel(key="k", model=served, card=card, device=torch.device("cpu"), channels_last=channels_last)
    torch.testing.assert_close(entry.probabilities(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entry.probabilities(x[:1]), expected[:1], atol=1e-5, rtol=1e-4)
