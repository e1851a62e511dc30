"""Inputs with unknown axes beyond the batch, e.g. an image model of any size: (None, None, None, 3).

LiteRT sizes such an axis 1 until a call says otherwise, and a model that shrinks its input (an
unpadded, strided conv) cannot run a 1x1 image. Convert, the runtime, bench and serve must take
real sizes, and say what went wrong with a size the model cannot take."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit import convert
from edgekit.manifest import Manifest
from edgekit.runtime import TFLiteModel


@pytest.fixture(scope="module")
def any_size(tmp_path_factory):
    """A SavedModel taking images of any size (a strided unpadded conv needs 3x3 or more), its
    calibration rows at 16x16, and its float32 conversion."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3), name="image")
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(hidden)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalMaxPooling2D()(hidden))
    root = tmp_path_factory.mktemp("any_size")
    keras.Model(inputs, outputs).export(str(root / "saved_model"), verbose=False)
    rng = np.random.default_rng(0)
    np.savez(root / "calibration.npz", image=rng.random((24, 16, 16, 3), dtype=np.float32))
    out = root / "out"
    convert(root / "saved_model", out, calibration=root / "calibration.npz", variants=("float32", "float16"),
            tfjs=("float32",))
    np.savez(root / "eval.npz", image=rng.random((6, 20, 12, 3), dtype=np.float32))
    return root


def test_it_converts_and_passes_its_check_on_real_sizes(any_size):
    manifest = Manifest.read(any_size / "out")
    assert [a.status for a in manifest.artifacts] == ["ok", "ok", "ok"]
    assert manifest.signatures[manifest.signature].inputs[0].shape == [None, None, None, 3]


def test_the_runtime_loads_it_and_runs_any_size_it_can_take(any_size):
    import tensorflow as tf

    model = TFLiteModel(any_size / "out" / "model_float32.tflite")
    reference = tf.saved_model.load(str(any_size / "saved_model")).signatures["serving_default"]
    for shape in [(2, 16, 16, 3), (1, 24, 9, 3), (3, 3, 3, 3)]:
        rows = np.random.default_rng(1).random(shape, dtype=np.float32)
        got = model.run({"image": rows})["output_0"]
        np.testing.assert_allclose(got, reference(image=tf.constant(rows))["output_0"].numpy(), atol=1e-5)
    with pytest.raises(RuntimeError, match="failed to prepare|reshape"):  # 1x1 cannot pass the strided conv
        model.run({"image": np.zeros((1, 1, 1, 3), np.float32)})
    assert model.run({"image": np.zeros((1, 5, 5, 3), np.float32)})["output_0"].shape == (1, 5)  # and after it


def test_bench_measures_it_on_the_rows_given_and_leaves_out_the_memory_probe_it_cannot_run(any_size):
    """The memory probes feed zeros with unknown axes 1 long, which this model cannot run: a '-',
    not a bench that stops (TF.js's probe ended it before)."""
    from edgekit import bench

    report = bench(any_size / "out", eval_data=any_size / "eval.npz", memory=True, runs=5, warmup=1, batch=2,
                   threads=(1,), tfjs_backends=("wasm",))
    assert [row.status for row in report.artifacts] == ["measured"] * 3
    assert all(row.agreement["output_0"]["rel_l2_error"] < 1e-3 for row in report.artifacts)
    assert report.row("tfjs_float32").memory is None


def test_serve_loads_it_answers_real_sizes_and_refuses_one_it_cannot_take(any_size, tmp_path):
    import shutil

    from serving import Server

    shutil.copytree(any_size / "out", tmp_path / "shapes" / "1")
    with Server([str(tmp_path / "shapes")]) as running:
        for size in (16, 7, 160):  # 160x160 under the default memory bounds: its growth was measured at 4 and 8
            status, body = running.client.predict("/v1/models/shapes:predict",
                                                  {"instances": np.zeros((2, size, size, 3)).tolist()})
            assert status == 200 and np.asarray(body["predictions"]).shape == (2, 5), body
        status, body = running.client.predict("/v1/models/shapes:predict", {"instances": [[[[0.0, 0.0, 0.0]]]]})
        assert status == 400 and "cannot take inputs of this size (image [1, 1, 1, 3])" in body["error"]
        status, _, reply = running.client.request("POST", "/v1/models/shapes:predict", _npy(np.zeros((2, 0, 9, 3))),
                                                  "application/x-npy")
        assert status == 400 and b"holds no values (shape (2, 0, 9, 3))" in reply  # was 200 with made-up values
        assert body["error"].count("failed to prepare") == 1  # LiteRT's repeated line, once


def test_without_calibration_convert_says_the_synthetic_rows_are_1_long_on_those_axes(any_size, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(any_size / "saved_model"), "-o", str(tmp_path / "out"),
                                      "--variants", "float32", "--tfjs", "none"])
    assert result.exit_code == 1  # 1x1 check rows: the artifact cannot run them, and fails
    assert "input 'image' gets 1 on its unknown axes ([32, 1, 1, 3])" in result.stderr
    assert "pass --calibration with real rows" in result.stderr


def _export(model, path, rows: np.ndarray, name: str):
    model.export(str(path / "saved_model"), verbose=False)
    np.savez(path / "rows.npz", **{name: rows})
    convert(path / "saved_model", path / "models" / "m" / "1", calibration=path / "rows.npz", variants=("float32",),
            tfjs=())
    return path / "models" / "m"


def test_memory_that_grows_faster_than_the_input_is_bounded_as_it_grows(tmp_path):
    """Self-attention over a sequence of any length: its L x L scores grow with L squared, inside
    XNNPACK's own workspace, which the interpreter's tensors do not show. helper-12 sent L=8000
    under --max-memory-mb 64 and got 200 with 328 MB resident; the estimate is from the heap now,
    at three lengths, so the long one gets 413 and a short one is still answered."""
    import keras

    from serving import Server

    keras.utils.set_random_seed(0)
    seq = keras.Input((None, 16), name="seq")
    scores = keras.layers.Softmax()(keras.ops.matmul(seq, keras.ops.transpose(seq, (0, 2, 1))))
    outputs = keras.ops.mean(keras.ops.matmul(scores, seq), axis=1)
    rows = np.random.default_rng(0).random((16, 24, 16), dtype=np.float32)
    base = _export(keras.Model(seq, outputs), tmp_path, rows, "seq")
    with Server([str(base), "--max-memory-mb", "64", "--interpreters", "1"]) as running:
        for length, expected in ((500, 200), (8000, 413)):
            status, body = running.client.predict("/v1/models/m:predict", {"inputs": np.zeros((1, length, 16)).tolist()})
            assert status == expected, (length, body)
        assert "of interpreter memory for one call" in body["error"]


def test_a_model_that_needs_more_than_32_pixels_loads(tmp_path):
    """Five strided unpadded convs need 63x63 (helper-12's case: it never loaded)."""
    import keras

    from serving import Server

    keras.utils.set_random_seed(0)
    hidden = inputs = keras.Input((None, None, 3), name="image")
    for _ in range(5):
        hidden = keras.layers.Conv2D(2, 3, strides=2)(hidden)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(hidden))
    base = _export(keras.Model(inputs, outputs), tmp_path, np.random.default_rng(0).random((8, 70, 70, 3),
                                                                                              dtype=np.float32), "image")
    with Server([str(base)]) as running:
        status, body = running.client.predict("/v1/models/m:predict", {"instances": np.zeros((1, 64, 64, 3)).tolist()})
        assert status == 200 and np.asarray(body["predictions"]).shape == (1, 3), body
        status, body = running.client.predict("/v1/models/m:predict", {"instances": np.zeros((1, 40, 40, 3)).tolist()})
        assert status == 400 and "at load it ran on image [1, 64, 64, 3]" in body["error"]


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()


def test_a_sequence_model_whose_positions_stop_short_of_the_probe_sizes_is_measured_where_it_runs(tmp_path):
    """Token ids of any length, with 40 learned positions: lengths 64-256 fail, so its memory is
    measured from the smallest length it runs, doubling, instead of all its tensors counted
    against one token (which would have refused any real request)."""
    from pathlib import Path

    import tensorflow as tf

    from edgekit.serve.repository import LoadedVersion, SourceFacts

    rng = np.random.default_rng(0)

    class Positions(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokens = tf.constant(rng.normal(size=(100, 8)).astype(np.float32))
            self.positions = tf.constant(rng.normal(size=(40, 8)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
        def serve(self, ids):
            embedded = tf.gather(self.tokens, ids) + tf.gather(self.positions, tf.range(tf.shape(ids)[1]))[None]
            return {"mean": tf.reduce_mean(embedded, 1)}

    module = Positions()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.serve)
    np.savez(tmp_path / "rows.npz", ids=rng.integers(0, 100, (20, 30)).astype(np.int32))
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("float32",), tfjs=(),
                       calibration=tmp_path / "rows.npz")
    version = LoadedVersion("text", 1, Path(tmp_path / "out" / manifest.artifacts[0].file), 1, 1,
                            source=SourceFacts.of(tmp_path / "out"))
    served = version.signatures["serving_default"]
    assert served.growth == 1.0 and 0 < served.row_bytes(40) < 64 * 1024  # tens of KB for 40 tokens
    assert version.run("serving_default", {"ids": np.ones((2, 40), np.int32)})["mean"].shape == (2, 8)
