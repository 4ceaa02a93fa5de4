"""What a model file holds: inputs and outputs, op counts, parameters, metadata, size.

TFLite files are read twice: through the LiteRT interpreter (tensor details, quantization) and
as a flatbuffer through LiteRT's schema (op counts and parameters as stored, before any delegate
rewrites the graph). ONNX files through the onnx graph; Keras and SavedModel through TensorFlow.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import ModelError

if TYPE_CHECKING:
    import keras
    import onnx

    from edgetl.runtime import KerasRunner, LiteRTRunner, OnnxRunner, SavedModelRunner
    from edgetl.runtime.openvino import OpenVinoRunner


def inspect_model(path: str | Path, *, safe_mode: bool = True, class_names: list[str] | None = None,
                  image_size: int | None = None, compat: bool = False) -> dict[str, Any]:
    """Describe a model.

    Args:
        path: anything edgetl.runtime.open_model accepts.
        safe_mode: load .keras files in Keras' safe mode.
        class_names: names for a file that carries none.
        image_size: input size for a file whose shape does not fix it.
        compat: add "compatibility", the accelerator checks (edgetl.runtime.compat): for TFLite "gpu" (GPU
            delegate) and "npu" (integer-only delegates), for ONNX "onnx_mobile" (NNAPI and CoreML partitions).

    Returns:
        A JSON-ready dict: path, kind, size_bytes, image_size, class_names, quantization,
        input_dtype, inputs, outputs (name, shape, dtype, scale, zero_point), ops {name: count},
        op_total, parameters (None when unknown), metadata, embedded_metadata.

    Raises:
        ModelError: not a model, or a damaged one.
    """
    from edgetl.runtime import get_kind, open_model

    runner = open_model(path, safe_mode=safe_mode, class_names=class_names, image_size=image_size)
    try:
        info: dict[str, Any] = {
            "path": str(runner.path), "kind": runner.kind, "size_bytes": runner.size_bytes,
            "image_size": runner.image_size, "classes": len(runner.class_names), "class_names": runner.class_names,
            "quantization": runner.quantization, "input_dtype": runner.input_dtype, "layout": runner.layout,
            "batch_fixed": runner.batch_fixed, "embedded_metadata": runner.embedded_metadata,
            "inputs": [], "outputs": [], "ops": {}, "op_total": 0, "parameters": None,
            "metadata": runner.metadata,
        }
        kind = get_kind(runner.kind)
        details = DETAILS.get(kind.graph or kind.name)
        if details is None:
            raise ModelError(f"inspect cannot read the graph of a {runner.kind} model ('{runner.path}'); it reads "
                             f"{', '.join(DETAILS)} graphs.")
        info.update(details(runner))
        info["op_total"] = int(sum(info["ops"].values()))
        info["ops"] = dict(sorted(info["ops"].items(), key=lambda kv: (-kv[1], kv[0])))
        if compat:
            from edgetl.runtime.kinds import compatibility

            try:
                info["compatibility"] = compatibility(runner.path, runner.kind)
            except ModelError as exc:  # a file that runs but that a checker cannot read: say so, inspect the rest
                info["compatibility"] = {"error": str(exc)}
        return info
    finally:
        runner.close()


def _tensor(name: str, shape: Sequence[int | str | None], dtype: str, scale: float | None = None,
            zero_point: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype, "scale": scale, "zero_point": zero_point, **extra}


# ----------------------------------------------------------------------------------------------
# TFLite


def _tflite(runner: LiteRTRunner) -> dict[str, Any]:
    it = runner.interpreter

    def describe(d: dict[str, Any]) -> dict[str, Any]:
        qp = d.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []))
        zps = np.asarray(qp.get("zero_points", []))
        scale = float(scales[0]) if scales.size == 1 else None
        zp = int(zps[0]) if zps.size == 1 else None
        if scales.size > 1:  # per-channel: say so rather than pick one
            scale, zp = None, None
        return _tensor(d["name"], [int(x) for x in d.get("shape_signature", d["shape"])],
                       np.dtype(d["dtype"]).name, scale, zp, per_channel=bool(scales.size > 1))

    out = {"inputs": [describe(d) for d in it.get_input_details()],
           "outputs": [describe(d) for d in it.get_output_details()]}
    out.update(_tflite_flatbuffer(Path(runner.path)))
    return out


def _tflite_flatbuffer(path: Path) -> dict[str, Any]:
    """Op counts, parameter count and tensor types from the flatbuffer, as the converter wrote it."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
    except Exception as exc:  # flatbuffers raises index/struct errors on garbage
        raise ModelError(f"'{path}' is not a readable TFLite flatbuffer ({type(exc).__name__}).") from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; the deprecated byte field is capped at 127.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode('utf-8', 'replace') if custom else '?'}")
        else:
            codes.append(names.get(code, f"OP_{code}"))
    ops: collections.Counter[str] = collections.Counter()
    params = 0
    weight_types: collections.Counter[str] = collections.Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            ops[codes[sg.Operators(j).OpcodeIndex()]] += 1
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            b = tensor.Buffer()
            if 0 < b < model.BuffersLength() and model.Buffers(b).DataLength() > 0:
                n = int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
                params += n
                weight_types[type_names.get(tensor.Type(), str(tensor.Type()))] += n
    return {"ops": dict(ops), "parameters": params, "subgraphs": model.SubgraphsLength(),
            "weight_dtypes": dict(weight_types),
            "description": (model.Description() or b"").decode("utf-8", "replace")}


# ----------------------------------------------------------------------------------------------
# ONNX


_ONNX_ELEM = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 16: "bfloat16"}


def _onnx(runner: OnnxRunner) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(runner.path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"'{runner.path}' is not a readable ONNX model ({type(exc).__name__}).") from None
    g = model.graph
    inits = {i.name for i in g.initializer}

    def shape_of(vi: onnx.ValueInfoProto) -> list[int | str | None]:
        dims = vi.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]

    def describe(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        return _tensor(vi.name, shape_of(vi), _ONNX_ELEM.get(vi.type.tensor_type.elem_type, "other"))

    ops: collections.Counter[str] = collections.Counter(n.op_type for n in g.node)
    params = 0
    weight_types: collections.Counter[str] = collections.Counter()
    for t in g.initializer:
        n = int(np.prod(list(t.dims))) if len(t.dims) else 1
        params += n
        weight_types[_ONNX_ELEM.get(t.data_type, "other")] += n
    return {
        "inputs": [describe(v) for v in g.input if v.name not in inits],
        "outputs": [describe(v) for v in g.output],
        "ops": dict(ops), "parameters": params, "weight_dtypes": dict(weight_types),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "quantized": any(op in ops for op in ("QuantizeLinear", "QLinearConv", "MatMulInteger", "ConvInteger")),
    }


def _ort(runner: OnnxRunner) -> dict[str, Any]:
    """An .ort file: tensors from the ONNX Runtime session (the onnx package cannot read the ORT format)."""
    session = runner.session

    def describe(arg: Any) -> dict[str, Any]:
        kind = str(arg.type).removeprefix("tensor(").removesuffix(")")
        return _tensor(arg.name, list(arg.shape), {"float": "float32"}.get(kind, kind))

    meta = session.get_modelmeta()
    return {"inputs": [describe(a) for a in session.get_inputs()],
            "outputs": [describe(a) for a in session.get_outputs()],
            "ops": {}, "producer": f"{meta.producer_name} (ORT format)".strip()}


_OV_ELEM = {"f32": "float32", "f16": "float16", "i8": "int8", "u8": "uint8", "i32": "int32", "i64": "int64"}


def _openvino(runner: OpenVinoRunner) -> dict[str, Any]:
    """An OpenVINO IR: tensors and op types from the openvino.Model; its weights are the float and 8-bit Constants."""
    model = runner.model

    def describe(port: Any) -> dict[str, Any]:
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        return _tensor(port.get_any_name(), shape, _OV_ELEM.get(port.get_element_type().get_type_name(), "other"))

    ops: collections.Counter[str] = collections.Counter()
    weight_types: collections.Counter[str] = collections.Counter()
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            dtype = _OV_ELEM.get(op.get_output_element_type(0).get_type_name())
            if dtype in ("float32", "float16", "int8", "uint8"):
                weight_types[dtype] += int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
        elif kind not in ("Parameter", "Result"):
            ops[kind] += 1
    return {"inputs": [describe(p) for p in model.inputs], "outputs": [describe(p) for p in model.outputs],
            "ops": dict(ops), "parameters": int(sum(weight_types.values())), "weight_dtypes": dict(weight_types),
            "quantized": "FakeQuantize" in ops, "producer": f"OpenVINO IR ({runner.xml.name})"}


# ----------------------------------------------------------------------------------------------
# TensorFlow


def _keras(runner: KerasRunner) -> dict[str, Any]:
    model = runner.model
    ops: collections.Counter[str] = collections.Counter()

    def walk(layer: keras.layers.Layer) -> None:
        inner = getattr(layer, "layers", None)
        if inner:
            for sub in inner:
                walk(sub)
        else:
            ops[type(layer).__name__] += 1

    for layer in model.layers:
        walk(layer)
    return {
        "inputs": [_tensor(t.name, list(t.shape), str(t.dtype)) for t in model.inputs],
        "outputs": [_tensor(t.name, list(t.shape), str(t.dtype)) for t in model.outputs],
        "ops": dict(ops), "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
    }


def _saved_model(runner: SavedModelRunner) -> dict[str, Any]:
    fn = runner.fn
    _, kwargs = fn.structured_input_signature
    outs = fn.structured_outputs
    outs = outs if isinstance(outs, dict) else {"output_0": outs}
    ops: collections.Counter[str] = collections.Counter()
    graph_def = fn.graph.as_graph_def()
    for node in graph_def.node:
        ops[node.op] += 1
    for f in graph_def.library.function:
        for node in f.node_def:
            ops[node.op] += 1
    # Plumbing ops of a serving signature say nothing about the network.
    for plumbing in ("Placeholder", "Identity", "NoOp", "StatefulPartitionedCall", "PartitionedCall",
                     "ReadVariableOp", "Const"):
        ops.pop(plumbing, None)
    variables = getattr(runner.loaded, "variables", None) or []
    params = int(sum(int(np.prod(v.shape)) for v in variables)) if variables else None
    return {
        "inputs": [_tensor(k, list(v.shape), v.dtype.name) for k, v in kwargs.items()],
        "outputs": [_tensor(k, list(v.shape), v.dtype.name) for k, v in outs.items()],
        "ops": dict(ops), "parameters": params,
        "signatures": list(getattr(runner.loaded, "signatures", {}).keys()),
    }


# What inspect reads of each graph (edgetl.runtime.kinds: Kind.graph, or the kind's name).
DETAILS = {"tflite": _tflite, "onnx": _onnx, "ort": _ort, "openvino": _openvino, "keras": _keras,
           "saved_model": _saved_model}
