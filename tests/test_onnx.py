"""The ONNX target: tf2onnx + onnx.checker, checked in onnxruntime; its failure path."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import DIGITS, IRIS

from edgekit import bench, convert
from edgekit.build.targets.onnx import newest_opset, unsupported_ops
from edgekit.engines.onnx import OnnxModel
from edgekit.manifest import Manifest


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "digits"
    convert(DIGITS / "saved_model", out, variants=("float32",), calibration=DIGITS / "calibration.npz", tfjs=(), onnx=True)
    return out


def test_digits_converts_checks_and_is_recorded(digits_onnx, digits_rows):
    import onnx

    manifest = Manifest.read(digits_onnx)
    artifact = manifest.artifact("onnx")
    assert artifact.status == "ok", artifact.error
    assert (artifact.format, artifact.file, artifact.opset) == ("onnx", "onnx/model.onnx", newest_opset())
    content = (digits_onnx / artifact.file).read_bytes()
    assert artifact.bytes == len(content) and artifact.sha256 == hashlib.sha256(content).hexdigest()
    onnx.checker.check_model(str(digits_onnx / artifact.file))
    assert [t.name for t in artifact.inputs] == ["pixels"] and [t.name for t in artifact.outputs] == ["probs"]
    assert artifact.check.status == "passed" and artifact.check.worst_rel_l2 < 1e-5
    probs = OnnxModel(digits_onnx / artifact.file).run({"pixels": digits_rows["pixels"]})["probs"]
    assert np.mean(np.argmax(probs, 1) == digits_rows["y"]) > 0.95


def test_two_inputs_dict_outputs_and_an_older_opset(tmp_path):
    manifest = convert(IRIS / "saved_model", tmp_path / "out", variants=("float32",), tfjs=(), onnx=True, onnx_opset=13)
    artifact = manifest.artifact("onnx")
    assert artifact.status == "ok", artifact.error
    assert artifact.opset == 13
    assert sorted(artifact.check.outputs) == ["embedding", "probs"]


def test_ops_tf2onnx_lacks_are_named_and_tflite_still_converts(lgamma_saved_model, tmp_path):
    manifest = convert(lgamma_saved_model, tmp_path / "out", variants=("float32",), tfjs=(), onnx=True)
    onnx_artifact = manifest.artifact("onnx")
    assert onnx_artifact.status == "failed" and onnx_artifact.file is None
    assert "Lgamma" in onnx_artifact.error
    assert not (tmp_path / "out" / "onnx" / "model.onnx").exists()
    assert manifest.artifact("float32").status == "ok", manifest.artifact("float32").error


def test_unsupported_ops_are_read_from_tf2onnx_log():
    log = "x - ERROR - Unsupported ops: Counter({'Lgamma': 1, 'Igamma': 2})\n"
    assert unsupported_ops(log) == ["Igamma", "Lgamma"]
    assert unsupported_ops("all fine") == []


def test_bench_measures_onnx_in_onnxruntime_and_serve_still_picks_tflite(digits_onnx):
    report = bench(digits_onnx, eval_data=DIGITS / "eval.npz", artifact="onnx", runs=10, warmup=1, threads=(1,),
                   batch=8, memory=False)
    (row,) = report.artifacts
    assert row.engine == "onnxruntime" and row.status == "measured"
    assert abs(row.accuracy_drop_points) < 0.5
    manifest = Manifest.read(digits_onnx)
    assert manifest.preferred_artifact().format == "tflite"
    assert manifest.artifact("float32").format == "tflite"
