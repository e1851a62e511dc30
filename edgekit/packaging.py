"""`edgekit package`: the model step of a mobile or web app build.

Picks an artifact (named, or by bench figures within budgets), refuses what the app could
not run, and lays it out where the build expects it:

    android  <dest>/<name>/  model.tflite, labels.txt, model_info.json   (dest: app/src/main/assets)
    ios      <dest>/<name>/  the same files, a folder reference to add to the Xcode bundle
    web      <dest>/<name>/  the TF.js graph model (model.json + shards) and model_info.json

model_info.json holds what app code needs to feed and read the model: input and output
names, shapes, dtypes, quantization scale and zero point, the sha256, edgekit's version.
It has no timestamp, so the same artifact gives the same bytes: when the destination
already holds them, nothing is rewritten and Gradle or Xcode see nothing new. Otherwise
the folder is built aside and swapped in by renames: never half-copied.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit._version import __version__
from edgekit.benchmark.budgets import Budgets, budget_reasons
from edgekit.benchmark.results import BenchReport, Row, measurably_slower
from edgekit.errors import BadInput, EdgekitError
from edgekit.files import replace_dir, sha256_file, staging_dir
from edgekit.manifest import Artifact, Manifest

PLATFORMS = ("android", "ios", "web")
PICKS = ("smallest", "fastest", "most-accurate")


class Refused(EdgekitError):
    """The build must stop: the chosen model breaks a budget or cannot run in the app."""

    exit_code = 1


@dataclass(frozen=True)
class PackageResult:
    platform: str
    artifact: str
    folder: Path
    files: dict[str, str]  # name -> sha256
    changed: bool  # False: the destination already held these exact files
    verified: bool = True  # False: named with --variant, but never ran in its runtime (no Node.js at convert)


def package(out_dir: str | Path, platform: str, dest: str | Path, *, variant: str | None = None,
            pick: str | None = None, bench_json: str | Path | None = None, labels: str | Path | None = None,
            name: str | None = None, budgets: Budgets = Budgets(), allow_flex: bool = False) -> PackageResult:
    if platform not in PLATFORMS:
        raise BadInput(f"unknown platform {platform!r}", "use android, ios or web")
    if variant and pick:
        raise BadInput("--variant and --pick both choose the artifact", "pass one of them")
    if pick is not None and pick not in PICKS:
        raise BadInput(f"unknown pick {pick!r}", "use smallest, fastest or most-accurate")
    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    folder = out_dir.resolve()
    name = name or (folder.parent.name if folder.name.isdigit() else folder.name)  # models/digits/1 -> digits
    if not name or "/" in name or name.startswith("."):
        raise BadInput(f"invalid model name {name!r}", "pass --name with a plain folder name")
    bench = _read_bench(bench_json) if bench_json else None
    if pick in ("fastest", "most-accurate") and bench is None:
        raise BadInput(f"--pick {pick} needs bench figures", "run `edgekit bench OUT_DIR --json bench.json` and pass "
                       "--bench-json bench.json")
    if budgets.need_figures and bench is None:
        raise BadInput("accuracy, agreement and latency budgets need bench figures",
                       "pass --bench-json from `edgekit bench`")
    label_lines = _read_labels(labels) if labels else None

    if platform == "web":
        candidates = [a for a in manifest.artifacts if a.format == "tfjs"]
        if not candidates:
            raise Refused("a web build needs a TF.js artifact, and this OUT_DIR has none",
                          "convert again with --tfjs float32,uint8 (the default; Node.js checks them)")
    else:
        candidates = [a for a in manifest.artifacts if a.format == "tflite"]
    artifact = _choose(manifest, candidates, variant, pick, bench, budgets, "tfjs" if platform == "web" else "tflite")
    _refuse_unrunnable(artifact, platform, allow_flex)
    broken = _broken_budgets(artifact, bench, budgets)
    if broken:
        raise Refused(f"{artifact.name} breaks its budgets: " + "; ".join(broken),
                      "pick another artifact (--variant / --pick), or loosen the budget")
    if label_lines is not None:
        _check_labels(label_lines, artifact)
    return _lay_out(out_dir, manifest, artifact, platform, Path(dest), name, labels, label_lines)


def _read_bench(path: str | Path) -> dict[str, Row]:
    """This workstation's rows by artifact name: rows measured on a device (`bench --device`)
    are that device's, not the artifact's."""
    return {row.name: row for row in BenchReport.read(path).artifacts if not row.machine}


def _read_labels(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        hint = "pass --labels with an existing file" if isinstance(exc, FileNotFoundError) else "one UTF-8 label per line"
        raise BadInput(f"cannot read labels {path}: {exc}", hint) from None
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise BadInput(f"{path} holds no labels", "one label per line, in class order")
    return lines


def _check_labels(labels: list[str], artifact: Artifact) -> None:
    classes = {o.name: o.shape[-1] for o in artifact.outputs if o.shape and len(o.shape) == 2 and (o.shape[1] or 0) > 1}
    if len(classes) == 1:
        (output, count), = classes.items()
        if count != len(labels):
            raise BadInput(f"the labels file has {len(labels)} labels, output {output!r} has {count} classes",
                           "one label per class, in class order")


def _measured(bench: dict[str, Row] | None, artifact: Artifact) -> Row | None:
    if bench is None:
        return None
    row = bench.get(artifact.name)
    return row if row and row.measured else None


def _broken_budgets(artifact: Artifact, bench: dict[str, Row] | None, budgets: Budgets) -> list[str]:
    return budget_reasons(budgets, artifact.bytes, _measured(bench, artifact))


def _choose(manifest: Manifest, candidates: list[Artifact], variant: str | None, pick: str | None,
            bench: dict[str, Row] | None, budgets: Budgets, format: str) -> Artifact:
    if variant:
        chosen = manifest.artifact(variant)
        if chosen not in candidates:
            raise BadInput(f"{chosen.name} is a {chosen.format} artifact, not one this platform takes",
                           "pick a " + ("TF.js" if candidates and candidates[0].format == "tfjs" else "TFLite")
                           + " artifact")
        return chosen
    if pick is None:
        preferred = manifest.preferred_artifact(format)
        if preferred is None:
            kind = "TF.js" if format == "tfjs" else "TFLite"
            raise Refused(f"no {kind} artifact passed its checks",
                          f"see the {kind} artifacts' errors in the manifest; convert again, or name one with --variant")
        return preferred
    fitting = [a for a in candidates if a.file and a.status == "ok" and not a.requires_flex
               and not _broken_budgets(a, bench, budgets)]
    if pick != "smallest":
        fitting = [a for a in fitting if _measured(bench, a)]
    if not fitting:
        raise Refused(f"no artifact meets the budgets for --pick {pick}",
                      "loosen a budget, or see `edgekit bench` for the figures")
    if pick == "smallest":
        return min(fitting, key=lambda a: (a.bytes, a.name))
    if pick == "fastest":  # the smallest of those not measurably slower than the fastest
        best = min(_measured(bench, a).best_p50_ms for a in fitting)
        return min((a for a in fitting if not measurably_slower(_measured(bench, a).best_p50_ms, best)),
                   key=lambda a: (a.bytes, a.name))

    def loss(a: Artifact) -> float:
        row = _measured(bench, a)
        if row.accuracy_drop_points is not None:
            return row.accuracy_drop_points
        if row.top1_agreement is not None:
            return -row.top1_agreement
        return max(o["rel_l2_error"] if o.get("rel_l2_error") is not None else float("inf")
                   for o in row.agreement.values())

    return min(fitting, key=lambda a: (loss(a), a.bytes))


def _refuse_unrunnable(artifact: Artifact, platform: str, allow_flex: bool) -> None:
    if artifact.file is None or artifact.status in ("failed", "skipped"):
        raise Refused(f"{artifact.name} {'failed its checks' if artifact.status == 'failed' else 'was not built'}: "
                      f"{artifact.error}", "ship an artifact that passed (see the manifest), or convert again")
    if artifact.requires_flex and not allow_flex:
        runtime = {"android": "org.tensorflow:tensorflow-lite-select-tf-ops",
                   "ios": "TensorFlowLiteSelectTfOps", "web": "no TF.js equivalent"}[platform]
        app = {"android": "an Android", "ios": "an iOS", "web": "a web"}[platform]
        raise Refused(f"{artifact.name} needs TensorFlow (flex) ops, which the plain LiteRT runtime of {app} "
                      "app lacks", f"convert without --allow-flex, or link {runtime} and pass --allow-flex")


def _model_info_entry(tensor) -> dict:
    info = {"name": tensor.name, "dtype": tensor.dtype, "shape": tensor.shape, "quantization": tensor.quantization}
    if tensor.node is not None:
        info["node"] = tensor.node
    return info


_TFLITE_NOTE = "real = scale * (q - zero_point); quantize inputs as q = round(real / scale) + zero_point"
_TFJS_NOTE = ("TF.js takes and returns float32 tensors whatever the weights are stored as: "
              "tf.loadGraphModel('model.json'), then model.execute({<input name>: x}, [<output names>])")


def model_info(manifest: Manifest, artifact: Artifact, model_file: str, labels_file: str | None) -> dict:
    info = {
        "schema_version": 1,
        "edgekit_version": __version__,
        "model": model_file,
        "format": artifact.format,
        "variant": artifact.variant,
        "sha256": artifact.sha256,
        "bytes": artifact.bytes,
        "signature": artifact.signature,
        "inputs": [_model_info_entry(t) for t in artifact.inputs],
        "outputs": [_model_info_entry(t) for t in artifact.outputs],
        "labels": labels_file,
        "quantization_note": _TFJS_NOTE if artifact.format == "tfjs" else _TFLITE_NOTE,
        "check": None if artifact.check is None else {
            "status": artifact.check.status, "samples": artifact.check.samples,
            "worst_rel_l2": artifact.check.worst_rel_l2, "top1_agreement": artifact.check.top1_agreement},
        "source_saved_model_sha256": manifest.source["saved_model_pb_sha256"],
    }
    if artifact.files:  # a TF.js folder: each file, relative to model_info.json
        info["files"] = [{"path": Path(f["path"]).name, "bytes": f["bytes"], "sha256": f["sha256"]}
                         for f in artifact.files]
    return info


def _lay_out(out_dir: Path, manifest: Manifest, artifact: Artifact, platform: str, dest: Path, name: str,
             labels: str | Path | None, label_lines: list[str] | None) -> PackageResult:
    target = dest / name
    staging = staging_dir(target)
    try:
        if artifact.format == "tflite":
            model_name = "model.tflite"
            source = out_dir / artifact.file
            if sha256_file(source) != artifact.sha256:
                raise BadInput(f"{source} does not match the sha256 in the manifest", "convert again")
            _place(source, staging / model_name, target / model_name)
        else:  # tfjs: the folder of model.json and shards, each file as the manifest lists it
            model_name = "model.json"
            for file in artifact.files:
                source = out_dir / file["path"]
                if not source.is_file() or sha256_file(source) != file["sha256"]:
                    raise BadInput(f"{source} is missing or does not match the sha256 in the manifest",
                                   "convert again")
                _place(source, staging / source.name, target / source.name)
        labels_name = None
        if label_lines is not None:
            labels_name = "labels.txt"
            _write(staging / labels_name, ("\n".join(label_lines) + "\n").encode(), target / labels_name)
        info = json.dumps(model_info(manifest, artifact, model_name, labels_name), indent=2, sort_keys=True) + "\n"
        _write(staging / "model_info.json", info.encode(), target / "model_info.json")
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        current = ({p.name: sha256_file(p) for p in sorted(target.iterdir()) if p.is_file()}
                   if target.is_dir() else None)
        if current == files:
            shutil.rmtree(staging)
            return PackageResult(platform, artifact.name, target, files, changed=False, verified=artifact.verified)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PackageResult(platform, artifact.name, target, files, changed=True, verified=artifact.verified)


def _place(source: Path, staged: Path, existing: Path) -> None:
    """Copy `source`, or the existing identical file with its mtime, so an unchanged file
    keeps its timestamp even when its folder is replaced."""
    if existing.is_file() and sha256_file(existing) == sha256_file(source):
        shutil.copy2(existing, staged)
    else:
        shutil.copyfile(source, staged)


def _write(staged: Path, content: bytes, existing: Path) -> None:
    if existing.is_file() and existing.read_bytes() == content:
        shutil.copy2(existing, staged)
    else:
        staged.write_bytes(content)


def result_dict(result: PackageResult) -> dict:
    data = dataclasses.asdict(result)
    data["folder"] = str(result.folder)
    return data
