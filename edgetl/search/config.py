"""The options of `edgetl search` (SearchConfig) and the device budget (Budget)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.core.errors import UsageError
from edgetl.search.candidates import WEIGHT_SOURCES, Candidate, default_candidates, parse_candidates


@dataclass(frozen=True)
class Budget:
    """Limits a recommended candidate must meet (None: no limit)."""

    latency_ms: float | None = None
    size_mb: float | None = None
    ram_kb: float | None = None

    def limits(self) -> dict[str, float]:
        """The limits that are set, by measurement name (latency_ms, size_mb, ram_kb)."""
        return {k: float(v) for k, v in (("latency_ms", self.latency_ms), ("size_mb", self.size_mb),
                                         ("ram_kb", self.ram_kb)) if v is not None}

    def excess(self, figures: dict[str, Any]) -> dict[str, float]:
        """Per limit, how far a candidate's figure is over it, relative to it (<= 0: within; inf: not measured)."""
        out = {}
        for name, limit in self.limits().items():
            value = figures.get(name)
            out[name] = math.inf if value is None else (float(value) - limit) / limit
        return out

    def describe(self) -> str:
        parts = [f"{unit} <= {v:g}" for unit, v in (("latency ms", self.latency_ms), ("size MB", self.size_mb),
                                                       ("RAM KB", self.ram_kb)) if v is not None]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class SearchConfig:
    """Every option of `edgetl search`, each with its one default."""

    data: str = ""
    target: str = "cpu"  # as export knows it (edgetl.export.targets.TARGETS): the file each candidate gets
    budget: Budget = Budget()
    candidates: str | None = None  # comma list of BACKBONE[:ALPHA]@SIZE or a YAML file; None: the target's defaults
    weights: str = "imagenet"  # imagenet (Keras' files) | none (random) | bundled (shipped with edgetl)
    weights_dir: str | None = None  # Keras' weight files under their own names; None: Keras' cache
    # Training images per class in the first round (each round multiplies it). 32 ranked the flowers candidates
    # within about 4 points of noise and picked one 1.9 points below the best full run; 64 picked one within 1.0,
    # for 112.6 s against 91.7 s for the whole search (BENCHMARKS.md, issue #29).
    images_per_class: int = 64
    reduction: int = 2  # successive halving: each round keeps 1/reduction of the candidates on reduction x images
    threads: int | None = None  # CPU threads of the latency measurement (None: export's default)
    output: str | None = None  # the search folder; None: searches/<data folder name>-<target>
    force: bool = False  # redo every result instead of reusing the folder's
    train: bool = False  # train the recommended candidate fully into OUTPUT/run

    def validate(self) -> SearchConfig:
        """Reject impossible values with one clear line each; return self."""
        from edgetl.export import resolve_request

        if not self.data:
            raise UsageError("no data folder given. Pass DATA (a folder with one subfolder per class).")
        resolve_request(None, None, self.target, None)  # an unknown target: one line naming the allowed ones
        for flag, value in (("--max-latency-ms", self.budget.latency_ms), ("--max-size-mb", self.budget.size_mb),
                            ("--max-ram-kb", self.budget.ram_kb)):
            if value is not None and not (0 < value < math.inf):
                raise UsageError(f"{flag} {value} is out of range. Use a positive number.")
        if self.weights not in WEIGHT_SOURCES:
            raise UsageError(f"--weights '{self.weights}' is not allowed. Use {', '.join(WEIGHT_SOURCES)} (or "
                             "--weights-dir for a folder of Keras' weight files).")
        if self.weights_dir is not None:
            if self.weights != "imagenet":
                raise UsageError(f"--weights-dir holds ImageNet weight files; drop --weights {self.weights}.")
            if not Path(self.weights_dir).is_dir():
                raise UsageError(f"--weights-dir '{self.weights_dir}' is not a folder. Pass the folder holding "
                                 "Keras' weight files (e.g. mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                                 "1.0_224_no_top.h5).")
        if not 2 <= self.images_per_class <= 100_000:
            raise UsageError(f"--images-per-class {self.images_per_class} is out of range. Use 2..100000 "
                             "(default 32).")
        if not 2 <= self.reduction <= 10:
            raise UsageError(f"--reduction {self.reduction} is out of range. Use 2..10 (default 2).")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise UsageError(f"--threads {self.threads} is out of range. Use 1 or more.")
        if self.budget.ram_kb is not None:
            raise UsageError(f"--max-ram-kb needs RAM figures, and --target {self.target} has none measured here yet "
                             "(TensorFlow Lite Micro's arena is not measured by this edgetl). Drop --max-ram-kb.")
        self.candidate_list()
        return self

    def candidate_list(self) -> list[Candidate]:
        """The candidates: --candidates parsed, or the target's defaults."""
        return parse_candidates(self.candidates) if self.candidates else default_candidates(self.target)

    def folder(self) -> Path:
        """The search folder."""
        if self.output:
            return Path(self.output)
        name = Path(self.data).resolve().name or "data"
        return Path("searches") / f"{name}-{self.target}"
