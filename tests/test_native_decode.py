"""TensorFlow's own decoders for plain JPEG/PNG files, Pillow for the awkward ones: same pixels either way."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data.native import JPEG_RATIOS, NATIVE_TOLERANCE, PILLOW, PNG, native_branch
from edgetl.data.pipeline import make_dataset
from edgetl.data.splits import Item

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth image with edges, closer to a photo than noise (JPEG artefacts stay realistic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) % 64) * 4], -1) + rng.normal(0, 8, (h, w, 3))
    arr[h // 3:h // 2, w // 4:w // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _exif_rotated_jpeg(path: Path) -> None:
    im = _photo(80, 60, 9)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    im.save(path, "JPEG", exif=exif.tobytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("decode")
    plain, awkward = [], []
    for i, (w, h) in enumerate([(96, 96), (500, 375), (1100, 800), (57, 131)]):
        _photo(w, h, i).save(root / f"rgb{i}.jpg", "JPEG", quality=90)
        plain.append(f"rgb{i}.jpg")
    _photo(300, 200, 5).save(root / "progressive.jpg", "JPEG", progressive=True)
    _photo(200, 150, 6).convert("L").save(root / "gray.jpg", "JPEG")
    _photo(300, 200, 7).save(root / "rgb.png")
    _photo(120, 90, 8).convert("L").save(root / "gray.png")
    plain += ["progressive.jpg", "gray.jpg", "rgb.png", "gray.png"]
    _photo(100, 80, 10).convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(root / "sixteen.png")
    _exif_rotated_jpeg(root / "rotated.jpg")
    _photo(90, 70, 11).convert("P").save(root / "palette.png")
    _photo(90, 70, 12).convert("RGBA").save(root / "alpha.png")
    buf = io.BytesIO()
    _photo(40, 40, 13).save(buf, "GIF")
    (root / "gif.jpg").write_bytes(buf.getvalue())
    awkward += ["cmyk.jpg", "sixteen.png", "rotated.jpg", "palette.png", "alpha.png", "gif.jpg"]
    return {"root": [str(root)], "plain": plain, "awkward": awkward}


def _decode(root: str, names: list[str], size: int, decoder: str) -> np.ndarray:
    ds = make_dataset(root, [Item(n, 0) for n in names], (size, size), 4, decoder=decoder)
    return np.concatenate([x.numpy() for x, _ in ds])


def test_the_header_picks_the_decoder(folder: dict[str, list[str]]) -> None:
    root = Path(folder["root"][0])
    for name in folder["plain"]:
        assert native_branch(root / name, (224, 224)) != PILLOW, name
    for name in folder["awkward"]:
        assert native_branch(root / name, (224, 224)) == PILLOW, name
    assert native_branch(root / "rgb.png", (96, 96)) == PNG
    # Pillow's draft scaling, matched: 1100x800 at 96 px decodes at 1/8, at 224 at 1/2; 500x375 at 96 at 1/2.
    assert native_branch(root / "rgb2.jpg", (96, 96)) == 2 + JPEG_RATIOS.index(8)
    assert native_branch(root / "rgb2.jpg", (224, 224)) == 2 + JPEG_RATIOS.index(2)
    assert native_branch(root / "rgb1.jpg", (96, 96)) == 2 + JPEG_RATIOS.index(2)
    assert native_branch(root / "missing.jpg", (96, 96)) == PILLOW


@pytest.mark.parametrize("size", [96, 224])
def test_native_decode_gives_pillows_pixels_on_plain_files(folder: dict[str, list[str]], size: int) -> None:
    root = folder["root"][0]
    native = _decode(root, folder["plain"], size, "auto").astype(int)
    pillow = _decode(root, folder["plain"], size, "pillow").astype(int)
    diff = np.abs(native - pillow)
    assert diff.max() <= NATIVE_TOLERANCE["max"]
    assert diff.reshape(len(native), -1).mean(1).max() <= NATIVE_TOLERANCE["mean"]


def test_awkward_files_keep_pillows_decode_exactly(folder: dict[str, list[str]]) -> None:
    root = folder["root"][0]
    names = folder["awkward"] + folder["plain"][:2]  # mixed in one pipeline, order kept
    auto, pillow = _decode(root, names, 64, "auto"), _decode(root, names, 64, "pillow")
    n = len(folder["awkward"])
    np.testing.assert_array_equal(auto[:n], pillow[:n])
    assert np.abs(auto[n:].astype(int) - pillow[n:]).max() <= NATIVE_TOLERANCE["max"]


@pytest.mark.realdata
@pytest.mark.skipif(not (REALDATA / "flowers").is_dir(), reason=f"no real data at {REALDATA}")
@pytest.mark.parametrize("size", [96, 224])  # the 128-px photos shrunk, and enlarged (no antialiasing needed)
def test_native_decode_matches_pillow_on_real_photos(size: int) -> None:
    files = sorted((REALDATA / "flowers").glob("*/*.jpg"))
    names = [str(p.relative_to(REALDATA / "flowers")) for p in random.Random(0).sample(files, 60)]
    native = _decode(str(REALDATA / "flowers"), names, size, "auto").astype(int)
    pillow = _decode(str(REALDATA / "flowers"), names, size, "pillow").astype(int)
    diff = np.abs(native - pillow)
    assert diff.max() <= NATIVE_TOLERANCE["max"]
    assert diff.reshape(len(names), -1).mean(1).max() <= NATIVE_TOLERANCE["mean"]
