"""Measure, over training seeds, the figures the tests gate with a margin (issue #28: margins with room).

Trains the session fixture's run (tests/conftest.py trained_run: MobileNetV2 alpha 0.35, bundled weights,
48 px, demo data seed 0, 15 epochs) once per seed, exports it to TFLite float32 and int8-full, and prints
per seed:
- int8-full top-1 agreement with Keras on the run's val+test images (tests/test_runtime.py) and on every
  image of the data set plus the hold-out set (a larger set);
- Keras, TFLite float32 and int8-full accuracy on the fixed hold-out set (tests/test_evaluate.py,
  demo data per_class=24 seed=1) and int8-full agreement with Keras there.
Then each figure's minimum, maximum and spread over the seeds.

Usage:
    .venv/bin/python tools/test_margins.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE = 48


def _litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for img in x:
        it.set_tensor(inp["index"], img[None].astype(inp["dtype"]))
        it.invoke()
        o = it.get_tensor(out["index"]).astype(np.float32)
        scale, zp = out["quantization"]
        rows.append((o - zp) * scale if scale else o)
    return np.concatenate(rows)


def one_seed(seed: int, root: Path, data: Path, holdout: Path) -> dict[str, float]:
    import keras

    from edgetl.data import load_images, scan_folder
    from edgetl.export import export_run
    from edgetl.rundir import load_run
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    out = root / f"run{seed}"
    train(TrainConfig(data=str(data), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=SIZE,
                      epochs=15, batch_size=16, lr=3e-3, seed=seed, output=str(out), feature_cache="keras"))
    rep = export_run(out, formats=("tflite",), quantize=("none", "int8-full"), output=root / f"x{seed}", verify=False,
                     force=True)
    paths = {r["mode"]: Path(r["path"]) for r in rep.rows}
    splits = load_run(out).splits()
    model = keras.saving.load_model(out / "model.keras", compile=False)
    every = scan_folder(data, val_split=0.0, test_split=0.0)
    hold = scan_folder(holdout, val_split=0.0, test_split=0.0)
    vt = load_images(splits.root, splits.val + splits.test, (SIZE, SIZE))
    big = np.concatenate([load_images(every.root, every.train, (SIZE, SIZE)),
                          load_images(hold.root, hold.train, (SIZE, SIZE))])
    xh = load_images(hold.root, hold.train, (SIZE, SIZE))
    yh = np.array([i.label for i in hold.train])

    def agree(x: np.ndarray) -> float:
        k = np.asarray(model(x.astype(np.float32), training=False)).argmax(1)
        return float((_litert(paths["int8-full"], x).argmax(1) == k).mean())

    kh = np.asarray(model(xh.astype(np.float32), training=False))
    ih = _litert(paths["int8-full"], xh)
    return {"agree_valtest": agree(vt), "n_valtest": len(vt), "agree_all": agree(big), "n_all": len(big),
            "holdout_keras": float((kh.argmax(1) == yh).mean()),
            "holdout_float32": float((_litert(paths["none"], xh).argmax(1) == yh).mean()),
            "holdout_int8": float((ih.argmax(1) == yh).mean()),
            "holdout_agree": float((ih.argmax(1) == kh.argmax(1)).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgetl.data.demo import write_demo_data

    rows = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-margins-") as tmp:
        root = Path(tmp)
        write_demo_data(root / "data", per_class=24, seed=0, size_range=(40, 96))
        write_demo_data(root / "holdout", per_class=24, seed=1, size_range=(40, 96))
        for s in (int(v) for v in args.seeds.split(",")):
            rows[s] = one_seed(s, root, root / "data", root / "holdout")
            print(json.dumps({"seed": s, **rows[s]}), flush=True)
    for key in next(iter(rows.values())):
        vals = [r[key] for r in rows.values()]
        print(f"{key}: min {min(vals):.4f} max {max(vals):.4f} spread {max(vals) - min(vals):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
