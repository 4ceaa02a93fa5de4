"""Evaluate: accuracy of any artifact on a folder, baselines, the CI gate and JUnit, benchmark and inspection."""

from edgetl.core.metrics import macro_averages  # noqa: F401
from edgetl.evaluate.accuracy import (  # noqa: F401
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_TOP_K,
    data_fingerprint,
    evaluate,
    list_errors,
    model_summary,
    predict_items,
    resolve_data,
    write_plots,
)
from edgetl.evaluate.baseline import BASELINE_SCHEMA, baseline_warnings, load_baseline, make_baseline, save_baseline  # noqa: F401
from edgetl.evaluate.gate import Check, check_fraction, gate, gate_summary  # noqa: F401
from edgetl.evaluate.junit import junit_error_xml, junit_xml, write_junit, write_junit_error  # noqa: F401
