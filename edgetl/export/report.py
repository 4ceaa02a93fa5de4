"""What an export reports: one typed row per file, the Keras reference, and export_report.json beside the files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.records import Record

REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
COLUMNS = ("format", "mode", "path", "size_mb", "accuracy", "drop", "agreement", "max_abs_diff", "latency_ms",
           "status")
FAILURE_KINDS = ("export", "verify", "float_parity", "max_drop", "app_runtime", "compatibility", "tflm", "budget")
# Failures that are a gate (exit 1, like a failed evaluate): the file is sound but misses a budget the user set.
GATE_FAILURES = ("max_drop", "budget")


@dataclass
class ExportRow(Record):
    """One exported file and how it measured. Reads like its JSON row too (row["status"], row.get("drop"))."""

    format: str
    mode: str
    path: str
    io_type: str | None = None
    input_dtype: str = "float32"
    size_mb: float | None = None
    accuracy: float | None = None
    drop: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    samples: int | None = None
    export_seconds: float | None = None
    status: str = ""  # "ok", "unverified[: why]" or "failed: why"
    failure: str | None = None  # one of FAILURE_KINDS when failed
    written: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # figures of other checks (app runtimes, compatibility)

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    def fail(self, reason: str, kind: str) -> None:
        """Mark the row failed (`kind`: which check), keeping the first failure when several fire."""
        if not self.failed:
            self.status = f"failed: {reason}"
            self.failure = kind

    def line(self) -> str:
        """One progress line: format, mode, status, size, path."""
        size = f"{self.size_mb:.2f} MB" if self.size_mb is not None else "-"
        sample = self.extra.get("verify_sample")
        on = f", verified on {sample['samples']} of {sample['held_out']} images" if sample else ""
        return f"{self.format} {self.mode}: {self.status} ({size}{on}) -> {self.path}"


def _cpu(row: dict[str, Any]) -> str:
    return f"{row['cpu_seconds']:.1f}" if row.get("cpu_seconds") is not None else "-"


def _peak_rss_mb() -> int | None:
    """The process's peak resident memory so far, in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # KB on Linux


@dataclass
class Phases:
    """Wall and CPU seconds of each step of an export, in the order they ran (shared work, then per file).

    CPU seconds are the whole process's (every thread): above the wall seconds, the step used several cores;
    below, it waited (on the disk, or on other processes of a loaded machine)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def time(self, phase: str, file: str | None = None) -> Iterator[None]:
        """Time the block as `phase` (of `file`, e.g. "tflite int8", for per-file steps)."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0, file, cpu=time.process_time() - c0)

    def add(self, phase: str, seconds: float, file: str | None = None, cpu: float | None = None) -> None:
        """Record `seconds` (wall) and `cpu` seconds of `phase` (of `file`), with the process's peak RSS so far (MB)."""
        self.rows.append({"phase": phase, "file": file, "seconds": round(seconds, 2),
                          "cpu_seconds": round(cpu, 2) if cpu is not None else None, "peak_rss_mb": _peak_rss_mb()})

    def total(self) -> float:
        """The seconds of every phase added up."""
        return round(sum(r["seconds"] for r in self.rows), 2)

    def by_phase(self) -> dict[str, float]:
        """Seconds per phase name, over every file."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r["phase"]] = round(out.get(r["phase"], 0.0) + r["seconds"], 2)
        return out

    def table(self) -> list[str]:
        """The phases as aligned text lines for the log: one per step, then a total per phase name."""
        width = max([len(self._label(r)) for r in self.rows] + [5])
        lines = [f"{'phase':<{width}}  seconds  CPU s  peak RSS MB"]
        lines += [f"{self._label(r):<{width}}  {r['seconds']:7.2f}  {_cpu(r):>5}  {r['peak_rss_mb'] or '-':>11}"
                  for r in self.rows]
        cpu = sum(r["cpu_seconds"] or 0.0 for r in self.rows)
        lines.append(f"{'total':<{width}}  {self.total():7.2f}  {cpu:5.1f}  ("
                     + ", ".join(f"{k} {v:.1f}" for k, v in self.by_phase().items()) + ")")
        return lines

    @staticmethod
    def _label(row: dict[str, Any]) -> str:
        return f"{row['phase']} {row['file']}" if row["file"] else str(row["phase"])


@dataclass
class ExportReport:
    """What an export produced: one row per file, the Keras reference, and where the JSON went."""

    run_dir: Path
    output: Path
    rows: list[ExportRow] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    phases: Phases = field(default_factory=Phases)
    seconds: float | None = None  # the whole export's wall time

    @property
    def failed(self) -> list[ExportRow]:
        return [r for r in self.rows if r.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"edgetl_export": 1, "run": str(self.run_dir), "output": str(self.output), "verify": self.verify,
                "reference": self.reference, "rows": [r.to_dict() for r in self.rows], "warnings": self.warnings,
                "seconds": self.seconds, "phases": list(self.phases.rows), "phase_totals": self.phases.by_phase()}


# Row fields that hold a file's path (the QNN row names its portable file too).
PATH_FIELDS = ("path", "portable")


def _shipped(value: Any, folder: Path, base: Path, key: str = "") -> Any:
    """`value` with every path (relative ones taken from `base`) written relative to `folder` (posix): the report
    ships with the files."""
    if isinstance(value, dict):
        return {k: _shipped(v, folder, base, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shipped(v, folder, base) for v in value]
    if isinstance(value, str) and value and (key in PATH_FIELDS or Path(value).is_absolute()):
        try:
            return Path(os.path.relpath((base / value).resolve(), folder)).as_posix()
        except (OSError, ValueError):  # another drive on Windows: keep the name only
            return Path(value).name
    return value


def report_paths(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The files an export_report.json in `folder` names, by "FORMAT-MODE", as paths on this machine."""
    return {f"{r['format']}-{r['mode']}": folder / str(r["path"]) for r in doc.get("rows", [])}


def write_beside(class_names: list[str], folder: Path, report: ExportReport) -> None:
    """labels.txt and export_report.json beside the files; the report keeps rows of files written before.

    The JSON leaves the machine with the files, so its paths are relative to its own folder ("path" the file's
    name, "run" the run folder as seen from there): no build-machine path ships."""
    from edgetl.core.fileio import write_json, write_text

    write_text(folder / LABELS_FILE, "\n".join(class_names) + "\n")
    path = folder / REPORT_FILE
    here = folder.resolve()
    run = Path(os.path.relpath(Path(report.run_dir).resolve(), here)).as_posix()
    doc = _shipped(report.to_dict(), here, Path.cwd())
    doc.update(run=run, output=".")
    old_rows: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            new_paths = {r["path"] for r in doc["rows"]}
            # Rows of another run's export are not ours to keep (an older report held absolute paths).
            if old.get("run") in (run, str(report.run_dir)):
                old_rows = [_shipped(r, here, here) for r in old.get("rows", []) if isinstance(r, dict)
                            and (folder / str(r.get("path"))).exists()
                            and not str(r.get("status", "")).startswith("failed")]
                old_rows = [r for r in old_rows if r.get("path") not in new_paths]
        except (OSError, ValueError, AttributeError):
            old_rows = []
    doc["rows"] = old_rows + doc["rows"]
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(path, doc)
    report.json_path = path
