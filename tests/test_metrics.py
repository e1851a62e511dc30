from __future__ import annotations

import numpy as np
import pytest

from edgekit.metrics import compare_output


def test_identical_outputs_have_no_error_and_full_agreement():
    reference = np.array([[0.1, 0.9], [0.8, 0.2]])
    check = compare_output(reference, reference)
    assert check.max_abs_error == 0 and check.rel_l2_error == 0 and check.top1_agreement == 1.0


def test_relative_l2_and_top1_agreement():
    reference = np.array([[3.0, 4.0], [4.0, 3.0]])
    actual = np.array([[3.0, 4.0], [3.0, 4.0]])
    check = compare_output(actual, reference)
    assert check.max_abs_error == 1.0
    assert check.rel_l2_error == pytest.approx(np.sqrt(2) / np.sqrt(50))
    assert check.top1_agreement == 0.5


def test_non_classifier_outputs_have_no_top1():
    assert compare_output(np.ones((4, 1)), np.ones((4, 1))).top1_agreement is None
    assert compare_output(np.ones(4), np.ones(4)).top1_agreement is None


def test_zero_reference_is_not_a_division_by_zero():
    assert compare_output(np.zeros(3), np.zeros(3)).rel_l2_error == 0.0
    assert compare_output(np.ones(3), np.zeros(3)).rel_l2_error == float("inf")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare_output(np.zeros((2, 3)), np.zeros((3, 2)))


def test_non_finite_outputs_have_no_error_figures():
    check = compare_output(np.array([[np.nan, 1.0]]), np.array([[0.5, 0.5]]))
    assert check.max_abs_error is None and check.rel_l2_error is None and check.top1_agreement is None
