"""The OpenVINO Runtime runner: an OpenVINO IR (model.xml + model.bin, or the folder holding them) on the CPU.

The IR's edgetl metadata is its rt_info entry METADATA_KEY (JSON), read from the .xml without loading the
weights. The CPU plugin compiles with inference precision f32: on CPUs with bf16 or fp16 units OpenVINO would
otherwise compute float models in those, and a float file must match Keras.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.errors import EdgetlError, ModelError, first_line
from edgetl.runtime.runner import Runner, size_on_disk

log = logging.getLogger("edgetl")

MODEL_FILE = "model.xml"  # the IR inside an exported folder; its weights are model.bin beside it
METADATA_KEY = "edgetl"  # the rt_info entry holding the edgetl metadata JSON
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OPENVINO_PIP = "pip install 'openvino>=2026.4,<2026.5'"
KERNEL_LAYERS = ("Convolution", "FullyConnected")  # the execution graph's layer types of the weighted kernels
_OV_TYPES = {"f32": "float32", "u8": "uint8", "i8": "int8", "f16": "float16"}


def load_openvino(error: type[EdgetlError] = ModelError) -> Any:
    """The openvino module, or `error` with the pip command when it is not installed."""
    try:
        import openvino
    except ImportError:
        raise error(f"OpenVINO is not installed; OpenVINO IR files need it. Run: {OPENVINO_PIP}") from None
    return openvino


def model_xml(path: str | os.PathLike[str]) -> Path:
    """The .xml of an IR given as the file itself or as the folder holding it (MODEL_FILE, or its one .xml).

    Raises:
        ModelError: no IR there, or its .bin is missing.
    """
    p = Path(path)
    if p.is_dir():
        xml = p / MODEL_FILE
        if not xml.is_file():
            found = sorted(p.glob("*.xml"))
            if len(found) != 1:
                raise ModelError(f"'{p}' holds {len(found)} .xml files, not one OpenVINO IR. Pass the .xml file.")
            xml = found[0]
    else:
        xml = p
    if xml.suffix.lower() != ".xml" or not xml.is_file():
        raise ModelError(f"'{p}' is not an OpenVINO IR (an .xml file with its .bin beside it). Pass a folder written "
                         "by 'edgetl export --format openvino' or its model.xml.")
    if not xml.with_suffix(".bin").is_file():
        raise ModelError(f"the weights of '{xml}' are missing ({xml.with_suffix('.bin').name} beside it). Copy the "
                         ".xml and .bin together.")
    return xml


def is_openvino_ir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an OpenVINO IR .xml file, or a folder holding MODEL_FILE (cheap: reads a few bytes)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if p.suffix.lower() != ".xml" or not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return b"<net " in head


def read_openvino_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata in an IR's rt_info, or None when it has none.

    Raises:
        ModelError: the .xml cannot be read or is not an OpenVINO IR.
    """
    import xml.etree.ElementTree as ET

    from edgetl.runtime.metadata import parse_json

    xml = Path(path)
    if xml.is_dir():
        found = [xml / MODEL_FILE] if (xml / MODEL_FILE).is_file() else sorted(xml.glob("*.xml"))
        if len(found) != 1:
            raise ModelError(f"'{xml}' holds {len(found)} .xml files, not one OpenVINO IR. Pass the .xml file.")
        xml = found[0]
    try:
        root = ET.parse(xml).getroot()
    except OSError as exc:
        raise ModelError(f"cannot read '{xml}': {exc.strerror or exc}.") from None
    except ET.ParseError as exc:
        raise ModelError(f"'{xml}' is not a readable OpenVINO IR ({first_line(exc)}).") from None
    if root.tag != "net":
        raise ModelError(f"'{xml}' is not an OpenVINO IR (its root element is <{root.tag}>, not <net>).")
    entry = root.find(f"rt_info/{METADATA_KEY}")
    if entry is None or "value" not in entry.attrib:
        return None
    return parse_json(entry.attrib["value"].encode("utf-8"), str(xml))


class OpenVinoRunner(Runner):
    """An OpenVINO IR in OpenVINO Runtime's CPU plugin."""

    kind = "openvino"

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path, threads)
        ov = load_openvino()
        self.xml = model_xml(path)
        self.size_bytes = size_on_disk(self.xml) + size_on_disk(self.xml.with_suffix(".bin"))
        core = ov.Core()
        try:
            model = core.read_model(str(self.xml))
        except Exception as exc:
            raise ModelError(f"'{self.xml}' is not a valid OpenVINO IR: {first_line(exc)}. Pass a file written by "
                             "'edgetl export --format openvino'.") from None
        if len(model.inputs) != 1 or len(model.outputs) < 1:
            raise ModelError(f"'{path}' has {len(model.inputs)} inputs and {len(model.outputs)} outputs; edgetl "
                             "needs one image input and a class output.")
        inp = model.inputs[0]
        shape = inp.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs images (N, H, W, 3).")
        self.shape = [d.get_length() if d.is_static else None for d in shape]
        if self.shape[3] != 3:
            raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs NHWC RGB images (N, H, W, 3).")
        dtype = _OV_TYPES.get(inp.get_element_type().get_type_name())
        if dtype not in ("float32", "uint8"):
            raise ModelError(f"'{path}' takes {inp.get_element_type()} input; edgetl runs float32 or uint8 models.")
        self.input_dtype = dtype
        self._np_dtype = np.dtype(dtype)
        out = model.outputs[0].get_partial_shape()
        self.num_outputs = out[out.rank.get_length() - 1].get_length() if out.rank.is_static and \
            out[out.rank.get_length() - 1].is_static else 0
        if self.shape[0] is not None:
            self.batch_fixed = int(self.shape[0])
        self._core, self.model = core, model  # the openvino.Model (inspect reads its graph)
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = self._compile(model)
        self.request = self.compiled.create_infer_request()
        # A free batch axis costs the CPU plugin shape work on every call (OpenVINO advises static shapes for
        # latency): single images (predict, benchmark, the reported latency) go through a batch-1 copy, compiled on
        # first use; batches through the free-batch model.
        self._single: Any = None

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot compile '{self.xml}' for the CPU: {first_line(exc)}.") from None

    def spatial_size(self) -> int | None:
        """Square input size from the IR's input shape, None when not fixed."""
        h, w = self.shape[1], self.shape[2]
        if h is None or w is None:
            return None
        if h != w:
            raise ModelError(f"'{self.path}' takes {h}x{w} images; edgetl handles square inputs only.")
        return int(h)

    def compiled_threads(self) -> int | None:
        """The threads OpenVINO's CPU plugin runs the model with (what `threads` became)."""
        try:
            return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:  # noqa: BLE001 - a plugin without the property
            return None

    def kernel_precisions(self) -> dict[str, int]:
        """How many convolution and fully connected kernels the compiled model runs in each precision ("u8", "i8":
        int8 kernels; "f32": float), from the CPU plugin's execution graph: whether an int8 IR really runs in int8."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in KERNEL_LAYERS:
                precision = info["runtimePrecision"].astype(str)
                counts[precision] = counts.get(precision, 0) + 1
        return counts

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = self.request
        if len(batch) == 1 and self.batch_fixed is None:
            if self._single is None:
                one = self.model.clone()
                one.reshape({0: [1, *self.shape[1:]]} if None not in self.shape[1:] else
                            {0: [1, *(d if d is not None else -1 for d in self.shape[1:])]})
                self._single = self._compile(one).create_infer_request()
            request = self._single
        request.infer({0: np.ascontiguousarray(batch, dtype=self._np_dtype)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self.request = self._single = self.compiled = None
        self.model = None


def open_openvino(path: str | os.PathLike[str], threads: int | None = None, class_names: list[str] | None = None,
                  image_size: int | None = None) -> OpenVinoRunner:
    """An IR opened in OpenVINO Runtime with its labels and input size from its metadata (or labels.txt, shapes)."""
    runner = OpenVinoRunner(Path(path), threads)
    try:
        meta = read_openvino_metadata(runner.xml)
    except ModelError as exc:  # a damaged metadata entry must not make a runnable model unusable
        log.warning("cannot read the edgetl metadata of '%s' (%s); reading shapes and labels.txt instead", path, exc)
        meta = None
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs or None, class_names, image_size)
    return runner
