"""Benchmark edgetl optimize: float, PTQ int8, QAT int8 and pruned TFLite files of one trained run.

Usage:
    .venv/bin/python tools/bench_optimize.py RUN_DIR [--epochs 3] [--sparsity 0.5] [--out bench-opt]

Writes RUN-qat and RUN-pruned beside --out and prints one table (accuracy, drop, size, gzip size,
latency) as JSON; copy it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="bench-opt")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from edgetl.optimize import optimize_run

    out = Path(args.out)
    qat = optimize_run(args.run_dir, method="qat", epochs=args.epochs, output=out / "qat", force=True,
                       batch_size=args.batch_size, compare=True, threads=args.threads)
    pruned = optimize_run(args.run_dir, method="prune", epochs=args.epochs, sparsity=args.sparsity,
                          output=out / "pruned", force=True, batch_size=args.batch_size, compare=True,
                          threads=args.threads)
    names = {r["name"] for r in qat.table}
    table = qat.table + [r for r in pruned.table if r["name"] not in names]
    doc = {"run": args.run_dir, "epochs": args.epochs, "sparsity_target": args.sparsity,
           "sparsity_reached": pruned.sparsity, "seconds": {"qat": qat.seconds, "prune": pruned.seconds},
           "table": table}
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
