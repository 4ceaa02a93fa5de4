"""Tests of edgetl.data and edgetl.data.demo: layouts, splits, messy files, tf.data pipeline."""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgetl import data
from edgetl.core.errors import DataError, RunExistsError, UsageError
from edgetl.data import DataSplits, Item, load_image, load_images, scan_eval_folder, scan_folder
from edgetl.data.demo import MESSY_UNREADABLE, write_demo_data, write_messy_files

COLOURS = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}


def _img(path: Path, colour: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (20, 16),
         fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return path


def _class_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _img(root / name / f"{name}{i:02d}.png", COLOURS.get(name, (i * 10 % 256, 90, 90)))
    return root


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels, with no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------- layouts


def test_class_folders_split_is_stratified_complete_and_seeded(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 10, "b": 10, "c": 20})
    s = scan_folder(root, val_split=0.2, test_split=0.1, seed=3)
    assert s.layout == "class-folders"
    assert s.class_names == ["a", "b", "c"]
    assert s.root == str(root.resolve())
    assert s.counts() == {"train": [7, 7, 14], "val": [2, 2, 4], "test": [1, 1, 2]}
    paths = [it.path for sp in (s.train, s.val, s.test) for it in sp]
    assert len(paths) == len(set(paths)) == 40  # a partition: nothing lost, nothing twice
    assert all(it.path.startswith(s.class_names[it.label] + "/") for it in s.train + s.val + s.test)
    assert scan_folder(root, val_split=0.2, test_split=0.1, seed=3) == s
    other = scan_folder(root, val_split=0.2, test_split=0.1, seed=4)
    assert other.counts() == s.counts() and other.val != s.val


def test_split_folders_layout_uses_given_splits_and_carves_missing_val(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _class_folders(root / "train", {"a": 10, "b": 5})
    _class_folders(root / "test", {"a": 2, "b": 1})
    s = scan_folder(root, val_split=0.2, test_split=0.5)  # test_split is ignored: test/ is given
    assert s.layout == "split-folders"
    assert s.counts() == {"train": [8, 4], "val": [2, 1], "test": [2, 1]}
    assert all(it.path.startswith("train/") for it in s.train + s.val)
    assert all(it.path.startswith("test/") for it in s.test)

    _class_folders(root / "val", {"a": 3})  # a val/ folder: used as is, val_split ignored
    s2 = scan_folder(root, val_split=0.2)
    assert s2.counts() == {"train": [10, 5], "val": [3, 0], "test": [2, 1]}
    assert {it.path.split("/")[0] for it in s2.val} == {"val"}


def test_split_folders_unknown_class_in_val(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _class_folders(root / "train", {"a": 2, "b": 2})
    _class_folders(root / "val", {"a": 1, "bb": 1})
    with pytest.raises(DataError, match=r"\['bb'\].*not in .*train.*Did you mean 'b'"):
        scan_folder(root)


def test_few_images_per_class(tmp_path: Path) -> None:
    # One image per class: all of it trains, val and test are empty.
    s = scan_folder(_class_folders(tmp_path / "one", {"a": 1, "b": 1}))
    assert s.counts() == {"train": [1, 1], "val": [0, 0], "test": [0, 0]}
    # Two per class at 0.2/0.1 rounds to nothing per class, but a class can spare one for val and test.
    s = scan_folder(_class_folders(tmp_path / "two", {"a": 3, "b": 2}), val_split=0.2, test_split=0.1)
    c = s.counts()
    assert sum(c["val"]) == 1 and sum(c["test"]) == 1 and all(n >= 1 for n in c["train"])
    # Zero fractions give everything to train.
    assert scan_folder(tmp_path / "two", val_split=0, test_split=0).counts()["train"] == [3, 2]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=5),
       val=st.floats(0, 0.6), test=st.floats(0, 0.35), seed=st.integers(0, 10**6))
def test_stratified_split_properties(sizes: list[int], val: float, test: float, seed: int) -> None:
    names = [f"c{i}" for i in range(len(sizes))]
    per_class = [[f"{n}/{k}.png" for k in range(size)] for n, size in zip(names, sizes, strict=True)]
    train, v, t = data.splits.stratified_split(per_class, val, test, seed, names)
    everything = sorted(it.path for it in train + v + t)
    assert everything == sorted(p for ps in per_class for p in ps)
    for label, size in enumerate(sizes):
        n_train = sum(it.label == label for it in train)
        n_val = sum(it.label == label for it in v)
        assert n_train >= 1
        assert abs(n_val - size * val) <= 1.5  # stratified: close to the asked fraction per class
    if val > 0 and any(s >= 2 for s in sizes):
        assert v  # a whole empty val split only when no class can spare an image
    assert data.splits.stratified_split(per_class, val, test, seed, names) == (train, v, t)


def test_class_names_argument_fixes_order_and_set(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 2, "b": 2})
    s = scan_folder(root, class_names=["b", "a"], val_split=0, test_split=0)
    assert s.class_names == ["b", "a"]
    assert {it.path.split("/")[0]: it.label for it in s.train} == {"b": 0, "a": 1}
    with pytest.raises(DataError, match=r"missing: \['c'\]"):
        scan_folder(root, class_names=["a", "b", "c"])


def test_hidden_and_loose_files_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _class_folders(tmp_path / "d", {"a": 2, "b": 2})
    _img(root / ".hidden" / "x.png")
    _img(root / "a" / ".thumb.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "a" / "notes.txt").write_text("not an image, not a candidate")
    _img(root / "a" / "nested" / "deep.png")  # sub-folders of a class folder belong to the class
    _img(root / "loose.png")
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        s = scan_folder(root, val_split=0, test_split=0)
    assert s.class_names == ["a", "b"]
    assert sorted(it.path for it in s.train) == ["a/a00.png", "a/a01.png", "a/nested/deep.png", "b/b00.png",
                                                 "b/b01.png"]
    assert s.skipped == []
    assert "loose.png" in caplog.text


# ---------------------------------------------------------------------------------------------- errors


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data folder '.*nope' does not exist\. Pass a folder with one subfolder"):
        scan_folder(tmp_path / "nope")
    f = _img(tmp_path / "file.png")
    with pytest.raises(DataError, match="is not a folder"):
        scan_folder(f)
    flat = tmp_path / "flat"
    _img(flat / "x.png")
    with pytest.raises(DataError, match=r"no class folders \(found 1 images directly in it\)"):
        scan_folder(flat)
    one = _class_folders(tmp_path / "one", {"cats": 3})
    with pytest.raises(DataError, match=r"needs at least 2 classes, found 1 \('cats'\)"):
        scan_folder(one)
    empty = _class_folders(tmp_path / "empty", {"cats": 3})
    (empty / "dogs").mkdir()
    with pytest.raises(DataError, match=r"class folder '.*dogs' has no readable images"):
        scan_folder(empty)
    heic = _class_folders(tmp_path / "heic", {"cats": 3})
    (heic / "dogs").mkdir()
    (heic / "dogs" / "IMG_1.HEIC").write_bytes(b"x")
    with pytest.raises(DataError, match=r"'.*dogs' has no readable images .*other extensions: \.heic"):
        scan_folder(heic)


@pytest.mark.parametrize(("val", "test", "match"), [
    (1.0, 0.1, "--val-split must be at least 0 and less than 1, got 1.0"),
    (-0.1, 0.1, "--val-split must be"),
    (0.1, 1.5, "--test-split must be"),
    (0.6, 0.5, r"--val-split 0\.6 \+ --test-split 0\.5 = 1\.1; the sum must be less than 1"),
])
def test_invalid_split_fractions(tmp_path: Path, val: float, test: float, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        scan_folder(tmp_path, val_split=val, test_split=test)


# ---------------------------------------------------------------------------------------------- messy files


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("messy")
    return folder, write_messy_files(folder)


def test_messy_readable_kinds_decode_to_rgb(messy: tuple[Path, dict[str, str]]) -> None:
    folder, kinds = messy
    for name, kind in kinds.items():
        if kind in MESSY_UNREADABLE:
            with pytest.raises(DataError, match=rf"cannot read image '.*{name}': .*Remove or replace"):
                load_image(folder / name, (24, 32))
        else:
            arr = load_image(folder / name, (24, 32))
            assert arr.shape == (24, 32, 3) and arr.dtype == np.uint8, kind


def test_exif_orientation_is_applied(messy: tuple[Path, dict[str, str]]) -> None:
    # Upright: left half red, right half blue. Stored rotated 90 degrees with orientation 6.
    arr = load_image(messy[0] / "rotated.jpg", (32, 48)).astype(int)
    assert arr[16, 4, 0] > 200 and arr[16, 4, 2] < 60  # left is red
    assert arr[16, 44, 2] > 200 and arr[16, 44, 0] < 60  # right is blue
    assert abs(arr[2, 4] - arr[30, 4]).max() < 40  # top and bottom alike: not rotated sideways


def test_colour_conversions(messy: tuple[Path, dict[str, str]]) -> None:
    folder = messy[0]
    cmyk = load_image(folder / "cmyk.jpg", (16, 16)).astype(int)
    assert (cmyk[..., 0] > 230).all() and (cmyk[..., 1:] < 30).all()  # CMYK red stays red, not cyan
    gray16 = load_image(folder / "gray16.png", (8, 256))
    assert (gray16[..., 0] == np.arange(256)[None, :]).all()  # 16-bit x*257 scales to exactly x
    assert (gray16[..., 0] == gray16[..., 2]).all()
    gif = load_image(folder / "animated.jpg", (8, 8))  # a GIF named .jpg: content wins, first frame
    assert (gif == [0, 255, 0]).all()
    tiny = load_image(folder / "tiny.png", (5, 7))
    assert (tiny == [10, 200, 30]).all()
    alpha = load_image(folder / "alpha.png", (40, 40))
    assert (alpha[:, :18] == [0, 0, 255]).all() and (alpha[:, 22:] == 255).all()  # transparent -> white
    pal = load_image(folder / "palette.png", (40, 40))
    assert (pal[0, 0] == 255).all() and (pal[20, 20] == [255, 0, 0]).all()


def test_large_jpeg_uses_reduced_decoding(tmp_path: Path) -> None:
    big = np.zeros((1200, 1600, 3), np.uint8)
    big[:, :800] = (255, 0, 0)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    arr = load_image(tmp_path / "big.jpg", (30, 40)).astype(int)
    assert arr.shape == (30, 40, 3)
    assert arr[15, 5, 0] > 230 and arr[15, 35, 0] < 25


def test_unreadable_files_are_skipped_and_named(messy: tuple[Path, dict[str, str]], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    root = _class_folders(tmp_path / "d", {"a": 8, "b": 8})
    write_messy_files(root / "a")
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        s = scan_folder(root, max_bad_fraction=0.5, val_split=0, test_split=0)
    reasons = dict(s.skipped)
    assert set(reasons) == {"a/empty.jpg", "a/truncated.jpg", "a/notes.png"}
    assert reasons["a/empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["a/truncated.jpg"]
    assert "not an image" in reasons["a/notes.png"]
    assert "a/truncated.jpg" in caplog.text and "skipping" in caplog.text
    kept = {it.path for it in s.train}
    assert {"a/animated.jpg", "a/cmyk.jpg", "a/gray16.png", "a/rotated.jpg", "a/palette.png"} <= kept


def test_too_many_unreadable_files(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 9, "b": 8})
    for i in range(3):
        (root / "b" / f"bad{i}.jpg").write_bytes(b"nope")
    with pytest.raises(DataError) as err:
        scan_folder(root)  # 3 of 20 = 15% > 5%
    msg = str(err.value)
    assert "3 of 20 image files (15.0%) are unreadable" in msg
    assert "--max-bad-fraction 0.05" in msg and "'b/bad0.jpg'" in msg and "'b/bad2.jpg'" in msg
    assert "\n" not in msg
    assert len(scan_folder(root, max_bad_fraction=0.15).skipped) == 3


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_loops_and_broken_links_do_not_hang(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 3, "b": 3})
    os.symlink("..", root / "a" / "up")  # a/up/a/up/...: and a/up/b would pull class b into a
    os.symlink(".", root / "b" / "self")  # b/self/self/...
    os.symlink(root / "b", root / "a" / "also_b")  # a linked folder is followed: its images are class a
    os.symlink("nowhere.png", root / "a" / "broken.png")
    os.symlink("loop2.jpg", root / "b" / "loop1.jpg")
    os.symlink("loop1.jpg", root / "b" / "loop2.jpg")
    os.mkfifo(root / "b" / "fifo.jpg")  # opening a FIFO would block forever
    result: list[DataSplits] = []
    t = threading.Thread(target=lambda: result.append(scan_folder(root, max_bad_fraction=1.0)), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "scan_folder hung on symlinks"
    reasons = dict(result[0].skipped)
    assert reasons["a/broken.png"] == "broken symlink"
    assert reasons["b/loop1.jpg"] == "symlink loop"
    assert reasons["b/fifo.jpg"] == "not a regular file"
    s = result[0]
    assert sorted(it.path for it in s.train + s.val + s.test) == [
        "a/a00.png", "a/a01.png", "a/a02.png", "a/also_b/b00.png", "a/also_b/b01.png", "a/also_b/b02.png",
        "b/b00.png", "b/b01.png", "b/b02.png"]


def test_permission_denied_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _class_folders(tmp_path / "d", {"a": 3, "b": 3})
    locked = _img(root / "a" / "locked.png")
    locked.chmod(0)
    if sys.platform == "win32" or os.geteuid() == 0:
        # root reads anything: make opening that one file fail the way it fails for other users
        real_open = Image.open

        def fake_open(fp, *args, **kwargs):
            if str(fp).endswith("locked.png"):
                raise PermissionError(13, "Permission denied", str(fp))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(data.decode.Image, "open", fake_open)
    s = scan_folder(root, max_bad_fraction=0.5)
    assert dict(s.skipped) == {"a/locked.png": "permission denied"}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_skipped_without_memory_blowup(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 4, "b": 4})
    _png_header_only(root / "a" / "bomb.png", 100_000, 100_000)  # Pillow raises DecompressionBombError
    _png_header_only(root / "b" / "huge.png", 10_000, 10_000)  # Pillow only warns: 1e8 > MAX_IMAGE_PIXELS
    # The peak memory of the scan in a fresh process: ru_maxrss is a lifetime peak, which earlier tests in this
    # process have already raised; Pillow decodes through C malloc, which tracemalloc does not see.
    import json
    import subprocess

    code = ("import json, resource, sys, warnings\nfrom edgetl.data import scan_folder\n"
            "warnings.simplefilter('ignore')\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "s = scan_folder(sys.argv[1], max_bad_fraction=0.5)\n"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
            "print(json.dumps({'grown_kib': grown, 'skipped': dict(s.skipped)}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    reasons = result["skipped"]
    assert reasons["a/bomb.png"].startswith("too large")
    assert reasons["b/huge.png"].startswith("too large (10000x10000")
    assert result["grown_kib"] / 1024 < 200  # decoding huge.png would take 286 MiB
    with pytest.raises(DataError, match="huge.png': too large"):
        load_image(root / "b" / "huge.png", (8, 8))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_warning_as_error_is_still_too_large(tmp_path: Path) -> None:
    _png_header_only(tmp_path / "huge.png", 10_000, 10_000)
    assert data.probe_image(tmp_path / "huge.png").startswith("too large")


# ---------------------------------------------------------------------------------------------- manifest, loading


def test_manifest_round_trip_and_fingerprint(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 5, "b": 5})
    (root / "a" / "bad.jpg").write_bytes(b"")
    s = scan_folder(root, max_bad_fraction=0.2)
    m = s.to_manifest()
    assert set(m) >= {"root", "layout", "class_names", "train", "val", "test", "skipped", "fingerprint"}
    back = DataSplits.from_manifest(m)
    assert back == s and back.fingerprint() == m["fingerprint"]
    victim = root / s.train[0].path
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert s.fingerprint() != m["fingerprint"]  # a rewritten file is a different data set
    with pytest.raises(DataError, match="manifest is invalid"):
        DataSplits.from_manifest({"root": "x"})


def test_load_images_order_progress_and_errors(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"a": 3, "b": 3, "c": 3})
    items = [Item(f"{c}/{c}{i:02d}.png", k) for k, c in enumerate("abc") for i in range(3)]
    calls: list[tuple[int, int]] = []
    arr = load_images(root, items, (6, 10), workers=3, on_progress=lambda d, n: calls.append((d, n)))
    assert arr.shape == (9, 6, 10, 3) and arr.dtype == np.uint8
    for i, it in enumerate(items):
        assert (arr[i] == COLOURS[it.path[0]]).all()
    assert calls[-1] == (9, 9) and len(calls) == 9
    with pytest.raises(DataError, match="missing.png"):
        load_images(root, [*items, Item("a/missing.png", 0)], (6, 10))
    assert load_images(root, [], (6, 10)).shape == (0, 6, 10, 3)


def test_scan_eval_folder_maps_onto_model_classes(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", {"b": 2, "c": 3})
    items, found = scan_eval_folder(root, ["a", "b", "c"])
    assert found == ["b", "c"]
    assert sorted((it.path, it.label) for it in items)[:1] == [("b/b00.png", 1)]
    assert [it.label for it in items].count(2) == 3
    with pytest.raises(DataError, match=r"\['c'\] .*not classes of the model.*knows: a, b"):
        scan_eval_folder(root, ["a", "b"])
    split = tmp_path / "s"
    _class_folders(split / "train", {"a": 2, "b": 2})
    _class_folders(split / "test", {"a": 1})
    items, found = scan_eval_folder(split, ["a", "b"])
    assert found == ["a"] and [it.path for it in items] == ["test/a/a00.png"]
    _class_folders(tmp_path / "s2" / "train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="no test/ folder"):
        scan_eval_folder(tmp_path / "s2", ["a", "b"])


# ---------------------------------------------------------------------------------------------- demo data


def test_demo_data_is_deterministic_decodable_and_guarded(tmp_path: Path) -> None:
    kw = {"classes": ("circles", "squares"), "per_class": 11, "size_range": (24, 48)}
    info = write_demo_data(tmp_path / "one", seed=5, **kw)
    write_demo_data(tmp_path / "two", seed=5, **kw)
    write_demo_data(tmp_path / "three", seed=6, **kw)

    def files(p: Path) -> dict[str, bytes]:
        return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}

    assert files(tmp_path / "one") == files(tmp_path / "two")
    assert files(tmp_path / "one") != files(tmp_path / "three")
    assert info["counts"] == {"circles": 11, "squares": 11} and info["total"] == 22
    assert {"jpeg-cmyk", "png-16bit", "gif", "jpeg-exif-rotated", "png-rgba"} <= set(info["kinds"])
    s = scan_folder(tmp_path / "one", max_bad_fraction=0)
    assert s.skipped == [] and s.class_names == ["circles", "squares"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left behind
    with pytest.raises(RunExistsError, match="--force"):
        write_demo_data(tmp_path / "one", seed=5, **kw)
    write_demo_data(tmp_path / "one", seed=6, force=True, **kw)
    assert files(tmp_path / "one") == files(tmp_path / "three")
    with pytest.raises(UsageError, match="at least 2 different class names"):
        write_demo_data(tmp_path / "x", classes=("a",))


# ---------------------------------------------------------------------------------------------- tf.data


@pytest.fixture(scope="module")
def small_splits(tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    root = tmp_path_factory.mktemp("tfdata") / "d"
    write_demo_data(root, classes=("circles", "stripes"), per_class=6, size_range=(24, 64), seed=1)
    write_messy_files(root / "circles")
    return scan_folder(root, val_split=0, test_split=0, max_bad_fraction=0.5)


def test_make_dataset_matches_load_image(small_splits: DataSplits) -> None:
    s = small_splits
    ds = data.make_dataset(s.root, s.train, (20, 28), batch_size=5)
    batches = list(ds.as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert batches[0][0].shape == (5, 20, 28, 3)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= 0 and x.max() <= 255
    ref = load_images(s.root, s.train, (20, 28))
    # Plain JPEG/PNG files go through TensorFlow's decoders: Pillow's pixels within the stated tolerance.
    from edgetl.data.native import NATIVE_TOLERANCE

    assert np.abs(x - ref.astype(np.float32)).max() <= NATIVE_TOLERANCE["max"]
    exact = np.concatenate([b[0] for b in data.make_dataset(s.root, s.train, (20, 28), 5, decoder="pillow")
                            .as_numpy_iterator()])
    np.testing.assert_array_equal(exact, ref.astype(np.float32))  # decoder="pillow": the same decoder exactly
    assert y.tolist() == [it.label for it in s.train]
    spec = ds.element_spec
    assert tuple(spec[0].shape) == (None, 20, 28, 3)


def test_make_dataset_shuffle_cache_and_augment(small_splits: DataSplits) -> None:
    s = small_splits
    plain = np.concatenate([b[0] for b in data.make_dataset(s.root, s.train, (24, 24), 64).as_numpy_iterator()])

    def epoch(ds) -> tuple[np.ndarray, np.ndarray]:
        x, y = next(ds.as_numpy_iterator())
        return x, y

    shuffled = data.make_dataset(s.root, s.train, (24, 24), 64, shuffle=True, seed=1, cache=True)
    x1, y1 = epoch(shuffled)
    assert sorted(map(bytes, x1.astype(np.uint8))) == sorted(map(bytes, plain.astype(np.uint8)))
    x2, y2 = epoch(data.make_dataset(s.root, s.train, (24, 24), 64, shuffle=True, seed=1, cache=True))
    np.testing.assert_array_equal(y1, y2)  # the same seed, the same order

    aug = data.make_dataset(s.root, s.train, (24, 24), 64, augment=True, seed=3)
    xa, _ = epoch(aug)
    assert xa.shape == plain.shape and xa.dtype == np.float32
    assert np.abs(xa - plain).mean() > 1.0
    assert xa.min() >= 0 and xa.max() <= 255 + 1e-3
    layers = data.augmentation_layers(0)
    assert [type(la).__name__ for la in layers] == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]


def test_make_dataset_names_an_unreadable_file(tmp_path: Path) -> None:
    import tensorflow as tf

    root = _class_folders(tmp_path / "d", {"a": 1})
    (root / "a" / "gone.png").write_bytes(b"")
    ds = data.make_dataset(root, [Item("a/a00.png", 0), Item("a/gone.png", 0)], (8, 8), 2)
    with pytest.raises(tf.errors.OpError, match="gone.png"):
        list(ds.as_numpy_iterator())
