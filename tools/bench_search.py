"""`edgetl search` on real photos: the whole search's time, and whether its recommendation is right.

Uses ../shared/realdata: the flowers folder (5 classes, 4,317 JPEGs) and the two real MobileNetV2 weight files
(alpha 0.35 and 1.0, Keras' 224-pixel files, which the search uses at 96, 128 and 160 too: 8 candidates).

1. The search, cold, as a fresh process timed whole (TensorFlow's import included), no budget.
2. Two budgets from the latencies it measured (tight: between the 2nd and 3rd fastest candidates; middle:
   between the 5th and 6th), each a rerun in the same folder (the first round's results reused).
3. Every candidate trained fully once (`edgetl train`, default options, the same splits), then for each budget:
   the recommended candidate's full validation accuracy against the best full one within that budget.

    .venv/bin/python tools/bench_search.py                      # everything; prints a Markdown table
    .venv/bin/python tools/bench_search.py --keep-full          # reuse full runs already in --work
    .venv/bin/python tools/bench_search.py --json /tmp/bench-search.json
    .venv/bin/python tools/bench_search.py --no-full --whole-too            # also every candidate on the whole splits

The searches run with an empty conversion cache (a fresh EDGETL_CACHE_DIR: every base converted, as in a user's
first search) unless --engine-cache user. The per-candidate overhead is each round's wall time without the target
files' export and latency, over its candidates' base (features_base) and head seconds (issue #29: within 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
EDGETL = [sys.executable, "-m", "edgetl"]
CANDIDATES = [f"mobilenet_v2:{a}@{s}" for a in ("0.35", "1.0") for s in (96, 128, 160, 224)]
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
TOLERANCE_POINTS = 1.0


def timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def run_search(data: Path, weights: Path, out: Path, extra: list[str]) -> tuple[float, dict[str, Any], str]:
    args = [*EDGETL, "search", str(data), "--weights-dir", str(weights), "--candidates", ",".join(CANDIDATES),
            "--output", str(out), "--json", *extra]
    seconds, proc = timed(args)
    if proc.returncode not in (0, 1):
        sys.exit(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout), proc.stderr


def full_run(data: Path, weights: Path, work: Path, key: str, keep: bool) -> dict[str, Any]:
    """One candidate trained fully with `edgetl train`'s defaults: its val and test accuracy and the time."""
    backbone, rest = key.split(":")
    alpha, size = rest.split("@")
    out = work / "full" / key.replace(":", "_a").replace("@", "-")
    manifest = out / "manifest.json"
    seconds = None
    if not (keep and manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete"):
        seconds, proc = timed([*EDGETL, "train", str(data), "--backbone", backbone, "--alpha", alpha, "--image-size",
                               size, "--weights", str(weights / WEIGHTS.format(alpha=alpha)), "--output", str(out),
                               "--force"])
        if proc.returncode != 0:
            sys.exit(f"train {key} failed: {proc.stderr[-2000:]}")
    m = json.loads(manifest.read_text())
    return {"key": key, "val": m["metrics"]["val"], "test": m["metrics"]["test"], "seconds": seconds}


def overhead_table(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's per-candidate overhead, and the whole search's (round "all")."""
    rows = []
    for r in rounds:
        s = r["seconds"]
        rows.append({"round": r["round"], "candidates": len(r["candidates"]), "wall": r["wall_seconds"],
                     "net": r["wall_seconds"] - s.get("export", 0.0) - s.get("latency", 0.0),
                     "base": s.get("features_base", 0.0), "head": s.get("head", 0.0), "build": s.get("build", 0.0)})
    total = {k: sum(r[k] for r in rows) for k in ("wall", "net", "base", "head", "build")}
    rows.append({"round": "all", "candidates": len(rounds[0]["candidates"]) if rounds else 0, **total})
    for row in rows:
        row["ratio"] = row["net"] / max(row["base"] + row["head"], 1e-9)
    return rows


def key_of(row: dict[str, Any]) -> str:
    return f"{row['backbone']}:{row['alpha']}@{row['image_size']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REALDATA / "flowers")
    ap.add_argument("--weights-dir", type=Path, default=REALDATA / "weights")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgetl-bench-search"))
    ap.add_argument("--keep-full", action="store_true", help="reuse complete full runs in --work")
    ap.add_argument("--no-full", action="store_true", help="time the search only")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--engine-cache", choices=("fresh", "user"), default="fresh",
                    help="fresh: an empty conversion cache (default); user: the user's own (warm)")
    ap.add_argument("--whole-too", action="store_true",
                    help="also time a search that measures every candidate on the whole splits (one round)")
    opts = ap.parse_args()
    if not opts.data.is_dir() or not opts.weights_dir.is_dir():
        sys.exit(f"skipped: {opts.data} or {opts.weights_dir} is missing (see ../shared/realdata/README.md)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = opts.work / "search"
    if opts.engine_cache == "fresh":
        os.environ["EDGETL_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgetl-engines-")
    load = os.getloadavg()[0]
    seconds, doc, log = run_search(opts.data, opts.weights_dir, out, ["--force"])
    print(log, file=sys.stderr)
    overhead = overhead_table(doc["rounds"])
    latencies = sorted(r["latency_ms"] for r in doc["candidates"])
    budgets: dict[str, float | None] = {"tight": (latencies[1] + latencies[2]) / 2,
                                        "middle": (latencies[4] + latencies[5]) / 2, "none": None}
    searches: dict[str, dict[str, Any]] = {"none": {"seconds": seconds, "doc": doc}}
    for name in ("tight", "middle"):
        s, d, _ = run_search(opts.data, opts.weights_dir, out, ["--max-latency-ms", f"{budgets[name]:.3f}"])
        searches[name] = {"seconds": s, "doc": d}
    result: dict[str, Any] = {"search_seconds": round(seconds, 1), "load_at_start": load, "budgets": budgets,
                              "engine_cache": opts.engine_cache, "machine": doc["machine"], "rounds": doc["rounds"],
                              "overhead": overhead, "searches": {}}
    if opts.whole_too:
        if opts.engine_cache == "fresh":
            os.environ["EDGETL_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgetl-engines-")
        whole_s, whole_doc, _ = run_search(opts.data, opts.weights_dir, opts.work / "search-whole",
                                           ["--force", "--images-per-class", "100000"])
        result["whole_one_round"] = {"seconds": round(whole_s, 1), "overhead": overhead_table(whole_doc["rounds"]),
                                     "recommended": key_of(whole_doc["recommended"])}
    latency = {key_of(r): r["latency_ms"] for r in doc["candidates"]}
    full = {} if opts.no_full else {k: full_run(opts.data, opts.weights_dir, opts.work, k, opts.keep_full)
                                    for k in CANDIDATES}
    print(f"\nwhole search (8 candidates, cold process, {opts.engine_cache} conversion cache, no budget): "
          f"{seconds:.1f} s; load average at start {load:.1f}; machine {doc['machine']['cpu']}, "
          f"{doc['machine']['threads']} threads")
    print("\n| round | candidates | wall s | without export and latency | base | head | build | overhead |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in overhead:
        print(f"| {row['round']} | {row['candidates']} | {row['wall']:.1f} | {row['net']:.1f} | {row['base']:.1f} | "
              f"{row['head']:.1f} | {row['build']:.1f} | {row['ratio']:.2f}x |")
    if "whole_one_round" in result:
        w = result["whole_one_round"]
        print(f"\nevery candidate on the whole splits, one round: {w['seconds']:.1f} s, overhead "
              f"{w['overhead'][-1]['ratio']:.2f}x, recommended {w['recommended']}")
    print("\n| budget | recommended | search accuracy | full val (test) | best within budget, full val (test) | "
          "gap (points) | within 1 point | search time |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for name, s in searches.items():
        rec = s["doc"]["recommended"]
        row: dict[str, Any] = {"budget_ms": budgets[name], "recommended": key_of(rec) if rec else None,
                               "seconds": round(s["seconds"], 1)}
        if rec and full:
            inside = [k for k in CANDIDATES if budgets[name] is None or latency[k] <= budgets[name]]
            best = max(inside, key=lambda k: full[k]["val"])
            gap = 100 * (full[best]["val"] - full[key_of(rec)]["val"])
            row.update(best=best, best_val=full[best]["val"], rec_val=full[key_of(rec)]["val"], gap_points=gap,
                       ok=gap <= TOLERANCE_POINTS)
            print(f"| {name} ({'-' if budgets[name] is None else f'{budgets[name]:.2f} ms'}) | {row['recommended']} "
                  f"| {rec['accuracy']:.3f} | {full[key_of(rec)]['val']:.3f} ({full[key_of(rec)]['test']:.3f}) | "
                  f"{best} {full[best]['val']:.3f} ({full[best]['test']:.3f}) | {gap:.1f} | "
                  f"{'yes' if row['ok'] else 'no'} | {s['seconds']:.1f} s |")
        result["searches"][name] = row
    if full:
        print("\n| candidate | latency ms (search) | full val | full test | train s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for k in CANDIDATES:
            f = full[k]
            took = "-" if f["seconds"] is None else f"{f['seconds']:.1f}"
            print(f"| {k} | {latency[k]:.2f} | {f['val']:.3f} | {f['test']:.3f} | {took} |")
        result["full"] = full
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
