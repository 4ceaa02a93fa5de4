"""`edgetl predict`: top-k labels for image files and folders, from any model.

Module level: click, the kit and the shared options only (no TensorFlow; none at all for .tflite/.onnx).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from edgetl.cli.kit import handle_errors, needs_tensorflow, open_runner, print_json, print_table, warn
from edgetl.cli.options import (
    batch_size_option,
    json_option,
    model_argument,
    model_options,
    runtime_option,
    threads_option,
)
from edgetl.evaluate.accuracy import DEFAULT_BATCH_SIZE

DEFAULT_TOP_K = 3  # labels shown per image


@click.command()
@model_argument()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=DEFAULT_TOP_K, show_default=True, help="Labels to show per image.")
@json_option("Print one JSON object per image (JSON lines).")
@batch_size_option(DEFAULT_BATCH_SIZE)
@threads_option()
@model_options
@runtime_option()
@handle_errors
def predict(model: str, images: tuple[str, ...], top_k: int, as_json: bool, batch_size: int, threads: int | None,
            labels: str | None, image_size: int | None, unsafe: bool, runtime: str | None) -> None:
    """Top-k labels and probabilities for each image in IMAGES (files, or folders searched recursively).

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file. Unreadable images are
    reported (exit 2 at the end) and the others still predicted.

    \b
    Example:
      edgetl predict model_int8.tflite photos/ --top-k 3 --json
    """
    import numpy as np

    from edgetl.core.errors import EdgetlError, UsageError
    from edgetl.data import load_image

    if top_k < 1:
        raise UsageError(f"--top-k {top_k} is out of range. Use 1 or more.")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is out of range. Use 1 or more.")
    paths = _expand_images(images)
    needs_tensorflow([model])
    runner = open_runner(model, threads, unsafe, labels, image_size, runtime)
    names = runner.class_names
    k = min(top_k, len(names))
    size = (runner.image_size, runner.image_size)
    bad: list[tuple[str, str]] = []
    rows = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk, arrays = [], []
            for p in paths[start:start + batch_size]:
                try:
                    arrays.append(load_image(p, size))
                    chunk.append(p)
                except EdgetlError as exc:
                    bad.append((p, str(exc)))
                    if as_json:
                        print_json({"path": p, "error": str(exc)})
            if not chunk:
                continue
            probs = runner.predict(np.stack(arrays), batch_size=batch_size)
            for p, pr in zip(chunk, probs, strict=True):
                top = np.argsort(-pr)[:k]
                preds = [{"label": names[i], "probability": float(pr[i])} for i in top]
                if as_json:
                    print_json({"path": p, "predictions": preds})
                else:
                    rows.append([p, preds[0]["label"], f"{preds[0]['probability']:.3f}",
                                 ", ".join(f"{x['label']} {x['probability']:.3f}" for x in preds[1:])])
    finally:
        runner.close()
    if not as_json:
        if rows:
            print_table(f"{runner.path} ({runner.kind}, {runner.quantization})",
                        ["image", "label", "probability", f"next {k - 1}" if k > 1 else ""], rows, wide=True)
        for p, reason in bad:
            warn(f"skipped {p}: {reason}")
    if bad:
        raise EdgetlError(f"{len(bad)} of {len(paths)} images could not be read (first: {bad[0][0]}). "
                          "Fix or remove them.")


def _expand_images(args: Sequence[str]) -> list[str]:
    """Files as given; folders searched recursively for image files (by extension), sorted."""
    from edgetl.core.errors import DataError
    from edgetl.data import IMAGE_EXTENSIONS

    out: list[str] = []
    for a in args:
        if os.path.isdir(a):
            found = []
            for dirpath, dirnames, filenames in os.walk(a):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            if not found:
                raise DataError(f"folder '{a}' holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...). "
                                "Pass image files or a folder of images.")
            out += sorted(found)
        elif os.path.exists(a):
            out.append(a)
        else:
            raise DataError(f"image '{a}' does not exist. Pass image files or folders of images.")
    return out


COMMANDS = [predict]
