"""TFLite calibration in a child process, beside the rest of the export.

Calibration (the float model run over the calibration images, every tensor's range recorded) is the
export's longest single step: 300 images at 224 px took 15.5 s on one core of this machine. TensorFlow's
calibration wrapper holds the GIL for each image (a Python thread beside it ran at 5% of its speed,
measured), so a thread would stall the export instead of overlapping it. Its extension loads on its
own, without TensorFlow (0.01 s, about 100 MB), so a child process runs it on another core with
TensorFlow's own kernels: the ranges are byte-identical to the converter's (tests/test_export.py).

The parent hands over the model (already calibrated on one image, which gives it the converter's
intermediate tensors) and the images as files; the child writes the calibrated model. Run as
`python -m edgetl.export.calibration MODEL IMAGES OUT`: it imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import numpy as np

from edgetl.core.errors import ExportError, first_line

_WRAPPER = "_pywrap_tensorflow_lite_calibration_wrapper"


def wrapper_path() -> Path | None:
    """TensorFlow's calibration extension, found without importing TensorFlow (None: not there)."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(root, "lite", "python", f"{_WRAPPER}*.so")))
        if hits:
            return Path(hits[0])
    return None


def _load_wrapper(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(_WRAPPER, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calibrate_images(model: bytes, images: Iterable[np.ndarray], wrapper: ModuleType) -> bytes:
    """Feed each image (H, W, 3, any dtype, pixels 0..255) as float32 and return the model with the ranges.

    What tf.lite's Calibrator.calibrate does for a list-of-arrays representative set, one image per call.
    """
    calibrator = wrapper.CalibrationWrapper(model, [], [])
    prepared = False
    for image in images:
        x = np.asarray(image, dtype=np.float32)[None]
        if not prepared:
            calibrator.Prepare([list(x.shape)])
            prepared = True
        calibrator.FeedTensor([x])
    if not prepared:
        raise ExportError("no calibration images to calibrate with.")
    return bytes(calibrator.Calibrate())


class BackgroundCalibration:
    """The calibration of `model` on `images`, running in a child process from construction until result()."""

    def __init__(self, model: bytes, images: np.ndarray, work: Path) -> None:
        """Write the inputs to `work` and start the child.

        Raises:
            ExportError: TensorFlow's calibration extension is not where this TensorFlow keeps it.
        """
        wrapper = wrapper_path()
        if wrapper is None:
            raise ExportError("TensorFlow's calibration extension was not found")
        work.mkdir(parents=True, exist_ok=True)
        self._model, self._images, self._out = work / "uncalibrated.tflite", work / "calibration.npy", \
            work / "calibrated.tflite"
        self._model.write_bytes(model)
        np.save(self._images, np.ascontiguousarray(images))
        self._t0 = time.perf_counter()
        self.seconds: float | None = None  # the child's wall seconds, once it has ended
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgetl.export.calibration", str(self._model), str(self._images), str(self._out),
             str(wrapper)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def done(self) -> bool:
        """Whether the child has ended (result() then returns at once)."""
        return self._proc.poll() is not None

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has ended (negative: killed by that signal), else None."""
        return self._proc.poll()

    def result(self) -> bytes:
        """Wait for the child; the calibrated model.

        Raises:
            ExportError: the child failed (its last line says why).
        """
        _, err = self._proc.communicate()
        self.seconds = round(time.perf_counter() - self._t0, 2)
        if self._proc.returncode != 0 or not self._out.is_file():
            lines = [ln for ln in (err or b"").decode(errors="replace").splitlines() if ln.strip()]
            raise ExportError(f"the calibration process failed (exit {self._proc.returncode}): "
                              f"{lines[-1] if lines else 'no message'}")
        return self._out.read_bytes()

    def cancel(self) -> None:
        """Stop the child if it still runs (the export failed or was interrupted)."""
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(Exception):
            self._proc.communicate(timeout=10)


def calibrate_in_process(model: bytes, representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """The same calibration through tf.lite's Calibrator, in this process (when no child can run).

    Raises:
        ExportError: the calibrator failed (its message, on one line).
    """
    from tensorflow.lite.python.optimize import calibrator

    from edgetl.core.native import quiet_native_stderr

    try:
        with quiet_native_stderr():
            return bytes(calibrator.Calibrator(model).calibrate(representative))
    except Exception as exc:
        raise ExportError(f"TFLite calibration failed: {first_line(exc)}. Try --quantize dynamic or float16.") from None


def main(argv: list[str]) -> int:
    """The child: MODEL IMAGES OUT WRAPPER; writes OUT atomically; one line on stderr and exit 1 on failure."""
    if len(argv) != 4:
        print("usage: python -m edgetl.export.calibration MODEL IMAGES OUT WRAPPER", file=sys.stderr)
        return 2
    model, images, out, wrapper = (Path(a) for a in argv)
    try:
        data = calibrate_images(model.read_bytes(), np.load(images, mmap_mode="r"), _load_wrapper(wrapper))
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except Exception as exc:  # the parent reads this line and falls back to calibrating itself
        print(f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
