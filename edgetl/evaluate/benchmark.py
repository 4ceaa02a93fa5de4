"""Side-by-side benchmark of artifacts: size, accuracy, latency, throughput, peak memory.

How each figure is measured (also written into every result under "method"):

- latency: one image per call through Runner.predict (what an application calls, input quantization
  included), after warm-up calls; calls are repeated until there are at least `min_runs` of them and
  `min_seconds` have passed (or `max_seconds`); p50 and p90 of the per-call wall times.
- throughput: images per second over repeated calls of `batch` images (a model whose file fixes the
  batch at 1 is fed one image at a time: that is its real throughput).
- peak memory: on Linux, the process's peak resident set (VmHWM) is reset through /proc/self/clear_refs
  before the model is opened, and the peak minus the resident set at that moment is reported: the memory
  that opening and running the model added, native runtime memory included (tracemalloc would see only
  Python objects). Shared libraries a runtime loaded for an earlier model are not counted again, so
  benchmark one model per process for absolute figures. Elsewhere: None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import EdgetlError, UsageError, did_you_mean
from edgetl.core.progress import Reporter
from edgetl.runtime.timing import latency_stats, time_calls

if TYPE_CHECKING:
    from edgetl.data import Item
    from edgetl.runtime import Runner

    # Scanned items and decoded images, shared by the models of one benchmark call.
    ImageCache = dict[tuple[object, ...], list[Item] | np.ndarray]

log = logging.getLogger("edgetl")

METHOD = {
    "latency": "batch 1 through Runner.predict after warm-up; p50/p90 of per-call wall time",
    "throughput": "images/s over repeated calls of --batch images (fixed-batch-1 files: one image per call)",
    "memory": "peak RSS growth (VmHWM reset via /proc/self/clear_refs) while opening and running the model, "
              "in this process",
}


@dataclass
class BenchOptions:
    """How long and how hard to measure.

    Attributes:
        batch: images per call for the throughput figure.
        threads: CPU threads for each runtime (None: the runtime's default).
        warmup: calls before timing starts (first calls allocate, JIT and plan).
        min_runs: timed calls at least, for a stable median.
        min_seconds: timed seconds at least.
        max_seconds: stop timing a model after this, whatever min_runs says.
        safe_mode: load .keras files in Keras' safe mode.
        runtime: run the models of the kind it runs in this other runtime (edgetl.runtime.kinds.runtimes(), e.g.
            "tflm" for .tflite files); the other models in their own. None: every model in its own.
    """

    batch: int = 32
    threads: int | None = None
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    safe_mode: bool = True
    runtime: str | None = None

    def check(self) -> None:
        """Raise UsageError for values out of range."""
        if self.runtime is not None:
            from edgetl.runtime.kinds import runtimes

            if self.runtime not in runtimes():
                raise UsageError(f"unknown --runtime '{self.runtime}'.{did_you_mean(self.runtime, runtimes())} "
                                 f"Allowed: {', '.join(runtimes())}.")
        if not 1 <= self.batch <= 4096:
            raise UsageError(f"--batch {self.batch} is out of range. Use 1..4096.")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} is out of range. Use 1 or more.")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup} is out of range. Use 0 or more.")
        if self.warmup > 100_000:
            raise UsageError(f"--warmup {self.warmup} is out of range. Use 0..100000.")
        if not 1 <= self.min_runs <= 1_000_000:
            raise UsageError(f"--runs {self.min_runs} is out of range. Use 1..1000000 (--max-seconds bounds the time).")
        if not (0 <= self.min_seconds <= 86_400 and 0 < self.max_seconds <= 86_400):  # also false for NaN
            raise UsageError(f"--min-seconds {self.min_seconds} / --max-seconds {self.max_seconds} are out of range. "
                             "Use --min-seconds 0..86400 and --max-seconds above 0, up to 86400.")


# ----------------------------------------------------------------------------------------------
# The machine


def machine_info() -> dict[str, Any]:
    """The machine and runtime versions the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory_bytes": mem,
            "system": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
            "python": platform.python_version(), "runtimes": runtime_versions()}


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes installed (TensorFlow only if already imported: importing it costs seconds)."""
    from importlib import metadata

    out = {}
    for dist in ("ai-edge-litert", "onnxruntime", "tflite-micro"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    if "tensorflow" in sys.modules:
        out["tensorflow"] = getattr(sys.modules["tensorflow"], "__version__", "?")
    if "keras" in sys.modules:
        out["keras"] = getattr(sys.modules["keras"], "__version__", "?")
    return out


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for table titles."""
    rts = ", ".join(f"{k} {v}" for k, v in info.get("runtimes", {}).items())
    mem = f", {info['memory_bytes'] / 2**30:.0f} GiB" if info.get("memory_bytes") else ""
    return (f"{info['cpu']}, {info['usable_cores']} of {info['cores']} cores{mem}, {info['system']}, "
            f"Python {info['python']}" + (f"; {rts}" if rts else ""))


# ----------------------------------------------------------------------------------------------
# Memory


class PeakMemory:
    """Peak resident memory growth of this process between start() and stop() (Linux; None elsewhere)."""

    def __init__(self) -> None:
        self.base: int | None = None
        self.ok = False

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.base = _status_kb("VmRSS")
            self.ok = self.base is not None
        except OSError:
            self.ok = False

    def stop(self) -> int | None:
        if not self.ok or self.base is None:
            return None
        peak = _status_kb("VmHWM")
        return None if peak is None else max(0, peak - self.base) * 1024


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ----------------------------------------------------------------------------------------------
# Benchmark


def benchmark(paths: Sequence[str | os.PathLike[str]], options: BenchOptions | None = None, *,
              data: str | os.PathLike[str] | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Benchmark each model in turn (one at a time, so they do not compete for the cores).

    Args:
        paths: models (anything edgetl.runtime.open_model accepts).
        options: timing options (BenchOptions defaults when None).
        data: a labelled image folder: adds each model's accuracy on it.
        reporter: receives progress.

    Returns:
        {"machine": machine_info(), "options": ..., "method": ..., "results": [one dict per model]}. A
        model that cannot be opened or run gets a result with status "error" and the reason.

    Raises:
        UsageError: options out of range or no models.
    """
    opts = options or BenchOptions()
    opts.check()
    if not paths:
        raise UsageError("no models given. Pass one or more model paths (run dir, .keras, SavedModel, .tflite, .onnx).")
    reporter = reporter or Reporter()
    cache: ImageCache = {}
    results = []
    for p in paths:
        results.append(benchmark_one(p, opts, data=data, reporter=reporter, _cache=cache))
    return {"machine": machine_info(), "options": asdict(opts), "method": METHOD, "results": results}


def benchmark_one(path: str | os.PathLike[str], opts: BenchOptions, *, data: str | os.PathLike[str] | None = None,
                  reporter: Reporter | None = None, _cache: ImageCache | None = None) -> dict[str, Any]:
    """Benchmark one model; errors become a result with status "error" (and are logged)."""
    from edgetl.runtime import detect_kind, get_kind, open_model
    from edgetl.runtime.kinds import runtimes

    reporter = reporter or Reporter()
    cache = _cache if _cache is not None else {}
    row: dict[str, Any] = {"path": str(path), "name": display_name(path), "status": "ok", "error": None,
                           "format": None, "mode": None, "size_bytes": None, "image_size": None,
                           "input_dtype": None, "accuracy": None, "images": None, "load_ms": None,
                           "latency": None, "throughput": None, "peak_memory_bytes": None}
    mem = PeakMemory()
    runner: Runner | None = None
    try:
        if get_kind(detect_kind(path)).needs_tensorflow:
            import tensorflow  # noqa: F401 - imported before the memory probe: the library is not the model
        mem.start()
        t0 = time.perf_counter()
        kind = detect_kind(path)
        other = opts.runtime if opts.runtime is not None and runtimes().get(opts.runtime) == kind else None
        runner = open_model(path, threads=opts.threads, safe_mode=opts.safe_mode, kind=other)
        row["load_ms"] = (time.perf_counter() - t0) * 1000.0
        row.update(format=runner.kind, mode=runner.quantization, size_bytes=runner.size_bytes,
                   image_size=runner.image_size, input_dtype=runner.input_dtype, threads=opts.threads,
                   batch_fixed=runner.batch_fixed)
        if data is not None:
            acc, n = _accuracy(runner, data, opts, cache, reporter)
            row.update(accuracy=acc, images=n)
        size = runner.image_size
        rng = np.random.default_rng(0)
        one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        many = rng.integers(0, 256, (opts.batch, size, size, 3), dtype=np.uint8)
        reporter.start(f"latency {row['name']}", None)
        times = time_calls(lambda: runner.predict(one, batch_size=1), warmup=opts.warmup, min_runs=opts.min_runs,
                           min_seconds=opts.min_seconds, max_seconds=opts.max_seconds)
        row["latency"] = latency_stats(times)
        reporter.finish()
        reporter.start(f"throughput {row['name']}", None)
        btimes = time_calls(lambda: runner.predict(many, batch_size=opts.batch), warmup=min(2, opts.warmup),
                            min_runs=max(3, opts.min_runs // 10), min_seconds=opts.min_seconds / 2,
                            max_seconds=opts.max_seconds / 2)
        reporter.finish()
        total = float(sum(btimes))
        row["throughput"] = {"batch": opts.batch, "images_per_s": opts.batch * len(btimes) / total if total else None,
                             "runs": len(btimes), "one_image_per_call": runner.batch_fixed == 1 and opts.batch > 1}
        row["peak_memory_bytes"] = mem.stop()
    except EdgetlError as exc:
        reporter.finish()
        row.update(status="error", error=str(exc))
        log.warning("benchmark of '%s' failed: %s", path, exc)
    finally:
        if runner is not None:
            runner.close()
    return row


def _accuracy(runner: Runner, data: str | os.PathLike[str], opts: BenchOptions, cache: ImageCache,
              reporter: Reporter) -> tuple[float | None, int]:
    from edgetl.data import load_images, scan_eval_folder

    key_items = ("items", tuple(runner.class_names))
    if key_items not in cache:
        cache[key_items] = scan_eval_folder(data, runner.class_names)[0]
    items = cache[key_items]
    key_imgs = ("images", key_items, runner.image_size)
    if key_imgs not in cache:
        reporter.start(f"decoding {len(items)} images at {runner.image_size} px", len(items))
        cache[key_imgs] = load_images(data, items, (runner.image_size, runner.image_size),
                                      on_progress=lambda done, total: reporter.advance(1))
        reporter.finish()
    probs = runner.predict(cache[key_imgs], batch_size=opts.batch)
    y = np.array([it.label for it in items])
    return (float((probs.argmax(1) == y).mean()) if len(y) else None), len(y)


def display_name(path: str | os.PathLike[str]) -> str:
    """A short name for tables: the file name, or run/model.keras for a run directory."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        return f"{p.name}/ (keras)"
    if p.is_dir():
        return f"{p.name}/"
    return p.name


# ----------------------------------------------------------------------------------------------
# Plot


def plot_benchmark(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A PNG with one bar chart per figure (latency p50 with p90 marks, throughput, size, accuracy)."""
    from edgetl.core.plots import BarPanel, plot_bar_panels

    rows = [r for r in report["results"] if r["status"] == "ok"]
    if not rows:
        raise UsageError("no model was benchmarked successfully: nothing to plot.")
    panels = [BarPanel("latency p50, batch 1 (ms)", [r["latency"]["p50_ms"] for r in rows],
                       marks=[r["latency"]["p90_ms"] for r in rows], marks_label="p90"),
              BarPanel(f"throughput, batch {rows[0]['throughput']['batch']} (img/s)",
                       [r["throughput"]["images_per_s"] or 0 for r in rows]),
              BarPanel("size (MB)", [r["size_bytes"] / 1e6 for r in rows])]
    if any(r["accuracy"] is not None for r in rows):
        panels.append(BarPanel("accuracy", [r["accuracy"] or 0 for r in rows], xlim=(0, 1.08)))
    plot_bar_panels([r["name"] for r in rows], panels, path,
                    title=f"edgetl benchmark: {machine_line(report['machine'])}")
