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
from typing import Any

from edgetl.core.errors import ExportError, first_line
from edgetl.core.fileio import atomic_path
from edgetl.export.formats.base import CALIBRATION, FROZEN, ExportContext, Format, WriteRequest
from edgetl.export.formats.onnx import MODES, check_opset, write_from_frozen

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


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write one .ort file: converted from an ONNX file of the same mode, written beside the staging file."""
    onnx_path = req.path.with_name(req.path.name + ".onnx")
    try:
        # Its dynamic kernels through DequantizeLinear: the converter optimises ahead of time (see onnx_quant).
        write_from_frozen(ctx, req, onnx_path, folded_at_load=False)
        export_ort(onnx_path, req.path)
    finally:
        onnx_path.unlink(missing_ok=True)
    return {}


FORMAT = Format(
    name="ort", help="ONNX Runtime Mobile's format (.ort, converted from the ONNX file of the same mode)",
    suffix=".ort", modes=MODES, kind="ort", write=write, needs=frozenset({FROZEN, CALIBRATION}), options=("opset",),
    meta_options=("opset",), check=lambda opts: check_opset(opts.opset), convert_first=True)
