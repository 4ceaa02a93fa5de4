"""Benchmark: `edgetl train`'s fixed costs on real photos (issue #29), cold and warm, against its unavoidable parts.

For each size (class-balanced subsets of ../shared/realdata/flowers, symlinked in a temporary folder):
- S: a bare `python -c "import tensorflow"` (median of 3 fresh processes): the start no TensorFlow program avoids;
- B: the frozen base over every image at the fastest exact engine's speed: one fresh process decodes a sample of
  the same photos into memory, then times TensorFlow's compiled forward and the float32 TFLite/XNNPACK base
  (edgetl.train.engine, the pass's own engine) over that sample (each after a warm-up batch), and B is the
  number of images times the faster engine's seconds per image;
- `edgetl train` as a user runs it, timed whole: cold (an empty converted-base cache) and warm (the same cache
  again); H is its own head fit (training.seconds.head in the manifest);
- ratio T / (S + B + H) (the issue's goal: at most 1.3), and the rest of the run by manifest part;
- with --guide N: the Keras transfer-learning guide by hand (tools/bench_train.py's GUIDE) on the same N photos,
  timed whole (goal: edgetl at least 10x faster). Sizes whose guide did not run get an estimate from the run
  that did: its time plus its per-epoch time scaled by the number of photos for every epoch (said as such).

    .venv/bin/python tools/bench_fixed.py --sizes 1000,4317 --guide 1000 --json /tmp/fixed.json
    # another source tree's edgetl (e.g. `git archive` of an older commit, unpacked), for before/after:
    .venv/bin/python tools/bench_fixed.py --sizes 1000 --src /tmp/before
    # a search candidate's head fit, durable epochs (before) against edgetl.search.trial.scratch_fit (after):
    .venv/bin/python tools/bench_fixed.py --search-head 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "realdata" / "flowers"
WEIGHTS = ROOT.parent / "shared" / "realdata" / "weights" / \
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
SPLIT = ["--val-split", "0.2", "--test-split", "0", "--seed", "0"]  # the guide's fractions


def _guide_script() -> str:
    """tools/bench_train.py's GUIDE, the one copy of the guide by hand (tools/ is no package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).with_name("bench_train.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GUIDE


# Both engines over the same decoded photos, in a fresh process. argv: DATA WEIGHTS SIZE ALPHA SAMPLE.
ENGINES = r'''
import json, os, sys, time
os.environ["EDGETL_CACHE_DIR"] = "off"  # the conversion is timed too, never loaded
from edgetl.core.tf import load_tensorflow
load_tensorflow()
import keras, numpy as np, tensorflow as tf
from edgetl.data import scan_folder
from edgetl.data.pipeline import make_dataset
from edgetl.model.backbones import build_base, resolve_backbone
from edgetl.model.classifier import build_classifier
from edgetl.train.engine import TFLiteExtractor
data, weights, size, alpha, sample = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
splits = scan_folder(data, val_split=0.2, test_split=0, seed=0)
items = [i for name in ("train", "val") for i in splits.split(name)][:sample]
x = np.concatenate([b[0].numpy() for b in make_dataset(splits.root, items, (size, size), 32)])
spec = resolve_backbone("mobilenet_v2")
keras.utils.set_random_seed(0)
clf = build_classifier(build_base(spec, weights=weights, alpha=alpha, image_size=size), image_size=size,
                       num_classes=len(splits.class_names), preprocessing=spec.default_preprocessing, dropout=0.2,
                       seed=0, normalization=spec.normalization)
@tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
def extract(images):
    return clf.extractor(images, training=False)
def per_image(run):
    run(x[:32])  # warm-up: kernels' set-up, XNNPACK's weight packing
    t0 = time.perf_counter()
    for i in range(0, len(x), 32):
        np.asarray(run(x[i:i + 32]))
    return (time.perf_counter() - t0) / len(x)
t0 = time.perf_counter()
extract.get_concrete_function()
trace = time.perf_counter() - t0
keras_spi = per_image(extract)
fast = TFLiteExtractor(clf, size, concrete=extract.get_concrete_function())
tflite_spi = per_image(fast)
print(json.dumps({"images": len(x), "keras_ms": round(1000 * keras_spi, 2), "tflite_ms": round(1000 * tflite_spi, 2),
                  "trace_s": round(trace, 2), "convert_s": round(fast.convert_seconds, 2)}))
'''


def children_cpu() -> float:
    """CPU seconds (user + sys) of the finished child processes so far: a run's CPU is the difference."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """A fresh process timed whole; exits with its stderr's tail when it fails."""
    t0 = time.perf_counter()
    # Run outside the repository: `python -c` puts the current folder first on sys.path, which would shadow --src.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:3])} ...\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout, proc.stderr


def subset(work: Path, n: int) -> tuple[Path, int]:
    """n photos, class-balanced (the first n/5 of each class by name), as symlinks; all photos from 4,317 up."""
    classes = sorted(p for p in FLOWERS.iterdir() if p.is_dir())
    files = {c: sorted(p for p in c.iterdir() if p.is_file()) for c in classes}
    if n >= sum(len(f) for f in files.values()):
        return FLOWERS, sum(len(f) for f in files.values())
    folder = work / f"flowers-{n}"
    for c in classes:
        (folder / c.name).mkdir(parents=True, exist_ok=True)
        for f in files[c][:n // len(classes)]:
            (folder / c.name / f.name).symlink_to(f)
    return folder, (n // len(classes)) * len(classes)


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def train_run(data: Path, out: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).parent / "edgetl"), "train", str(data), "--backbone", "mobilenet_v2", "--alpha",
           str(args.alpha), "--weights", str(args.weights), "--image-size", str(args.image_size), "--epochs",
           str(args.epochs), "--patience", str(args.epochs), *SPLIT, "--output", str(out), "--force"]
    if args.src:  # `edgetl` of another tree: its package first on the path
        cmd = [sys.executable, "-c", "from edgetl.cli.main import run; run()", *cmd[1:]]
    before, cpu = load(), children_cpu()
    seconds, _, _ = timed(cmd, env)
    cpu = children_cpu() - cpu
    manifest = json.loads((out / "manifest.json").read_text())
    training = manifest["training"]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "parts": training["seconds"],
            "engine": training.get("feature_engine") or {},
            "val_accuracy": manifest["metrics"]["val"], "load": f"{before}-{load()}"}


def fixed_costs(run: dict[str, Any], start: float) -> dict[str, float]:
    """What the run spent beyond S + B + H, by part (B counted at the fastest engine: the pass's surplus over it
    is its own line)."""
    p = run["parts"]
    out = {"start beyond a bare import": p.get("start", 0.0) - start, "exit": run["seconds"] - p.get("wall", 0.0)}
    out.update({k: p[k] for k in ("scan", "detail", "build", "setup", "evaluate", "save") if k in p})
    out.update({f"pass: {k[9:]}": p[k] for k in p if k.startswith("features_") and k != "features_base"})
    out["pass: base beyond the fastest engine"] = p.get("features_base", 0.0) - run["base_fastest"]
    return {k: round(v, 2) for k, v in out.items()}


def measure(n: int, work: Path, args: argparse.Namespace, env: dict[str, str], guide_script: str) -> dict[str, Any]:
    data, images = subset(work, n)
    starts = sorted(timed([sys.executable, "-c", "import tensorflow"], env)[0] for _ in range(3))
    start = starts[1]
    _, out, _ = timed([sys.executable, "-c", ENGINES, str(data), str(args.weights), str(args.image_size),
                       str(args.alpha), str(min(args.sample, images))], env)
    engines = json.loads(out.strip().splitlines()[-1])
    spi = min(engines["keras_ms"], engines["tflite_ms"]) / 1000
    result: dict[str, Any] = {"images": images, "bare_start": [round(s, 2) for s in starts], "engines": engines}
    cache = work / f"engine-cache-{n}"  # empty: the first run converts (cold), the second loads (warm)
    for mode in ("cold", "warm"):
        run = train_run(data, work / f"run-{n}-{mode}", args, dict(env, EDGETL_CACHE_DIR=str(cache)))
        run["base_fastest"] = round(images * spi, 2)
        unavoidable = start + run["base_fastest"] + run["parts"]["head"]
        run.update(unavoidable=round(unavoidable, 2), ratio=round(run["seconds"] / unavoidable, 2),
                   fixed=fixed_costs(run, start))
        e = run["engine"]
        if e.get("tflite_ms") and e.get("keras_ms"):  # both engines on the run's own check batch: the run's load
            in_run = images * min(e["keras_ms"], e["tflite_ms"]) / 1000
            run.update(base_in_run=round(in_run, 2),
                       ratio_in_run=round(run["seconds"] / (start + in_run + run["parts"]["head"]), 2))
        result[mode] = run
        print(f"{images} photos, {mode}: {run['seconds']} s ({run['cpu_seconds']} s CPU), ratio {run['ratio']}",
              file=sys.stderr, flush=True)
    if n in args.guide:
        cmd = [sys.executable, "-c", guide_script, str(data), str(args.image_size), str(args.epochs),
               str(args.weights), str(args.alpha), "0"]
        before = load()
        seconds, out, err = timed(cmd, env)
        epochs = [float(s) for s in re.findall(r"guide epoch \d+: (\d+) s", err)]
        per_epoch = (epochs[-1] - epochs[0]) / (len(epochs) - 1) if len(epochs) > 1 else None
        result["guide"] = {"seconds": round(seconds, 1), "per_epoch": per_epoch, "load": f"{before}-{load()}",
                           **json.loads(out.strip().splitlines()[-1])}
        print(f"{images} photos, guide: {seconds:.1f} s", file=sys.stderr, flush=True)
    return result


def guide_estimates(results: list[dict[str, Any]], epochs: int) -> None:
    """Sizes without a guide run: the measured run's time plus its per-epoch time scaled by the photos."""
    measured = [r for r in results if "guide" in r and r["guide"]["per_epoch"]]
    if not measured:
        return
    ref = measured[0]
    g = ref["guide"]
    for r in results:
        if "guide" not in r:
            extra = epochs * g["per_epoch"] * (r["images"] / ref["images"] - 1)
            r["guide_estimate"] = {"seconds": round(g["seconds"] + extra, 1), "from": ref["images"]}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| photos | run | edgetl train (s) | S bare start | B base, fastest engine | H head | S+B+H | "
             "ratio (goal <= 1.3) | B in the run, ratio | guide (s) | speed-up (goal >= 10) | engine | val acc "
             "| load |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in results:
        e = r["engines"]
        fastest = "TFLite" if e["tflite_ms"] <= e["keras_ms"] else "TF"
        g = r.get("guide") or r.get("guide_estimate")
        for mode in ("cold", "warm"):
            run = r[mode]
            eng = run["engine"].get("engine", "-") + (" (cached)" if run["engine"].get("cached") else "")
            gs = "-" if not g else f"{g['seconds']}" + ("" if "guide" in r else f" (est. from {g['from']})")
            sp = "-" if not g else f"{g['seconds'] / run['seconds']:.1f}x"
            lines.append(f"| {r['images']} | {mode} | {run['seconds']} | {r['bare_start'][1]} | {run['base_fastest']} "
                         f"({fastest}) | {run['parts']['head']} | {run['unavoidable']} | **{run['ratio']}** | "
                         f"{run.get('base_in_run', '-')}, {run.get('ratio_in_run', '-')} | {gs} | "
                         f"{sp} | {eng} | {run['val_accuracy']:.3f} | {run['load']} |")
    lines.append("")
    for r in results:
        e = r["engines"]
        lines.append(f"- {r['images']} photos: engines on {e['images']} of them, TensorFlow {e['keras_ms']} ms an "
                     f"image, TFLite {e['tflite_ms']} ms (conversion {e['convert_s']} s, trace {e['trace_s']} s); bare "
                     f"starts {r['bare_start']} s.")
        for mode in ("cold", "warm"):
            parts = ", ".join(f"{k} {v}" for k, v in r[mode]["fixed"].items() if abs(v) >= 0.05)
            lines.append(f"  - {mode}, beyond S+B+H (s): {parts}")
    return "\n".join(lines)


def search_head(repeat: int) -> dict[str, Any]:
    """One search candidate's head fit, in this process: the train job's durable epochs (checkpoint, best weights,
    state.json and a history row per epoch, as the search did before) against edgetl.search.trial.scratch_fit,
    alternating; round 1's shape for MobileNetV2 1.0 (160 + 160 images of 1,280 features, 60 epochs of 5 steps:
    MIN_HEAD_STEPS). Medians of wall seconds."""
    import numpy as np

    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import keras

    from edgetl.core.progress import Reporter
    from edgetl.search.trial import MIN_HEAD_STEPS, scratch_fit
    from edgetl.train.checkpoint import Checkpoints
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import place
    from edgetl.train.fit import fit_stage
    from edgetl.train.history import History

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 320).astype(np.int32)
    x = (np.eye(5, 1280)[y] + rng.normal(0, 1.0, (320, 1280))).astype(np.float32)
    epochs = -(-MIN_HEAD_STEPS // 5)
    cfg = TrainConfig(data=".", batch_size=32, patience=epochs, seed=0)
    placement = place("default", "off")
    times: dict[str, list[float]] = {"durable (before)": [], "scratch_fit (after)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2 * repeat):
            kind = list(times)[i % 2]
            folder = Path(tmp) / str(i)
            folder.mkdir()
            if i % 2 == 0:
                history, ckpt = History(folder / "history.csv"), Checkpoints(folder)
            else:
                history, ckpt = scratch_fit(folder)
            keras.utils.set_random_seed(0)
            head = keras.Sequential([keras.Input((1280,)), keras.layers.Dropout(0.2), keras.layers.Dense(5, "softmax")])
            t0 = time.perf_counter()
            fit_stage(head, (x[:160], y[:160]), (x[160:], y[160:]), cfg, 1e-3, epochs, "head", history, Reporter(),
                      placement, ckpt, None)
            ckpt.remove()
            times[kind].append(time.perf_counter() - t0)
    return {k: {"median": round(sorted(v)[len(v) // 2], 2), "all": [round(t, 2) for t in v]} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,4317", help="photos per run, comma-separated (4317 or more: all)")
    ap.add_argument("--guide", default="", help="sizes at which to run the guide by hand too, comma-separated")
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sample", type=int, default=256, help="photos on which both engines' speed is measured")
    ap.add_argument("--src", help="run the edgetl of this source tree (its parent of edgetl/) instead")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--search-head", type=int, metavar="N", help="only the search candidate's head fit, before "
                    "against after, N times each (alternating, in this process)")
    args = ap.parse_args()
    if args.search_head:
        print(f"load {load()}: {json.dumps(search_head(args.search_head))} (load {load()} at the end)")
        return
    args.guide = {int(s) for s in args.guide.split(",") if s}
    if not FLOWERS.is_dir():
        sys.exit(f"skipped: {FLOWERS} is absent (see CONTRIBUTING.md, real photos)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), env.get("PYTHONPATH", "")])
    guide_script = _guide_script()
    loads = [load()]
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(int(n), Path(tmp), args, env, guide_script) for n in args.sizes.split(",")]
    loads.append(load())
    guide_estimates(results, args.epochs)
    head = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; 1-min load "
            f"{loads[0]} at the start, {loads[1]} at the end; {args.epochs} epochs; "
            f"source {args.src or ROOT}.")
    print(head + "\n\n" + table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": head, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
