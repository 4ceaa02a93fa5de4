"""The ONNX Runtime runners: a .onnx or .ort file on the CPU execution provider, NHWC or NCHW input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.errors import ModelError, first_line
from edgetl.runtime.runner import Runner

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(float16)": "float16"}

X64_QUANT_PRECISION = "session.x64quantprecision"  # ONNX Runtime's switch for exact int8 on x86 without VNNI
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}  # /proc/cpuinfo's names of the int8 dot products into int32


def int8_saturates() -> bool:
    """True on an x86 CPU without VNNI, where ONNX Runtime's fused uint8 x int8 kernels add products in pairs
    into int16 (vpmaddubsw), which saturates; VNNI and ARM kernels add into int32. False where it cannot tell
    (no /proc/cpuinfo)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not _VNNI_FLAGS & set(flags)


class OnnxRunner(Runner):
    """A .onnx file in ONNX Runtime (CPU execution provider)."""

    kind = "onnx"
    load_format: str | None = None  # ONNX Runtime's session.load_model_format; None: from the file's suffix

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path, threads)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of edgetl
            raise ModelError(f"ONNX Runtime is not installed ({exc}). Install onnxruntime.") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # warnings about unused initialisers are noise to users
        # x86 CPUs without VNNI multiply uint8 by int8 in pairs summed into int16 (vpmaddubsw), which
        # saturates: a static int8 file then scores worse here than its own math (and than a phone's ARM
        # kernels). This ONNX Runtime option runs such kernels as uint8 x uint8 instead, only on those CPUs.
        opts.add_session_config_entry(X64_QUANT_PRECISION, "1")
        if self.load_format is not None:  # a renamed .ort file is still one (detect_kind reads its identifier)
            opts.add_session_config_entry("session.load_model_format", self.load_format)
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = self._session(ort, opts)
        except ModelError:
            raise
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

    def _session(self, ort: Any, opts: Any) -> Any:
        """The ONNX Runtime session of the file (CPU here; a subclass picks another execution provider)."""
        return ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])

    def session_metadata(self) -> dict[str, Any] | None:
        """The edgetl metadata in the session's model properties: how an .ort file (onnx cannot load it) keeps it."""
        from edgetl.runtime.metadata import ONNX_KEY, parse_json

        props = self.session.get_modelmeta().custom_metadata_map
        return parse_json(props[ONNX_KEY].encode("utf-8"), str(self.path)) if ONNX_KEY in props else None

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

    def int8_kernels(self) -> str | None:
        if not int8_saturates():
            return None
        return "u8u8: this x86 CPU lacks VNNI, so ONNX Runtime multiplies uint8 x uint8 (session.x64quantprecision)"

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


class OrtRunner(OnnxRunner):
    """An .ort file (ONNX Runtime Mobile's format) in ONNX Runtime: its metadata is read through the session."""

    kind = "ort"
    load_format = "ORT"

    def int8_kernels(self) -> str | None:
        # The converter fixed the fused kernels in the file, so ONNX Runtime cannot switch them to uint8 x uint8.
        if not int8_saturates():
            return None
        return ("saturating: this x86 CPU lacks VNNI and ONNX Runtime's uint8 x int8 kernels saturate int16 sums; "
                "the figures are below the file's on ARM or VNNI CPUs")


def read_ort_metadata(path: str | Path) -> dict[str, Any] | None:
    """The edgetl metadata of an .ort file (ONNX Runtime's own format: only ONNX Runtime reads it), or None.

    Raises:
        ModelError: the file is not a model ONNX Runtime can load.
    """
    runner = OrtRunner(Path(path), 1)
    try:
        return runner.session_metadata()
    finally:
        runner.close()
