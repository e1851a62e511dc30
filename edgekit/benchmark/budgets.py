"""Budgets that fail a CI build: each broken one becomes a line saying by how much.

One checker for bench and package: it takes a report row (results.Row), so package applies
the same rules to a report it read back (BenchReport.read).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.benchmark.results import BenchReport, Row
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

    @property
    def need_figures(self) -> bool:
        """Budgets only a bench run can answer (all but size)."""
        return any(v is not None for v in (self.max_accuracy_drop, self.min_agreement, self.max_latency_ms))


def budget_reasons(budgets: Budgets, size_bytes: int | None, row: Row | None) -> list[str]:
    """Why an artifact breaks the budgets (empty when it fits). `row` is its measured
    report row, or None when there are no bench figures for it."""
    reasons = []
    if budgets.max_size_mb is not None and size_bytes is not None and size_bytes / 1048576 > budgets.max_size_mb:
        size_mb = size_bytes / 1048576
        reasons.append(f"size {size_mb:.3f} MB > {budgets.max_size_mb:g} MB "
                       f"(over by {size_mb - budgets.max_size_mb:.3f} MB)")
    if not budgets.need_figures:
        return reasons
    if row is None:
        return reasons + ["the bench report has no figures for it"]
    if budgets.max_accuracy_drop is not None:
        drop, mae_up = row.accuracy_drop_points, row.mae_increase_percent
        if drop is None and mae_up is None:
            reasons.append("no accuracy figure: --max-accuracy-drop needs labels: bench with --data FILE.npz "
                           "holding them under 'y' (or name their key with --labels-key)")
        elif drop is not None and drop > budgets.max_accuracy_drop:
            reasons.append(f"accuracy drop {drop:.2f} pt > {budgets.max_accuracy_drop:g} pt "
                           f"(over by {drop - budgets.max_accuracy_drop:.2f} pt)")
        elif mae_up is not None and mae_up > budgets.max_accuracy_drop:
            reasons.append(f"MAE up {mae_up:.2f}% > {budgets.max_accuracy_drop:g}% "
                           f"(over by {mae_up - budgets.max_accuracy_drop:.2f}%)")
    if budgets.min_agreement is not None:
        agree = row.top1_agreement
        if agree is None:
            reasons.append("--min-agreement needs a classifier-shaped output [batch, classes]")
        elif agree * 100 < budgets.min_agreement:
            reasons.append(f"top-1 agreement {agree * 100:.2f}% < {budgets.min_agreement:g}% "
                           f"(short by {budgets.min_agreement - agree * 100:.2f} pt)")
    if budgets.max_latency_ms is not None and row.best_p50_ms > budgets.max_latency_ms:
        p50 = row.best_p50_ms
        reasons.append(f"p50 latency {p50:.3f} ms > {budgets.max_latency_ms:g} ms "
                       f"(over by {p50 - budgets.max_latency_ms:.3f} ms)")
    return reasons


def broken_budgets(report: BenchReport, budgets: Budgets) -> list[str]:
    """One line per artifact and broken budget; empty when everything measured fits. Artifacts
    convert failed or skipped are passed over (see passed_over); one that convert passed but bench
    could not measure breaks them, and so does a run that measured nothing convert passed."""
    lines = []
    for row in report.artifacts:
        if passed_over(row):
            continue
        if row.status != "measured":
            if budgets.any:
                lines.append(f"{row.name}: not measured ({row.reason}), so its budgets cannot be met")
            continue
        lines.extend(f"{row.name}: {reason}" for reason in budget_reasons(budgets, row.bytes, row))
    if budgets.any and not any(row.status == "measured" and not passed_over(row) for row in report.artifacts):
        lines.append("no artifact that convert passed was measured, so no budget can be met")
    return lines


def passed_over(row: Row) -> bool:
    """An artifact convert failed or skipped: not one to ship (package refuses it), and convert
    already exited 1 for it. Bench may still measure one with a file; budgets do not gate on it."""
    return row.convert_status in ("failed", "skipped")  # bench sets it on every artifact's row


def check_budgets_apply(budgets: Budgets, spec) -> None:
    """Refuse, before measuring, a budget no artifact of this signature could ever meet."""
    if budgets.min_agreement is not None and not any(o.shape and len(o.shape) == 2 and (o.shape[1] or 0) > 1
                                                     for o in spec.outputs):
        shapes = ", ".join(f"{o.name} {o.shape}" for o in spec.outputs)
        raise BadInput(f"--min-agreement needs a classifier-shaped output [batch, classes]; this model's are: {shapes}",
                       "use --max-accuracy-drop with labels (for regression, the % MAE gained)")
