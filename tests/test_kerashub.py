"""--backbone kerashub:PRESET: KerasHub presets the tests write themselves (random weights, no network).

A tiny ResNet image classifier preset (with its image converter) is trained, fine-tuned and exported;
the files are opened in LiteRT and ONNX Runtime and compared with Keras. Bare-backbone, vision
transformer and text presets, unknown names and failed downloads give one clear line each.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIZE = 32
# A converter no named mode equals: x / 255 - 0.5 per channel, kept inside the model as "preset".
ODD_SCALE, ODD_OFFSET = [1 / 255.0, 1 / 200.0, 1 / 150.0], [-0.5, -0.25, 0.0]


def _resnet_preset(folder: Path, *, scale: object, offset: object, size: int = SIZE, seed: int = 0) -> Path:
    """A small ResNet ImageClassifier preset: config, random weights and its image converter."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(size, size), scale=scale, offset=offset)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    task = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=3, preprocessor=preprocessor)
    task.save_to_preset(str(folder))
    return folder


def _vit_backbone_preset(folder: Path) -> Path:
    """A one-layer ViT backbone saved alone (no converter), with a fixed 32x32 input."""
    import keras_hub

    keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=1, num_heads=2,
                                 hidden_dim=16, mlp_dim=32).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    return {
        "odd": _resnet_preset(root / "odd", scale=ODD_SCALE, offset=ODD_OFFSET),
        "tf": _resnet_preset(root / "tf", scale=1 / 127.5, offset=-1.0),
        "torch": _resnet_preset(root / "torch", scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
                                offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                                               strict=True)]),
        "vit": _vit_backbone_preset(root / "vit"),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.demo import write_demo_data

    dest = tmp_path_factory.mktemp("khdata") / "data"
    write_demo_data(dest, classes=("circles", "squares", "stripes"), per_class=20, seed=1, size_range=(40, 80))
    return dest


@pytest.fixture(scope="module")
def run(presets: dict[str, Path], data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on the 'odd' preset: head on cached features, then two fine-tuning epochs."""
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    out = tmp_path_factory.mktemp("khruns") / "run"
    cfg = TrainConfig(data=str(data), backbone=f"kerashub:{presets['odd']}", epochs=8, batch_size=16, lr=3e-3,
                      fine_tune_layers="2", fine_tune_epochs=2, seed=0, output=str(out))
    train(cfg)
    return out


def test_a_local_preset_is_read_with_its_converter(presets: dict[str, Path]) -> None:
    from edgetl.model.backbones import resolve_backbone

    spec = resolve_backbone(f"kerashub:{presets['odd']}")
    assert spec.kind == "kerashub" and spec.name == str(presets["odd"].resolve())
    assert spec.default_size == SIZE and spec.default_preprocessing == "preset"
    norm = spec.normalization
    # x * scale + offset written as (x - mean) / std
    assert np.allclose(norm["std"], [1 / s for s in ODD_SCALE])
    assert np.allclose(norm["mean"], [-o / s for o, s in zip(ODD_OFFSET, ODD_SCALE, strict=True)])
    # Converters equal to a named mode take its name, so every later stage treats them as for any backbone.
    assert resolve_backbone(f"kerashub:{presets['tf']}").default_preprocessing == "tf"
    assert resolve_backbone(f"kerashub:{presets['torch']}").default_preprocessing == "torch"


def test_a_backbone_saved_alone_warns_and_takes_pixels_as_they_are(presets: dict[str, Path],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from edgetl.model.backbones import resolve_backbone

    spec = resolve_backbone(f"kerashub:{presets['vit']}")
    assert spec.min_size == SIZE and spec.default_size == SIZE  # the ViT's config fixes its input
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        assert spec.default_preprocessing == "none"
    assert "no image converter" in caplog.text and "--preprocessing" in caplog.text


def test_the_preset_preprocessing_is_inside_the_model(presets: dict[str, Path]) -> None:
    """The classifier takes RGB 0..255 and applies the preset's converter itself, as KerasHub's own does."""
    import keras_hub

    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier

    spec = resolve_backbone(f"kerashub:{presets['odd']}")
    base = build_base(spec, weights="imagenet", alpha=None, image_size=SIZE)
    assert not base.trainable
    clf = build_classifier(base, image_size=SIZE, num_classes=3, preprocessing="preset", dropout=0.0,
                           normalization=spec.normalization)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    conv = keras_hub.layers.ImageConverter.from_preset(str(presets["odd"]))
    ref = keras_hub.models.Backbone.from_preset(str(presets["odd"]))(conv(x)).numpy().mean(axis=(1, 2))
    assert np.abs(clf.extractor.predict(x, verbose=0) - ref).max() < 1e-4


def test_train_on_cached_features_then_fine_tune(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["backbone"]["kind"] == "kerashub"
    assert manifest["input"]["preprocessing"] == "preset"
    assert np.allclose(manifest["input"]["normalization"]["std"], [1 / s for s in ODD_SCALE])
    assert manifest["training"]["feature_cache"] is True
    assert manifest["training"]["epochs_run"]["fine_tune"] == 2
    assert manifest["metrics"]["val"] is not None


def test_the_run_loads_in_a_fresh_process(run: Path) -> None:
    """The saved model names KerasHub classes; edgetl loads it in safe mode without the caller importing keras_hub."""
    code = ("import sys; from edgetl.model.classifier import load_model; m = load_model(sys.argv[1]); "
            "print(m.output_shape)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code, str(run / "model.keras")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(None, 3)")


def test_export_tflite_and_onnx_open_in_their_runtimes(run: Path) -> None:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export import export_run
    from edgetl.model.classifier import load_model

    out = run / "export"
    every = ("none", "float16", "dynamic", "int8", "int8-full", "int16x8")
    report = export_run(run, formats=("tflite", "onnx"), quantize=every, output=out, force=True)
    rows = {(r.format, r.mode): Path(r.path) for r in report.rows}
    # Every mode of both formats, each verified by export in its runtime against Keras.
    assert {("tflite", m) for m in every} | {("onnx", m) for m in ("none", "dynamic", "int8")} <= set(rows)
    assert all(r.status == "ok" for r in report.rows), [r.line() for r in report.rows]
    card = (out / "README.md").read_text()
    assert "kerashub" in card and f"`{rows[('onnx', 'int8')].name}`" in card
    x = np.random.default_rng(3).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    ref = load_model(str(run / "model.keras")).predict(x, verbose=0)

    interp = Interpreter(model_path=str(rows[("tflite", "none")]))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    assert np.abs(interp.get_tensor(interp.get_output_details()[0]["index"]) - ref).max() < 1e-4

    sess = ort.InferenceSession(str(rows[("onnx", "none")]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(got - ref).max() < 1e-4

    q = Interpreter(model_path=str(rows[("tflite", "int8-full")]))
    q.allocate_tensors()
    inp = q.get_input_details()[0]
    assert inp["dtype"] == np.uint8  # the full-integer file takes pixels 0..255 as they are
    q.set_tensor(inp["index"], x[:1].round().astype(np.uint8))
    q.invoke()
    assert q.get_tensor(q.get_output_details()[0]["index"]).shape == (1, 3)


def test_qat_refuses_a_preset_with_one_line(run: Path, tmp_path: Path) -> None:
    from edgetl.core.errors import ModelError
    from edgetl.optimize import optimize_run

    with pytest.raises(ModelError) as err:
        optimize_run(run, method="qat", epochs=1, output=tmp_path / "qat")
    msg = str(err.value)
    assert "\n" not in msg and "kerashub" in msg and "post-training" in msg


def test_a_vision_transformer_preset_trains_and_exports(presets: dict[str, Path], data: Path, tmp_path: Path) -> None:
    """Token outputs are averaged into one feature vector; the fixed input size is the default."""
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export import export_run
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    result = train(TrainConfig(data=str(data), backbone=f"kerashub:{presets['vit']}", epochs=2, batch_size=16,
                               seed=0, output=str(tmp_path / "vit")))
    assert result.feature_cache
    report = export_run(tmp_path / "vit", formats=("tflite",), quantize=("none",), force=True)
    interp = Interpreter(model_path=report.rows[0].path)
    interp.allocate_tensors()
    assert tuple(interp.get_input_details()[0]["shape"]) == (1, SIZE, SIZE, 3)


def test_wrong_size_for_a_fixed_size_preset(presets: dict[str, Path]) -> None:
    from edgetl.core.errors import UsageError
    from edgetl.model.backbones import build_base, check_image_size, resolve_backbone

    spec = resolve_backbone(f"kerashub:{presets['vit']}")
    with pytest.raises(UsageError, match="minimum of 32"):
        check_image_size(spec, 16)
    with pytest.raises(UsageError, match="--image-size 32"):
        build_base(spec, weights="none", alpha=None, image_size=48)


def test_bad_presets_give_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras_hub

    from edgetl.core.errors import EdgetlError, ModelError, UsageError
    from edgetl.model.backbones import build_base, resolve_backbone

    def one_line(value: str, kind: type[EdgetlError] = ModelError) -> str:
        with pytest.raises(kind) as err:
            build_base(resolve_backbone(value), weights="none", alpha=None, image_size=SIZE)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "kerashub:/path/to/preset" in one_line("kerashub:", UsageError)
    assert "Did you mean" in one_line("kerashub:resnet_18_imagenett") and "resnet_18_imagenet" in \
        one_line("kerashub:resnet_18_imagenett")
    assert "does not exist" in one_line(f"kerashub:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in one_line(f"kerashub:{tmp_path / 'empty'}")
    keras_hub.models.BertBackbone(vocabulary_size=16, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8,
                                  max_sequence_length=8).save_to_preset(str(tmp_path / "bert"))
    assert "not an image backbone" in one_line(f"kerashub:{tmp_path / 'bert'}")

    # A download that fails (here: the fetch raises as it does offline) names the local-folder way out.
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Failed to resolve 'api.kaggle.com'\n(more lines)")

    monkeypatch.setattr(keras_hub.layers.ImageConverter, "from_preset", offline)
    msg = one_line("kerashub:kaggle://keras/resnetv1/keras/resnet_18_imagenet/3")
    assert "api.kaggle.com" in msg and "save_to_preset" in msg and "--backbone kerashub:DIR" in msg
