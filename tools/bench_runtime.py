"""Benchmark every runtime format of one model on this machine; prints a Markdown section for BENCHMARKS.md.

It trains a throwaway run (random weights: latency, size and memory do not depend on the weight
values; accuracy is not measured here), exports it to each format and mode, then runs
`edgetl benchmark` on each file in its own process, so that the peak-memory figure of one file is
not lowered by runtime libraries an earlier file already loaded.

    .venv/bin/python tools/bench_runtime.py --backbone mobilenet_v2 --alpha 1.0 --size 224 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(args.work or tempfile.mkdtemp(prefix="edgetl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    t0 = time.perf_counter()
    if not (run / "manifest.json").is_file():
        from edgetl.data.demo import write_demo_data
        from edgetl.train import train
        from edgetl.train.config import TrainConfig

        write_demo_data(work / "data", per_class=12, seed=0, size_range=(64, 128), force=True)
        train(TrainConfig(data=str(work / "data"), backbone=args.backbone, alpha=args.alpha, weights="none",
                          image_size=args.size, epochs=1, batch_size=16, seed=0, output=str(run)))
    exports = run / "export"
    if not (exports / "export_report.json").is_file():
        from edgetl.export import export_run

        export_run(run, formats=("tflite", "onnx"), quantize=("none", "float16", "dynamic", "int8", "int8-full"),
                   output=exports, calibration_samples=32, verify=False, force=True)
    report = json.loads((exports / "export_report.json").read_text())
    models = [str(run)] + [str(exports / r["path"]) for r in report["rows"] if r["status"] in ("ok", "unverified")]
    prep = time.perf_counter() - t0
    rows = []
    machine = None
    for m in models:
        cmd = [sys.executable, "-m", "edgetl", "benchmark", m, "--json", "--threads", str(args.threads),
               "--batch", str(args.batch), "--min-seconds", str(args.min_seconds), "--runs", str(args.runs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"failed: {m}: {proc.stderr.strip()}", file=sys.stderr)
            continue
        out = json.loads(proc.stdout)
        machine = out["machine"]
        rows.append(out["results"][0])
    from edgetl.evaluate.benchmark import machine_line

    lines = [
        f"### {args.backbone} alpha {args.alpha:g}, {args.size} px, {args.threads} threads",
        "",
        f"Machine: {machine_line(machine) if machine else '?'}.",
        f"Command: `.venv/bin/python tools/bench_runtime.py --backbone {args.backbone} --alpha {args.alpha:g} "
        f"--size {args.size} --threads {args.threads} --batch {args.batch}` (each file measured by "
        "`edgetl benchmark FILE --json` in its own process; random weights; preparation "
        f"{prep:.0f} s).",
        "",
        f"| file | format | mode | input | size MB | p50 ms (b1) | p90 ms (b1) | img/s (b{args.batch}) | peak MB |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lat, thr = r["latency"], r["throughput"]
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 1e6:.0f}"
        lines.append(f"| {r['name']} | {r['format']} | {r['mode']} | {r['input_dtype']} | "
                     f"{r['size_bytes'] / 1e6:.2f} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | "
                     f"{thr['images_per_s']:.1f} | {mem} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
