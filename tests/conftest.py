"""Shared fixtures: the shipped sample models, and tiny models built in seconds.

Conversions are session-scoped: a test that only reads a manifest reuses one run.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "digits_cnn"
IRIS = SAMPLES / "iris_two_inputs"
ONET = SAMPLES / "mtcnn_onet"


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory) -> Path:
    """The digits CNN converted to all five variants, calibrated on its .npz."""
    from edgekit import convert

    out = tmp_path_factory.mktemp("digits") / "out"
    convert(DIGITS / "saved_model", out, calibration=DIGITS / "calibration.npz")
    return out


@pytest.fixture(scope="session")
def lstm_saved_model(tmp_path_factory) -> Path:
    """A Keras 3 LSTM: its TensorListReserve op has no TFLite builtin (the flex path)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 3), name="seq")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(4)(inputs)))
    path = tmp_path_factory.mktemp("lstm") / "saved_model"
    model.export(str(path), verbose=False)
    return path


@pytest.fixture(scope="session")
def lgamma_saved_model(tmp_path_factory) -> Path:
    """lgamma(x + 1): TFLite converts it, but neither tf2onnx nor TF.js has the op."""
    import tensorflow as tf

    class Lgamma(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.math.lgamma(x + 1.0)}

    module = Lgamma()
    path = tmp_path_factory.mktemp("lgamma") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="session")
def while_loop_saved_model(tmp_path_factory) -> Path:
    """Three steps of h = tanh(h w + x) in a tf.while_loop: TFLite converts it with WHILE, and
    TensorFlow 2.21's calibrator dies (SIGSEGV) on it."""
    import tensorflow as tf

    class Loop(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([4, 4], seed=[0, 1]) * 0.3)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            def step(i, h):
                return i + 1, tf.nn.tanh(tf.matmul(h, self.w) + x)

            _, h = tf.while_loop(lambda i, h: i < 3, step, [tf.constant(0), x])
            return {"y": h}

    module = Loop()
    path = tmp_path_factory.mktemp("loop") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    np.savez(path.parent / "calibration.npz", x=np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    return path


def deploy_version(base: Path, number: int, tflite: Path, staging: Path) -> None:
    """A new model version, staged aside and renamed in, as a deploy should do."""
    import shutil

    staging.mkdir()
    shutil.copy(tflite, staging / "model.tflite")
    os.rename(staging, base / str(number))


@pytest.fixture(scope="session")
def digits_rows() -> dict[str, np.ndarray]:
    with np.load(DIGITS / "eval.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _train_diabetes_regressor():
    import keras
    from sklearn.datasets import load_diabetes

    keras.utils.set_random_seed(0)
    features, target = load_diabetes(return_X_y=True)
    features = features.astype(np.float32)
    target = (target / 100).astype(np.float32)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(features, target, epochs=20, verbose=0)
    return model, features, target


@pytest.fixture(scope="session")
def diabetes_out(tmp_path_factory) -> Path:
    """A small regression model on scikit-learn's diabetes data, converted to float32 and float16."""
    import keras
    import tensorflow as tf

    from edgekit import convert

    model, features, target = _train_diabetes_regressor()
    root = tmp_path_factory.mktemp("diabetes")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda features: {"progression": model(features)},
                         input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
    archive.write_out(str(root / "saved_model"), verbose=False)
    np.savez(root / "eval.npz", features=features[:100], y=target[:100])
    manifest = convert(root / "saved_model", root / "out", variants=("float32", "float16"), tfjs=())
    assert manifest.all_ok, [a.error for a in manifest.artifacts]
    return root


@pytest.fixture(scope="session")
def unfrozen_variables_saved_model(tmp_path_factory) -> Path:
    """A Keras 3 model wrapped in a tf.Module and saved with tf.saved_model.save: TFLite
    keeps its weights as variables with no initializer (VAR_HANDLE/READ_VARIABLE)."""
    import tensorflow as tf

    model, _, _ = _train_diabetes_regressor()

    class Regressor(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            return {"progression": self.model(features)}

    path = tmp_path_factory.mktemp("unfrozen") / "saved_model"
    module = Regressor()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory, digits_out) -> Path:
    """A model repository: digits, version 1 = the convert OUT_DIR (int8 served); iris, version 1
    (float32), with a label. Each serve test module (REST, gRPC) gets its own."""
    import json
    import shutil

    from edgekit import convert

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(digits_out, root / "digits" / "1")
    convert(IRIS / "saved_model", root / "iris" / "1", calibration=IRIS / "calibration.npz",
            variants=("float32", "int8"), tfjs=())
    (root / "models.json").write_text(json.dumps({"model_config_list": [
        {"name": "digits", "base_path": "digits"},
        {"name": "iris", "base_path": "iris", "version_labels": {"stable": 1}, "variant": "float32"},
    ]}))
    return root


@pytest.fixture(scope="module")
def server(repo):
    """`edgekit serve` on `repo`, REST and gRPC, for the whole test module."""
    from serving import Server

    running = Server(["--model-config", str(repo / "models.json")])
    yield running
    running.stop()
