"""OpenVINO int8 against ONNX Runtime int8 and LiteRT int8 on one trained run: accuracy, agreement, size, latency.

Accuracy: one `edgetl export RUN --format tflite --format onnx --format openvino --quantize none --quantize int8`
(every file verified on all of the run's held-out images against Keras, as a user runs it) gives each file's
accuracy, drop, top-1 agreement and size. Beside them, on the same images and the same calibration images, the
int8 IRs edgetl does not write, for comparison: NNCF's post-training quantization with its defaults (what
`-f openvino -q int8` wrote first), the export's QDQ ONNX int8 file converted to IR, and its int8 TFLite file as
OpenVINO converts it (what `-q int8` is made from, without int8_weights_at_kernels). For each IR, the kernels the CPU
plugin runs in int8 (its execution graph's runtime precision).

Latency (--latency): each file timed alone in its own process (`--time-file`: one runtime's thread pool, nothing
else in the process), the files one after the other in turn, --rounds rounds: the median batch-1 ms of each file in
each round, then over the rounds the median of those and the median of each file's ratio to LiteRT int8's in the
same round (load from other processes touches neighbours in a round alike). The load average is recorded.

Usage:
    .venv/bin/python tools/bench_openvino.py RUN [--threads 2] [--latency --rounds 7 --calls 200] [--json F]
        [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FORMATS = ("tflite", "onnx", "openvino")
MODES = ("none", "int8")
RUNTIME = {"tflite": "LiteRT", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
BASELINE = "LiteRT int8"


def export_all(run: Path, out: Path, threads: int) -> tuple[dict[str, Any], float]:
    """The export report of every format in both modes (verified on every held-out image), and its wall seconds."""
    from edgetl.export import export_run

    t0 = time.perf_counter()
    report = export_run(run, formats=FORMATS, quantize=MODES, output=out, threads=threads, force=True,
                        verify_seconds=None)
    return report.to_dict(), round(time.perf_counter() - t0, 1)


def figures(path: Path, x: np.ndarray, y: np.ndarray, keras_top: np.ndarray, threads: int) -> dict[str, Any]:
    """Accuracy, drop, agreement with Keras and (IRs) the kernels' runtime precisions of one file."""
    from edgetl.runtime import open_model

    with open_model(path, threads=threads) as r:
        top = r.predict(x).argmax(1)
        precisions = r.kernel_precisions() if hasattr(r, "kernel_precisions") else None
    acc = float(np.mean(top == y))
    return {"accuracy": round(acc, 4), "drop": round(float(np.mean(keras_top == y)) - acc, 4),
            "agreement": round(float(np.mean(top == keras_top)), 4), "kernels": precisions}


def variants(run_dir: Path, rows: dict[str, dict[str, Any]], out: Path, threads: int) -> dict[str, dict[str, Any]]:
    """The int8 IRs edgetl does not write, on the export's held-out and calibration images: {name: figures}."""
    import openvino as ov

    from edgetl.core.progress import Reporter
    from edgetl.export.formats.openvino import convert_openvino, quantize_nncf, write_ir
    from edgetl.export.images import ExportImages
    from edgetl.export.plan import DEFAULT_CALIBRATION_SAMPLES
    from edgetl.rundir import load_run

    run = load_run(run_dir)
    images = ExportImages(run, DEFAULT_CALIBRATION_SAMPLES, verify=True)
    x, y, _ = images.held_out()
    calib = images.calibration(Reporter(), np.uint8)
    keras_top = np.asarray(run.load_model().predict(x.astype(np.float32), verbose=0)).argmax(1)
    made = {"int8 (NNCF defaults)": quantize_nncf(convert_openvino(Path(rows["onnx none"]["path"])), calib),
            "int8 (the QDQ ONNX file)": convert_openvino(Path(rows["onnx int8"]["path"])),
            "int8 (the TFLite int8 file as converted)": ov.convert_model(rows["tflite int8"]["path"])}
    result = {}
    for name, model in made.items():
        folder = write_ir(model, out / "".join(c if c.isalnum() else "_" for c in name), meta=None)
        result[name] = {"path": str(folder), "size_mb": round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6,
                                                               3), **figures(folder, x, y, keras_top, threads)}
    # The written IRs' kernels too (the export's rows do not give them).
    for key in ("openvino none", "openvino int8"):
        rows[key]["kernels"] = figures(Path(rows[key]["path"]), x[:1], y[:1], keras_top[:1], threads)["kernels"]
    return result


def time_file(path: Path, size: int, threads: int, calls: int) -> list[float]:
    """Batch-1 milliseconds of `calls` calls of one file (after a warm-up), in this process."""
    from edgetl.runtime import open_model

    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    with open_model(path, threads=threads) as r:
        for _ in range(10):  # the first calls plan the kernels
            r.predict(image)
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            r.predict(image)
            samples.append((time.perf_counter() - t0) * 1000)
    return samples


def latency(paths: dict[str, Path], size: int, threads: int, rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    """Each file in its own process, in turn, `rounds` times: {name: {median_ms, vs_litert_int8, round_ms}}."""
    per_round: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            cmd = [sys.executable, __file__, "--time-file", str(path), "--size", str(size), "--threads", str(threads),
                   "--calls", str(calls)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            per_round[name].append(float(np.median(json.loads(done.stdout.strip().splitlines()[-1]))))
    base = per_round.get(BASELINE)
    return {name: {"median_ms": round(statistics.median(ms), 3), "round_ms": [round(m, 3) for m in ms],
                   "vs_litert_int8": round(statistics.median(m / b for m, b in zip(ms, base, strict=True)), 2)
                   if base else None}
            for name, ms in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", action="store_true", help="time each file in its own process, in turn")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200, help="timed calls per file per round")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for BENCHMARKS.md)")
    ap.add_argument("--time-file", type=Path, help=argparse.SUPPRESS)  # the child process of --latency
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time_file:
        print(json.dumps(time_file(args.time_file, args.size, args.threads, args.calls)))
        return
    if args.run is None:
        ap.error("RUN is required")

    from edgetl.rundir import load_run

    run = load_run(args.run)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        report, seconds = export_all(args.run, Path(tmp) / "export", args.threads)
        rows = {f"{r['format']} {r['mode']}": r for r in report["rows"]}
        extra = variants(args.run, rows, Path(tmp), args.threads)
        table = [{"runtime": RUNTIME[k.split()[0]], "mode": k.split()[1], **{f: r.get(f) for f in (
            "accuracy", "drop", "agreement", "size_mb", "status")}, "kernels": r.get("kernels"), "path": r["path"]}
            for k, r in rows.items()]
        table += [{"runtime": "OpenVINO", "mode": name, "status": "not written by edgetl", **f}
                  for name, f in extra.items()]
        timed: dict[str, Any] = {}
        if args.latency:
            files = {f"{t['runtime']} {t['mode']}": Path(t["path"]) for t in table if t.get("path")}
            timed = latency(files, run.image_size, args.threads, args.rounds, args.calls)
    ref = report.get("reference") or {}
    out = {"run": str(args.run), "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
           "threads": args.threads, "export_seconds": seconds, "reference": ref, "load_start": load_start,
           "load_end": os.getloadavg(), "rows": table, "latency": timed, "rounds": args.rounds, "calls": args.calls}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"Keras accuracy {ref.get('accuracy')} on {ref.get('samples')} {ref.get('split')} images; export of "
          f"{len(rows)} files {seconds} s; load {load_start[0]:.1f} at the start, {out['load_end'][0]:.1f} at the end")
    head = ["runtime", "mode", "accuracy", "drop", "agreement", "MB", "kernels (CPU plugin)"]
    if timed:
        head += ["median ms", "vs LiteRT int8"]
    lines = []
    for t in table:
        kernels = ", ".join(f"{v} {k}" for k, v in sorted((t.get("kernels") or {}).items())) or None
        line = [t["runtime"], t["mode"], t.get("accuracy"), t.get("drop"), t.get("agreement"), t.get("size_mb"),
                kernels]
        if timed:
            lat = timed.get(f"{t['runtime']} {t['mode']}", {})
            line += [lat.get("median_ms"), lat.get("vs_litert_int8")]
        lines.append(line)
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        for row in lines:
            print("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    else:
        for row in [head, *lines]:
            print("  ".join(f"{'-' if v is None else v!s:>12}" for v in row))


if __name__ == "__main__":
    main()
