"""Runtimes: open any artifact (run, .keras, SavedModel, .tflite, .onnx) behind one Runner, and measure it."""

from edgetl.runtime.labels import LABELS_FILE, read_labels, read_labels_beside
from edgetl.runtime.litert import LiteRTRunner
from edgetl.runtime.measure import Measurement, Reference, compare, measure, top1_accuracy
from edgetl.runtime.metadata import build_metadata, read_metadata
from edgetl.runtime.onnxrt import OnnxRunner
from edgetl.runtime.open import KINDS, MANIFEST_FILE, detect_kind, open_model
from edgetl.runtime.runner import Runner
from edgetl.runtime.tf_runners import KerasRunner, SavedModelRunner
from edgetl.runtime.timing import latency_stats, median_ms, time_calls

__all__ = [
    "KINDS", "LABELS_FILE", "MANIFEST_FILE", "KerasRunner", "LiteRTRunner", "Measurement", "OnnxRunner", "Reference",
    "Runner", "SavedModelRunner", "build_metadata", "compare", "detect_kind", "latency_stats", "measure", "median_ms",
    "open_model", "read_labels", "read_labels_beside", "read_metadata", "time_calls", "top1_accuracy",
]
