"""Budgets that fail a CI build: each broken one becomes a line saying by how much."""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.benchmark.measure import BenchReport, Row
from edgekit.errors import BadInput


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float | None = None  # points of accuracy (classification) or % MAE (regression)
    min_agreement: float | None = None  # top-1 agreement with the SavedModel, in percent
    max_latency_ms: float | None = None  # p50 at batch 1, at the best measured thread count
    max_size_mb: float | None = None  # file size in MiB (1,048,576 bytes)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and value < 0:
                raise BadInput(f"--{name.replace('_', '-')} must not be negative", "e.g. 1.0")

    @property
    def any(self) -> bool:
        return any(value is not None for value in vars(self).values())


def broken_budgets(report: BenchReport, budgets: Budgets) -> list[str]:
    """One line per artifact and broken budget; empty when everything measured fits."""
    lines = []
    for row in report.artifacts:
        if row.status != "measured":
            if budgets.any:
                lines.append(f"{row.name}: not measured ({row.reason}), so its budgets cannot be met")
            continue
        lines.extend(_row_broken(row, budgets, report.data))
    return lines


def _row_broken(row: Row, budgets: Budgets, data: dict) -> list[str]:
    lines = []
    if budgets.max_accuracy_drop is not None:
        if not data.get("labels"):
            lines.append(f"{row.name}: --max-accuracy-drop needs labelled --data (the labels key was not found)")
        elif row.accuracy_drop_points is not None and row.accuracy_drop_points > budgets.max_accuracy_drop:
            lines.append(f"{row.name}: accuracy drop {row.accuracy_drop_points:.2f} pt > {budgets.max_accuracy_drop:g} pt "
                         f"(over by {row.accuracy_drop_points - budgets.max_accuracy_drop:.2f} pt)")
        elif row.mae_increase_percent is not None and row.mae_increase_percent > budgets.max_accuracy_drop:
            lines.append(f"{row.name}: MAE up {row.mae_increase_percent:.2f}% > {budgets.max_accuracy_drop:g}% "
                         f"(over by {row.mae_increase_percent - budgets.max_accuracy_drop:.2f}%)")
    if budgets.min_agreement is not None:
        agree = row.top1_agreement
        if agree is None:
            lines.append(f"{row.name}: --min-agreement needs a classifier-shaped output [batch, classes]")
        elif agree * 100 < budgets.min_agreement:
            lines.append(f"{row.name}: top-1 agreement {agree * 100:.2f}% < {budgets.min_agreement:g}% "
                         f"(short by {budgets.min_agreement - agree * 100:.2f} pt)")
    if budgets.max_latency_ms is not None and row.best_p50_ms > budgets.max_latency_ms:
        lines.append(f"{row.name}: p50 latency {row.best_p50_ms:.3f} ms > {budgets.max_latency_ms:g} ms "
                     f"(over by {row.best_p50_ms - budgets.max_latency_ms:.3f} ms)")
    if budgets.max_size_mb is not None and row.bytes is not None:
        size_mb = row.bytes / 1048576
        if size_mb > budgets.max_size_mb:
            lines.append(f"{row.name}: size {size_mb:.3f} MB > {budgets.max_size_mb:g} MB "
                         f"(over by {size_mb - budgets.max_size_mb:.3f} MB)")
    return lines
