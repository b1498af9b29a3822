"""Tests of `midre.data`: specs, loaders (digits, folders, archives), splits, normalisation."""

from __future__ import annotations

import dataclasses
import io
import stat
import struct
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from midre.data import (
    IMAGENET,
    DatasetError,
    DatasetSpec,
    DatasetSplits,
    ImageSet,
    Normalization,
    inspect_archive,
    load_dataset,
    safe_extract,
    split_counts,
    to_float,
)
from tests._requirements import FACE_DATASETS, need_faces

# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets_root() -> Path:
    """The real, read-only face data sets (``../shared/datasets`` or $MIDRE_SHARED_DATASETS): all three
    are needed; skipped, or failed under ``MIDRE_REQUIRE_FACES=1``, when one is missing."""
    return need_faces(*FACE_DATASETS)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset(DatasetSpec(source="digits", image_size=16, channels=3))


def _image(seed: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png", mode: str = "L") -> Path:
    """Write ``root/<identity>/<i><ext>`` images with distinct random pixels."""
    seed = 0
    for identity, n in counts.items():
        (root / identity).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            _image(seed, mode=mode).save(root / identity / f"{i}{ext}")
    return root


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def tar_folder(folder: Path, archive: Path, prefix: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(archive, mode) as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tf.add(path, prefix + path.relative_to(folder).as_posix())
    return archive


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _image(seed).save(buf, format="PNG")
    return buf.getvalue()


def tar_with(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(archive, "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [(tarfile.TarInfo(f"{who}/{i}.png"), png_bytes(i)) for who in ("a", "b") for i in range(2)]


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def assert_refused_cleanly(tmp_path: Path, archive: Path, match: str, **limits: int) -> None:
    """safe_extract raises naming ``match``, leaves no dest behind, and writes nothing elsewhere."""
    before = all_files(tmp_path)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(DatasetError, match=match):
        safe_extract(archive, dest, **limits)
    assert not dest.exists()
    assert all_files(tmp_path) - before <= {"out"}
    assert not (Path("/tmp") / "abs.png").exists()


# ---------------------------------------------------------------------------------------------
# DatasetSpec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", ""),
        ("source", 3),
        ("image_size", 1),
        ("image_size", 64.0),
        ("image_size", True),
        ("channels", 2),
        ("normalize", 1),
        ("test_fraction", 1.0),
        ("test_fraction", -0.1),
        ("test_fraction", float("nan")),
        ("split_seed", -1),
        ("split_seed", "42"),
        ("num_private", 1),
        ("num_private", 2.0),
        ("max_images_per_identity", 1),
    ],
)
def test_spec_rejects_bad_field_naming_it(field, value):
    kwargs = {"source": "digits", field: value}
    with pytest.raises(ValueError, match=field) as info:
        DatasetSpec(**kwargs)
    assert isinstance(info.value, DatasetError)
    assert info.value.field == field


def test_spec_is_frozen_serialisable_and_accepts_paths(tmp_path):
    spec = DatasetSpec(source=tmp_path, image_size=32, num_private=3, test_fraction=0)
    assert spec.source == str(tmp_path) and spec.test_fraction == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image_size = 8  # type: ignore[misc]
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DatasetError, match="imgsize"):
        DatasetSpec.from_dict({"source": "digits", "imgsize": 3})


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_labels_and_balance(digits):
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.public is None and digits.public_class_names == []
    for part in (digits.train, digits.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 16, 16)
        assert part.labels.dtype == torch.int64
        assert int(part.labels.min()) == 0 and int(part.labels.max()) == 9
        assert torch.equal(part.images[:, 0], part.images[:, 2])  # gray repeated
    assert len(digits.train) + len(digits.test) == 1797
    train_counts = digits.train.counts(10)
    test_counts = digits.test.counts(10)
    for c in range(10):
        total = train_counts[c] + test_counts[c]
        assert 170 <= total <= 185
        assert (train_counts[c], test_counts[c]) == split_counts(total, 0.2)
    assert digits.train.images.float().mean() > 10  # not blank
    assert all(p.startswith("digits:") for p in digits.train.paths)
    assert digits.normalization == IMAGENET
    s = digits.summary
    assert s["source"] == "digits" and s["identities"] == 10 and s["rejected"] == []
    assert s["images"] == {"train": len(digits.train), "test": len(digits.test), "public": 0, "total": 1797}


def test_digits_native_size_matches_sklearn_values():
    from sklearn.datasets import load_digits

    splits = load_dataset(DatasetSpec(source="digits", image_size=8, channels=1, normalize=False))
    assert splits.normalization is None
    raw = load_digits().images
    index = int(splits.train.paths[5].split(":")[1])
    expected = torch.from_numpy(np.rint(raw[index] * 255 / 16).astype(np.uint8))
    assert torch.equal(splits.train.images[5, 0], expected)
    assert int(splits.train.labels[5]) == int(load_digits().target[index])


def test_digits_private_public_and_cap():
    splits = load_dataset(
        DatasetSpec(source="digits", image_size=8, num_private=6, max_images_per_identity=20)
    )
    assert splits.class_names == ["0", "1", "2", "3", "4", "5"]
    assert splits.public_class_names == ["6", "7", "8", "9"]
    assert splits.train.counts(6) == [16] * 6 and splits.test.counts(6) == [4] * 6
    assert splits.public is not None and splits.public.counts(4) == [20] * 4
    assert splits.public.labels.max() == 3


# ---------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (10, 0.2, (8, 2)),
        (10, 0.0, (10, 0)),
        (2, 0.1, (1, 1)),
        (3, 0.9, (1, 2)),
        (5, 0.5, (2, 3)),
        (11, 0.1, (10, 1)),
        (64, 0.2, (51, 13)),
        (1, 0.5, (1, 0)),
    ],
)
def test_split_counts(n, fraction, expected):
    assert split_counts(n, fraction) == expected


def test_split_is_stratified_disjoint_and_seeded(datasets_root):
    att = datasets_root / "att_faces"
    a = load_dataset(DatasetSpec(source=att, image_size=8, channels=1, split_seed=1))
    b = load_dataset(DatasetSpec(source=att, image_size=8, channels=1, split_seed=1))
    c = load_dataset(DatasetSpec(source=att, image_size=8, channels=1, split_seed=2))
    assert set(a.train.paths).isdisjoint(a.test.paths)
    assert len(set(a.train.paths) | set(a.test.paths)) == 400
    assert a.train.counts(40) == [8] * 40 and a.test.counts(40) == [2] * 40
    assert a.train.paths == b.train.paths and a.test.paths == b.test.paths
    assert torch.equal(a.test.images, b.test.images)
    assert set(a.test.paths) != set(c.test.paths)
    # labels agree with the identity folder of every image
    for part in (a.train, a.test):
        for path, label in zip(part.paths, part.labels.tolist(), strict=True):
            assert Path(path).parent.name == a.class_names[label]
    # an identity's split does not depend on which other identities are loaded
    d = load_dataset(DatasetSpec(source=att, image_size=8, channels=1, split_seed=1, num_private=5))
    assert set(d.test.paths) == {p for p in a.test.paths if Path(p).parent.name in d.class_names}


def test_zero_test_fraction_gives_empty_test(tmp_path):
    splits = load_dataset(DatasetSpec(source=make_folder(tmp_path, {"a": 2, "b": 3}), test_fraction=0))
    assert len(splits.test) == 0 and splits.test.images.shape == (0, 3, 64, 64)
    assert len(splits.train) == 5


# ---------------------------------------------------------------------------------------------
# real folders
# ---------------------------------------------------------------------------------------------


def test_att_faces_loads_40_identities(datasets_root):
    spec = DatasetSpec(source=datasets_root / "att_faces", image_size=64)
    splits = load_dataset(spec)
    # the threaded decoder (the default for 400 images) gives what one thread gives, in the same order
    serial = load_dataset(spec, num_workers=1)
    assert serial.train.paths == splits.train.paths and torch.equal(serial.train.images, splits.train.images)
    assert torch.equal(serial.test.images, splits.test.images)
    assert splits.num_classes == 40 and splits.class_names[:3] == ["s1", "s10", "s11"]
    assert len(splits.train) + len(splits.test) == 400
    assert splits.train.images.shape == (320, 3, 64, 64)
    s = splits.summary
    assert s["identities"] == 40 and s["images"]["total"] == 400
    assert s["image_size"] == 64 and s["channels"] == 3
    assert [Path(r["path"]).name for r in s["rejected"]] == ["README.md"]
    assert "not an image" in s["rejected"][0]["reason"]
    assert all(p.endswith(".png") for p in splits.train.paths)


def test_att_faces_private_public(datasets_root):
    splits = load_dataset(
        DatasetSpec(source=datasets_root / "att_faces", image_size=16, channels=1, num_private=30)
    )
    assert len(splits.class_names) == 30 and len(splits.public_class_names) == 10
    assert splits.public_class_names == sorted(splits.public_class_names)
    assert max(splits.class_names) < min(splits.public_class_names)  # first 30 in sorted order
    assert len(splits.train) == 240 and len(splits.test) == 60
    assert splits.public is not None and len(splits.public) == 100
    assert splits.public.counts(10) == [10] * 10
    for path, label in zip(splits.public.paths, splits.public.labels.tolist(), strict=True):
        assert Path(path).parent.name == splits.public_class_names[label]
    assert splits.summary["public_identities"] == 10 and splits.summary["images"]["public"] == 100
    assert splits.normalization is not None and splits.normalization.channels == 1
    with pytest.raises(DatasetError, match=r"num_private.*\[2, 39\]"):
        load_dataset(DatasetSpec(source=datasets_root / "att_faces", image_size=8, num_private=40))


def test_att_faces_cap_takes_first_sorted(datasets_root):
    splits = load_dataset(
        DatasetSpec(source=datasets_root / "att_faces", image_size=8, max_images_per_identity=3)
    )
    paths = splits.train.paths + splits.test.paths
    assert len(paths) == 120
    assert {Path(p).name for p in paths} == {"1.png", "10.png", "2.png"}


def test_yale_datasets_layouts(datasets_root):
    yale_b = load_dataset(
        DatasetSpec(source=datasets_root / "extended_yale_b_cropped", image_size=8, channels=1)
    )
    assert yale_b.num_classes == 38 and "yaleB14" not in yale_b.class_names
    assert yale_b.summary["images"]["total"] == 2414
    per_id = Counter(Path(p).parent.name for p in yale_b.train.paths + yale_b.test.paths)
    assert min(per_id.values()) == 59 and max(per_id.values()) == 64
    yale = load_dataset(DatasetSpec(source=datasets_root / "yalefaces", image_size=8, channels=1))
    assert yale.class_names == [f"subject{i:02d}" for i in range(1, 16)]
    assert yale.summary["images"]["total"] == 164
    assert yale.train.counts(15)[0] + yale.test.counts(15)[0] == 10


# ---------------------------------------------------------------------------------------------
# folder layout rules and errors
# ---------------------------------------------------------------------------------------------


def test_folder_skips_hidden_and_non_images_and_reads_nested(tmp_path):
    root = make_folder(tmp_path / "data", {"alice": 2, "bob": 3})
    (root / "README.md").write_text("hi")
    (root / ".cache").mkdir()
    _image(99).save(root / ".cache" / "x.png")
    _image(98).save(root / "stray.png")
    (root / "alice" / ".DS_Store").write_bytes(b"\0")
    (root / "alice" / "notes.txt").write_text("x")
    (root / "bob" / "sub").mkdir()
    _image(97).save(root / "bob" / "sub" / "5.JPG", format="JPEG")  # upper-case extension, nested
    splits = load_dataset(DatasetSpec(source=root, image_size=8, test_fraction=0))
    assert splits.class_names == ["alice", "bob"]
    assert splits.train.counts(2) == [2, 4]
    reasons = {Path(r["path"]).name: r["reason"] for r in splits.summary["rejected"]}
    assert set(reasons) == {"README.md", ".cache", "stray.png", ".DS_Store", "notes.txt"}
    assert "hidden" in reasons[".cache"] and "outside" in reasons["stray.png"]
    assert "(.txt)" in reasons["notes.txt"]


def test_image_modes_and_formats_are_converted(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(root / "a" / "rgba.png")
    Image.new("P", (9, 9), 3).save(root / "a" / "pal.gif")
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(root / "b" / "deep.png")
    _image(1, mode="RGB").save(root / "b" / "photo.jpeg", quality=95)
    _image(2).save(root / "b" / "x.pgm")
    _image(3, mode="RGB").save(root / "b" / "y.webp")
    _image(4).save(root / "b" / "z.TIFF")
    _image(5).save(root / "b" / "w.bmp")
    for channels in (1, 3):
        splits = load_dataset(DatasetSpec(source=root, image_size=6, channels=channels, test_fraction=0))
        images = splits.train.images
        assert images.shape == (8, channels, 6, 6) and images.dtype == torch.uint8
        by_name = dict(zip((Path(p).name for p in splits.train.paths), images, strict=True))
        assert int(by_name["deep.png"].min()) == 255  # 16-bit white stays white, not clipped garbage
        if channels == 3:
            assert by_name["rgba.png"][:, 0, 0].tolist() == [255, 0, 0]


def bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Build a broken data set; return (source, text the error must contain)."""
    root = tmp_path / "bad"
    if case == "missing":
        return root, str(root)
    root.mkdir()
    if case == "empty":
        return root, "empty"
    if case == "no_identities":
        (root / "README.md").write_text("x")
        _image(0).save(root / "loose.png")
        return root, "no identity sub-folders"
    if case == "one_identity":
        make_folder(root, {"only": 3})
        return root, "'only'"
    if case == "one_image":
        make_folder(root, {"a": 3, "lonely": 1})
        return root, str(root / "lonely")
    if case == "no_image":
        make_folder(root, {"a": 3, "b": 2})
        (root / "ghost").mkdir()
        (root / "ghost" / "README.txt").write_text("x")
        return root, "ghost"
    make_folder(root, {"a": 3, "b": 2})
    target = root / "b" / "broken.png"
    if case == "corrupt":
        target.write_bytes(png_bytes()[:60])  # truncated PNG
    elif case == "not_an_image":
        target = root / "b" / "text.jpg"
        target.write_text("this is not a JPEG")
    elif case == "unsupported":
        target = root / "b" / "icon.png"
        _image(0).save(target, format="TGA")  # a TGA wearing a .png name
        return root, "unsupported image format TGA"
    return root, str(target)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "no_identities",
        "one_identity",
        "one_image",
        "no_image",
        "corrupt",
        "not_an_image",
        "unsupported",
    ],
)
def test_folder_errors_name_the_file(tmp_path, case):
    source, needle = bad_folder(tmp_path, case)
    with pytest.raises(DatasetError) as info:
        load_dataset(DatasetSpec(source=source, image_size=8))
    assert needle in str(info.value)


def test_unsupported_source_file(tmp_path):
    source = tmp_path / "faces.rar"
    source.write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match="unsupported") as info:
        load_dataset(DatasetSpec(source=source))
    assert str(source) in str(info.value) and info.value.field == "source"


# ---------------------------------------------------------------------------------------------
# archives
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def faces(tmp_path) -> Path:
    root = make_folder(tmp_path / "faces", {"amy": 4, "ben": 3, "cat": 5}, mode="RGB")
    (root / "README.md").write_text("not data")
    return root


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz", "tar"])
def test_archive_loads_like_the_folder(tmp_path, faces, kind):
    archive = tmp_path / f"faces.{kind}"
    if kind == "zip":
        zip_folder(faces, archive, prefix="faces/")
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("__MACOSX/faces/._amy", b"junk")
    else:
        tar_folder(faces, archive, prefix="./faces/", mode="w" if kind == "tar" else "w:gz")
    spec = DatasetSpec(source=faces, image_size=8, num_private=2)
    folder = load_dataset(spec)
    packed = load_dataset(dataclasses.replace(spec, source=str(archive)))
    assert packed.class_names == folder.class_names == ["amy", "ben"]
    assert packed.public_class_names == ["cat"]
    for x, y in ((folder.train, packed.train), (folder.test, packed.test), (folder.public, packed.public)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert [Path(p).name for p in x.paths] == [p.rsplit("/", 1)[1] for p in y.paths]
    assert packed.train.paths[0] == f"{archive}!faces/amy/" + Path(folder.train.paths[0]).name
    rejected = [r["path"] for r in packed.summary["rejected"]]
    assert any(p.endswith("README.md") for p in rejected)
    assert packed.summary["source_kind"] == "archive"
    assert packed.summary["archive"]["root_prefix"] == "faces"


def test_archive_cache_dir_is_reused(tmp_path, faces):
    archive = zip_folder(faces, tmp_path / "faces.zip")
    cache = tmp_path / "cache"
    spec = DatasetSpec(source=archive, image_size=8)
    first = load_dataset(spec, cache_dir=cache)
    assert all(Path(p).is_file() and cache in Path(p).parents for p in first.train.paths)
    (entry,) = [p for p in cache.iterdir()]
    stamp = entry.stat().st_mtime_ns
    second = load_dataset(spec, cache_dir=cache)
    assert second.train.paths == first.train.paths and torch.equal(second.test.images, first.test.images)
    assert entry.stat().st_mtime_ns == stamp and len(list(cache.iterdir())) == 1


def test_inspect_and_extract_report(tmp_path, faces):
    archive = tar_folder(faces, tmp_path / "faces.tgz", prefix="top/faces/")
    seen = inspect_archive(archive)
    assert seen.dest is None and seen.images == 12
    assert seen.identities == {"amy": 4, "ben": 3, "cat": 5}
    assert [r.path for r in seen.rejected] == ["top/faces/README.md"]
    report = safe_extract(archive, tmp_path / "x")
    assert report.root == str(tmp_path / "x" / "top" / "faces") and report.root_prefix == "top/faces"
    assert report.identities == seen.identities and report.images == 12
    assert report.total_bytes == sum((tmp_path / "x" / f).stat().st_size for f in report.files)
    assert not (tmp_path / "x" / "top" / "faces" / "README.md").exists()
    assert report.to_dict()["rejected"] == [
        {"path": "top/faces/README.md", "reason": "not an image file (.md)"}
    ]
    with pytest.raises(DatasetError, match="must be an empty folder"):
        safe_extract(archive, tmp_path / "x")


def test_archive_stray_root_image_is_skipped(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [*good_members(), (tarfile.TarInfo("loose.png"), png_bytes(9))])
    report = safe_extract(archive, tmp_path / "out")
    assert report.identities == {"a": 2, "b": 2}
    assert [(r.path, r.reason) for r in report.rejected] == [
        ("loose.png", "image outside any identity folder")
    ]
    assert not (tmp_path / "out" / "loose.png").exists()


def test_zip_traversal_and_absolute_are_refused(tmp_path):
    for name, match in (
        ("../x.png", r"\.\."),
        ("a/../../x.png", r"\.\."),
        ("/tmp/abs.png", "absolute"),
        ("C:\\abs.png", "absolute"),
        ("a\\..\\..\\x.png", r"\.\."),
    ):
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("a/1.png", png_bytes(1))  # written first: must be cleaned up again
            zf.writestr("a/2.png", png_bytes(2))
            zf.writestr(zipfile.ZipInfo(name), png_bytes(3))
        assert_refused_cleanly(tmp_path, archive, match)
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "out" / "x.png").exists()
        archive.unlink()


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("../x.png", tarfile.REGTYPE, r"\.\."),
        ("/tmp/abs.png", tarfile.REGTYPE, "absolute"),
        ("a/link.png", tarfile.SYMTYPE, "symbolic link"),
        ("a/hard.png", tarfile.LNKTYPE, "hard link"),
        ("a/dev.png", tarfile.CHRTYPE, "special file"),
        ("a/fifo.png", tarfile.FIFOTYPE, "special file"),
    ],
)
def test_tar_unsafe_members_are_refused(tmp_path, name, kind, match):
    info = tarfile.TarInfo(name)
    info.type = kind
    data: bytes | None = png_bytes(5) if kind == tarfile.REGTYPE else None
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "../../../etc/passwd" if kind == tarfile.SYMTYPE else "a/0.png"
    archive = tar_with(tmp_path / "evil.tar", [*good_members(), (info, data)])
    assert_refused_cleanly(tmp_path, archive, match)
    with pytest.raises(DatasetError, match=match):  # inspection refuses it too
        inspect_archive(archive)
    with pytest.raises(DatasetError, match=match):  # and so does load_dataset
        load_dataset(DatasetSpec(source=archive, image_size=8))


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.png", png_bytes(1))
        link = zipfile.ZipInfo("a/2.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    assert_refused_cleanly(tmp_path, archive, "symbolic link")


def test_too_many_files_is_refused(tmp_path):
    zip_archive = tmp_path / "many.zip"
    with zipfile.ZipFile(zip_archive, "w") as zf:
        for i in range(12):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png_bytes(i))
    assert_refused_cleanly(tmp_path, zip_archive, "max_files", max_files=10)
    extra = [(tarfile.TarInfo(f"c/{i}.png"), png_bytes(i)) for i in range(8)]
    tar_archive = tar_with(tmp_path / "many.tar", [*good_members(), *extra])
    assert_refused_cleanly(tmp_path, tar_archive, "max_files", max_files=10)
    assert safe_extract(tar_archive, tmp_path / "ok", max_files=12).images == 12


def test_too_many_bytes_is_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", png_bytes(1))
        zf.writestr("a/2.png", b"\0" * 5_000_000)  # 5 MB of zeros, a few KB compressed
    assert bomb.stat().st_size < 50_000
    assert_refused_cleanly(tmp_path, bomb, "max_total_bytes", max_total_bytes=1_000_000)
    tar_bomb = tar_with(
        tmp_path / "bomb.tar", [*good_members(), (tarfile.TarInfo("a/big.png"), b"\0" * 300_000)]
    )
    assert_refused_cleanly(tmp_path, tar_bomb, "max_total_bytes", max_total_bytes=100_000)


def test_zip_header_lying_about_size_writes_no_more_than_declared(tmp_path):
    """A member whose headers claim 100 bytes but inflates to 2 MB must not be written past 100."""
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", png_bytes(1))
        zf.writestr("a/2.png", b"\0" * 2_000_000)
    data = bytearray(archive.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local + central "uncompressed size"
        pos = data.find(sig)
        while pos != -1:
            name_len = struct.unpack_from("<H", data, pos + (26 if sig == b"PK\x03\x04" else 28))[0]
            start = pos + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start : start + name_len]) == b"a/2.png":
                struct.pack_into("<I", data, pos + offset, 100)
            pos = data.find(sig, pos + 4)
    archive.write_bytes(bytes(data))
    assert inspect_archive(archive).total_bytes < 10_000  # headers now look harmless
    assert_refused_cleanly(tmp_path, archive, "a/2.png", max_total_bytes=10_000)


def test_corrupt_archives_name_the_archive(tmp_path):
    fake_zip = tmp_path / "fake.zip"
    fake_zip.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="fake.zip"):
        load_dataset(DatasetSpec(source=fake_zip))
    fake_tgz = tmp_path / "fake.tgz"
    fake_tgz.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="fake.tgz"):
        safe_extract(fake_tgz, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match="max_files"):
        safe_extract(fake_tgz, tmp_path / "out", max_files=0)


def test_archive_without_images_is_an_error(tmp_path):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/notes.txt", "x")
    with pytest.raises(DatasetError, match=r"docs\.zip holds no images.*a/notes\.txt"):
        load_dataset(DatasetSpec(source=archive, image_size=8))


def test_corrupt_image_inside_archive_names_the_member(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [*good_members(), (tarfile.TarInfo("b/bad.png"), b"garbage")])
    with pytest.raises(DatasetError, match=r"a\.tar!b/bad\.png"):
        load_dataset(DatasetSpec(source=archive, image_size=8))


# ---------------------------------------------------------------------------------------------
# normalisation and containers
# ---------------------------------------------------------------------------------------------


def test_normalize_denormalize_round_trip():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    y = IMAGENET.normalize(x)
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.456) / 0.224)
    assert torch.allclose(IMAGENET.denormalize(y), x, atol=1e-6)
    mean_pixel = torch.tensor(IMAGENET.mean).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(IMAGENET.normalize(mean_pixel), torch.zeros(3, 2, 2), atol=1e-6)
    gray = IMAGENET.for_channels(1)
    assert gray.channels == 1 and gray.mean[0] == pytest.approx(0.449)
    assert Normalization.from_dict(IMAGENET.to_dict()) == IMAGENET
    with pytest.raises(ValueError, match="std"):
        Normalization((0.5,), (0.0,))
    with pytest.raises(ValueError, match="3"):
        IMAGENET.normalize(torch.rand(2, 1, 4, 4))


def test_to_float_scales_and_normalises():
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    plain = to_float(u8, None)
    assert plain.dtype == torch.float32 and torch.allclose(plain[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    normed = to_float(u8, IMAGENET)
    assert torch.allclose(normed, IMAGENET.normalize(plain))
    assert torch.equal(u8[0, :, 0, 0], torch.tensor([0, 51, 255], dtype=torch.uint8))  # input untouched
    assert to_float(u8, None, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="images_uint8"):
        to_float(plain, IMAGENET)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_float_on_cuda(digits):
    x = to_float(digits.train.images[:16].cuda(), digits.normalization)
    assert x.is_cuda
    assert torch.allclose(x.cpu(), to_float(digits.train.images[:16], digits.normalization), atol=1e-6)


def test_imageset_validates_and_selects():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 1])
    subset = ImageSet(images, labels, ["a", "b", "c"]).select([2, 0])
    assert subset.paths == ["c", "a"] and subset.labels.tolist() == [1, 0] and len(subset) == 2
    with pytest.raises(ValueError, match="images"):
        ImageSet(images.float(), labels, ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        ImageSet(images, labels.int(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="paths"):
        ImageSet(images, labels, ["a"])


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    """96 MiB of zeros packs into well under 1 MiB: refused from the declared sizes, nothing extracted."""
    from midre.data.archive import MAX_EXPANSION_RATIO

    blob = bytes(96 * 2**20)
    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("faces/a/1.png", blob)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("faces/a/1.png")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    assert len(blob) > MAX_EXPANSION_RATIO * archive.stat().st_size
    dest = tmp_path / "out"
    with pytest.raises(DatasetError, match="decompression bomb") as info:
        safe_extract(archive, dest, max_total_bytes=2**31)
    assert info.value.field == "max_total_bytes"
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))


def test_a_huge_16_bit_image_is_refused_before_decoding_and_a_large_one_decodes(tmp_path: Path) -> None:
    """The decode budget counts bytes per pixel: a 16-bit 8192x8192 PNG (a few KB on disk) is refused
    from its header; a 16-bit 2048x2048 one decodes to the same 8-bit image as its 8-bit twin."""
    from midre.data.images import MAX_DECODE_BYTES, decode_bytes, decode_image

    huge = tmp_path / "huge16.png"
    Image.new("I;16", (8192, 8192)).save(huge)
    assert huge.stat().st_size < 2**20 and decode_bytes("I;16", 8192, 8192) > MAX_DECODE_BYTES
    with pytest.raises(DatasetError, match="MiB to decode"):
        decode_image(str(huge), 32, 1)
    ramp = (np.arange(2048, dtype=np.uint32)[None, :].repeat(2048, 0) * 32).astype(np.uint16)
    large = tmp_path / "large16.png"
    Image.fromarray(ramp).save(large)  # uint16 -> a 16-bit gray PNG
    eight = tmp_path / "large8.png"
    Image.fromarray(np.clip(np.rint(ramp / 257.0), 0, 255).astype(np.uint8)).save(eight)
    a, b = decode_image(str(large), 32, 1), decode_image(str(eight), 32, 1)
    assert a.shape == (32, 32) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
