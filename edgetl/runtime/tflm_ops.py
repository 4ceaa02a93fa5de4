"""Which ops of a .tflite TensorFlow Lite Micro lacks, asked of TFLM's own op resolver (no hand-kept list).

tflite-micro exposes no list of the ops it registers, so each op is looked up the way the interpreter
looks up a file's ops: a two-node model (the op asked about, then a custom op no resolver has) is handed to
TFLM's interpreter. TFLM resolves the nodes in order and stops at the first it has no kernel for, naming it
("Failed to get registration from op code X"): if it names the sentinel, the op was found. No kernel is
prepared or run on these probe models (the lookup fails first), so any op can be asked about safely.

Then the file itself is allocated in TFLM: an op that is registered can still refuse the file's tensor types
in its Prepare (TFLM's reference kernels are mostly int8 and float32), and that reason is reported too.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError
from edgetl.core.native import capture_native_stderr

SENTINEL = "edgetl_no_such_op"  # a custom op name no resolver registers
_NOT_FOUND = re.compile(r"Failed to get registration from op code (\S+)")
_CUSTOM_NOT_FOUND = re.compile(r"Didn't find op for custom opcode '([^']*)'")


def _schema() -> Any:
    """TFLM's own copy of the TFLite flatbuffer schema (the op names and codes its resolver knows)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def _probe_model(builtin: int, custom: str | None) -> bytes:
    """A model of two float nodes: the op asked about, then the sentinel custom op."""
    import flatbuffers

    s = _schema()
    codes = []
    for code, name in ((builtin, custom), (s.BuiltinOperator.CUSTOM, SENTINEL)):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        oc.customCode = name
        codes.append(oc)
    tensors = []
    for name in ("a", "b"):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], s.TensorType.FLOAT32, 0, name
        tensors.append(t)
    ops = []
    for i, (inputs, outputs) in enumerate((([0], [1]), ([1], [1]))):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = i, inputs, outputs
        if i == 0 and builtin == s.BuiltinOperator.VAR_HANDLE:  # the interpreter's Python side reads its name
            op.builtinOptionsType = s.BuiltinOptions.VarHandleOptions
            op.builtinOptions = s.VarHandleOptionsT()
            op.builtinOptions.sharedName = "v"
        ops.append(op)
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [1], ops
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [sg], [s.BufferT()]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@functools.lru_cache(maxsize=512)
def registered(builtin: int, custom: str | None = None) -> bool:
    """Whether TFLM's op resolver (the Python interpreter's, which registers every kernel TFLM has) has the op.

    Raises:
        ModelError: TFLM answered neither way (a tflite-micro build that words its errors differently).
    """
    from edgetl.runtime.tflm import load_runtime

    runtime = load_runtime()
    # The lookup's failure is the answer, read from what TFLM wrote.
    with capture_native_stderr() as lines, contextlib.suppress(RuntimeError, ValueError):
        runtime.Interpreter.from_bytes(_probe_model(builtin, custom), arena_size=64 * 1024)
    for line in lines:
        m = _CUSTOM_NOT_FOUND.search(line)
        if m:
            return m.group(1) == SENTINEL
        m = _NOT_FOUND.search(line)
        if m and m.group(1) != "CUSTOM":
            return False
    text = " ".join(lines)
    if SENTINEL in text or "CUSTOM" in text:
        return True
    raise ModelError(f"TensorFlow Lite Micro's op lookup gave no answer for op {custom or builtin} "
                     f"({' '.join(lines)[:200] or 'no message'}). Check the tflite-micro build.")


def missing_builtin_ops() -> list[str]:
    """Every builtin op of TFLM's schema its resolver has no kernel for (about 0.8 s, then cached)."""
    s = _schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and k != "CUSTOM"}
    return sorted(names[c] for c in names if not registered(c))


# MicroMutableOpResolver's methods are the op's name in CamelCase ("2D" kept upper, "ND" as "Nd"); these four
# are spelt otherwise in tensorflow/lite/micro/micro_mutable_op_resolver.h.
_RESOLVER_SPELLING = {"PADV2": "AddPadV2", "CUMSUM": "AddCumSum", "BATCH_MATMUL": "AddBatchMatMul",
                      "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM"}


def resolver_name(op: str) -> str:
    """The MicroMutableOpResolver method an app calls to register the builtin `op` (CONV_2D -> AddConv2D)."""
    if op in _RESOLVER_SPELLING:
        return _RESOLVER_SPELLING[op]
    return "Add" + "".join(part.upper() if re.fullmatch(r"\d+D", part) else part.capitalize()
                           for part in op.split("_"))


def mcu_compatibility(path: str | Path) -> dict[str, Any]:
    """Whether TensorFlow Lite Micro runs a .tflite: the ops its resolver lacks, and whether the file allocates.

    Returns:
        {"runtime": "tflite-micro <build>", "compatible": bool, "unsupported_ops": sorted op names TFLM has
         no kernel for, "unsupported_nodes": [{"subgraph", "index", "op", "reason"}...], "ops": {op: count},
         "resolver": ["AddConv2D", ...] (what an app registers on a MicroMutableOpResolver, in op order),
         "arena_bytes" (the smallest tensor arena, when it allocates) or "load_error" (TFLM's reason when it
         does not), "flash_bytes", "checked_with": ...}.

    Raises:
        ModelError: not a TFLite file, or tflite-micro is not installed.
    """
    from edgetl.runtime.metadata import flatbuffer_text, load_tflite, tflite_schema
    from edgetl.runtime.tflm import allocate_smallest, version

    p = Path(path)
    root = load_tflite(p)
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    resolver: list[str] = []
    for g in range(root.SubgraphsLength()):
        sg = root.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            code = root.OperatorCodes(sg.Operators(i).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            custom = flatbuffer_text(code.CustomCode()) if builtin == schema.BuiltinOperator.CUSTOM else None
            name = custom if custom is not None else names.get(builtin, str(builtin))
            counts[name] = counts.get(name, 0) + 1
            if not registered(builtin, custom):
                nodes.append({"subgraph": g, "index": i, "op": name,
                              "reason": "custom op TFLM does not register" if custom is not None
                              else "no TFLM kernel"})
            elif custom is None and resolver_name(name) not in resolver:
                resolver.append(resolver_name(name))
    unsupported = sorted({n["op"] for n in nodes})
    out: dict[str, Any] = {"runtime": f"tflite-micro {version()}", "unsupported_ops": unsupported,
                           "unsupported_nodes": nodes, "ops": dict(sorted(counts.items())), "resolver": resolver,
                           "flash_bytes": p.stat().st_size}
    if not unsupported:
        try:
            out["arena_bytes"] = allocate_smallest(p.read_bytes(), str(p))[0]
        except ModelError as exc:
            out["load_error"] = str(exc)
    out["compatible"] = not unsupported and "load_error" not in out
    out["checked_with"] = ("TFLM's op resolver (each op looked up by its interpreter) and an allocation of the "
                           "file in TFLM")
    return out
