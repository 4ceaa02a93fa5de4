"""QAT across the backbone registry: which backbones `edgetl optimize --method qat` takes, end to end.

Usage:
    .venv/bin/python tools/qat_matrix.py [--backbones vgg16,xception] [--json qat_matrix.json]
    .venv/bin/python tools/qat_matrix.py --prune-block 4     # pruning in blocks instead of QAT

With --prune-block N the optimize stage is `--method prune --block N --epochs 1` instead, the
export is float32 (`-q none`), and the row also fails when the pruned run's weight sparsity is
under 0.45 or its 1x1 kernels are not zeroed in whole blocks.

For each backbone card: `edgetl demo-data` (once), `edgetl train --weights none` at the card's
minimum input size for one epoch (a real run directory with its manifest: build_twin needs one),
`edgetl optimize RUN --method qat --epochs 1 --batch-size 8 --no-compare`, then
`edgetl export QATRUN -q int8-full` and the .tflite opened and invoked once in LiteRT. Everything
goes through the CLI in subprocesses, so each backbone starts from a clean process (tfmot's
TF_USE_LEGACY_KERAS side effect and tf_keras graph state cannot leak between backbones) and the
recorded message is the one line a user would see.

Prints a Markdown table (backbone, size, status, seconds, message) and writes it as JSON with --json.
A backbone that takes longer than --timeout seconds in all (default 300) is stopped and recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _error_line(stderr: str) -> str:
    """The CLI's one-line error ("error: ..."), else the last non-empty line (a crash)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    return lines[-1] if lines else "(no output)"


def _run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """Run one CLI command; (ok, error line)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, "stopped: over the time limit"
    return p.returncode == 0, "" if p.returncode == 0 else _error_line(p.stderr)


def _open_tflite(folder: Path, want: str = "uint8") -> str:
    """Open the exported .tflite in LiteRT and invoke it once; '' when that works and its I/O is `want`."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    files = sorted(folder.glob("*.tflite"))
    if not files:
        return "edgetl export wrote no .tflite"
    interp = Interpreter(model_path=str(files[0]))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    interp.invoke()
    out = interp.get_output_details()[0]
    if inp["dtype"] != np.dtype(want) or out["dtype"] != np.dtype(want):
        return f"the file has {inp['dtype'].__name__}/{out['dtype'].__name__} input/output, not {want}"
    return ""


def _check_blocks(run: Path, block: int) -> str:
    """'' when the pruned run reached its sparsity with its 1x1 kernels zeroed in whole blocks."""
    import numpy as np

    from edgetl.optimize import mixed_block_runs
    from edgetl.rundir import load_run

    pruned = load_run(run)
    sparsity = pruned.manifest["optimize"]["sparsity"]
    if sparsity < 0.45:
        return f"weight sparsity {sparsity:.3f} (target 0.5)"
    # A weight can be exactly zero before pruning (random initialisation hits 0.0 about once in
    # 10 million draws: DenseNet121 has a few), so a kept block may hold one zero; count them.
    mixed = runs_total = 0
    for layer in pruned.load_model()._flatten_layers():
        if layer.__class__.__name__ != "Conv2D" or tuple(layer.kernel.shape[:2]) != (1, 1):
            continue
        k = np.asarray(layer.kernel)[0, 0]
        if k.shape[0] <= block or k.shape[1] == 1 or layer.strides != (1, 1):
            continue
        m, t = mixed_block_runs(k, block)
        mixed, runs_total = mixed + m, runs_total + t
    if runs_total and mixed > max(2, runs_total // 1000):
        return f"{mixed} of {runs_total} runs of {block} inputs are partly zero: not pruned in blocks"
    return ""


def check_backbone(name: str, size: int, data: Path, work: Path, timeout: float,
                   prune_block: int = 0) -> dict[str, Any]:
    """Train, QAT-optimize (or prune) and export one backbone at `size` px through the CLI; the row of the table."""
    edgetl = str(Path(sys.executable).parent / "edgetl")
    run, qat, exp = work / name, work / f"{name}-qat", work / f"{name}-export"
    row: dict[str, Any] = {"backbone": name, "image_size": size, "status": "ok", "stage": "", "message": ""}
    t0 = time.perf_counter()
    stages = [
        ("train", [edgetl, "train", str(data), "--backbone", name, "--weights", "none", "--image-size", str(size),
                   "--epochs", "1", "--batch-size", "8", "--output", str(run), "--force"]),
        ("optimize", [edgetl, "optimize", str(run), "--epochs", "1", "--batch-size", "8", "--no-compare",
                      "--output", str(qat), "--force",
                      *(["--method", "prune", "--block", str(prune_block)] if prune_block else ["--method", "qat"])]),
        ("export", [edgetl, "export", str(qat), "-q", "none" if prune_block else "int8-full", "-o", str(exp)]),
    ]
    for stage, cmd in stages:
        ok, msg = _run(cmd, max(1.0, timeout - (time.perf_counter() - t0)))
        row[f"{stage}_s"] = round(time.perf_counter() - t0, 1)
        if not ok:
            # A refusal in train is not a QAT result; say so rather than count it as one.
            if msg.startswith("stopped:"):
                status = f"stopped ({stage})"
            else:
                status = "refused" if stage == "optimize" else f"failed ({stage})"
            row.update(status=status, stage=stage, message=msg)
            break
    else:
        stage = "litert"
        try:
            msg = _open_tflite(exp, "float32" if prune_block else "uint8")
            if not msg and prune_block:
                stage, msg = "blocks", _check_blocks(qat, prune_block)
        except Exception as exc:  # any LiteRT failure is the result being measured, not a tool bug
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if msg:
            row.update(status=f"failed ({stage})", stage=stage, message=msg)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    for p in (run, qat, exp):
        shutil.rmtree(p, ignore_errors=True)
    return row


def table(rows: list[dict[str, Any]], what: str = "QAT int8-full") -> str:
    """The Markdown table for BENCHMARKS.md."""
    out = [f"| backbone | size | {what} | seconds | why not |", "|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        out.append(f"| {r['backbone']} | {r['image_size']} | {r['status']} | {r['seconds']:.0f} | {msg} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="", help="comma-separated card names (default: all)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--per-class", type=int, default=8, help="demo-data images per class (default 8)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per backbone before it is stopped")
    ap.add_argument("--prune-block", type=int, default=0, help="prune in blocks of N instead of QAT (0: QAT)")
    args = ap.parse_args(argv)
    from edgetl.model.backbones import cards as registry

    cards = registry()
    names = [n.strip() for n in args.backbones.split(",") if n.strip()] or list(cards)
    unknown = [n for n in names if n not in cards]
    if unknown:
        ap.error(f"unknown backbone(s) {', '.join(unknown)}; known: {', '.join(cards)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qat-matrix-") as tmp:
        work = Path(tmp)
        data = work / "data"
        subprocess.run([str(Path(sys.executable).parent / "edgetl"), "demo-data", str(data), "--per-class",
                        str(args.per_class)], check=True, capture_output=True)
        for name in names:
            row = check_backbone(name, cards[name].min_size, data, work, args.timeout, args.prune_block)
            print(f"{name}: {row['status']} in {row['seconds']:.0f} s {row['message']}", file=sys.stderr, flush=True)
            rows.append(row)
    print(table(rows, f"pruned in blocks of {args.prune_block}, float32" if args.prune_block else "QAT int8-full"))
    if args.json:
        Path(args.json).write_text(json.dumps({"qat_matrix": 1, "rows": rows}, indent=1) + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
