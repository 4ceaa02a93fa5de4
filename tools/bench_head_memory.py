"""The head stage on cached features at scale: its RSS growth and seconds, with either of the two shuffles.

Writes memory-mapped features of N images (1,280 dims, 100 classes, 80% train / 20% val; random, cached under
--work), then runs edgetl's own head stage (train.fit.fit_stage, 3 epochs, the train job's options) in this process
with the shuffle feature_dataset uses at that size, or the one asked: tf.data's shuffle buffer ("buffer") or the
stateless permutation ("permutation", edgetl.train.features.SHUFFLE_BUFFER_ROWS). RSS is polled every 50 ms.

    .venv/bin/python tools/bench_head_memory.py --images 200000 --shuffle buffer
    .venv/bin/python tools/bench_head_memory.py --images 200000 --shuffle permutation
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--shuffle", choices=("auto", "buffer", "permutation"), default="auto")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-bench-head")
    args = ap.parse_args()
    peak = [0]

    def poll() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import keras

    from edgetl.core.progress import Reporter
    from edgetl.search.trial import scratch_fit
    from edgetl.train import features
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import place
    from edgetl.train.fit import fit_stage

    if args.shuffle != "auto":
        features.SHUFFLE_BUFFER_ROWS = 10**12 if args.shuffle == "buffer" else 0
    work = args.work / str(args.images)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xy = {}
    for split, rows in (("train", int(args.images * 0.8)), ("val", int(args.images * 0.2))):
        x_path, y_path = features.cache_paths(work, split)
        if not (x_path.exists() and y_path.exists()):
            x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, 1280))
            for i in range(0, rows, 10_000):
                x[i:i + 10_000] = rng.random((min(10_000, rows - i), 1280), dtype=np.float32)
            del x
            np.save(y_path, rng.integers(0, 100, rows).astype(np.int32))
        xy[split] = features.load_cached(work, split)
    cfg = replace(TrainConfig(data=str(work)), epochs=3)
    keras.utils.set_random_seed(cfg.seed)
    head = keras.Sequential([keras.Input((1280,)), keras.layers.Dropout(cfg.dropout),
                             keras.layers.Dense(100, "softmax")])
    placement = place("default", "off")
    before = rss_mb()
    peak[0] = before
    with tempfile.TemporaryDirectory() as scratch:
        history, ckpt = scratch_fit(Path(scratch))
        t0 = time.perf_counter()
        fit_stage(head, xy["train"], xy["val"], cfg, cfg.lr, cfg.epochs, "head", history, Reporter(), placement,
                  ckpt, None)
        seconds = time.perf_counter() - t0
    used = "buffer" if len(xy["train"][1]) <= features.SHUFFLE_BUFFER_ROWS else "permutation"
    print(f"{args.images} images ({len(xy['train'][1])} training rows), shuffle {used}: RSS {before} MB before the "
          f"head, peak {peak[0]} MB (+{peak[0] - before}), {seconds:.1f} s for 3 epochs")


if __name__ == "__main__":
    main()
