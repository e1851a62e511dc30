from __future__ import annotations

import numpy as np
import pytest

from edgekit.agreement import Tolerance, close_call, compare_output, judge


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


def test_spread_error_is_measured_against_how_much_the_output_varies():
    reference = 1000 + np.arange(8, dtype=np.float64)  # a large offset: relative L2 hides the error
    actual = reference + np.array([1, -1] * 4)
    check = compare_output(actual, reference)
    assert check.rel_l2_error < 0.002
    assert check.rms_over_std == pytest.approx(1 / np.std(reference))
    assert check.confident_rows is None  # not probabilities


def test_confident_rows_are_those_the_reference_decided_clearly():
    reference = np.array([[0.9, 0.05, 0.05], [0.45, 0.4, 0.15], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    actual = np.array([[0.9, 0.05, 0.05], [0.35, 0.5, 0.15], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    check = compare_output(actual, reference)
    assert check.top1_agreement == 0.5  # rows 2 and 3 flipped
    assert check.confident_rows == 2 and check.confident_top1_agreement == 0.5  # rows 1 and 3 are confident


@pytest.mark.parametrize("reference", [np.array([[2.0, -1.0], [0.5, 3.0]]),  # logits
                                       np.array([[0.5, 0.6], [0.2, 0.3]]),  # rows that do not sum to 1
                                       np.array([[1.2, -0.2], [0.5, 0.5]])])  # negative entries
def test_only_probability_rows_get_confident_figures(reference):
    check = compare_output(reference, reference)
    assert check.top1_agreement == 1.0 and check.confident_rows is None


TOLERANCE = Tolerance(rel_l2=0.15, spread=0.05)


def test_judge_passes_close_calls_that_flip_and_fails_a_flipped_confident_decision():
    reference = np.array([[0.9, 0.1]] * 50 + [[0.45, 0.55]] * 50)
    close_calls_flipped = reference.copy()
    close_calls_flipped[50:] = [0.55, 0.45]
    assert judge({"probs": compare_output(close_calls_flipped, reference)}, TOLERANCE, "int8") is None
    confident_flipped = reference.copy()
    confident_flipped[0] = [0.4, 0.6]
    reason = judge({"probs": compare_output(confident_flipped, reference)}, TOLERANCE, "int8")
    assert reason == "1 of 50 confident decisions flipped (rows where the SavedModel's top class led by at least 0.5)"


def test_judge_fails_an_error_that_is_small_against_the_values_but_large_against_their_spread():
    reference = np.stack([1000 + np.arange(8.0), np.arange(8.0)], axis=1)  # two columns: not probabilities
    actual = reference + 0.2 * np.array([1, -1] * 8).reshape(8, 2)
    reason = judge({"box": compare_output(actual, reference), "ok": compare_output(reference, reference)},
                   TOLERANCE, "int8")
    assert reason.startswith("output box: error is ") and "of the output's spread" in reason
    assert "over the int8 tolerance 5%" in reason


def test_judge_names_non_finite_outputs_and_relative_l2_over_tolerance():
    reference = np.array([[0.5, 0.5]])
    assert "holds NaN" in judge({"y": compare_output(np.array([[np.nan, 1.0]]), reference)}, TOLERANCE, "int8")
    reason = judge({"y": compare_output(np.array([[1.0, 0.0]]), reference)}, TOLERANCE, "int8")
    assert reason.startswith("relative L2 error 1 exceeds the int8 tolerance 0.15")


def test_a_constant_reference_has_no_spread_figure_and_is_judged_by_relative_l2():
    check = compare_output(np.full(4, 2.001), np.full(4, 2.0))
    assert check.rms_over_std is None
    assert judge({"y": check}, TOLERANCE, "int8") is None


def test_float32_rounding_of_a_large_offset_is_not_a_failure_against_the_spread():
    reference = (1e6 + np.linspace(0, 1, 64)).astype(np.float32).astype(np.float64)  # spread 0.29, step 0.0625
    rounded = reference + 0.0625 * np.array([1, -1] * 32)  # one float32 step off everywhere
    check = compare_output(rounded, reference)
    assert check.rms_over_std > 0.05 and check.float32_ulps == 1.0
    assert judge({"y": check}, Tolerance(1e-3, 0.01), "float32") is None
    far = compare_output(reference + 2.0 * np.array([1, -1] * 32), reference)  # 32 steps: a real error
    assert "of the output's spread" in judge({"y": far}, Tolerance(1e-3, 0.01), "float32")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_integer_and_bool_outputs_are_compared_value_by_value(dtype):
    """A class index or a thresholded flag: a value that differs is a decision flipped at a
    boundary. The share that match is the figure, not an L2 error or a spread."""
    reference = np.array([0, 1, 1, 0, 1, 1, 0, 1, 0, 1] * 10).astype(dtype)
    actual = reference.copy()
    actual[:3] = ~actual[:3] if dtype is bool else 1 - actual[:3]
    check = compare_output(actual, reference)
    assert check.exact_match == pytest.approx(0.97)
    assert check.rms_over_std is None and check.top1_agreement is None and check.float32_ulps is None


def test_judge_lets_as_many_integer_values_flip_as_the_variants_spread_tolerance():
    reference = np.arange(100) % 7
    three = reference.copy()
    three[:3] += 1
    eight = reference.copy()
    eight[:8] += 1
    tolerance = Tolerance(rel_l2=0.05, spread=0.05)
    assert judge({"label": compare_output(three, reference)}, tolerance, "int8") is None
    assert judge({"label": compare_output(eight, reference)}, tolerance, "int8") == (
        "8.0% of its integer values differ from the SavedModel's, over the int8 tolerance 5%")
    assert judge({"label": compare_output(three, reference)}, Tolerance(1e-3, 0.01), "float32") is not None


def test_a_close_call_is_a_figure_near_its_limit_and_nothing_decisive():
    """Near the limit either way, more rows should decide; clearly within, clearly over, NaN or a
    flipped confident decision: no row count changes the verdict."""
    reference = np.linspace(0.0, 1.0, 200).reshape(50, 4)
    tolerance = Tolerance(rel_l2=1.0, spread=0.05)

    def offset(spread_fraction: float):
        noise = np.random.default_rng(0).normal(size=reference.shape)
        noise *= spread_fraction * np.sqrt(np.sum((reference - reference.mean(0)) ** 2) / np.sum(noise**2))
        return {"box": compare_output(reference + noise, reference)}

    assert [close_call(offset(f), tolerance) for f in (0.02, 0.04, 0.058, 0.07, 0.09)] == [
        False, True, True, True, False]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]])
    flipped = probabilities[:, ::-1].copy()
    assert not close_call({"probs": compare_output(flipped, probabilities)}, Tolerance(1.0, 0.05))
    labels = np.arange(100) % 3
    four = labels.copy()
    four[:4] += 1
    assert close_call({"label": compare_output(four, labels)}, tolerance)  # 4% of values, against 5%
