"""CI budgets on bench rows: each broken budget one line saying by how much (pure logic,
on hand-built rows; test_bench.py and test_packaging.py run them on measured ones)."""
from __future__ import annotations

import pytest

from edgekit.benchmark.budgets import Budgets, budget_reasons
from edgekit.benchmark.results import Row
from edgekit.benchmark.timing import summarize
from edgekit.errors import BadInput


def row(p50: float = 2.0, drop: float | None = 0.5, agreement: float = 0.99, **fields) -> Row:
    measured = Row("tflite_int8", "litert", "CPU", "int8", 2_097_152, "measured", accuracy_drop_points=drop,
                   agreement={"probs": {"top1_agreement": agreement, "confident_rows": 30}}, **fields)
    measured.latency_ms = {"1": summarize(p50 * 2, [p50] * 5, 0), "2": summarize(p50, [p50 * 3] * 5, 0)}
    return measured


def test_a_row_within_every_budget_breaks_none():
    budgets = Budgets(max_accuracy_drop=1, min_agreement=98, max_latency_ms=2.5, max_size_mb=2)
    assert budget_reasons(budgets, 2_097_152, row()) == []


def test_each_broken_budget_says_by_how_much():
    budgets = Budgets(max_accuracy_drop=0.25, min_agreement=99.5, max_latency_ms=1.5, max_size_mb=1.5)
    assert budget_reasons(budgets, 2_097_152, row()) == [
        "size 2.000 MB > 1.5 MB (over by 0.500 MB)",
        "accuracy drop 0.50 pt > 0.25 pt (over by 0.25 pt)",
        "top-1 agreement 99.00% < 99.5% (short by 0.50 pt)",
        "p50 latency 2.000 ms > 1.5 ms (over by 0.500 ms)",  # the best thread count's p50
    ]


def test_regression_rows_are_held_to_their_mae_increase():
    reasons = budget_reasons(Budgets(max_accuracy_drop=5), None, row(drop=None, mae_increase_percent=7.5))
    assert reasons == ["MAE up 7.50% > 5% (over by 2.50%)"]


def test_budgets_a_row_cannot_answer_say_what_is_missing():
    no_labels = budget_reasons(Budgets(max_accuracy_drop=1), None, row(drop=None))
    assert "needs labels" in no_labels[0]
    no_classes = budget_reasons(Budgets(min_agreement=90), None, Row("m", "litert", "CPU", None, 1, "measured"))
    assert no_classes == ["--min-agreement needs a classifier-shaped output [batch, classes]"]
    assert budget_reasons(Budgets(max_latency_ms=1), None, None) == ["the bench report has no figures for it"]
    assert budget_reasons(Budgets(max_size_mb=1), 10, None) == []  # size needs no bench figures


def test_negative_budgets_are_bad_input():
    with pytest.raises(BadInput, match="--max-latency-ms must not be negative"):
        Budgets(max_latency_ms=-1)
