"""Quantized files of a trained run, with and without bias correction, against its Keras model (issue #13).

Each file is converted here from the run's model (plain) and from its bias-corrected copy
(edgetl.export.bias_correction), opened in its own runtime and measured on the run's held-out split
with runtime/measure.py, as `edgetl export` verification measures: accuracy, drop and top-1 agreement
with the (uncorrected) Keras model. Calibration: the export's own sample of the training split.

    .venv/bin/python tools/bench_quant_real.py RUN_DIR [--modes tflite-int8-full,onnx-int8] [--json OUT]

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
import time
from pathlib import Path
from typing import Any

FILES = ("tflite-int8", "tflite-int8-full", "tflite-int16x8", "onnx-int8", "onnx-dynamic")
CORRECTABLE = ("tflite-int8", "tflite-int8-full", "tflite-int16x8", "onnx-int8")  # calibrated modes


def measure_run(run_dir: Path, files: tuple[str, ...], calibration_samples: int = 200,
                threads: int = 2) -> dict[str, Any]:
    """Figures per file and variant ("plain", "corrected"): accuracy, drop, agreement, size."""
    from edgetl.core.progress import Reporter
    from edgetl.core.tf import load_tensorflow
    from edgetl.export.bias_correction import correct_int8_bias
    from edgetl.export.images import ExportImages, representative
    from edgetl.export.onnx import export_onnx
    from edgetl.export.reference import keras_reference
    from edgetl.export.saved_model import save_serving
    from edgetl.export.tflite import export_tflite
    from edgetl.rundir import load_run
    from edgetl.runtime import open_model
    from edgetl.runtime.measure import measure

    load_tensorflow()
    run = load_run(run_dir)
    images = ExportImages(run, calibration_samples, verify=True)
    x, y, split = images.held_out(Reporter())
    calib = images.calibration(Reporter())
    model = run.load_model()
    ref = keras_reference(model, images, Reporter()).reference
    out: dict[str, Any] = {"run": str(run_dir), "split": split, "samples": int(len(x)),
                           "keras_accuracy": ref.accuracy, "files": {}}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        sources = {"plain": save_serving(model, work / "plain")}
        t0 = time.perf_counter()
        corrected = run.load_model()
        out["corrected_layers"] = len(correct_int8_bias(corrected, calib))
        out["correction_seconds"] = round(time.perf_counter() - t0, 1)
        sources["corrected"] = save_serving(corrected, work / "corrected")
        for key in files:
            fmt, mode = key.split("-", 1)
            for variant, saved in sources.items():
                if variant == "corrected" and key not in CORRECTABLE:
                    continue
                path = work / f"{variant}-{key}.{fmt}"
                if fmt == "tflite":
                    export_tflite(saved, path, mode, representative=representative(calib),
                                  io_type="uint8" if mode == "int8-full" else None)
                else:
                    export_onnx(saved, path, mode, calibration=calib if mode == "int8" else None)
                with open_model(path, threads=threads, class_names=run.class_names) as runner:
                    m = measure(runner, x, y, ref, latency=False)
                out["files"].setdefault(key, {})[variant] = {
                    "accuracy": m.accuracy, "drop": m.drop, "agreement": m.agreement,
                    "size_mb": round(path.stat().st_size / 1e6, 3)}
                print(f"{key:18s} {variant:9s} accuracy {m.accuracy:.4f} drop {m.drop:+.4f} "
                      f"agreement {m.agreement:.4f}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--files", default=",".join(FILES), help=f"comma-separated, of: {', '.join(FILES)}")
    ap.add_argument("--calibration-samples", type=int, default=200)
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
