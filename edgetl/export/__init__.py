"""Export: a run directory to verified TFLite, ONNX and SavedModel files.

One module per format (tflite, onnx, saved_model; one entry function each), the quantization modes
as a table (modes), the embedded metadata (metadata), and the job that plans, stages, verifies and
moves files into place (plan, images, verify, report, job); auto searches int8 within an accuracy budget.
"""

from edgetl.export.job import export_run, run_export  # noqa: F401
from edgetl.export.plan import (  # noqa: F401
    DEFAULT_CALIBRATION_SAMPLES,
    EXPORT_DIR,
    ExportOptions,
    file_name,
    file_stem,
    resolve_request,
)
from edgetl.export.reference import FLOAT_TOLERANCE  # noqa: F401
from edgetl.export.report import COLUMNS, LABELS_FILE, REPORT_FILE, ExportReport, ExportRow  # noqa: F401
