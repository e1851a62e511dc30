"""edgekit package: platform layouts, picks, incremental copies and refusals."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import DIGITS

from edgekit import bench, convert, package
from edgekit.cli import cli
from edgekit.errors import BadInput
from edgekit.manifest import Manifest
from edgekit.packaging import Budgets, Refused


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "digits.txt"
    path.write_text("\n".join(str(d) for d in range(10)) + "\n")
    return path


@pytest.fixture(scope="module")
def bench_json(digits_out, tmp_path_factory):
    report = bench(digits_out, eval_data=DIGITS / "eval.npz", runs=20, warmup=2, threads=(1,), batch=8, memory=False)
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    report.write(path)
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("platform", ["android", "ios"])
def test_layout_and_model_info(digits_out, labels, tmp_path, platform):
    result = package(digits_out, platform, tmp_path / "assets", labels=labels, name="digits")
    folder = tmp_path / "assets" / "digits"
    assert result.folder == folder and result.changed and result.artifact == "tflite_int8"
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt", "model.tflite", "model_info.json"]
    int8 = Manifest.read(digits_out).artifact("int8")
    assert sha256(folder / "model.tflite") == int8.sha256
    info = json.loads((folder / "model_info.json").read_text())
    assert info["model"] == "model.tflite" and info["labels"] == "labels.txt" and info["variant"] == "int8"
    assert info["sha256"] == int8.sha256 and info["edgekit_version"]
    (pixels,) = info["inputs"]
    assert pixels["name"] == "pixels" and pixels["dtype"] == "int8" and pixels["shape"] == [None, 8, 8, 1]
    assert pixels["quantization"]["scale"] > 0 and "zero_point" in pixels["quantization"]
    assert info["outputs"][0]["name"] == "probs"
    assert (folder / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]
    assert [p.name for p in (tmp_path / "assets").iterdir()] == ["digits"]  # no staging left behind


def test_a_second_run_rewrites_nothing(digits_out, labels, tmp_path):
    package(digits_out, "android", tmp_path, labels=labels, name="digits")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "digits").iterdir()}
    again = package(digits_out, "android", tmp_path, labels=labels, name="digits")
    assert again.changed is False
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "digits").iterdir()} == stamps


def test_a_changed_file_replaces_the_folder_but_keeps_unchanged_files_timestamps(digits_out, labels, tmp_path):
    package(digits_out, "android", tmp_path, labels=labels, name="digits")
    model_stamp = (tmp_path / "digits" / "model.tflite").stat().st_mtime_ns
    other_labels = tmp_path / "labels.txt"
    other_labels.write_text("\n".join(f"digit {d}" for d in range(10)))
    result = package(digits_out, "android", tmp_path, labels=other_labels, name="digits")
    assert result.changed is True
    assert (tmp_path / "digits" / "labels.txt").read_text().startswith("digit 0")
    assert (tmp_path / "digits" / "model.tflite").stat().st_mtime_ns == model_stamp


def test_picks(digits_out, bench_json, tmp_path):
    manifest = Manifest.read(digits_out)
    tflite = [a for a in manifest.artifacts if a.format == "tflite"]
    smallest = package(digits_out, "android", tmp_path / "a", pick="smallest")
    assert smallest.artifact == min(tflite, key=lambda a: a.bytes).name
    report = {row["name"]: row for row in json.loads(bench_json.read_text())["artifacts"]
              if row["name"].startswith("tflite_")}  # an app build takes the TFLite ones
    fastest = package(digits_out, "android", tmp_path / "b", pick="fastest", bench_json=bench_json)
    # the smallest of those within 5% and 0.01 ms of the lowest p50 (digits' p50s drift by microseconds)
    assert fastest.artifact == min(_as_fast(report), key=lambda n: manifest.artifact(n).bytes)
    assert fastest.artifact != "tflite_int16x8"  # reference kernels: 10x the others' p50
    accurate = package(digits_out, "ios", tmp_path / "c", pick="most-accurate", bench_json=bench_json)
    assert accurate.artifact == min(report, key=lambda n: (report[n]["accuracy_drop_points"],
                                                           manifest.artifact(n).bytes))
    # a budget narrows the field: under 40 KB, float32 and float16 are out
    bounded = package(digits_out, "android", tmp_path / "d", pick="most-accurate", bench_json=bench_json,
                      budgets=Budgets(max_size_mb=40 / 1024))
    assert bounded.artifact in ("tflite_dynamic", "tflite_int8", "tflite_int16x8")


def test_budget_broken_is_refused_with_the_figures(digits_out, bench_json, tmp_path):
    with pytest.raises(Refused, match=r"size 0\.095 MB > 0\.05 MB"):
        package(digits_out, "android", tmp_path, variant="float32", budgets=Budgets(max_size_mb=0.05))
    with pytest.raises(Refused, match="p50 latency"):
        package(digits_out, "android", tmp_path, variant="int8", bench_json=bench_json,
                budgets=Budgets(max_latency_ms=1e-9))
    with pytest.raises(Refused, match="no artifact meets the budgets"):
        package(digits_out, "android", tmp_path, pick="smallest", budgets=Budgets(max_size_mb=0.001))
    assert list(tmp_path.iterdir()) == []


def test_failed_and_flex_artifacts_are_refused(digits_out, lstm_saved_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(digits_out, broken)
    data = json.loads((broken / "manifest.json").read_text())
    int8 = next(a for a in data["artifacts"] if a["variant"] == "int8")
    int8["status"], int8["error"] = "failed", "relative L2 error 0.3 exceeds the int8 tolerance 0.15"
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(Refused, match="failed its checks: relative L2 error 0.3"):
        package(broken, "android", tmp_path / "app", variant="int8")
    flex = tmp_path / "flex"
    convert(lstm_saved_model, flex, variants=("float32",), tfjs=(), allow_flex=True)
    with pytest.raises(Refused, match="(?s)LiteRT runtime of an Android app lacks.*tensorflow-lite-select-tf-ops"):
        package(flex, "android", tmp_path / "app", variant="float32")
    assert package(flex, "android", tmp_path / "app", variant="float32", allow_flex=True).changed


def test_web_layout_is_the_tfjs_folder_that_loads_in_tfjs(digits_out, labels, tmp_path, digits_rows):
    from edgekit.engines.tfjs import TfjsModel, unavailable_reason

    result = CliRunner().invoke(cli, ["package", str(digits_out), "--platform", "web", "--dest",
                                      str(tmp_path / "public" / "models"), "--labels", str(labels), "--name", "digits"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "public" / "models" / "digits"
    uint8 = Manifest.read(digits_out).artifact("tfjs_uint8")  # the smallest TF.js artifact that passed
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["labels.txt", "model_info.json"] + [f["path"].split("/")[-1] for f in uint8.files])
    info = json.loads((folder / "model_info.json").read_text())
    assert info["format"] == "tfjs" and info["variant"] == "uint8" and info["model"] == "model.json"
    assert info["sha256"] == uint8.sha256
    assert {f["path"]: f["sha256"] for f in info["files"]} == {p.name: sha256(p) for p in folder.iterdir()
                                                                if p.name not in ("labels.txt", "model_info.json")}
    (pixels,) = info["inputs"]
    assert pixels == {"name": "pixels", "node": "pixels", "dtype": "float32", "shape": [None, 8, 8, 1],
                      "quantization": None}
    assert "tf.loadGraphModel" in info["quantization_note"]
    if unavailable_reason() is None:  # the packaged folder, as a web server would serve it
        with TfjsModel(folder) as model:
            probs = model.run({"pixels": digits_rows["pixels"][:32]})["probs"]
        assert (probs.argmax(1) == digits_rows["y"][:32]).mean() >= 0.9
    again = package(digits_out, "web", tmp_path / "public" / "models", labels=labels, name="digits")
    assert again.changed is False


def test_web_picks_and_variant(digits_out, bench_json, tmp_path):
    report = {row["name"]: row for row in json.loads(bench_json.read_text())["artifacts"]}
    assert package(digits_out, "web", tmp_path / "a", pick="smallest").artifact == "tfjs_uint8"
    fastest = package(digits_out, "web", tmp_path / "b", pick="fastest", bench_json=bench_json).artifact
    tfjs = {n: row for n, row in report.items() if n.startswith("tfjs_")}
    assert fastest == min(_as_fast(tfjs), key=lambda n: report[n]["bytes"])
    assert package(digits_out, "web", tmp_path / "c", variant="tfjs_float32").artifact == "tfjs_float32"
    with pytest.raises(BadInput, match="tflite_int8 is a tflite artifact"):
        package(digits_out, "web", tmp_path / "d", variant="int8")
    with pytest.raises(BadInput, match="tfjs_uint8 is a tfjs artifact"):
        package(digits_out, "android", tmp_path / "e", variant="tfjs_uint8")


def _as_fast(rows: dict) -> list[str]:
    """The rows whose best p50 is within 5% and 0.01 ms of the lowest: as fast, for --pick fastest."""
    p50 = {n: min(lat["p50_ms"] for lat in row["latency_ms"].values()) for n, row in rows.items()}
    best = min(p50.values())
    return [n for n in p50 if p50[n] <= max(best * 1.05, best + 0.01)]


def test_web_without_a_tfjs_artifact_is_refused(digits_out, tmp_path):
    bare = tmp_path / "tflite_only"
    shutil.copytree(digits_out, bare)
    data = json.loads((bare / "manifest.json").read_text())
    data["artifacts"] = [a for a in data["artifacts"] if a["format"] != "tfjs"]
    (bare / "manifest.json").write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["package", str(bare), "--platform", "web", "--dest", str(tmp_path / "web")])
    assert result.exit_code == 1
    assert "needs a TF.js artifact" in result.output and "--tfjs" in result.output
    assert not (tmp_path / "web").exists() or not list((tmp_path / "web").iterdir())


def test_a_tfjs_shard_that_changed_after_convert_is_refused(digits_out, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(digits_out, copy)
    shard = next((copy / "tfjs_uint8").glob("*.bin"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BadInput, match="does not match the sha256"):
        package(copy, "web", tmp_path / "web", variant="tfjs_uint8")
    assert not (tmp_path / "web" / "out").exists()


def test_a_bench_report_reads_back_as_the_rows_bench_wrote(bench_json):
    from edgekit.benchmark.results import BenchReport
    from edgekit.benchmark.timing import Latency

    report = BenchReport.read(bench_json)
    assert report.to_dict() == json.loads(bench_json.read_text())
    int8 = report.row("int8")
    assert int8.measured and isinstance(int8.latency_ms["1"], Latency)
    assert int8.best_p50_ms == int8.latency_ms["1"].p50_ms and int8.top1_agreement > 0.9


@pytest.mark.parametrize("text, message", [
    ("{", "cannot read bench report"),
    ('{"schema_version": 7}', "is not an edgekit bench report of schema 1"),
    ('{"schema_version": 1, "artifacts": []}', "is not an edgekit bench JSON report: KeyError"),
    ('[1, 2]', "is not an edgekit bench JSON report"),
])
def test_a_file_that_is_no_bench_report_is_bad_input_naming_it(digits_out, tmp_path, text, message):
    path = tmp_path / "bench.json"
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as raised:
        package(digits_out, "android", tmp_path / "out", pick="fastest", bench_json=path)
    assert str(path) in raised.value.message and "edgekit bench" in raised.value.hint


def test_bad_input(digits_out, bench_json, tmp_path):
    with pytest.raises(BadInput, match="needs bench figures"):
        package(digits_out, "android", tmp_path, pick="fastest")
    with pytest.raises(BadInput, match="no artifact named 'int4'"):
        package(digits_out, "android", tmp_path, variant="int4")
    with pytest.raises(BadInput, match="both choose"):
        package(digits_out, "android", tmp_path, variant="int8", pick="smallest")
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    with pytest.raises(BadInput, match="3 labels, output 'probs' has 10 classes"):
        package(digits_out, "android", tmp_path, labels=three)
    result = CliRunner().invoke(cli, ["package", str(tmp_path / "nowhere"), "--platform", "ios", "--dest", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_cli_reports_what_it_laid_out(digits_out, labels, tmp_path):
    args = ["package", str(digits_out), "--platform", "android", "--dest", str(tmp_path), "--labels", str(labels),
            "--name", "digits"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "android: tflite_int8 ->" in first.output and "model_info.json" in first.output
    second = CliRunner().invoke(cli, args + ["--json"])
    assert second.exit_code == 0 and json.loads(second.output)["changed"] is False


def test_an_unverified_tfjs_artifact_is_laid_out_only_when_named_and_with_a_warning(digits_out, tmp_path):
    """Converted where Node.js was missing: never run in TF.js, so never picked by default."""
    unchecked = tmp_path / "unchecked"
    shutil.copytree(digits_out, unchecked)
    data = json.loads((unchecked / "manifest.json").read_text())
    for artifact in data["artifacts"]:
        if artifact["format"] == "tfjs":
            artifact["status"], artifact["verified"] = "unverified", False
            artifact["check"] = {"status": "skipped", "samples": 0, "tolerance_rel_l2": 0.1, "outputs": {},
                                 "reason": "Node.js is not installed, so TF.js could not run it"}
    (unchecked / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(Refused, match="no TF.js artifact passed its checks"):
        package(unchecked, "web", tmp_path / "web")
    result = CliRunner().invoke(cli, ["package", str(unchecked), "--platform", "web", "--dest", str(tmp_path / "web"),
                                      "--variant", "tfjs_uint8"])
    assert result.exit_code == 0, result.output
    assert "warning: tfjs_uint8 never ran in its runtime" in result.output
