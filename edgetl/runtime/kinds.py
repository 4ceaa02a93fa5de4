"""The kinds of model edgetl opens, one record each: how a path is recognised, opened, read and checked.

A kind is what `detect_kind` says a path is (a run directory, a .keras file, a SavedModel folder, a .tflite,
.onnx or .ort file). Its record names the suffixes and file identifier that recognise it, the function that
opens it behind a Runner, the reader of the edgetl metadata it carries, and its accelerator checks
(edgetl.runtime.compat). open_model, read_metadata, compatibility, evaluate and the CLI ask this table and
never test a kind's name: a new runtime is its Runner module and its record here. An unknown kind is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, UsageError, did_you_mean, first_line
from edgetl.rundir import LABELS_FILE
from edgetl.rundir import MANIFEST as MANIFEST_FILE
from edgetl.runtime import compat
from edgetl.runtime.litert import LiteRTRunner, with_standard_metadata
from edgetl.runtime.metadata import (
    TFLITE_IDENTIFIER,
    read_onnx_metadata,
    read_run_metadata,
    read_saved_model_metadata,
    read_tflite_metadata,
)
from edgetl.runtime.onnxrt import OnnxRunner, OrtRunner, read_ort_metadata
from edgetl.runtime.openvino import MODEL_FILE as OPENVINO_FILE
from edgetl.runtime.openvino import OpenVinoRunner, read_openvino_metadata
from edgetl.runtime.qnn import QnnRunner
from edgetl.runtime.qnn import claims as qnn_claims
from edgetl.runtime.runner import OpenRequest, Runner
from edgetl.runtime.tf_runners import SavedModelRunner, keras_file_metadata, open_keras_file, open_run

log = logging.getLogger("edgetl")

ORT_IDENTIFIER = b"ORTM"  # the ORT format's flatbuffer file identifier

MetadataReader = Callable[[Path], "dict[str, Any] | None"]
Probe = Callable[[Path], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Kind:
    """One kind of model: how it is recognised, opened, read and checked."""

    name: str  # Runner.kind of what it opens ("run" opens as "keras"), and the key of inspect's details
    describe: str  # how error messages name it: "a .tflite file"
    read_metadata: MetadataReader  # the edgetl metadata it carries, None when it has none; ModelError if unreadable
    suffixes: tuple[str, ...] = ()  # a file with one of these suffixes (lower case) is this kind
    identifier: bytes | None = None  # ...or whose bytes 4..8 are this flatbuffer file identifier
    folder_files: tuple[str, ...] = ()  # a folder holding one of these files is this kind
    folder_missing: str = ""  # for a folder of no kind: "an edgetl run (no manifest.json)"
    # A file this kind claims whatever its suffix says, asked before any suffix is matched (a QNN EPContext file
    # is an .onnx that only the QNN provider runs). Reads the file's first bytes at most; never raises.
    claims: Callable[[Path, bytes], bool] | None = None
    # The kind whose files this one refines: such a file is this kind when its edgetl metadata gives this kind's
    # name as its "format" (edgetl's QDQ file for the Hexagon NPU is an .onnx that says format "qnn").
    refines: str | None = None
    runner: Callable[[Path, int | None], Runner] | None = None  # a file's Runner (threads); metadata settled after
    # The whole opening, for kinds whose metadata does not come from the file itself (a run, a .keras file).
    open: Callable[[Path, OpenRequest], Runner] | None = None
    metadata_from_runner: bool = False  # read the metadata through the opened Runner (runner.session_metadata)
    # Labels and normalisation from elsewhere when the file's own metadata has none (TFLite's standard metadata).
    fallback_metadata: Callable[[Any, Path, dict[str, Any] | None], dict[str, Any] | None] | None = None
    compat: tuple[tuple[str, Probe], ...] = ()  # accelerator checks: (name, probe -> JSON-ready dict or None)
    graph: str = ""  # the graph its files hold, as `inspect` reads it (a QNN EPContext file: "onnx"); "": its name
    needs_tensorflow: bool = False  # its Runner imports TensorFlow
    fixed_threads: bool = False  # its runtime's threads are fixed once TensorFlow has run an op
    side_by_side: bool = False  # several Runners of one file can run side by side (the runtime releases the GIL)
    # Another runtime for another kind's files, asked for by name (--runtime tflm), never found from the path:
    # the kind whose files it runs ("tflite" for TensorFlow Lite Micro).
    runs_kind: str | None = None

    def matches_file(self, suffix: str, head: bytes) -> bool:
        """Whether a file with this (lower-case) suffix and these first bytes is of this kind."""
        return suffix in self.suffixes or (self.identifier is not None and head[4:8] == self.identifier)


def _ort_mobile(path: Path) -> dict[str, Any] | None:
    """An .ort file is checked through the .onnx beside it when there is one (the ORT format is not ONNX)."""
    twin = path.with_suffix(".onnx")
    return compat.onnx_mobile_usability(twin) if twin.is_file() else None


def _open_tflm(path: Path, req: OpenRequest) -> Runner:
    from edgetl.runtime.tflm import open_tflm

    return open_tflm(path, class_names=req.class_names, image_size=req.image_size)

def _qnn_htp(path: Path) -> dict[str, Any]:
    """What the QNN HTP backend takes of an ONNX file (edgetl.runtime.qnn.htp_support; the provider loads on use)."""
    from edgetl.runtime.qnn import htp_compatibility

    return htp_compatibility(path)


# Looked up on each call (lambda): tests point a probe at another file.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("run", "a run directory", read_run_metadata, folder_files=(MANIFEST_FILE,),
         folder_missing=f"an edgetl run (no {MANIFEST_FILE})", open=open_run, needs_tensorflow=True,
         fixed_threads=True),
    Kind("keras", "a .keras file", keras_file_metadata, suffixes=(".keras",), open=open_keras_file,
         needs_tensorflow=True, fixed_threads=True),
    Kind("saved_model", "a SavedModel folder", read_saved_model_metadata,
         folder_files=("saved_model.pb", "saved_model.pbtxt"), folder_missing="a SavedModel (no saved_model.pb)",
         runner=SavedModelRunner, needs_tensorflow=True, fixed_threads=True),
    Kind("tflite", "a .tflite file", read_tflite_metadata, suffixes=(".tflite",), identifier=TFLITE_IDENTIFIER,
         runner=LiteRTRunner, fallback_metadata=with_standard_metadata, side_by_side=True,
         compat=(("gpu", lambda p: compat.gpu_compatibility(p)), ("npu", lambda p: compat.npu_compatibility(p)),
                 ("mcu", lambda p: compat.mcu_compatibility(p)))),
    Kind("onnx", "a .onnx file", read_onnx_metadata, suffixes=(".onnx",), runner=OnnxRunner,
         compat=(("onnx_mobile", lambda p: compat.onnx_mobile_usability(p)), ("qnn_htp", _qnn_htp))),
    Kind("ort", "a .ort file", read_ort_metadata, suffixes=(".ort",), identifier=ORT_IDENTIFIER, runner=OrtRunner,
         metadata_from_runner=True, compat=(("onnx_mobile", _ort_mobile),)),
    Kind("tflm", "a .tflite file in TensorFlow Lite Micro", read_tflite_metadata, open=_open_tflm, graph="tflite",
         runs_kind="tflite"),
    # Claimed by its QNN EPContext node before the .onnx suffix is matched, or an .onnx whose metadata says "qnn".
    Kind("qnn", "a QNN .onnx file (EPContext or QDQ for the Hexagon NPU)", read_onnx_metadata, claims=qnn_claims,
         refines="onnx",
         runner=QnnRunner, graph="onnx", compat=(("qnn_htp", _qnn_htp),)),
    Kind("openvino", "an OpenVINO IR (.xml + .bin, or the folder holding them)", read_openvino_metadata,
         suffixes=(".xml",), folder_files=(OPENVINO_FILE,), folder_missing=f"an OpenVINO IR (no {OPENVINO_FILE})",
         runner=OpenVinoRunner),
)}

# Suffixes that are no kind but a common mistake: what to do instead.
HINTS = {
    ".h5": "is a legacy HDF5 Keras file; edgetl reads the .keras format. Re-save it with model.save('model.keras').",
    ".hdf5": "is a legacy HDF5 Keras file; edgetl reads the .keras format. Re-save it with model.save('model.keras').",
    ".pb": "is a single .pb file; pass the SavedModel folder that holds it.",
}


def allowed() -> str:
    """Every kind, as error messages name them: "a run directory, ... or a .ort file"."""
    names = [k.describe for k in KINDS.values() if k.runs_kind is None]
    return ", ".join(names[:-1]) + " or " + names[-1]


def get_kind(name: str) -> Kind:
    """The Kind named `name`.

    Raises:
        ModelError: no kind has that name (the message names the known ones).
    """
    kind = KINDS.get(name)
    if kind is None:
        raise ModelError(f"unknown model kind '{name}'. Known kinds: {', '.join(KINDS)}.")
    return kind


def runtimes() -> dict[str, str]:
    """The runtimes --runtime names: {kind name: the kind whose files it runs}."""
    return {k.name: k.runs_kind for k in KINDS.values() if k.runs_kind is not None}


def runtime_kind(path: str | os.PathLike[str], runtime: str | None) -> str | None:
    """The kind to open `path` as when --runtime `runtime` is asked for (None: the kind its path says).

    Raises:
        UsageError: no runtime has that name, or it does not run this kind of file.
    """
    if runtime is None:
        return None
    known = runtimes()
    if runtime not in known:
        raise UsageError(f"unknown --runtime '{runtime}'.{did_you_mean(runtime, known)} Allowed: "
                         f"{', '.join(f'{k} (for {get_kind(v).describe})' for k, v in known.items())}.")
    kind = detect_kind(path)
    if kind != known[runtime]:
        raise UsageError(f"--runtime {runtime} opens {get_kind(known[runtime]).describe} only; '{path}' is "
                         f"{get_kind(kind).describe}. Drop --runtime for it.")
    return runtime


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Which kind of model `path` is (a name in KINDS: "run", "keras", "saved_model", "tflite", "onnx", "ort").

    Raises:
        ModelError: the path does not exist or is none of those.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model '{p}' does not exist. Pass {allowed()}.")
    if p.is_dir():
        for kind in KINDS.values():
            if any((p / f).is_file() for f in kind.folder_files):
                return kind.name
        missing = [k.folder_missing for k in KINDS.values() if k.folder_missing]
        raise ModelError(f"folder '{p}' is neither {' nor '.join(missing)}. Pass {allowed()}.")
    suffix = p.suffix.lower()
    head = _head(p, 8)
    if not head:
        # Every runtime says something cryptic about an empty buffer; a crashed copy or download is the usual cause.
        raise ModelError(f"model file '{p}' is empty (0 bytes). Copy or export it again.")
    for kind in KINDS.values():
        if kind.claims is not None and kind.claims(p, head):
            return kind.name
    for kind in KINDS.values():
        if kind.matches_file(suffix, head):
            return _refined(p, kind)
    if suffix in HINTS:
        raise ModelError(f"'{p}' {HINTS[suffix]}")
    raise ModelError(f"'{p}' is not a model edgetl can open (suffix '{suffix or 'none'}'). Pass {allowed()}.")


def _refined(p: Path, kind: Kind) -> str:
    """The kind refining `kind` that the file's own metadata names as its format, else `kind`'s name."""
    refining = {k.name for k in KINDS.values() if k.refines == kind.name}
    if not refining:
        return kind.name
    try:
        meta = kind.read_metadata(p)
    except ModelError:  # damaged or unreadable: the base kind's opening reports it
        return kind.name
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if fmt in refining else kind.name


def load_embedded_metadata(path: Path, kind: str) -> dict[str, Any] | None:
    """The edgetl metadata embedded in a model of `kind`, None when it has none.

    A damaged metadata block must not make a runnable model unusable: it is logged as a warning and
    None is returned, so the caller falls back to the model's shapes and labels.txt.
    """
    reader = get_kind(kind).read_metadata
    try:
        meta = reader(path)
    except Exception as exc:
        log.warning("cannot read the edgetl metadata of '%s' (%s); reading shapes and %s instead",
                    path, first_line(exc), LABELS_FILE)
        return None
    return meta if isinstance(meta, dict) else None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata of any model edgetl opens, read as its kind says (None when it carries none).

    Raises:
        ModelError: the path is not a model, or its metadata cannot be read.
    """
    p = Path(path)
    return get_kind(detect_kind(p)).read_metadata(p)


def compatibility(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The accelerator checks of one model (edgetl.runtime.compat), by name: {"gpu", "npu"} for a .tflite file,
    {"onnx_mobile"} for .onnx and .ort; {} for a kind without checks."""
    p = Path(path)
    out = {}
    for name, probe in get_kind(kind).compat:
        result = probe(p)
        if result is not None:
            out[name] = result
    return out


def _head(p: Path, n: int) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}. Check the path and its permissions.") from None
