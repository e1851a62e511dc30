"""TF.js weight storage, as model.json's weights manifest describes it: pure numpy, no Node
and no conversion (test_tfjs.py runs whole graph models in TF.js)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.build.targets.tfjs.weights import quantize, write_variant

WEIGHTS = np.random.default_rng(0).normal(0, 0.5, (64, 10)).astype(np.float32)


def test_float32_is_stored_as_is_little_endian():
    stored, quantization = quantize(WEIGHTS, "float32")
    assert quantization is None and np.array_equal(np.frombuffer(stored, "<f4").reshape(64, 10), WEIGHTS)


def test_float16_halves_the_bytes_within_half_precision():
    stored, quantization = quantize(WEIGHTS, "float16")
    assert quantization == {"dtype": "float16", "original_dtype": "float32"} and len(stored) == WEIGHTS.size * 2
    restored = np.frombuffer(stored, "<f2").astype(np.float32).reshape(64, 10)
    assert np.max(np.abs(restored - WEIGHTS)) <= np.max(np.abs(WEIGHTS)) * 2**-11


def test_uint8_is_affine_per_tensor_within_half_a_step_and_keeps_zero_exact():
    values = np.concatenate([WEIGHTS.ravel(), [0.0]]).astype(np.float32)
    stored, quantization = quantize(values, "uint8")
    assert quantization["dtype"] == "uint8" and len(stored) == values.size
    restored = np.frombuffer(stored, np.uint8) * quantization["scale"] + quantization["min"]
    assert np.max(np.abs(restored - values)) <= quantization["scale"] / 2 + 1e-7
    assert restored[-1] == pytest.approx(0.0, abs=1e-9)  # zero padding and pruned weights stay zero


def test_integer_weights_are_never_quantized():
    ids = np.arange(12, dtype=np.int32)
    for variant in ("float16", "uint8"):
        stored, quantization = quantize(ids, variant)
        assert quantization is None and np.array_equal(np.frombuffer(stored, "<i4"), ids)


def test_a_constant_tensor_quantizes_without_dividing_by_zero():
    stored, quantization = quantize(np.full(5, 3.0, np.float32), "uint8")
    restored = np.frombuffer(stored, np.uint8) * quantization["scale"] + quantization["min"]
    assert np.allclose(restored, 3.0, atol=quantization["scale"])


def test_shards_are_cut_every_shard_bytes_and_hold_the_weights_in_manifest_order(tmp_path):
    weights = [("dense/kernel", WEIGHTS), ("dense/bias", np.zeros(10, np.float32)), ("ids", np.arange(3, dtype=np.int32))]
    write_variant(tmp_path / "tfjs_float32", {"node": []}, {"inputs": {}}, weights, "float32", 1000, "2.21.0", "0.0")
    model = json.loads((tmp_path / "tfjs_float32" / "model.json").read_text())
    (group,) = model["weightsManifest"]
    assert group["paths"] == [f"group1-shard{i}of3.bin" for i in (1, 2, 3)]
    blob = b"".join((tmp_path / "tfjs_float32" / path).read_bytes() for path in group["paths"])
    assert [len((tmp_path / "tfjs_float32" / p).read_bytes()) for p in group["paths"]] == [1000, 1000, 612]
    assert [(w["name"], w["shape"], w["dtype"]) for w in group["weights"]] == [
        ("dense/kernel", [64, 10], "float32"), ("dense/bias", [10], "float32"), ("ids", [3], "int32")]
    assert np.array_equal(np.frombuffer(blob[:2560], "<f4").reshape(64, 10), WEIGHTS)
    assert model["format"] == "graph-model" and model["convertedBy"] == "edgekit 0.0"
