"""Runtimes: open any artifact (run, .keras, SavedModel, .tflite, .onnx) behind one Runner."""

from edgetl.runtime.runners import (  # noqa: F401
    KINDS,
    LABELS_FILE,
    MANIFEST_FILE,
    KerasRunner,
    LiteRTRunner,
    OnnxRunner,
    Runner,
    SavedModelRunner,
    detect_kind,
    metadata_from_manifest,
    open_model,
    read_labels,
    read_labels_beside,
)
