"""Property-based tests: the parsers of user files fail only with edgetl's own one-line errors.

YAML recipes, the data section of a run manifest, and the metadata readers of exported files are
fed junk; anything but a clean result or an EdgetlError is a bug that would reach users as a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgetl.core.errors import EdgetlError, UsageError
from edgetl.train.config import TrainConfig, load_recipe, merge

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_keys = st.one_of(st.sampled_from([f.replace("_", "-") for f in TrainConfig.__dataclass_fields__]
                                  + list(TrainConfig.__dataclass_fields__)), st.text(max_size=12))


def _recipe_from_text(data: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "recipe.yaml"
        p.write_bytes(data)
        return load_recipe(p)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8"))))
def test_any_bytes_as_a_recipe_raise_only_usage_errors(data: bytes) -> None:
    try:
        recipe = _recipe_from_text(data)
        merge(TrainConfig, recipe, {}).validate()
    except UsageError as exc:
        assert "\n" not in str(exc).strip()


@SETTINGS
@given(st.dictionaries(_keys, _values, max_size=5))
@example({"\n": None})  # found by hypothesis: a key holding a line break made a two-line message
def test_any_yaml_mapping_raises_only_usage_errors(mapping: dict[str, Any]) -> None:
    text = yaml.safe_dump(mapping, allow_unicode=True)
    try:
        recipe = _recipe_from_text(text.encode("utf-8"))
        cfg = merge(TrainConfig, recipe, {})
        cfg.validate()
    except UsageError as exc:
        assert "\n" not in str(exc).strip()


_valid = st.fixed_dictionaries({}, optional={
    "epochs": st.integers(1, 1000),  # 0 trains nothing: refused (tests/test_reliability.py)
    "batch_size": st.integers(1, 4096),
    "lr": st.floats(1e-6, 1.0),
    "dropout": st.floats(0.0, 0.9),
    "val_split": st.floats(0.0, 0.4),
    "test_split": st.floats(0.0, 0.4),
    "augment": st.booleans(),
    "seed": st.integers(0, 2**32 - 1),
    "backbone": st.sampled_from(["mobilenet_v2", "resnet50", "efficientnet_b0"]),
    "feature_cache": st.sampled_from(["auto", "off"]),
    "fine_tune_layers": st.one_of(st.none(), st.just("all"), st.integers(1, 100)),
    "image_size": st.one_of(st.none(), st.integers(32, 512)),
})


@SETTINGS
@given(_valid, st.booleans())
def test_valid_recipes_round_trip(values: dict[str, Any], dashes: bool) -> None:
    raw = {(k.replace("_", "-") if dashes else k): v for k, v in values.items()}
    cfg = merge(TrainConfig, _recipe_from_text(yaml.safe_dump(raw).encode()), {})
    cfg.validate()
    for key, value in values.items():
        got = getattr(cfg, key)
        if key == "fine_tune_layers" and value is not None:
            assert got == str(value)
        elif isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value


# ----------------------------------------------------------------------------------------------
# DataSplits.from_manifest


_junk = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from(["root", "class_names", "train", "val", "test", "skipped",
                                                        "layout", "x"]), inner, max_size=6), max_leaves=12)


@SETTINGS
@given(st.one_of(_junk, st.dictionaries(st.sampled_from(["root", "class_names", "train", "val", "test", "skipped"]),
                                        _junk, max_size=6)))
def test_data_splits_from_junk_raise_only_data_errors(d: Any) -> None:
    from edgetl.core.errors import DataError
    from edgetl.data import DataSplits

    try:
        splits = DataSplits.from_manifest(d)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert all(0 <= it.label < len(splits.class_names) for it in splits.train + splits.val + splits.test)


def test_data_splits_round_trip() -> None:
    from edgetl.data import DataSplits, Item

    s = DataSplits(root="/data", class_names=["a", "b"], train=[Item("a/1.jpg", 0)], val=[Item("b/2.jpg", 1)],
                   test=[], skipped=[("a/x.jpg", "empty file (0 bytes)")])
    back = DataSplits.from_manifest(s.to_manifest())
    assert back.class_names == s.class_names and back.train == s.train and back.val == s.val
    assert back.skipped == s.skipped


# ----------------------------------------------------------------------------------------------
# metadata readers of exported files


def _read(reader: str, data: bytes, suffix: str) -> Any:
    from edgetl.runtime import metadata as md

    with tempfile.TemporaryDirectory() as d:
        if reader == "read_saved_model_metadata":
            folder = Path(d) / "sm"
            (folder / md.SAVED_MODEL_DIR).mkdir(parents=True)
            (folder / "saved_model.pb").write_bytes(b"")
            (folder / md.SAVED_MODEL_DIR / md.SAVED_MODEL_FILE).write_bytes(data)
            return getattr(md, reader)(folder)
        p = Path(d) / f"model{suffix}"
        p.write_bytes(data)
        return getattr(md, reader)(p)


@pytest.fixture(scope="module")
def real_tflite() -> bytes:
    """A small valid .tflite flatbuffer with edgetl metadata, to truncate and corrupt."""
    from edgetl.cli.kit import load_tensorflow

    load_tensorflow()
    import tensorflow as tf

    from edgetl.export import metadata as md

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def fn(x: Any) -> Any:
        return tf.nn.softmax(x)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    flat = conv.convert()
    return md.write_tflite_metadata(flat, {"class_names": ["a", "b", "c", "d"], "image_size": [4, 4]})


@pytest.mark.parametrize(("reader", "suffix"), [("read_tflite_metadata", ".tflite"),
                                                ("read_onnx_metadata", ".onnx"),
                                                ("read_saved_model_metadata", "")])
@SETTINGS
@given(data=st.binary(max_size=300))
def test_metadata_readers_on_random_bytes(reader: str, suffix: str, data: bytes) -> None:
    try:
        meta = _read(reader, data, suffix)
    except EdgetlError as exc:
        assert "\n" not in str(exc)
        return
    assert meta is None or isinstance(meta, dict)


def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]], near: int) -> bytes:
    """`data` cut short by `cut` bytes and with bytes overwritten: half the positions anywhere, half within 64
    bytes of `near` (the metadata), so that damage reaches the tables and buffers past the header."""
    out = bytearray(data[: len(data) - cut % len(data)])
    for i, (pos, val) in enumerate(flips):
        if out:
            out[(pos if i % 2 else near + pos % 128 - 64) % len(out)] = val
    return bytes(out)


def _only_model_errors(reader: str, data: bytes, suffix: str) -> None:
    """The raw reader gives a dict, None, or one ModelError line; any other exception fails the test."""
    from edgetl.core.errors import ModelError

    try:
        meta = _read(reader, data, suffix)
    except ModelError as exc:
        assert type(exc) is ModelError and "\n" not in str(exc) and str(exc)
        return
    assert meta is None or isinstance(meta, dict)


FLIPS = st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=6)


@SETTINGS
@given(cut=st.integers(0, 10_000), flips=FLIPS)
@example(cut=0, flips=[(0, 0)] * 6)  # the metadata's own bytes zeroed
def test_raw_tflite_metadata_reader_on_truncated_and_corrupted_files(real_tflite: bytes, cut: int,
                                                                     flips: list[tuple[int, int]]) -> None:
    """read_tflite_metadata itself (not load_embedded_metadata, which turns every exception into None)."""
    near = real_tflite.index(b'"class_names"')
    _only_model_errors("read_tflite_metadata", _damaged(real_tflite, cut, flips, near), ".tflite")


@pytest.fixture(scope="module")
def real_onnx() -> bytes:
    """A small valid .onnx file with edgetl metadata properties, to truncate and corrupt."""
    from onnx import TensorProto, helper

    from edgetl.export.metadata import write_onnx_metadata

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph)
    write_onnx_metadata(model, {"class_names": ["a", "b", "c", "d"], "image_size": [4, 4]})
    return model.SerializeToString()


def test_raw_onnx_metadata_reader_reads_what_was_written(real_onnx: bytes) -> None:
    meta = _read("read_onnx_metadata", real_onnx, ".onnx")
    assert meta is not None and meta["class_names"] == ["a", "b", "c", "d"]


@SETTINGS
@given(cut=st.integers(0, 10_000), flips=FLIPS)
# Found by hypothesis in CI: a byte of the JSON set to 0x80 (not UTF-8), which protobuf hands back as bytes.
@example(cut=0, flips=[(63, 128)])
def test_raw_onnx_metadata_reader_on_truncated_and_corrupted_files(real_onnx: bytes, cut: int,
                                                                   flips: list[tuple[int, int]]) -> None:
    near = real_onnx.index(b'"class_names"')
    _only_model_errors("read_onnx_metadata", _damaged(real_onnx, cut, flips, near), ".onnx")


@SETTINGS
@given(value=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                       st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
                       .map(lambda v: __import__("json").dumps(v))))
def test_raw_onnx_metadata_reader_on_any_property_value(value: str) -> None:
    """The edgetl property holding any text: a dict, or one ModelError."""
    import onnx
    from onnx import TensorProto, helper

    from edgetl.runtime.metadata import ONNX_KEY

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph)
    onnx.helper.set_model_props(model, {ONNX_KEY: value})
    _only_model_errors("read_onnx_metadata", model.SerializeToString(), ".onnx")


def test_tflite_metadata_reader_reads_what_was_written(real_tflite: bytes) -> None:
    meta = _read("read_tflite_metadata", real_tflite, ".tflite")
    assert meta is not None and meta["class_names"] == ["a", "b", "c", "d"]
