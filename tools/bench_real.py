"""Real photos, real ImageNet weights: accuracy of every file edgetl makes, and train time against the guide.

Uses ../shared/realdata (relative to the repository root; see its README): the flowers folder (5 classes,
4,317 JPEGs of 128x128) and the MobileNetV2 ImageNet weight files. Everything runs in this process
through edgetl's library API (one TensorFlow import), except the timed train commands and the Keras
guide, which run as fresh processes timed whole, as a user waits for them.

    # the full-size benchmark (MobileNetV2 1.0 at 224, all photos), table into BENCHMARKS.md:
    .venv/bin/python tools/bench_real.py --suite full --guide --benchmarks
    # edgetl train against the guide on all photos, bracketed, with edgetl's overhead ratio (issue #13):
    .venv/bin/python tools/bench_real.py --suite full --only-guide --bracket --json /tmp/guide.json
    # edgetl alone, twice (the converted base's cache cold, then warm), with the overhead ratio:
    .venv/bin/python tools/bench_real.py --suite full --only-guide --no-guide-run
    # re-record the CI figures that tests/test_realdata.py asserts (after an intended change):
    .venv/bin/python tools/bench_real.py --suite ci --record

The stages (subset, train, export, optimize) are plain functions: tests/test_realdata.py runs the
same functions on the CI suite and compares with tests/expected/realdata.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
FLOWERS = REALDATA / "flowers"
EXPECTED = ROOT / "tests" / "expected" / "realdata.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def _guide_script() -> str:
    """tools/bench_train.py's GUIDE, the one copy of the Keras guide by hand (loaded by path: tools/ is no package,
    and tests/test_realdata.py loads this file by path too)."""
    spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).with_name("bench_train.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GUIDE


GUIDE = _guide_script()

# Every TFLite mode; ONNX gets those of them it has (none, dynamic, int8), in the same export call.
TFLITE_MODES = ("none", "float16", "dynamic", "int8", "int8-full", "int16x8")


@dataclass(frozen=True)
class Suite:
    """What one measurement runs: the data subset, the backbone, the training and optimization budgets."""

    name: str
    alpha: float
    image_size: int
    per_class: int  # images per class, a seeded sample; 0: the whole folder
    epochs: int = 10
    fine_tune_layers: str = "30"
    fine_tune_epochs: int = 2
    fine_tune_lr: float = 1e-4
    qat_epochs: int = 2
    prune_epochs: int = 2
    sparsity: float = 0.5
    seed: int = 0

    def weights(self) -> Path:
        alpha = "1.0" if self.alpha == 1 else f"{self.alpha:g}"
        return REALDATA / "weights" / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"


SUITES = {
    # CI: small enough for a few minutes on 2 cores, large enough that one image of the test split is 1 point.
    "ci": Suite("ci", alpha=0.35, image_size=96, per_class=160, prune_epochs=4),
    # The benchmark: MobileNetV2 1.0 at 224 on every photo.
    "full": Suite("full", alpha=1.0, image_size=224, per_class=0, qat_epochs=1, fine_tune_epochs=1),
}


def available() -> str | None:
    """None when the real data is here, else the one-line reason it is not."""
    if not FLOWERS.is_dir():
        return f"real data not found at {REALDATA} (see its README)"
    for alpha in (0.35, 1.0):
        w = Suite("x", alpha=alpha, image_size=224, per_class=0).weights()
        if not w.is_file():
            return f"real weights not found: {w}"
    return None


def make_subset(dest: Path, per_class: int, seed: int) -> Path:
    """A seeded sample of `per_class` photos per class copied under `dest` (the folder itself when 0)."""
    if per_class <= 0:
        return FLOWERS
    rng = random.Random(seed)
    data = dest / "flowers"
    for cls in sorted(p.name for p in FLOWERS.iterdir() if p.is_dir()):
        files = sorted(p for p in (FLOWERS / cls).iterdir() if p.is_file())
        rng.shuffle(files)
        (data / cls).mkdir(parents=True, exist_ok=True)
        for f in files[:per_class]:
            shutil.copyfile(f, data / cls / f.name)
    return data


def train_run(data: Path, out: Path, suite: Suite, *, fine_tune: bool = False, engine: str = "auto") -> dict[str, Any]:
    """Train (head only, or head then the top of the base) through the library; figures of the run.

    engine: the feature pass's (TrainConfig.feature_cache: auto, keras or tflite).
    """
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    cfg = TrainConfig(data=str(data), backbone="mobilenet_v2", weights=str(suite.weights()), alpha=suite.alpha,
                      image_size=suite.image_size, epochs=suite.epochs, patience=suite.epochs, seed=suite.seed,
                      fine_tune_layers=suite.fine_tune_layers if fine_tune else None,
                      fine_tune_epochs=suite.fine_tune_epochs, fine_tune_lr=suite.fine_tune_lr,
                      feature_cache=engine, output=str(out), force=True)
    t0 = time.perf_counter()
    result = train(cfg)
    return {"val_accuracy": result.metrics["val"]["accuracy"], "test_accuracy": result.metrics["test"]["accuracy"],
            "test_samples": result.metrics["test"]["samples"],
            "feature_cache": result.feature_cache, "seconds": round(time.perf_counter() - t0, 1),
            "feature_engine": (json.loads((out / "manifest.json").read_text())["training"].get("feature_engine")
                               or {}).get("engine"),
            "phases": {k: round(v, 1) for k, v in result.seconds.items()}}


def export_figures(run: Path, formats: tuple[str, ...], modes: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """Export `run` to every pair of these formats and modes that exists, verified; one figure row per file."""
    from edgetl.export import export_run

    t0 = time.perf_counter()
    rep = export_run(run, formats=formats, quantize=modes, force=True)
    out: dict[str, Any] = {}
    for row in rep.rows:
        out[f"{prefix}{row['format']}-{row['mode']}"] = {
            "accuracy": row.get("accuracy"), "drop": row.get("drop"), "agreement": row.get("agreement"),
            "size_mb": row.get("size_mb"), "latency_ms": row.get("latency_ms"), "status": row.get("status"),
            "path": Path(row["path"]).name if row.get("path") else None}
    out["_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def optimize_figures(run: Path, out: Path, method: str, suite: Suite) -> dict[str, Any]:
    """QAT or pruning of `run` into `out`; the new run's float accuracy and (pruning) sparsity."""
    from edgetl.optimize import optimize_run

    t0 = time.perf_counter()
    epochs = suite.qat_epochs if method == "qat" else suite.prune_epochs
    kw = {"sparsity": suite.sparsity} if method == "prune" else {}
    res = optimize_run(run, method=method, epochs=epochs, output=out, force=True, **kw)
    fig = {"test_accuracy": res.metrics["test"]["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}
    if res.qat_metrics:
        fig["fake_quant_accuracy"] = res.qat_metrics["accuracy"]
    if res.sparsity is not None:
        fig["sparsity"] = round(float(res.sparsity), 4)
    return fig


# What each stage's run is exported to: every TFLite mode and ONNX float/int8 for the head-only run,
# the deployable int8 files for the others. File keys are "<stage>/<format>-<mode>" ("" for head).
STAGE_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "head": (("tflite", "onnx"), TFLITE_MODES),
    "fine-tune": (("tflite",), ("int8-full",)),
    "qat": (("tflite",), ("int8", "int8-full")),
    "prune": (("tflite",), ("none", "int8-full")),
}


def stage_files(run: Path, stage: str) -> dict[str, Any]:
    """Export one stage's run as STAGE_EXPORTS says; figure rows keyed as realdata.json keys them."""
    formats, modes = STAGE_EXPORTS[stage]
    return export_figures(run, formats, modes, prefix="" if stage == "head" else f"{stage}/")


def mcu_figures(run: Path, out: Path) -> dict[str, Any]:
    """The run's --target mcu file in TensorFlow Lite Micro (edgetl.export.tflm_check): arena, flash, accuracy."""
    from edgetl.export import export_run

    t0 = time.perf_counter()
    (row,) = export_run(run, target="mcu", output=out, force=True, verify_seconds=None).rows
    t = row.get("tflm") or {}
    return {"ram_kb": row.get("ram_kb"), "flash_kb": row.get("flash_kb"), "status": row.get("status"),
            **{k: t.get(k) for k in ("accuracy", "agreement", "litert_accuracy", "reference_kernels_max_steps",
                                     "reference_kernels_steps_beyond_a_logit_step", "samples")},
            "seconds": round(time.perf_counter() - t0, 1)}


def measure(suite: Suite, work: Path, stages: tuple[str, ...] = tuple(STAGE_EXPORTS)) -> dict[str, Any]:
    """These stages of the suite in `work` (head always); the figures keyed by file (what realdata.json records)."""
    data = make_subset(work, suite.per_class, suite.seed)
    figures: dict[str, Any] = {"files": {}, "export_seconds": {}}
    # Recorded figures come from the TensorFlow engine, chosen by option: the cost model's choice follows the
    # machine's clock, and the other engine's features differ in the last bits (enough to move a QAT run's figures).
    figures["train-head"] = train_run(data, work / "head", suite, engine="keras")
    if "fine-tune" in stages:
        figures["train-fine-tune"] = train_run(data, work / "fine-tune", suite, fine_tune=True, engine="keras")
    for method in ("qat", "prune"):
        if method in stages:
            figures[method] = optimize_figures(work / "head", work / method, method, suite)
    figures["tflm"] = mcu_figures(work / "head", work / "mcu")
    for stage in ("head", *(s for s in STAGE_EXPORTS if s in stages and s != "head")):
        files = stage_files(work / stage, stage)
        figures["export_seconds"][stage] = files.pop("_seconds")
        figures["files"].update(files)
    return figures


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f" {f}" in text)
    except OSError:
        pass
    return f"{cpu} ({flags}), {os.cpu_count()} cores, Python {platform.python_version()}"


def record(figures: dict[str, Any], suite: Suite) -> None:
    """Write tests/expected/realdata.json: the suite, the tolerances and the figures."""
    from edgetl.core.fileio import write_json

    doc = {
        "about": "Accuracy on real photos (../shared/realdata/flowers, a seeded subset) with real MobileNetV2 "
                 "ImageNet weights, of every file edgetl makes. Written by tools/bench_real.py --suite ci --record; "
                 "asserted by tests/test_realdata.py within the tolerances below.",
        "suite": dataclasses.asdict(suite),
        "tolerance": {
            "accuracy": 0.04,  # absolute, either way: 4 test images of 100 (seeded, but CPUs differ in rounding)
            "agreement": 0.04,  # a file may agree with Keras on at most 4 fewer test images than recorded
            "float_agreement": 0.99,  # float32 files must give Keras' top-1 on (nearly) every image
            "sparsity": 0.02,
            # The pruned run (half the weights of a 0.35-wide base zeroed in 4 epochs) moved by 10 points
            # (0.475 -> 0.575) when the decoded pixels moved by one level (TensorFlow's decoder for Pillow's).
            "pruned_accuracy": 0.1,
            # The QAT run (2 epochs of tf_keras fake-quant training) is seeded but not bit-reproducible across
            # processes (multi-threaded float sums): the recorded run gave 0.675 and a later CI run of the same
            # QAT code 0.6125, 5 of 80 test images, for its test accuracy and its files' drop alike.
            "qat_accuracy": 0.1,
        },
        "machine": machine(),
        "recorded": time.strftime("%Y-%m-%d"),
        "figures": figures,
    }
    write_json(EXPECTED, doc)




def timed(cmd: list[str], stream_stderr: bool = False) -> tuple[float, str]:
    """Wall seconds of `cmd` and its stdout; its stderr shown only on failure, or passed through (stream_stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if stream_stderr else subprocess.PIPE,
                          text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:3])} ...\n{(proc.stderr or '')[-3000:]}")
    return seconds, proc.stdout


def timed_train(data: Path, out: Path, suite: Suite) -> dict[str, Any]:
    """`edgetl train` as a user runs it (a fresh process, timed whole), same split fractions as the guide."""
    cmd = [str(Path(sys.executable).parent / "edgetl"), "train", str(data), "--backbone", "mobilenet_v2", "--alpha",
           str(suite.alpha), "--weights", str(suite.weights()), "--image-size", str(suite.image_size), "--epochs",
           str(suite.epochs), "--patience", str(suite.epochs), "--val-split", "0.2", "--test-split", "0",
           "--seed", str(suite.seed), "--output", str(out), "--force"]
    load = os.getloadavg()[0]
    seconds, _ = timed(cmd)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "phases": manifest["training"]["seconds"],
            "val_accuracy": manifest["metrics"]["val"], "engine": (manifest["training"]["feature_engine"] or {}),
            "load_1min": f"{load:.1f}-{os.getloadavg()[0]:.1f}"}


def bare_start(repeat: int = 3) -> list[float]:
    """Wall seconds of fresh `python -c "import tensorflow"` processes: the start-up no TensorFlow program avoids."""
    return [round(timed([sys.executable, "-c", "import tensorflow"])[0], 2) for _ in range(repeat)]


def overhead(run: dict[str, Any], start: float) -> dict[str, Any]:
    """edgetl's wall time over the sum of its unavoidable parts (BENCHMARKS.md, 2026-12-02, issue #13 part 1):
    a bare TensorFlow start, one pass of the base over every image (the run's own seconds inside the base's
    forward calls) and the head's fit; the rest of the run's recorded parts are what it spends beyond them."""
    ph = run["phases"]
    needed = {"start (bare import tensorflow)": start, "base pass": ph["features_base"], "head fit": ph["head"]}
    steps = ("scan", "detail", "build", "setup", "evaluate", "save")
    beyond = {"start beyond a bare import": ph["start"] - start, "exit (after train() returned)":
              run["seconds"] - ph["wall"], **{k: ph[k] for k in steps if k in ph},
              **{f"feature pass: {k}": ph[f"features_{k}"] for k in ("input", "trace", "wait", "convert", "check",
                                                                     "other", "save")}}
    total = sum(needed.values())
    return {"unavoidable": {k: round(v, 2) for k, v in needed.items()}, "unavoidable_sum": round(total, 1),
            "beyond": {k: round(v, 2) for k, v in beyond.items()}, "ratio": round(run["seconds"] / total, 3)}


def guide_comparison(work: Path, suite: Suite, per: int, bracket: bool, with_guide: bool = True) -> dict[str, Any]:
    """edgetl train, then the guide, (then edgetl again when bracket), each a fresh process timed whole on the
    same photos; a bare TensorFlow start timed before them; the speed-up and each edgetl run's overhead ratio.

    edgetl's converted-base cache starts empty (a folder of its own): the first run converts, a later one loads.
    Without the guide: edgetl twice (that cold run, then a warm one).
    """
    os.environ["EDGETL_CACHE_DIR"] = str(work / "engine-cache")  # the timed processes inherit it
    gdata = make_subset(work / "guide", per, suite.seed)
    n = sum(1 for _ in gdata.rglob("*.jpg"))
    loads = [" ".join(f"{v:.2f}" for v in os.getloadavg())]
    starts = bare_start()
    start = sorted(starts)[len(starts) // 2]
    runs = [timed_train(gdata, work / "timed", suite)]
    out: dict[str, Any] = {"images": n, "guide_images": n, "edgetl": runs[0], "bare_start_seconds": starts}
    if with_guide:
        print(f"edgetl {runs[0]['seconds']} s; now the guide", file=sys.stderr, flush=True)
        g_load = os.getloadavg()[0]
        theirs = guide(gdata, suite)
        theirs["load_1min"] = f"{g_load:.1f}-{os.getloadavg()[0]:.1f}"
        print(f"guide {theirs['seconds']} s", file=sys.stderr, flush=True)
        out.update(guide=theirs, speedup=round(theirs["seconds"] / runs[0]["seconds"], 2))
    if bracket or not with_guide:
        runs.append(timed_train(gdata, work / "timed-after", suite))
        out["edgetl_after"] = runs[1]
        if with_guide:
            out["speedup_after"] = round(out["guide"]["seconds"] / runs[1]["seconds"], 2)
    loads.append(" ".join(f"{v:.2f}" for v in os.getloadavg()))
    out["load_before_after"] = loads
    for run in runs:
        run["overhead"] = overhead(run, start)
    if per:
        out["note"] = f" (on a seeded subset of {per} photos per class, not all)"
    return out


def guide_table(g: dict[str, Any]) -> str:
    """The guide comparison (when it ran) and the overhead ratios as Markdown."""
    after = "edgetl train, right after the guide" if "guide" in g else "edgetl train again (cache warm)"
    runs = [("edgetl train", g["edgetl"])] + ([(after, g["edgetl_after"])] if "edgetl_after" in g else [])
    lines = ["| fresh process, timed whole | photos | wall time (s) | val accuracy | engine | 1-min load (start-end) |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    lines += [f"| {name} | {g['images']} | {r['seconds']} | {r['val_accuracy']:.3f} | {r['engine'].get('engine')}"
              f"{' (cached)' if r['engine'].get('cached') else ''} | {r['load_1min']} |" for name, r in runs]
    if "guide" in g:
        t = g["guide"]
        lines += [f"| Keras guide by hand | {g['guide_images']} | {t['seconds']} | {t['val_accuracy']:.3f} (best "
                  f"epoch; last {t['last_val_accuracy']:.3f}) | TensorFlow | {t['load_1min']} |", "",
                  f"Speed-up {g['speedup']}x" + (f" (against the run after: {g['speedup_after']}x)"
                                                 if "speedup_after" in g else "") + "."]
    lines += ["", f"Bare `import tensorflow`: {g['bare_start_seconds']} s; load averages before/after "
              f"{g['load_before_after']}.", ""]
    for name, r in runs:
        o = r["overhead"]
        lines += [f"{name}: overhead ratio **{o['ratio']}** ({r['seconds']} s over {o['unavoidable_sum']} s "
                  "unavoidable).", "", "| part | seconds |", "| --- | ---: |"]
        lines += [f"| unavoidable: {k} | {v} |" for k, v in o["unavoidable"].items()]
        lines += [f"| beyond: {k} | {v} |" for k, v in o["beyond"].items()]
        lines.append("")
    return "\n".join(lines)


def guide(data: Path, suite: Suite) -> dict[str, Any]:
    cmd = [sys.executable, "-c", GUIDE, str(data), str(suite.image_size), str(suite.epochs), str(suite.weights()),
           str(suite.alpha), str(suite.seed)]
    seconds, out = timed(cmd, stream_stderr=True)  # its epoch lines: progress in long runs' logs
    return {"seconds": round(seconds, 1), **json.loads(out.strip().splitlines()[-1])}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(result: dict[str, Any]) -> str:
    """The Markdown section for BENCHMARKS.md."""
    fig = result["figures"]
    suite = result["suite"]
    head = fig["train-head"]
    lines = [
        f"### {result['date']}: flowers, MobileNetV2 {suite['alpha']:g} at {suite['image_size']}, "
        f"{'all' if not suite['per_class'] else suite['per_class']} photos per class",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}. Load average at the start: {result['load']}.",
        f"Test split: {head['test_samples']} photos (one photo is {100 / max(head['test_samples'], 1):.2f} points); "
        f"head: {suite['epochs']} epochs on the cached features; fine-tuning: top {suite['fine_tune_layers']} layers, "
        f"{suite['fine_tune_epochs']} epochs at lr {suite['fine_tune_lr']:g}; QAT {suite['qat_epochs']} epochs; "
        f"pruning to {suite['sparsity']:g} in {suite['prune_epochs']} epochs.",
        "",
        "| file | test accuracy (%) | drop vs its Keras model (points) | agreement with Keras (%) | size (MB) "
        "| latency (ms, batch 1) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| Keras, head only (val {_pct(head['val_accuracy'])}) | {_pct(head['test_accuracy'])} | - | - | - | - |",
    ]
    for key, row in fig["files"].items():
        lines.append(f"| {key} | {_pct(row['accuracy'])} | {_pct(row['drop'])} | {_pct(row['agreement'])} | "
                     f"{row['size_mb'] if row['size_mb'] is not None else '-'} | "
                     f"{row['latency_ms'] if row['latency_ms'] is not None else '-'} |")
    ft, qat, prune = fig.get("train-fine-tune"), fig.get("qat"), fig.get("prune")
    if ft:
        lines.append(f"| Keras, fine-tuned (val {_pct(ft['val_accuracy'])}) | {_pct(ft['test_accuracy'])} "
                     "| - | - | - | - |")
    if qat:
        lines.append(f"| Keras, after QAT (fake-quantized: {_pct(qat.get('fake_quant_accuracy'))}) | "
                     f"{_pct(qat['test_accuracy'])} | - | - | - | - |")
    if prune:
        lines.append(f"| Keras, pruned (sparsity {prune.get('sparsity')}) | {_pct(prune['test_accuracy'])} "
                     "| - | - | - | - |")
    done = ", ".join(f"{name} {f['seconds']}" for name, f in (("fine-tuning run", ft), ("QAT", qat),
                                                                ("pruning", prune)) if f)
    lines += [
        "",
        f"Seconds in this process: head run {head['seconds']} (phases {head['phases']}, feature engine "
        f"{head.get('feature_engine')}){', ' + done if done else ''}; export and verification of each stage's files "
        f"{fig['export_seconds']}.",
    ]
    if "vs_guide" in result:
        g = result["vs_guide"]
        lines += [
            "",
            "| train, timed whole (fresh process) | photos | wall time (s) | val accuracy |",
            "| --- | ---: | ---: | ---: |",
            f"| edgetl train | {g['images']} | {g['edgetl']['seconds']} | {g['edgetl']['val_accuracy']:.3f} |",
            f"| Keras guide by hand | {g['guide_images']} | {g['guide']['seconds']} | "
            f"{g['guide']['val_accuracy']:.3f} (best epoch; last {g['guide']['last_val_accuracy']:.3f}) |",
            "",
            f"Speed-up {g['speedup']}x{g.get('note', '')}. edgetl phases: {g['edgetl']['phases']}.",
        ]
    return "\n".join(lines) + "\n"


def write_benchmarks(section: str) -> None:
    """Insert the section under '## real photos' in BENCHMARKS.md (created before '## benchmark' if missing)."""
    from edgetl.core.fileio import write_text

    text = BENCHMARKS.read_text()
    heading = "## train and export on real photos (tools/bench_real.py)"
    if heading not in text:
        intro = (f"{heading}\n\nReal photos and real ImageNet weights from ../shared/realdata (the flowers folder: 5 "
                 "classes, 4,317 JPEGs of 128x128). Each file's accuracy is on the run's test split, its drop "
                 "and agreement against the Keras model it was exported from.\n\n")
        marker = "\n## benchmark\n"
        text = text.replace(marker, f"\n{intro}{marker}", 1) if marker in text else text + "\n" + intro
    start = text.index(heading) + len(heading)
    nxt = text.find("\n### ", start)
    end_section = text.find("\n## ", start)
    insert_at = nxt + 1 if nxt != -1 and (end_section == -1 or nxt < end_section) else \
        (end_section + 1 if end_section != -1 else len(text))
    text = text[:insert_at] + section + "\n" + text[insert_at:]
    write_text(BENCHMARKS, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="full")
    ap.add_argument("--per-class", type=int, help="override the suite's photos per class (0: all)")
    ap.add_argument("--record", action="store_true", help="write tests/expected/realdata.json (the ci suite)")
    ap.add_argument("--guide", action="store_true", help="also time edgetl train and the Keras guide by hand")
    ap.add_argument("--only-guide", action="store_true", help="only the guide comparison (implies --guide)")
    ap.add_argument("--bracket", action="store_true", help="time edgetl train again right after the guide")
    ap.add_argument("--no-guide-run", action="store_true", help="with --only-guide: edgetl twice (cold, warm "
                    "engine cache) and its overhead ratio, without the guide")
    ap.add_argument("--guide-per-class", type=int, default=None,
                    help="photos per class for the guide comparison (default: the suite's)")
    ap.add_argument("--benchmarks", action="store_true", help="insert the table into BENCHMARKS.md")
    ap.add_argument("--json", help="write every figure here too")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--stages", default=",".join(STAGE_EXPORTS),
                    help=f"comma-separated, of {', '.join(STAGE_EXPORTS)} (head always runs)")
    args = ap.parse_args()

    reason = available()
    if reason:
        sys.exit(reason)
    suite = SUITES[args.suite]
    if args.per_class is not None:
        suite = dataclasses.replace(suite, per_class=args.per_class)
    if args.record and (suite != SUITES["ci"] or set(args.stages.split(",")) != set(STAGE_EXPORTS)):
        sys.exit("--record writes the figures tests/test_realdata.py checks: use --suite ci without overrides")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    work_ctx = tempfile.TemporaryDirectory() if not args.keep else None
    work = Path(args.keep) if args.keep else Path(work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        result: dict[str, Any] = {"suite": dataclasses.asdict(suite), "machine": machine(), "load": load,
                                  "date": time.strftime("%Y-%m-%d"),
                                  "command": "python tools/bench_real.py " + " ".join(sys.argv[1:])}
        if not args.only_guide:  # the guide comparison alone needs no TensorFlow in this process
            from edgetl.core.tf import load_tensorflow

            load_tensorflow()
            result["figures"] = measure(suite, work, tuple(args.stages.split(",")))
        if args.guide or args.only_guide:
            per = args.guide_per_class if args.guide_per_class is not None else suite.per_class
            result["vs_guide"] = guide_comparison(work, suite, per, args.bracket, with_guide=not args.no_guide_run)
        if args.record:
            record(result["figures"], suite)
        section = guide_table(result["vs_guide"]) if args.only_guide else table(result)
        print(section)
        if args.benchmarks:
            write_benchmarks(section)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


if __name__ == "__main__":
    main()
