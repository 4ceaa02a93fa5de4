"""What training feeds on: a split's images as tf.data, and the frozen base's features computed once.

The fast path runs the frozen base over every image a single time and trains the head on the
cached features. Without augmentation (the only case it is used) that is exact, since the base is
frozen and in inference mode, and it spares the base's forward pass at every epoch, which dominates
naive transfer learning on a CPU.

Memory stays flat in the number of images: the pass writes each batch's features straight to
`<cache>/<split>.npy` files (plain .npy, which np.load(..., mmap_mode="r") maps), and the head reads
them back in batches with positioned reads (FeatureReader): neither the features nor a copy of them
is ever whole in RAM. Positioned reads rather than the memory map itself, because a mapped page
that was read stays in the process's resident set until unmapped: a memory-mapped feeder shows the
whole file as RSS after one epoch, though the kernel could drop it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.fileio import atomic_path
from edgetl.train.passinput import PassInput, extract_batch_size, release_iterator

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from edgetl.core.progress import Reporter
    from edgetl.data.splits import DataSplits, Item
    from edgetl.model.classifier import Classifier
    from edgetl.train.config import TrainConfig
    from edgetl.train.conversion import AnySizeForward
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


def cache_paths(cache_dir: Path, split: str) -> tuple[Path, Path]:
    """The feature file (n, d) float32 and the label file (n,) int32 of a split in a feature cache folder."""
    return cache_dir / f"{split}.npy", cache_dir / f"{split}-labels.npy"


def load_cached(cache_dir: Path, split: str) -> Features | None:
    """A split's cached (features, labels), the features memory-mapped (nothing read yet); None when absent.

    An unreadable or inconsistent pair counts as absent: the pass computes it again.
    """
    x_path, y_path = cache_paths(cache_dir, split)
    if not (x_path.is_file() and y_path.is_file()):
        return None
    try:
        y = np.load(y_path)
        x = np.load(x_path, mmap_mode="r") if y.size else np.load(x_path)
    except (OSError, ValueError):
        return None
    if x.ndim != 2 or x.dtype != np.float32 or y.ndim != 1 or len(x) != len(y):
        return None
    return x, y.astype(np.int32, copy=False)


class FeatureWriter:
    """Takes the pass's features batch by batch, in the order of the splits' items, and files them per split.

    With a cache folder each split goes to its .npy files (cache_paths), written as the batches come and
    renamed into place together when the pass ends (an interrupted pass leaves no file); the result maps
    them back read-only. Without one, each split fills an array of its final size (no list of parts).
    Use as a context manager; `result()` after it closes.
    """

    def __init__(self, splits: DataSplits, names: list[str], cache_dir: Path | None) -> None:
        self.names = list(names)
        self.labels = {name: labels_of(splits.split(name)) for name in self.names}
        self.sizes = [len(self.labels[name]) for name in self.names]
        self.cache_dir = cache_dir
        self.seconds = 0.0  # writing to disk: the pass's "save" part
        self.done = 0
        self._stack = contextlib.ExitStack()
        self._sinks: list[Any] = []  # per split: an open file, or an array; made at the first batch
        self._closed = False

    def __enter__(self) -> FeatureWriter:
        self._stack.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        import time

        t0 = time.perf_counter()
        self._closed = True
        if exc[0] is None and self.done != sum(self.sizes):
            err = RuntimeError(f"the feature pass gave {self.done} rows for {sum(self.sizes)} images")
            self._stack.__exit__(RuntimeError, err, None)  # removes the partial files
            raise err
        self._stack.__exit__(*exc)  # closes the files, then renames them into place (or removes them)
        if exc[0] is None and self.cache_dir is not None:
            for name in self.names:
                with atomic_path(cache_paths(self.cache_dir, name)[1], suffix=".npy") as tmp:
                    np.save(tmp, self.labels[name])
        self.seconds += time.perf_counter() - t0

    def _open(self, dim: int) -> None:
        for name, n in zip(self.names, self.sizes, strict=True):
            if self.cache_dir is None:
                self._sinks.append(np.empty((n, dim), np.float32))
                continue
            tmp = self._stack.enter_context(atomic_path(cache_paths(self.cache_dir, name)[0], suffix=".npy"))
            f = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115 - closed by the stack
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                     "fortran_order": False, "shape": (n, dim)})
            self._sinks.append(f)

    def write(self, batch: np.ndarray) -> None:
        """File the next rows of features (b, d)."""
        import time

        t0 = time.perf_counter()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self._sinks:
            self._open(int(batch.shape[1]))
        row, start = 0, 0
        for sink, n in zip(self._sinks, self.sizes, strict=True):
            lo, hi = max(self.done + row, start), min(self.done + len(batch), start + n)
            if lo < hi:
                part = batch[lo - self.done:hi - self.done]
                if isinstance(sink, np.ndarray):
                    sink[lo - start:hi - start] = part
                else:
                    sink.write(part.tobytes())
                row = hi - self.done
            start += n
        if row != len(batch):
            raise RuntimeError(f"the feature pass gave more rows than its {sum(self.sizes)} images")
        self.done += len(batch)
        self.seconds += time.perf_counter() - t0

    def result(self) -> dict[str, Features]:
        """Per split, (features, labels): memory-mapped from the cache folder, or the arrays."""
        if not self._closed:
            raise RuntimeError("FeatureWriter.result() before the pass ended")
        if self.cache_dir is None:
            return {name: (x, self.labels[name]) for name, x in zip(self.names, self._sinks, strict=True)}
        out = {}
        for name in self.names:
            xy = load_cached(self.cache_dir, name)
            if xy is None:
                raise RuntimeError(f"the feature cache of split {name} in {self.cache_dir} could not be read back")
            out[name] = xy
        return out


class FeatureReader:
    """Rows of (features, labels) by index, in the order asked.

    Features memory-mapped from a .npy file (load_cached) are read with positioned reads, one per run of
    consecutive rows (an unshuffled batch is one read), so the process never holds the file's pages;
    features in RAM are indexed.
    """

    def __init__(self, xy: Features) -> None:
        x, y = xy
        self.labels = np.asarray(y, dtype=np.int32)
        self.n, self.dim = int(x.shape[0]), int(x.shape[1])
        self._path: str | None = None
        self._x: np.ndarray | None = None
        if isinstance(x, np.memmap) and x.filename and x.dtype == np.float32 and x.flags.c_contiguous:
            self._path, self._offset = str(x.filename), int(x.offset)
        else:
            self._x = np.asarray(x, dtype=np.float32)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (k, d) float32, labels (k,) int32) of the rows `idx`."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._x is not None:
            return self._x[idx], self.labels[idx]
        out = np.empty((len(idx), self.dim), np.float32)
        if len(idx):
            row_bytes = self.dim * 4
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            starts, stops = np.r_[0, breaks], np.r_[breaks, len(idx)]
            with open(self._path, "rb", buffering=0) as f:
                fd = f.fileno()
                for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                    view = memoryview(out[a:b]).cast("B")
                    got = os.preadv(fd, [view], self._offset + int(idx[a]) * row_bytes)
                    if got != len(view):
                        raise OSError(f"the feature cache '{self._path}' is shorter than its header says")
        return out, self.labels[idx]


# Rows up to which the head's epochs are shuffled by tf.data's shuffle buffer. The buffer holds every index as its own
# tensor, about 330 bytes each (16 MB here); at 160,000 training rows the head stage grew 116 MB against 50 and took
# 51.8 against 32.2 s (tools/bench_head_memory.py, BENCHMARKS.md "train at scale"), so larger splits take a
# stateless permutation instead (index_shuffle, keyed by a seeded random number drawn anew each epoch). Below it,
# runs train in the same order as before that change.
SHUFFLE_BUFFER_ROWS = 50_000


def feature_dataset(xy: Features, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Cached features and labels as batches (shuffled each epoch when asked), sharded like the image data.

    Only row indices go through tf.data (with shuffle, a seeded permutation of them, new each epoch); each
    batch's rows are then read (FeatureReader), so memory holds a few batches, not the features. Up to
    SHUFFLE_BUFFER_ROWS rows, tf.data's shuffle buffer permutes them (the order a shuffle of the features themselves
    gives, and the one earlier versions trained in); above, a stateless permutation computed a batch at a time.
    """
    import tensorflow as tf

    reader = FeatureReader(xy)
    ds = tf.data.Dataset.range(reader.n)
    if shuffle and reader.n <= SHUFFLE_BUFFER_ROWS:
        ds = ds.shuffle(max(reader.n, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if shuffle and reader.n > SHUFFLE_BUFFER_ROWS:
        n = reader.n
        epoch_keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

        @tf.autograph.experimental.do_not_convert
        def permuted(key: tf.Tensor) -> tf.data.Dataset:
            key_pair = tf.stack([key, tf.constant(seed, tf.int64)])
            return ds.map(lambda idx: tf.random.experimental.index_shuffle(idx, key_pair, n - 1))

        ds = epoch_keys.flat_map(permuted)

    def _rows(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(reader.rows, [idx], (tf.float32, tf.int32), stateful=False)
        x.set_shape((None, reader.dim))
        y.set_shape((None,))
        return x, y

    from edgetl.data.pipeline import PREFETCH_BATCHES, bounded

    ds = ds.map(tf.autograph.experimental.do_not_convert(_rows), num_parallel_calls=tf.data.AUTOTUNE)
    return shard_by_data(bounded(ds.prefetch(PREFETCH_BATCHES)))


def head_probabilities(head: keras.Model, xy: Features, batch_size: int = 256, chunk_batches: int = 16) -> np.ndarray:
    """The head's class probabilities over cached features, read chunk_batches batches at a time.

    Keras' predict runs each chunk (predict_on_batch would not split a batch across a strategy's replicas).
    """
    reader = FeatureReader(xy)
    out = np.empty((reader.n, int(head.output_shape[-1])), np.float32)  # filled in place: no list of parts
    step = batch_size * chunk_batches
    for i in range(0, reader.n, step):
        rows = np.arange(i, min(i + step, reader.n))
        out[rows] = head.predict(reader.rows(rows)[0], batch_size=batch_size, verbose=0)
    return out


def extract_features(clf: Classifier, splits: DataSplits, names: list[str], size: int, batch_size: int,
                     reporter: Reporter, placement: Placement, *, engine: str = "auto",
                     record: dict[str, Any] | None = None, cache_dir: Path | None = None,
                     ahead: PassInput | None = None, any_size: AnySizeForward | None = None) -> dict[str, Features]:
    """Run the frozen base once over the images of these splits: the fast path's whole cost.

    One pass over all splits together: one traced predict function and full batches, instead of
    a trace and a ragged last batch per split. TensorFlow computes the first batches; then, on a
    CPU, the base converted to float32 TFLite (XNNPACK) takes over when the cost model of
    edgetl.train.engine says it pays (engine "auto"), always ("tflite") or never ("keras"), provided
    its features match TensorFlow's on a batch within engine.FEATURE_TOLERANCE. A cached conversion with
    its stored check (TensorFlow's features of a few images) is checked against those and runs from the
    first batch: TensorFlow is then neither traced nor run.

    Args:
        engine: "auto", "keras" or "tflite" (edgetl.train.engine.ENGINES).
        record: when given, filled with the engine used, why, its conversion and check figures, and the
            seconds of the pass's parts (record["seconds"]: edgetl.train.walltime's features_* parts).
        cache_dir: when given, the features are written there batch by batch (cache_paths, load_cached)
            and returned memory-mapped: memory does not grow with the number of images.
        ahead: the pass's input started earlier (start_pass_input), used when it was made for these splits,
            size and batch (its decoded images are then ready); else the pass builds its own.
        any_size: the trace and conversion of clf's base at any size (conversion.AnySizeForward), shared with other
            sizes' passes: this pass neither traces nor converts (one device only; the mirrored pass ignores it).

    Returns:
        Per split name, (features, labels) in the split's item order.
    """
    import time

    from edgetl.data.pipeline import make_dataset

    if not names:
        if ahead is not None:
            ahead.release()
        return {}
    items = [item for name in names for item in splits.split(name)]
    extract_batch = extract_batch_size(batch_size, placement)
    t0 = time.perf_counter()
    batches = None  # started by the pass, unless it was started ahead
    if ahead is not None and (ahead.names, ahead.size, ahead.batch) == (list(names), size, extract_batch) \
            and placement.name != "mirrored":  # the mirrored pass distributes a dataset, not a started iterator
        ds, batches = ahead.take()
    else:
        if ahead is not None:
            ahead.release()
        ds = make_dataset(splits.root, items, (size, size), extract_batch, shuffle=False)
    input_seconds = time.perf_counter() - t0
    steps = -(-len(items) // extract_batch)
    reporter.start(f"features of {len(items)} images", steps)

    writer = FeatureWriter(splits, names, cache_dir)
    with writer:
        if placement.name == "mirrored":
            _mirrored_pass(clf, ds, reporter, placement, record if record is not None else {}, writer)
        else:
            # One compiled function over the batches: about twice the throughput of Keras' predict on a
            # CPU (measured: MobileNetV2-224, 52 vs 28 img/s). Under multi-worker training every worker
            # needs every feature, and this reads the mirrored weights locally.
            # Handed over in a list the pass empties: the pass alone then holds a started iterator, and releases it
            # without waiting for its threads (a reference left here would wait for them at the return).
            source = [ds if batches is None else batches]
            del batches
            _single_device_pass(clf, source, len(items), size, reporter, placement, engine,
                                record if record is not None else {}, writer, any_size)
    reporter.finish()
    out = writer.result()
    if record is not None:
        parts = {"input": input_seconds, **record.get("seconds", {}), "save": writer.seconds}
        parts["other"] = max(0.0, time.perf_counter() - t0 - sum(parts.values()))  # what no part names
        record["seconds"] = parts
    return out


def _mirrored_pass(clf: Classifier, ds: tf.data.Dataset, reporter: Reporter, placement: Placement,
                   record: dict[str, Any], writer: FeatureWriter) -> None:
    """The pass under MirroredStrategy: each batch split across the replicas, its features written as it comes.

    Keras' predict over the whole split would hold every feature (and its per-batch parts) until the end: on several
    GPUs and a large folder, memory grew with the number of images. Here the writer gets one batch at a time.
    """
    import time

    import tensorflow as tf

    strategy = placement.strategy
    spent = {"base": 0.0, "wait": 0.0}  # the first batch's base includes tracing the step

    @tf.function
    def step(images: Any) -> Any:
        # float32 whatever the policy (mixed precision computes in float16): the cache holds float32.
        return strategy.run(lambda x: tf.cast(clf.extractor(x, training=False), tf.float32), args=(images,))

    # A global batch is cut into consecutive per-replica parts, in replica order: their concatenation is the batch.
    t0 = time.perf_counter()
    batches = iter(strategy.experimental_distribute_dataset(ds.map(lambda images, labels: images)))
    spent["wait"] += time.perf_counter() - t0
    done = 0
    while True:
        t0 = time.perf_counter()
        try:
            images = next(batches)
        except StopIteration:
            spent["wait"] += time.perf_counter() - t0
            break
        t1 = time.perf_counter()
        spent["wait"] += t1 - t0
        parts = [np.asarray(p) for p in strategy.experimental_local_results(step(images))]
        spent["base"] += time.perf_counter() - t1
        writer.write(np.concatenate(parts) if len(parts) > 1 else parts[0])
        done += sum(len(p) for p in parts)
        reporter.advance(1)
    record.update(engine="keras", reason=f"--strategy mirrored: TensorFlow over {placement.replicas} replica(s)",
                  images=done)
    record["seconds"] = spent


def _single_device_pass(clf: Classifier, source: list[tf.data.Dataset | Iterator[Any]], total: int, size: int,
                        reporter: Reporter, placement: Placement, engine: str, record: dict[str, Any],
                        writer: FeatureWriter, any_size: AnySizeForward | None = None) -> None:
    """The pass on one device: TensorFlow for the first batches, then the engine the cost model picks.

    source: one item, taken out: the input's dataset, or its iterator already started (PassInput).

    Each batch's features go to `writer`. Fills `record` with the engine, why, and the seconds of the
    pass's parts (record["seconds"]; the writer's own seconds are not in them).
    """
    import itertools
    import time

    import tensorflow as tf

    from edgetl.train import engine as engines

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    def extract(images: tf.Tensor) -> tf.Tensor:
        return clf.extractor(images, training=False)

    tf_images = [0]  # images TensorFlow computed (the manifest's feature_engine.tensorflow_images)
    forward = [extract]  # TensorFlow's function: the pass's own, or the one traced for any size

    def on_tf(images: Any) -> np.ndarray:
        tf_images[0] += len(images)
        return np.asarray(forward[0](images), dtype=np.float32)

    cpu_only = not placement.mixed_precision and not any("GPU" in d.upper() or "TPU" in d.upper()
                                                         for d in placement.devices)
    t0 = time.perf_counter()
    # The weights are hashed once here (the cache's name) and the path handed to the conversion.
    path = engines.conversion_path(clf, size) if engine != "keras" and cpu_only else None
    in_cache = engines.has_cached_conversion(clf, size, path)
    cached = engine == "auto" and cpu_only and in_cache
    lookup = time.perf_counter() - t0  # hashing the weights: part of the conversion's cost
    # Where the pass's time goes (edgetl.train.walltime: the features_* parts).
    spent = {"trace": 0.0, "base": 0.0, "wait": 0.0, "convert": lookup, "check": 0.0}
    # A cached conversion with its stored check runs from the first batch: TensorFlow is never traced or run.
    fast = engines.stored_engine(clf, size, path, total, engine, reporter, record, spent) if in_cache else None
    if fast is None:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if any_size is not None:  # traced once for every size: TensorFlow's probe and the check run it here
            forward[0] = any_size.concrete()
            trace_cpu = any_size.trace_cpu_seconds
        else:
            extract.get_concrete_function()
            trace_cpu = time.thread_time() - cpu0  # the cost model's measure of graph work: load stretches the wall
        spent["trace"] = time.perf_counter() - t0
        record.update(engine="keras", reason="too few batches to decide", trace_cpu_seconds=round(trace_cpu, 2))
    # Without a probe (batches of 2 x PROBE_IMAGES or fewer): the first batch includes the kernels' set-up, the
    # second gives TensorFlow's steady speed, which the choice needs only to weigh a conversion: with none to make
    # (forced, or cached), it is made at the first batch.
    decide_at = 0 if engine == "tflite" or cached else 1
    decided = False
    done = 0
    t0 = time.perf_counter()
    ds = source.pop()
    batches = ds if isinstance(ds, Iterator) else iter(ds)  # starts the input pipeline's threads
    del ds
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
        k = engines.PROBE_IMAGES
        probe = fast is None and i == 0 and engine != "keras" and cpu_only and len(images) > 2 * k
        if fast is not None:
            part = fast(images)
            spent["base"] += time.perf_counter() - t1
        elif probe:
            # TensorFlow on 2 x PROBE_IMAGES of the first batch only: its first call sets its kernels up, the
            # second gives its speed; the conversion is weighed and checked on those images, and the engine
            # chosen computes the rest (a whole first batch and a second one cost 64 images at TensorFlow's speed).
            part = on_tf(images[:k])
            t2 = time.perf_counter()
            part = np.concatenate([part, on_tf(images[k:2 * k])])
            seconds = 2 * (time.perf_counter() - t2)  # both probe calls at the steady speed
            spent["base"] += time.perf_counter() - t1
        else:
            part = on_tf(images)
            seconds = time.perf_counter() - t1
            spent["base"] += seconds
        if probe or fast is None and i == decide_at and not decided:
            decided = True
            checked = images[:len(part)]
            choice = engines.decide(engine, cpu_only=cpu_only, remaining=total - done - len(part),
                                    seconds_per_image=seconds / max(len(part), 1),
                                    trace_cpu_seconds=trace_cpu, cached=cached)
            t2 = time.perf_counter()
            fast = engines.switch(clf, size, checked, part, seconds, choice, reporter, record,
                                  any_size.concrete() if any_size is not None else extract.get_concrete_function(),
                                  path, any_size)
            switch = time.perf_counter() - t2
            spent["convert"] = lookup + float(record.get("convert_seconds", 0.0))
            spent["check"] = max(0.0, switch - spent["convert"] + lookup)
        if probe:  # the rest of the first batch, on the engine chosen
            t2 = time.perf_counter()
            rest = images[len(part):]
            part = np.concatenate([part, fast(rest) if fast is not None else on_tf(rest)])
            spent["base"] += time.perf_counter() - t2
        writer.write(part)
        done += len(part)
        reporter.advance(1)
    # Ending the pass is timed too: the input pipeline, the interpreter and the traced function released now rather
    # than at the return (unnamed seconds were seen here on loaded machines).
    t0 = time.perf_counter()
    # Not waited for (up to 38 s was once seen here as "other" before this part had a name).
    holder = [batches]
    del batches
    release_iterator(holder)
    forward.clear()
    del fast, extract, on_tf
    spent["release"] = time.perf_counter() - t0
    record["images"] = done
    record["tensorflow_images"] = tf_images[0]
    record["seconds"] = spent
