"""The TF.js target: edgekit's graph models load and match in stock TF.js under Node.js."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DIGITS, IRIS

from edgekit import convert
from edgekit.build.targets.tfjs import TOLERANCES, VARIANTS
from edgekit.cli import cli
from edgekit.engines.tfjs import TfjsModel, unavailable_reason
from edgekit.manifest import Manifest
from edgekit.runtime import TFLiteModel

# Only the tests that run TF.js skip without Node.js and the npm packages; the others run anywhere.
needs_node = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"TF.js cannot run here: {unavailable_reason()} (run `npm ci`)")


@pytest.fixture(scope="module")
def samples_tfjs(tmp_path_factory) -> dict[str, Path]:
    """Both sample models in every TF.js variant (and TFLite float32 to compare with)."""
    root = tmp_path_factory.mktemp("tfjs")
    return {name: convert(model / "saved_model", root / name, variants=("float32",), tfjs=VARIANTS) and root / name
            for name, model in (("digits", DIGITS), ("iris", IRIS))}


@needs_node
@pytest.mark.parametrize("sample", ["digits", "iris"])
def test_every_variant_loads_and_matches_in_node(samples_tfjs, sample):
    manifest = Manifest.read(samples_tfjs[sample])
    tfjs = [a for a in manifest.artifacts if a.format == "tfjs"]
    assert [a.variant for a in tfjs] == list(VARIANTS)
    spec = manifest.signatures["serving_default"]
    for artifact in tfjs:
        assert artifact.status == "ok" and artifact.verified, artifact.error
        assert artifact.check.samples == 32
        assert artifact.check.worst_rel_l2 <= TOLERANCES[artifact.variant].rel_l2
        assert sorted(artifact.check.outputs) == sorted(o.name for o in spec.outputs)
        assert [t.name for t in artifact.inputs] == sorted(i.name for i in spec.inputs)
        assert all(t.node for t in artifact.inputs + artifact.outputs)
    assert manifest.versions["tfjs"] == "4.22.0"


@needs_node
def test_cpu_and_wasm_backends_agree_with_litert(samples_tfjs, digits_rows):
    out = samples_tfjs["digits"]
    rows = {"pixels": digits_rows["pixels"][:64]}
    expected = TFLiteModel(out / "model_float32.tflite").run(rows)["probs"]
    for backend in ("cpu", "wasm"):
        with TfjsModel(out / "tfjs_float32", backend) as model:
            probs = model.run(rows)["probs"]
            assert model.runtime.startswith("tfjs 4.22.0 (" + backend)
        assert probs.shape == (64, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, atol=1e-5)
    with TfjsModel(out / "tfjs_uint8", "wasm") as model:
        accuracy = np.mean(model.run(rows)["probs"].argmax(1) == digits_rows["y"][:64])
    assert accuracy >= 0.95


@needs_node
def test_uint8_weights_are_a_quarter_of_float32_and_float16_a_half(samples_tfjs):
    manifest = Manifest.read(samples_tfjs["digits"])

    def shard_bytes(variant: str) -> int:
        return sum(f["bytes"] for f in manifest.artifact(f"tfjs_{variant}").files if f["path"].endswith(".bin"))

    assert 0.24 <= shard_bytes("uint8") / shard_bytes("float32") <= 0.27
    assert 0.49 <= shard_bytes("float16") / shard_bytes("float32") <= 0.51


@needs_node
def test_model_json_is_a_graph_model_with_the_signature_and_quantized_weights(samples_tfjs):
    folder = samples_tfjs["iris"] / "tfjs_uint8"
    model = json.loads((folder / "model.json").read_text())
    assert model["format"] == "graph-model" and model["convertedBy"].startswith("edgekit")
    assert sorted(model["signature"]["inputs"]) == ["petal", "sepal"]
    assert sorted(model["signature"]["outputs"]) == ["embedding", "probs"]
    consts = {n["name"] for n in model["modelTopology"]["node"] if n["op"] == "Const"}
    (group,) = model["weightsManifest"]
    assert {w["name"] for w in group["weights"]} == consts  # every Const's value lives in the shards
    for node in model["modelTopology"]["node"]:
        if node["op"] == "Const":
            assert set(node["attr"]["value"]["tensor"]) <= {"dtype", "tensorShape"}
    for weight in group["weights"]:
        if weight["dtype"] == "float32":
            assert weight["quantization"]["dtype"] == "uint8"
            assert weight["quantization"]["scale"] > 0 and weight["quantization"]["original_dtype"] == "float32"
        else:
            assert "quantization" not in weight  # int32 shapes and indices stay exact


@needs_node
def test_batchnorm_chains_fold_into_fused_depthwise_and_conv_ops(tmp_path):
    """Keras 3 lowers BatchNormalization to Mul/AddV2: edgekit folds it into the filters."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, depth_multiplier=2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    outputs = keras.layers.Dense(4, activation="relu")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics far from the identity, so a wrong fold shows
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 1, beta.shape),
                               rng.normal(0, 1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    model.export(str(tmp_path / "saved_model"), verbose=False)
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("float32",), tfjs=("float32",))
    artifact = manifest.artifact("tfjs_float32")
    assert artifact.status == "ok", artifact.error
    assert artifact.check.worst_rel_l2 < 1e-5
    ops = [n["op"] for n in json.loads((tmp_path / "out" / artifact.file).read_text())["modelTopology"]["node"]]
    assert "FusedDepthwiseConv2dNative" in ops and "_FusedConv2D" in ops and "_FusedMatMul" in ops
    assert not {"Mul", "Relu6", "DepthwiseConv2dNative", "Conv2D", "BiasAdd"} & set(ops)


@needs_node
def test_a_matmul_against_a_transposed_filter_with_a_bias_matches_in_tfjs(tmp_path):
    """helper-14: x @ w^T + b (a tied or transposed weight, transpose_b=True) fused into
    _FusedMatMul with transpose_b gave wrong outputs in TF.js (relative L2 0.62); the fused
    filter is stored as [in, out] instead."""
    import tensorflow as tf

    rng = np.random.default_rng(3)

    class Tied(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rng.normal(size=(16, 8)).astype(np.float32))
            self.b = tf.Variable(rng.normal(size=16).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(x, self.w, transpose_b=True) + self.b}

    module = Tied()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={"serving_default": module.__call__})
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("float32",), tfjs=("float32",))
    artifact = manifest.artifact("tfjs_float32")
    assert artifact.status == "ok", artifact.error
    nodes = json.loads((tmp_path / "out" / artifact.file).read_text())["modelTopology"]["node"]
    fused = next(n for n in nodes if n["op"] == "_FusedMatMul")
    assert not fused["attr"]["transpose_b"].get("b", False)


@needs_node
def test_ops_tfjs_lacks_are_named_and_tflite_still_converts(lgamma_saved_model, tmp_path):
    manifest = convert(lgamma_saved_model, tmp_path / "out", variants=("float32",))
    for variant in ("float32", "uint8"):
        artifact = manifest.artifact(f"tfjs_{variant}")
        assert artifact.status == "failed" and artifact.file is None
        assert "Lgamma" in artifact.error and "@tensorflow/tfjs-converter 4.22.0" in artifact.error
    assert not list((tmp_path / "out").glob("tfjs_*"))  # nothing written for the target
    assert manifest.artifact("float32").status == "ok", manifest.artifact("float32").error


@needs_node
def test_small_shards_split_the_weights_and_still_load(tmp_path):
    result = CliRunner().invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / "out"),
                                      "--variants", "float32", "--tfjs", "float32", "--tfjs-shard-mb", "0.03"])
    assert result.exit_code == 0, result.output
    artifact = Manifest.read(tmp_path / "out").artifact("tfjs_float32")
    shards = [f for f in artifact.files if f["path"].endswith(".bin")]
    assert len(shards) == 4  # 95,800 bytes in 31,457-byte shards
    assert all(f["bytes"] <= int(0.03 * 1024 * 1024) for f in shards)
    assert artifact.status == "ok"


def test_tfjs_none_and_bad_variants(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / "none"),
                                 "--variants", "float32", "--tfjs", "none"])
    assert result.exit_code == 0, result.output
    assert [a.format for a in Manifest.read(tmp_path / "none").artifacts] == ["tflite"]
    for args, message in ((["--tfjs", "int8"], "unknown TF.js variant int8"),
                          (["--tfjs-shard-mb", "0"], "--tfjs-shard-mb must be more than 0")):
        result = runner.invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / "bad"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "bad").exists()


def test_without_node_the_artifact_is_written_unverified_with_a_warning(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with this Python but no node on it
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = dict(os.environ, PATH=str(bin_dir))
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "convert", str(DIGITS / "saved_model"),
                             "-o", str(tmp_path / "out"), "--variants", "float32", "--tfjs", "uint8"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: tfjs_uint8 was not checked: Node.js is not installed" in result.stderr
    artifact = Manifest.read(tmp_path / "out").artifact("tfjs_uint8")
    assert artifact.status == "unverified" and artifact.verified is False
    assert artifact.check.status == "skipped" and "npm ci" in artifact.check.reason
    assert (tmp_path / "out" / artifact.file).is_file()
    assert Manifest.read(tmp_path / "out").versions["tfjs"] == "not run: Node.js is not installed"


@needs_node
def test_the_op_snapshot_matches_the_installed_converter():
    from edgekit.build.targets.tfjs.graph import OPS_SNAPSHOT, supported_ops
    from edgekit.engines.tfjs import node_modules

    installed, source = supported_ops(node_modules())
    snapshot = json.loads(OPS_SNAPSHOT.read_text())
    assert source == f"@tensorflow/tfjs-converter {snapshot['version']}"
    assert set(snapshot["ops"]) == installed  # else: python scripts/update_tfjs_ops.py
    assert {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul", "Relu6"} <= installed


def test_a_writer_that_dies_becomes_a_clear_error(tmp_path):
    from edgekit.build.targets.tfjs.writer import convert_tfjs
    from edgekit.errors import ConversionFailed

    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ConversionFailed, match="tfjs: the TF.js writer exited 1: .*saved_model") as caught:
        convert_tfjs(tmp_path / "not_a_model", "serving_default", ("float32",), 4.0, tmp_path / "out", None)
    assert "TFLite artifacts do not depend on it" in caught.value.hint
    assert not (tmp_path / "out").exists()


@needs_node
def test_an_lstm_tflite_cannot_express_runs_in_tfjs_and_bench_names_the_backend_that_cannot(lstm_saved_model,
                                                                                          tmp_path):
    """Control flow stays a While loop over functions: TF.js runs it (tensorflowjs_converter's
    lowered frames do not). TF.js's wasm backend fails on its TensorList ops, so the check
    falls back to the cpu backend and says so, and bench measures cpu and names wasm."""
    from edgekit import bench
    from edgekit.benchmark.report import render_table

    manifest = convert(lstm_saved_model, tmp_path / "out", variants=("float32",), tfjs=("float32",))
    assert manifest.artifact("float32").status == "failed"  # TensorListReserve: no TFLite builtin
    artifact = manifest.artifact("tfjs_float32")
    assert artifact.status == "ok" and artifact.check.worst_rel_l2 < 1e-5, artifact.error
    assert "checked on TF.js's cpu backend" in artifact.check.reason
    model = json.loads((tmp_path / "out" / artifact.file).read_text())
    assert "While" in {n["op"] for n in model["modelTopology"]["node"]}
    report = bench(tmp_path / "out", runs=5, warmup=1, batch=4, memory=False)
    row = report.row("tfjs_float32")
    assert row.status == "measured" and list(row.latency_ms) == ["cpu"] and row.reason.startswith("wasm: ")
    assert "tfjs_float32: not measured on wasm: " in render_table(report)


@needs_node
def test_integer_inputs_and_outputs_are_int32_in_tfjs_and_match(tmp_path):
    """int64 token ids, uint8 pixels and an int64 argmax: TF.js has no 64-bit or 8-bit
    tensors, so the manifest names them int32 and edgekit feeds them as such. The model is
    a Keras 3 model in a tf.Module, which TFLite cannot freeze but the TF.js writer can."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int64", name="tokens")
    image = keras.Input((4, 4, 3), dtype="uint8", name="image")
    features = [keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens)),
                keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image))]
    model = keras.Model([tokens, image], keras.layers.Dense(3, activation="softmax")(
        keras.layers.Concatenate()(features)))

    class Classifier(tf.Module):
        def __init__(self):
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.int64, name="tokens"),
                                      tf.TensorSpec([None, 4, 4, 3], tf.uint8, name="image")])
        def serve(self, tokens, image):
            probs = self.model([tokens, image])
            return {"probs": probs, "label": tf.argmax(probs, 1)}

    module = Classifier()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={"serving_default": module.serve})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rows.npz", tokens=rng.integers(0, 50, (40, 6)),
             image=rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8))
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("float32",), tfjs=("float32",),
                       calibration=tmp_path / "rows.npz")
    assert "READ_VARIABLE" in manifest.artifact("float32").error
    artifact = manifest.artifact("tfjs_float32")
    assert artifact.status == "ok" and artifact.check.worst_rel_l2 < 1e-5, artifact.error
    assert {t.name: t.dtype for t in artifact.inputs + artifact.outputs} == {
        "image": "int32", "tokens": "int32", "label": "int32", "probs": "float32"}
    assert artifact.check.outputs["label"].max_abs_error == 0


def test_the_pinned_tfjs_version_is_the_one_setup_installs():
    """package.json (npm ci in a checkout) and `edgekit setup-tfjs` (pip installs) pin one version."""
    from edgekit.engines.tfjs import PACKAGES, TFJS_VERSION

    pinned = json.loads((Path(__file__).resolve().parents[1] / "package.json").read_text())["dependencies"]
    assert pinned == {package: TFJS_VERSION for package in PACKAGES}


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm")
def test_setup_tfjs_installs_what_edgekit_looks_for(tmp_path):
    result = CliRunner().invoke(cli, ["setup-tfjs", "--prefix", str(tmp_path / "tfjs")])
    assert result.exit_code == 0, result.output
    assert f"EDGEKIT_NODE_MODULES={tmp_path / 'tfjs' / 'node_modules'}" in result.output
    assert json.loads((tmp_path / "tfjs/node_modules/@tensorflow/tfjs-core/package.json").read_text())["version"] \
        == "4.22.0"
