"""The feature cache on disk (issue #29): written batch by batch, memory-mapped back, fed to the head in batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.data.splits import DataSplits, Item
from edgetl.train.features import (
    FeatureReader,
    FeatureWriter,
    cache_paths,
    feature_dataset,
    head_probabilities,
    load_cached,
)


def _splits(sizes: dict[str, int]) -> DataSplits:
    out = {name: [Item(f"{name}/{i:03d}.jpg", i % 3) for i in range(n)] for name, n in sizes.items()}
    return DataSplits(root="/nowhere", class_names=["a", "b", "c"], **out)


def _write(splits: DataSplits, names: list[str], feats: np.ndarray, batch: int, cache: Path | None) -> FeatureWriter:
    writer = FeatureWriter(splits, names, cache)
    with writer:
        for i in range(0, len(feats), batch):  # batches straddle the splits' boundaries
            writer.write(feats[i:i + batch])
    return writer


def test_features_land_in_memory_mapped_npy_files_per_split(tmp_path: Path) -> None:
    splits = _splits({"train": 23, "val": 7, "test": 5})
    names = ["train", "val", "test"]
    feats = np.random.default_rng(0).normal(size=(35, 12)).astype(np.float32)
    out = _write(splits, names, feats, 8, tmp_path / "cache").result()
    start = 0
    for name in names:
        n = len(splits.split(name))
        x_path, y_path = cache_paths(tmp_path / "cache", name)
        on_disk = np.load(x_path, mmap_mode="r")  # a plain .npy any tool can map
        assert isinstance(on_disk, np.memmap) and on_disk.shape == (n, 12) and on_disk.dtype == np.float32
        np.testing.assert_array_equal(on_disk, feats[start:start + n])
        np.testing.assert_array_equal(np.load(y_path), [it.label for it in splits.split(name)])
        x, y = out[name]
        assert isinstance(x, np.memmap)  # handed back mapped, not read into memory
        np.testing.assert_array_equal(x, feats[start:start + n])
        assert y.dtype == np.int32
        start += n
    # In RAM without a folder: the same features.
    mem = _write(splits, names, feats, 8, None).result()
    for name in names:
        np.testing.assert_array_equal(mem[name][0], out[name][0])


def test_an_interrupted_pass_leaves_no_cache_file(tmp_path: Path) -> None:
    splits = _splits({"train": 10, "val": 4})
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt), FeatureWriter(splits, ["train", "val"], cache) as writer:
        writer.write(np.ones((6, 4), np.float32))
        raise KeyboardInterrupt
    assert not cache.exists() or not any(cache.iterdir())
    with pytest.raises(RuntimeError, match="6 rows for 14 images"), FeatureWriter(splits, ["train", "val"],
                                                                                  cache) as writer:
        writer.write(np.ones((6, 4), np.float32))
    assert not any(cache.iterdir())
    assert load_cached(cache, "train") is None


def test_a_truncated_or_mismatched_cache_is_computed_again(tmp_path: Path) -> None:
    splits = _splits({"train": 10})
    cache = tmp_path / "cache"
    _write(splits, ["train"], np.ones((10, 4), np.float32), 4, cache)
    assert load_cached(cache, "train") is not None
    x_path, y_path = cache_paths(cache, "train")
    np.save(y_path, np.zeros(9, np.int32))  # labels of another split size
    assert load_cached(cache, "train") is None
    x_path.write_bytes(x_path.read_bytes()[:100])  # cut short
    np.save(y_path, np.zeros(10, np.int32))
    assert load_cached(cache, "train") is None


def test_reader_reads_rows_in_the_order_asked(tmp_path: Path) -> None:
    splits = _splits({"train": 50})
    feats = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    xy = _write(splits, ["train"], feats, 16, tmp_path / "cache").result()["train"]
    reader = FeatureReader(xy)
    for idx in ([3, 4, 5, 6], [49, 0, 1, 2, 17, 16], list(range(50)), []):
        x, y = reader.rows(np.array(idx, dtype=np.int64))
        np.testing.assert_array_equal(x, feats[idx].reshape(len(idx), 7))
        np.testing.assert_array_equal(y, np.array([i % 3 for i in idx], dtype=np.int32))


def test_head_is_fed_the_batches_an_in_memory_shuffle_gives(tmp_path: Path) -> None:
    """Training from the cache sees exactly the batches, in the order, that training from arrays in RAM saw."""
    import tensorflow as tf

    splits = _splits({"train": 70})
    feats = np.random.default_rng(2).normal(size=(70, 5)).astype(np.float32)
    xy = _write(splits, ["train"], feats, 16, tmp_path / "cache").result()["train"]
    labels = np.array([i % 3 for i in range(70)], dtype=np.int32)
    # What the head was fed before the cache went to disk: the arrays themselves through tf.data.
    before = tf.data.Dataset.from_tensor_slices((feats, labels)).shuffle(70, seed=7, reshuffle_each_iteration=True)
    before = before.batch(16)
    now = feature_dataset(xy, 16, shuffle=True, seed=7)
    epochs_before = [[(x.numpy(), y.numpy()) for x, y in before] for _ in range(2)]
    epochs_now = [[(x.numpy(), y.numpy()) for x, y in now] for _ in range(2)]
    assert not np.array_equal(epochs_now[0][0][1], epochs_now[1][0][1])  # reshuffled each epoch
    for a, b in zip(epochs_before, epochs_now, strict=True):
        assert len(a) == len(b) == 5
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    plain = [y.numpy() for _, y in feature_dataset(xy, 32, shuffle=False, seed=7)]
    np.testing.assert_array_equal(np.concatenate(plain), labels)


def test_head_is_fed_every_row_once_an_epoch_in_a_new_seeded_order(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SHUFFLE_BUFFER_ROWS (the stateless permutation): each epoch every row exactly once, with its own label,
    in batches of the batch size; a new order each epoch; the same orders for the same seed (a rerun trains the same
    head), others for another seed."""
    import keras

    from edgetl.train import features

    monkeypatch.setattr(features, "SHUFFLE_BUFFER_ROWS", 50)

    splits = _splits({"train": 70})
    feats = np.random.default_rng(2).normal(size=(70, 5)).astype(np.float32)
    xy = _write(splits, ["train"], feats, 16, tmp_path / "cache").result()["train"]
    labels = np.array([i % 3 for i in range(70)], dtype=np.int32)

    def orders(seed: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(42)  # as the train job sets it
        ds = feature_dataset(xy, 16, shuffle=True, seed=seed)
        out = []
        for _ in range(3):
            batches = [(x.numpy(), y.numpy()) for x, y in ds]
            assert [len(y) for _, y in batches] == [16, 16, 16, 16, 6]
            x = np.concatenate([b[0] for b in batches])
            rows = np.array([int(np.flatnonzero((feats == r).all(1))[0]) for r in x])
            np.testing.assert_array_equal(np.sort(rows), np.arange(70))  # every row once
            np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[rows])
            out.append(rows)
        return out

    first = orders(7)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert not np.array_equal(first[0], np.arange(70))
    for a, b in zip(first, orders(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], orders(8)[0])
    plain = [y.numpy() for _, y in feature_dataset(xy, 32, shuffle=False, seed=7)]
    np.testing.assert_array_equal(np.concatenate(plain), labels)


def test_head_probabilities_match_predict(tmp_path: Path) -> None:
    import keras

    splits = _splits({"val": 300})
    feats = np.random.default_rng(3).normal(size=(300, 6)).astype(np.float32)
    xy = _write(splits, ["val"], feats, 32, tmp_path / "cache").result()["val"]
    head = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    np.testing.assert_allclose(head_probabilities(head, xy, batch_size=64), head.predict(feats, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_interrupted_run_keeps_its_cache_and_resume_reads_it(demo_dir: Path, tmp_path: Path) -> None:
    """A run stopped in the head stage leaves the cache on disk; resume trains from it without a new pass."""
    from edgetl.core.progress import Reporter
    from edgetl.train import resume, train
    from edgetl.train.config import TrainConfig

    class StopInHead(Reporter):
        def advance(self, n: int = 1) -> None:
            super().advance(n)
            if getattr(self, "_label", "").startswith("head"):
                raise KeyboardInterrupt

        def start(self, label: str, total: int | None = None) -> None:
            self._label = label
            super().start(label, total)

    out = tmp_path / "run"
    cfg = TrainConfig(data=str(demo_dir), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=32,
                      epochs=2, batch_size=16, seed=0, output=str(out))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, StopInHead())
    x_path, _ = cache_paths(out / "cache", "train")
    assert np.load(x_path, mmap_mode="r").shape[1] > 0
    result = resume(out)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert "features_base" not in manifest["training"]["seconds"]  # no second pass over the images
    assert result.metrics["val"] is not None
    assert not (out / "cache").exists()  # a complete run keeps no cache
