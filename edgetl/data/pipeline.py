"""The tf.data pipeline of a split: decoded images and labels in batches, optionally augmented.

TensorFlow and Keras are imported inside the functions: importing edgetl.data must not import them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgetl.core.errors import UsageError
from edgetl.data.decode import load_image, parse_image_size
from edgetl.data.native import PILLOW, decode_native, native_branch

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from edgetl.data.splits import Item


# Batches made ahead of the consumer. Not tf.data.AUTOTUNE: its prefetch buffer doubles whenever the consumer finds
# it empty, which on busy cores is all the time, up to half the free RAM: a 200,000-image `edgetl train` grew by
# 200 MB in steps through its feature pass. The consumer (the base, the head) is the slow side; two batches suffice.
PREFETCH_BATCHES = 2
# The RAM tf.data's autotuner may still spend on the parallel maps' buffers (its default: half the free RAM).
RAM_BUDGET = 256 << 20


def bounded(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuner held to RAM_BUDGET bytes of buffers."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.ram_budget = RAM_BUDGET
    return ds.with_options(options)


def augmentation_layers(seed: int) -> list[keras.layers.Layer]:
    """Return fresh Keras 3 augmentation layers: horizontal flip, rotation, zoom and contrast (10%).

    They expect float images in 0..255 and are active only when called with training=True.
    """
    import keras

    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ]


def make_dataset(
    root: str | os.PathLike[str],
    items: Sequence[Item],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 42,
    augment: bool = False,
    cache: bool = False,
    decoder: str = "auto",
    readahead_bytes: int = 0,
) -> tf.data.Dataset:
    """Build a tf.data pipeline of (float32 images 0..255 (b, H, W, 3), int32 labels (b,)).

    decoder "auto": plain JPEG/PNG files (edgetl.data.native) are decoded by TensorFlow's own ops in the
    graph, the others by load_image (Pillow, in parallel threads); the two agree within
    native.NATIVE_TOLERANCE on plain files. "pillow": every file through load_image, exactly its output.
    Images stream through the pipeline: only a few batches are decoded at a time (unless cache).
    The order is the items' order unless shuffle (reshuffled each epoch, seeded).
    cache keeps decoded images in memory after the first epoch (augmentation still varies).
    readahead_bytes: decoded batches (uint8) the pipeline may hold ahead of its consumer, up to this many bytes
    (at least PREFETCH_BATCHES): started early, it decodes on cores the consumer leaves idle.
    An unreadable file stops iteration with an error naming it: scan the folder first.
    """
    import tensorflow as tf

    h, w = parse_image_size(image_size)
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}. Use for example --batch-size 32.")
    root = os.fspath(root)
    n = len(items)
    # Bytes, not str: file names that are not valid UTF-8 survive the round trip through TensorFlow.
    paths = tf.constant([os.fsencode(os.path.join(root, it.path)) for it in items], dtype=tf.string)
    labels = tf.constant([it.label for it in items], dtype=tf.int32)
    if decoder not in ("auto", "pillow"):
        raise UsageError(f"decoder '{decoder}' is not allowed. Use auto or pillow.")
    kinds = [native_branch(os.path.join(root, it.path), (h, w)) if decoder == "auto" else PILLOW for it in items]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels, tf.constant(kinds, dtype=tf.int32)))

    def _load(path: bytes) -> np.ndarray:
        return load_image(os.fsdecode(path), (h, w))

    def _pillow(path):
        img = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        img.set_shape((h, w, 3))
        return img

    def _decode_fn(path, label, kind):
        if not any(k != PILLOW for k in kinds):
            return _pillow(path), label
        img = tf.cond(tf.equal(kind, PILLOW), lambda: _pillow(path), lambda: decode_native(path, kind, (h, w)))
        img.set_shape((h, w, 3))
        return img, label

    if shuffle and not cache:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)  # shuffling paths is cheap
    # Plain graph functions (Python conditions on Python values only): tracing them without AutoGraph's rewrite
    # saves 0.5 s of every pipeline's construction, a fixed cost of each run and each search candidate.
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.map(plain(_decode_fn), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    if readahead_bytes > 0:  # held as uint8, a quarter of the float32 batches' bytes
        ds = ds.prefetch(max(PREFETCH_BATCHES, int(readahead_bytes) // (int(batch_size) * h * w * 3)))
    ds = ds.map(plain(lambda x, y: (tf.cast(x, tf.float32), y)), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        layers = augmentation_layers(seed)

        def _augment(x, y):
            for layer in layers:
                x = layer(x, training=True)
            return x, y

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return bounded(ds.prefetch(PREFETCH_BATCHES))
