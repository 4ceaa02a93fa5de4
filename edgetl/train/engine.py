"""The engine of the feature pass: TensorFlow, or the frozen base converted once to float32 TFLite under XNNPACK.

On a CPU, LiteRT's XNNPACK runs the same float32 network 2-7x faster than TensorFlow's compiled Keras
forward (BENCHMARKS.md, train on real photos), but converting the base costs seconds. The choice is a
measured cost model, made after TensorFlow has computed the first batches (which the pass needs anyway):

    conversion ~= CONVERT_OVER_TRACE x (CPU seconds TensorFlow took to trace the same function)
    saving     ~= images left x TensorFlow's seconds per image x (1 - 1 / TFLITE_SPEEDUP)
    TFLite when saving > PAYBACK_MARGIN x conversion

Tracing and conversion are both single-threaded graph work on the same graph and CPU, so their ratio
carries across backbones and machines better than either alone. The trace is counted in CPU seconds
(its thread's), not wall seconds: on loaded cores its half-second window stretched 2-6x at random (a
3 s trace at load 10 made a conversion of ~1.5 s look like 18 s, and the run kept TensorFlow for 44 s
of base instead of ~10), while its CPU seconds stayed within 0.48-0.63 s. The conversion is thereby
estimated at full speed, the saving at the current load: under load the choice leans to TFLite by
the load's factor, whose worst case is a conversion's stretched seconds; the opposite error pays the
slower engine on every image. The converted base must give TensorFlow's features
within FEATURE_TOLERANCE on a batch TensorFlow already computed, or the pass stays on TensorFlow.

A converted base is kept on disk (cache_dir(): $EDGETL_CACHE_DIR, else ~/.cache/edgetl/feature-engines; "off" keeps
none), named by a hash of the extractor's layers, weights, input size and TensorFlow's version: a later run on the
same base loads it in milliseconds instead of converting it again (MobileNetV2 1.0: 0.6 s on 2 quiet cores, ResNet50
3 s). It passes the same check against TensorFlow's features; one that fails is deleted. Beside it, the conversion's
check is kept (`<key>.check.npz`: CHECK_IMAGES of the images it was checked on, TensorFlow's features of them, both
engines' speeds): a later run checks the cached file against those stored features and runs TFLite from its first
batch, with neither TensorFlow's trace nor its first batch (kernel set-up included: 1.5-2.5 s for MobileNetV2 1.0 at
224 on 2 cores). The key names every weight, layer setting, the size and TensorFlow's version, so TensorFlow's
features of the stored images are the ones it would compute now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import first_line
from edgetl.train import conversion

if TYPE_CHECKING:
    import tensorflow as tf

    from edgetl.core.progress import Reporter
    from edgetl.model.classifier import Classifier
    from edgetl.train.conversion import AnySizeForward

log = logging.getLogger("edgetl")

ENGINES = ("auto", "keras", "tflite")
# Largest |TFLite feature - TensorFlow feature| allowed, relative to max(1, largest |TensorFlow feature|).
# Measured on real photos (MobileNetV2 0.35 and 1.0, 96-224 px): 1e-5 to 2e-5.
FEATURE_TOLERANCE = 1e-4
# Conversion seconds (the frozen graph to TFLite, convert_frozen) over the trace's CPU seconds, both in CPU seconds,
# 2 quiet cores (2026-12-07): MobileNetV2 0.35 at 96 px 0.74, 1.0 at 224 1.34, MobileNetV3Small 1.03,
# EfficientNetB0 1.12, ResNet50 4.03 (its 94 MB of weights copied into the flatbuffer). 4 covers the largest: a
# conversion estimated too high costs a small folder TFLite's saving (under a second on MobileNetV2 below 150
# images), one estimated too low costs a conversion that does not pay.
CONVERT_OVER_TRACE = 4.0
# XNNPACK float32 against TensorFlow's compiled forward on the same CPU and images, before measuring it:
# MobileNetV2 2.3-3.9x, EfficientNetB0 1.2-2.6x, ResNet50 0.8x (slower). The pass measures the real
# ratio on its check batch and goes back to TensorFlow when TFLite is not faster.
TFLITE_SPEEDUP = 2.0
# The estimated saving must exceed the estimated conversion this many times. It was 2.0 after a tie on 1,009
# photos (2026-12-01: 43.3 s against 43.5 s, loaded machine, the base traced twice and converted in 18 s). The
# conversion now starts from the pass's own trace (1.4-1.6 s for MobileNetV2 1.0, about 3x the trace, so the
# estimate, 4x the trace's CPU seconds, is already above it), and a run that stays on TensorFlow pays the slower
# engine on every image, so the estimate itself is the margin (issue #29, BENCHMARKS.md "train: fixed costs").
PAYBACK_MARGIN = 1.0
# Loading a cached conversion (the hash of the weights, reading the file, building the interpreter): 0.1-0.3 s
# for MobileNetV2 1.0 on 2 cores; the estimate the cost model charges for it.
CACHED_LOAD_SECONDS = 0.5
# Images of the first batch TensorFlow computes when the pass may convert: twice this many, in two calls (the first
# sets its kernels up, the second gives its speed at this batch size, which the choice and the check compare with
# TFLite's at INVOKE_BATCH). The conversion is checked on them. At batch 4 TensorFlow is slower per image than at 32
# (MobileNetV2 1.0 at 224: 1.5x, ResNet50 1.2x), which leans the choice to TFLite by as much.
PROBE_IMAGES = 4
# Images per TFLite invoke: 4 was fastest per image on 2 cores (MobileNetV2 at 96 and 224 px, against 1 and 32).
INVOKE_BATCH = 4
CACHE_ENV = "EDGETL_CACHE_DIR"
# Converted bases kept (the most recently used; MobileNetV2 1.0 is 9 MB).
CACHE_KEEP = 8
# Images of the conversion's check kept beside it (uint8: 150 KB each at 224 px), which later runs check it on.
CHECK_IMAGES = 4
CHECK_SUFFIX = ".check.npz"


@dataclass
class Choice:
    """Which engine the pass uses for the rest of the images, and why (the log line)."""

    engine: str  # "keras" or "tflite"
    reason: str


def conversion_estimate(trace_cpu_seconds: float) -> float:
    """The conversion's seconds, estimated from the CPU seconds of the pass's trace (the module docstring says why)."""
    return CONVERT_OVER_TRACE * max(0.0, trace_cpu_seconds)


def decide(engine: str, *, cpu_only: bool, remaining: int, seconds_per_image: float, trace_cpu_seconds: float,
           cached: bool = False) -> Choice:
    """The cost model: TFLite when the seconds it saves on `remaining` images exceed its conversion's, with margin.

    seconds_per_image: TensorFlow's wall seconds per image on a steady batch (at the current load).
    trace_cpu_seconds: the CPU seconds of the thread that traced the pass's function (time.thread_time).
    cached: the conversion is in the cache (has_cached_conversion): loading it costs CACHED_LOAD_SECONDS.
    """
    if engine == "keras":
        return Choice("keras", "--feature-cache keras")
    if not cpu_only:
        return Choice("keras", "an accelerator runs TensorFlow at full speed")
    convert = CACHED_LOAD_SECONDS if cached else conversion_estimate(trace_cpu_seconds)
    saving = remaining * seconds_per_image * (1 - 1 / TFLITE_SPEEDUP)
    figures = (f"{remaining} images left at {seconds_per_image * 1000:.1f} ms each: about {saving:.1f} s saved "
               f"against about {convert:.1f} s of {'loading the cached conversion' if cached else 'conversion'}")
    if engine == "tflite":
        return Choice("tflite", f"--feature-cache tflite ({figures})")
    if saving > PAYBACK_MARGIN * convert:
        return Choice("tflite", figures)
    return Choice("keras", figures)


def cpu_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cache_dir() -> Path | None:
    """Where converted bases are kept: $EDGETL_CACHE_DIR ("off" or empty: nowhere), else the user's cache."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "edgetl" / "feature-engines"


def conversion_path(clf: Classifier, size: int) -> Path | None:
    """Where the cache keeps (or would keep) this extractor's conversion; None when nothing is cached.

    Hashes every weight (0.1-0.2 s for MobileNetV2 1.0): the pass computes it once and hands it to
    has_cached_conversion and TFLiteExtractor.
    """
    folder = cache_dir()
    key = base_key(clf, size) if folder is not None else None
    return folder / f"{key}.tflite" if folder is not None and key else None


def has_cached_conversion(clf: Classifier, size: int, path: Path | None | str = "find") -> bool:
    """Whether the cache holds this extractor's conversion: then the pass can choose its engine at the first batch,
    since the choice no longer waits for TensorFlow's steady speed to weigh a conversion.
    path: conversion_path(clf, size) when the caller has it ("find": computed here)."""
    path = conversion_path(clf, size) if path == "find" else path
    return isinstance(path, Path) and path.is_file()


def base_key(clf: Classifier, size: int) -> str | None:
    """A hash naming the extractor's conversion: its layers' kinds and settings in order, every weight, the size
    and TensorFlow's version. Layer names are left out (Keras numbers them per process), and so are input layers'
    shapes: the size is in the key, and a base built for any size (build_base's image_size None, as the search
    builds one per width) converts to the same graph at that size as a base built for it.

    None when a layer has no serializable config (then nothing is cached).
    """
    import tensorflow as tf

    def leaves(layer: Any) -> list[Any]:
        inner = getattr(layer, "layers", None)
        return [layer] if not inner else [leaf for sub in inner for leaf in leaves(sub)]

    h = hashlib.sha256(f"{tf.__version__}|{size}".encode())
    try:
        for layer in leaves(clf.extractor):
            skip = ("name", "batch_shape", "batch_input_shape") if type(layer).__name__ == "InputLayer" else ("name",)
            config = {k: v for k, v in layer.get_config().items() if k not in skip}
            h.update(f"{type(layer).__name__}|{json.dumps(config, sort_keys=True, default=str)}".encode())
    except Exception:  # noqa: BLE001 - a layer without a config (e.g. a wrapped SavedModel): no cache
        return None
    for w in clf.extractor.weights:
        value = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{value.dtype}|{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:32]


class TFLiteExtractor:
    """The classifier's extractor (preprocessing + frozen base + pooling) as float32 TFLite under XNNPACK."""

    def __init__(self, clf: Classifier, size: int, threads: int | None = None, concrete: Any = None,
                 cache_path: Path | None | str = "find", any_size: AnySizeForward | None = None) -> None:
        """concrete: the traced TensorFlow function of clf.extractor on (None, size, size, 3) float32, when the
        caller has one (the feature pass traced it already: tracing MobileNetV2 again costs seconds).
        cache_path: conversion_path(clf, size) when the caller has it ("find": computed here, hashing the weights).
        any_size: the conversion shared by this base's sizes, taken instead of converting (and cached as this size's).
        """
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        t0 = time.perf_counter()
        self.cache_path = conversion_path(clf, size) if cache_path == "find" else cache_path
        self.cached = False
        self.threads = threads or cpu_threads()
        self._interp = self._load_cached()
        if self._interp is None and any_size is not None:
            blob = any_size.blob()
            self._interp = Interpreter(model_content=blob, num_threads=self.threads)
            self._store(blob)
        if self._interp is None:
            if concrete is None:
                @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
                def forward(images: tf.Tensor) -> tf.Tensor:
                    return clf.extractor(images, training=False)

                concrete = forward.get_concrete_function()
            blob = conversion.convert_frozen(concrete)
            self._interp = Interpreter(model_content=blob, num_threads=self.threads)
            self._store(blob)
        self.convert_seconds = time.perf_counter() - t0  # the hash and the cache's read or write included
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]
        self._batch = 0
        self.size = size

    def _load_cached(self) -> Any:
        """The interpreter of the cached conversion, or None (none cached, or unreadable: converted again)."""
        from ai_edge_litert.interpreter import Interpreter

        if self.cache_path is None or not self.cache_path.is_file():
            return None
        try:
            interp = Interpreter(model_path=str(self.cache_path), num_threads=self.threads)
            os.utime(self.cache_path)  # most recently used: kept longest
        except Exception as exc:  # noqa: BLE001 - a damaged file: convert again (and overwrite it)
            log.info("feature pass: the cached TFLite base %s is unreadable (%s); converting again",
                     self.cache_path, first_line(exc))
            return None
        self.cached = True
        return interp

    def _store(self, blob: bytes) -> None:
        """Keep the conversion for later runs (the newest CACHE_KEEP); a cache that cannot be written is skipped.

        Written atomically but not fsync'd: a cache needs no durability (a file lost or damaged in a crash is
        unreadable, or fails the check against TensorFlow's features, and is converted again), and forcing 9 MB to
        disk is the one write of the pass that waits on other processes' I/O.
        """
        from edgetl.core.fileio import atomic_path

        if self.cache_path is None:
            return
        try:
            with atomic_path(self.cache_path) as tmp:
                tmp.write_bytes(blob)
            self.check_path.unlink(missing_ok=True)  # a check made on another conversion's file
            kept = sorted(self.cache_path.parent.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[CACHE_KEEP:]:
                old.unlink(missing_ok=True)
                old.with_suffix(CHECK_SUFFIX).unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - a read-only home or a full disk must not fail training
            log.info("feature pass: not caching the TFLite base in %s (%s)", self.cache_path.parent, exc)

    def forget(self) -> None:
        """Delete the cached conversion and its stored check (it failed the check against TensorFlow's features)."""
        if self.cache_path is not None:
            self.cache_path.unlink(missing_ok=True)
            self.check_path.unlink(missing_ok=True)

    @property
    def check_path(self) -> Path:
        """The stored check beside the cached conversion (only meaningful when cache_path is set)."""
        return Path(self.cache_path or "").with_suffix(CHECK_SUFFIX)

    def keep_check(self, images: Any, features: np.ndarray, keras_ms: float, tflite_ms: float) -> None:
        """Store the check this conversion passed, for later runs (see stored_check): the first CHECK_IMAGES of
        the batch (pixels are whole numbers 0..255, kept as uint8), TensorFlow's features of them, both engines'
        milliseconds an image. Nothing is stored without a cache, or for pixels that uint8 would change."""
        from edgetl.core.fileio import atomic_path

        if self.cache_path is None or not self.cache_path.is_file():
            return
        x = np.asarray(images, dtype=np.float32)[:CHECK_IMAGES]
        pixels = np.clip(np.round(x), 0, 255).astype(np.uint8)
        if not np.array_equal(pixels.astype(np.float32), x):
            return
        try:
            with atomic_path(self.check_path, suffix=CHECK_SUFFIX) as tmp, open(tmp, "wb") as f:
                np.savez(f, images=pixels, features=np.asarray(features, np.float32)[:CHECK_IMAGES],
                         ms=np.array([keras_ms, tflite_ms], np.float64))
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written must not fail training
            log.info("feature pass: not keeping the check of the TFLite base (%s)", exc)

    def stored_check(self) -> dict[str, float] | None:
        """This (cached) conversion against TensorFlow's stored features of the stored images: max_relative_diff,
        and the milliseconds an image of both engines when it was converted (keras_ms, tflite_ms). None when no
        check is stored or it cannot be read (the pass then checks against TensorFlow's features itself)."""
        if not self.cached or self.cache_path is None or not self.check_path.is_file():
            return None
        try:
            with np.load(self.check_path) as data:
                images, features, ms = data["images"], data["features"], data["ms"]
            if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or len(features) != len(images) \
                    or not len(images) or ms.shape != (2,):
                return None
            got = self(images.astype(np.float32))
        except Exception:  # noqa: BLE001 - damaged or foreign: the full check decides
            return None
        if got.shape != features.shape:
            return None
        return {"max_relative_diff": max_relative_diff(features, got), "keras_ms": float(ms[0]),
                "tflite_ms": float(ms[1])}

    def __call__(self, images: Any) -> np.ndarray:
        """Features of a batch of float32 images 0..255 (b, size, size, 3)."""
        x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        n, step = len(x), INVOKE_BATCH
        if self._batch != step:
            self._interp.resize_tensor_input(self._in, (step, self.size, self.size, 3))
            self._interp.allocate_tensors()
            self._batch = step
        out = []
        for i in range(0, n, step):
            chunk = x[i:i + step]
            if len(chunk) < step:  # pad the last chunk: re-allocating the interpreter costs more
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            self._interp.set_tensor(self._in, chunk)
            self._interp.invoke()
            out.append(self._interp.get_tensor(self._out)[:min(step, n - i)].copy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def checked_cached(clf: Classifier, size: int, path: Path | None, total: int,
                   engine: str) -> tuple[TFLiteExtractor, Choice, float] | None:
    """The cached conversion at `path` (conversion_path) with the choice and its max_relative_diff, when it passes
    its stored check (stored_check) and the choice takes it: engine "tflite", or "auto" with the cost model at the
    stored speeds and TFLite the faster there. Else None (the pass then checks against TensorFlow itself); a file
    that fails its stored check is deleted, so it is converted again."""
    if path is None or engine not in ("auto", "tflite") or not path.with_suffix(CHECK_SUFFIX).is_file():
        return None
    try:
        fast = TFLiteExtractor(clf, size, cache_path=path)
    except Exception:  # noqa: BLE001 - the usual path converts again, or stays on TensorFlow
        return None
    check = fast.stored_check()
    if check is None:
        return None
    if not check["max_relative_diff"] <= FEATURE_TOLERANCE:
        fast.forget()
        return None
    choice = decide(engine, cpu_only=True, remaining=total, seconds_per_image=check["keras_ms"] / 1000,
                    trace_cpu_seconds=0.0, cached=True)
    if choice.engine != "tflite" or engine == "auto" and check["tflite_ms"] >= check["keras_ms"]:
        return None
    return fast, choice, check["max_relative_diff"]


def max_relative_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """max |other - reference| over max(1, max |reference|): what FEATURE_TOLERANCE bounds."""
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return float(np.abs(np.asarray(other, np.float32) - reference).max(initial=0.0)) / scale


def stored_engine(clf: Classifier, size: int, path: Path | None, total: int, engine: str, reporter: Reporter,
                  record: dict[str, Any], spent: dict[str, float]) -> TFLiteExtractor | None:
    """The feature pass's engine from its first batch: the cached TFLite extractor when its stored check passes and
    the choice takes it (checked_cached), its figures put in `record` and `spent` (convert, check) and logged; else
    None, and the pass starts on TensorFlow as usual."""
    t0 = time.perf_counter()
    found = checked_cached(clf, size, path, total, engine)
    if found is None:
        return None
    fast, choice, diff = found
    spent["convert"] += fast.convert_seconds
    spent["check"] += max(0.0, time.perf_counter() - t0 - fast.convert_seconds)
    diff = float(f"{diff:.3g}")
    record.update(engine="tflite", reason=choice.reason, convert_seconds=round(fast.convert_seconds, 2),
                  max_relative_diff=diff, threads=fast.threads, cached=True, check="stored")
    message = (f"feature pass: TFLite float32 with XNNPACK on {fast.threads} threads ({choice.reason}; loaded from "
               f"the cache in {fast.convert_seconds:.1f} s, features within {diff:.1g} of TensorFlow's stored ones)")
    log.info(message)
    reporter.info(message)
    return fast


def switch(clf: Classifier, size: int, images: tf.Tensor, reference: np.ndarray, keras_seconds: float, choice: Choice,
           reporter: Reporter, record: dict[str, Any], concrete: Any,
           cache_path: Path | None | str = "find", any_size: AnySizeForward | None = None) -> TFLiteExtractor | None:
    """The feature pass's switch at its decision batch: the TFLite extractor when the choice is TFLite and it
    matches TensorFlow's features on the batch TensorFlow just computed (and, chosen by the cost model, beats its
    time there); else None. Logs why. A kept extractor's check is stored beside its cached file (keep_check).
    concrete: the pass's traced TensorFlow function, which the conversion starts from; cache_path: where the
    conversion is cached (engine.conversion_path, computed once by the pass); any_size: the conversion to take
    instead of converting (conversion.AnySizeForward)."""
    record.update(engine=choice.engine, reason=choice.reason)
    fast = None
    if choice.engine == "tflite":
        try:
            fast = TFLiteExtractor(clf, size, concrete=concrete, cache_path=cache_path, any_size=any_size)
        except Exception as exc:  # noqa: BLE001 - any conversion failure leaves the pass on TensorFlow
            record.update(engine="keras", reason=f"the conversion to TFLite failed ({first_line(exc)})")
        else:
            fast(images[:1])  # XNNPACK packs its weights at the first invoke: not part of the speed
            t0 = time.perf_counter()
            check = fast(images)
            speedup = keras_seconds / max(time.perf_counter() - t0, 1e-9)
            diff = max_relative_diff(reference, check)
            record.update(convert_seconds=round(fast.convert_seconds, 2), max_relative_diff=float(f"{diff:.3g}"),
                          measured_speedup=round(speedup, 2), threads=fast.threads, cached=fast.cached,
                          keras_ms=round(1000 * keras_seconds / len(check), 2),  # both engines, the same batch
                          tflite_ms=round(1000 * keras_seconds / speedup / len(check), 2))
            if not diff <= FEATURE_TOLERANCE:
                fast.forget()  # a cached conversion that fails is not used again
                record.update(engine="keras", reason=f"TFLite features differ from TensorFlow's by {diff:.2g} "
                                                     f"(tolerance {FEATURE_TOLERANCE:g})")
                fast = None
            elif speedup < 1 and not choice.reason.startswith("--"):
                record.update(engine="keras", reason=f"TFLite ran {speedup:.2f}x TensorFlow's speed on this base")
                fast = None
            else:  # later runs check the cached file against these features, without TensorFlow
                fast.keep_check(images, reference, record["keras_ms"], record["tflite_ms"])
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
