"""The Hexagon NPU file (`-f qnn`) on real photos, against the TFLite and ONNX int8 files of the same run (issue #27).

Trains tools/bench_real.py's CI-suite run (flowers, MobileNetV2 0.35 at 96, real ImageNet weights, a seeded subset
of 160 photos per class), exports it to qnn (int8, and int16x8 unless --no-int16), tflite int8-full and onnx int8,
each verified on every test photo (verify_seconds None), and prints one Markdown table row per file: accuracy,
drop and top-1 agreement against Keras float, and for the qnn files the emulated NPU's agreement with ONNX Runtime's
CPU kernels on the same QDQ file, the emulator's sample and its CPU ms per image.

    .venv/bin/python tools/bench_qnn_real.py [--work DIR] [--no-int16] [--alpha 1.0 --size 224] [--json FILE]
    .venv/bin/python tools/bench_qnn_real.py --run RUN [--int16-sample N] [--json FILE]

With --alpha/--size the same photos and training budget with another MobileNetV2 (1.0 at 224: the issue's figure).
With --run an existing run is measured instead (e.g. the whole flowers folder, 430 test photos:
`edgetl train ../shared/realdata/flowers --backbone mobilenet_v2 --alpha 1.0 --image-size 224 --weights
<the 1.0 file> --seed 0 -o RUN`); its files are written in the run's exports/ as `edgetl export` writes them.
--int16-sample verifies the int16x8 file (about 1 s an image in the emulator at 224) on a class-balanced sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _bench_real() -> Any:
    """tools/bench_real.py, loaded by path (tools/ is no package): its suite, subset and train functions."""
    spec = importlib.util.spec_from_file_location("bench_real", Path(__file__).with_name("bench_real.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def measure(work: Path | None, int16: bool, alpha: float | None = None, size: int | None = None, *,
            run: Path | None = None, int16_sample: int | None = None) -> dict[str, Any]:
    """Train the CI-suite head run in `work` (its photos and budget; `alpha` and `size` in place of its backbone's when
    given), or take the finished `run`; export and verify the files; their figures.

    int16_sample: verify the qnn int16x8 file on this many class-balanced held-out photos (None: all of them).
    """
    from dataclasses import replace

    from edgetl.core.errors import ExportError
    from edgetl.export import export_run

    br = _bench_real()
    if run is None:
        assert work is not None
        suite = br.SUITES["ci"]
        suite = replace(suite, alpha=suite.alpha if alpha is None else alpha,
                        image_size=suite.image_size if size is None else size)
        run = work / "head"
        manifest = run / "manifest.json"
        if manifest.is_file():  # an earlier call's run in --work is reused (its photos left as they are)
            trained = json.loads(manifest.read_text())["metrics"]
        else:
            trained = br.train_run(br.make_subset(work, suite.per_class, suite.seed), run, suite)
        backbone = f"mobilenet_v2 {suite.alpha:g}@{suite.image_size}"
    else:
        manifest = json.loads((run / "manifest.json").read_text())
        trained = manifest["metrics"]
        card = manifest.get("backbone") or {}
        backbone = f"{card.get('name', '?')} {card.get('alpha', '')}@{(manifest.get('config') or {}).get('image_size')}"
    out: dict[str, Any] = {"train": trained, "machine": br.machine(), "files": {}, "backbone": backbone,
                           "run": str(run)}
    # The emulator's verification of the int16x8 file costs about 1 s an image at 224: a budget that holds its
    # sample near int16_sample images (the emulator check spends half of it; check_emulator).
    jobs = [(("qnn",), ("int8",), None), (("tflite",), ("int8-full",), None), (("onnx",), ("int8",), None)]
    if int16:
        jobs.insert(1, (("qnn",), ("int16x8",), None if int16_sample is None else 2.0 * int16_sample))
    for formats, modes, seconds in jobs:
        t0 = time.perf_counter()
        try:
            rep = export_run(run, formats=formats, quantize=modes, force=True, verify_seconds=seconds)
        except ExportError as exc:  # a file failed a check: its row (the reason, the figures) is still the result
            if exc.report is None:
                raise
            rep = exc.report
        out.setdefault("reference", rep.reference)
        for row in rep.rows:
            d = row.to_dict() if hasattr(row, "to_dict") else dict(row)
            out["files"][f"{d['format']}-{d['mode']}"] = {
                k: d.get(k) for k in ("accuracy", "drop", "agreement", "status", "latency_ms", "verify_sample", "qnn")}
        out.setdefault("export_seconds", {})["+".join(formats) + "-" + "+".join(modes)] = round(
            time.perf_counter() - t0, 1)
        print(f"{'+'.join(formats)} {'+'.join(modes)} done", file=sys.stderr, flush=True)
    return out


def table(fig: dict[str, Any]) -> str:
    """The files as a Markdown table."""
    lines = ["| file | accuracy | drop (points) | top-1 agreement with float | emulated NPU vs ORT CPU kernels "
             "(same QDQ file) | emulator sample | emulator CPU ms/image | latency ms | status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    ref = fig["reference"]
    lines.append(f"| Keras float ({ref.get('samples')} {ref.get('split')} photos) | {_pct(ref.get('accuracy'))} | - | "
                 f"- | - | - | - | {ref.get('latency_ms')} | - |")
    for name, f in fig["files"].items():
        q = f.get("qnn") or {}
        lines.append(f"| {name} | {_pct(f['accuracy'])} | {_pct(f['drop'])} | {_pct(f['agreement'])} | "
                     f"{_pct(q.get('cpu_agreement'))} | {q.get('emulator_samples', '-')} | "
                     f"{q.get('emulator_cpu_ms_per_image', '-')} | {f['latency_ms']} | {f['status']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="folder for the subset, the run and its files (default: a temp dir)")
    ap.add_argument("--no-int16", action="store_true", help="skip the qnn int16x8 file")
    ap.add_argument("--alpha", type=float, choices=(0.35, 1.0), help="MobileNetV2's width (default: the CI suite's "
                    "0.35; 1.0 with the real 1.0_224 weights)")
    ap.add_argument("--size", type=int, help="input size in pixels (default: the CI suite's 96)")
    ap.add_argument("--run", type=Path, help="measure this finished run instead of training the CI-suite one")
    ap.add_argument("--int16-sample", type=int, help="verify the qnn int16x8 file on about this many held-out photos "
                    "(default: all)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    reason = _bench_real().available()
    if reason:
        sys.exit(reason)
    if args.run is not None and not (args.run / "manifest.json").is_file():
        sys.exit(f"--run {args.run}: not a finished edgetl run (no manifest.json). Train it first.")
    with tempfile.TemporaryDirectory(prefix="edgetl-qnn-real-") as tmp:
        fig = measure(args.work or Path(tmp), not args.no_int16, args.alpha, args.size, run=args.run,
                      int16_sample=args.int16_sample)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1, default=str))
    print(json.dumps({k: v for k, v in fig.items() if k != "files"}, default=str))
    print(table(fig))


if __name__ == "__main__":
    main()
