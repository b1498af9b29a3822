"""RabbitMQ as the broker (the optional alternative to Redis): readiness, dispatch, queue depth."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.queue.dispatch import Dispatcher
from tests.service._support import TRAIN_SPEC, delete_queues
from tests.service.conftest import Api, make_settings

pytestmark = pytest.mark.service


def test_rabbitmq_broker(tmp_path: Path, amqp_url: str) -> None:
    prefix = f"midre-test-{secrets.token_hex(4)}-"
    settings = make_settings(tmp_path / "home", broker_url=amqp_url, broker_prefix=prefix)
    dispatcher = Dispatcher(settings)
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(settings, client)
            key = api.key("rabbit")
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            for device in ("auto", "cpu", "cpu"):
                r = client.post("/v1/jobs", json=TRAIN_SPEC | {"device": device}, headers=api.auth(key))
                assert r.status_code == 201, r.text
            assert dispatcher.queue_depths() == {"gpu": 1, "cpu": 2}
            text = client.get("/metrics").text
            assert 'midre_queue_depth{queue="cpu"} 2.0' in text
    finally:
        delete_queues(dispatcher, settings)
