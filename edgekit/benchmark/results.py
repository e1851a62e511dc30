"""The bench report (what `edgekit bench --json` writes): typed rows, written and read back,
so budgets and package work on the same objects bench made, as the manifest's reader does
for convert. numpy only: package reads a report without loading bench's pipeline."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.benchmark.timing import Latency
from edgekit.errors import BadInput, NotFound
from edgekit.manifest import known_fields, top1_over_outputs

# A p50 is slower than another when over this much above it, and by more than SLOWER_FLOOR_MS: a
# tiny model's p50 drifts by microseconds between runs (digits on the H200 machine: dynamic-range at
# 0.004 and 0.008 ms against float32's 0.006 in two runs).
SLOWER_MARGIN = 1.05
SLOWER_FLOOR_MS = 0.01


def measurably_slower(p50_ms: float, than_ms: float) -> bool:
    """What bench's slower-than-float32 flag and package's --pick fastest both go by."""
    return p50_ms > max(than_ms * SLOWER_MARGIN, than_ms + SLOWER_FLOOR_MS)

SCHEMA_VERSION = 1
TASKS = ("classification", "regression")  # the task metrics bench scores labels with


@dataclass
class Row:
    """One model measured: the reference SavedModel or one artifact (all thread counts)."""

    name: str
    engine: str
    device: str
    variant: str | None
    bytes: int | None
    status: str  # "measured" | "skipped"
    reason: str | None = None
    convert_status: str | None = None  # the artifact's verdict in the manifest: ok, failed, unverified, skipped
    task_metrics: dict[str, float] = field(default_factory=dict)  # accuracy | mae, rmse
    accuracy_drop_points: float | None = None  # reference accuracy - this (classification)
    mae_increase_percent: float | None = None  # (mae - reference mae) / reference mae (regression)
    agreement: dict[str, dict] = field(default_factory=dict)  # per output, against the reference
    latency_ms: dict[str, Latency] = field(default_factory=dict)  # by thread count ("1", "2"; "auto" for TF)
    throughput_rows_per_s: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] | None = None
    machine: str | None = None  # where it was measured: None here, else a device's label (see devices)
    scored_output: str | None = None  # the output the task metric (or --output) names, if any
    slower_than_float32: bool | None = None  # a TFLite variant's best p50 over float32's on the same machine

    @property
    def top1_agreement(self) -> float | None:
        """The named output's (--output, or the one the labels score), else the worst output's
        (see manifest.top1_over_outputs)."""
        return top1_over_outputs(self.agreement, self.scored_output)

    @property
    def best_p50_ms(self) -> float | None:
        """p50 at batch 1 at the row's best thread count."""
        return min((lat.p50_ms for lat in self.latency_ms.values()), default=None)

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    @classmethod
    def from_dict(cls, document: dict) -> Row:
        values = known_fields(cls, document)
        values["latency_ms"] = {threads: Latency(**figures)
                                for threads, figures in (document.get("latency_ms") or {}).items()}
        return cls(**values)


@dataclass
class BenchReport:
    schema_version: int
    created_at: str
    versions: dict[str, str]
    machine: dict[str, object]
    manifest: str
    data: dict[str, object]
    settings: dict[str, object]
    reference: Row
    artifacts: list[Row]
    devices: dict[str, dict] = field(default_factory=dict)  # label -> what the device says it is

    def to_dict(self) -> dict:
        document = _finite(asdict(self))
        if not document["devices"]:  # only a bench with --device has devices
            del document["devices"]
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> BenchReport:
        """A report `edgekit bench --json` wrote; BadInput naming the file otherwise."""
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BadInput(f"bench report {path} does not exist", "run `edgekit bench OUT_DIR --json FILE`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"cannot read bench report {path}: {exc}", "run `edgekit bench OUT_DIR --json FILE`") from None
        try:
            if document.get("schema_version") != SCHEMA_VERSION:
                raise BadInput(f"{path} is not an edgekit bench report of schema {SCHEMA_VERSION} "
                               f"(schema_version: {document.get('schema_version')!r})",
                               "run `edgekit bench OUT_DIR --json FILE` with this edgekit")
            values = known_fields(cls, document)
            values["reference"] = Row.from_dict(document["reference"])
            values["artifacts"] = [Row.from_dict(row) for row in document["artifacts"]]
            return cls(**values)
        except (AttributeError, KeyError, TypeError) as exc:
            raise BadInput(f"{path} is not an edgekit bench JSON report: {type(exc).__name__}: {exc}",
                           "run `edgekit bench OUT_DIR --json FILE`") from None

    def row(self, name: str) -> Row:
        for row in self.artifacts:
            if name in (row.name, row.variant):
                return row
        raise NotFound(f"no artifact {name!r} in this report", "known: " + ", ".join(r.name for r in self.artifacts))


def _finite(value):
    """JSON has no NaN or Infinity: a figure that is not finite is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
