"""One Runner interface over every artifact edgetl makes: run dir, .keras, SavedModel, .tflite, .onnx.

Every runner takes RGB pixels 0..255 (uint8 or float), NHWC at its image size, and returns class
probabilities as float32 numpy (N, classes). Preprocessing and labels come from the artifact's own
metadata (the run manifest, or the metadata embedded at export), so every format is measured the
same way. Runtimes (TensorFlow, LiteRT, ONNX Runtime) are imported only when a model is opened.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.errors import ModelError, UsageError, first_line
from edgetl.core.native import quiet_native_stderr

log = logging.getLogger("edgetl")

KINDS = ("keras", "saved_model", "tflite", "onnx")
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
_CHUNK = 32  # images per runtime call when the batch dimension is free: bounded memory, good throughput
_ALLOWED = ("a run directory, a .keras file, a SavedModel folder, a .tflite file or a .onnx file")


class Runner:
    """A model opened for inference; subclasses wrap one runtime each.

    Attributes:
        kind: "keras", "saved_model", "tflite" or "onnx".
        path: the file or folder opened.
        image_size: square input size in pixels.
        class_names: class names in output order.
        metadata: edgetl metadata (embedded, from the run manifest, or read from the model's shapes).
        input_dtype: "float32", "uint8" or "int8": what the model's input tensor holds.
        quantization: the quantization mode named in the metadata ("none" if unknown).
        size_bytes: bytes on disk (a folder: all its files).
        threads: the thread count asked for (None: the runtime's default).
    """

    kind = ""

    def __init__(self, path: Path, threads: int | None) -> None:
        self.path = path
        self.threads = threads
        self.image_size = 0
        self.class_names: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.input_dtype = "float32"
        self.quantization = "none"
        self.size_bytes = _size_of(path)
        self.num_outputs = 0
        self.layout = "NHWC"
        self.batch_fixed: int | None = None  # the batch size the file requires, None when free
        self.embedded_metadata = False  # True when the labels and sizes came from edgetl metadata

    # -- the interface --------------------------------------------------------------------------

    def predict(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities for a batch of images.

        Args:
            images: N x H x W x 3 uint8, or float 0..255, RGB at `image_size` (one H x W x 3 image is
                also accepted).
            batch_size: images per runtime call (default 32; a model with a fixed batch of 1 is fed
                one at a time whatever this says).

        Returns:
            float32 array (N, classes).

        Raises:
            UsageError: the images have the wrong shape.
            ModelError: the runtime failed on them.
        """
        x = self._check_images(images)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.num_outputs), dtype=np.float32)
        step = self.batch_fixed or max(1, int(batch_size or _CHUNK))
        outs = []
        for start in range(0, n, step):
            chunk = x[start:start + step]
            real = chunk.shape[0]
            if self.batch_fixed and real < self.batch_fixed:  # pad the last chunk to the fixed batch
                pad = np.zeros((self.batch_fixed - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            try:
                out = self._run(self._prepare(chunk))
            except (ModelError, UsageError):
                raise
            except Exception as exc:
                raise ModelError(f"{self.kind} model '{self.path}' failed to run: {first_line(exc)}. "
                                 "Check that the file matches the images (size, channels).") from None
            outs.append(np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)[:real])
        probs = np.concatenate(outs)
        return self._as_probabilities(probs)

    def close(self) -> None:
        """Release the runtime's resources (the runner is unusable afterwards)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: kind, path, size, image size, classes, dtypes, quantization, metadata."""
        return {"kind": self.kind, "path": str(self.path), "size_bytes": self.size_bytes,
                "image_size": self.image_size, "classes": len(self.class_names), "class_names": self.class_names,
                "input_dtype": self.input_dtype, "quantization": self.quantization, "layout": self.layout,
                "batch_fixed": self.batch_fixed, "threads": self.threads, "metadata": self.metadata}

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.kind} '{self.path}' {self.image_size}px "
                f"{len(self.class_names)} classes {self.input_dtype} q={self.quantization}>")

    # -- for subclasses -------------------------------------------------------------------------

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        want = (self.image_size, self.image_size, 3)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise UsageError(f"images of shape {tuple(x.shape)} do not fit the model; it takes N x "
                             f"{want[0]} x {want[1]} x 3 RGB. Resize the images to {self.image_size} px first.")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        return x

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        # The edgetl contract is RGB 0..255 with preprocessing inside the model; a foreign model whose
        # metadata asks for another pixel range or BGR gets its pixels converted here, once, for every format.
        if self.metadata.get("color", "RGB") == "BGR":
            x = x[..., ::-1]
        lo, hi = _pixel_range(self.metadata.get("pixel_range"))
        if (lo, hi) != (0.0, 255.0):
            x = np.asarray(x, dtype=np.float32) * ((hi - lo) / 255.0) + lo
        return x

    def _as_probabilities(self, out: np.ndarray) -> np.ndarray:
        # edgetl models end in softmax; a foreign model may output logits: normalise those so
        # metrics and top-k probabilities mean the same thing for every file.
        if self.embedded_metadata or out.size == 0:
            return out
        sums = out.sum(axis=1)
        if out.min() < -1e-3 or np.abs(sums - 1.0).max() > 0.05:
            shifted = out - out.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return out

    def _finish_metadata(self, meta: dict[str, Any] | None, shape_size: int | None, num_outputs: int | None,
                         class_names: list[str] | None, image_size: int | None) -> None:
        """Settle image size, classes and metadata from (in order): arguments, metadata, labels.txt, shapes."""
        meta = dict(meta or {})
        self.embedded_metadata = bool(meta.get("class_names"))
        size = image_size
        if size is None and meta.get("image_size"):
            size = _first_int(meta["image_size"])
        if size is None:
            size = shape_size
        if size is None:
            raise ModelError(f"the input size of '{self.path}' cannot be read (its input shape has no fixed height "
                             "and width and it has no edgetl metadata). Pass --image-size.")
        if shape_size is not None and size != shape_size:
            raise ModelError(f"'{self.path}' takes {shape_size}x{shape_size} images but its metadata says {size}. "
                             "Export the model again.")
        self.image_size = int(size)
        names = list(class_names) if class_names else None
        if names is None and meta.get("class_names"):
            names = [str(c) for c in meta["class_names"]]
        if names is None:
            names = read_labels_beside(self.path)
        if num_outputs is not None and names is not None and len(names) != num_outputs:
            raise ModelError(f"'{self.path}' outputs {num_outputs} classes but {len(names)} class names were found. "
                             f"Pass the right labels ({LABELS_FILE} with one class per line).")
        if names is None:
            if num_outputs is None:
                raise ModelError(f"the number of classes of '{self.path}' cannot be read. Put a {LABELS_FILE} "
                                 "(one class per line) beside it.")
            names = [f"class_{i}" for i in range(num_outputs)]
            log.warning("'%s' has no class names (no edgetl metadata, no %s beside it): using class_0..class_%d",
                        self.path, LABELS_FILE, num_outputs - 1)
        self.class_names = names
        self.num_outputs = len(names)
        self.quantization = str(meta.get("quantization") or "none")
        meta.setdefault("format", self.kind)
        meta.setdefault("quantization", self.quantization)
        meta["class_names"] = names
        meta.setdefault("image_size", [self.image_size, self.image_size])
        meta.setdefault("color", "RGB")
        meta.setdefault("layout", self.layout)
        meta.setdefault("pixel_range", [0, 255])
        meta.setdefault("input_dtype", self.input_dtype)
        self.metadata = meta


# ----------------------------------------------------------------------------------------------
# Keras and SavedModel (TensorFlow)


def _set_tf_threads(threads: int | None) -> None:
    if threads is None:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    except RuntimeError:
        # TensorFlow fixes its thread pools when it first runs an op; later calls cannot change them.
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("TensorFlow was already running: --threads %d does not apply to the Keras/SavedModel "
                        "runner in this process", threads)


class KerasRunner(Runner):
    """A Keras classifier (.keras file or a run directory's model.keras)."""

    kind = "keras"

    def __init__(self, path: Path, model: Any, threads: int | None) -> None:
        super().__init__(path, threads)
        import tensorflow as tf

        self.model = model
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else tuple(model.input_shape)
        if len(shape) != 4:
            raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs images (N, H, W, 3).")
        self._shape = shape
        self.num_outputs = int(model.outputs[0].shape[-1])
        spec = tf.TensorSpec((None, *shape[1:]), tf.float32)
        # One traced graph for every batch size: model.predict adds ~ms of per-call overhead.
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._fn(batch.astype(np.float32, copy=False))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.numpy()


class SavedModelRunner(Runner):
    """A TensorFlow SavedModel folder, run through its serving signature."""

    kind = "saved_model"

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path, threads)
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot load SavedModel '{path}': {first_line(exc)}. "
                             "Pass a folder written by 'edgetl export --format saved_model'.") from None
        sigs = getattr(self.loaded, "signatures", {})
        key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if sigs else None)
        if key is None:
            raise ModelError(f"SavedModel '{path}' has no serving signature. Export it with a signature.")
        self.fn = sigs[key]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise ModelError(f"SavedModel '{path}' signature '{key}' has {len(kwargs)} inputs; edgetl needs one.")
        self.input_name, spec = next(iter(kwargs.items()))
        self._shape = tuple(spec.shape)
        self._tf_dtype = spec.dtype
        self.input_dtype = spec.dtype.name if spec.dtype.name in ("uint8", "int8") else "float32"
        outs = self.fn.structured_outputs
        self.output_name = next(iter(outs)) if isinstance(outs, dict) else None
        out_spec = outs[self.output_name] if self.output_name else outs
        self.num_outputs = int(out_spec.shape[-1]) if out_spec.shape.rank and out_spec.shape[-1] else 0
        if len(self._shape) != 4:
            raise ModelError(f"SavedModel '{path}' takes inputs of shape {self._shape}; edgetl needs (N, H, W, 3).")
        if self._shape[0] is not None:
            self.batch_fixed = int(self._shape[0])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = tf.constant(np.asarray(batch).astype(self._tf_dtype.as_numpy_dtype, copy=False))
        out = self.fn(**{self.input_name: x})
        if isinstance(out, dict):
            out = out[self.output_name] if self.output_name in out else next(iter(out.values()))
        return out.numpy()


# ----------------------------------------------------------------------------------------------
# LiteRT


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
        shape = [int(d) for d in self.inp["shape"]]
        sig = [int(d) for d in self.inp.get("shape_signature", shape)]
        if len(shape) != 4:
            raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs images (N, H, W, 3).")
        self.input_dtype = np.dtype(self.inp["dtype"]).name
        if self.input_dtype not in ("float32", "uint8", "int8"):
            raise ModelError(f"'{path}' takes {self.input_dtype} input; edgetl runs float32, uint8 or int8 models.")
        self.num_outputs = int(self.out["shape"][-1])
        self._dynamic_batch = sig[0] == -1
        self._hw_dynamic = sig[1] == -1 or sig[2] == -1
        self._current_batch: int | None = None if self._hw_dynamic else shape[0]
        if not self._dynamic_batch:
            self.batch_fixed = shape[0]

    def input_shape_signature(self) -> list[int]:
        """The input shape as stored in the file (-1 for a free dimension)."""
        return [int(d) for d in self.inp.get("shape_signature", self.inp["shape"])]

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
        x = _quantize(batch, self.input_dtype, self.inp)
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.out["index"]), self.out)

    def close(self) -> None:
        self.interpreter = None  # type: ignore[assignment]


def _quant_params(detail: dict[str, Any]) -> tuple[float, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = qp.get("scales")
    zps = qp.get("zero_points")
    if scales is not None and len(scales):
        return float(scales[0]), int(zps[0]) if zps is not None and len(zps) else 0
    scale, zp = detail.get("quantization", (0.0, 0))
    return float(scale), int(zp)


def _quantize(x: np.ndarray, dtype: str, detail: dict[str, Any]) -> np.ndarray:
    """Pixels 0..255 -> the input tensor's type, with its scale and zero point."""
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32)
    scale, zp = _quant_params(detail)
    info = np.iinfo(dtype)
    if scale == 0.0:  # no quantization parameters: the tensor takes raw values
        return np.clip(np.rint(np.asarray(x, dtype=np.float32)), info.min, info.max).astype(dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / scale) + zp
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32, copy=False)
    scale, zp = _quant_params(detail)
    if scale == 0.0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime


_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(float16)": "float16"}


class OnnxRunner(Runner):
    """A .onnx file in ONNX Runtime (CPU execution provider)."""

    kind = "onnx"

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path, threads)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of edgetl
            raise ModelError(f"ONNX Runtime is not installed ({exc}). Install onnxruntime.") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # warnings about unused initialisers are noise to users
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"'{path}' is not a valid ONNX model: {first_line(exc)}. "
                             "Pass a file written by 'edgetl export --format onnx'.") from None
        ins = self.session.get_inputs()
        outs = self.session.get_outputs()
        if len(ins) != 1 or not outs:
            raise ModelError(f"'{path}' has {len(ins)} inputs and {len(outs)} outputs; edgetl needs one image input "
                             "and a class output.")
        self.inp = ins[0]
        self.out = outs[0]
        self.shape = list(self.inp.shape)
        if len(self.shape) != 4:
            raise ModelError(f"'{path}' takes inputs of shape {self.shape}; edgetl needs images (N, H, W, 3).")
        dtype = _ORT_TYPES.get(self.inp.type)
        if dtype is None or dtype == "float16":
            raise ModelError(f"'{path}' takes {self.inp.type} input; edgetl runs float32, uint8 or int8 models.")
        self.input_dtype = dtype
        self._np_dtype = np.dtype(dtype)
        if self.shape[1] == 3 and self.shape[3] != 3:  # a channels-first export (e.g. from PyTorch)
            self.layout = "NCHW"
        last = self.out.shape[-1] if self.out.shape else None
        self.num_outputs = int(last) if isinstance(last, int) else 0
        if isinstance(self.shape[0], int) and self.shape[0] > 0:
            self.batch_fixed = int(self.shape[0])

    def spatial_size(self) -> int | None:
        """Square input size from the graph's input shape, None when not fixed."""
        h, w = (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])
        if isinstance(h, int) and isinstance(w, int) and h > 0:
            if h != w:
                raise ModelError(f"'{self.path}' takes {h}x{w} images; edgetl handles square inputs only.")
            return int(h)
        return None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch)
        if self.input_dtype == "float32":
            x = x.astype(np.float32, copy=False)
        else:
            info = np.iinfo(self._np_dtype)
            x = np.clip(np.rint(x), info.min, info.max).astype(self._np_dtype) if x.dtype != self._np_dtype else x
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return self.session.run([self.out.name], {self.inp.name: x})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# Opening


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Which kind of artifact `path` is: "run", "keras", "saved_model", "tflite" or "onnx".

    Raises:
        ModelError: the path does not exist or is none of those.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model '{p}' does not exist. Pass {_ALLOWED}.")
    if p.is_dir():
        if (p / MANIFEST_FILE).is_file():
            return "run"
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelError(f"folder '{p}' is neither an edgetl run (no {MANIFEST_FILE}) nor a SavedModel (no "
                         f"saved_model.pb). Pass {_ALLOWED}.")
    suffix = p.suffix.lower()
    head = _head(p, 8)
    if not head:
        # Every runtime says something cryptic about an empty buffer; a crashed copy or download is the usual cause.
        raise ModelError(f"model file '{p}' is empty (0 bytes). Copy or export it again.")
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite" or head[4:8] == b"TFL3":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".h5", ".hdf5"):
        raise ModelError(f"'{p}' is a legacy HDF5 Keras file; edgetl reads the .keras format. "
                         "Re-save it with model.save('model.keras').")
    if suffix == ".pb":
        raise ModelError(f"'{p}' is a single .pb file; pass the SavedModel folder that holds it.")
    raise ModelError(f"'{p}' is not a model edgetl can open (suffix '{suffix or 'none'}'). Pass {_ALLOWED}.")


def open_model(path: str | os.PathLike[str], *, threads: int | None = None, safe_mode: bool = True,
               class_names: list[str] | None = None, image_size: int | None = None) -> Runner:
    """Open any edgetl artifact (or a compatible foreign model) for inference.

    Args:
        path: a run directory (its model.keras and manifest), a .keras file, a SavedModel folder, a
            .tflite file or a .onnx file.
        threads: CPU threads for the runtime (None: its default).
        safe_mode: load .keras files in Keras' safe mode (no arbitrary code); False only for trusted files.
        class_names: class names to use when the file carries none (overrides labels.txt and metadata).
        image_size: input size to use when the file's input shape does not fix it.

    Returns:
        A Runner.

    Raises:
        ModelError: the path is not a model, is damaged, or its input size or classes cannot be read.
        UsageError: threads or image_size is out of range.
    """
    if threads is not None and (threads < 1 or threads > 1024):
        raise UsageError(f"--threads {threads} is out of range. Use 1 or more (or leave it out for the default).")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise UsageError(f"--image-size {image_size} is out of range. Use 8..4096.")
    p = Path(path)
    kind = detect_kind(p)
    if kind == "run":
        return _open_run(p, threads, safe_mode, class_names)
    if kind == "keras":
        return _open_keras(p, threads, safe_mode, class_names, image_size)
    if kind == "saved_model":
        return _open_saved_model(p, threads, class_names, image_size)
    if kind == "tflite":
        return _open_tflite(p, threads, class_names, image_size)
    return _open_onnx(p, threads, class_names, image_size)


def _open_run(p: Path, threads: int | None, safe_mode: bool, class_names: list[str] | None) -> Runner:
    from edgetl.rundir import load_run

    run = load_run(p)
    meta = metadata_from_manifest(run.manifest, run_path=p)
    runner = _keras_runner(run.model_path, threads, safe_mode)
    runner.path = p
    runner.size_bytes = _size_of(run.model_path)
    runner._finish_metadata(meta, _static_hw(runner._shape, runner.path), runner.num_outputs, class_names, None)
    runner.embedded_metadata = True
    return runner


def _keras_runner(model_path: Path, threads: int | None, safe_mode: bool) -> KerasRunner:
    if not zipfile.is_zipfile(model_path):
        raise ModelError(f"'{model_path}' is not a .keras file (not a zip archive). Pass a model saved by edgetl.")
    _set_tf_threads(threads)
    from edgetl.model.classifier import load_model

    model = load_model(str(model_path), safe_mode=safe_mode)
    if not hasattr(model, "inputs") or len(getattr(model, "inputs", []) or []) != 1:
        raise ModelError(f"'{model_path}' is not a single-input Keras model; edgetl needs an image classifier.")
    return KerasRunner(model_path, model, threads)


def _open_keras(p: Path, threads: int | None, safe_mode: bool, class_names: list[str] | None,
                image_size: int | None) -> Runner:
    runner = _keras_runner(p, threads, safe_mode)
    meta = None
    manifest_path = p.parent / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("class_names") and manifest.get("input"):
                meta = metadata_from_manifest(manifest, run_path=p.parent)
        except (OSError, ValueError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s beside '%s'", MANIFEST_FILE, p)
    runner._finish_metadata(meta, _static_hw(runner._shape, p), runner.num_outputs, class_names, image_size)
    if meta:
        runner.embedded_metadata = True
    return runner


def _open_saved_model(p: Path, threads: int | None, class_names: list[str] | None, image_size: int | None) -> Runner:
    _set_tf_threads(threads)
    runner = SavedModelRunner(p, threads)
    meta = _read_metadata("read_saved_model_metadata", p)
    runner._finish_metadata(meta, _static_hw(runner._shape, p), runner.num_outputs or None, class_names,
                            image_size)
    return runner


def _open_tflite(p: Path, threads: int | None, class_names: list[str] | None, image_size: int | None) -> Runner:
    runner = LiteRTRunner(p, threads)
    meta = _read_metadata("read_tflite_metadata", p)
    sig = runner.input_shape_signature()
    runner._finish_metadata(meta, _static_hw(tuple(d if d > 0 else None for d in sig), p), runner.num_outputs,
                            class_names, image_size)
    return runner


def _open_onnx(p: Path, threads: int | None, class_names: list[str] | None, image_size: int | None) -> Runner:
    runner = OnnxRunner(p, threads)
    meta = _read_metadata("read_onnx_metadata", p)
    runner._finish_metadata(meta, runner.spatial_size(), runner.num_outputs or None, class_names, image_size)
    return runner


# ----------------------------------------------------------------------------------------------
# Metadata


def metadata_from_manifest(manifest: dict[str, Any], run_path: Path | None = None) -> dict[str, Any]:
    """The metadata dict (the keys export embeds) for a run's Keras model, from its manifest."""
    inp = manifest.get("input", {}) or {}
    backbone = manifest.get("backbone") or {}
    return {
        "edgetl_version": (manifest.get("versions") or {}).get("edgetl"),
        "format": "keras",
        "quantization": "none",
        "class_names": list(manifest.get("class_names") or []),
        "image_size": list(inp.get("image_size") or []),
        "color": inp.get("color", "RGB"),
        "layout": inp.get("layout", "NHWC"),
        "pixel_range": list(inp.get("pixel_range") or [0, 255]),
        "input_dtype": inp.get("dtype", "float32"),
        "output_dtype": "float32",
        "output": "probabilities",
        "backbone": {k: backbone.get(k) for k in ("name", "kind", "alpha", "weights")},
        "preprocessing": inp.get("preprocessing"),
        "preprocessing_in_model": bool(inp.get("preprocessing_in_model", True)),
        "run": {"path": str(run_path.resolve()) if run_path is not None else None, "fingerprint": None,
                "data_fingerprint": (manifest.get("data") or {}).get("fingerprint")},
    }


def _read_metadata(reader: str, p: Path) -> dict[str, Any] | None:
    """Call edgetl.export.metadata.<reader>(p); None when the module or the metadata is absent."""
    try:
        from edgetl.export import metadata as md
    except ImportError:
        return None
    fn = getattr(md, reader, None)
    if fn is None:
        return None
    try:
        meta = fn(p)
    except Exception as exc:  # a damaged metadata block must not make a runnable model unusable
        log.warning("cannot read the edgetl metadata of '%s' (%s); reading shapes and %s instead",
                    p, first_line(exc), LABELS_FILE)
        return None
    return meta if isinstance(meta, dict) else None


def read_labels_beside(path: Path) -> list[str] | None:
    """Class names from labels.txt beside a file (or inside a SavedModel folder), None when there is none."""
    candidates = []
    if path.is_dir():
        candidates += [path / LABELS_FILE, path / "assets" / LABELS_FILE]
    candidates += [path.parent / f"{path.stem}.{LABELS_FILE}", path.parent / LABELS_FILE]
    for c in candidates:
        if c.is_file():
            return read_labels(c)
    return None


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """One class name per line; blank lines ignored.

    Raises:
        ModelError: the file cannot be read or is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file '{path}' ({exc.__class__.__name__}). "
                         "Write it as UTF-8 text, one class per line.") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelError(f"labels file '{path}' is empty. Write one class name per line.")
    return names


# ----------------------------------------------------------------------------------------------
# Helpers


def _static_hw(shape: tuple[Any, ...], path: Path) -> int | None:
    if len(shape) != 4:
        return None
    h, w = shape[1], shape[2]
    if h is None or w is None:
        return None
    if int(h) != int(w):
        raise ModelError(f"'{path}' takes {h}x{w} images; edgetl handles square inputs only.")
    return int(h)


def _pixel_range(v: Any) -> tuple[float, float]:
    try:
        lo, hi = float(v[0]), float(v[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return 0.0, 255.0
    return (lo, hi) if hi > lo else (0.0, 255.0)


def _first_int(v: Any) -> int | None:
    try:
        return int(v[0]) if isinstance(v, (list, tuple)) else int(v)
    except (TypeError, ValueError, IndexError):
        return None


def _size_of(p: Path) -> int:
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _head(p: Path, n: int) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}. Check the path and its permissions.") from None
