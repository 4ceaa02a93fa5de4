"""`edgetl inspect`: a model's tensors, ops, parameters, metadata and size.

Module level: click, the kit and the shared options only (no TensorFlow; none at all for .tflite/.onnx).
"""

from __future__ import annotations

import json
from typing import Any

import click

from edgetl.cli.kit import (
    esc,
    fmt,
    handle_errors,
    mb,
    needs_tensorflow,
    out_console,
    print_json,
    print_table,
    read_labels_option,
)
from edgetl.cli.options import json_option, model_argument, model_options


@click.command("inspect")
@model_argument()
@click.option("--compat", is_flag=True, help="Also check, offline, what phone accelerators take of the file: the GPU "
              "delegate, integer-only NPUs and TensorFlow Lite Micro (its arena and op resolver) for TFLite, NNAPI "
              "and CoreML partitions for ONNX, and the node units Qualcomm's Hexagon NPU (QNN HTP) takes and "
              "rejects, by its own validation (always in --json).")
@json_option("Print everything as one JSON object (with a 'compatibility' object for .tflite, .onnx and .ort).")
@model_options
@handle_errors
def inspect_cmd(model: str, compat: bool, as_json: bool, labels: str | None, image_size: int | None,
                unsafe: bool) -> None:
    """Show MODEL's inputs and outputs (shapes, dtypes, quantization), op counts, parameters, metadata and size.

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite, .onnx or .ort file.
    """
    from edgetl.evaluate.inspect import inspect_model

    needs_tensorflow([model])
    info = inspect_model(model, safe_mode=not unsafe, class_names=read_labels_option(labels), image_size=image_size,
                         compat=compat or as_json)
    if as_json:
        print_json(info)
        return
    con = out_console()
    params = f"{info['parameters']:,} parameters" if info["parameters"] is not None else "parameters unknown"
    con.print(f"[bold]{esc(info['path'])}[/bold]: {info['kind']}, {mb(info['size_bytes'])}, {params}, "
              f"{info['image_size']} px, {info['classes']} classes, quantization {info['quantization']}"
              + ("" if info["embedded_metadata"] else " (no edgetl metadata: read from shapes/labels.txt)"),
              soft_wrap=True)
    rows = []
    for role in ("inputs", "outputs"):
        for t in info[role]:
            rows.append([role[:-1], t["name"], str(t["shape"]), t["dtype"], fmt(t.get("scale"), 6),
                         fmt(t.get("zero_point"))])
    print_table("Tensors", ["", "name", "shape", "dtype", "scale", "zero point"], rows, wide=True)
    ops = list(info["ops"].items())
    shown = ops[:25]
    rest = sum(c for _, c in ops[25:])
    print_table(f"Ops ({info['op_total']} in all, {len(ops)} kinds)", ["op", "count"],
                [[k, v] for k, v in shown] + ([["(others)", rest]] if rest else []), wide=True)
    if info.get("weight_dtypes"):
        con.print("weights by dtype: " + ", ".join(f"{k} {v:,}" for k, v in info["weight_dtypes"].items()),
                  soft_wrap=True)
    meta = info["metadata"]
    mrows = [[k, _short(v)] for k, v in meta.items()]
    print_table("Metadata", ["key", "value"], mrows, wide=True)
    if compat:
        _show_compat(info.get("compatibility") or {})


def _show_compat(compat: dict[str, Any]) -> None:
    con = out_console()
    if not compat:
        con.print("compatibility: no accelerator check for this kind of model (only .tflite, .onnx, .ort)")
        return
    if compat.get("error"):
        con.print(f"compatibility: not checked ({esc(compat['error'])})", soft_wrap=True)
        return
    for key, title in (("gpu", "GPU delegate"), ("npu", "integer-only NPU delegates (NNAPI, vendor NPUs)")):
        c = compat.get(key)
        if c is None:
            continue
        if c["compatible"]:
            con.print(f"{title}: every op runs on it ({sum(c['ops'].values())} ops)", soft_wrap=True)
            continue
        rows: dict[tuple[str, str], int] = {}
        for n in c["unsupported_nodes"]:
            rows[(n["op"], n["reason"])] = rows.get((n["op"], n["reason"]), 0) + 1
        print_table(f"{title}: {len(c['unsupported_nodes'])} op(s) fall back to the CPU", ["op", "count", "why"],
                    [[op, n, why] for (op, why), n in rows.items()], wide=True)
    mcu = compat.get("mcu")
    if mcu:
        _show_mcu(mcu)
    htp = compat.get("qnn_htp")
    if htp:
        _show_htp(htp)
    mobile = compat.get("onnx_mobile")
    if mobile:
        rows2 = []
        for name, p in mobile["providers"].items():
            a, f = p["as_is"], p["fixed_shapes"]
            rows2.append([name, f"{a['supported_nodes']}/{a['nodes']} in {a['partitions']}", a["verdict"],
                          f"{f['supported_nodes']}/{f['nodes']} in {f['partitions']}", f["verdict"],
                          ", ".join(f["unsupported_ops"]) or "-"])
        print_table("ONNX Runtime Mobile (nodes taken, in partitions)", ["provider", "as is", "ok?", "batch fixed",
                    "ok?", "ops it lacks"], rows2, wide=True)


def _show_mcu(c: dict[str, Any]) -> None:
    con = out_console()
    title = "TensorFlow Lite Micro (microcontrollers)"
    if c.get("error"):
        con.print(f"{title}: not checked ({esc(c['error'])})", soft_wrap=True)
        return
    if c["unsupported_ops"]:
        counts: dict[str, int] = {}
        for n in c["unsupported_nodes"]:
            counts[n["op"]] = counts.get(n["op"], 0) + 1
        print_table(f"{title}: {len(c['unsupported_nodes'])} op(s) it has no kernel for", ["op", "count"],
                    [[op, n] for op, n in counts.items()], wide=True)
        return
    if c.get("load_error"):
        con.print(f"{title}: every op is registered, but the file does not run: {esc(c['load_error'])}",
                  soft_wrap=True)
        return
    ram, flash = c["arena_bytes"] / 1024, c["flash_bytes"] / 1024
    con.print(f"{title}: runs in a {ram:.1f} KB tensor arena (RAM), {flash:.1f} KB of flash; op resolver: "
              f"{', '.join(name + '()' for name in c['resolver'])}", soft_wrap=True)


def _show_htp(htp: dict[str, Any]) -> None:
    """The QNN HTP backend's verdict (edgetl.runtime.qnn.htp_support) on an ONNX file."""
    con = out_console()
    title = "Qualcomm Hexagon NPU (QNN HTP, the provider's own validation)"
    if htp.get("not_checked"):
        con.print(f"{title}: not checked ({esc(htp['not_checked'])})", soft_wrap=True)
        return
    if htp["compatible"]:
        con.print(f"{title}: every node unit runs on it ({len(htp['supported'])} units)", soft_wrap=True)
        return
    if htp.get("error"):
        con.print(f"{title}: its compiler failed ({esc(htp['error'])})", soft_wrap=True)
    rows: dict[tuple[str, str], int] = {}
    for n in htp["rejected"]:
        rows[(n["op"], n["reason"])] = rows.get((n["op"], n["reason"]), 0) + 1
    if rows:
        print_table(f"{title}: {len(htp['rejected'])} node(s) fall back to the CPU, {len(htp['supported'])} run on it",
                    ["op", "count", "why"], [[op, n, why] for (op, why), n in rows.items()], wide=True)


def _short(v: object, limit: int = 100) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


COMMANDS = [inspect_cmd]
