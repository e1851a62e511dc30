"""`edgekit bench`: every artifact of a convert OUT_DIR against the original SavedModel,
on the same inputs: task metric, agreement and errors, latency, throughput, size, memory."""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit import agreement
from edgekit._version import __version__
from edgekit.benchmark.results import SCHEMA_VERSION, TASKS, BenchReport, Row, measurably_slower
from edgekit.benchmark.runners import RUNNERS, Runner, TensorFlowRunner
from edgekit.build import data
from edgekit.errors import BadInput, EdgekitError, NotFound
from edgekit.manifest import Artifact, Manifest, SignatureSpec
from edgekit.native_logs import captured_native_output



Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """Every knob of a bench run, validated once, here (the CLI only fills it in). TFLite and
    ONNX artifacts are timed at each of `threads` (default: 1 and every core); TF.js artifacts
    on each of `tfjs_backends` in Node.js (one thread: TF.js's wasm backend runs threads only
    in a browser with cross-origin isolation). `devices`: URLs of `edgekit serve --allow-bench`."""

    eval_data: str | Path | None = None
    labels_key: str | None = None
    task: str | None = None
    output: str | None = None
    runs: int = 100
    warmup: int = 10
    threads: tuple[int, ...] | None = None
    tfjs_backends: tuple[str, ...] = ("wasm", "cpu")
    batch: int = 32
    artifact: str | tuple[str, ...] | None = None  # only these (names or variants)
    memory: bool = True
    devices: tuple[str, ...] = ()
    api_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threads", tuple(self.threads or sorted({1, os.cpu_count() or 1})))
        object.__setattr__(self, "tfjs_backends", tuple(self.tfjs_backends))
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.runs < 1 or self.warmup < 0 or self.batch < 1 or any(t < 1 for t in self.threads):
            raise BadInput("--runs, --batch and --threads must be at least 1, --warmup at least 0", "e.g. --runs 100")
        unknown = [b for b in self.tfjs_backends if b not in ("cpu", "wasm")]
        if unknown or not self.tfjs_backends:
            raise BadInput(f"unknown TF.js backend {', '.join(unknown) or '(none)'}", "use --tfjs-backends wasm,cpu")
        if self.task is not None and self.task not in TASKS:
            raise BadInput(f"unknown task {self.task!r}", "use classification or regression")


def bench(out_dir: str | Path, options: BenchOptions | None = None, *, progress: Progress | None = None,
          quiet: bool = True, **settings) -> BenchReport:
    """Measure the artifacts in OUT_DIR (or only `options.artifact`) against the SavedModel,
    on the same rows. The settings are BenchOptions' fields, as an object or as keywords."""
    options = options or BenchOptions(**settings)
    manifest = Manifest.read(out_dir)
    out_dir = Path(out_dir)
    named = (options.artifact,) if isinstance(options.artifact, str) else options.artifact or ()
    chosen = list({a.name: a for a in map(manifest.artifact, named)}.values()) if named else list(manifest.artifacts)
    spec = manifest.signatures[manifest.signature]
    inputs, labels, data_record = _load_eval(options.eval_data, options.labels_key, manifest, spec)
    output, task = _pick_task(spec, labels, options.task, options.output)
    data_record.update({"task": task, "output": output})
    _check_source_unchanged(manifest)

    session = _Session(out_dir, options, spec, inputs, labels, task, output, data.batch_size(spec),
                       progress or (lambda message: None), quiet)
    reference_device = session.measure_reference(manifest)
    rows = [session.measure(entry, f"[{number}/{len(chosen)}] {entry.name}", data_record["rows"])
            for number, entry in enumerate(chosen, 1)]
    for row, entry in zip(rows, chosen):
        row.convert_status = entry.status
    measured_devices = {}
    for url in options.devices:
        measured_devices.update(session.on_device(url, chosen, rows))
    rows = _side_by_side(rows)
    _flag_slower_than_float32(rows)

    return BenchReport(
        schema_version=SCHEMA_VERSION,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        versions={"edgekit": __version__, **{k: v for k, v in manifest.versions.items() if k != "edgekit"}},
        machine={"cpus": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor() or None,
                 "python": platform.python_version(), "reference_device": reference_device},
        manifest=str((out_dir / "manifest.json").resolve()),
        data=data_record,
        settings={"runs": options.runs, "warmup": options.warmup, "threads": list(options.threads),
                  "tfjs_backends": list(options.tfjs_backends), "batch": options.batch, "latency_batch": 1,
                  "memory": options.memory},
        reference=session.reference,
        artifacts=rows,
        devices=measured_devices,
    )


# Rows sent to a device, at most: the workstation scores them all, the device its share.
DEVICE_ROW_BYTES = 8 << 20


@dataclass
class _Session:
    """One bench run's shared ground: the rows, their labels and task, and the reference
    (the SavedModel's row and outputs) every artifact's row is scored against."""

    out_dir: Path
    options: BenchOptions
    spec: SignatureSpec
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    task: str | None
    output: str | None
    row_batch: int | None  # rows per call when scoring: the signature's fixed batch, if any
    say: Progress
    quiet: bool
    reference: Row | None = None
    reference_outputs: dict[str, np.ndarray] | None = None

    def measure_reference(self, manifest: Manifest) -> str:
        """The SavedModel's row and outputs; returns the device TensorFlow ran it on."""
        options = self.options
        self.say(f"reference: loading {manifest.source['path']}")
        with captured_native_output(self.quiet):  # TensorFlow's import notes
            runner = TensorFlowRunner(Path(manifest.source["path"]), manifest.signature)
        self.reference_outputs = runner.run_batches(self.inputs, self.row_batch)
        self.reference = _row("savedmodel", runner, None, _dir_bytes(Path(manifest.source["path"])))
        _score(self.reference, self.reference_outputs, None, self.labels, self.task, self.output)
        self.say(f"reference on {runner.device}: timing")
        _time(self.reference, {"auto": runner}, self.inputs, options.warmup, options.runs, options.batch,
              self.spec)  # TF picks its threads
        if options.memory:
            self.reference.memory = runner.memory()
        return runner.device

    def measure(self, entry: Artifact, prefix: str, row_count: int) -> Row:
        """One artifact's row: scored on the first setting that can run it, timed at each;
        a `skipped` row saying why when bench cannot run it (never a crash)."""
        def skip(reason: str) -> Row:
            self.say(f"{prefix}: skipped ({reason})")
            return Row(entry.name, entry.format, "CPU", entry.variant, entry.bytes, "skipped", reason=reason)

        runners = self._open_runners(entry)
        if isinstance(runners, str):
            return skip(runners)
        try:
            # a setting that cannot run it is dropped and named in the row's reason
            preferred = str(self.options.tfjs_backends[0] if entry.format == "tfjs" else max(self.options.threads))
            outputs, dropped = None, []
            self.say(f"{prefix}: accuracy on {row_count} rows")
            for setting in sorted(runners, key=lambda key: key != preferred):
                try:
                    outputs = runners[setting].run_batches(self.inputs, self.row_batch)
                    first = runners[setting]
                    break
                except EdgekitError as exc:
                    dropped.append(f"{setting}: {exc.message}")
                    runners.pop(setting).close()
            if outputs is None:  # one reason, when every setting gave the same
                reasons = {reason.split(": ", 1)[1] for reason in dropped}
                return skip("cannot run it: " + (reasons.pop() if len(reasons) == 1 else "; ".join(dropped)))
            row = _row(entry.name, first, entry.variant, entry.bytes)
            row.reason = "; ".join(dropped) or None
            _score(row, outputs, self.reference_outputs, self.labels, self.task, self.output, self.reference)
            self.say(f"{prefix}: latency at {'backends' if entry.format == 'tfjs' else 'threads'} {', '.join(runners)}")
            _time(row, runners, self.inputs, self.options.warmup, self.options.runs, self.options.batch, self.spec)
            if self.options.memory:
                row.memory = first.memory()
            return row
        finally:
            for runner in runners.values():
                runner.close()

    def _open_runners(self, entry: Artifact) -> dict[str, Runner] | str:
        """A runner per setting (threads, or TF.js backends), or why none can be opened."""
        runner_class = RUNNERS.get(entry.format)
        if entry.file is None or not (self.out_dir / entry.file).is_file():
            return f"no file: convert marked it {entry.status}"
        if entry.requires_flex:
            return "requires flex ops, which no Python LiteRT runtime can run"
        if runner_class is None:
            return f"no runner for {entry.format} artifacts yet"
        settings = self.options.tfjs_backends if entry.format == "tfjs" else self.options.threads
        runners: dict[str, Runner] = {}
        try:
            with captured_native_output(self.quiet):  # LiteRT's delegate notes
                for setting in settings:
                    runners[str(setting)] = runner_class(self.out_dir / entry.file, entry.signature, setting)
        except EdgekitError as exc:
            for runner in runners.values():
                runner.close()
            return exc.message
        return runners

    def on_device(self, url: str, chosen: list[Artifact], rows: list[Row]) -> dict[str, dict]:
        """Each TFLite artifact measured on a device's `edgekit serve --allow-bench`: its
        latency, memory and outputs there, scored here against the SavedModel on the same
        rows; its rows are appended to `rows`. Returns what the device says it is."""
        from edgekit.benchmark.remote import DeviceClient
        from edgekit.benchmark.timing import Latency

        options, inputs, labels = self.options, self.inputs, self.labels
        client = DeviceClient(url, options.api_key)
        info = client.info()["device"]
        self.say(f"device {client.label}: {info.get('model') or info.get('cpu') or info.get('machine')}, "
                 f"{info.get('cpus')} cores, {info.get('runtime')}")
        total = len(next(iter(inputs.values())))
        per_row = max(1, sum(v[:1].nbytes for v in inputs.values()))
        count = max(1, min(total, DEVICE_ROW_BYTES // per_row))
        subset = {k: v[:count] for k, v in inputs.items()}
        threads = sorted({t for t in options.threads if t <= (info.get("cpus") or 1)} | {info.get("cpus") or 1})
        reference = self.reference if labels is None else _reference_on(
            self.reference, self.reference_outputs, labels, count, self.task, self.output)
        for entry in chosen:
            if entry.format != "tflite" or entry.file is None or entry.requires_flex or entry.status == "failed":
                continue
            self.say(f"device {client.label}: {entry.name} on {count} rows, threads {threads}")
            row = Row(f"{entry.name}@{client.label}", "litert", "CPU", entry.variant, entry.bytes, "measured",
                      machine=client.label)
            rows.append(row)
            try:
                result, outputs = client.bench(self.out_dir / entry.file, entry.sha256, entry.signature, subset,
                                               threads, options.runs, options.warmup)
            except EdgekitError as exc:
                row.status, row.reason = "skipped", exc.message
                continue
            row.engine = (result["device"].get("runtime") or "litert").split()[0]
            _score(row, outputs, {k: v[:count] for k, v in self.reference_outputs.items()},
                   labels[:count] if labels is not None else None, self.task, self.output, reference)
            row.latency_ms = {t: Latency(**figures) for t, figures in result["latency_ms"].items()}
            row.throughput_rows_per_s = {t: 1000.0 / lat.mean_ms for t, lat in row.latency_ms.items() if lat.mean_ms}
            row.memory = result.get("memory")
            row.reason = result.get("note") if result.get("served_meanwhile") else None
        return {client.label: {**info, "url": url, "rows": count}}


def _reference_on(reference: Row, reference_outputs, labels, count: int, task, output) -> Row:
    """The reference scored on the device's rows only, so an accuracy drop compares like with like."""
    subset = Row(reference.name, reference.engine, reference.device, None, None, "measured")
    _score(subset, {k: v[:count] for k, v in reference_outputs.items()}, None, labels[:count], task, output)
    return subset


def _flag_slower_than_float32(rows: list[Row]) -> None:
    """Quantized is not always faster: on x86, dynamic-range runs slower than float32 (its
    activations are quantized at every call). Flag, per machine, each TFLite variant whose
    best p50 is above float32's there by more than timing drift."""
    baseline = {row.machine: row.best_p50_ms for row in rows
                if row.engine != "tfjs" and row.variant == "float32" and row.name.startswith("tflite_")
                and row.status == "measured" and row.best_p50_ms}
    for row in rows:
        if row.name.startswith("tflite_") and row.status == "measured" and row.machine in baseline \
                and row.variant != "float32" and row.best_p50_ms:
            row.slower_than_float32 = measurably_slower(row.best_p50_ms, baseline[row.machine])


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
    shape = next(o.shape for o in spec.outputs if o.name == output)
    if task is None:
        integer_labels = np.issubdtype(np.asarray(labels).dtype, np.integer)
        task = "classification" if integer_labels and shape and len(shape) == 2 and (shape[1] or 0) > 1 else "regression"
    classes = shape[-1] if task == "classification" and shape and len(shape) == 2 else None
    values = np.asarray(labels).reshape(-1)
    if classes and values.size and np.issubdtype(values.dtype, np.number) and not (
            0 <= values.min() and values.max() < classes):
        raise BadInput(f"the labels run from {values.min():g} to {values.max():g}, but output {output!r} scores "
                       f"{classes} classes (0 to {classes - 1})",
                       "pass --output with the output the labels score, or --labels-key with the right labels")
    return output, task


def _score(row: Row, outputs, reference_outputs, labels, task, output, reference: Row | None = None) -> None:
    row.scored_output = output
    if reference_outputs is not None:
        for name in sorted(reference_outputs):
            check = agreement.compare_output(outputs[name], reference_outputs[name])
            finite = check.rel_l2_error is not None
            sqnr_db = agreement.spread_errors(outputs[name], reference_outputs[name])["sqnr_db"] \
                if finite and check.exact_match is None else None
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
    fixed_rows = spec.fixed_batch  # a model built for one batch size
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
