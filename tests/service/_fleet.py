"""A fleet on one machine: an S3-compatible server, an API and workers that share only the database, the
broker and the object store, each with its own empty ``MIDRE_HOME``.

Used by ``tests/service/test_scale_out.py`` and ``benchmarks/scale_out.py``. The object store is the
standalone server of ``moto[server]`` on loopback, reached through :class:`TcpProxy` so that a test can
take the store away (connections refused, open ones cut) and bring it back with its objects intact.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from services.settings import Settings
from tests.service._support import ApiProcess, WorkerProcess, free_port, wait_for

#: Credentials of the loopback S3 server (moto accepts any); the processes read them the standard AWS way.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "midre-test", "AWS_SECRET_ACCESS_KEY": "midre-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


class TcpProxy:
    """A loopback TCP forwarder in front of ``target``: :meth:`down` refuses new connections and cuts the open
    ones (the store is unreachable), :meth:`up` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class S3Server:
    """``moto_server`` on a free loopback port, one bucket created, behind a :class:`TcpProxy`."""

    def __init__(self, log_path: Path, bucket: str = "midre-fleet") -> None:
        self.port = free_port()
        self.bucket = bucket
        self._log = open(log_path, "ab")  # noqa: SIM115
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, 60, what="the S3 server to answer")
        self.client().create_bucket(Bucket=bucket)
        self.proxy = TcpProxy(("127.0.0.1", self.port))

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    def client(self) -> Any:
        """A boto3 client straight to the server (not through the proxy)."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents") or []]

    def stop(self) -> None:
        self.proxy.down()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(timeout=30)
        self._log.close()


class Fleet:
    """An API (``midre serve --no-worker``) and ``workers`` ``midre worker`` processes, each with its own home,
    sharing ``database_url``, ``broker_url`` and an object store prefix (``s3.proxy``); without ``s3``, one
    data folder instead (a shared volume)."""

    def __init__(self, root: Path, s3: S3Server | None, database_url: str, broker_url: str, broker_prefix: str,
                 workers: int = 2, **overrides: Any) -> None:
        from services.db.keys import create_api_key
        from services.db.migrate import upgrade
        from services.db.session import session_scope

        os.environ.update(AWS_ENV)  # the standard AWS chain of every process started below
        self.s3 = s3
        self._seen: dict[str, int] = {}
        self.prefix = f"fleet-{secrets.token_hex(3)}"
        self.shared = {"database_url": database_url, "broker_url": broker_url, "broker_prefix": broker_prefix,
                       **overrides}
        if s3 is not None:
            self.shared |= {"storage_url": f"s3://{s3.bucket}/{self.prefix}", "s3_endpoint_url": s3.proxy.url}
        else:  # the baseline: one folder every process mounts
            self.shared |= {"data_dir": root / "shared-data"}
        self.homes = [root / "api-home", *(root / f"worker{i}-home" for i in range(workers))]
        api_settings = self.settings(self.homes[0])
        upgrade(api_settings.db_url)
        with session_scope(api_settings.db_url) as session:
            self.key = create_api_key(session, "fleet")
        self.api = ApiProcess(api_settings, root / "api.log")
        self.workers = [WorkerProcess(self.settings(home), root / f"{home.name}.log", queues="cpu")
                        for home in self.homes[1:]]
        self.api.wait_ready()
        for worker in self.workers:
            worker.wait_ready()
        self.http = httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def settings(self, home: Path) -> Settings:
        from tests.service.conftest import make_settings

        return make_settings(home, **({"worker_threads": 1} | self.shared))

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def wait(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        return dict(wait_for(ended, timeout, interval=0.5, what=f"job {job_id} to end"))

    def worker_of(self, unit_worker: str) -> int:
        """Which worker (index) a unit's ``host:pid`` ran in (pool processes share their worker's group; a pool
        process once seen is remembered, so a killed worker's units still name it)."""
        if unit_worker in self._seen:
            return self._seen[unit_worker]
        pid = int(unit_worker.rpartition(":")[2])
        with contextlib.suppress(ProcessLookupError):
            group = os.getpgid(pid)
            for index, worker in enumerate(self.workers):
                if group == worker.proc.pid:
                    self._seen[unit_worker] = index
                    return index
        raise LookupError(f"no worker of the fleet runs {unit_worker}")

    def stop(self) -> None:
        self.http.close()
        for worker in self.workers:
            worker.stop()
        self.api.stop()


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


__all__ = ["AWS_ENV", "Fleet", "S3Server", "TcpProxy", "timed"]
