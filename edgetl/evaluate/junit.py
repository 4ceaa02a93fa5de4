"""JUnit XML for CI systems: one testcase per gate check, or one error when the evaluation could not run."""

from __future__ import annotations

import os
import platform
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.core.fileio import write_text
from edgetl.core.metrics import format_figure
from edgetl.evaluate.gate import Check

_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def junit_xml(result: dict[str, Any], checks: Sequence[Check], suite: str = "edgetl evaluate") -> str:
    """JUnit XML: one testcase per check, failures carrying the figures (a passing case when there are none)."""
    model = result.get("model", {})
    name = Path(str(model.get("path", "model"))).name or "model"
    failures = sum(1 for c in checks if not c.passed)
    cases = list(checks) or [Check("evaluate", True, result.get("accuracy"), None,
                                   f"accuracy {format_figure(result.get('accuracy'))} (no gate asked for)")]
    ts = ET.Element("testsuites", name="edgetl", tests=str(len(cases)), failures=str(failures), errors="0",
                    time=f"{float(result.get('seconds') or 0):.3f}")
    s = ET.SubElement(ts, "testsuite", name=f"{suite}: {name}", tests=str(len(cases)), failures=str(failures),
                      errors="0", skipped="0", time=f"{float(result.get('seconds') or 0):.3f}",
                      timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      hostname=socket.gethostname() or platform.node())
    props = ET.SubElement(s, "properties")
    prop_values = {"model": model.get("path"), "kind": model.get("kind"), "quantization": model.get("quantization"),
                   "data": (result.get("data") or {}).get("root"), "images": result.get("samples"),
                   "accuracy": result.get("accuracy"), "top_k": result.get("top_k"), "k": result.get("k"),
                   "edgetl_version": __version__}
    if result.get("reference"):
        prop_values["reference"] = result["reference"]["model"]["path"]
        prop_values["reference_accuracy"] = result["reference"]["accuracy"]
        prop_values["agreement"] = result["reference"]["agreement"]
    for k, v in prop_values.items():
        ET.SubElement(props, "property", name=k, value="" if v is None else str(v))
    for c in cases:
        tc = ET.SubElement(s, "testcase", classname=f"edgetl.gate.{_xml_safe_name(name)}", name=c.name, time="0")
        if not c.passed:
            f = ET.SubElement(tc, "failure", message=c.message, type="AccuracyRegression")
            f.text = (f"{c.message}\nvalue: {format_figure(c.value)}\nthreshold: {format_figure(c.threshold)}\n"
                      f"model: {model.get('path')}\n")
        else:
            ET.SubElement(tc, "system-out").text = c.message
    ET.indent(ts)
    return _HEADER + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit(path: str | os.PathLike[str], result: dict[str, Any], checks: Sequence[Check]) -> None:
    """Write junit_xml(...) atomically."""
    write_text(path, junit_xml(result, checks))


def junit_error_xml(model: str | os.PathLike[str], message: str) -> str:
    """JUnit XML for an evaluation that could not run, so CI shows the reason beside the failed gate."""
    ts = ET.Element("testsuites", name="edgetl", tests="1", failures="0", errors="1")
    s = ET.SubElement(ts, "testsuite", name=f"edgetl evaluate: {os.path.basename(os.fspath(model).rstrip('/'))}",
                      tests="1", failures="0", errors="1", skipped="0")
    tc = ET.SubElement(s, "testcase", classname="edgetl.gate", name="evaluate", time="0")
    ET.SubElement(tc, "error", message=message, type="EvaluationError").text = message
    ET.indent(ts)
    return _HEADER + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit_error(path: str | os.PathLike[str], model: str | os.PathLike[str], message: str) -> None:
    """Write junit_error_xml(...) atomically."""
    write_text(path, junit_error_xml(model, message))


def _xml_safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)
