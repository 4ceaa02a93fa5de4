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
                     reporter: Reporter, placement: Placement, *, engine: str = "auto",
                     record: dict[str, Any] | None = None) -> dict[str, Features]:
    """Run the frozen base once over the images of these splits: the fast path's whole cost.

    One pass over all splits together: one traced predict function and full batches, instead of
    a trace and a ragged last batch per split. TensorFlow computes the first batches; then, on a
    CPU, the base converted to float32 TFLite (XNNPACK) takes over when the cost model of
    edgetl.train.engine says it pays (engine "auto"), always ("tflite") or never ("keras"), provided
    its features match TensorFlow's on a batch within engine.FEATURE_TOLERANCE.

    Args:
        engine: "auto", "keras" or "tflite" (edgetl.train.engine.ENGINES).
        record: when given, filled with the engine used, why, its conversion and check figures, and the
            seconds of the pass's parts (record["seconds"]: edgetl.train.walltime's features_* parts).

    Returns:
        Per split name, (features, labels) in the split's item order.
    """
    import time

    import keras

    from edgetl.data.pipeline import make_dataset

    if not names:
        return {}
    items = [item for name in names for item in splits.split(name)]
    extract_batch = extract_batch_size(batch_size, placement)
    t0 = time.perf_counter()
    ds = make_dataset(splits.root, items, (size, size), extract_batch, shuffle=False)
    input_seconds = time.perf_counter() - t0
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
        feats = _single_device_pass(clf, ds, len(items), size, reporter, placement, engine,
                                    record if record is not None else {})
    reporter.finish()
    feats = np.asarray(feats, dtype=np.float32)
    out, start = {}, 0
    for name in names:
        split_items = splits.split(name)
        out[name] = feats[start:start + len(split_items)], labels_of(split_items)
        start += len(split_items)
    if record is not None:
        parts = {"input": input_seconds, **record.get("seconds", {})}
        parts["other"] = max(0.0, time.perf_counter() - t0 - sum(parts.values()))  # what no part names
        record["seconds"] = parts
    return out


def _single_device_pass(clf: Classifier, ds: tf.data.Dataset, total: int, size: int, reporter: Reporter,
                        placement: Placement, engine: str, record: dict[str, Any]) -> np.ndarray:
    """The pass on one device: TensorFlow for the first batches, then the engine the cost model picks.

    Fills `record` with the engine, why, and the seconds of the pass's parts (record["seconds"]).
    """
    import itertools
    import threading
    import time

    import tensorflow as tf

    from edgetl.train import engine as engines

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    def extract(images: tf.Tensor) -> tf.Tensor:
        return clf.extractor(images, training=False)

    t0 = time.perf_counter()
    extract.get_concrete_function()
    trace_seconds = time.perf_counter() - t0
    cpu_only = not placement.mixed_precision and not any("GPU" in d.upper() or "TPU" in d.upper()
                                                         for d in placement.devices)
    # The first batch includes the kernels' set-up; the second gives TensorFlow's steady speed, which the choice
    # needs only to weigh a conversion: with none to make (forced, or cached), it is made at the first batch.
    t0 = time.perf_counter()
    cached = engine == "auto" and cpu_only and engines.has_cached_conversion(clf, size)
    lookup = time.perf_counter() - t0  # hashing the weights: part of the conversion's cost
    decide_at = 0 if engine == "tflite" or cached else 1
    record.update(engine="keras", reason="too few batches to decide")
    # Where the pass's time goes (edgetl.train.walltime: the features_* parts).
    spent = {"trace": trace_seconds, "base": 0.0, "wait": 0.0, "convert": lookup, "check": 0.0}
    fast: engines.TFLiteExtractor | None = None
    parts: list[np.ndarray] = []
    done = 0
    t0 = time.perf_counter()
    batches = iter(ds)  # starts the input pipeline's threads: waiting for the input
    spent["wait"] += time.perf_counter() - t0
    for i in itertools.count():
        t0 = time.perf_counter()
        try:
            images, _ = next(batches)
        except StopIteration:
            spent["wait"] += time.perf_counter() - t0
            break
        t1 = time.perf_counter()
        spent["wait"] += t1 - t0
        if fast is not None:
            parts.append(fast(images))
            spent["base"] += time.perf_counter() - t1
        else:
            part = np.asarray(extract(images), dtype=np.float32)
            seconds = time.perf_counter() - t1
            spent["base"] += seconds
            parts.append(part)
            if i == decide_at:
                choice = engines.decide(engine, cpu_only=cpu_only, remaining=total - done - len(part),
                                        seconds_per_image=seconds / max(len(part), 1), trace_seconds=trace_seconds,
                                        cached=cached)
                t2 = time.perf_counter()
                fast = _switch(clf, size, images, part, seconds, choice, reporter, record,
                               extract.get_concrete_function())
                switch = time.perf_counter() - t2
                spent["convert"] = lookup + float(record.get("convert_seconds", 0.0))
                spent["check"] = max(0.0, switch - spent["convert"] + lookup)
        done += len(parts[-1])
        reporter.advance(1)
    # Ending the pass is timed too: the features joined, then the input pipeline, the interpreter and the traced
    # function released now rather than at the return (unnamed seconds were seen here on loaded machines).
    t0 = time.perf_counter()
    feats = np.concatenate(parts)
    # Deleting the input pipeline's iterator waits for tf.data's background threads to stop: milliseconds mostly,
    # but 1.9-2.9 s in 3 of 10 runs on 2 loaded cores (and up to 38 s seen as "other" before this part had a name).
    # Nothing needs that wait: a daemon thread deletes it (the op runs without the GIL) while training goes on.
    holder = [batches]
    del batches
    threading.Thread(target=holder.clear, name="edgetl-release-input", daemon=True).start()
    del fast, extract
    spent["release"] = time.perf_counter() - t0
    record["images"] = done
    record["seconds"] = spent
    return feats


def _switch(clf: Classifier, size: int, images: tf.Tensor, reference: np.ndarray, keras_seconds: float, choice: Any,
            reporter: Reporter, record: dict[str, Any], concrete: Any) -> Any:
    """The TFLite extractor when the choice is TFLite and it matches TensorFlow's features on the batch
    TensorFlow just computed (and, chosen by the cost model, beats its time there); else None. Logs why.
    concrete: the pass's traced TensorFlow function, which the conversion starts from."""
    import logging
    import time

    from edgetl.train import engine as engines

    log = logging.getLogger("edgetl")
    record.update(engine=choice.engine, reason=choice.reason)
    fast = None
    if choice.engine == "tflite":
        try:
            fast = engines.TFLiteExtractor(clf, size, concrete=concrete)
        except Exception as exc:  # noqa: BLE001 - any conversion failure leaves the pass on TensorFlow
            from edgetl.core.errors import first_line

            record.update(engine="keras", reason=f"the conversion to TFLite failed ({first_line(exc)})")
        else:
            fast(images[:1])  # XNNPACK packs its weights at the first invoke: not part of the speed
            t0 = time.perf_counter()
            check = fast(images)
            speedup = keras_seconds / max(time.perf_counter() - t0, 1e-9)
            diff = engines.max_relative_diff(reference, check)
            record.update(convert_seconds=round(fast.convert_seconds, 2), max_relative_diff=float(f"{diff:.3g}"),
                          measured_speedup=round(speedup, 2), threads=fast.threads, cached=fast.cached,
                          keras_ms=round(1000 * keras_seconds / len(check), 2),  # both engines, the same batch
                          tflite_ms=round(1000 * keras_seconds / speedup / len(check), 2))
            if not diff <= engines.FEATURE_TOLERANCE:
                fast.forget()  # a cached conversion that fails is not used again
                record.update(engine="keras", reason=f"TFLite features differ from TensorFlow's by {diff:.2g} "
                                                     f"(tolerance {engines.FEATURE_TOLERANCE:g})")
                fast = None
            elif speedup < 1 and not choice.reason.startswith("--"):
                record.update(engine="keras", reason=f"TFLite ran {speedup:.2f}x TensorFlow's speed on this base")
                fast = None
    if fast is not None:
        how = "loaded from the cache in" if fast.cached else "converted in"
        message = (f"feature pass: TFLite float32 with XNNPACK on {fast.threads} threads ({record['reason']}; "
                   f"{how} {fast.convert_seconds:.1f} s, {record['measured_speedup']:.1f}x TensorFlow's speed, "
                   f"features within {record['max_relative_diff']:.1g} of TensorFlow's)")
    else:
        message = f"feature pass: TensorFlow ({record['reason']})"
    log.info(message)
    reporter.info(message)
    return fast
