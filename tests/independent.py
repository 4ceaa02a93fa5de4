"""An export report checked, not trusted: each file's figures computed again outside edgetl's verifier.

The files run in their runtimes' own APIs (ai_edge_litert's Interpreter one image at a time, an
onnxruntime InferenceSession, TensorFlow's SavedModel loader), the reference is the run's Keras model
loaded by Keras itself, and the labels are the names of the images' folders. Nothing of edgetl.export,
edgetl.runtime or edgetl.runtime.measure takes part, so a bug there (wrong labels, a reference from
another model, a runner that dequantizes wrong, figures from the wrong images) shows as a difference
between these figures and the report's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Figures:
    """Accuracy against the labels and top-1 agreement with the reference, as counts of images."""

    samples: int
    correct: int
    agree: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples

    @property
    def agreement(self) -> float:
        return self.agree / self.samples


def held_out(run: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's held-out images (test split, else val) as uint8 pixels, and labels from their folder names.

    The images are decoded by edgetl.data.load_images, as training and export decode them (the decoder has
    its own tests); the label of each is the index of its folder's name in the run's labels.txt.
    """
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    names = (run / "labels.txt").read_text().split()
    splits = load_run(run).splits()
    items = splits.test or splits.val
    labels = np.array([names.index(Path(it.path).parent.name)
                       for it in items])
    return load_images(splits.root, items, (size, size)), labels


def keras_probs(run: Path, x: np.ndarray) -> np.ndarray:
    """The run's Keras model (model.keras, loaded by Keras itself) on `x`."""
    import keras

    model = keras.saving.load_model(run / "model.keras", compile=False)
    return np.concatenate([np.asarray(model(x[i:i + 16].astype(np.float32), training=False))
                           for i in range(0, len(x), 16)])


def runtime_probs(fmt: str, path: str | Path, x: np.ndarray) -> np.ndarray:
    """A file's probabilities on uint8 pixels `x`, from its runtime's own API (integer outputs dequantized)."""
    if fmt == "tflite":
        return _litert(Path(path), x)
    if fmt in ("onnx", "ort"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # ONNX Runtime's own switch for the file's exact int8 math on x86 CPUs without VNNI (u8u8 instead of
        # saturating u8s8 sums); a no-op elsewhere. edgetl sets it too: a phone's ARM kernels do not saturate.
        opts.add_session_config_entry("session.x64quantprecision", "1")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        assert sess.get_inputs()[0].type == "tensor(float)"
        return np.concatenate([sess.run(None, {name: img[None].astype(np.float32)})[0] for img in x])
    if fmt == "saved_model":
        import tensorflow as tf

        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        outs = [fn(tf.constant(x[i:i + 16].astype(np.float32))) for i in range(0, len(x), 16)]
        return np.concatenate([next(iter(o.values())).numpy() for o in outs])
    raise AssertionError(f"no runtime for format {fmt}")


def _litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for img in x:
        value: np.ndarray = img[None].astype(np.float32)
        if inp["dtype"] != np.float32:  # integer input: quantized with the file's own input parameters
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zp), info.min, info.max)
        it.set_tensor(inp["index"], value.astype(inp["dtype"]))
        it.invoke()
        got = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zp = out["quantization"]
            got = (got - zp) * scale
        rows.append(got)
    return np.concatenate(rows)


def figures(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Figures:
    top = probs.argmax(1)
    return Figures(len(top), int((top == labels).sum()), int((top == reference.argmax(1)).sum()))


def verified_images(row: dict[str, Any], labels: np.ndarray) -> np.ndarray:
    """The held-out images a report row was measured on: all, or the class-balanced prefix it records."""
    sample = (row.get("extra") or {}).get("verify_sample") or row.get("verify_sample")
    if not sample:
        return np.arange(len(labels))
    from edgetl.export.images import balanced_order

    return balanced_order(labels, len(labels))[:sample["samples"]]


def check_row(row: dict[str, Any], fig: Figures, keras_fig: Figures, slack: int) -> list[str]:
    """How the report's row differs from the figures measured here by more than `slack` images (empty: it agrees).

    `keras_fig`: the Keras model's own figures on the same images (its accuracy is what the drop is against).
    """
    n = fig.samples
    tol = (slack + 0.5) / n  # the report rounds to 4 places; half an image covers that
    wrong = []
    if row["samples"] != n:
        wrong.append(f"samples {row['samples']} != {n}")
    for key, mine in (("accuracy", fig.accuracy), ("agreement", fig.agreement),
                      ("drop", keras_fig.accuracy - fig.accuracy)):
        if row[key] is None or abs(row[key] - mine) > tol:
            wrong.append(f"{key} {row[key]} != {mine:.4f} measured here")
    return wrong
