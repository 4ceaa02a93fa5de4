"""Class-balanced sampling of a split: calibration sets and probe images see every class."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgetl.data.splits import Item


def balanced_sample(items: list[Item], n: int, seed: int) -> list[Item]:
    """Up to n items, round-robin over classes after a seeded shuffle of each: every class is represented."""
    by_class: dict[int, list[Item]] = {}
    for it in sorted(items, key=lambda i: i.path):
        by_class.setdefault(it.label, []).append(it)
    rng = random.Random(seed)
    for lst in by_class.values():
        rng.shuffle(lst)
    out: list[Item] = []
    queues = [by_class[k] for k in sorted(by_class)]
    i = 0
    while len(out) < n and any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop())
        i += 1
    return out
