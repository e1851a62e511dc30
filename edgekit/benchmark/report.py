"""Bench results for people (terminal table, self-contained HTML with plots) and for
machines (JSON: BenchReport.to_json). The HTML has no external assets: the plots are
inline SVG drawn here, so the file can be attached to a CI run and opened anywhere."""
from __future__ import annotations

import html
import math

from edgekit.benchmark.results import BenchReport, Row


def _fmt(value, pattern: str, empty: str = "-") -> str:
    return empty if value is None else format(value, pattern)


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1024:.1f} KB" if count < 1024 * 1024 else f"{count / 1048576:.2f} MB"


def _quality(row: Row) -> str:
    if "accuracy" in row.task_metrics:
        return f"{row.task_metrics['accuracy'] * 100:.2f}%"
    if "mae" in row.task_metrics:
        return f"MAE {row.task_metrics['mae']:.4g}"
    return "-"


def _drop(row: Row) -> str:
    if row.accuracy_drop_points is not None:
        return f"{row.accuracy_drop_points:+.2f} pt"
    if row.mae_increase_percent is not None:
        return f"{row.mae_increase_percent:+.1f}% MAE"
    return "-"


def _worst(row: Row, key: str, pick=max):
    """The worst figure over the outputs; an output with NaN/Inf makes errors inf."""
    if key in ("rel_l2_error", "max_abs_error") and not all(a["finite"] for a in row.agreement.values()):
        return float("inf")
    values = [a[key] for a in row.agreement.values() if a.get(key) is not None and a.get("exact_match") is None]
    return pick(values) if values else None


HEADER = ["model", "threads", "size", "accuracy", "drop", "top-1 agree", "rel L2", "SQNR dB",
          "cold ms", "p50 ms", "p90 ms", "p99 ms", "rows/s", "peak MB"]


def table_rows(report: BenchReport) -> list[list[str]]:
    rows = []
    for row in [report.reference] + report.artifacts:
        label = row.name if row.name != "savedmodel" else f"savedmodel ({row.device})"
        if row.status != "measured":
            rows.append([label, "-", _size(row.bytes), "skipped: " + (row.reason or "")] + [""] * 10)
            continue
        for threads, latency in row.latency_ms.items():
            agree = row.top1_agreement
            rows.append([
                label, threads, _size(row.bytes), _quality(row), _drop(row),
                "-" if agree is None else f"{agree * 100:.1f}%",
                _fmt(_worst(row, "rel_l2_error"), ".2e"),
                _fmt(_worst(row, "sqnr_db", min), ".1f"),
                f"{latency.cold_ms:.3f}", f"{latency.p50_ms:.3f}", f"{latency.p90_ms:.3f}",
                f"{latency.p99_ms:.3f}", f"{row.throughput_rows_per_s[threads]:.0f}",
                _fmt(row.memory and row.memory.get("peak_rss_mb"), ".0f"),
            ])
            label = ""
    return rows


def describe_device(info: dict) -> str:
    """A device as its bench rows were measured on it: what it is, its cores, its runtime."""
    what = info.get("model") or info.get("cpu") or "unknown board"
    return (f"{what}, {info.get('machine')}, {info.get('cpus')} cores, {info.get('runtime')}; "
            f"{info.get('rows')} rows scored there")


def render_table(report: BenchReport) -> str:
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in [HEADER] + rows if len(r) > i) for i in range(len(HEADER))]
    widths[3] = max(len(HEADER[3]), max((len(r[3]) for r in rows if r[1] != "-"), default=0))
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths)), "  ".join("-" * w for w in widths)]
    for r in rows:
        if r[1] == "-":
            lines.append("  ".join([r[0].ljust(widths[0]), "-".ljust(widths[1]), r[2].ljust(widths[2]), r[3]]))
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for row in report.artifacts:
        if row.status == "measured" and row.reason:  # a thread count or backend that could not run it
            lines.append(f"{row.name}: not measured on {row.reason}")
        if row.status == "measured" and row.convert_status == "failed":
            lines.append(f"{row.name}: convert marked it failed (its check's reason is in the manifest): measured "
                         "here, but not one to ship")
    float32 = {row.machine: row for row in report.artifacts if row.name.split("@")[0] == "tflite_float32"}
    for row in report.artifacts:
        if row.slower_than_float32:
            lines.append(f"{row.name}: slower than float32 on {row.machine or 'this machine'} (p50 "
                         f"{row.best_p50_ms:.3f} against {float32[row.machine].best_p50_ms:.3f} ms): "
                         "it saves size, not time, here")
    settings, data = report.settings, report.data
    lines.extend(f"@{label}: {describe_device(info)}" for label, info in report.devices.items())
    lines.append(
        f"{data['rows']} rows from {data['source']}; latency at batch 1 over {settings['runs']} runs after "
        f"{settings['warmup']} warm-up; rows/s at batch {settings['batch']}; reference on {report.reference.device}"
    )
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------

def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool) -> set[str]:
    """Names of the points no other point beats on both x (lower latency is better) and y."""
    front = set()
    for name, x, y in points:
        dominated = any(
            (ox <= x and (oy >= y if higher_is_better else oy <= y)) and (ox < x or oy != y)
            for other, ox, oy in points if other != name
        )
        if not dominated:
            front.add(name)
    return front


def _svg_scatter(title: str, points: list[tuple[str, float, float]], x_label: str, y_label: str,
                 higher_is_better: bool, plot_id: str, y_from_zero: bool = False) -> str:
    """A scatter plot as inline SVG. Latency spans orders of magnitude between a tiny
    int8 model and a TensorFlow reference, so x is logarithmic when it spans over 10x."""
    width, height, margin = 560, 360, 64
    points = [p for p in points if p[1] is not None and p[1] > 0]
    if not points:
        return f'<p>{html.escape(title)}: nothing measured.</p>'
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    log_x = max(xs) / min(xs) > 10
    if log_x:
        x0, x1 = math.log10(min(xs)) - 0.15, math.log10(max(xs)) + 0.15
    else:
        x0, x1 = 0.0, max(xs) * 1.1
    y_pad = (max(ys) - min(ys)) * 0.15 or abs(max(ys)) * 0.05 or 1.0
    y0, y1 = min(ys) - y_pad, max(ys) + y_pad
    if y_from_zero:
        y0 = 0.0

    def sx(x):
        value = math.log10(x) if log_x else x
        return margin + (value - x0) / (x1 - x0) * (width - 2 * margin)

    def sy(y):
        return height - margin - (y - y0) / (y1 - y0) * (height - 2 * margin)

    front = pareto_front(points, higher_is_better)
    scale = " (log scale)" if log_x else ""
    parts = [f'<svg id="{plot_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="#333"/>',
             f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 18}" text-anchor="middle">{html.escape(x_label + scale)}</text>',
             f'<text x="16" y="{height / 2}" text-anchor="middle" transform="rotate(-90 16 {height / 2})">'
             f'{html.escape(y_label)}</text>']
    for tick in range(5):
        value = x0 + (x1 - x0) * tick / 4
        x = 10 ** value if log_x else value
        y = y0 + (y1 - y0) * tick / 4
        parts.append(f'<text x="{sx(x):.1f}" y="{height - margin + 16}" text-anchor="middle" font-size="11">{x:.3g}</text>')
        parts.append(f'<text x="{margin - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="11">{y:.4g}</text>')
    on_front = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if len(on_front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for _, x, y in on_front)
        parts.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="#d62728" stroke-dasharray="4 3"/>')
    placed: list[tuple[float, float]] = []  # label anchors already used, to keep labels apart
    for name, x, y in sorted(points, key=lambda p: (sy(p[2]), sx(p[1]))):
        colour = "#d62728" if name in front else "#1f77b4"
        parts.append(f'<circle class="point{" pareto-point" if name in front else ""}" data-name="{html.escape(name)}" '
                     f'data-x="{x}" data-y="{y}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour}">'
                     f'<title>{html.escape(name)}: {x:.4g}, {y:.4g}</title></circle>')
        label_x, label_y = sx(x) + 7, sy(y) - 7
        while any(abs(label_y - py) < 12 and abs(label_x - px) < 90 for px, py in placed):
            label_y += 12
        placed.append((label_x, label_y))
        parts.append(f'<text x="{label_x:.1f}" y="{label_y:.1f}" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: BenchReport) -> str:
    measured = [r for r in [report.reference] + report.artifacts if r.status == "measured"]
    if report.data.get("labels") and report.data.get("task") == "classification":
        quality = [(r.name, r.best_p50_ms, r.task_metrics["accuracy"] * 100) for r in measured]
        y_label, higher = "accuracy (%)", True
    elif report.data.get("labels"):
        quality = [(r.name, r.best_p50_ms, r.task_metrics["mae"]) for r in measured]
        y_label, higher = "MAE (lower is better)", False
    else:
        quality = [(r.name, r.best_p50_ms, _worst(r, "rel_l2_error") or 0.0) for r in measured]
        y_label, higher = "relative L2 error vs SavedModel (lower is better)", False
    sizes = [(r.name, r.best_p50_ms, r.bytes / 1024) for r in measured if r.bytes]
    plot_quality = _svg_scatter("Quality against latency", quality, "p50 latency at batch 1 (ms, best thread count)",
                                y_label, higher, "plot-quality-latency")
    plot_size = _svg_scatter("Size against latency", sizes, "p50 latency at batch 1 (ms, best thread count)",
                             "size (KB, smaller is better)", False, "plot-size-latency", y_from_zero=True)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(report))
    machine = ", ".join(f"{k}: {v}" for k, v in report.machine.items() if v is not None)
    devices = "".join(f'<p class="note device">rows named @{html.escape(label)} were measured on that device: '
                      f"{html.escape(describe_device(info))}</p>" for label, info in report.devices.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit bench</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; margin-top: 1.5em; }}
.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>edgekit bench</h1>
<p class="note">{html.escape(report.created_at)} &middot; {html.escape(machine)} &middot;
{report.data['rows']} rows from {html.escape(str(report.data['source']))} &middot; latency at batch 1 over
{report.settings['runs']} runs after {report.settings['warmup']} warm-up &middot; rows/s at batch {report.settings['batch']}</p>
<table id="results"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<div class="plots">
{plot_quality}
{plot_size}
</div>
{devices}
<p class="note">Red points and the dashed line mark the Pareto front: no other model is both faster and better on that plot.</p>
</body></html>
"""
