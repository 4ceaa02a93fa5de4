"""tf.distribute strategies, mixed precision and XLA for training: what TensorFlow provides, chosen for the user."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import EdgetlError, UsageError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger("edgetl")

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
MIXED_PRECISION = ("auto", "on", "off")


class DistributeError(EdgetlError):
    """Workers cannot reach each other, or TF_CONFIG is wrong."""


@dataclass
class Placement:
    """The chosen strategy and what it means for this process."""

    strategy: tf.distribute.Strategy
    name: str  # default | mirrored | multiworker
    replicas: int
    chief: bool  # only the chief writes the run directory
    mixed_precision: bool
    devices: list[str]

    def describe(self, batch_size: int) -> str:
        prec = "mixed_float16" if self.mixed_precision else "float32"
        return (f"strategy {self.name}: {self.replicas} replica(s) on {', '.join(self.devices) or 'CPU'}; "
                f"global batch {batch_size * self.replicas} ({batch_size} per replica, learning rate not scaled); "
                f"{prec}")


def read_tf_config() -> dict[str, Any]:
    """TF_CONFIG as a dict, checked enough to give one clear line when it is wrong."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UsageError("--strategy multiworker needs the TF_CONFIG environment variable (cluster and task). "
                         "See the README section 'Several machines'.")
    try:
        cfg = json.loads(raw)
        cluster = cfg["cluster"]
        task = cfg["task"]
        kind, index = task["type"], int(task["index"])
        if kind not in cluster or index >= len(cluster[kind]):
            raise KeyError(f"{kind}[{index}]")
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"TF_CONFIG is not valid ({type(exc).__name__}: {exc}). It must be JSON with "
                         "'cluster' (e.g. {\"worker\": [\"host1:port\", \"host2:port\"]}) and 'task' "
                         "({\"type\": \"worker\", \"index\": 0}).") from None
    return cfg


def is_chief_task(tf_config: dict[str, Any]) -> bool:
    """The chief is task 'chief', or worker 0 when the cluster names no chief (TensorFlow's convention)."""
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return "chief" not in tf_config["cluster"] and task["type"] == "worker" and int(task["index"]) == 0


def gpu_supports_mixed_precision() -> bool:
    """True when every visible GPU has compute capability 7.0 or newer (tensor cores)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if not cc or tuple(cc) < (7, 0):
            return False
    return True


def place(strategy: str, mixed_precision: str, *, timeout: float = 60.0) -> Placement:
    """Create the strategy and set the Keras dtype policy (call before building any model).

    Args:
        strategy: auto | default | mirrored | multiworker.
        mixed_precision: auto | on | off (auto: on for GPUs of compute capability >= 7.0).
        timeout: seconds a worker waits for the others before failing (multiworker).

    Returns:
        The Placement.

    Raises:
        UsageError: an unknown value or a bad TF_CONFIG.
        DistributeError: the workers did not all answer within the timeout.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy '{strategy}' is not allowed. Use one of {', '.join(STRATEGIES)}.")
    if mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision '{mixed_precision}' is not allowed. Use auto, on or off.")
    import keras
    import tensorflow as tf

    _split_cpu()
    chief = True
    if strategy == "multiworker":
        # Collective ops must be configured before TensorFlow's runtime starts: create this strategy first.
        tf_config = read_tf_config()
        chief = is_chief_task(tf_config)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        # The constructor blocks in C++ until every worker has connected, holding the GIL (no Python
        # thread runs) and ignoring SIGTERM: a watchdog process ends it with one clear line instead.
        with _watchdog(timeout, "the other workers in TF_CONFIG did not connect"):
            strat = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            _wait_for_workers(strat, timeout)
        _patch_keras_multiworker_logs()
    gpus = tf.config.list_logical_devices("GPU")
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "default"
    if strategy == "default":
        strat = tf.distribute.get_strategy()
    elif strategy == "mirrored":
        # Over the visible GPUs; with none, over the CPU (or the logical CPUs a test configured).
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strat = tf.distribute.MirroredStrategy(devices=devices)
    on = mixed_precision == "on" or (mixed_precision == "auto" and gpu_supports_mixed_precision())
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    try:
        devices = list(strat.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list: one replica wherever TF places ops
        devices = [d.name for d in gpus[:1]] or ["CPU"]
    return Placement(strat, strategy, int(strat.num_replicas_in_sync), chief, on, [str(d) for d in devices])


def _patch_keras_multiworker_logs() -> None:
    """Work around a Keras 3 bug under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388).

    Keras averages each step's logs across workers with reduce(MEAN, axis=0), which fails on the
    scalar losses and metrics ("Invalid reduction dimension 0 for input with 0 dimensions"). Averaging
    them with axis=None is what was meant: every worker gets the same global figures, so early
    stopping ends all workers at the same epoch. Other reductions are left to Keras.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "edgetl_patched", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.edgetl_patched = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica


def _split_cpu() -> None:
    """EDGETL_LOGICAL_CPUS=N splits the CPU into N logical devices: MirroredStrategy without GPUs (tests, CI)."""
    n = os.environ.get("EDGETL_LOGICAL_CPUS")
    if not n:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError:
        log.warning("EDGETL_LOGICAL_CPUS ignored: TensorFlow was already initialised in this process")


@contextlib.contextmanager
def _watchdog(timeout: float, what: str) -> Iterator[None]:
    """Kill this process with one error line if the block takes longer than `timeout` seconds (exit 137)."""
    import shlex
    import subprocess

    line = (f"error: {what} within {timeout:.0f} s. Start every worker with the same TF_CONFIG cluster, check "
            "hosts, ports and firewalls, or raise EDGETL_WORKER_TIMEOUT.")
    script = f"sleep {timeout:.0f}; echo {shlex.quote(line)} >&2; kill -KILL {os.getpid()}"
    # Its own process group, killed whole: a `sleep` left behind would hold this process' stderr
    # open, and `edgetl train ... 2>&1 | tee log` would wait for it for `timeout` seconds.
    guard = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(guard.pid, signal.SIGKILL)
        guard.wait()


def _wait_for_workers(strategy: tf.distribute.Strategy, timeout: float) -> None:
    """One small all-reduce, so that an unreachable worker fails here, clearly, not mid-training."""
    import tensorflow as tf

    done = threading.Event()
    error: list[BaseException] = []

    def probe() -> None:
        try:
            value = strategy.run(lambda: tf.constant(1.0))
            strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        except BaseException as exc:  # reported below in the main thread
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=probe, daemon=True).start()
    if not done.wait(timeout) or error:
        reason = f" ({type(error[0]).__name__})" if error else ""
        raise DistributeError(
            f"the other workers in TF_CONFIG did not answer within {timeout:.0f} s{reason}. Start every worker "
            "with the same cluster, check hosts, ports and firewalls, or raise EDGETL_WORKER_TIMEOUT."
        )


def restore_float32_policy() -> None:
    """Exports and saved models are float32 whatever the training precision."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
