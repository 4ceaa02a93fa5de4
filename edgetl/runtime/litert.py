"""The LiteRT runner: a .tflite file in the LiteRT interpreter, with its input and output quantization."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.errors import ModelError, first_line
from edgetl.core.native import quiet_native_stderr
from edgetl.runtime.runner import Runner, static_square

log = logging.getLogger("edgetl")


class LiteRTRunner(Runner):
    """A .tflite file in the LiteRT interpreter (XNNPACK on CPU)."""

    kind = "tflite"

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - a dependency of edgetl
            raise ModelError(f"LiteRT is not installed ({exc}). Install ai-edge-litert.") from None
        try:
            with quiet_native_stderr():
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"'{path}' is not a valid .tflite model: {first_line(exc)}. "
                             "Pass a file written by 'edgetl export --format tflite'.") from None
        ins = self.interpreter.get_input_details()
        outs = self.interpreter.get_output_details()
        if len(ins) != 1 or not outs:
            raise ModelError(f"'{path}' has {len(ins)} inputs and {len(outs)} outputs; edgetl needs one image input "
                             "and a class output.")
        self.inp = ins[0]
        self.out = outs[0]
        shape, self.input_dtype, self.num_outputs = image_io(path, self.inp, self.out)
        sig = [int(d) for d in self.inp.get("shape_signature", shape)]
        self._dynamic_batch = sig[0] == -1
        self._hw_dynamic = sig[1] == -1 or sig[2] == -1
        self._current_batch: int | None = None if self._hw_dynamic else shape[0]
        if not self._dynamic_batch:
            self.batch_fixed = shape[0]
        self._norm: tuple[np.ndarray, np.ndarray] | None = None

    def set_normalization(self, mean: list[float], std: list[float]) -> None:
        """Feed (pixels - mean) / std to a float input, as a file's standard metadata asks (edgetl's: none needed)."""
        m = np.asarray(mean, dtype=np.float32)
        sd = np.asarray(std, dtype=np.float32)
        if np.all(m == 0.0) and np.all(sd == 1.0):
            return
        if np.any(sd == 0.0):
            raise ModelError(f"the input normalization of '{self.path}' has a zero std {list(std)}.")
        self._norm = (m, sd)

    def input_shape_signature(self) -> list[int]:
        """The input shape as stored in the file (-1 for a free dimension)."""
        return [int(d) for d in self.inp.get("shape_signature", self.inp["shape"])]

    def spatial_size(self) -> int | None:
        """Square input size from the file's input shape signature, None when not fixed."""
        return static_square([d if d > 0 else None for d in self.input_shape_signature()], self.path)

    def _ensure_batch(self, n: int) -> None:
        # Resizing re-plans the interpreter (and XNNPACK): do it only when the batch size changes.
        if n == self._current_batch:
            return
        with quiet_native_stderr():
            self.interpreter.resize_tensor_input(self.inp["index"], [n, self.image_size, self.image_size, 3],
                                                 strict=False)
            self.interpreter.allocate_tensors()
        self._current_batch = n

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._dynamic_batch or self._hw_dynamic:
            self._ensure_batch(batch.shape[0])
        if self._norm is not None:
            batch = (np.asarray(batch, dtype=np.float32) - self._norm[0]) / self._norm[1]
        x = quantize(batch, self.input_dtype, self.inp)
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.out["index"]), self.out)

    def close(self) -> None:
        self.interpreter = None  # type: ignore[assignment]


# A tensor detail is the interpreter's own dict (name, index, shape, dtype, quantization_parameters, ...).


def image_io(path: Path, inp: dict[str, Any], out: dict[str, Any]) -> tuple[list[int], str, int]:
    """A TFLite file's image input shape, input dtype and class count, from its tensor details (LiteRT's or TFLM's).

    Raises:
        ModelError: the input is not an NHWC image batch, or of a type edgetl does not feed.
    """
    shape = [int(d) for d in inp["shape"]]
    if len(shape) != 4:
        raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs images (N, H, W, 3).")
    dtype = np.dtype(inp["dtype"]).name
    if dtype not in ("float32", "uint8", "int8"):
        raise ModelError(f"'{path}' takes {dtype} input; edgetl runs float32, uint8 or int8 models.")
    return shape, dtype, int(out["shape"][-1])


def quantize(x: np.ndarray, dtype: str, detail: dict[str, Any]) -> np.ndarray:
    """Pixels 0..255 -> the input tensor's type, with its scale and zero point (from the tensor `detail`)."""
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32)
    scale, zp = _quant_params(detail)
    info = np.iinfo(dtype)
    if scale == 0.0:  # no quantization parameters: the tensor takes raw values
        return np.clip(np.rint(np.asarray(x, dtype=np.float32)), info.min, info.max).astype(dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / scale) + zp
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor's values -> float32, with its scale and zero point (from the tensor `detail`)."""
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32, copy=False)
    scale, zp = _quant_params(detail)
    if scale == 0.0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def _quant_params(detail: dict[str, Any]) -> tuple[float, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = qp.get("scales")
    zps = qp.get("zero_points")
    if scales is not None and len(scales):
        return float(scales[0]), int(zps[0]) if zps is not None and len(zps) else 0
    scale, zp = detail.get("quantization", (0.0, 0))
    return float(scale), int(zp)


def with_standard_metadata(runner: LiteRTRunner, p: Path, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """A .tflite without edgetl's labels: labels and input normalisation from its standard metadata, if any."""
    from edgetl.runtime.app_runtime import read_standard_metadata

    if meta and meta.get("class_names"):
        return meta
    try:
        std = read_standard_metadata(p)
    except ModelError as exc:
        log.warning("ignoring the standard TFLite metadata of '%s' (%s)", p, exc)
        return meta
    if not std:
        return meta
    norm = std.get("normalization")
    if norm and runner.input_dtype == "float32":
        runner.set_normalization(norm["mean"], norm["std"])
    out = dict(meta or {})
    if std.get("class_names"):
        out["class_names"] = std["class_names"]
    out["standard_metadata"] = {k: v for k, v in std.items() if k != "class_names"}
    return out
