"""The Runner interface every runtime sits behind, and the input/output contract they share.

Every runner takes RGB pixels 0..255 (uint8 or float), NHWC at its image size, and returns class
probabilities as float32 numpy (N, classes). Preprocessing and labels come from the artifact's own
metadata (the run manifest, or the metadata embedded at export), so every format is measured the
same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import ModelError, UsageError, first_line
from edgetl.runtime.labels import LABELS_FILE, read_labels_beside

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger("edgetl")

CHUNK = 32  # images per runtime call when the batch dimension is free: bounded memory, good throughput


@dataclass(frozen=True)
class OpenRequest:
    """How open_model was asked to open a model (edgetl.runtime.open.open_model documents each field)."""

    threads: int | None = None
    safe_mode: bool = True
    class_names: list[str] | None = None
    image_size: int | None = None


class Runner:
    """A model opened for inference; subclasses wrap one runtime each.

    Attributes:
        kind: its runtime kind's name (edgetl.runtime.kinds: "keras", "saved_model", "tflite", "onnx", "ort").
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
        self.size_bytes = size_on_disk(path)
        self.num_outputs = 0
        self.layout = "NHWC"
        self.batch_fixed: int | None = None  # the batch size the file requires, None when free
        self.embedded_metadata = False  # True when the labels and sizes came from edgetl metadata

    # -- the interface --------------------------------------------------------------------------

    def predict(self, images: npt.ArrayLike, batch_size: int | None = None) -> np.ndarray:
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
        step = self.batch_fixed or max(1, int(batch_size or CHUNK))
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

    def int8_kernels(self) -> str | None:
        """How this CPU computes a static int8 file's uint8 x int8 products, when the runtime's answer depends on
        the CPU (recorded beside the file's figures); None: the same everywhere."""
        return None

    def spatial_size(self) -> int | None:
        """Square input size from the model's input shape, None when the shape does not fix it.

        Raises:
            ModelError: the input is not square.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: kind, path, size, image size, classes, dtypes, quantization, metadata."""
        return {"kind": self.kind, "path": str(self.path), "size_bytes": self.size_bytes,
                "image_size": self.image_size, "classes": len(self.class_names), "class_names": self.class_names,
                "input_dtype": self.input_dtype, "quantization": self.quantization, "layout": self.layout,
                "batch_fixed": self.batch_fixed, "threads": self.threads, "metadata": self.metadata}

    def finish_metadata(self, meta: dict[str, Any] | None, shape_size: int | None, num_outputs: int | None,
                        class_names: list[str] | None, image_size: int | None) -> None:
        """Settle image size, classes and metadata from (in order): arguments, metadata, labels.txt, shapes.

        Called once by the code that opens the model, after the runtime has loaded it.

        Raises:
            ModelError: the sizes or class counts disagree, or cannot be read at all.
        """
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

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.kind} '{self.path}' {self.image_size}px "
                f"{len(self.class_names)} classes {self.input_dtype} q={self.quantization}>")

    # -- for subclasses -------------------------------------------------------------------------

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_images(self, images: npt.ArrayLike) -> np.ndarray:
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


def static_square(shape: Sequence[int | None], path: Path) -> int | None:
    """The height of an NHWC input shape when height and width are fixed (None for a free one).

    Raises:
        ModelError: height and width differ.
    """
    if len(shape) != 4:
        return None
    h, w = shape[1], shape[2]
    if h is None or w is None:
        return None
    if int(h) != int(w):
        raise ModelError(f"'{path}' takes {h}x{w} images; edgetl handles square inputs only.")
    return int(h)


def size_on_disk(p: Path) -> int:
    """Bytes of a file, or of every file in a folder; 0 when it cannot be read."""
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _pixel_range(v: Any) -> tuple[float, float]:  # a JSON value: whatever the file's metadata holds
    try:
        lo, hi = float(v[0]), float(v[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return 0.0, 255.0
    return (lo, hi) if hi > lo else (0.0, 255.0)


def _first_int(v: Any) -> int | None:  # a JSON value
    try:
        return int(v[0]) if isinstance(v, (list, tuple)) else int(v)
    except (TypeError, ValueError, IndexError):
        return None
