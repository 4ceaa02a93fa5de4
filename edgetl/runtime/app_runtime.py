"""The app runtime: MediaPipe Tasks, the library Android, iOS and web apps classify images with.

Three things live here, all behind `import mediapipe` inside functions (importing edgetl never imports it):

- `metadata_tools()`: MediaPipe's TFLite Model Metadata modules (the writers and the displayer).
- `read_standard_labels(path)`: the class names a .tflite carries in its standard metadata (the
  TENSOR_AXIS_LABELS file packed with it), as MediaPipe Model Maker and TFLite Model Maker write them.
- `classify(path, images)`: MediaPipe's own `ImageClassifier` on an array batch -> top-1 label names and scores.

mediapipe is a dependency of edgetl (pyproject.toml); `available()` still says whether it imports, so a
broken environment degrades to edgetl's own metadata with a warning naming INSTALL_HINT.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ModelError, UsageError, first_line

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("edgetl")

STANDARD_METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry the standard metadata lives in
INSTALL_HINT = 'pip install "mediapipe>=1.2.3,<1.3"'

# MediaPipe's wheels since 0.10.30 ship the metadata writers without the small C++ extension they import
# for one value, the minimum metadata parser version. This is that computation, from the schema's own
# record of which members each version added (mediapipe/tasks/cc/metadata/metadata_version.cc).
_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def available() -> bool:
    """Whether mediapipe (Tasks and the metadata writers) can be imported."""
    try:
        metadata_tools()
    except UsageError:
        return False
    return True


def _min_parser_version(buf: bytes) -> str:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(buf, 0))
    found = [(1, 0, 0)]
    file_type = fb.AssociatedFileType
    scann = getattr(file_type, "SCANN_INDEX_FILE", None)

    def files(items: list[Any] | None) -> None:
        for f in items or []:
            if f.type == file_type.VOCABULARY:
                found.append((1, 0, 1))
            if scann is not None and f.type == scann:
                found.append((1, 4, 0))
            if f.version is not None:
                found.append((1, 4, 1))

    units = fb.ProcessUnitOptions
    for sg in md.subgraphMetadata or []:
        for t in (sg.inputTensorMetadata or []) + (sg.outputTensorMetadata or []):
            files(t.associatedFiles)
            for pu in t.processUnits or []:
                if pu.optionsType in (units.BertTokenizerOptions, units.SentencePieceTokenizerOptions):
                    found.append((1, 1, 0))
                if pu.optionsType == units.RegexTokenizerOptions:
                    found.append((1, 2, 1))
            if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        files(sg.associatedFiles)
        if sg.inputProcessUnits is not None or sg.outputProcessUnits is not None:
            found.append((1, 1, 0))
        if sg.inputTensorGroups is not None or sg.outputTensorGroups is not None:
            found.append((1, 2, 0))
        if sg.customMetadata is not None:
            found.append((1, 5, 0))
    files(md.associatedFiles)
    return ".".join(str(n) for n in max(found))


def _provide_version_module() -> None:
    try:
        __import__(_VERSION_MODULE)
        return
    except ImportError:
        pass
    parent = None
    for name in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python"):
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__path__ = []  # a namespace only: nothing else is looked up under it
            sys.modules[name] = module
            if parent is not None:
                setattr(parent, name.rsplit(".", 1)[1], module)
        parent = module
    version = types.ModuleType(_VERSION_MODULE)
    version.GetMinimumMetadataParserVersion = _min_parser_version  # type: ignore[attr-defined]
    sys.modules[_VERSION_MODULE] = version
    parent.__dict__["_pywrap_metadata_version"] = version  # type: ignore[union-attr]


@dataclass(frozen=True)
class MetadataTools:
    """MediaPipe's metadata modules: metadata (populator, displayer), writer, image_classifier, schema."""

    metadata: types.ModuleType
    writer: types.ModuleType
    image_classifier: types.ModuleType
    schema: types.ModuleType


@functools.lru_cache(maxsize=1)
def metadata_tools() -> MetadataTools:
    """MediaPipe's TFLite Model Metadata writers and displayer.

    Raises:
        UsageError: mediapipe is not installed.
    """
    try:
        import mediapipe  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"MediaPipe is not installed ({first_line(exc)}); install it with: {INSTALL_HINT}.") from None
    _provide_version_module()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer

    return MetadataTools(metadata=metadata, writer=metadata_writer, image_classifier=image_classifier, schema=schema)


# ----------------------------------------------------------------------------------------------
# Reading the standard metadata


def _has_standard_metadata(data: bytes) -> bool:
    from edgetl.runtime.metadata import flatbuffer_text, tflite_model

    root = tflite_model(data, "the model")
    return any(flatbuffer_text(root.Metadata(i).Name()) == STANDARD_METADATA_NAME for i in range(root.MetadataLength()))


def standard_metadata_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The standard TFLite Model Metadata of a .tflite as MediaPipe's displayer renders it, None when it has none.

    Raises:
        UsageError: mediapipe is not installed.
        ModelError: the file cannot be read, or its standard metadata is damaged.
    """
    p = Path(path)
    data = _read(p)
    if not _has_standard_metadata(data):
        return None
    tools = metadata_tools()
    try:
        displayer = tools.metadata.MetadataDisplayer.with_model_buffer(data)
        return json.loads(displayer.get_metadata_json())
    except Exception as exc:
        raise ModelError(f"the standard TFLite metadata of '{p}' is unreadable ({first_line(exc)}).") from None


def read_standard_labels(path: str | os.PathLike[str]) -> list[str] | None:
    """Class names from a .tflite's standard metadata (the output's TENSOR_AXIS_LABELS file), None if it has none.

    The associated files are a zip appended to the flatbuffer. The label file is labels.txt, or the one
    .txt file packed; only when that is ambiguous (locales, a score calibration file) is the metadata
    itself read through MediaPipe, which imports TensorFlow and so is kept off the common path.

    Raises:
        ModelError: the file cannot be read, or its packed label file is damaged.
    """
    p = Path(path)
    data = _read(p)
    if not _has_standard_metadata(data):
        return None
    try:
        with zipfile.ZipFile(_BytesFile(data)) as zf:
            names = zf.namelist()
            texts = [n for n in names if n.lower().endswith(".txt")]
            name = "labels.txt" if "labels.txt" in names else (texts[0] if len(texts) == 1 else None)
            if name is None and texts:
                try:
                    meta = standard_metadata_json(p)
                except UsageError:
                    meta = None
                name = _label_file_name(meta) if meta else None
            if name is None or name not in names:
                return None
            text = zf.read(name).decode("utf-8")
    except zipfile.BadZipFile:
        return None  # standard metadata without packed files: no labels
    except (UnicodeDecodeError, KeyError) as exc:
        raise ModelError(f"the label file packed in '{p}' is unreadable ({type(exc).__name__}).") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    return labels or None


def read_standard_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What edgetl's readers take from a foreign .tflite's standard metadata, None when it has none.

    Returns:
        {"class_names": [...] or None, "normalization": {"mean": [...], "std": [...]} or None, "name": str or
         None, "source": "standard"}. The normalization needs mediapipe to be read; without it, it is None
        and a warning says so (the input is then fed as 0..255 pixels, edgetl's own contract).

    Raises:
        ModelError: the file cannot be read, or its standard metadata is damaged.
    """
    p = Path(path)
    if not _has_standard_metadata(_read(p)):
        return None
    labels = read_standard_labels(p)
    norm = None
    name = None
    try:
        meta = standard_metadata_json(p)
    except UsageError:
        log.warning("'%s' has standard TFLite metadata but mediapipe is not installed to read its input "
                    "normalization; feeding 0..255 pixels. Install it with: %s", p, INSTALL_HINT)
        meta = None
    if meta:
        name = meta.get("name")
        for sg in meta.get("subgraph_metadata") or []:
            for t in (sg.get("input_tensor_metadata") or [])[:1]:
                for unit in t.get("process_units") or []:
                    if unit.get("options_type") == "NormalizationOptions":
                        opts = unit.get("options") or {}
                        norm = {"mean": [float(v) for v in opts.get("mean") or [0.0]],
                                "std": [float(v) for v in opts.get("std") or [1.0]]}
    return {"class_names": labels, "normalization": norm, "name": name, "source": "standard"}


def _label_file_name(meta: dict[str, Any]) -> str | None:
    for sg in meta.get("subgraph_metadata") or []:
        for t in sg.get("output_tensor_metadata") or []:
            for f in t.get("associated_files") or []:
                if f.get("type") in ("TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS") and f.get("name"):
                    return str(f["name"])
    return None


class _BytesFile:
    """A seekable read-only file over bytes (zipfile wants one; io.BytesIO would copy the model)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        out = bytes(self._view[self._pos:end])
        self._pos = end
        return out


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}.") from None


# ----------------------------------------------------------------------------------------------
# Classifying with MediaPipe Tasks


@dataclass(frozen=True)
class AppResult:
    """MediaPipe ImageClassifier's top-1 answer for each image: label name ('' when the file has no labels), score."""

    names: list[str]
    scores: list[float]
    indices: list[int]


def classify(path: str | os.PathLike[str], images: np.ndarray) -> AppResult:
    """Run MediaPipe Tasks' ImageClassifier on a batch of RGB uint8 images (N, H, W, 3) already at the input size.

    Raises:
        UsageError: mediapipe is not installed.
        ModelError: MediaPipe refuses the file (its message, on one line) or fails on an image.
    """
    import numpy as np

    metadata_tools()  # the same install check and message
    import mediapipe as mp
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.vision import image_classifier

    p = Path(path)
    batch = np.asarray(images)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise UsageError(f"classify takes RGB images (N, H, W, 3), got shape {tuple(batch.shape)}.")
    if batch.dtype != np.uint8:
        batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
    options = image_classifier.ImageClassifierOptions(
        base_options=base_options.BaseOptions(model_asset_path=str(p)), max_results=1)
    try:
        classifier = image_classifier.ImageClassifier.create_from_options(options)
    except Exception as exc:
        raise ModelError(f"MediaPipe's ImageClassifier refuses '{p.name}': {first_line(exc)}") from None
    names: list[str] = []
    scores: list[float] = []
    indices: list[int] = []
    with classifier:
        for img in batch:
            try:
                result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            except Exception as exc:
                raise ModelError(f"MediaPipe's ImageClassifier failed on '{p.name}': {first_line(exc)}") from None
            cats = result.classifications[0].categories if result.classifications else []
            if not cats:
                names.append("")
                scores.append(0.0)
                indices.append(-1)
                continue
            names.append(cats[0].category_name or "")
            scores.append(float(cats[0].score))
            indices.append(int(cats[0].index))
    return AppResult(names=names, scores=scores, indices=indices)
