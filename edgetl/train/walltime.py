"""Where a training run's wall time goes: the process's age, and the named parts the job times.

The parts (keys of the manifest's training.seconds, each rounded to 0.01 s):

    start     from the process's start to train()'s entry: interpreter start, imports, TensorFlow's
              import, option checks (for `edgetl train`; in a library call, whatever ran before)
    scan      option checks, listing and probing the data folder, splitting it
    detail    measuring the detail a sample of the training photos carries (edgetl.data.detail)
    build     device placement, starting the feature pass's input (its images decode meanwhile),
              building the backbone and loading its weights, the classifier
    setup     the run directory, class weights, the manifest's first write
    features  the frozen base's pass over every image (the feature cache), its checkpoint included
    head      fitting the head (on the cached features, or through the base)
    fine_tune the second stage, when asked
    evaluate  val and test metrics
    save      model.keras, metrics, plots, card, the final manifest, removing the checkpoints
    total     train()'s entry to its end: the parts above after start are contiguous, so they sum to it
    wall      start + total: the process's age when train() ends (what a user waits, but the exit)

and, inside features (not added to total), when the pass ran on one device (under --strategy mirrored: input,
base, wait, save and other; its base includes tracing the step):

    features_input    building the input pipeline (tf.data: file list, decode and resize functions); 0 when
                      train started it before the build (train.passinput: counted in build then)
    features_trace    tracing TensorFlow's forward function (0 when a cached conversion's stored check passed)
    features_base     inside the base's forward calls over the pass's images: TensorFlow's (its probe of
                      the first images, or its first batches), then the engine's (the check excluded)
    features_wait     starting the input pipeline and waiting for its decoded, resized batches
    features_convert  converting the base to TFLite, or looking its conversion up in the cache and loading it
                      (edgetl.train.engine)
    features_check    TFLite's first invoke and its check batch against TensorFlow's features
                      (or, for a cached conversion, against TensorFlow's features stored with it)
    features_release  ending the pass: its features joined, its input pipeline, TFLite interpreter and traced
                      function released
    features_other    the rest of the pass (its set-up and hand-over; seconds where all is well)
    features_save     writing the features to the run's checkpoint (for --resume)
"""

from __future__ import annotations

import os
import time

PARTS = ("scan", "detail", "build", "setup", "features", "head", "fine_tune", "evaluate", "save")
FEATURE_PARTS = ("input", "trace", "base", "wait", "convert", "check", "release", "other", "save")


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution), or None where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # Field 22 (start time in clock ticks after boot) counts from 1; the 2nd, the name, may hold spaces.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return age if age >= 0 else None


class Clock:
    """Seconds per named part, each part timed from the end of the previous one (or of `mark`)."""

    def __init__(self) -> None:
        self.start_age = process_age()
        self._t0 = self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self) -> None:
        """Start the next part now (what ran since the last part belongs to none)."""
        self._last = time.perf_counter()

    def part(self, name: str) -> float:
        """Close part `name` (added to it if it ran before): seconds since the last part or mark."""
        now = time.perf_counter()
        spent = now - self._last
        self.seconds[name] = self.seconds.get(name, 0.0) + spent
        self._last = now
        return spent

    def finish(self) -> dict[str, float]:
        """The parts with total and, where the process's age is known, start and wall; rounded."""
        out = dict(self.seconds)
        out["total"] = time.perf_counter() - self._t0
        if self.start_age is not None:
            out["start"] = self.start_age
            out["wall"] = self.start_age + out["total"]
        return {k: round(v, 2) for k, v in out.items()}


def describe(seconds: dict[str, float]) -> str:
    """One log line: the parts in run order, then the feature pass's split."""
    order = ["start", *PARTS, "total"]
    line = ", ".join(f"{k} {seconds[k]:.1f}" for k in order if k in seconds)
    inner = ", ".join(f"{k} {seconds['features_' + k]:.1f}" for k in FEATURE_PARTS if "features_" + k in seconds)
    return f"time (s): {line}" + (f"; feature pass: {inner}" if inner else "")
