"""Calibration and evaluation rows checked against a signature: pure numpy, no conversion.
A hand-built signature stands in for the SavedModel's, so each case runs in milliseconds."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.build import data
from edgekit.errors import BadInput
from edgekit.manifest import SignatureSpec, TensorSpec

IMAGES = SignatureSpec(inputs=[TensorSpec("pixels", "float32", [None, 8, 8, 1])],
                       outputs=[TensorSpec("probs", "float32", [None, 10])])
TWO_INPUTS = SignatureSpec(inputs=[TensorSpec("ids", "int32", [None, 4]), TensorSpec("mask", "float32", [None, 4])],
                           outputs=[TensorSpec("score", "float32", [None])])
FIXED = SignatureSpec(inputs=[TensorSpec("x", "float32", [1, 3])], outputs=[TensorSpec("y", "float32", [1, 1])])


def save(tmp_path, name: str = "rows.npz", **arrays):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, next(iter(arrays.values())))
    else:
        np.savez(path, **arrays)
    return path


def test_rows_that_fit_are_cast_to_the_signature_dtypes(tmp_path):
    path = save(tmp_path, ids=np.arange(8, dtype=np.int64).reshape(2, 4), mask=np.ones((2, 4), np.float64))
    rows = data.load_samples(path, TWO_INPUTS)
    assert rows["ids"].dtype == np.int32 and rows["mask"].dtype == np.float32 and len(rows["ids"]) == 2


def test_a_npy_feeds_a_one_input_signature(tmp_path):
    rows = data.load_samples(save(tmp_path, "rows.npy", x=np.zeros((5, 8, 8, 1), np.float32)), IMAGES)
    assert rows["pixels"].shape == (5, 8, 8, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((3, 8, 8), np.float32)}, "has shape (3, 8, 8), the signature wants ['N', 8, 8, 1]"),
    ({"pixels": np.zeros((3, 8, 7, 1), np.float32)}, "the signature wants ['N', 8, 8, 1]"),
    ({"pixels": np.full((2, 8, 8, 1), np.nan, np.float32)}, "holds NaN or infinite values"),
    ({"pixels": np.zeros((0, 8, 8, 1), np.float32)}, "holds no samples"),
    ({"pixels": np.array([["a"] * 8] * 8).reshape(1, 8, 8, 1)}, "cannot feed a float32 input"),
])
def test_rows_that_do_not_fit_one_input_name_the_input_and_the_fix(tmp_path, arrays, message):
    with pytest.raises(BadInput) as raised:
        data.load_samples(save(tmp_path, **arrays), IMAGES)
    assert message in raised.value.message and "'pixels'" in raised.value.message
    assert raised.value.hint


def test_integer_rows_outside_the_input_dtype_are_refused_not_wrapped(tmp_path):
    path = save(tmp_path, ids=np.full((2, 4), 2**40, np.int64), mask=np.ones((2, 4), np.float32))
    with pytest.raises(BadInput, match=r"outside the int32 input's range") as raised:
        data.load_samples(path, TWO_INPUTS)
    assert "wrap" in raised.value.hint


def test_inputs_with_different_row_counts_are_refused(tmp_path):
    path = save(tmp_path, ids=np.zeros((2, 4), np.int32), mask=np.zeros((3, 4), np.float32))
    with pytest.raises(BadInput, match=r"different numbers of samples \(\[2, 3\]\)"):
        data.load_samples(path, TWO_INPUTS)


def test_a_missing_file_or_an_unknown_format_says_what_to_pass(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        data.load_samples(tmp_path / "nowhere.npz", IMAGES)
    (tmp_path / "rows.csv").write_text("1,2\n")
    with pytest.raises(BadInput, match=r"unknown format \.csv") as raised:
        data.load_samples(tmp_path / "rows.csv", IMAGES)
    assert ".npz keyed by input name" in raised.value.hint


def test_spread_rows_takes_every_part_of_a_sorted_data_set():
    rows = {"x": np.arange(100)}
    assert data.spread_rows(rows, 5)["x"].tolist() == [0, 25, 50, 74, 99]
    assert data.spread_rows(rows, 500) is rows


def test_synthetic_rows_and_batch_follow_the_signature():
    rows = data.synthetic_samples(TWO_INPUTS, 3)
    assert rows["ids"].shape == (3, 4) and rows["ids"].dtype == np.int32 and rows["mask"].dtype == np.float32
    assert data.batch_size(FIXED) == 1 and data.batch_size(IMAGES) == data.DEFAULT_BATCH
