"""The detail measure: sharp photos keep their size, upscaled thumbnails are found out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edgetl.data.detail import Detail, detail_advice, measure_detail, photo_detail

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowers"


def _texture(h: int, w: int, seed: int = 0) -> Image.Image:
    """A sharp photo stand-in: 1/f ("pink") noise, the power spectrum of natural photos, at full resolution."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(h, w))
    channels = [np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((h, w))))) for _ in range(3)]
    x = np.stack(channels, -1)
    return Image.fromarray(((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8))


def _upscaled(small: int, stored: int, seed: int = 0) -> Image.Image:
    """A thumbnail of side `small` enlarged to `stored`, as photo sites and scrapers make them."""
    return _texture(small, small, seed).resize((stored, stored), Image.Resampling.BICUBIC)


def test_sharp_photos_keep_their_size(tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"sharp{i}.png"
        _texture(240, 320, i).save(p)
        paths.append(p)
    d = measure_detail(paths, 224)
    assert d == Detail(stored_px=240, detail_px=240, sampled=4)
    assert detail_advice(d, 224) is None


def test_upscaled_thumbnails_are_found(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"thumb{i}.jpg"
        _upscaled(32, 128, i).save(p, quality=90)
        paths.append(p)
    d = measure_detail(paths, 224)
    assert d is not None and d.stored_px == 128 and 24 <= d.detail_px <= 48
    advice = detail_advice(d, 224)
    assert advice is not None and f"{d.detail_px} px of detail" in advice and "224 px input" in advice
    # The same photos are no news to a model whose input is near their detail.
    assert detail_advice(d, 64) is None


def test_blurred_photo_detail_falls_with_the_blur() -> None:
    sharp = _texture(256, 256)
    soft = sharp.filter(ImageFilter.GaussianBlur(2))
    softer = sharp.filter(ImageFilter.GaussianBlur(6))
    _, d_sharp = photo_detail(sharp, 224)
    _, d_soft = photo_detail(soft, 224)
    _, d_softer = photo_detail(softer, 224)
    assert d_sharp == 256 and d_softer < d_soft < d_sharp


def test_large_jpeg_is_measured_in_draft_mode_and_unreadable_files_are_skipped(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    _texture(1500, 2000).save(big, quality=90)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    d = measure_detail([big, bad], 96)
    assert d is not None and d.sampled == 1 and d.stored_px == 1500 and d.detail_px == 1500
    assert measure_detail([bad], 96) is None
    buf = io.BytesIO()
    _texture(8, 8).save(buf, format="PNG")
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(buf.getvalue())
    assert measure_detail([tiny], 224) == Detail(8, 8, 1)  # nothing in the ladder is smaller: detail = size


@pytest.mark.realdata
def test_real_flowers_carry_about_32_px() -> None:
    if not REALDATA.is_dir():
        pytest.skip(f"real photos not here ({REALDATA})")
    paths = sorted(p for c in sorted(REALDATA.iterdir()) for p in sorted(c.iterdir())[:8])
    d = measure_detail(paths, 224)
    # Stored at 128x128 but enlarged from thumbnails: their round trip through 32-48 px loses nothing visible.
    assert d is not None and d.stored_px == 128 and d.detail_px <= 48
    assert detail_advice(d, 224) is not None


def test_train_reports_upscaled_photos_and_records_their_detail(tmp_path: Path, line_reporter: type) -> None:
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    data = tmp_path / "data"
    for c, cls in enumerate(("a", "b")):
        (data / cls).mkdir(parents=True)
        for i in range(8):
            # Thumbnails of 16 px stored at 64: a 96 px model sees about 16 px of detail.
            _upscaled(16, 64, seed=100 * c + i).save(data / cls / f"{i}.jpg", quality=90)

    lines = line_reporter()
    cfg = TrainConfig(data=str(data), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=96,
                      epochs=1, batch_size=8, seed=0, output=str(tmp_path / "run"))
    train(cfg, lines)
    advice = [m for m in lines.lines if "px of detail" in m]
    assert len(advice) == 1 and "96 px input" in advice[0]
    detail = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["detail"]
    assert detail["stored_px"] == 64 and detail["detail_px"] <= 32 and 8 <= detail["sampled"] <= 16  # train split
