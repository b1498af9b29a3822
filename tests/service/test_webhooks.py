"""Signed webhooks: registration (422s, SSRF, tenant isolation, secrets shown once), the outbox row
written with the job's final status, race-safe claims on SQLite and PostgreSQL, and a real receiver
process that answers 500 twice then 200 across a restart of the API (loopback only)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as Verifier

from services.db import jobs as jobstate
from services.db.keys import create_api_key
from services.db.migrate import upgrade
from services.db.models import ApiKey, Job, Webhook, WebhookAttempt, WebhookDelivery
from services.db.session import dispose_all, session_factory, session_scope
from services.db.types import new_id, utcnow
from services.db.webhooks import enqueue_job_end
from services.gateway.app import create_app
from services.integrations.webhooks import address_problem, backoff_s, deliver_due, new_secret, post
from services.jobspec import resolve
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from tests.service._support import (
    REPO,
    TRAIN_SPEC,
    ApiProcess,
    WorkerProcess,
    free_port,
    run_job_inline,
    stop_group,
    wait_for,
)
from tests.service.conftest import Api, PgDatabases, make_settings
from tests.service.test_worker_units import FAKE_TRAIN

#: A public address written as a literal, so registering it needs no DNS (nothing is sent to it).
PUBLIC_URL = "https://93.184.215.14/hooks/midre"
#: Fast retries for the tests: 0.5 s, 1 s, ... between tries, a deliverer pass every 0.2 s.
QUICK = {"webhooks_base_delay_s": 0.5, "webhooks_poll_s": 0.2, "webhooks_timeout_s": 5.0}

#: A receiver process: answers the codes of argv[3] in turn (the last one from then on) and appends
#: every request it got, as one JSON line, to argv[2] before answering.
RECEIVER = r"""
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
port, log_path, codes = int(sys.argv[1]), sys.argv[2], [int(c) for c in sys.argv[3].split(",")]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        seen = sum(1 for _ in open(log_path)) if os.path.exists(log_path) else 0
        code = codes[min(seen, len(codes) - 1)]
        with open(log_path, "a") as f:
            f.write(json.dumps({"at": time.time(), "path": self.path, "code": code,
                                "headers": dict(self.headers), "body": body}) + "\n")
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class Receiver:
    """The receiver process on a free loopback port."""

    def __init__(self, folder: Path, codes: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.log_path = folder / "received.jsonl"
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port), str(self.log_path), codes],
                                     cwd=REPO, start_new_session=True)
        wait_for(self._up, 30, what="the receiver to listen")

    def _up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1).status_code > 0
        except httpx.HTTPError:
            return False

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_group(self.proc, 5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rec = Receiver(tmp_path, "500,500,200")
    yield rec
    rec.stop()


# -- the target check ---------------------------------------------------------------------------
@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3", "10.0.0.1", "172.16.5.4",
    "192.168.1.1", "169.254.169.254", "fe80::1", "fc00::1", "fd12:3456::1", "224.0.0.1", "ff02::1",
    "0.0.0.0", "::", "240.0.0.1", "255.255.255.255", "100.64.0.1", "2002:7f00:1::1", "192.0.2.1",
    # IPv6 site-local (deprecated, still routed inside some networks), everything outside 2000::/3,
    # and special-purpose blocks that Python's ipaddress still calls global
    "fec0::1", "feff::1", "4000::1", "3fff::1", "2001:db8::1", "192.88.99.1",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


# -- the API -------------------------------------------------------------------------------------
def register(api: Api, key: str, url: str, events: list[str] | None = None) -> httpx.Response:
    body = {"url": url, "events": events or ["job.succeeded", "job.failed", "job.cancelled"]}
    return api.client.post("/v1/webhooks", json=body, headers=api.auth(key))


def refused_field(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["errors"][0]["field"]


def test_register_list_delete_and_tenant_isolation(api: Api, key_a: str, key_b: str) -> None:
    created = register(api, key_a, PUBLIC_URL, ["job.succeeded", "model.evaluated", "job.succeeded"])
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert hook["events"] == ["job.succeeded", "model.evaluated"]
    Verifier(hook["secret"])  # a secret the standard library accepts

    listed = api.client.get("/v1/webhooks", headers=api.auth(key_a))
    assert listed.status_code == 200
    assert [h["id"] for h in listed.json()["items"]] == [hook["id"]]
    assert "secret" not in listed.text and hook["secret"] not in listed.text
    deliveries = api.client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=api.auth(key_a))
    assert deliveries.status_code == 200 and deliveries.json() == {"items": [], "next_cursor": None}

    # another tenant sees nothing and can touch nothing
    assert api.client.get("/v1/webhooks", headers=api.auth(key_b)).json()["items"] == []
    for method, path in (("GET", f"/v1/webhooks/{hook['id']}/deliveries"), ("DELETE", f"/v1/webhooks/{hook['id']}")):
        response = api.client.request(method, path, headers=api.auth(key_b))
        assert response.status_code == 404, (method, response.text)
        assert response.json()["code"] == "not_found"

    with session_scope(api.settings.db_url) as session:  # a `jobs` key of the same tenant: 403
        jobs_key = create_api_key(session, "tenant-a", scopes=("jobs",))
    assert api.client.get("/v1/webhooks", headers=api.auth(jobs_key)).status_code == 403
    assert register(api, jobs_key, PUBLIC_URL).status_code == 403

    assert api.client.delete(f"/v1/webhooks/{hook['id']}", headers=api.auth(key_a)).status_code == 204
    assert api.client.delete(f"/v1/webhooks/{hook['id']}", headers=api.auth(key_a)).status_code == 404
    assert api.client.get("/v1/webhooks", headers=api.auth(key_a)).json()["items"] == []


def test_register_refuses_bad_events_and_urls(api: Api, key_a: str) -> None:
    assert refused_field(register(api, key_a, PUBLIC_URL, ["job.succeeded", "job.exploded"])) == "events[1]"
    assert refused_field(api.client.post("/v1/webhooks", json={"url": PUBLIC_URL, "events": []},
                                         headers=api.auth(key_a))) == "events"
    for url in ("ftp://93.184.215.14/x", "file:///etc/passwd", "http:///nohost", "javascript:alert(1)",
                "http://93.184.215.14:99999/"):
        assert refused_field(register(api, key_a, url)) == "url", url
    # SSRF: loopback, private, link-local (cloud metadata), IPv6 and IPv4-mapped, names that resolve there
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
                "http://10.0.0.1/", "http://192.168.0.10/", "http://169.254.169.254/latest/meta-data/",
                "http://[fe80::1]/", "http://0.0.0.0/", "http://224.0.0.1/"):
        response = register(api, key_a, url)
        assert refused_field(response) == "url", url
        assert "public" in response.json()["errors"][0]["message"]
    assert api.client.get("/v1/webhooks", headers=api.auth(key_a)).json()["items"] == []


def test_the_operator_may_allow_private_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDRE_WEBHOOKS_ALLOW_PRIVATE", "true")
    assert Settings().webhooks_allow_private is True
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True, webhooks_in_api=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        key = api.key("tenant-a")
        assert register(api, key, "http://127.0.0.1:9/hook").status_code == 201
        assert refused_field(register(api, key, "ftp://127.0.0.1/")) == "url"  # the scheme rule stays
    dispose_all()


# -- the outbox ----------------------------------------------------------------------------------
@pytest.fixture
def db_settings(tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(tmp_path / "home", **QUICK)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    yield settings
    dispose_all()


def add_tenant_hooks(settings: Settings, hooks: dict[str, list[str]]) -> tuple[str, dict[str, str]]:
    """A tenant with one webhook per ``{url: events}``; returns the tenant id and ``{url: webhook id}``."""
    with session_scope(settings.db_url) as session:
        create_api_key(session, f"t-{new_id('x')}")
        tenant_id = session.scalars(select(ApiKey.tenant_id).order_by(ApiKey.id.desc())).first()
        ids = {}
        for url, events in hooks.items():
            ids[url] = new_id("wh")
            session.add(Webhook(id=ids[url], tenant_id=tenant_id, url=url, events=events, secret=new_secret(),
                                created_at=utcnow()))
    return tenant_id, ids


def add_job(settings: Settings, tenant_id: str, kind: str = "train", status: str = "running") -> str:
    spec = {"kind": "attack_eval", "model": "job_0123456789abcdef0123456789ab"} if kind == "attack_eval" else TRAIN_SPEC
    with session_scope(settings.db_url) as session:
        job = Job(id=new_id("job"), tenant_id=tenant_id, kind=kind, spec=spec, status=status, queue="cpu",
                  progress=0.0, attempt=1, cancel_requested=False, created_at=utcnow())
        session.add(job)
        return job.id


def rows(settings: Settings, job_id: str) -> list[WebhookDelivery]:
    with session_factory(settings.db_url)() as session:
        query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.event_type)
        return list(session.scalars(query))


def test_outbox_rows_commit_with_the_status_change(db_settings: Settings) -> None:
    tenant, ids = add_tenant_hooks(db_settings, {"https://a.example/": ["job.succeeded", "model.evaluated"],
                                                 "https://b.example/": ["job.failed"]})
    job_id = add_job(db_settings, tenant, kind="attack_eval")
    sessions = session_factory(db_settings.db_url)
    with sessions() as session:  # rolled back: neither the status nor a message
        job = session.get(Job, job_id)
        assert jobstate.transition(session, job, [jobstate.RUNNING], jobstate.SUCCEEDED)
        session.rollback()
    assert rows(db_settings, job_id) == []
    with sessions() as session:
        job = session.get(Job, job_id)
        assert jobstate.transition(session, job, [jobstate.RUNNING], jobstate.SUCCEEDED)
        assert not jobstate.transition(session, job, [jobstate.RUNNING], jobstate.FAILED)  # no move, no message
        session.commit()
    found = rows(db_settings, job_id)
    hook_a = ids["https://a.example/"]
    assert [(r.event_type, r.webhook_id, r.state) for r in found] == [
        ("job.succeeded", hook_a, "pending"), ("model.evaluated", hook_a, "pending")]
    payloads = [json.loads(r.payload) for r in found]
    assert payloads[0]["type"] == "job.succeeded" and payloads[0]["timestamp"].endswith("Z")
    assert payloads[0]["data"] == {"id": job_id, "kind": "attack_eval", "status": "succeeded"}
    assert payloads[1]["data"] == {"id": job_id, "kind": "attack_eval", "model_job": "job_0123456789abcdef0123456789ab"}
    assert len({r.id for r in found}) == 2 and all(r.id.startswith("msg_") for r in found)

    with sessions() as session:  # a non-final status queues nothing
        other = session.get(Job, add_job(db_settings, tenant, status="queued"))
        assert jobstate.transition(session, other, [jobstate.QUEUED], jobstate.RUNNING)
        assert enqueue_job_end(session, other) == 0
        session.commit()
        assert rows(db_settings, other.id) == []


def test_the_worker_engine_queues_job_succeeded(db_settings: Settings) -> None:
    tenant, _ = add_tenant_hooks(db_settings, {"https://a.example/": ["job.succeeded", "job.failed"]})
    job_id = add_job(db_settings, tenant, status="queued")
    with session_scope(db_settings.db_url) as session:
        job = session.get(Job, job_id)
        job.attempt, job.resolved = 0, resolve(TRAIN_SPEC)
    assert run_job_inline(db_settings, job_id, FAKE_TRAIN) == "succeeded"
    (row,) = rows(db_settings, job_id)
    assert row.event_type == "job.succeeded"
    body = row.payload
    assert str(db_settings.home) not in body and "whsec_" not in body
    assert json.loads(body)["data"] == {"id": job_id, "kind": "train", "status": "succeeded"}


def test_a_private_target_is_refused_at_delivery_too(db_settings: Settings) -> None:
    # registered while the operator allowed it (or a name that now resolves inside): checked again when sent
    tenant, _ = add_tenant_hooks(db_settings, {f"http://127.0.0.1:{free_port()}/": ["job.cancelled"]})
    job_id = add_job(db_settings, tenant)
    with session_scope(db_settings.db_url) as session:
        assert jobstate.transition(session, session.get(Job, job_id), [jobstate.RUNNING], jobstate.CANCELLED)
    settings = db_settings.model_copy(update={"webhooks_max_attempts": 2})
    assert deliver_due(settings) == 1
    with session_factory(settings.db_url)() as session:
        (attempt,) = session.scalars(select(WebhookAttempt)).all()
        assert attempt.status_code is None and attempt.error.startswith("refused: the host resolves to a loopback")
        assert attempt.next_attempt_at is not None
    time.sleep(settings.webhooks_base_delay_s + 0.1)
    assert deliver_due(settings) == 1
    (row,) = rows(settings, job_id)
    assert row.state == "failed" and row.attempts == 2 and row.next_attempt_at is None


class _Redirecting(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.paths.append(self.path)
        self.send_response(307)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_redirects_are_not_followed_and_the_back_off_doubles(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True, **QUICK)
    assert [backoff_s(settings, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(settings.model_copy(update={"webhooks_base_delay_s": 30.0}), 40) == 6 * 3600
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    _Redirecting.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = post(settings, f"http://127.0.0.1:{server.server_address[1]}/hook", "{}", {})
    finally:
        server.shutdown()
        server.server_close()
    assert (result.status_code, result.error, result.ok) == (307, "redirect not followed", False)
    assert _Redirecting.paths == ["/hook"]


class _Counting(BaseHTTPRequestHandler):
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.seen[self.headers["webhook-id"]] += 1
        time.sleep(0.01)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def race_deliverers(settings: Settings, messages: int = 30, deliverers: int = 4) -> None:
    """``deliverers`` threads empty one outbox at once: every message is sent exactly once."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    _Counting.seen = Counter()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tenant, _ = add_tenant_hooks(settings, {f"http://127.0.0.1:{server.server_address[1]}/": ["job.failed"]})
        sessions = session_factory(settings.db_url)
        with sessions() as session:
            for _ in range(messages):
                job = session.get(Job, add_job(settings, tenant))
                assert jobstate.transition(session, job, [jobstate.RUNNING], jobstate.FAILED)
                session.commit()
        start = threading.Barrier(deliverers)

        def run() -> None:
            start.wait()
            deliver_due(settings, session_factory(settings.db_url))

        threads = [threading.Thread(target=run) for _ in range(deliverers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with sessions() as session:
            states = Counter(session.scalars(select(WebhookDelivery.state)))
            tries = session.scalars(select(WebhookAttempt.delivery_id)).all()
        assert states == {"delivered": messages}
        assert len(_Counting.seen) == messages and set(_Counting.seen.values()) == {1}, _Counting.seen
        assert len(tries) == messages == len(set(tries))
    finally:
        server.shutdown()
        server.server_close()


def test_several_deliverers_never_double_send_sqlite(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True, **QUICK)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    try:
        race_deliverers(settings)
    finally:
        dispose_all()


@pytest.mark.service
def test_several_deliverers_never_double_send_postgresql(tmp_path: Path, pg_databases: PgDatabases) -> None:
    settings = make_settings(tmp_path / "home", database_url=pg_databases.create(), webhooks_allow_private=True,
                             **QUICK)
    upgrade(settings.db_url)
    race_deliverers(settings)


# -- end to end: real processes ------------------------------------------------------------------
@pytest.mark.slow  # retry and back-off run by default; this adds an API restart
def test_500_twice_then_200_across_an_api_restart(tmp_path: Path, receiver: Receiver) -> None:
    """The third try delivers and verifies; the API is restarted after the first try and the new
    process's deliverer sends the rest from the database."""
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True,
                             **(QUICK | {"webhooks_base_delay_s": 3.0}))
    settings.ensure_dirs()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "tenant-a")
    headers = {"Authorization": f"Bearer {key}"}
    api = ApiProcess(settings, tmp_path / "api-1.log")
    restarted: ApiProcess | None = None
    try:
        api.wait_ready()
        hook = httpx.post(f"{api.url}/v1/webhooks", headers=headers, timeout=30,
                          json={"url": receiver.url, "events": ["job.cancelled"]}).json()
        job = httpx.post(f"{api.url}/v1/jobs", headers=headers, json=TRAIN_SPEC, timeout=60).json()
        cancelled_at = time.time()
        assert httpx.post(f"{api.url}/v1/jobs/{job['id']}/cancel", headers=headers, timeout=30).json()["status"] == \
            "cancelled"
        wait_for(lambda: len(receiver.requests()) >= 1, 30, 0.05, "the first try")
        first_latency = receiver.requests()[0]["at"] - cancelled_at
        api.stop()
        stopped_at = time.time()
        restarted = ApiProcess(settings, tmp_path / "api-2.log")
        restarted.wait_ready()
        wait_for(lambda: len(receiver.requests()) >= 3, 60, 0.1, "the third try")
        time.sleep(0.5)  # nothing more comes
        got = receiver.requests()
        assert [r["code"] for r in got] == [500, 500, 200]
        assert len({r["headers"]["webhook-id"] for r in got}) == 1  # one message, retried
        assert all(r["at"] > stopped_at for r in got[1:]), "the later tries came from the new API process"
        for r in got:
            payload = Verifier(hook["secret"]).verify(r["body"], r["headers"])
            assert payload["type"] == "job.cancelled"
            assert payload["data"] == {"id": job["id"], "kind": "train", "status": "cancelled"}
            sent = {k.lower(): v for k, v in r["headers"].items()}
            assert sent["content-type"] == "application/json" and r["path"] == "/hook"
            assert sent["host"] == f"127.0.0.1:{receiver.port}" and sent["user-agent"].startswith("midre-webhooks/")
        with pytest.raises(Exception, match="signature"):
            Verifier(new_secret()).verify(got[-1]["body"], got[-1]["headers"])

        page = httpx.get(f"{restarted.url}/v1/webhooks/{hook['id']}/deliveries", headers=headers, timeout=30).json()
        (delivery,) = page["items"]
        assert delivery["id"] == got[0]["headers"]["webhook-id"] and delivery["state"] == "delivered"
        tries = delivery["attempts"]
        assert [(t["attempt"], t["status_code"]) for t in tries] == [(1, 500), (2, 500), (3, 200)]
        assert tries[0]["error"] == "HTTP 500" and tries[2]["error"] is None
        assert tries[0]["next_attempt_at"] and tries[1]["next_attempt_at"] and tries[2]["next_attempt_at"] is None
        gap = got[1]["at"] - got[0]["at"]
        assert gap >= settings.webhooks_base_delay_s - 0.2
        print(f"\nwebhook: first try {first_latency * 1000:.0f} ms after the cancel; tries at +0, "
              f"+{gap:.1f} s (restart), +{got[2]['at'] - got[0]['at']:.1f} s; delivered on try 3")
    finally:
        api.stop()
        if restarted is not None:
            restarted.stop()
        dispose_all()


@pytest.mark.slow  # a worker's deliverer end to end; outbox, signing and retries run in-process by default
def test_a_worker_delivers_what_its_job_produced(tmp_path: Path) -> None:
    """No deliverer in any API: the worker that failed the job sends ``job.failed`` from its own thread."""
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True, webhooks_in_api=False, **QUICK)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    rec = Receiver(tmp_path, "204")
    worker = WorkerProcess(settings, tmp_path / "worker.log", queues="cpu")
    try:
        tenant, _ = add_tenant_hooks(settings, {rec.url: ["job.failed"]})
        bad = {"kind": "train", "dataset": "digits", "arch": "no-such-architecture"}  # fails when resolved
        with session_scope(settings.db_url) as session:
            job = Job(id=new_id("job"), tenant_id=tenant, kind="train", spec=bad, status="queued",
                      queue=settings.queue_name("cpu"), progress=0.0, attempt=0, cancel_requested=False,
                      created_at=utcnow(), dispatched_at=utcnow())
            session.add(job)
        Dispatcher(settings).send(job.id, settings.queue_name("cpu"))
        worker.wait_ready()
        (got,) = wait_for(rec.requests, 120, 0.2, "job.failed from the worker")
        event = json.loads(got["body"])
        assert event["type"] == "job.failed" and event["data"] == {"id": job.id, "kind": "train", "status": "failed"}
        assert wait_for(lambda: rows(settings, job.id)[0].state == "delivered", 10)
    finally:
        worker.stop()
        rec.stop()
        dispose_all()
