"""What training feeds on: a split's images as tf.data, and the frozen base's features computed once.

The fast path runs the frozen base over every image a single time and trains the head on the
cached features. Without augmentation (the only case it is used) that is exact, since the base is
frozen and in inference mode, and it spares the base's forward pass at every epoch, which dominates
naive transfer learning on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

    from edgetl.core.progress import Reporter
    from edgetl.data.splits import DataSplits, Item
    from edgetl.model.classifier import Classifier
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import Placement

Features = tuple[np.ndarray, np.ndarray]  # (features (n, d) float32, labels (n,) int32)


def labels_of(items: list[Item]) -> np.ndarray:
    """The items' class indices as int32."""
    return np.array([i.label for i in items], dtype=np.int32)


def split_dataset(splits: DataSplits, name: str, size: int, cfg: TrainConfig, augment: bool) -> tf.data.Dataset | None:
    """Images and labels of split `name` in batches (train shuffled), or None when the split is empty."""
    from edgetl.data.pipeline import make_dataset

    items = splits.split(name)
    if not items:
        return None
    ds = make_dataset(splits.root, items, (size, size), cfg.batch_size, shuffle=(name == "train"),
                      seed=cfg.seed, augment=augment)
    return shard_by_data(ds)


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with element-wise auto-sharding, so every strategy can distribute it."""
    # The pipeline starts from a list of paths, not files tf.data can shard: workers shard by element.
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def feature_dataset(xy: Features, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Cached features and labels as batches (shuffled each epoch when asked), sharded like the image data."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(xy)
    if shuffle:
        ds = ds.shuffle(len(xy[1]), seed=seed, reshuffle_each_iteration=True)
    return shard_by_data(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def extract_batch_size(batch_size: int, placement: Placement) -> int:
    """Batch size of the feature pass: large on accelerators, at most 32 on a CPU.

    On a CPU larger batches are slower per image (MobileNetV2-224 on 2 cores: 300 images in 2.5 s
    at batch 32 and 3.4-3.9 s at 64; BENCHMARKS.md, train), since activations stop fitting in cache
    and the first batch, which includes the kernels' set-up, takes longer.
    """
    if any("GPU" in d.upper() or "TPU" in d.upper() for d in placement.devices):
        return max(batch_size, 64)
    return max(1, min(batch_size, 32))


def extract_features(clf: Classifier, splits: DataSplits, names: list[str], size: int, batch_size: int,
                     reporter: Reporter, placement: Placement) -> dict[str, Features]:
    """Run the frozen base once over the images of these splits: the fast path's whole cost.

    One pass over all splits together: one traced predict function and full batches, instead of
    a trace and a ragged last batch per split.

    Returns:
        Per split name, (features, labels) in the split's item order.
    """
    import keras

    from edgetl.data.pipeline import make_dataset

    if not names:
        return {}
    items = [item for name in names for item in splits.split(name)]
    extract_batch = extract_batch_size(batch_size, placement)
    ds = make_dataset(splits.root, items, (size, size), extract_batch, shuffle=False)
    steps = -(-len(items) // extract_batch)
    reporter.start(f"features of {len(items)} images", steps)

    class _Tick(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
            reporter.advance(1)

    if placement.name == "mirrored":
        feats = clf.extractor.predict(ds, verbose=0, callbacks=[_Tick()])  # split across the replicas
    else:
        # One compiled function over the batches: about twice the throughput of Keras' predict on a
        # CPU (measured: MobileNetV2-224, 52 vs 28 img/s). Under multi-worker training every worker
        # needs every feature, and this reads the mirrored weights locally.
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
        def extract(images: tf.Tensor) -> tf.Tensor:
            return clf.extractor(images, training=False)

        parts = []
        for images, _ in ds:
            parts.append(np.asarray(extract(images), dtype=np.float32))
            reporter.advance(1)
        feats = np.concatenate(parts)
    reporter.finish()
    feats = np.asarray(feats, dtype=np.float32)
    out, start = {}, 0
    for name in names:
        split_items = splits.split(name)
        out[name] = feats[start:start + len(split_items)], labels_of(split_items)
        start += len(split_items)
    return out
