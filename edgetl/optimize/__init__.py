"""Optimize: quantization-aware training and pruning of a run, as a new run.

twin.py rebuilds the run's classifier in tf_keras, qat.py and prune.py wrap it with tfmot, job.py runs
the fine-tuning and writes the new run, compare.py measures its TFLite files against the parent's.
"""

from edgetl.optimize.compare import compare_runs
from edgetl.optimize.job import REPORT_FILE, OptimizeResult, optimize_run
from edgetl.optimize.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    DEFAULT_SPARSITY,
    MAX_BLOCK,
    METHODS,
    SCHEDULES,
    OptimizeOptions,
    check_options,
)
from edgetl.optimize.prune import gzip_size, kernel_sparsity, mixed_block_runs, prune_for_training
from edgetl.optimize.qat import init_ranges, qat_tflite, qat_weights_to_twin, quantize_for_training, save_qat_model
from edgetl.optimize.tfmot import load_tfmot
from edgetl.optimize.twin import (
    TWIN_TOLERANCE,
    build_twin,
    copy_weights,
    max_output_diff,
    probe_images,
    weighted_layers,
)
from edgetl.rundir import QAT_SAVED_MODEL

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_BLOCK", "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_SCHEDULE", "DEFAULT_SPARSITY",
    "MAX_BLOCK", "METHODS", "QAT_SAVED_MODEL", "REPORT_FILE", "SCHEDULES", "TWIN_TOLERANCE", "OptimizeOptions",
    "OptimizeResult", "build_twin", "check_options", "compare_runs", "copy_weights", "gzip_size", "init_ranges",
    "kernel_sparsity", "load_tfmot", "max_output_diff", "mixed_block_runs", "optimize_run", "probe_images",
    "prune_for_training", "qat_tflite", "qat_weights_to_twin", "quantize_for_training", "save_qat_model",
    "weighted_layers",
]
