"""Benchmark edgetl's export modes: file size and batch-1 latency of every mode against TFLite float32.

For each backbone (default: MobileNetV2 and ResNet50 at 224 px) an edgetl classifier (preprocessing,
frozen base, 5-class head) is built, written as a SavedModel and exported by edgetl's own export
functions to every TFLite mode and to ONNX (the raw tf2onnx output, edgetl's offline-optimised
float32 file, int8 QDQ and dynamic). Calibration uses generated pictures (edgetl demo-data shapes,
pixels 0..255), not noise. Each file is then timed in its stock runtime (ai_edge_litert Interpreter,
onnxruntime InferenceSession) at batch 1 with --threads threads; the files are timed round-robin, a
few calls each per round, so that load from other processes spreads evenly over them. The median
and the 10th percentile of all calls are reported.

Latency does not depend on weight values, so --weights none (random weights, no download) measures
the same speed as ImageNet weights; accuracy goals are measured with --run on a trained run.

With --whole RUN, `edgetl export RUN` in every TFLite and ONNX mode runs in a fresh process (TensorFlow
import included) and the wall time, CPU time, peak RSS and export_report.json's per-phase seconds are
reported (issue #13 part 3: the real-photo run exported and verified in every mode).

Usage:
    .venv/bin/python tools/bench_export.py --backbones mobilenet_v2,resnet50 --threads 2 \
        --json bench_export.json
    .venv/bin/python tools/bench_export.py --run runs/demo --threads 2   # accuracy of a trained run
    .venv/bin/python tools/bench_export.py --whole runs/flowers --threads 2   # the whole command, by phase
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TFLITE_MODES = ("none", "float16", "dynamic", "int8", "int8-full", "int16x8")


def _calibration_images(size: int, n: int, workdir: Path) -> np.ndarray:
    from edgetl.data import load_images, scan_folder
    from edgetl.data.demo import write_demo_data

    data = workdir / f"calib-{size}-{n}"
    if data.is_dir():
        shutil.rmtree(data)
    write_demo_data(data, per_class=max(2, -(-n // 4)), seed=7, size_range=(size // 2, size * 2))
    splits = scan_folder(data, val_split=0.0, test_split=0.0, seed=0)
    x = load_images(splits.root, splits.train[:n], (size, size)).astype(np.float32)
    x[0, 0, 0, :] = 0.0  # as edgetl export does: the input range calibrates to exactly 0..255
    x[0, 0, 1, :] = 255.0
    return x


def _build(backbone: str, size: int, weights: str, alpha: float | None, images: np.ndarray) -> Any:
    import keras

    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier

    keras.utils.set_random_seed(0)
    spec = resolve_backbone(backbone)
    base = build_base(spec, weights=weights, alpha=alpha, image_size=size)
    model = build_classifier(base, image_size=size, num_classes=5, preprocessing=spec.default_preprocessing,
                             dropout=0.0).model
    if weights == "none":
        _set_batchnorm_statistics(base, model, images[:32])
    return model


def _set_batchnorm_statistics(base: Any, model: Any, images: np.ndarray) -> None:
    """Give a randomly initialised network the BatchNorm statistics of real images.

    With random weights and BatchNorm's initial statistics (mean 0, variance 1) the signal dies out
    within a few blocks: every activation is near zero, quantization ranges collapse, and int16x8
    depthwise kernels even refuse to prepare. One pass in training mode with momentum 0 sets each
    BatchNorm's moving statistics to those of its inputs, as training would: activations are then
    in realistic ranges, which is what quantized latency and size should be measured on.
    """
    import keras

    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    base.trainable = True
    for layer in bns:
        layer.momentum = 0.0
    model(images.astype(np.float32), training=True)
    for layer, m in zip(bns, saved, strict=True):
        layer.momentum = m
    base.trainable = False


def _tflite_runner(path: Path, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = np.random.default_rng(0).integers(0, 256, size=inp["shape"]).astype(inp["dtype"])

    def call() -> None:
        it.set_tensor(inp["index"], x)
        it.invoke()
        it.get_tensor(out["index"])

    return call


def _onnx_runner(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    from edgetl.runtime.onnxrt import X64_QUANT_PRECISION

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry(X64_QUANT_PRECISION, "1")  # as edgetl's runner: exact int8 on x86 without VNNI
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in i.shape]
    x = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.float32)
    return lambda: sess.run(None, {i.name: x})


def _time_all(calls: dict[str, Any], rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    """Time each file in blocks of consecutive calls (as a deployed model runs), several rounds each.

    Blocks of different files alternate, so a burst of load from other processes hits every file
    alike; a pause between blocks lets the previous runtime's spinning worker threads go to sleep
    (ONNX Runtime and XNNPACK threads spin-wait after each call and would slow the next file down).
    """
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            time.sleep(0.2)
            call()  # warm-up in each block: first calls allocate and pack weights
            call()
            for _ in range(per_round):
                t = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t)
    return {k: {"median_ms": round(float(np.median(v)) * 1000, 3),
                "p10_ms": round(float(np.percentile(v, 10)) * 1000, 3), "calls": len(v)} for k, v in times.items()}


def bench_backbone(backbone: str, size: int, weights: str, alpha: float | None, threads: int, rounds: int,
                   per_round: int, calibration: int, workdir: Path, modes: list[str]) -> dict[str, Any]:
    import onnx

    from edgetl.export.formats.onnx import convert_onnx, export_onnx
    from edgetl.export.formats.saved_model import save_serving
    from edgetl.export.formats.tflite import export_tflite

    work = workdir / backbone
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    calib = _calibration_images(size, calibration, workdir)
    model = _build(backbone, size, weights, alpha, calib)
    saved = save_serving(model, work / "saved_model")
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {"build_and_savedmodel": round(time.perf_counter() - t0, 1)}
    for mode in modes:
        t = time.perf_counter()
        rep = None
        if mode in ("int8", "int8-full", "int16x8"):
            def rep(c: np.ndarray = calib) -> Any:
                for i in range(len(c)):
                    yield [c[i:i + 1]]
        p = work / f"{mode}.tflite"
        export_tflite(saved, p, mode, representative=rep, io_type="uint8" if mode == "int8-full" else None)
        files[f"tflite {mode}"] = p
        seconds[f"tflite {mode}"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    raw = work / "raw_tf2onnx.onnx"
    onnx.save(convert_onnx(saved), str(raw))
    files["onnx none, raw tf2onnx output"] = raw
    seconds["onnx raw"] = round(time.perf_counter() - t, 1)
    for mode in ("none", "int8", "dynamic"):
        t = time.perf_counter()
        p = work / f"{mode}.onnx"
        export_onnx(saved, p, mode, calibration=calib if mode == "int8" else None,
                    float_model=files.get("onnx none") if mode != "none" else None)
        files[f"onnx {mode}"] = p
        seconds[f"onnx {mode}"] = round(time.perf_counter() - t, 1)
    calls, errors = {}, {}
    for k, p in files.items():
        try:
            calls[k] = _onnx_runner(p, threads) if p.suffix == ".onnx" else _tflite_runner(p, threads)
        except Exception as exc:  # noqa: BLE001 - a file that does not load is a result, not a crash
            errors[k] = str(exc).strip().splitlines()[0][:200]
    timing = _time_all(calls, rounds, per_round)
    for k, e in errors.items():
        timing[k] = {"median_ms": None, "p10_ms": None, "calls": 0, "error": e}
    base_size = files["tflite none"].stat().st_size
    base_ms = timing["tflite none"]["median_ms"]
    rows = []
    for k, p in files.items():
        size_b = p.stat().st_size
        rows.append({"file": k, "size_mb": round(size_b / 1e6, 2),
                     "size_vs_tflite_f32": round(size_b / base_size, 3), **timing[k],
                     "latency_vs_tflite_f32": round(timing[k]["median_ms"] / base_ms, 2)
                     if timing[k]["median_ms"] else None})
    return {"backbone": backbone, "alpha": alpha, "size": size, "weights": weights, "rows": rows,
            "convert_seconds": seconds}


def bench_run(run_dir: str, threads: int, out: Path) -> dict[str, Any]:
    """Accuracy of a trained run's exports against its Keras model (edgetl export's own verification)."""
    from edgetl.export import export_run

    report = export_run(run_dir, formats=("tflite", "onnx"), quantize=("none", "int8", "int8-full", "dynamic"),
                        output=out, threads=threads, force=True)
    return {"run": run_dir, "reference": report.reference, "verify": report.verify,
            "rows": [{k: r.get(k) for k in ("format", "mode", "io_type", "size_mb", "accuracy", "drop", "agreement",
                                            "max_abs_diff", "latency_ms", "status")} for r in report.rows]}


EVERY_MODE = ["-f", "tflite", "-f", "onnx"] + [a for m in TFLITE_MODES for a in ("-q", m)]


def bench_whole(run_dir: str, threads: int, out: Path) -> dict[str, Any]:
    """`edgetl export RUN` in every mode in a fresh process: wall, CPU, peak RSS and the report's phases."""
    import resource
    import subprocess

    cmd = [str(Path(sys.executable).parent / "edgetl"), "export", run_dir, *EVERY_MODE, "--force", "--threads",
           str(threads), "-o", str(out), "--json"]
    load = [round(v, 2) for v in os.getloadavg()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"edgetl export failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    doc = json.loads((out / "export_report.json").read_text())
    return {"command": " ".join(cmd), "wall_seconds": round(wall, 1),
            "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 0), "loadavg_before": load,
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "export_seconds": doc.get("seconds"),
            "phases": doc.get("phases"), "phase_totals": doc.get("phase_totals"),
            "rows": [{k: r.get(k) for k in ("format", "mode", "accuracy", "drop", "samples", "latency_ms", "status")}
                     for r in doc["rows"]]}


def _whole_markdown(r: dict[str, Any]) -> str:
    lines = [f"wall {r['wall_seconds']} s (export {r['export_seconds']} s inside), CPU {r['cpu_seconds']} s, "
             f"peak RSS {r['peak_rss_mb']:.0f} MB, load {r['loadavg_before']} -> {r['loadavg_after']}", "",
             "| phase | file | seconds | CPU s |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {p['phase']} | {p['file'] or ''} | {p['seconds']} | {p.get('cpu_seconds', '-')} |"
              for p in r["phases"]]
    lines += ["", "| file | accuracy | drop | samples | status |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {x['format']} {x['mode']} | {x['accuracy']} | {x['drop']} | {x['samples']} | {x['status']} |"
              for x in r["rows"]]
    return "\n".join(lines)


def _markdown(result: dict[str, Any]) -> str:
    alpha = f" alpha {result['alpha']}" if result["alpha"] else ""
    lines = [f"### {result['backbone']}{alpha} {result['size']}x{result['size']} ({result['weights']} weights)", "",
             "| file | size MB | size / TFLite f32 | median ms | p10 ms | latency / TFLite f32 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['file']} | {r['size_mb']} | {r['size_vs_tflite_f32']} | {r['median_ms']} "
                     f"| {r['p10_ms']} | {r['latency_vs_tflite_f32']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="mobilenet_v2,resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier (default: 1.0)")
    ap.add_argument("--weights", default="none", help="none (random: same speed), imagenet, bundled, or a file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--calibration", type=int, default=100)
    ap.add_argument("--modes", default=",".join(TFLITE_MODES))
    ap.add_argument("--run", help="also export this trained run and report accuracy of each file")
    ap.add_argument("--whole", metavar="RUN", help="only time `edgetl export RUN` in every mode, by phase")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.whole:
        with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
            whole = bench_whole(args.whole, args.threads, Path(tmp) / "export")
        print(_whole_markdown(whole), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(whole, indent=2, default=str) + "\n")
        return

    from edgetl.cli.kit import load_tensorflow

    load_tensorflow()
    import tensorflow as tf

    load = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "loadavg_at_start": [round(v, 2) for v in load], "tensorflow": tf.__version__},
        "threads": args.threads, "batch": 1, "backbones": []}
    work = Path(tempfile.mkdtemp(prefix="edgetl-bench-"))
    try:
        for bb in [b for b in args.backbones.split(",") if b]:
            r = bench_backbone(bb, args.size, args.weights, args.alpha, args.threads, args.rounds, args.per_round,
                               args.calibration, work, [m for m in args.modes.split(",") if m])
            result["backbones"].append(r)
            print(_markdown(r), flush=True)
            print(f"convert seconds: {r['convert_seconds']}\n", flush=True)
        if args.run:
            result["run"] = bench_run(args.run, args.threads, work / "run_export")
            print(json.dumps(result["run"], indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
