"""One measurement of a model file against labels and a reference: used by export verification,
`export --auto` and `optimize --compare`, so accuracy, drop and agreement mean the same everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgetl.core.errors import ModelError
from edgetl.runtime.timing import median_ms

if TYPE_CHECKING:
    from edgetl.runtime.runner import Runner


@dataclass(frozen=True)
class Reference:
    """What a file is compared with: the source model's probabilities on the same images."""

    probs: np.ndarray
    accuracy: float | None


@dataclass(frozen=True)
class Measurement:
    """A file's outputs on the images, and how they compare with the labels and the reference."""

    samples: int
    probs: np.ndarray
    accuracy: float | None  # top-1 against the labels (None without labels)
    agreement: float | None  # share of images whose top-1 equals the reference's
    max_abs_diff: float | None  # largest probability difference from the reference
    drop: float | None  # reference accuracy minus this accuracy (positive: worse)
    latency_ms: float | None  # median batch-1 call

    def fields(self) -> dict[str, float | int | None]:
        """The scalar figures, rounded as reports show them."""
        return {"samples": self.samples, "accuracy": self.accuracy, "agreement": self.agreement,
                "max_abs_diff": self.max_abs_diff, "drop": self.drop, "latency_ms": self.latency_ms}


def top1_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max is the label, rounded to 4 places."""
    return round(float((probs.argmax(1) == labels).mean()), 4)


def compare(probs: np.ndarray, labels: np.ndarray | None, reference: Reference | None,
            latency_ms: float | None = None) -> Measurement:
    """Figures of probabilities already computed (by any runtime) against labels and a reference.

    Raises:
        ModelError: the outputs do not have the reference's shape.
    """
    accuracy = top1_accuracy(probs, labels) if labels is not None else None
    agreement = diff = drop = None
    if reference is not None:
        if probs.shape != reference.probs.shape:
            raise ModelError(f"outputs have shape {probs.shape}, the reference {reference.probs.shape}")
        diff = round(float(np.abs(probs - reference.probs).max()), 7) if len(probs) else 0.0
        agreement = round(float((probs.argmax(1) == reference.probs.argmax(1)).mean()), 4)
        if accuracy is not None and reference.accuracy is not None:
            drop = round(reference.accuracy - accuracy, 4)
    return Measurement(samples=int(len(probs)), probs=probs, accuracy=accuracy, agreement=agreement,
                       max_abs_diff=diff, drop=drop, latency_ms=latency_ms)


def measure(runner: Runner, images: np.ndarray, labels: np.ndarray | None = None,
            reference: Reference | None = None, *, latency: bool = True,
            batch_size: int | None = None) -> Measurement:
    """Run `images` through `runner` (in batches of `batch_size`, None: the runner's) and compare (see
    `compare`); time a batch-1 call when `latency`."""
    probs = runner.predict(images, batch_size=batch_size)
    lat = median_ms(lambda: runner.predict(images[:1])) if latency and len(images) else None
    return compare(probs, labels, reference, lat)
