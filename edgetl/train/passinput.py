"""The feature pass's input: its batch size, and its pipeline started ahead of the pass (PassInput).

Started before the model is built, the pass's images decode on the core that the build, the trace and the
conversion (single-threaded Python) leave idle, instead of beside the base's threads during the pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf

    from edgetl.data.splits import DataSplits
    from edgetl.train.distribute import Placement


def extract_batch_size(batch_size: int, placement: Placement) -> int:
    """Batch size of the feature pass: large on accelerators, at most 32 on a CPU.

    On a CPU larger batches are slower per image (MobileNetV2-224 on 2 cores: 300 images in 2.5 s
    at batch 32 and 3.4-3.9 s at 64; BENCHMARKS.md, train), since activations stop fitting in cache
    and the first batch, which includes the kernels' set-up, takes longer.
    """
    if any("GPU" in d.upper() or "TPU" in d.upper() for d in placement.devices):
        return max(batch_size, 64)
    return max(1, min(batch_size, 32))


# Decoded images (uint8) the pass's input may hold ahead of the base (start_pass_input). 96 MB: 640 images at
# 224 px, 3,500 at 96; a constant, so peak memory stays flat in the number of images (tools/bench_scale.py).
READAHEAD_BYTES = 96 << 20


@dataclass
class PassInput:
    """The feature pass's input pipeline, already running: its dataset, live iterator and what it was made for."""

    names: list[str]
    size: int
    batch: int
    dataset: tf.data.Dataset | None
    batches: Iterator[Any] | None
    seconds: float  # building the pipeline and starting it

    def take(self) -> tuple[tf.data.Dataset, Iterator[Any]]:
        """The dataset and its iterator, handed over once: the pass alone holds them after (and releases them)."""
        if self.dataset is None or self.batches is None:
            raise RuntimeError("the feature pass's input was taken already")
        taken = self.dataset, self.batches
        self.dataset = self.batches = None
        return taken

    def release(self) -> None:
        """Stop an input that no pass took (release_iterator)."""
        holder = [self.batches]
        self.dataset = self.batches = None
        release_iterator(holder)


def release_iterator(holder: list[Any]) -> None:
    """Delete the tf.data iterator that `holder` (a list, its only reference) holds, in a daemon thread.

    Deleting it waits for tf.data's background threads to stop: milliseconds mostly, but 1.9-2.9 s in 3 of 10
    runs on 2 loaded cores. Nothing needs that wait; the op runs without the GIL while training goes on.
    """
    import threading

    threading.Thread(target=holder.clear, name="edgetl-release-input", daemon=True).start()


def start_pass_input(splits: DataSplits, names: list[str], size: int, batch_size: int,
                     placement: Placement) -> PassInput | None:
    """Start decoding the images of the pass over `names` now, READAHEAD_BYTES ahead; extract_features takes it.

    None when there is nothing to read, or under --strategy mirrored (whose pass distributes the dataset itself).
    """
    import time

    from edgetl.data.pipeline import make_dataset

    items = [item for name in names for item in splits.split(name)]
    if not items or placement.name == "mirrored":
        return None
    t0 = time.perf_counter()
    batch = extract_batch_size(batch_size, placement)
    ds = make_dataset(splits.root, items, (size, size), batch, shuffle=False, readahead_bytes=READAHEAD_BYTES)
    return PassInput(list(names), size, batch, ds, iter(ds), time.perf_counter() - t0)
