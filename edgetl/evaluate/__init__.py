"""Evaluate: accuracy of any artifact on a folder, the CI gate, benchmark and inspection."""

from edgetl.evaluate.gate import (  # noqa: F401
    BASELINE_SCHEMA,
    Check,
    baseline_warnings,
    check_fraction,
    data_fingerprint,
    evaluate,
    gate,
    gate_summary,
    junit_xml,
    list_errors,
    load_baseline,
    macro_averages,
    make_baseline,
    model_summary,
    predict_items,
    resolve_data,
    save_baseline,
    write_junit,
    write_plots,
)
