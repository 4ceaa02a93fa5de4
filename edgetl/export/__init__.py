"""Export: a run directory to verified TFLite, ONNX, ORT and SavedModel files.

The formats are one table with one module each (formats/: tflite, onnx, ort, saved_model), as are the
quantization modes (modes), the --target values (targets) and the checks of written files (checks); the
embedded metadata (metadata), and the job that plans, stages, verifies and moves files into place (plan,
images, verify, report, job) ask those tables; auto searches int8 within an accuracy budget.
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
