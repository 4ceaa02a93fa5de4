"""What a search found: its rounds, every candidate's figures, the recommendation (SearchResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.search.config import Budget

# The parts of a candidate's time, as the round lines name them (edgetl.search.trial's seconds).
PARTS = ("build", "features", "save", "head", "export", "latency")


@dataclass
class Round:
    """What one round did and where its time went."""

    number: int
    per_class: int
    train_images: int
    val_images: int
    candidates: list[str]
    reused: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per part, summed over the candidates measured
    wall: float = 0.0
    whole: bool = False  # the entire training and validation splits, not per_class a class
    within_noise: list[str] = field(default_factory=list)  # went on beside the kept fraction (job.within_noise)

    def line(self) -> str:
        parts = ", ".join(f"{k} {self.seconds[k]:.1f}" for k in PARTS if self.seconds.get(k))
        reused = f"; {self.reused} reused from the study" if self.reused else ""
        return (f"round {self.number}: {len(self.candidates)} candidates on {self.train_images} training + "
                f"{self.val_images} validation images ({self.sample()}): {self.wall:.1f} s"
                f"{f' ({parts})' if parts else ''}{reused}")

    def sample(self) -> str:
        """The round's images in words."""
        return "the whole splits" if self.whole else f"{self.per_class} a class"

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.number, "per_class": None if self.whole else self.per_class, "whole": self.whole,
                "train_images": self.train_images,
                "val_images": self.val_images, "candidates": self.candidates, "reused": self.reused,
                "within_noise": self.within_noise,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "wall_seconds": round(self.wall, 2)}


@dataclass
class SearchResult:
    """What a search found: every candidate's figures (Pareto order), the recommendation, where time went."""

    folder: Path
    target: str
    budget: Budget
    rows: list[dict[str, Any]]  # per candidate, at the last round it reached; within the budget first, by rank
    recommended: dict[str, Any] | None  # one of rows, or None when no candidate meets the budget
    closest: dict[str, Any] | None  # without a recommendation: the candidate nearest the budget
    rounds: list[Round]
    skipped: list[str]  # one line per candidate without weights
    notes: list[str]  # what the figures are: latency's machine and runtime, what is not measured
    machine: dict[str, Any]
    seconds: float
    train_command: str | None = None
    recipe: Path | None = None
    plot: Path | None = None
    run: Path | None = None  # --train: the recommended candidate's full run

    def to_json(self) -> dict[str, Any]:
        """The --json object: `candidates` (each with backbone, alpha, image_size, accuracy, latency_ms,
        size_mb, within_budget, pareto, ...) and `recommended` (one of them, or null)."""
        return {"candidates": self.rows, "recommended": self.recommended, "closest": self.closest,
                "target": self.target, "budget": self.budget.limits(), "machine": self.machine,
                "notes": self.notes, "skipped": self.skipped, "rounds": [r.to_dict() for r in self.rounds],
                "folder": str(self.folder), "train_command": self.train_command,
                "recipe": str(self.recipe) if self.recipe else None, "plot": str(self.plot) if self.plot else None,
                "run": str(self.run) if self.run else None, "seconds": round(self.seconds, 1)}

    def miss_line(self) -> str:
        """Why nothing is recommended, naming the closest candidate."""
        c = self.closest
        if c is None:
            return "no candidate could be measured (see the lines above)."
        return (f"no candidate meets the budget ({self.budget.describe()}); the closest is {c['key']} "
                f"({describe(c)}). Relax the budget or add smaller candidates (--candidates).")


def describe(f: dict[str, Any]) -> str:
    """A candidate's figures in one line: accuracy and its error, latency, RAM, size."""
    ram = f" {f['ram_kb']:.0f} KB RAM," if f.get("ram_kb") is not None else ""
    return (f"accuracy {f['accuracy']:.3f} ± {f['accuracy_stderr']:.3f} on {f['val_images']} images, "
            f"{f['latency_ms']:.2f} ms,{ram} {f['size_mb']:.2f} MB")
