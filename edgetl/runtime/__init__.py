"""Runtimes: open any model (run, .keras, SavedModel, .tflite, .onnx, .ort) behind one Runner, and measure it."""

from edgetl.runtime.kinds import KINDS, Kind, compatibility, detect_kind, get_kind, read_metadata, runtime_kind
from edgetl.runtime.labels import LABELS_FILE, read_labels, read_labels_beside
from edgetl.runtime.litert import LiteRTRunner
from edgetl.runtime.measure import Measurement, Reference, compare, measure, top1_accuracy
from edgetl.runtime.metadata import build_metadata
from edgetl.runtime.onnxrt import OnnxRunner, OrtRunner
from edgetl.runtime.open import MANIFEST_FILE, open_model
from edgetl.runtime.runner import Runner
from edgetl.runtime.tf_runners import KerasRunner, SavedModelRunner
from edgetl.runtime.timing import latency_stats, median_ms, time_calls

__all__ = [
    "KINDS", "LABELS_FILE", "MANIFEST_FILE", "KerasRunner", "Kind", "LiteRTRunner", "Measurement", "OnnxRunner",
    "OrtRunner", "Reference", "Runner", "SavedModelRunner", "build_metadata", "compare", "compatibility",
    "detect_kind", "get_kind", "latency_stats", "measure", "median_ms", "open_model", "read_labels",
    "read_labels_beside", "read_metadata", "runtime_kind", "time_calls", "top1_accuracy",
]
