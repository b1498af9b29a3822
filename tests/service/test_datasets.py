"""Dataset upload and registration: validation report, caps, unsafe archives, nothing stored on refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.service._support import (
    TRAIN_SPEC,
    face_folder_members,
    files_under,
    make_tar_gz,
    make_zip,
    png_bytes,
)
from tests.service.conftest import Api, make_settings
from tests.service.test_api import assert_problem, fields


def upload(api: Api, key: str, data: bytes, filename: str = "faces.zip", **extra: Any) -> Any:
    return api.client.post(
        "/v1/datasets",
        files={"file": (filename, data, "application/octet-stream")},
        data=extra or {"name": "faces"},
        headers=api.auth(key),
    )


def nothing_stored(api: Api, key: str) -> None:
    root = api.settings.storage_dir
    assert files_under(root / "uploads") == []
    assert files_under(root / "datasets") == []
    assert api.client.get("/v1/datasets", headers=api.auth(key)).json()["items"] == []


def test_upload_zip_reports_what_it_found(api: Api, key_a: str) -> None:
    r = upload(api, key_a, make_zip(face_folder_members(3, 4)))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["source_type"] == "upload" and ds["name"] == "faces" and ds["size_bytes"] > 0
    summary = ds["summary"]
    assert summary["identities"] == 3 and summary["images"] == 12
    assert summary["images_per_identity"] == {"person_0": 4, "person_1": 4, "person_2": 4}
    assert summary["rejected_count"] >= 1
    assert any("README" in item["path"] for item in summary["rejected"])
    assert files_under(api.settings.storage_dir / "uploads") == []  # the archive itself is not kept
    # It can be listed, fetched, trained on (spec validates), and deleted with its files.
    assert [d["id"] for d in api.client.get("/v1/datasets", headers=api.auth(key_a)).json()["items"]] == [ds["id"]]
    assert api.client.get(f"/v1/datasets/{ds['id']}", headers=api.auth(key_a)).json() == ds
    job = api.client.post("/v1/jobs", json=TRAIN_SPEC | {"dataset": ds["id"]}, headers=api.auth(key_a))
    assert job.status_code == 201, job.text
    assert api.client.delete(f"/v1/datasets/{ds['id']}", headers=api.auth(key_a)).status_code == 204
    nothing_stored(api, key_a)


def test_upload_tar_gz(api: Api, key_a: str) -> None:
    r = upload(api, key_a, make_tar_gz(face_folder_members(2, 3)), filename="faces.tar.gz")
    assert r.status_code == 201, r.text
    assert r.json()["summary"]["identities"] == 2


def test_not_an_archive_is_415_and_nothing_stored(api: Api, key_a: str) -> None:
    body = assert_problem(upload(api, key_a, b"just some text " * 100, filename="faces.zip"), 415, "not_an_archive")
    assert fields(body) == ["file"]
    nothing_stored(api, key_a)


def test_path_traversal_is_refused_and_nothing_stored(api: Api, key_a: str, tmp_path: Path) -> None:
    members = face_folder_members(2, 3)
    members["../../escaped/evil.png"] = b"\x89PNG"
    r = upload(api, key_a, make_zip(members))
    assert 400 <= r.status_code < 500
    body = assert_problem(r, r.status_code)
    assert body["errors"] and body["errors"][0]["field"] == "file"
    nothing_stored(api, key_a)
    assert not (api.settings.storage_dir.parent / "escaped").exists()
    assert not list(api.settings.home.parent.rglob("evil.png"))


def test_upload_over_the_cap_is_413_and_nothing_stored(api: Api, key_a: str) -> None:
    cap = api.settings.max_upload_bytes
    big = b"PK\x03\x04" + b"\0" * (cap + 10)
    assert_problem(upload(api, key_a, big), 413, "too_large")
    nothing_stored(api, key_a)


def test_cap_holds_without_content_length(api: Api, key_a: str) -> None:
    """A chunked body (no Content-Length) is cut off while streaming."""
    cap = api.settings.max_upload_bytes
    boundary = "xyzBOUNDARY"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Any:
        yield head
        chunk = b"\0" * 65536
        for _ in range(cap // len(chunk) + 4):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    r = api.client.post(
        "/v1/datasets",
        content=body(),
        headers=api.auth(key_a) | {"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(r, 413, "too_large")
    nothing_stored(api, key_a)


def test_upload_needs_a_file_part(api: Api, key_a: str) -> None:
    r = api.client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a.txt", b"x")}, headers=api.auth(key_a))
    assert fields(assert_problem(r, 422)) == ["file"]
    text_headers = api.auth(key_a) | {"content-type": "text/plain"}
    assert_problem(api.client.post("/v1/datasets", content=b"x", headers=text_headers), 415)
    nothing_stored(api, key_a)


def test_archive_without_identities_is_422(api: Api, key_a: str) -> None:
    r = upload(api, key_a, make_zip({"notes/readme.txt": b"hello"}))
    assert_problem(r, 422)
    nothing_stored(api, key_a)


def test_register_digits_and_allow_listed_paths(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    allowed = tmp_path / "allowed"
    for i in range(2):
        (allowed / "faces" / f"p{i}").mkdir(parents=True)
        for j in range(3):
            (allowed / "faces" / f"p{i}" / f"{j}.png").write_bytes(png_bytes(i * 5 + j))
    (tmp_path / "secret").mkdir()
    settings = make_settings(tmp_path / "home", dataset_paths=[allowed])
    with TestClient(create_app(settings)) as client:
        api = Api(settings, client)
        key = api.key("t")
        digits = client.post("/v1/datasets", json={"name": "d", "source": "digits"}, headers=api.auth(key))
        assert digits.status_code == 201 and digits.json()["summary"]["identities"] == 10
        ok = client.post("/v1/datasets", json={"name": "f", "source": str(allowed / "faces")}, headers=api.auth(key))
        assert ok.status_code == 201, ok.text
        assert ok.json()["source_type"] == "path" and ok.json()["summary"]["images"] == 6
        for source in (str(tmp_path / "secret"), str(allowed / ".." / "secret"), "relative/path"):
            r = client.post("/v1/datasets", json={"name": "x", "source": source}, headers=api.auth(key))
            assert fields(assert_problem(r, 422)) == ["source"]
        nameless = client.post("/v1/datasets", json={"source": "digits"}, headers=api.auth(key))
        assert fields(assert_problem(nameless, 422)) == ["name"]


def test_an_archive_over_the_member_cap_is_refused_before_extraction(tmp_path: Path) -> None:
    """Counted from the archive's listing: no extraction folder is ever created for it."""
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    settings = make_settings(tmp_path / "home", max_archive_files=20)
    with TestClient(create_app(settings)) as client:
        api = Api(settings, client)
        key = api.key("t")
        body = assert_problem(upload(api, key, make_zip(face_folder_members(5, 6))), 422, "invalid_dataset")
        assert "max_files=20" in body["detail"]
        assert not (settings.storage_dir / "datasets").exists()
        nothing_stored(api, key)


def test_junk_named_as_images_is_refused_at_the_first_one(api: Api, key_a: str) -> None:
    """Thousands of one-byte ".png" members after real images: refused when the first is reached."""
    members = face_folder_members(3, 3)
    members.update({f"faces/person_{i % 3}/junk{i}.png": b"x" for i in range(5000)})
    body = assert_problem(upload(api, key_a, make_zip(members)), 422, "invalid_dataset")
    assert "junk0.png: not an image" in body["detail"] and str(api.settings.home) not in body["detail"]
    nothing_stored(api, key_a)
