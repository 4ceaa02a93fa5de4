"""Verification: every exported file opened in its own runtime and measured against the Keras model's reference."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import EdgetlError
from edgetl.export.checks import get_check
from edgetl.export.formats import get_format
from edgetl.export.images import balanced_order
from edgetl.export.modes import get_mode
from edgetl.export.plan import DEFAULT_VERIFY_SECONDS
from edgetl.export.reference import FLOAT_TOLERANCE, KerasReference
from edgetl.export.report import ExportRow
from edgetl.runtime.kinds import Kind, get_kind
from edgetl.runtime.measure import Reference, compare, top1_accuracy
from edgetl.runtime.timing import median_ms

if TYPE_CHECKING:
    from edgetl.export.images import ExportImages
    from edgetl.runtime.app_runtime import AppResult
    from edgetl.runtime.runner import Runner

log = logging.getLogger("edgetl")

# Metadata every file must read back as it was written.
CHECKED_METADATA = ("class_names", "quantization", "format", "image_size")
# MediaPipe Tasks' ImageClassifier (what apps run) must give LiteRT's top-1 on at least this share of the
# held-out images, or the export fails: both run the same file, so anything less is a contract broken
# between them (normalisation, labels, colour order), not rounding.
APP_AGREEMENT = 0.99
# MediaPipe runs the file LiteRT has just measured on every held-out image, so it checks the contract (input
# normalisation, labels, colour order: a break shows on any images as chance-level agreement) on a
# class-balanced sample of at most this many: its pass cost a 9-file export 19 s of 149 s and 56 of 253 CPU s.
APP_SAMPLES = 100
# ...and on this many (class-balanced) when the file itself is verified on a capped sample: such a file is slow
# in both runtimes (int16x8's reference kernels: MediaPipe's 50 images cost 10 of its 20 CPU s), and a broken
# contract still shows on 20 images as chance-level agreement.
APP_SAMPLES_CAPPED = 20
# Batch of the held-out passes: LiteRT and ONNX Runtime run 8 images as fast per image as 32.
_VERIFY_BATCH = 8
# A file verified on a capped sample (edgetl.export.plan.DEFAULT_VERIFY_SECONDS) gets at least this many images.
MIN_VERIFY_SAMPLES = 50
# A runtime that kept fewer cores than this busy on the probe runs its kernels on one thread whatever it is
# given (int16x8's reference kernels: 1.0 with 2 threads, where XNNPACK's float kernels keep 1.8-2.0 busy).
SINGLE_THREADED_CORES = 1.3
APP_CHECK = "mediapipe"  # the checks table's record of the MediaPipe pass (edgetl.export.checks)
_PROBE = 4  # images timed (after one warm-up call of the same size) to estimate a file's cost per image


def verify_file(row: ExportRow, path: Path, meta: dict[str, Any], ref: KerasReference, images: ExportImages,
                max_drop: float | None, threads: int, budget: float | None = DEFAULT_VERIFY_SECONDS,
                reference_graph: bool = False) -> None:
    """Open `path` in its runtime, check its contract, measure it against `ref`, and set row.status.

    `budget`: CPU seconds the held-out passes may take (None: all images whatever the cost); see
    edgetl.export.plan.DEFAULT_VERIFY_SECONDS. `reference_graph`: the file is the float32 graph LiteRT gave the
    reference with (the `tflite none` file): see _reference_graph_pass.
    """
    from edgetl.runtime import open_model

    kind = _kind_of(row)
    try:
        # TensorFlow's thread pools are fixed once it has run an op (it has: the Keras reference), so a
        # SavedModel is measured with the threads TensorFlow already has.
        runner = open_model(path, threads=None if kind.fixed_threads else threads, kind=kind.name)
    except EdgetlError as exc:
        if "flex" in str(exc).lower() or "select tensorflow op" in str(exc).lower():
            # Asked for with --allow-select-ops: stock LiteRT has no Flex delegate, so it cannot be run here.
            row.status = "unverified: needs the Flex delegate, which stock LiteRT lacks"
            return
        row.fail(f"the file does not open in its runtime ({exc})", "verify")
        return
    problems: list[str] = []
    try:
        got = runner.metadata or {}
        for key in CHECKED_METADATA:
            if got.get(key) != meta.get(key):
                problems.append(f"metadata {key} reads back as {got.get(key)!r}, not {meta.get(key)!r}")
        row.input_dtype = runner.input_dtype
        want_dtype = meta.get("input_dtype", "float32")
        if runner.input_dtype != want_dtype:
            problems.append(f"input dtype is {runner.input_dtype}, not {want_dtype}")
        x, y, _ = images.held_out()
        same = reference_graph and ref.litert_check is not None
        idx, sub, cores, known = (np.arange(len(x)), ref.reference, 0.0, {}) if same else \
            _sample(runner, row, x, y, ref.reference, budget)
        capped = "verify_sample" in row.extra  # over the budget: MediaPipe checks fewer images too
        on_app = app_sample(y[idx] if y is not None else None, len(idx),  # positions in idx
                            APP_SAMPLES_CAPPED if capped else None)
        app = _AppPass(path, x[idx[on_app]]) if _app_pass_applies(row) else None
        try:
            split = threads if kind.side_by_side and threads > 1 and cores < SINGLE_THREADED_CORES \
                and len(idx) >= 2 * _VERIFY_BATCH and not same else 1
            if split > 1:
                row.extra["verify_runners"] = split
                log.info("%s %s: its kernels run on one thread; %d interpreters verify it side by side",
                         row.format, row.mode, split)
            probs = _reference_graph_pass(runner, row, x, ref) if same else \
                _with_known(idx, known, lambda rest: _predict(runner, path, x[rest], split))
            m = compare(probs, y[idx] if y is not None else None, sub, None)
        except EdgetlError as exc:  # the outputs do not have the reference's shape
            problems.append(str(exc))
            m = None
        if app is not None:
            app.join()  # before timing: the latency is taken with nothing else running in the process
        if m is not None:
            row.max_abs_diff, row.agreement = m.max_abs_diff, m.agreement
            row.accuracy, row.drop = m.accuracy, m.drop
            row.latency_ms = _batch1_ms(runner, x[idx[:1]])
            kernels = runner.int8_kernels() if get_mode(row.mode).calibrated else None
            if kernels is not None:  # figures that depend on the build machine's CPU say so
                row.extra["int8_kernels"] = kernels
                log.info("%s %s int8 kernels: %s", row.format, row.mode, kernels)
        row.samples = int(len(idx))
    finally:
        runner.close()
    float_model = get_mode(row.mode).float_model
    if problems:
        row.fail("; ".join(problems), "verify")
    elif float_model and row.max_abs_diff is not None and row.max_abs_diff > FLOAT_TOLERANCE:
        row.fail(f"float file differs from Keras by {row.max_abs_diff:.2g} (tolerance {FLOAT_TOLERANCE:g})",
                 "float_parity")
    elif max_drop is not None and not float_model and row.drop is not None and row.drop > float(max_drop) + 1e-9:
        row.fail(f"accuracy drop {row.drop:.4f} > --max-drop {float(max_drop):g}", "max_drop")
    else:
        row.status = "ok"
    if get_check(APP_CHECK).applies(row.format, None) and m is not None and not row.failed:
        app_idx = idx[on_app]
        verify_in_app_runtime(row, path, x[app_idx], y[app_idx] if y is not None else None, m.probs[on_app],
                              list(meta.get("class_names") or []), app)


def _predict(runner: Runner, path: Path, images: np.ndarray, split: int) -> np.ndarray:
    """`runner`'s outputs on `images`; with split > 1, on that many interpreters of the file side by side, each
    on its share of the images (for kernels that use one thread whatever they are given; LiteRT releases the
    GIL while it runs)."""
    if split <= 1:
        return runner.predict(images, batch_size=_VERIFY_BATCH)
    from edgetl.runtime import open_model

    parts = np.array_split(np.arange(len(images)), split)
    others = [open_model(path, threads=1, kind=runner.kind) for _ in range(split - 1)]
    results: list[np.ndarray | None] = [None] * split
    errors: list[EdgetlError] = []

    def run(i: int, r: Runner) -> None:
        try:
            results[i] = r.predict(images[parts[i]], batch_size=_VERIFY_BATCH)
        except EdgetlError as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i + 1, r), name="edgetl-verify", daemon=True)
               for i, r in enumerate(others)]
    try:
        for w in workers:
            w.start()
        run(0, runner)
        for w in workers:
            w.join()
    finally:
        for r in others:
            r.close()
    if errors:
        raise errors[0]
    return np.concatenate([r for r in results if r is not None])


def _with_known(idx: np.ndarray, known: dict[int, np.ndarray],
                predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Outputs for the images `idx`, in its order: those in `known` as they are, the rest from `predict(rest)`."""
    if not known or not len(idx):
        return predict(idx)
    rest = np.array([i for i in idx.tolist() if i not in known], dtype=int)
    fresh = iter(predict(rest)) if len(rest) else iter(())
    return np.stack([known[i] if i in known else next(fresh) for i in idx.tolist()])


def _reference_graph_pass(runner: Runner, row: ExportRow, x: np.ndarray, ref: KerasReference) -> np.ndarray:
    """The file's outputs on every held-out image when it is the graph LiteRT gave the reference with.

    That pass already ran this graph, in this runtime, over every image but the ones Keras checked it on
    (reference.py), so the file runs on those: against Keras's own outputs there, which is the float parity
    check, and the other images' outputs are that pass's.
    """
    assert ref.litert_check is not None
    probs = np.array(ref.reference.probs, dtype=np.float32, copy=True)
    probs[ref.litert_check] = runner.predict(x[ref.litert_check], batch_size=_VERIFY_BATCH)
    row.extra["verify_pass"] = {"run": int(len(ref.litert_check)),
                                "from_reference": int(len(x) - len(ref.litert_check))}
    return probs


def _batch1_ms(runner: Runner, image: np.ndarray) -> float:
    """The reported latency: median milliseconds of one batch-1 call (edgetl.runtime.timing.median_ms)."""
    return median_ms(lambda: runner.predict(image))


class _AppPass:
    """MediaPipe's pass over the images on its own thread, beside LiteRT's (both release the GIL while they
    run: the two passes of a single-threaded int16x8 file took 6.1 s together against 12.2 s one after
    the other, measured)."""

    def __init__(self, path: Path, images: np.ndarray) -> None:
        self.result: AppResult | None = None
        self.error: EdgetlError | None = None
        self._thread = threading.Thread(target=self._run, args=(path, images), name="edgetl-mediapipe", daemon=True)
        self._thread.start()

    def _run(self, path: Path, images: np.ndarray) -> None:
        from edgetl.runtime import app_runtime

        try:
            self.result = app_runtime.classify(path, images)
        except EdgetlError as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join()

    def get(self) -> AppResult:
        """The pass's result (joining the thread first). Raises its EdgetlError."""
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _app_pass_applies(row: ExportRow) -> bool:
    """Whether verify_in_app_runtime will run MediaPipe on the file (a .tflite without int8 input; installed).

    One rule for starting MediaPipe's pass and for counting it in the verification budget."""
    return get_check(APP_CHECK).applies(row.format, None) and row.input_dtype != "int8" and _app_runtime_available()


def _kind_of(row: ExportRow) -> Kind:
    """The runtime kind that opens the row's file (its format's record says which)."""
    return get_kind(get_format(row.format).kind)


def _sample(runner: Runner, row: ExportRow, x: np.ndarray, y: np.ndarray | None, reference: Reference,
            budget: float | None) -> tuple[np.ndarray, Reference, float, dict[int, np.ndarray]]:
    """The held-out images to measure `runner` on: all, or a balanced prefix when all would exceed `budget` seconds.

    Returns their indices, the reference on them, the cores the runtime kept busy on the probe (CPU over
    wall seconds), and the outputs the probe already computed, by image index (the held-out pass skips them:
    int16x8's reference kernels spent 1.6 s on them). A capped sample is recorded in row.extra["verify_sample"]
    with the Keras accuracy on the same images (the drop is against that).
    """
    n = len(x)
    order = balanced_order(y, n)
    probe = order[:min(_PROBE, n)]
    known = dict(zip(probe.tolist(), runner.predict(x[probe], batch_size=_VERIFY_BATCH), strict=True))
    # ...a warm-up: the first call of a size plans the kernels; the timed call is the same size, on the next images.
    if n >= 2 * len(probe):
        probe = order[len(probe):2 * len(probe)]
    # CPU seconds, not wall: the cost of a file's kernels, which other processes on the machine do not
    # change, so a fast file is not capped on a loaded machine. MediaPipe's pass (up to APP_SAMPLES) counts too.
    t0, w0 = time.process_time(), time.perf_counter()
    timed = runner.predict(x[probe], batch_size=_VERIFY_BATCH)
    cpu = time.process_time() - t0
    known.update(zip(probe.tolist(), timed, strict=True))
    cores = cpu / max(time.perf_counter() - w0, 1e-9)
    per_image = cpu / max(1, len(probe))
    app = _app_pass_applies(row)
    keep = n
    over = budget is not None and per_image * (n + (min(n, APP_SAMPLES) if app else 0)) > budget
    if over:
        passes = budget / max(per_image, 1e-12)  # image passes the budget pays for, both runtimes' together
        if app:  # k LiteRT images of a capped file cost k + min(k, APP_SAMPLES_CAPPED) passes
            passes = passes - APP_SAMPLES_CAPPED if passes >= 2 * APP_SAMPLES_CAPPED else passes / 2
        keep = min(n, max(MIN_VERIFY_SAMPLES, int(passes)))
    if not over:
        return np.arange(n), reference, cores, known
    idx = order[:keep]
    sub_acc = top1_accuracy(reference.probs[idx], y[idx]) if y is not None else None
    sub = Reference(probs=reference.probs[idx], accuracy=sub_acc)
    row.extra["verify_sample"] = {"samples": keep, "held_out": n, "cpu_ms_per_image": round(per_image * 1000, 1),
                                  "app_samples": min(keep, APP_SAMPLES_CAPPED) if app else 0,
                                  "budget_cpu_seconds": budget, "keras_accuracy": sub_acc}
    log.info("%s %s: verified on %d of %d held-out images (class-balanced; %.0f CPU ms per image and pass, "
             "budget %g CPU s)", row.format, row.mode, keep, n, per_image * 1000, budget)
    return idx, sub, cores, {i: p for i, p in known.items() if i in set(idx.tolist())}


def app_sample(labels: np.ndarray | None, n: int, limit: int | None = None) -> np.ndarray:
    """Positions (0..n-1, ascending) of the verified images MediaPipe runs: all n, or a class-balanced `limit`
    (default APP_SAMPLES) of them."""
    limit = APP_SAMPLES if limit is None else limit
    if n <= limit:
        return np.arange(n)
    return np.sort(balanced_order(labels, n)[:limit])


def _app_runtime_available() -> bool:
    from edgetl.runtime import app_runtime

    return bool(app_runtime.available())


def verify_in_app_runtime(row: ExportRow, path: Path, images: np.ndarray, labels: np.ndarray | None,
                          litert_probs: np.ndarray, class_names: list[str], started: _AppPass | None = None) -> None:
    """Run a .tflite through MediaPipe Tasks' ImageClassifier: accuracy by label name, top-1 agreement with LiteRT.

    `started`: the same pass already running on a thread (verify_file starts it beside LiteRT's).

    Sets row.extra["mediapipe"]; fails the row (kind "app_runtime") when MediaPipe refuses the file or
    agrees with LiteRT on less than APP_AGREEMENT of the images. An int8-input file is reported, not
    failed: MediaPipe takes uint8 and float32 inputs only.
    """
    from edgetl.runtime import app_runtime

    if not app_runtime.available():
        row.extra["mediapipe"] = {"status": "skipped: mediapipe is not installed"}
        return
    if row.input_dtype == "int8":
        row.extra["mediapipe"] = {"status": "n/a: MediaPipe takes uint8 or float32 input, not int8"}
        return
    try:
        result = started.get() if started is not None else app_runtime.classify(path, images)
    except EdgetlError as exc:
        row.extra["mediapipe"] = {"status": f"failed: {exc}"}
        row.fail(str(exc), "app_runtime")
        return
    litert = [class_names[i] if i < len(class_names) else "" for i in litert_probs.argmax(1)]
    agreement = round(float(np.mean([a == b for a, b in zip(result.names, litert, strict=True)])), 4)
    figures: dict[str, Any] = {"agreement": agreement, "samples": len(result.names),
                               "empty_labels": sum(1 for n in result.names if not n)}
    if labels is not None:
        truth = [class_names[i] for i in labels]
        figures["accuracy"] = round(float(np.mean([a == b for a, b in zip(result.names, truth, strict=True)])), 4)
    figures["status"] = "ok" if agreement >= APP_AGREEMENT else "failed"
    row.extra["mediapipe"] = figures
    if agreement < APP_AGREEMENT:
        row.fail(f"MediaPipe's ImageClassifier gives LiteRT's top-1 label on {agreement:.3f} of the images "
                 f"(needs {APP_AGREEMENT})", "app_runtime")
