"""The TensorFlow Lite Micro runner: a .tflite in TFLM's interpreter (the reference kernels microcontrollers run).

TFLM plans every tensor into one block of RAM, the tensor arena, that the app declares at a fixed size.
`measure_arena` finds the smallest arena a file allocates in: TFLM's recording allocator reports what it
used (`print_allocations`, text on file descriptor 2), and the file is then allocated again at exactly
that size to confirm it; when the report cannot be read, the size is found by bisection. The figure is
the arena on this 64-bit host: TFLM's bookkeeping structs hold pointers, so a 32-bit MCU needs a little
less, never more, with the same kernels (an optimised kernel library may ask for its own scratch buffers).

Labels and input size come from the file's edgetl metadata (edgetl.runtime.metadata), or the standard
TFLite metadata's labels, as for LiteRT. tflite-micro is imported inside functions only.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgetl.core.errors import ModelError, first_line
from edgetl.core.native import capture_native_stderr
from edgetl.runtime.litert import dequantize, image_io, quantize
from edgetl.runtime.metadata import read_tflite_metadata
from edgetl.runtime.runner import Runner, static_square

log = logging.getLogger("edgetl")

PIN = "tflite-micro==0.dev20261023182759"  # the dev build pyproject.toml pins
INSTALL_HINT = f"pip install {PIN}"
ARENA_ALIGNMENT = 16  # TFLM aligns the arena's buffers to 16 bytes: sizes are searched in these steps
MAX_ARENA = 1 << 30  # no microcontroller has a gigabyte of RAM: a file that needs more is refused
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


@functools.lru_cache(maxsize=1)
def load_runtime() -> ModuleType:
    """TFLM's Python interpreter module.

    Raises:
        ModelError: tflite-micro is not installed (the message has the pip command).
    """
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise ModelError(f"TensorFlow Lite Micro is not installed ({exc}). Install it: {INSTALL_HINT}.") from None
    return runtime


def version() -> str:
    """The installed tflite-micro build ("" when it is not installed)."""
    try:
        from tflite_micro.python.tflite_micro._version import __version__
    except ImportError:
        return ""
    return str(__version__)


def tflm_failure(lines: list[str], exc: BaseException) -> str:
    """The reason TFLM gave, from what it wrote on descriptor 2 (the exception alone says only that it failed)."""
    said = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("[RecordingMicroAllocator]")]
    return "; ".join(dict.fromkeys(said[:3])) or first_line(exc)


def _allocate(data: bytes, arena: int) -> tuple[Any | None, list[str]]:
    """An interpreter of `data` with an arena of `arena` bytes (None when it does not allocate), and TFLM's text."""
    runtime = load_runtime()
    with capture_native_stderr() as lines:
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
        except (RuntimeError, ValueError):
            interpreter = None
    return interpreter, lines


def _reported_total(interpreter: Any) -> int | None:
    with capture_native_stderr() as lines:
        interpreter.print_allocations()
    for line in lines:
        m = _TOTAL.search(line)
        if m:
            return int(m.group(1))
    return None


def _fits(data: bytes, arena: int) -> bool:
    return _allocate(data, arena)[0] is not None


def _bisect(data: bytes, low: int, high: int) -> int:
    """The smallest multiple of ARENA_ALIGNMENT in (low, high] that allocates; `high` is known to."""
    lo, hi = low // ARENA_ALIGNMENT, -(-high // ARENA_ALIGNMENT)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(data, mid * ARENA_ALIGNMENT):
            hi = mid
        else:
            lo = mid
    return hi * ARENA_ALIGNMENT


def allocate_smallest(data: bytes, where: str = "model") -> tuple[int, Any]:
    """The smallest tensor arena (bytes, a multiple of ARENA_ALIGNMENT) TFLM allocates `data` in, and the
    interpreter allocated in it.

    The recording allocator's total counts the padding that aligns the arena's ends: with an arena whose
    size is a multiple of ARENA_ALIGNMENT (as a device's `alignas(16)` arena is) it is the figure; it is
    confirmed by allocating at that size (and at one step more, should the host's buffer start unaligned).

    Raises:
        ModelError: TFLM cannot run the file (an op it lacks, a type its kernels lack: TFLM's reason is
            in the message), or it needs more than MAX_ARENA.
    """
    # TFLM's own first guess is 10x the file; a multiple of the alignment, or the tail's end padding counts too.
    arena = -(-max(1 << 20, 10 * len(data)) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
    while True:
        interpreter, lines = _allocate(data, arena)
        if interpreter is not None:
            break
        if not any("Failed to allocate" in ln or "Failed to resize buffer" in ln for ln in lines) or arena >= MAX_ARENA:
            raise ModelError(f"TensorFlow Lite Micro cannot run '{where}': {tflm_failure(lines, RuntimeError())}. "
                             "Run 'edgetl inspect FILE --compat' for the ops it lacks.")
        arena *= 4
    total = _reported_total(interpreter)
    del interpreter
    if total is not None:
        size = -(-total // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
        for candidate in (size, size + ARENA_ALIGNMENT):
            interpreter, _ = _allocate(data, candidate)
            if interpreter is not None:
                return candidate, interpreter
    log.debug("TFLM's allocation report of '%s' was not usable (total %s): bisecting the arena", where, total)
    size = _bisect(data, 0, arena)
    interpreter, _ = _allocate(data, size)
    return size, interpreter


def measure_arena(data: bytes, where: str = "model") -> int:
    """The smallest tensor arena, in bytes, TFLM allocates the model `data` in (see allocate_smallest)."""
    return allocate_smallest(data, where)[0]


class TFLMRunner(Runner):
    """A .tflite file in TensorFlow Lite Micro's interpreter, in an arena of the smallest size it allocates in.

    Attributes (besides Runner's): arena_bytes (the tensor arena, RAM), flash_bytes (the file: the model
    lives in flash on the device).
    """

    kind = "tflm"

    def __init__(self, path: Path, threads: int | None = None, arena_bytes: int | None = None) -> None:
        super().__init__(path, threads)  # TFLM runs on one thread: `threads` is recorded, not used
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read '{path}': {exc.strerror or exc}.") from None
        self.flash_bytes = len(data)
        if arena_bytes:
            self.arena_bytes = int(arena_bytes)
            interpreter, lines = _allocate(data, self.arena_bytes)
        else:
            self.arena_bytes, interpreter = allocate_smallest(data, str(path))
            lines = []
        if interpreter is None:
            raise ModelError(f"TensorFlow Lite Micro cannot run '{path}' in a {self.arena_bytes}-byte arena: "
                             f"{tflm_failure(lines, RuntimeError())}.")
        self.interpreter = interpreter
        self.inp = interpreter.get_input_details(0)
        self.out = interpreter.get_output_details(0)
        shape, self.input_dtype, self.num_outputs = image_io(path, self.inp, self.out)
        self.batch_fixed = shape[0]  # TFLM cannot resize an input: the file's batch is the batch
        self._shape = shape

    def spatial_size(self) -> int | None:
        """Square input size from the file's input shape."""
        return static_square(self._shape, self.path)

    def describe(self) -> dict[str, Any]:
        """Runner.describe plus the arena and flash figures."""
        return {**super().describe(), "arena_bytes": self.arena_bytes, "flash_bytes": self.flash_bytes,
                "tflite_micro": version()}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # The batch is the file's own (Runner.predict pads the last chunk to it): one TFLM call.
        x = quantize(batch, self.input_dtype, self.inp)
        with capture_native_stderr() as lines:
            try:
                self.interpreter.set_input(x, 0)
                self.interpreter.invoke()
                return dequantize(np.asarray(self.interpreter.get_output(0)), self.out)
            except RuntimeError as exc:
                error: RuntimeError = exc
        raise ModelError(f"TensorFlow Lite Micro failed to run '{self.path}': {tflm_failure(lines, error)}.")

    def close(self) -> None:
        self.interpreter = None


def open_tflm(path: str | os.PathLike[str], *, class_names: list[str] | None = None, image_size: int | None = None,
              arena_bytes: int | None = None) -> TFLMRunner:
    """Open a .tflite in TensorFlow Lite Micro, with its labels and input size from its metadata.

    Args:
        path: a .tflite file (TFLM takes flatbuffer files only).
        class_names: names to use when the file carries none (else its metadata, then labels.txt beside it).
        image_size: input size when the metadata does not say (the input shape fixes it anyway).
        arena_bytes: the tensor arena to allocate (default: the smallest that allocates, measured).

    Raises:
        ModelError: not a TFLite file, TFLM cannot run it (the reason TFLM gave), or its metadata disagrees.
    """
    from edgetl.runtime.app_runtime import read_standard_metadata

    p = Path(path)
    meta = read_tflite_metadata(p)  # raises ModelError for a file that is not TFLite, before TFLM sees it
    runner = TFLMRunner(p, None, arena_bytes)
    if not (meta and meta.get("class_names")):
        try:
            std = read_standard_metadata(p) or {}
        except ModelError as exc:
            log.warning("ignoring the standard TFLite metadata of '%s' (%s)", p, exc)
            std = {}
        if std.get("class_names"):
            meta = {**(meta or {}), "class_names": std["class_names"]}
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, class_names, image_size)
    return runner
