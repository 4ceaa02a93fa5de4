"""Quantized files of a trained run, with and without bias correction, against its Keras model (issue #13).

Each file is written by `edgetl export` itself (edgetl.export.export_run) twice: with bias correction
(the default: each int8 kernel's rounding shift taken off its bias, edgetl.export.tflite_bias) and with
--no-bias-correction (the quantizer's own file), and measured by the export's verification on the run's
held-out split: accuracy, drop and top-1 agreement with the Keras model. Calibration: the export's own
sample of the training split.

    .venv/bin/python tools/bench_quant_real.py RUN_DIR [--files tflite-int8-full,onnx-int8] [--json OUT]

Train a run on the real photos first, e.g. (MobileNetV2 1.0 at 224, all 4,317 flowers):
    .venv/bin/edgetl train ../shared/realdata/flowers --backbone mobilenet_v2 --alpha 1.0 --image-size 224 \\
        --weights ../shared/realdata/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 \\
        --output RUN_DIR --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

FILES = ("tflite-int8", "tflite-int8-full", "tflite-int16x8", "onnx-int8", "onnx-dynamic")
VARIANTS = {"corrected": True, "plain": False}  # bias_correction on, off


def measure_run(run_dir: Path, files: tuple[str, ...], calibration_samples: int = 300,
                threads: int = 2) -> dict[str, Any]:
    """Figures per file and variant ("plain", "corrected"): accuracy, drop, agreement, size, kernels corrected."""
    from edgetl.export import export_run

    formats = tuple(dict.fromkeys(key.split("-", 1)[0] for key in files))
    modes = tuple(dict.fromkeys(key.split("-", 1)[1] for key in files))
    out: dict[str, Any] = {"run": str(run_dir), "files": {}}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for variant, on in VARIANTS.items():
            report = export_run(run_dir, formats=formats, quantize=modes, output=Path(tmp) / variant,
                                calibration_samples=calibration_samples, threads=threads, bias_correction=on)
            ref = report.reference or {}
            out.update(split=ref.get("split"), samples=ref.get("samples"), keras_accuracy=ref.get("accuracy"))
            for row in report.rows:
                key = f"{row.format}-{row.mode}"
                if key not in files:
                    continue
                out["files"].setdefault(key, {})[variant] = {
                    "accuracy": row.accuracy, "drop": row.drop, "agreement": row.agreement, "size_mb": row.size_mb,
                    "bias_corrected": row.get("bias_corrected", 0), "status": row.status}
                print(f"{key:18s} {variant:9s} accuracy {row.accuracy:.4f} drop {row.drop:+.4f} "
                      f"agreement {row.agreement:.4f}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--files", default=",".join(FILES), help=f"comma-separated, of: {', '.join(FILES)}")
    ap.add_argument("--calibration-samples", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    files = tuple(f for f in args.files.split(",") if f)
    unknown = [f for f in files if f not in FILES]
    if unknown:
        print(f"error: unknown file kind(s) {', '.join(unknown)}. Allowed: {', '.join(FILES)}.", file=sys.stderr)
        return 2
    if not (args.run / "manifest.json").is_file():
        print(f"error: '{args.run}' is not a trained run (no manifest.json). Train one first.", file=sys.stderr)
        return 2
    figures = measure_run(args.run, files, args.calibration_samples)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
