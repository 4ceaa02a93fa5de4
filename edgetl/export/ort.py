"""ONNX Runtime Mobile's format: an .onnx file converted to .ort by ONNX Runtime's own converter.

The ORT format is what ONNX Runtime's mobile packages (onnxruntime-android, onnxruntime-objc and the
reduced builds) load fastest and smallest. The converter (onnxruntime.tools.convert_onnx_models_to_ort)
optimises the graph ahead of time with the "fixed" style, which suits any device: layout
optimisations tied to x86 (NCHWc) are left out. The model's metadata properties (edgetl's JSON and the
labels) travel into the .ort file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edgetl.core.errors import ExportError, first_line
from edgetl.core.fileio import atomic_path

log = logging.getLogger("edgetl")


def export_ort(onnx_path: str | os.PathLike[str], ort_path: str | os.PathLike[str]) -> Path:
    """Convert an .onnx file to the ORT format at `ort_path` (written atomically).

    Raises:
        ExportError: ONNX Runtime's converter failed on the model.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src = Path(onnx_path)
    dst = Path(ort_path)
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="edgetl-ort-") as tmp:
        # The converter wants a file whose name ends in .onnx and writes <stem>.ort (plus an operator
        # config for reduced builds) into the output folder; it reports with print().
        work = Path(tmp) / "model.onnx"
        shutil.copyfile(src, work)
        try:
            with contextlib.redirect_stdout(printed):
                convert_onnx_models_to_ort(work, output_dir=Path(tmp) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:
            raise ExportError(f"ONNX Runtime's ORT converter failed on '{src.name}': {first_line(exc)}") from None
        made = sorted((Path(tmp) / "out").glob("*.ort"))
        if not made:
            raise ExportError(f"ONNX Runtime's ORT converter wrote no .ort file for '{src.name}': "
                              f"{first_line(printed.getvalue().strip() or 'no output')}")
        with atomic_path(dst) as target:
            shutil.copyfile(made[0], target)
    log.debug("ORT converter: %s", printed.getvalue().strip())
    return dst
