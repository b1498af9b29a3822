"""Hostile archives cost a listing, not their member count: ``midre.data.safe_extract`` counts and
checks every member before creating anything, and refuses junk named as images at the first one."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from midre.data import DatasetError, safe_extract


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (12, 10), seed * 17 % 256).save(buf, format="PNG")
    return buf.getvalue()


def tar_with(archive: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(archive, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def test_too_many_entries_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    """The member count is checked from the listing: the destination is never even created (its
    parent folder is not modified), for a zip and for a tar alike."""
    members = [(f"{'ab'[i % 2]}/{i}.png", png_bytes(i)) for i in range(30)]
    tar_archive = tar_with(tmp_path / "many.tar", members)
    zip_archive = tmp_path / "many.zip"
    with zipfile.ZipFile(zip_archive, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    for archive in (tar_archive, zip_archive):
        parent = tmp_path / f"out-{archive.suffix[1:]}"
        parent.mkdir()
        before = parent.stat().st_mtime_ns
        with pytest.raises(DatasetError, match="max_files"):
            safe_extract(archive, parent / "dest", max_files=20)
        assert parent.stat().st_mtime_ns == before and not any(parent.iterdir())


def test_junk_named_as_images_is_refused_at_the_first_one(tmp_path: Path) -> None:
    """Thousands of one-byte ".png" members: refused at the first, before its bytes are written."""
    archive = tmp_path / "junk.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"a/{i}.png", png_bytes(i))
        for i in range(2000):
            zf.writestr(f"b/junk{i}.png", b"x")
    with pytest.raises(DatasetError, match=r"b/junk0\.png: not an image") as refused:
        safe_extract(archive, tmp_path / "out" / "dest")
    assert refused.value.path == "b/junk0.png"
    assert not (tmp_path / "out" / "dest").exists()
