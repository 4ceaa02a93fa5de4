"""The CI gate: the checks an evaluation's figures must pass (accuracy, drop, agreement, per-class recall)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgetl.core.errors import UsageError
from edgetl.core.metrics import format_figure as _f  # short: the messages below quote many figures

_EPS = 1e-9  # figures equal to a threshold pass, whatever the float rounding


@dataclass
class Check:
    """One gate check: what was measured, against what, and whether it passed."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_fraction(name: str, value: float | None) -> None:
    """Raise UsageError unless value is None or within 0..1."""
    if value is not None and (math.isnan(value) or not 0.0 <= value <= 1.0):
        raise UsageError(f"{name} {value} is out of range. Use a fraction between 0 and 1 (e.g. 0.9).")


def gate(result: dict[str, Any], *, min_accuracy: float | None = None, max_drop: float | None = None,
         baseline: dict[str, Any] | None = None, min_class_recall: float | None = None,
         min_agreement: float | None = None, min_balanced_accuracy: float | None = None) -> list[Check]:
    """The checks the options ask for, each passed or failed.

    Args:
        result: an `evaluate` result.
        min_accuracy: the lowest accuracy allowed.
        max_drop: the largest accuracy drop allowed against the baseline and the reference (each
            that is present gets its own check).
        baseline: a loaded baseline.
        min_class_recall: the lowest recall allowed for each class present in the data.
        min_agreement: the lowest top-1 agreement with the reference.
        min_balanced_accuracy: the lowest balanced accuracy (mean per-class recall) allowed.

    Returns:
        The checks, in a stable order.

    Raises:
        UsageError: out-of-range thresholds, or a comparison with nothing to compare with.
    """
    for name, v in (("--min-accuracy", min_accuracy), ("--max-drop", max_drop),
                    ("--min-class-recall", min_class_recall), ("--min-agreement", min_agreement),
                    ("--min-balanced-accuracy", min_balanced_accuracy)):
        check_fraction(name, v)
    ref = result.get("reference")
    if max_drop is not None and baseline is None and ref is None:
        raise UsageError("--max-drop needs something to compare with. Add --baseline FILE or --reference MODEL.")
    if min_agreement is not None and ref is None:
        raise UsageError("--min-agreement needs --reference MODEL (e.g. the run's Keras model).")
    acc = result.get("accuracy")
    checks: list[Check] = []
    if min_accuracy is not None:
        ok = acc is not None and acc >= min_accuracy - _EPS
        checks.append(Check("min_accuracy", ok, acc, min_accuracy,
                            f"accuracy {_f(acc)} {'>=' if ok else '<'} minimum {_f(min_accuracy)}"))
    if min_balanced_accuracy is not None:
        bal = result.get("balanced_accuracy")
        ok = bal is not None and bal >= min_balanced_accuracy - _EPS
        checks.append(Check("min_balanced_accuracy", ok, bal, min_balanced_accuracy,
                            f"balanced accuracy {_f(bal)} {'>=' if ok else '<'} minimum {_f(min_balanced_accuracy)}"))
    if max_drop is not None and baseline is not None:
        base = float(baseline["accuracy"])
        drop = base - acc if acc is not None else None
        ok = drop is not None and drop <= max_drop + _EPS
        checks.append(Check("max_drop_vs_baseline", ok, drop, max_drop,
                            f"accuracy {_f(acc)} vs baseline {_f(base)}: drop {_f(drop)} "
                            f"{'<=' if ok else '>'} allowed {_f(max_drop)}"))
    if max_drop is not None and ref is not None:
        drop = ref.get("drop")
        ok = drop is not None and drop <= max_drop + _EPS
        checks.append(Check("max_drop_vs_reference", ok, drop, max_drop,
                            f"accuracy {_f(acc)} vs reference {_f(ref.get('accuracy'))}: drop {_f(drop)} "
                            f"{'<=' if ok else '>'} allowed {_f(max_drop)}"))
    if min_agreement is not None and ref is not None:
        agr = ref.get("agreement")
        ok = agr is not None and agr >= min_agreement - _EPS
        checks.append(Check("min_agreement", ok, agr, min_agreement,
                            f"top-1 agreement with the reference {_f(agr)} {'>=' if ok else '<'} minimum "
                            f"{_f(min_agreement)}"))
    if min_class_recall is not None:
        for name, v in result.get("per_class", {}).items():
            if not v.get("support"):
                continue  # a class absent from the data has no recall to gate
            rec = v.get("recall")
            ok = rec is not None and rec >= min_class_recall - _EPS
            checks.append(Check(f"min_class_recall[{name}]", ok, rec, min_class_recall,
                                f"recall of '{name}' {_f(rec)} {'>=' if ok else '<'} minimum {_f(min_class_recall)} "
                                f"({v.get('support')} images)"))
    return checks


def gate_summary(checks: Sequence[Check]) -> str:
    """One line naming the failed checks, for the error message of a failed gate."""
    failed = [c for c in checks if not c.passed]
    return f"accuracy gate failed ({len(failed)} of {len(checks)} checks): " + "; ".join(c.message for c in failed)
