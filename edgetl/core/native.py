"""Native libraries' chatter: keep C++ notices off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

# Descriptor 2 is the process's, not a thread's: blocks on several threads share one redirection, made by
# the first to enter and undone by the last to leave (else one thread's exit would restore /dev/null).
_lock = threading.RLock()  # re-entrant: a quiet block may run inside capture_native_stderr
_depth = 0
_stdout_lock = threading.Lock()
_saved: int | None = None


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (EDGETL_DEBUG=1 keeps it).

    TensorFlow, the TFLite converter, tf2onnx and LiteRT print absl logs, MLIR diagnostics and
    delegate notices from C++ straight to the descriptor, where no Python setting reaches them.
    Their errors still arrive as Python exceptions, which callers turn into one line. Safe to nest
    and to use from several threads at once.
    """
    if os.environ.get("EDGETL_DEBUG") or not _enter():
        yield
        return
    try:
        yield
    finally:
        _leave()


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 during the block; the list is filled when it ends.

    For a library whose only account of a decision is its log (ONNX Runtime's execution providers log why
    they reject a node and nothing else reports it). Other threads' quiet_native_stderr blocks wait until
    this one ends, so their output is neither captured nor lost; EDGETL_DEBUG=1 also echoes the text.
    """
    import tempfile

    lines: list[str] = []
    with _lock, tempfile.TemporaryFile() as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real descriptor: nothing to capture
            yield lines
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(ln for ln in text.splitlines() if ln.strip())
            if os.environ.get("EDGETL_DEBUG"):
                sys.stderr.write(text)


@contextlib.contextmanager
def quiet_native_stdout() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the block (EDGETL_DEBUG=1 keeps it).

    For the rare native library that prints a notice to standard output (Qualcomm's QNN HTP backend, once
    when it loads), where it would break a command's JSON output. Python's own sys.stdout is flushed first.
    """
    if os.environ.get("EDGETL_DEBUG"):
        yield
        return
    with _stdout_lock:
        try:
            sys.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError):
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
        finally:
            os.close(devnull)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _enter() -> bool:
    """Redirect descriptor 2 unless another block already has; False when there is no real descriptor."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):  # no real descriptor (some test runners, embedded interpreters)
                return False
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 2)
            finally:
                os.close(devnull)
            _saved = saved
        _depth += 1
        return True


def _leave() -> None:
    """Undo one _enter; the last one restores descriptor 2."""
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(_saved, 2)
            os.close(_saved)
            _saved = None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere).

    tf2onnx frees most of the 640 MB it takes on MobileNetV2 at 224, but glibc keeps the pages, so the
    next step's memory stacks on them: after a collect and a trim the process held 742 MB, not 885
    (measured). The export calls this between its steps to keep its peak down.
    """
    import ctypes
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    # The process's own symbols include the C library's: no library lookup (find_library runs ldconfig).
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # absent outside glibc (musl)
    if trim is not None:
        trim(0)
