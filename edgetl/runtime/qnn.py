"""Qualcomm's Hexagon NPU: ONNX Runtime with the QNN execution provider on its HTP backend, CPU fallback disabled.

`onnxruntime-qnn` (Qualcomm's plugin execution provider for ONNX Runtime) ships the QNN HTP backend; on an
x86-64 machine that backend emulates the NPU, so a file that starts here with CPU fallback disabled runs
wholly on the NPU on a phone. Two kinds of file run here: a QDQ .onnx in the HTP's types (compiled by the
provider when the session starts) and an EPContext .onnx holding a QNN context binary compiled ahead of
time for one SoC (edgetl.export.formats.qnn writes both).

Which nodes the HTP takes is the provider's own decision: `htp_support` reads its validation log (one
entry per node unit: passed, or failed with a reason) and the session's node assignment; nothing here
keeps a list of ops.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.core.errors import EdgetlError, ModelError, UsageError, first_line
from edgetl.core.native import capture_native_stderr, quiet_native_stderr, quiet_native_stdout
from edgetl.runtime.onnxrt import OnnxRunner

log = logging.getLogger("edgetl")

PACKAGE = "onnxruntime-qnn"
PIP_COMMAND = "pip install 'onnxruntime-qnn>=2.7,<2.8'"
EP_NAME = "QNNExecutionProvider"
KIND = "qnn"  # this runner's kind, and the "format" edgetl's metadata gives the files it runs


@dataclass(frozen=True)
class Soc:
    """A Snapdragon the QNN provider compiles for: its chip name, product name, soc_model id and HTP arch."""

    name: str
    product: str
    soc_model: int
    htp_arch: int


# The chip names onnxruntime-qnn 2.7 maps to a soc_model id (it records the id in the EPContext file's
# ep_compatibility_info; tests/test_qnn.py checks every row against it). An unknown name it maps to 0 silently,
# hence the table. htp_arch is the Hexagon generation (v68..v81) of each chip.
SOCS: dict[str, Soc] = {s.name: s for s in (
    Soc("SM8350", "Snapdragon 888", 30, 68),
    Soc("SM8450", "Snapdragon 8 Gen 1", 36, 69),
    Soc("SM8475", "Snapdragon 8+ Gen 1", 42, 69),
    Soc("SM8550", "Snapdragon 8 Gen 2", 43, 73),
    Soc("SM8650", "Snapdragon 8 Gen 3", 57, 75),
    Soc("SM8635", "Snapdragon 8s Gen 3", 68, 73),
    Soc("SM7675", "Snapdragon 7+ Gen 3", 70, 73),
    Soc("SM8750", "Snapdragon 8 Elite", 69, 79),
    Soc("SM8850", "Snapdragon 8 Elite Gen 5", 87, 81),
    Soc("SC8380XP", "Snapdragon X Elite", 60, 73),
)}
DEFAULT_SOC = "SM8750"  # Snapdragon 8 Elite: the flagship of 2025's Android phones


def get_soc(name: str | int | None) -> Soc:
    """The SoC named `name` (chip name, any case, or its soc_model id); None: DEFAULT_SOC.

    Raises:
        UsageError: a SoC the table does not know (the message lists the known ones).
    """
    if name is None:
        return SOCS[DEFAULT_SOC]
    text = str(name).strip().upper()
    if text in SOCS:
        return SOCS[text]
    for soc in SOCS.values():
        if text == str(soc.soc_model):
            return soc
    known = ", ".join(f"{s.name} ({s.product})" for s in SOCS.values())
    raise UsageError(f"unknown --soc '{name}'. Known: {known}. Pass one of those chip names (default {DEFAULT_SOC}).")


# ----------------------------------------------------------------------------------------------
# The provider


_state: dict[str, Any] = {}
_register_lock = threading.Lock()


def unavailable() -> str | None:
    """Why the QNN provider cannot be used here (one line with the pip command), or None when it can."""
    if "reason" not in _state:
        try:
            import onnxruntime_qnn  # noqa: F401
        except Exception as exc:  # ImportError, or an OSError from its libraries (glibc older than 2.35)
            _state["reason"] = (f"{PACKAGE} cannot be imported here ({type(exc).__name__}: {first_line(exc, 160)}); "
                                "it needs Linux x86-64 with glibc >= 2.35, or Windows. Install it with: "
                                f"{PIP_COMMAND}")
        else:
            _state["reason"] = None
    return _state["reason"]


def require(error: type[EdgetlError] = ModelError) -> None:
    """Raise `error` with unavailable()'s line when the QNN provider cannot be used."""
    reason = unavailable()
    if reason:
        raise error(reason)


def provider() -> tuple[Any, list[Any], str]:
    """(onnxruntime, the QNN provider's devices, the HTP backend library), the plugin registered once.

    Raises:
        ModelError: onnxruntime-qnn cannot be imported, or its library does not register.
    """
    require()
    import onnxruntime as ort
    import onnxruntime_qnn as oq

    with _register_lock:
        if "devices" not in _state:
            _tensorflow_first()
            try:
                with quiet_native_stderr():
                    ort.register_execution_provider_library(oq.get_ep_name(), oq.get_library_path())
            except Exception as exc:
                if "already" not in str(exc).lower():  # registered earlier in this process by other code
                    raise ModelError(f"the QNN execution provider does not register ({first_line(exc)}). "
                                     f"Reinstall it: {PIP_COMMAND}") from None
            devices = [d for d in ort.get_ep_devices() if d.ep_name == oq.get_ep_name()]
            if not devices:
                raise ModelError(f"the QNN execution provider offers no device here. Reinstall it: {PIP_COMMAND}")
            _state["devices"] = devices
    return ort, _state["devices"], oq.get_qnn_htp_path()


def _tensorflow_first() -> None:
    """Load TensorFlow before the QNN HTP backend, whatever the command does next.

    libQnnHtp.so exports its own RE2 (the regex library), loaded process-wide: TensorFlow loaded after it binds
    to that copy and crashes (SIGSEGV in its regex ops: Keras' SavedModel export, training checkpoints); loaded
    before it, both work (measured: export, training and the HTP emulator in one process). This costs a
    command that only runs a QNN file TensorFlow's start-up (about 7 CPU seconds), once.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    try:
        from edgetl.core.tf import load_tensorflow

        load_tensorflow()
        import tensorflow  # noqa: F401 - load_tensorflow skips the import under EDGETL_DEBUG
    except Exception as exc:  # noqa: BLE001 - no TensorFlow here: nothing to protect
        log.debug("TensorFlow not loaded before the QNN backend: %s", exc)


def session_options(*, soc: Soc | None = None, fallback: bool = False, log_level: int = 3,
                    threads: int | None = None) -> Any:
    """SessionOptions with the QNN provider on the HTP backend (for `soc` when given); CPU fallback off unless asked."""
    ort, devices, htp = provider()
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if fallback else "1")
    options = {"backend_path": htp}
    if soc is not None:
        options.update(soc_model=str(soc.soc_model), htp_arch=str(soc.htp_arch))
    opts.add_provider_for_devices(devices, options)
    return opts


# ----------------------------------------------------------------------------------------------
# What the HTP takes


# The provider's log: "Validation PASSED|FAILED for N nodes in OrtNodeUnit (Op) :", then one line per node
# ("Operator type: X Node name: Y Node index: Z") and, for a failure, "REASON : ...".
_UNIT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes? in OrtNodeUnit \((?P<op>[^)]*)\)")
_NODE = re.compile(r"Operator type: (?P<op>\S+) Node name: (?P<node>.*?) Node index: \d+")
_REASON = re.compile(r"REASON\s*:\s*(?P<reason>.*)")


def parse_validation(lines: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The node units the provider's validation log passed and failed: ([{op, node}], [{op, node, reason}]).

    Each unit is named by its own node (a QDQ unit's Conv, not the DequantizeLinear nodes around it).
    """
    passed: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    unit: dict[str, Any] | None = None

    def close() -> None:
        if unit is None:
            return
        nodes = unit["nodes"]
        main = next((n for n in nodes if n["op"] == unit["op"]), nodes[0] if nodes else {"op": unit["op"], "node": ""})
        if unit["ok"]:
            passed.append({"op": main["op"], "node": main["node"]})
        else:
            failed.append({"op": main["op"], "node": main["node"], "reason": unit["reason"] or "no reason logged"})

    for line in lines:
        m = _UNIT.search(line)
        if m:
            close()
            unit = {"ok": m.group(1) == "PASSED", "op": m.group("op"), "nodes": [], "reason": ""}
            continue
        if unit is None:
            continue
        n = _NODE.search(line)
        if n:
            unit["nodes"].append({"op": n.group("op"), "node": n.group("node").strip()})
            continue
        r = _REASON.search(line)
        if r and not unit["reason"]:
            unit["reason"] = r.group("reason").strip()
            continue
        if line.strip() and "]" in line[:80]:  # the next log record ends the unit
            close()
            unit = None
    close()
    return passed, failed


def htp_support(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Which node units of an ONNX file the QNN HTP backend takes and which it rejects, and why.

    From the provider itself: a session with CPU fallback allowed, its validation log captured (each node
    unit passed, or failed with the provider's reason), and the session's node assignment (a node validation
    passed but the partitioner still left on the CPU is rejected too).

    Returns:
        {"supported": [{op, node}], "rejected": [{op, node, reason}], "offloaded": [{op, node, reason}],
        "compatible": bool, "error": str | None}. "offloaded": the graph input's QuantizeLinear and output's
        DequantizeLinear, which the provider leaves to the CPU by design (they do not stop a session with CPU
        fallback disabled). "error": the HTP backend failed to compile the graph it took (then not compatible).

    Raises:
        ModelError: the provider is not installed, or the file is not a model ONNX Runtime can load.
    """
    p = Path(path)
    opts = session_options(fallback=True, log_level=0)
    opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    ort, _, _ = provider()
    session, error = None, None
    try:
        with capture_native_stderr() as lines, quiet_native_stdout():
            session = ort.InferenceSession(str(p), sess_options=opts)
    except Exception as exc:
        if "EP_FAIL" not in str(exc):  # not the provider's failure: the file does not load at all
            raise ModelError(f"'{p}' does not load in ONNX Runtime: {first_line(exc)}. Pass a valid .onnx file.") \
                from None
        error = first_line(exc)
    passed, failed = parse_validation(lines)
    offloaded = [f for f in _unique(failed) if f["reason"].startswith(_IO_OFFLOAD)]
    rejected = [f for f in _unique(failed) if not f["reason"].startswith(_IO_OFFLOAD)]
    logged = {r["node"] for r in rejected} | {o["node"] for o in offloaded}
    passed = _unique(passed)
    for subgraph in session.get_provider_graph_assignment_info() if session is not None else ():
        for node in subgraph.get_nodes():
            if subgraph.ep_name == EP_NAME:  # an EPContext node, or a unit the log did not name (Q/DQ: in a unit)
                if node.name not in {s["node"] for s in passed} and node.op_type not in _QDQ:
                    passed.append({"op": node.op_type, "node": node.name})
            elif node.name not in logged:
                rejected.append({"op": node.op_type, "node": node.name,
                                 "reason": "left on the CPU by the provider's partitioning"})
    rejected_nodes = {r["node"] for r in rejected}
    supported = [s for s in passed if s["node"] not in rejected_nodes]
    return {"supported": supported, "rejected": rejected, "offloaded": offloaded,
            "compatible": not rejected and error is None, "error": error}


# The provider's reason for the graph input's Quantize and output's Dequantize (offload_graph_io_quantization).
_IO_OFFLOAD = "QNN EP is configured to not take"
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _unique(units: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each node once (the provider validates the graph more than once and logs each pass)."""
    seen: dict[str, dict[str, str]] = {}
    for unit in units:
        seen.setdefault(unit["node"], unit)
    return list(seen.values())


def fallback_summary(rejected: list[dict[str, str]], limit: int = 4) -> str:
    """'Conv x52, Clip x35 (Cannot get shape); Mod x1 (...)': the rejected ops grouped by reason, for one line."""
    groups: dict[str, dict[str, int]] = {}
    for r in rejected:
        ops = groups.setdefault(r["reason"], {})
        ops[r["op"]] = ops.get(r["op"], 0) + 1
    parts = []
    for reason, ops in list(groups.items())[:limit]:
        names = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(ops.items(), key=lambda kv: -kv[1]))
        parts.append(f"{names} ({reason.rstrip('.')[:120]})")
    more = f"; and {len(groups) - limit} more reasons" if len(groups) > limit else ""
    return "; ".join(parts) + more


# ----------------------------------------------------------------------------------------------
# The runner


def has_qnn_context(path: str | os.PathLike[str]) -> bool:
    """Whether an .onnx file holds an EPContext node the QNN provider wrote (a compiled QNN context)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not readable as ONNX: the ONNX kind reports it
        return False
    return _context_node(model)


def _context_node(model: Any) -> bool:
    for node in model.graph.node:
        if node.op_type == "EPContext":
            for attr in node.attribute:
                if attr.name == "source" and attr.s.decode("utf-8", "replace") == EP_NAME:
                    return True
    return False


def claims(path: Path, head: bytes) -> bool:
    """The runtime kinds' test: an .onnx file holding an EPContext node the QNN provider wrote, found without
    parsing most files (the bytes are searched first; only a file holding both names is parsed). edgetl's portable
    QDQ file, whose metadata says format "qnn", is found by the kinds table (Kind.refines). Never raises.
    """
    if path.suffix.lower() != ".onnx":
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not (b"EPContext" in data and EP_NAME.encode() in data):
        return False
    return has_qnn_context(path)


def htp_compatibility(path: Path) -> dict[str, Any]:
    """`inspect --compat`'s "qnn_htp": htp_support, or why it was not checked (the provider is not installed)."""
    reason = unavailable()
    if reason:
        return {"compatible": None, "not_checked": reason}
    return htp_support(path)


class QnnRunner(OnnxRunner):
    """An .onnx file on the QNN provider's HTP backend (the emulated NPU on x86), with CPU fallback disabled.

    Close one runner before opening another of the same graph: the emulated HTP keys compiled graphs by name,
    and of two live sessions of one graph (a QDQ file and its EPContext file too) the first fails to run.
    """

    kind = KIND

    def __init__(self, path: Path, threads: int | None, soc: Soc | None = None) -> None:
        # A QDQ file is compiled when the session starts, for `soc`'s HTP generation (None: the provider's default);
        # an EPContext file was compiled for its own SoC already.
        self.soc = soc
        super().__init__(path, threads)

    def _session(self, ort: Any, opts: Any) -> Any:
        qnn = session_options(soc=self.soc, log_level=3, threads=self.threads)
        try:
            with quiet_native_stderr(), quiet_native_stdout():
                session = ort.InferenceSession(str(self.path), sess_options=qnn)
            session.disable_fallback()  # a failed run raises its own error, not a retry on the CPU provider
            return session
        except Exception as exc:
            text = first_line(exc)
        if "fallback" not in text.lower():  # not a placement problem: a broken file, or a context for another SoC
            raise ModelError(f"'{self.path}' does not start on the QNN HTP backend: {text}.")
        try:
            rejected = htp_support(self.path)["rejected"]
        except ModelError:
            rejected = []
        what = fallback_summary(rejected) if rejected else "the provider named none"
        raise ModelError(f"'{self.path}' does not run wholly on the Hexagon NPU (QNN HTP, CPU fallback disabled): "
                         f"{len(rejected)} nodes would fall back to the CPU: {what}. Export the model with "
                         "'edgetl export RUN --format qnn' (batch 1, QDQ in the HTP's types).")
