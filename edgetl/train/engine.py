"""The engine of the feature pass: TensorFlow, or the frozen base converted once to float32 TFLite under XNNPACK.

On a CPU, LiteRT's XNNPACK runs the same float32 network 2-7x faster than TensorFlow's compiled Keras
forward (BENCHMARKS.md, train on real photos), but converting the base costs seconds. The choice is a
measured cost model, made after TensorFlow has computed the first batches (which the pass needs anyway):

    conversion ~= CONVERT_OVER_TRACE x (seconds TensorFlow took to trace the same function)
    saving     ~= images left x TensorFlow's seconds per image x (1 - 1 / TFLITE_SPEEDUP)
    TFLite when saving > PAYBACK_MARGIN x conversion

Tracing and conversion are both graph work on the same graph and CPU, so their ratio carries across
backbones and machines better than either alone. The converted base must give TensorFlow's features
within FEATURE_TOLERANCE on a batch TensorFlow already computed, or the pass stays on TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgetl.model.classifier import Classifier

log = logging.getLogger("edgetl")

ENGINES = ("auto", "keras", "tflite")
# Largest |TFLite feature - TensorFlow feature| allowed, relative to max(1, largest |TensorFlow feature|).
# Measured on real photos (MobileNetV2 0.35 and 1.0, 96-224 px): 1e-5 to 2e-5.
FEATURE_TOLERANCE = 1e-4
# Conversion seconds over trace seconds (the frozen graph to TFLite), measured on 2 loaded cores for
# MobileNetV2 (0.35 at 96 px, 1.0 at 224), EfficientNetB0 and ResNet50: 1.8-6.1; the upper value, so
# that the model errs towards TensorFlow.
CONVERT_OVER_TRACE = 6.0
# XNNPACK float32 against TensorFlow's compiled forward on the same CPU and images, before measuring it:
# MobileNetV2 2.3-3.9x, EfficientNetB0 1.2-2.6x, ResNet50 0.8x (slower). The pass measures the real
# ratio on its check batch and goes back to TensorFlow when TFLite is not faster.
TFLITE_SPEEDUP = 2.0
# The estimated saving must exceed the estimated conversion this many times: on 1,009 real photos at 224 px
# (MobileNetV2 1.0, 2 cores) the model estimated 32 s saved against 18 s and the pass took the same 43 s on
# both engines (the one-batch speed overstates the whole pass's, which also waits for decoding).
PAYBACK_MARGIN = 2.0
# Images per TFLite invoke: 4 was fastest per image on 2 cores (MobileNetV2 at 96 and 224 px, against 1 and 32).
INVOKE_BATCH = 4


@dataclass
class Choice:
    """Which engine the pass uses for the rest of the images, and why (the log line)."""

    engine: str  # "keras" or "tflite"
    reason: str


def decide(engine: str, *, cpu_only: bool, remaining: int, seconds_per_image: float, trace_seconds: float) -> Choice:
    """The cost model: TFLite when the seconds it saves on `remaining` images exceed its conversion's, with margin."""
    if engine == "keras":
        return Choice("keras", "--feature-cache keras")
    if not cpu_only:
        return Choice("keras", "an accelerator runs TensorFlow at full speed")
    convert = CONVERT_OVER_TRACE * trace_seconds
    saving = remaining * seconds_per_image * (1 - 1 / TFLITE_SPEEDUP)
    figures = (f"{remaining} images left at {seconds_per_image * 1000:.1f} ms each: about {saving:.1f} s saved "
               f"against about {convert:.1f} s of conversion")
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


class TFLiteExtractor:
    """The classifier's extractor (preprocessing + frozen base + pooling) as float32 TFLite under XNNPACK."""

    def __init__(self, clf: Classifier, size: int, threads: int | None = None, concrete: Any = None) -> None:
        """concrete: the traced TensorFlow function of clf.extractor on (None, size, size, 3) float32, when the
        caller has one (the feature pass traced it already: tracing MobileNetV2 again costs seconds)."""
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        # Freezing the variables first makes the conversion about 4x faster than from_keras_model
        # (MobileNetV2-224: 10.9 s against 44.5 s on the same loaded cores); there is no public v2 API for it.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        t0 = time.perf_counter()
        if concrete is None:
            @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
            def forward(images: tf.Tensor) -> tf.Tensor:
                return clf.extractor(images, training=False)

            concrete = forward.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        blob = tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
        self.convert_seconds = time.perf_counter() - t0
        self.threads = threads or cpu_threads()
        self._interp = Interpreter(model_content=blob, num_threads=self.threads)
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]
        self._batch = 0
        self.size = size

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


def max_relative_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """max |other - reference| over max(1, max |reference|): what FEATURE_TOLERANCE bounds."""
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return float(np.abs(np.asarray(other, np.float32) - reference).max(initial=0.0)) / scale
