"""What crashes and failed requests leave in the store is cleaned up, and uploads in flight count
toward the tenant's storage: a partial upload of a killed API process, blobs no artifact refers to,
extraction folders without their dataset."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from safetensors.torch import save
from sqlalchemy import select

from midre.models import create_model
from services.db.keys import create_api_key
from services.db.migrate import upgrade
from services.db.models import Tenant
from services.db.session import dispose_all, session_factory, session_scope
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage import LocalStore, sweep_store
from services.storage.orphans import scratch_prefix
from services.worker.reaper import reap_once
from tests.service._support import ApiProcess, face_folder_members, files_under, make_zip, wait_for
from tests.service.conftest import Api, make_settings
from tests.service.test_api import assert_problem, fields

HOUR = 3600.0


def tenant_id(settings: Settings, name: str) -> str:
    with session_factory(settings.db_url)() as session:
        found = session.scalar(select(Tenant.id).where(Tenant.name == name))
    assert found is not None
    return found


def age(path: Path, seconds: float) -> None:
    """Make ``path`` (and what is under it) look last written ``seconds`` ago."""
    then = time.time() - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (then, then))


def test_a_killed_upload_leaves_nothing_after_the_next_reaper_pass(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    settings.ensure_dirs()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "t")
    dispose_all()
    api = ApiProcess(settings, tmp_path / "api.log")
    try:
        api.wait_ready()
        head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="faces.zip"\r\n'
                b"Content-Type: application/zip\r\n\r\n")
        with socket.create_connection(("127.0.0.1", api.port), timeout=20) as sock:
            sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                          "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000\r\n\r\n").encode())
            sock.sendall(head + b"PK\x03\x04" + bytes(1_200_000))  # more than one parser batch, less than all
            uploads = settings.storage_dir / "uploads"
            partial = wait_for(lambda: [p for p in files_under(uploads) if p.stat().st_size > 0], 60,
                               what="the partial upload on disk")
            os.killpg(api.proc.pid, signal.SIGKILL)  # the API dies mid-upload (OOM kill, lost node)
            api.proc.wait(timeout=30)
    finally:
        api.stop()
    assert all(p.exists() for p in partial) and LocalStore(settings.storage_dir).pending_upload_bytes(
        tenant_id(settings, "t")) > 1_000_000  # still counted against the tenant until swept
    reap_once(settings, Dispatcher(settings))  # a worker's reaper (its process is not the dead one)
    assert files_under(settings.storage_dir / "uploads") == []
    dispose_all()


def test_orphan_blobs_and_extractions_go_after_the_grace_period(api: Api, key_a: str, tmp_path: Path) -> None:
    store = LocalStore(api.settings.storage_dir)
    weights = save(create_model("cnn-small", 2, image_size=16, in_channels=1).state_dict())
    card = '{"arch": "cnn-small", "num_classes": 2, "image_size": 16, "channels": 1}'
    r = api.client.post("/v1/models", files={"file": ("w.safetensors", weights)}, data={"card": card},
                        headers=api.auth(key_a))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    dataset = api.client.post("/v1/datasets", files={"file": ("f.zip", make_zip(face_folder_members(2, 2)))},
                              headers=api.auth(key_a)).json()
    loose = tmp_path / "loose.bin"
    loose.write_bytes(os.urandom(1000))
    orphan_blob = store.path(store.put_file(loose).sha256)  # stored, then its database step failed
    orphan_dir = store.dataset_dir("ds_orphan")  # extracted, then the API died before saving it
    (orphan_dir / "a").mkdir(parents=True)
    (orphan_dir / "a" / "1.png").write_bytes(b"x")
    scratch = store.upload_dir(tenant_id(api.settings, "tenant-a"))
    live_partial = scratch / f"{scratch_prefix()}old"  # this process is alive: only its age counts
    live_partial.write_bytes(b"y" * 100)

    sweep_store(api.settings, full=True)
    assert orphan_blob.exists() and orphan_dir.exists() and live_partial.exists()  # within the grace period

    for path in (store.blob_root, store.dataset_dir(dataset["id"]), orphan_dir, live_partial):
        age(path, 2 * HOUR)
    counts = sweep_store(api.settings, full=True)
    assert (counts.blobs, counts.datasets, counts.uploads, counts.errors) == (1, 1, 1, [])
    assert not orphan_blob.exists() and not orphan_dir.exists() and not live_partial.exists()
    assert store.dataset_dir(dataset["id"]).is_dir()  # a dataset's folder stays, whatever its age
    r = api.client.post(f"/v1/models/{model_id}/predict", files={"files": ("a.png", face_png())},
                        headers=api.auth(key_a))
    assert r.status_code == 200, r.text  # the model's blobs (referenced) stayed


def face_png() -> bytes:
    return next(iter(face_folder_members(1, 1).values()))


def test_uploads_in_flight_count_toward_the_storage_quota(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    archive = make_zip(face_folder_members(2, 2))
    settings = make_settings(tmp_path / "home", max_storage_bytes=len(archive) + 50_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        key = api.key("t")
        other = LocalStore(settings.storage_dir).upload_dir(tenant_id(settings, "t")) / f"{scratch_prefix()}other"
        other.write_bytes(bytes(60_000))  # another upload of this tenant, still streaming in
        r = client.post("/v1/datasets", files={"file": ("f.zip", archive)}, headers=api.auth(key))
        assert fields(assert_problem(r, 429, "quota_exceeded")) == ["storage_bytes"]
        other.unlink()
        r = client.post("/v1/datasets", files={"file": ("f.zip", archive)}, headers=api.auth(key))
        assert r.status_code == 201, r.text
    dispose_all()
