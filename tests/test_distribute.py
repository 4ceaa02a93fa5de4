"""tf.distribute on the CPU: two logical devices, two local worker processes, mixed precision."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "bundled", "--image-size", "48",
        "--epochs", "15", "--batch-size", "16", "--lr", "3e-3", "--seed", "0"]
RUN_FILES = {"model.keras", "labels.txt", "manifest.json", "history.csv", "metrics.json", "learning_curves.png",
             "confusion_matrix.png", "README.md"}


def edgetl(args: list[str], env: dict[str, str] | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


@contextlib.contextmanager
def held_ports(n: int) -> Iterator[list[int]]:
    """`n` free local ports, held (bound, not listening) until the block ends, so no other process takes one
    between here and the workers' bind. Each is bound with SO_REUSEADDR, as gRPC binds its servers, which lets
    a worker's gRPC server bind and listen on it while this socket holds it (Linux allows it when the other
    socket on the port is not listening)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def mean_accuracy(run: Path) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    return (metrics["val"]["accuracy"] + metrics["test"]["accuracy"]) / 2


def test_mirrored_over_two_logical_cpus_matches_one_device(demo_dir: Path, trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "mirrored"
    proc = edgetl(["train", str(demo_dir), *ARGS, "--strategy", "mirrored", "--output", str(out)],
                  env={"EDGETL_LOGICAL_CPUS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["strategy"] == "mirrored" and manifest["training"]["replicas"] == 2
    assert manifest["training"]["global_batch_size"] == 32 and manifest["config"]["batch_size"] == 16
    assert "2 replica(s)" in proc.stderr and "global batch 32" in proc.stderr
    # Same data and seed on one device (the shared fixture): accuracy within 0.15 on ~20 held-out images.
    assert abs(mean_accuracy(out) - mean_accuracy(trained_run)) <= 0.15


MIRRORED_PASS = """
import json, sys
from pathlib import Path
import numpy as np
from edgetl.core.progress import Reporter
from edgetl.data.scan import scan_folder
from edgetl.model.backbones import build_base, resolve_backbone
from edgetl.model.classifier import build_classifier
from edgetl.train import features
from edgetl.train.distribute import place

data, out = Path(sys.argv[1]), Path(sys.argv[2])
splits = scan_folder(data, val_split=0.2, test_split=0.1, seed=0)
mirrored = place("mirrored", "off")
with mirrored.strategy.scope():
    base = build_base(resolve_backbone("mobilenet_v2"), weights="bundled", alpha=0.35, image_size=48)
    clf = build_classifier(base, image_size=48, num_classes=len(splits.class_names), preprocessing="tf", dropout=0.2)
rows = []  # what the writer receives: each call's row count
write = features.FeatureWriter.write
features.FeatureWriter.write = lambda self, batch: (rows.append(len(batch)), write(self, batch))[1]
names = ["train", "val", "test"]
record = {}
# batch 7: the last global batch (of 5 on the demo's 96 images) is cut unevenly across the two replicas
features.extract_features(clf, splits, names, 48, 7, Reporter(), mirrored, record=record, cache_dir=out / "mirrored")
features.FeatureWriter.write = write
features.extract_features(clf, splits, names, 48, 7, Reporter(), place("default", "off"), engine="keras",
                          cache_dir=out / "single")
print(json.dumps({"rows": rows, "replicas": mirrored.replicas, "record": record}))
"""


def test_mirrored_pass_streams_the_single_device_features_to_the_cache(demo_dir: Path, tmp_path: Path) -> None:
    """Under MirroredStrategy the pass hands the cache one batch at a time (never the whole split), and the cache
    files hold the single-device pass's features."""
    from edgetl.train.features import cache_paths, load_cached

    proc = subprocess.run([sys.executable, "-c", MIRRORED_PASS, str(demo_dir), str(tmp_path)], capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", EDGETL_LOGICAL_CPUS="2"),
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["replicas"] == 2
    total = sum(len(load_cached(tmp_path / "single", name)[1]) for name in ("train", "val", "test"))
    assert sum(got["rows"]) == total and max(got["rows"]) <= 7 and len(got["rows"]) == -(-total // 7), got["rows"]
    assert got["record"]["engine"] == "keras" and "mirrored" in got["record"]["reason"]
    for name in ("train", "val", "test"):
        x_path, y_path = cache_paths(tmp_path / "mirrored", name)
        mirrored, single = np.load(x_path, mmap_mode="r"), load_cached(tmp_path / "single", name)
        assert mirrored.shape == single[0].shape and mirrored.shape[0] > 0
        np.testing.assert_allclose(mirrored, single[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.load(y_path), single[1])


def _two_workers(demo_dir: Path, out: Path, tmp_path: Path, ports: list[int]) -> tuple[list[tuple[str, str]],
                                                                                     list[subprocess.Popen]]:
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker",
                                                                                       "index": index}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config), EDGETL_WORKER_TIMEOUT="120",
                   TMPDIR=str(tmp_path / f"tmp{index}"))
        (tmp_path / f"tmp{index}").mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "edgetl", "train", str(demo_dir), *ARGS, "--epochs", "4",
                                       "--strategy", "multiworker", "--output", str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return [p.communicate(timeout=400) for p in procs], procs


def test_two_workers_train_and_only_the_chief_writes(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mw"
    with held_ports(2) as ports:
        results, procs = _two_workers(demo_dir, out, tmp_path, ports)
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "the chief wrote the run directory" in results[1][0]
    assert {p.name for p in out.iterdir()} == RUN_FILES
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["training"]["replicas"] == 2
    from edgetl.rundir import load_run

    model = load_run(out).load_model()
    assert model.predict(np.zeros((1, 48, 48, 3), "float32"), verbose=0).shape == (1, 4)
    # The other worker trained in a scratch folder under its TMPDIR and removed it.
    assert list((tmp_path / "tmp1").iterdir()) == []


def test_a_worker_alone_fails_with_one_line_not_a_hang(demo_dir: Path, tmp_path: Path) -> None:
    with held_ports(2) as ports:  # the other worker's port is held and never answered
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}
        proc = edgetl(["train", str(demo_dir), *ARGS, "--strategy", "multiworker", "--output", str(tmp_path / "r")],
                      env={"TF_CONFIG": json.dumps(tf_config), "EDGETL_WORKER_TIMEOUT": "8"}, timeout=120)
    assert proc.returncode != 0
    assert "did not connect within 8 s" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_tf_config_is_one_line(demo_dir: Path, tmp_path: Path) -> None:
    proc = edgetl(["train", str(demo_dir), *ARGS, "--strategy", "multiworker", "--output", str(tmp_path / "r")],
                  env={"TF_CONFIG": "{not json"}, timeout=120)
    assert proc.returncode == 2 and "TF_CONFIG is not valid" in proc.stderr and "Traceback" not in proc.stderr


def test_mixed_precision_trains_and_saves_float32(demo_dir: Path, tmp_path: Path) -> None:
    from edgetl.rundir import load_run
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    cfg = TrainConfig(data=str(demo_dir), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=48,
                      epochs=3, batch_size=16, seed=0, mixed_precision="on", fine_tune_layers="2",
                      fine_tune_epochs=1, output=str(tmp_path / "mp"))
    result = train(cfg)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["training"]["mixed_precision"] is True
    model = load_run(result.run_dir).load_model()
    policies = {layer.dtype_policy.name for layer in model.layers}
    assert policies == {"float32"}, policies
    probs = model.predict(np.full((2, 48, 48, 3), 128, "float32"), verbose=0)
    assert probs.dtype == np.float32
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next


def test_the_connect_watchdog_is_gone_when_the_block_ends() -> None:
    # A piped `edgetl train --strategy multiworker ... | tee log` must end when edgetl does, not when the
    # watchdog would have fired (EDGETL_WORKER_TIMEOUT, 120 s by default). The outcome, not a clock: a watchdog
    # left alive writes its error line into the same stderr pipe when its time is up, and the pipe reaches its
    # end only when every holder has closed it, so the output is read to its end and must not hold that line.
    code = ("from edgetl.train.distribute import _watchdog\n"
            "with _watchdog(3, 'the watchdog fired'):\n    pass\nprint('done')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
    assert "the watchdog fired" not in proc.stderr
