"""`edgekit bench`: every artifact of a convert OUT_DIR against the original SavedModel,
on the same inputs: task metric, agreement and errors, latency, throughput, size, memory."""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit import agreement
from edgekit.build import data
from edgekit._version import __version__
from edgekit.benchmark.budgets import top1_agreement
from edgekit.benchmark.runners import RUNNERS, Runner, TensorFlowRunner
from edgekit.benchmark.timing import Latency
from edgekit.errors import BadInput, EdgekitError, NotFound
from edgekit.manifest import Manifest, SignatureSpec
from edgekit.native_logs import captured_native_output

SCHEMA_VERSION = 1
TASKS = ("classification", "regression")


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
        """The named output's (--output, or the one the labels score), else the worst output's."""
        return top1_agreement(asdict(self))

    @property
    def best_p50_ms(self) -> float | None:
        return min((lat.p50_ms for lat in self.latency_ms.values()), default=None)


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


Progress = Callable[[str], None]


def bench(
    out_dir: str | Path,
    *,
    eval_data: str | Path | None = None,
    labels_key: str | None = None,
    task: str | None = None,
    output: str | None = None,
    runs: int = 100,
    warmup: int = 10,
    threads: tuple[int, ...] | None = None,
    tfjs_backends: tuple[str, ...] = ("wasm", "cpu"),
    batch: int = 32,
    artifact: str | None = None,
    memory: bool = True,
    progress: Progress | None = None,
    quiet: bool = True,
    devices: tuple[str, ...] = (),
    api_key: str | None = None,
) -> BenchReport:
    """Measure the artifacts in OUT_DIR (or only `artifact`) against the SavedModel.

    TFLite and ONNX artifacts are timed at each of `threads`; TF.js artifacts on each of
    `tfjs_backends` in Node.js (one thread: TF.js's wasm backend runs threads only in a
    browser with cross-origin isolation)."""
    say = progress or (lambda message: None)
    manifest = Manifest.read(out_dir)
    out_dir = Path(out_dir)
    threads = tuple(threads or sorted({1, os.cpu_count() or 1}))
    if runs < 1 or warmup < 0 or batch < 1 or any(t < 1 for t in threads):
        raise BadInput("--runs, --batch and --threads must be at least 1, --warmup at least 0", "e.g. --runs 100")
    unknown = [b for b in tfjs_backends if b not in ("cpu", "wasm")]
    if unknown or not tfjs_backends:
        raise BadInput(f"unknown TF.js backend {', '.join(unknown) or '(none)'}", "use --tfjs-backends wasm,cpu")
    if task is not None and task not in TASKS:
        raise BadInput(f"unknown task {task!r}", "use classification or regression")
    chosen = [manifest.artifact(artifact)] if artifact else list(manifest.artifacts)
    spec = manifest.signatures[manifest.signature]
    inputs, labels, data_record = _load_eval(eval_data, labels_key, manifest, spec)
    output, task = _pick_task(spec, labels, task, output)
    data_record.update({"task": task, "output": output})
    _check_source_unchanged(manifest)

    say(f"reference: loading {manifest.source['path']}")
    with captured_native_output(quiet):  # TensorFlow's import notes
        reference_runner = TensorFlowRunner(Path(manifest.source["path"]), manifest.signature)
    row_batch = data.batch_size(spec)
    reference_outputs = reference_runner.run_batches(inputs, row_batch)
    reference = _row("savedmodel", reference_runner, None, _dir_bytes(Path(manifest.source["path"])))
    _score(reference, reference_outputs, None, labels, task, output)
    say(f"reference on {reference_runner.device}: timing")
    _time(reference, {"auto": reference_runner}, inputs, warmup, runs, batch, spec)  # TF picks its threads
    if memory:
        reference.memory = reference_runner.memory()

    rows = []
    for number, entry in enumerate(chosen, 1):
        prefix = f"[{number}/{len(chosen)}] {entry.name}"

        def skip(reason: str) -> None:
            """Name the artifact in the report and go on: never crash on one bench cannot run."""
            rows.append(Row(entry.name, entry.format, "CPU", entry.variant, entry.bytes, "skipped", reason=reason))
            say(f"{prefix}: skipped ({reason})")

        runner_class = RUNNERS.get(entry.format)
        if entry.file is None or not (out_dir / entry.file).is_file():
            skip(f"no file: convert marked it {entry.status}")
            continue
        if entry.requires_flex:
            skip("requires flex ops, which no Python LiteRT runtime can run")
            continue
        if runner_class is None:
            skip(f"no runner for {entry.format} artifacts yet")
            continue
        settings = tfjs_backends if entry.format == "tfjs" else threads  # what each timing row varies
        runners: dict[str, Runner] = {}
        try:
            with captured_native_output(quiet):  # LiteRT's delegate notes
                for setting in settings:
                    runners[str(setting)] = runner_class(out_dir / entry.file, entry.signature, setting)
        except EdgekitError as exc:
            for runner in runners.values():
                runner.close()
            skip(exc.message)
            continue
        try:
            # scored on the first setting that can run it (TF.js: wasm, else cpu); a setting
            # that cannot run it is dropped and named in the row's reason
            preferred = str(settings[0] if entry.format == "tfjs" else max(threads))
            outputs, dropped = None, []
            say(f"{prefix}: accuracy on {data_record['rows']} rows")
            for setting in sorted(runners, key=lambda key: key != preferred):
                try:
                    outputs = runners[setting].run_batches(inputs, row_batch)
                    first = runners[setting]
                    break
                except EdgekitError as exc:
                    dropped.append(f"{setting}: {exc.message}")
                    runners.pop(setting).close()
            if outputs is None:
                skip("cannot run it: " + "; ".join(dropped))
                continue
            row = _row(entry.name, first, entry.variant, entry.bytes)
            row.reason = "; ".join(dropped) or None
            _score(row, outputs, reference_outputs, labels, task, output, reference)
            say(f"{prefix}: latency at {'backends' if entry.format == 'tfjs' else 'threads'} {', '.join(runners)}")
            _time(row, runners, inputs, warmup, runs, batch, spec)
            if memory:
                row.memory = first.memory()
        finally:
            for runner in runners.values():
                runner.close()
        rows.append(row)

    measured_devices = {}
    for url in devices:
        measured_devices.update(_bench_on_device(url, api_key, chosen, out_dir, inputs, labels, task, output,
                                                 reference_outputs, reference, rows, threads, runs, warmup, say))
    rows = _side_by_side(rows)
    _flag_slower_than_float32(rows)

    return BenchReport(
        schema_version=SCHEMA_VERSION,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        versions={"edgekit": __version__, **{k: v for k, v in manifest.versions.items() if k != "edgekit"}},
        machine={"cpus": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor() or None,
                 "python": platform.python_version(), "reference_device": reference_runner.device},
        manifest=str((out_dir / "manifest.json").resolve()),
        data=data_record,
        settings={"runs": runs, "warmup": warmup, "threads": list(threads), "tfjs_backends": list(tfjs_backends),
                  "batch": batch, "latency_batch": 1, "memory": memory},
        reference=reference,
        artifacts=rows,
        devices=measured_devices,
    )


# Rows sent to a device, at most: the workstation scores them all, the device its share.
DEVICE_ROW_BYTES = 8 << 20


def _bench_on_device(url, api_key, chosen, out_dir, inputs, labels, task, output, reference_outputs, reference,
                     rows, threads, runs, warmup, say) -> dict[str, dict]:
    """Each TFLite artifact measured on a device's `edgekit serve --allow-bench`: its latency,
    memory and outputs there, scored here against the SavedModel on the same rows."""
    from edgekit.benchmark.remote import DeviceClient
    from edgekit.benchmark.timing import Latency

    client = DeviceClient(url, api_key)
    info = client.info()["device"]
    say(f"device {client.label}: {info.get('model') or info.get('cpu') or info.get('machine')}, "
        f"{info.get('cpus')} cores, {info.get('runtime')}")
    total = len(next(iter(inputs.values())))
    per_row = max(1, sum(v[:1].nbytes for v in inputs.values()))
    count = max(1, min(total, DEVICE_ROW_BYTES // per_row))
    subset = {k: v[:count] for k, v in inputs.items()}
    device_threads = sorted({t for t in threads if t <= (info.get("cpus") or 1)} | {info.get("cpus") or 1})
    for entry in chosen:
        if entry.format != "tflite" or entry.file is None or entry.requires_flex or entry.status == "failed":
            continue
        say(f"device {client.label}: {entry.name} on {count} rows, threads {device_threads}")
        row = Row(f"{entry.name}@{client.label}", "litert", "CPU", entry.variant, entry.bytes, "measured",
                  machine=client.label)
        try:
            result, outputs = client.bench(out_dir / entry.file, entry.sha256, entry.signature, subset,
                                           device_threads, runs, warmup)
        except EdgekitError as exc:
            row.status, row.reason = "skipped", exc.message
            rows.append(row)
            continue
        row.engine = (result["device"].get("runtime") or "litert").split()[0]
        subset_labels = labels[:count] if labels is not None else None
        _score(row, outputs, {k: v[:count] for k, v in reference_outputs.items()}, subset_labels, task, output,
               reference if labels is None else _reference_on(reference, reference_outputs, labels, count, task,
                                                              output))
        row.latency_ms = {t: Latency(**figures) for t, figures in result["latency_ms"].items()}
        row.throughput_rows_per_s = {t: 1000.0 / lat.mean_ms for t, lat in row.latency_ms.items() if lat.mean_ms}
        row.memory = result.get("memory")
        row.reason = result.get("note") if result.get("served_meanwhile") else None
        rows.append(row)
    return {client.label: {**info, "url": url, "rows": count}}


def _reference_on(reference: Row, reference_outputs, labels, count: int, task, output) -> Row:
    """The reference scored on the device's rows only, so an accuracy drop compares like with like."""
    subset = Row(reference.name, reference.engine, reference.device, None, None, "measured")
    _score(subset, {k: v[:count] for k, v in reference_outputs.items()}, None, labels[:count], task, output)
    return subset


# A variant is slower than float32 when its best p50 is over this much above float32's.
SLOWER_MARGIN = 1.05


def _flag_slower_than_float32(rows: list[Row]) -> None:
    """Quantized is not always faster: on x86, dynamic-range runs slower than float32 (its
    activations are quantized at every call). Flag, per machine, each TFLite variant whose
    best p50 is above float32's there."""
    baseline = {row.machine: row.best_p50_ms for row in rows
                if row.engine != "tfjs" and row.variant == "float32" and row.name.startswith("tflite_")
                and row.status == "measured" and row.best_p50_ms}
    for row in rows:
        if row.name.startswith("tflite_") and row.status == "measured" and row.machine in baseline \
                and row.variant != "float32" and row.best_p50_ms:
            row.slower_than_float32 = row.best_p50_ms > baseline[row.machine] * SLOWER_MARGIN


def _side_by_side(rows: list[Row]) -> list[Row]:
    """Each artifact's device rows right after its own row."""
    local = [row for row in rows if row.machine is None]
    remote = [row for row in rows if row.machine is not None]
    ordered = []
    for row in local:
        ordered.append(row)
        ordered.extend(r for r in remote if r.name.split("@")[0] == row.name)
    return ordered + [r for r in remote if r not in ordered]


def _row(name: str, runner: Runner, variant: str | None, size: int | None) -> Row:
    return Row(name=name, engine=runner.engine, device=runner.device, variant=variant, bytes=size, status="measured")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_source_unchanged(manifest: Manifest) -> None:
    from edgekit.build import savedmodel

    path = Path(manifest.source["path"])
    if not (path / "saved_model.pb").is_file():
        raise BadInput(f"the SavedModel the manifest names ({path}) is gone",
                       "bench needs the original model as its reference; convert again from where it now lives")
    if savedmodel.source_identity(path) != manifest.source:
        raise BadInput(f"the SavedModel at {path} changed after it was converted",
                       "convert it again, so the artifacts and the reference are the same model")


def _load_eval(eval_data, labels_key: str, manifest: Manifest, spec: SignatureSpec):
    """Rows to measure on: --data, else the calibration set convert used, else synthetic.
    Labels: the .npz's `labels_key`, or its "y" when none is named."""
    labels = None
    if eval_data is not None:
        path = Path(eval_data)
        inputs = data.load_samples(path, spec)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                key = labels_key or "y"
                if key in archive.files:
                    labels = archive[key]
                elif labels_key is not None:  # named, and absent: a typo, not unlabelled data
                    others = [k for k in archive.files if k not in inputs] or ["(none besides the inputs)"]
                    raise BadInput(f"{path.name} has no {labels_key!r} labels; its keys are: "
                                   f"{', '.join(archive.files)}",
                                   f"pass --labels-key with one of: {', '.join(others)}")
        if labels is not None and len(labels) != len(next(iter(inputs.values()))):
            raise BadInput(f"{path.name}: {labels_key or 'y'!r} has {len(labels)} rows, the inputs "
                           f"{len(next(iter(inputs.values())))}", "give one label per row")
        source = str(path.resolve())
    elif manifest.calibration and Path(manifest.calibration["source"]).exists():
        inputs = data.load_samples(manifest.calibration["source"], spec)
        source = manifest.calibration["source"] + " (calibration data: pass --data for held-out rows)"
    else:
        inputs = data.synthetic_samples(spec, 64)
        source = "synthetic (pass --data for real rows)"
    rows = len(next(iter(inputs.values())))
    return inputs, labels, {"source": source, "rows": rows, "labels": labels is not None}


def _pick_task(spec: SignatureSpec, labels, task: str | None, output: str | None):
    names = [o.name for o in spec.outputs]
    if output is not None and output not in names:
        raise NotFound(f"the signature has no output {output!r}", "use one of: " + ", ".join(names))
    if labels is None:
        return output, None
    if output is None:
        classifier = [o.name for o in spec.outputs if o.shape and len(o.shape) == 2 and (o.shape[1] or 0) > 1]
        if len(names) == 1:
            output = names[0]
        elif task != "regression" and len(classifier) == 1:
            output = classifier[0]
        else:
            raise BadInput("the signature has several outputs; which one do the labels score?",
                           "pass --output with one of: " + ", ".join(names))
    if task is None:
        shape = next(o.shape for o in spec.outputs if o.name == output)
        integer_labels = np.issubdtype(np.asarray(labels).dtype, np.integer)
        task = "classification" if integer_labels and shape and len(shape) == 2 and (shape[1] or 0) > 1 else "regression"
    return output, task


def _score(row: Row, outputs, reference_outputs, labels, task, output, reference: Row | None = None) -> None:
    row.scored_output = output
    if reference_outputs is not None:
        for name in sorted(reference_outputs):
            check = agreement.compare_output(outputs[name], reference_outputs[name])
            finite = check.rel_l2_error is not None
            sqnr_db = agreement.spread_errors(outputs[name], reference_outputs[name])["sqnr_db"] if finite else None
            row.agreement[name] = {**asdict(check), "sqnr_db": sqnr_db, "finite": finite}
    if labels is None:
        return
    if task == "classification":
        row.task_metrics = {"accuracy": agreement.classification_accuracy(outputs[output], labels)}
        if reference is not None:
            row.accuracy_drop_points = 100 * (reference.task_metrics["accuracy"] - row.task_metrics["accuracy"])
    else:
        row.task_metrics = agreement.regression_errors(outputs[output], labels)
        if reference is not None and reference.task_metrics["mae"] > 0:
            row.mae_increase_percent = 100 * (row.task_metrics["mae"] / reference.task_metrics["mae"] - 1)


def _time(row: Row, runners: dict[str, Runner], inputs, warmup: int, runs: int, batch: int, spec) -> None:
    fixed = {s.shape[0] for s in spec.inputs if s.shape and s.shape[0] is not None}
    fixed_rows = fixed.pop() if len(fixed) == 1 else None  # a model built for one batch size
    first = {k: np.resize(v, (fixed_rows or 1, *v.shape[1:])) for k, v in inputs.items()}
    rows = fixed_rows or batch
    batch_inputs = {k: np.resize(v, (rows, *v.shape[1:])) for k, v in inputs.items()}
    for setting, runner in runners.items():
        try:
            row.latency_ms[setting] = runner.latency(first, warmup, runs)
            row.throughput_rows_per_s[setting] = runner.throughput(batch_inputs, rows)
        except EdgekitError as exc:  # one backend that cannot run it is named, not crashed on
            row.latency_ms.pop(setting, None)
            row.reason = "; ".join(filter(None, [row.reason, f"{setting}: {exc.message}"]))
