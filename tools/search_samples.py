"""How much a search round's sample moves each candidate: its head on several class-balanced samples, against the
whole splits.

Reads a search folder whose feature files hold every image of the splits (run the search once with
`--images-per-class 100000`: round 1 is then the whole folder for every candidate), rebuilds the splits `edgetl
train` makes of DATA (seed 42, val 0.2, test 0.1), and for each candidate trains a head as the search does (dropout
0.2, Adam 1e-3, batch 32, at least 300 steps, early stopping on val loss with patience 3 and its best weights) on
`--samples` class-balanced samples of PER_CLASS images a class, validated on a sample of the same size or on the
whole validation split. Prints each candidate's accuracies, their mean and spread.

    .venv/bin/python tools/search_samples.py SEARCH DATA --per-class 64 --val sample --samples 6
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("search", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--val", choices=("sample", "whole"), default="sample")
    ap.add_argument("--samples", type=int, default=6)
    args = ap.parse_args()
    from edgetl.core.tf import load_tensorflow
    from edgetl.data import scan_folder
    from edgetl.data.sampling import balanced_sample

    load_tensorflow()
    import keras

    splits = scan_folder(args.data, val_split=0.2, test_split=0.1, seed=42, max_bad_fraction=0.05)
    n_classes = len(splits.class_names)

    def fit(store: dict[str, np.ndarray], train: list, val: list) -> float:
        x = np.stack([store[i.path] for i in train]).astype(np.float32)
        y = np.array([i.label for i in train])
        vx = np.stack([store[i.path] for i in val]).astype(np.float32)
        vy = np.array([i.label for i in val])
        epochs = max(10, math.ceil(300 / -(-len(train) // 32)))
        keras.utils.set_random_seed(42)
        head = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dropout(0.2, seed=42),
                                 keras.layers.Dense(n_classes, "softmax")])
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                     steps_per_execution=8)
        head.fit(x, y, validation_data=(vx, vy), epochs=epochs, batch_size=32, verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)])
        return float((head.predict(vx, verbose=0, batch_size=256).argmax(1) == vy).mean())

    for path in sorted((args.search / "features").glob("*.npz")):
        with np.load(path) as data:
            store = dict(zip(data["paths"].tolist(), data["x"], strict=True))
        if any(i.path not in store for i in [*splits.train, *splits.val]):
            print(f"{path.name}: not every image of the splits; skipped")
            continue
        accs = []
        for seed in range(args.samples):
            train = balanced_sample(splits.train, args.per_class * n_classes, seed)
            val = list(splits.val) if args.val == "whole" else balanced_sample(splits.val, args.per_class * n_classes,
                                                                                seed)
            accs.append(fit(store, train, val))
        print(f"{path.name.rsplit('-', 1)[0]}: mean {np.mean(accs):.3f}, sd {np.std(accs, ddof=1):.3f}, "
              f"range {min(accs):.3f}-{max(accs):.3f} ({', '.join(f'{a:.3f}' for a in accs)})", flush=True)


if __name__ == "__main__":
    main()
