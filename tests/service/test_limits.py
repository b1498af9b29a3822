"""Hostile bodies cost the service nothing: size caps decided before reading, multipart part caps, and
strings the database cannot store answered 422 naming the field (SQLite and PostgreSQL alike)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from services.db.session import dispose_all
from services.gateway.app import create_app
from services.settings import Settings
from tests.service._support import TRAIN_SPEC, face_folder_members, files_under, free_port, make_zip
from tests.service.conftest import Api, PgDatabases, make_settings
from tests.service.test_api import assert_problem, fields


@contextmanager
def live(settings: Settings) -> Iterator[tuple[int, Api]]:
    """(port, in-process client) of the API served by uvicorn in a thread on a loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="limits-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield port, Api(settings, client)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        dispose_all()


def head_only(port: int, key: str, method: str, path: str, content_type: str, length: int) -> bytes:
    """Send a request's head declaring ``length`` body bytes, send none of them, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        return answer


def test_bodies_over_their_limit_are_413_before_a_byte_is_read(tmp_path: Path) -> None:
    """The answer comes although the body is never sent: the limit is decided from the declared length,
    for JSON sent to the upload route too (it gets the JSON cap, not the upload cap)."""
    settings = make_settings(tmp_path / "home", max_model_bytes=2 * 2**20)
    with live(settings) as (port, api):
        key = api.key("t")
        mib50 = 50 * 2**20
        for path, content_type in [("/v1/datasets", "application/json"), ("/v1/jobs", "application/json"),
                                   ("/v1/datasets", "text/plain"),
                                   ("/v1/datasets", "multipart/form-data; boundary=x"),
                                   ("/v1/models", "multipart/form-data; boundary=x")]:
            answer = head_only(port, key, "POST", path, content_type, mib50)
            assert answer.startswith(b"HTTP/1.1 413 "), (path, content_type, answer[:200])
        assert files_under(settings.storage_dir / "uploads") == []


def multipart(parts: list[tuple[str, str]], boundary: str = "b0undary") -> bytes:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                    for name, value in parts)
    return body + f"--{boundary}--\r\n".encode()


def test_multipart_part_count_and_part_headers_are_capped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", max_upload_bytes=32 * 2**20)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        headers = api.auth(api.key("t")) | {"content-type": "multipart/form-data; boundary=b0undary"}
        fields_200k = multipart([("f", "x")] * 200_000)
        for path in ("/v1/datasets", "/v1/models"):
            body = assert_problem(client.post(path, content=fields_200k, headers=headers), 413, "too_large")
            assert "parts" in body["detail"]
        huge_header = (b'--b0undary\r\nContent-Disposition: form-data; name="f"\r\nX-Pad: ' + b"a" * 100_000
                       + b"\r\n\r\nx\r\n--b0undary--\r\n")
        body = assert_problem(client.post("/v1/datasets", content=huge_header, headers=headers), 413, "too_large")
        assert "header" in body["detail"]
        assert files_under(settings.storage_dir / "uploads") == []
    dispose_all()


def nul_cases(api: Api, key: str) -> list[tuple[str, Any, str]]:
    """``(what, request, field)``: each input the database would refuse, as the API gets it."""
    auth = api.auth(key)
    c = api.client
    archive = make_zip(face_folder_members(2, 2))
    card = {"arch": "cnn-small", "num_classes": 2, "class_names": ["a", "b\x00"], "image_size": 16, "channels": 1}
    return [
        ("jobs cursor", lambda: c.get("/v1/jobs", params={"cursor": "job_\x00"}, headers=auth), "cursor"),
        ("datasets cursor", lambda: c.get("/v1/datasets", params={"cursor": "\x00"}, headers=auth), "cursor"),
        ("models cursor", lambda: c.get("/v1/models", params={"cursor": "\x00"}, headers=auth), "cursor"),
        ("events cursor", lambda: c.get("/v1/jobs/job_x/events", params={"cursor": "\x00"}, headers=auth), "cursor"),
        ("job id", lambda: c.get("/v1/jobs/job_%00x", headers=auth), "job_id"),
        ("model id", lambda: c.get("/v2/models/m%00", headers=auth), "model_id"),
        ("key id", lambda: c.delete("/v1/keys/k%00", headers=auth), "key_id"),
        ("dataset name (JSON)", lambda: c.post("/v1/datasets", json={"name": "d\x00", "source": "digits"},
                                                headers=auth), "name"),
        ("dataset name (upload)", lambda: c.post("/v1/datasets", files={"file": ("f.zip", archive)},
                                                  data={"name": "d\x00"}, headers=auth), "name"),
        ("key name", lambda: c.post("/v1/keys", json={"name": "k\x00", "scopes": ["jobs"]}, headers=auth), "name"),
        ("key name (surrogate)", lambda: c.post("/v1/keys", content=b'{"name": "k\\ud800", "scopes": ["jobs"]}',
                                                 headers=auth | {"content-type": "application/json"}), "name"),
        ("model name", lambda: c.post("/v1/models", files={"file": ("w.safetensors", b"x")},
                                       data={"card": "{}", "name": "m\x00"}, headers=auth), "name"),
        ("class names", lambda: c.post("/v1/models", files={"file": ("w.safetensors", b"x")},
                                        data={"card": json.dumps(card)}, headers=auth), "card.class_names[1]"),
        ("job dataset", lambda: c.post("/v1/jobs", json={**TRAIN_SPEC, "dataset": "ds_\x00"}, headers=auth),
         "dataset"),
        ("webhook URL", lambda: c.post("/v1/webhooks", json={"url": "https://example.com/\x00"}, headers=auth),
         "url"),
        ("MLflow experiment", lambda: c.put("/v1/integrations/mlflow", json={
            "tracking_uri": "https://mlflow.example.com", "experiment": "e\x00"}, headers=auth), "experiment"),
    ]


def check_nul_inputs(api: Api) -> None:
    key = api.key("t")
    for what, send, field in nul_cases(api, key):
        body = assert_problem(send(), 422)
        assert fields(body) == [field], (what, body)
    assert files_under(api.settings.storage_dir / "uploads") == []
    assert api.client.get("/v1/jobs", headers=api.auth(key)).json()["items"] == []


def test_unstorable_strings_are_422_on_sqlite(api: Api) -> None:
    check_nul_inputs(api)


@pytest.mark.service
def test_unstorable_strings_are_422_on_postgres(pg_databases: PgDatabases, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", database_url=pg_databases.create())
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        check_nul_inputs(Api(settings, client))
    dispose_all()


def test_the_dashboard_refuses_a_wrong_token_before_reading_the_file(tmp_path: Path) -> None:
    """The upload form's token is checked when the file part starts: the 403 comes while most of the
    declared body was never sent, and nothing stays on disk."""
    from services.gateway.ui.sessions import COOKIE
    from tests.service.test_ui import sign_in

    settings = make_settings(tmp_path / "home")
    with live(settings) as (port, api):
        sign_in(api, api.key("t"))
        cookie = api.client.cookies[COOKIE]
        start = (b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\nwrong\r\n'
                 b'--b\r\nContent-Disposition: form-data; name="file"; filename="faces.zip"\r\n\r\nPK\x03\x04')
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall((f"POST /ui/datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {COOKIE}={cookie}\r\n"
                          "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000\r\n\r\n").encode())
            sock.sendall(start + bytes(1_100_000))  # about half of the declared body
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:300]
        assert files_under(settings.storage_dir / "uploads") == []
