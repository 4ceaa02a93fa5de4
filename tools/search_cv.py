"""How much one split of a search round's sample moves a candidate: its head cross-validated on the round's images.

Reads a search folder's feature files (SEARCH/features/<candidate>-*.npz: the frozen base's features by image
path, the class being the path's folder) for the given candidates, keeps the images all of them have (the first
round's sample), and scores each candidate's head, trained as the search trains it (dropout 0.2, Adam 1e-3, early
stopping on the held-out half with its best weights), by 2-fold cross-validation over several shuffles.

    .venv/bin/python tools/search_cv.py SEARCH mobilenet_v2_a1-160 mobilenet_v2_a0.35-160 [--shuffles 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def load(folder: Path, slug: str) -> dict[str, tuple[np.ndarray, str]]:
    files = sorted((folder / "features").glob(f"{slug}-*.npz"))
    if len(files) != 1:
        raise SystemExit(f"expected one feature file for {slug} in {folder / 'features'}, found {len(files)}")
    with np.load(files[0]) as data:
        return {p: (x, p.split("/")[0]) for p, x in zip(data["paths"].tolist(), data["x"], strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("search", type=Path)
    ap.add_argument("candidates", nargs="+", help="feature file slugs, e.g. mobilenet_v2_a1-160")
    ap.add_argument("--shuffles", type=int, default=3)
    args = ap.parse_args()
    stores = {c: load(args.search, c) for c in args.candidates}
    common = sorted(set.intersection(*(set(s) for s in stores.values())))
    from sklearn.model_selection import StratifiedKFold

    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import keras

    for name, store in stores.items():
        x = np.stack([store[p][0] for p in common]).astype(np.float32)
        classes = sorted({store[p][1] for p in common})
        y = np.array([classes.index(store[p][1]) for p in common])
        folds = []
        for seed in range(args.shuffles):
            for fit, held in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, y):
                keras.utils.set_random_seed(0)
                head = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dropout(0.2),
                                         keras.layers.Dense(len(classes), "softmax")])
                head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
                head.fit(x[fit], y[fit], validation_data=(x[held], y[held]), epochs=30, batch_size=32, verbose=0,
                         callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
                folds.append(float((head.predict(x[held], verbose=0).argmax(1) == y[held]).mean()))
        print(f"{name}: {len(common)} images, 2-fold x {args.shuffles}: mean {np.mean(folds):.3f}, "
              f"folds {min(folds):.3f}-{max(folds):.3f}")


if __name__ == "__main__":
    main()
