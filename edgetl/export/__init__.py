"""Export: a run directory to verified TFLite, ONNX and SavedModel files."""

from edgetl.export.job import (  # noqa: F401
    COLUMNS,
    DEFAULT_CALIBRATION_SAMPLES,
    EXPORT_DIR,
    FLOAT_TOLERANCE,
    LABELS_FILE,
    REPORT_FILE,
    ExportReport,
    export_run,
    file_name,
    file_stem,
    resolve_request,
)
