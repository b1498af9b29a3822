"""The S3 store (:class:`services.storage.s3.S3Store`) against a real S3-compatible server on loopback
(``moto[server]``): blobs, the bounded cache, trees synchronised between two machines' folders, multipart
transfers, and what an unreachable store or a missing object raises."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.settings import Settings, parse_storage_url
from services.storage import LocalStore, StoreUnavailable, open_store
from services.storage.s3 import S3Store
from tests.service._fleet import AWS_ENV, S3Server

pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "s3.log", bucket="midre-store-test")
    yield server
    server.stop()


@pytest.fixture
def store_at(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)

    def make(machine: str, **options: object) -> S3Store:
        return S3Store(f"s3://{s3.bucket}/{tmp_path.name}", tmp_path / machine, endpoint_url=s3.proxy.url,
                       **options)  # type: ignore[arg-type]

    return make


def test_storage_url_is_checked_naming_the_setting() -> None:
    assert parse_storage_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_storage_url("s3://bucket") == ("bucket", "")
    for bad, says in (("gs://b/p", "scheme"), ("s3:///p", "no bucket"), ("s3://b/a/../c", "'..'"),
                      ("s3://b/p?x=1", "query")):
        with pytest.raises(ValueError, match=says):
            parse_storage_url(bad)
    with pytest.raises(ValueError, match="MIDRE_STORAGE_URL"):
        Settings(storage_url="file:///tmp/x")
    local = open_store(Settings(home=Path("/nonexistent-home")))
    assert type(local) is LocalStore and not local.remote  # S3Store is a LocalStore too: the exact type
    remote = open_store(Settings(home=Path("/nonexistent-home"), storage_url="s3://b/p", s3_endpoint_url="http://x:1"))
    assert isinstance(remote, S3Store) and remote.remote and remote.describe() == "s3://b/p at http://x:1"


def test_blobs_are_content_addressed_streamed_in_parts_and_cached_within_a_bound(store_at, s3, tmp_path) -> None:
    a = store_at("a", multipart_bytes=5 * 1024**2, cache_max_bytes=8 * 1024**2)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024**2))  # three parts of 5 MiB
    blob = a.put_file(big)
    assert blob.sha256 == hashlib.sha256(big.read_bytes()).hexdigest() and blob.size == 11 * 1024**2
    head = s3.client().head_object(Bucket=s3.bucket, Key=a.key("blobs", blob.sha256[:2], blob.sha256))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    assert a.put_file(big) == blob and a.exists(blob.sha256) and a.verify(blob.sha256)

    b = store_at("b", cache_max_bytes=8 * 1024**2)  # another machine: nothing cached yet
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    first = b.put_file(small)
    local_small = b.path(first.sha256)
    assert local_small.read_bytes() == small.read_bytes()
    local_big = b.path(blob.sha256)  # larger than the whole cache: kept for its caller, the rest evicted
    assert hashlib.sha256(local_big.read_bytes()).hexdigest() == blob.sha256
    assert not local_small.exists()
    assert sorted(sha for sha, _ in b.list_blobs()) == sorted([blob.sha256, first.sha256])

    with pytest.raises(FileNotFoundError):
        b.path("0" * 64)
    b.delete(first.sha256)
    assert not b.exists(first.sha256)
    with pytest.raises(ValueError, match="sha256"):
        b.path("../../etc/passwd")


def test_trees_move_between_machines_and_a_local_change_is_never_overwritten(store_at) -> None:
    a, b = store_at("a"), store_at("b")
    mine, theirs = a.root / "work" / "j" / "out", b.root / "work" / "j" / "out"
    (mine / "targets" / "seed0").mkdir(parents=True)
    (mine / "targets" / "seed0" / "model.json").write_text('{"v": 1}')
    (mine / "units").mkdir()
    (mine / "units" / "judge.json").write_text("{}")
    assert a.push_tree(mine, "work/j/out") == 2
    assert a.push_tree(mine, "work/j/out") == 0  # nothing changed since

    assert b.pull_tree("work/j/out", theirs) == 2
    assert (theirs / "targets" / "seed0" / "model.json").read_text() == '{"v": 1}'
    assert b.pull_tree("work/j/out", theirs) == 0
    (theirs / "units" / "attack.json").write_text("{}")  # a unit on machine b
    assert b.push_tree(theirs, "work/j/out") == 1
    assert a.pull_tree("work/j/out", mine) == 1 and (mine / "units" / "attack.json").is_file()

    # a changes a file and pushes; b has an unpushed change of the same file: b keeps its own
    (mine / "targets" / "seed0" / "model.json").write_text('{"v": 2}')
    a.push_tree(mine, "work/j/out")
    (theirs / "targets" / "seed0" / "model.json").write_text('{"v": "b"}')
    b.pull_tree("work/j/out", theirs)
    assert (theirs / "targets" / "seed0" / "model.json").read_text() == '{"v": "b"}'
    # and a file b had not touched comes down when it changed in the store
    (mine / "units" / "judge.json").write_text('{"done": true}')
    a.push_tree(mine, "work/j/out")
    b.pull_tree("work/j/out", theirs)
    assert (theirs / "units" / "judge.json").read_text() == '{"done": true}'

    assert a.delete_tree("work/j") == 3
    assert b.pull_tree("work/j/out", theirs) == 0


def test_an_unreachable_store_raises_store_unavailable_quickly(store_at, s3, tmp_path) -> None:
    a = store_at("a", timeout_s=2)
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    s3.proxy.down()
    try:
        for call in (a.check, lambda: a.put_file(f), lambda: a.path("1" * 64),
                     lambda: a.pull_tree("work/x", tmp_path / "x")):
            with pytest.raises(StoreUnavailable, match="unavailable"):
                call()
    finally:
        s3.proxy.up()
    a.check()
    assert a.exists(a.put_file(f).sha256)
