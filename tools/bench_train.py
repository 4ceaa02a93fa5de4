"""Benchmark: `edgetl train` against the Keras transfer-learning guide done by hand.

Same data (generated, 3 classes x 100 images), MobileNetV2 at 224, 10 epochs, the same split
fractions. Both run as fresh processes and are timed whole (TensorFlow import included), since that
is what a user waits for. Results go to stdout as a Markdown table and to --json.

    .venv/bin/python tools/bench_train.py [--weights none] [--epochs 10] [--per-class 100] [--repeat 3]

Both final models (edgetl's model.keras and the guide's) are then scored on the same held-out
images, generated with another seed (--holdout-per-class per class), since the two sides split
validation differently. With --repeat N both sides run N times, alternating, and the medians are
compared: on shared cores single runs vary by a third.
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

# The guide's recipe (keras.io "Transfer learning & fine-tuning", frozen-base part): a tf.data
# pipeline from the folder, the base called with training=False, and model.fit running the frozen
# base over every image at every epoch. The one copy: tools/bench_real.py runs it too.
# argv: DATA SIZE EPOCHS WEIGHTS(none or a file) ALPHA SEED [SAVE_PATH]; prints one JSON line with the
# best and the last epoch's val accuracy.
GUIDE = r'''
import json, sys, time
T0 = time.perf_counter()
import keras, tensorflow as tf
data, size, epochs, weights, alpha, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    float(sys.argv[5]), int(sys.argv[6])
keras.utils.set_random_seed(seed)
train_ds, val_ds = keras.utils.image_dataset_from_directory(
    data, validation_split=0.2, subset="both", seed=seed, image_size=(size, size), batch_size=32)
n_classes = len(train_ds.class_names)
train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
val_ds = val_ds.prefetch(tf.data.AUTOTUNE)
base = keras.applications.MobileNetV2(include_top=False, weights=None if weights == "none" else weights,
                                      input_shape=(size, size, 3), alpha=alpha)
base.trainable = False
inputs = keras.Input((size, size, 3))
x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
x = base(x, training=False)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
# One line per epoch on stderr (what verbose=2 shows a user, with the time since start), for long runs' logs.
tick = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: print(
    f"guide epoch {e + 1}: {time.perf_counter() - T0:.0f} s, val_accuracy {logs['val_accuracy']:.3f}",
    file=sys.stderr, flush=True))
hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=[tick])
if len(sys.argv) > 7:
    model.save(sys.argv[7])
print(json.dumps({"val_accuracy": max(hist.history["val_accuracy"]),
                  "last_val_accuracy": hist.history["val_accuracy"][-1]}))
'''


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def holdout_accuracy(tmp: Path, args: argparse.Namespace, models: list[Path]) -> dict[str, object]:
    """Accuracy of each model (RGB 0..255 in, probabilities out, as both sides build them) on new images."""
    import keras
    import numpy as np

    from edgetl.data import load_images, scan_folder
    from edgetl.data.demo import write_demo_data

    folder = tmp / "holdout"
    write_demo_data(folder, classes=("circles", "squares", "triangles"), per_class=args.holdout_per_class,
                    seed=args.seed + 1000)
    items = scan_folder(folder, val_split=0, test_split=0).train
    x = load_images(folder, items, (args.image_size, args.image_size)).astype("float32")
    y = np.array([i.label for i in items])
    accs = []
    for path in models:
        model = keras.saving.load_model(path, compile=False)
        accs.append(round(float((model.predict(x, batch_size=32, verbose=0).argmax(1) == y).mean()), 4))
    return {"images": len(items), "accuracy": accs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="none", help="none, bundled (alpha 0.35 only) or a weights file")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout-per-class", type=int, default=100, help="held-out images per class for both models")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating; medians compared")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        from edgetl.data.demo import write_demo_data

        write_demo_data(data, classes=("circles", "squares", "triangles"), per_class=args.per_class, seed=args.seed)
        weights = args.weights
        if weights == "bundled":
            from edgetl.model.backbones import bundled_weights_path, resolve_backbone

            weights = str(bundled_weights_path(resolve_backbone("mobilenet_v2"), args.alpha))
        # --patience equal to the epochs: both sides run every epoch; --test-split 0 matches the guide's split.
        t_edgetl, t_guide, phases, guides = [], [], [], []
        for i in range(max(args.repeat, 1)):
            run = Path(tmp) / f"run{i}"
            edgetl_cmd = [str(bin_dir / "edgetl"), "train", str(data), "--backbone", "mobilenet_v2", "--alpha",
                          str(args.alpha), "--weights", weights, "--image-size", str(args.image_size), "--epochs",
                          str(args.epochs), "--patience", str(args.epochs), "--val-split", "0.2", "--test-split",
                          "0", "--batch-size", "32", "--seed", str(args.seed), "--output", str(run)]
            seconds, _ = timed(edgetl_cmd, env)
            t_edgetl.append(seconds)
            manifest = json.loads((run / "manifest.json").read_text())
            phases.append(manifest["training"]["seconds"])
            metrics = json.loads((run / "metrics.json").read_text())
            guide_cmd = [sys.executable, "-c", GUIDE, str(data), str(args.image_size), str(args.epochs), weights,
                         str(args.alpha), str(args.seed), str(Path(tmp) / "guide.keras")]
            seconds, out = timed(guide_cmd, env)
            t_guide.append(seconds)
            guides.append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {i + 1}: edgetl {t_edgetl[-1]:.1f} s, guide {t_guide[-1]:.1f} s", file=sys.stderr)
        guide = guides[-1]
        holdout = holdout_accuracy(Path(tmp), args, [run / "model.keras", Path(tmp) / "guide.keras"])

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "data": f"{3 * args.per_class} generated images, 3 classes, val 20%",
        "backbone": f"mobilenet_v2 alpha {args.alpha} at {args.image_size}, weights {args.weights}",
        "epochs": args.epochs,
        "runs": len(t_edgetl),
        "edgetl_seconds": round(statistics.median(t_edgetl), 1),
        "edgetl_seconds_all": [round(t, 1) for t in t_edgetl],
        "edgetl_phase_seconds": phases[t_edgetl.index(sorted(t_edgetl)[len(t_edgetl) // 2])],
        "guide_seconds": round(statistics.median(t_guide), 1),
        "guide_seconds_all": [round(t, 1) for t in t_guide],
        "speedup": round(statistics.median(t_guide) / statistics.median(t_edgetl), 2),
        "edgetl_val_accuracy": metrics["val"]["accuracy"],
        "guide_val_accuracy (best epoch)": guide["val_accuracy"],
        "holdout_images": holdout["images"],
        "edgetl_holdout_accuracy": holdout["accuracy"][0],
        "guide_holdout_accuracy": holdout["accuracy"][1],
    }
    print(f"| | median wall time (s) | val accuracy | accuracy on {holdout['images']} held-out images |")
    print("| --- | --- | --- | --- |")
    print(f"| edgetl train (feature cache) | {result['edgetl_seconds']} | {result['edgetl_val_accuracy']:.3f} | "
          f"{holdout['accuracy'][0]:.3f} |")
    print(f"| Keras guide by hand | {result['guide_seconds']} | {result['guide_val_accuracy (best epoch)']:.3f} | "
          f"{holdout['accuracy'][1]:.3f} |")
    print(f"speed-up {result['speedup']}x; edgetl phases: {result['edgetl_phase_seconds']}")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
