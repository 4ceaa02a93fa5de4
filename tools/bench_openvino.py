"""OpenVINO int8 against ONNX Runtime int8 and LiteRT int8 on one trained run: accuracy, agreement, size, latency.

One `edgetl export RUN --format tflite --format onnx --format openvino --quantize none --quantize int8` (every
file verified on the run's held-out images against Keras, as a user runs it) gives each file's accuracy, drop,
top-1 agreement and size; then the int8 files (and the float32 ones, for the ratio) are timed at batch 1 in their
own runtimes with --threads threads, round-robin (a few calls of each file per round, so load from other
processes spreads evenly over them): the median and the 10th percentile of all calls.

Usage:
    .venv/bin/python tools/bench_openvino.py RUN --threads 2 [--rounds 30] [--json out.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def export_all(run: Path, out: Path, threads: int) -> tuple[dict[str, Any], float]:
    """The export report of every format in both modes, and the command's wall seconds."""
    from edgetl.export import export_run

    t0 = time.perf_counter()
    report = export_run(run, formats=FORMATS, quantize=MODES, output=out, threads=threads, force=True)
    return report.to_dict(), round(time.perf_counter() - t0, 1)


def time_files(paths: dict[str, Path], image: np.ndarray, threads: int, rounds: int, calls: int = 5
               ) -> dict[str, dict[str, float]]:
    """Batch-1 milliseconds of each file, timed round-robin: {key: {median_ms, p10_ms}}."""
    from edgetl.runtime import open_model

    runners = {k: open_model(p, threads=threads) for k, p in paths.items()}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    try:
        for r in runners.values():  # warm-up: the first calls plan the kernels
            for _ in range(3):
                r.predict(image)
        for _ in range(rounds):
            for k, r in runners.items():
                for _ in range(calls):
                    t0 = time.perf_counter()
                    r.predict(image)
                    samples[k].append((time.perf_counter() - t0) * 1000)
    finally:
        for r in runners.values():
            r.close()
    return {k: {"median_ms": round(float(np.median(v)), 3), "p10_ms": round(float(np.percentile(v, 10)), 3)}
            for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    args = ap.parse_args()

    from edgetl.rundir import load_run

    run = load_run(args.run)
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        report, seconds = export_all(args.run, Path(tmp) / "export", args.threads)
        rows = {f"{r['format']} {r['mode']}": r for r in report["rows"]}
        image = np.random.default_rng(0).integers(0, 256, (1, run.image_size, run.image_size, 3), dtype=np.uint8)
        timed = time_files({k: Path(r["path"]) for k, r in rows.items() if r.get("written")}, image, args.threads,
                           args.rounds)
    ref = report.get("reference") or {}
    out = {"run": str(args.run), "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
           "threads": args.threads, "export_seconds": seconds, "reference": ref, "rows": []}
    for key, r in rows.items():
        fmt_, mode = key.split()
        t = timed.get(key, {})
        base = timed.get(f"{fmt_} none", {}).get("median_ms")
        out["rows"].append({"runtime": RUNTIME[fmt_], "format": fmt_, "mode": mode, "status": r.get("status"),
                            "accuracy": r.get("accuracy"), "drop": r.get("drop"), "agreement": r.get("agreement"),
                            "size_mb": r.get("size_mb"), **t,
                            "vs_float32": round(base / t["median_ms"], 2) if base and t.get("median_ms") else None})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    head = ["runtime", "mode", "accuracy", "drop", "agreement", "MB", "median ms", "p10 ms", "speed-up vs float32"]
    lines = [head] + [[r["runtime"], r["mode"], r["accuracy"], r["drop"], r["agreement"], r["size_mb"],
                       r.get("median_ms"), r.get("p10_ms"), r["vs_float32"]] for r in out["rows"]]
    print(f"Keras accuracy {ref.get('accuracy')} on {ref.get('samples')} {ref.get('split')} images; export of "
          f"{len(rows)} files {seconds} s; batch 1, {args.threads} threads")
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        for row in lines[1:]:
            print("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    else:
        for row in lines:
            print("  ".join(f"{'-' if v is None else v!s:>12}" for v in row))


if __name__ == "__main__":
    main()
