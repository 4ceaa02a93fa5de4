"""The reference every exported file is measured against: the Keras model's probabilities on the held-out images.

TensorFlow's Keras forward pass is the slow way to get them: MobileNetV2 at 224 took 10-18 s for 430
images here, where the same float32 graph in LiteRT (XNNPACK, every thread) takes 2-3 s. So when a float
TFLite of the model is at hand (the export converts one anyway for `tflite none`), or when the Keras pass
over the rest of the images would take longer than converting one, the held-out pass runs in LiteRT, and the
Keras model runs on a class-balanced KERAS_CHECK images to prove that the two agree. If they differ by more
than FLOAT_TOLERANCE, or LiteRT cannot run the graph, the Keras model runs on every image, as it always did.
Either way the report says which engine gave the reference, and how far LiteRT was from Keras on the check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.native import quiet_native_stderr
from edgetl.core.progress import Reporter
from edgetl.export.images import balanced_order
from edgetl.runtime.measure import Reference
from edgetl.runtime.timing import median_ms

if TYPE_CHECKING:
    import keras

    from edgetl.export.images import ExportImages

log = logging.getLogger("edgetl")

# A float export must give the Keras model's probabilities within this (max abs difference over the
# held-out images). Measured: TFLite float32 and ONNX float32 differ from Keras by < 1e-5.
FLOAT_TOLERANCE = 1e-4
# Held-out images the Keras model runs on when LiteRT gives the reference: enough classes and images that a
# graph converted wrong shows (a conversion error changes every image's output, not a few), few enough to be
# cheap (MobileNetV2 at 224: about 1 s).
KERAS_CHECK = 32
# Converting a float TFLite only for the reference (no `tflite none` file planned) pays when the Keras pass
# over the images after the check would take longer than this: the conversion takes 2-4 s at 224.
MIN_KERAS_SECONDS = 8.0
# TensorFlow keeps the arena of its largest batch (MobileNetV2 at 224: batch 64 raised the export's peak RSS
# by 680 MB); LiteRT runs 8 images as fast per image as 32.
_KERAS_BATCH = 16
_LITERT_BATCH = 8


@dataclass(frozen=True)
class KerasReference:
    """The Keras model's probabilities on the held-out images: what every file is compared with."""

    reference: Reference
    summary: dict[str, Any]  # format, mode, path, size_mb, accuracy, latency_ms, samples, split, engine (report)
    # When LiteRT's float32 graph gave the reference: the images Keras ran on to check it (their probabilities are
    # Keras's own; every other image's are that graph's). None when Keras ran on every image.
    litert_check: np.ndarray | None = None


def keras_reference(model: keras.Model, images: ExportImages, reporter: Reporter) -> KerasReference:
    """Run the Keras model over every held-out image: probabilities, accuracy, latency."""
    return reference_pass(model, images, reporter, float_tflite=None)


def reference_pass(model: keras.Model, images: ExportImages, reporter: Reporter,
                   float_tflite: Callable[[], bytes | None] | None, shared: bool = False,
                   threads: int | None = None) -> KerasReference:
    """The Keras model's probabilities on the held-out images, through LiteRT where that is faster and exact.

    Args:
        float_tflite: makes (or hands back) the model's float32 TFLite flatbuffer, None when it cannot;
            None here: Keras runs on every image.
        shared: the flatbuffer is made anyway (a `tflite none` file is planned), so it costs nothing here.
        threads: LiteRT's threads.
    """
    x, y, split = images.held_out(reporter)
    n = len(x)
    fn = _keras_function(model)
    reporter.start("running the Keras model", None)
    check = np.sort(balanced_order(y, n)[:KERAS_CHECK]) if float_tflite is not None and n > KERAS_CHECK else None
    probs: np.ndarray | None = None
    engine: dict[str, Any] = {"engine": "keras"}
    if check is not None:
        on_check, per_image = _timed_keras(fn, x[check])
        predicted = per_image * (n - len(check))
        if shared or predicted >= MIN_KERAS_SECONDS:
            probs, engine = _litert_reference(float_tflite, x, check, on_check, threads)
        else:
            engine["reason"] = (f"the Keras pass takes about {predicted:.1f} s more, less than a float TFLite "
                                "conversion would")
        if probs is None:  # Keras on the rest; the checked images are done
            rest = np.setdiff1d(np.arange(n), check)
            probs = np.empty((n, on_check.shape[1]), dtype=np.float32)
            probs[check] = on_check
            if len(rest):
                probs[rest] = _keras_probs(fn, x[rest])
    else:
        probs = _keras_probs(fn, x)
        if float_tflite is not None:
            engine["reason"] = f"{n} held-out images, no more than the {KERAS_CHECK} a LiteRT pass is checked on"
    latency = median_ms(lambda: fn(_tensor(x[:1])))
    reporter.finish()
    if engine["engine"] == "litert":
        log.info("reference: LiteRT's float32 graph on %d images (Keras on %d of them: max diff %.2g, tolerance %g)",
                 n, engine["keras_check"]["samples"], engine["keras_check"]["max_abs_diff"], FLOAT_TOLERANCE)
    acc = float((probs.argmax(1) == y).mean()) if y is not None else None
    path = images.run.model_path
    summary = {"format": "keras", "mode": "-", "path": str(path), "size_mb": round(path.stat().st_size / 1e6, 3),
               "accuracy": acc, "latency_ms": latency, "samples": int(n), "split": split, **engine}
    litert_check = check if engine["engine"] == "litert" else None
    return KerasReference(Reference(probs=probs, accuracy=acc), summary, litert_check)


def _litert_reference(float_tflite: Callable[[], bytes | None], x: np.ndarray, check: np.ndarray,
                      on_check: np.ndarray, threads: int | None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """LiteRT's probabilities on every image if they match Keras's on `check`; else None and the reason."""
    data = float_tflite()
    if data is None:
        return None, {"engine": "keras", "reason": "the model has no float TFLite graph LiteRT can run"}
    try:
        probs = litert_probs(data, x, threads)
    except (RuntimeError, ValueError) as exc:
        return None, {"engine": "keras", "reason": f"LiteRT cannot run the float graph ({str(exc).splitlines()[0]})"}
    if probs.shape[0] != len(x) or probs.shape[1:] != on_check.shape[1:]:
        return None, {"engine": "keras", "reason": f"LiteRT's outputs have shape {probs.shape[1:]}"}
    diff = float(np.abs(probs[check] - on_check).max())
    check_figures = {"samples": len(check), "max_abs_diff": diff}
    if not diff <= FLOAT_TOLERANCE:
        log.info("reference: LiteRT's float32 graph differs from Keras by %.2g (tolerance %g); Keras runs on "
                 "every image", diff, FLOAT_TOLERANCE)
        return None, {"engine": "keras", "keras_check": check_figures,
                      "reason": f"LiteRT's float32 graph differs from Keras by {diff:.2g}"}
    probs[check] = on_check  # the checked images keep Keras's own figures
    return probs, {"engine": "litert", "keras_check": check_figures}


def litert_probs(data: bytes, x: np.ndarray, threads: int | None) -> np.ndarray:
    """A float32 TFLite flatbuffer's outputs on `x` (uint8 or float pixels, fed as float32), in LiteRT.

    Raises:
        RuntimeError, ValueError: LiteRT cannot build or run the graph.
    """
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native_stderr():
        interpreter = Interpreter(model_content=data, num_threads=threads)
    inp = interpreter.get_input_details()
    if len(inp) != 1:
        raise ValueError(f"the graph has {len(inp)} inputs")
    index = int(inp[0]["index"])
    out = int(interpreter.get_output_details()[0]["index"])
    signature = [int(d) for d in inp[0].get("shape_signature", inp[0]["shape"])]
    step = _LITERT_BATCH if signature and signature[0] == -1 else max(1, signature[0] if signature else 1)
    parts: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for start in range(0, len(x), step):
        batch = np.asarray(x[start:start + step], dtype=np.float32)
        if batch.shape != shape:
            interpreter.resize_tensor_input(index, list(batch.shape))
            interpreter.allocate_tensors()
            shape = batch.shape
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        parts.append(np.array(interpreter.get_tensor(out), dtype=np.float32))
    return np.concatenate(parts)


def _keras_function(model: keras.Model) -> Callable[[Any], Any]:
    import tensorflow as tf

    return tf.function(lambda t: model(t, training=False), reduce_retracing=True)


def _tensor(x: np.ndarray) -> Any:
    import tensorflow as tf

    return tf.constant(np.asarray(x, dtype=np.float32))


def _keras_probs(fn: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(fn(_tensor(x[i:i + _KERAS_BATCH])), dtype=np.float32)
                           for i in range(0, len(x), _KERAS_BATCH)])


def _timed_keras(fn: Callable[[Any], Any], x: np.ndarray) -> tuple[np.ndarray, float]:
    """Keras's probabilities on `x` and its seconds per image, timed after the first (tracing) batch."""
    first = np.asarray(fn(_tensor(x[:_KERAS_BATCH])), dtype=np.float32)
    t0 = time.perf_counter()
    rest = _keras_probs(fn, x[_KERAS_BATCH:]) if len(x) > _KERAS_BATCH else first[:0]
    seconds = time.perf_counter() - t0
    timed = len(x) - len(first)
    if timed == 0:  # one batch only: time it again
        t0 = time.perf_counter()
        fn(_tensor(x[:_KERAS_BATCH]))
        seconds, timed = time.perf_counter() - t0, len(first)
    return np.concatenate([first, rest]), seconds / max(timed, 1)
