"""Benchmark: `edgetl train` on ever larger folders: wall time per image and peak memory (issue #29).

Generates folders of 128-px JPEGs (cached under --work, reused when complete; 100 classes, fewer below
2,000 images), then runs, as a fresh process per size,

    edgetl train DIR --backbone mobilenet_v2 --alpha 0.35 --weights none --image-size 96 --epochs 3

and reports the wall time, seconds per 1,000 images, the child's peak RSS (os.wait4's ru_maxrss), the
run's phase times (its manifest's training.seconds) and the peak RSS within each phase (/proc polled
every 0.1 s, the phases placed on the child's clock from the manifest). The goal: peak RSS flat in the
number of images (200k within 1.2x of 2k).

    .venv/bin/python tools/bench_scale.py --sizes 2000,20000,200000 --work /tmp/scale [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PHASES = ("scan", "detail", "build", "setup", "features", "head", "fine_tune", "evaluate", "save")
SIDE = 128


def _write_class(args: tuple[str, int, int, int]) -> int:
    """Write `count` JPEGs of class `ci` into `folder`: a class colour and a class shape under per-image noise."""
    folder, ci, count, seed = args
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, ci])
    colour = rng.integers(40, 216, size=3)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    freq = 0.05 + 0.4 * rng.random(2)
    pattern = (np.sin(xx * freq[0] + yy * freq[1]) * 40)[..., None]
    for i in range(count):
        path = out / f"img_{i:06d}.jpg"
        if path.exists():
            continue
        noise = rng.normal(0, 25, size=(SIDE // 8, SIDE // 8, 3))
        noise = np.kron(noise, np.ones((8, 8, 1)))  # blocky noise: JPEGs of a realistic size (~5 KB)
        px = np.clip(colour + pattern + noise + rng.normal(0, 6, size=(SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(px).save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
    return count


def make_folder(work: Path, n: int, workers: int) -> tuple[Path, int]:
    """The folder of n generated images (made once; a complete one is reused). Returns (path, classes)."""
    classes = min(100, max(2, n // 20))
    folder = work / f"images-{n}"
    done = folder / ".complete"
    if done.is_file():
        return folder, classes
    per = [n // classes + (1 if c < n % classes else 0) for c in range(classes)]
    jobs = [(str(folder / f"class_{c:03d}"), c, per[c], 0) for c in range(classes)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(_write_class, jobs))
    done.write_text(str(total))
    print(f"generated {total} images in {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder, classes


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_train(edgetl: str, data: Path, out: Path, extra: list[str]) -> dict[str, object]:
    """One `edgetl train` as a fresh process: wall time, peak RSS, phases and each phase's peak RSS."""
    cmd = [edgetl, "train", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none",
           "--image-size", "96", "--epochs", "3", "--output", str(out), "--force", *extra]
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            kib = _rss_kib(proc.pid)
            if kib is not None:
                samples.append((time.perf_counter() - t0, kib))
            stop.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"edgetl train failed ({proc.returncode}) on {data}:\n{err[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    seconds = manifest["training"]["seconds"]
    # The parts after "start" are contiguous on the child's clock: each phase's window, then its peak RSS.
    phase_rss: dict[str, float] = {}
    at = float(seconds.get("start", 0.0))
    phase_rss["start"] = round(max((k for t, k in samples if t <= at), default=0) / 1024)
    for name in PHASES:
        if name not in seconds:
            continue
        lo, hi = at, at + float(seconds[name])
        inside = [k for t, k in samples if lo <= t <= hi + 0.1]
        phase_rss[name] = round(max(inside, default=0) / 1024)
        at = hi
    timeline = [(round(t, 1), round(k / 1024)) for i, (t, k) in enumerate(samples) if i % 10 == 0]  # 1 s steps
    return {"wall": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "seconds": seconds,
            "rss_timeline_mb": timeline,
            "phase_rss_mb": phase_rss, "val_accuracy": (manifest.get("metrics") or {}).get("val")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,20000,200000", help="image counts, comma-separated")
    ap.add_argument("--work", default="/tmp/scale", help="where the generated folders and runs go (kept)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating images")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--label", default="", help="a name for this run in the table (e.g. before, after)")
    ap.add_argument("extra", nargs="*", help="more `edgetl train` options, after --")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    edgetl = str(Path(sys.executable).parent / "edgetl")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    rows = []
    for n in sizes:
        folder, classes = make_folder(work, n, args.workers)
        load = os.getloadavg()[0]
        res = run_train(edgetl, folder, work / f"run-{n}", args.extra)
        res.update(images=n, classes=classes, load=round(load, 2))
        rows.append(res)
        s = res["seconds"]
        print(f"{n} images: wall {res['wall']} s, peak RSS {res['peak_rss_mb']} MB, phases "
              + ", ".join(f"{k} {s[k]}" for k in ("start", *PHASES) if k in s)
              + " | phase peak RSS MB " + ", ".join(f"{k} {v}" for k, v in res["phase_rss_mb"].items()),
              file=sys.stderr, flush=True)
    print(f"\n{args.label} commit {commit}, {platform.machine()}, {os.cpu_count()} cores\n")
    print("| images | classes | wall s | s per 1k images | peak RSS MB | scan | features | head | evaluate | save "
          "| load |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        s = r["seconds"]
        print(f"| {r['images']:,} | {r['classes']} | {r['wall']:.1f} | {1000 * r['wall'] / r['images']:.2f} "
              f"| {r['peak_rss_mb']:,} | {s.get('scan', 0):.1f} | {s.get('features', 0):.1f} | {s.get('head', 0):.1f} "
              f"| {s.get('evaluate', 0):.1f} | {s.get('save', 0):.1f} | {r['load']} |")
    if len(rows) > 1:
        print(f"\npeak RSS at {rows[-1]['images']:,} / at {rows[0]['images']:,}: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x (goal: at most 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"commit": commit, "label": args.label, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
