"""The edgekit command: exit statuses, messages with hints, --json, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DIGITS, IRIS

from edgekit.cli import cli

SAVED_MODEL = str(DIGITS / "saved_model")
CALIBRATION = str(DIGITS / "calibration.npz")


def run(*args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def assert_bad_input(result, *fragments, out_parent=None):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output and "hint:" in result.output
    for fragment in fragments:
        assert fragment in result.output
    if out_parent is not None:
        assert list(out_parent.iterdir()) == [], "bad input must write nothing"


def test_convert_prints_the_summary_table_and_exits_0(tmp_path):
    result = run(SAVED_MODEL, "-o", tmp_path / "out", "--calibration", CALIBRATION, "--variants", "float32,int8")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the table; progress went to stderr
    assert lines[0].split()[:4] == ["variant", "status", "size", "vs"]
    assert next(line for line in lines if line.startswith("float32")).split()[1:2] == ["ok"]
    assert "1.00x" in next(line for line in lines if line.startswith("float32"))
    assert next(line for line in lines if line.startswith("int8")).split()[1] == "ok"
    assert "calibrated on 200 samples" in result.output
    assert "note: the checks ran on rows of the calibration data" in result.stderr
    assert "warning:" not in result.stderr  # 200 samples are enough


def test_few_calibration_samples_are_warned_about_and_ranges_recorded(tmp_path):
    with np.load(CALIBRATION) as data:
        rows = {name: data[name][:40] for name in data.files}
    np.savez(tmp_path / "few.npz", **rows)
    result = run(SAVED_MODEL, "-o", tmp_path / "out", "--calibration", tmp_path / "few.npz", "--variants", "int8")
    assert result.exit_code == 0, result.output
    assert "warning: calibrated on 40 samples only" in result.stderr and "--calibration" in result.stderr
    ranges = json.loads((tmp_path / "out" / "manifest.json").read_text())["calibration"]["ranges"]
    (name, span), = ranges.items()
    values = next(iter(rows.values()))
    assert span["min"] == float(values.min()) and span["max"] == float(values.max())
    assert span["min"] <= span["p1"] <= span["p99"] <= span["max"]


def test_json_prints_the_manifest_on_stdout(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "convert", SAVED_MODEL, "-o", str(out), "--variants", "float32", "--json"],
        capture_output=True, text=True, check=True,
    )
    manifest = json.loads(result.stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert "[1/3] float32" in result.stderr and "[3/3] tfjs_uint8" in result.stderr  # progress stays on stderr


def test_a_failed_variant_exits_1_and_still_writes_the_others(lstm_saved_model, tmp_path):
    result = run(lstm_saved_model, "-o", tmp_path / "out", "--variants", "float32")
    assert result.exit_code == 1
    assert "TensorListReserve" in result.output
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_each_failure_line_keeps_its_way_out(lstm_saved_model, tmp_path):
    """With the TF.js targets landing beside them, the TFLite failures still name --allow-flex."""
    result = run(lstm_saved_model, "-o", tmp_path / "out", "--variants", "float32,float16")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    for variant in ("float32", "float16"):
        failed = next(i for i, line in enumerate(lines) if f"] {variant}" in line and "failed" in line)
        assert "hint:" in lines[failed + 1] and "--allow-flex" in lines[failed + 1]


@pytest.mark.parametrize("blocked, command, extra", [
    ("httptools", ["serve", "."], "runtime"),
    ("grpc", ["serve", "."], "runtime"),
    ("tensorflow", ["convert", SAVED_MODEL, "-o", "out"], "convert"),
])
def test_a_missing_extra_is_named_with_its_install_line(blocked, command, extra, tmp_path):
    """As if the package were not installed (None in sys.modules makes its import fail)."""
    script = (f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['edgekit', *{command!r}]\n"
              "from edgekit.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"needs edgekit[{extra}]" in result.stderr and f"pip install 'edgekit[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_variant_typo_and_bench_a_labels_key_typo(digits_out, tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "1").symlink_to(digits_out)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "digits"), "--variant", "int9"])
    assert_bad_input(result, "unknown variant 'int9'", "int8, dynamic, float16, float32, int16x8")
    result = CliRunner().invoke(cli, ["bench", str(digits_out), "--data", str(DIGITS / "eval.npz"),
                                      "--labels-key", "label", "--artifact", "int8", "--no-memory", "--runs", "2"])
    assert_bad_input(result, "has no 'label' labels", "its keys are: pixels, y", "--labels-key with one of: y")


def test_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_bad_input(run(tmp_path / "empty", "-o", tmp_path / "o"), "no saved_model.pb")
    assert_bad_input(run(tmp_path / "missing", "-o", tmp_path / "o"), "does not exist")
    (tmp_path / "model.keras").write_bytes(b"x")
    assert_bad_input(run(tmp_path / "model.keras", "-o", tmp_path / "o"), "export")
    assert not (tmp_path / "o").exists()


def test_unknown_signature_lists_the_known_ones(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert_bad_input(run(IRIS / "saved_model", "-o", out / "o", "--signature", "nope"),
                     "'nope'", "embed, serving_default", out_parent=out)


def test_unknown_variant(tmp_path):
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o", "--variants", "float32,int4"), "'int4'", "int16x8")


def test_full_integer_variant_without_calibration_is_refused(tmp_path):
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o", "--variants", "int8"), "random noise", "--calibration")


def test_existing_out_dir_needs_force(tmp_path):
    (tmp_path / "o").mkdir()
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o"), "already exists", "--force")


@pytest.mark.parametrize("arrays, fragment", [
    ({"image": np.zeros((4, 8, 8, 1), np.float32)}, "no array named 'pixels'"),
    ({"pixels": np.zeros((4, 8, 8, 3), np.float32)}, "has shape (4, 8, 8, 3)"),
    ({"pixels": np.zeros((4, 8, 8), np.float32)}, "has shape (4, 8, 8)"),
    ({"pixels": np.array([["a"] * 8] * 8).reshape(1, 8, 8, 1)}, "cannot feed a float32 input"),
    ({"pixels": np.full((4, 8, 8, 1), np.nan, np.float32)}, "NaN"),
    ({"pixels": np.zeros((0, 8, 8, 1), np.float32)}, "no samples"),
])
def test_calibration_that_does_not_fit_the_signature(tmp_path, arrays, fragment):
    out = tmp_path / "out"
    out.mkdir()
    np.savez(tmp_path / "calib.npz", **arrays)
    result = run(SAVED_MODEL, "-o", out / "o", "--calibration", tmp_path / "calib.npz", "--variants", "int8")
    assert_bad_input(result, fragment, out_parent=out)


def test_two_input_models_reject_npy_and_mismatched_row_counts(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((4, 2), np.float32))
    assert_bad_input(run(IRIS / "saved_model", "-o", tmp_path / "o", "--calibration", tmp_path / "one.npy"),
                     "2 inputs", "np.savez")
    np.savez(tmp_path / "rows.npz", sepal=np.zeros((4, 2), np.float32), petal=np.zeros((5, 2), np.float32))
    assert_bad_input(run(IRIS / "saved_model", "-o", tmp_path / "o", "--calibration", tmp_path / "rows.npz"),
                     "different numbers of samples")


def test_npy_that_needs_pickle_is_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o", "--calibration", tmp_path / "objects.npy"),
                     "pickle")


def test_files_that_are_not_what_their_suffix_says(tmp_path):
    (tmp_path / "fake.npz").write_text("not a zip")
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o", "--calibration", tmp_path / "fake.npz"),
                     "is not a .npz file")
    (tmp_path / "data.csv").write_text("1,2")
    assert_bad_input(run(SAVED_MODEL, "-o", tmp_path / "o", "--calibration", tmp_path / "data.csv"),
                     "unknown format .csv")


def test_image_folder_for_a_non_image_input_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert_bad_input(run(IRIS / "saved_model", "-o", tmp_path / "o", "--calibration", tmp_path / "imgs"),
                     "one-input model")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--debug"])
    assert result.exit_code != 0
    assert result.exception is not None and "does not exist" in str(result.exception)


def test_where_int8_fails_and_int16x8_passes_convert_points_to_it(tmp_path):
    from conftest import ONET

    result = run(ONET / "saved_model", "-o", tmp_path / "out", "--calibration", ONET / "calibration.npz",
                 "--variants", "int8,int16x8", "--range-method", "minmax", "--check-samples", "200", "--tfjs", "none")
    assert result.exit_code == 1, result.output
    assert "note: int8 failed its check where int16x8 passed (int16 activations, 1.03x int8's bytes)" in result.stderr
    assert "note: int16x8: PRELU x5 compute in float32" in result.stderr


def test_synthetic_check_rows_of_an_integer_input_are_called_out(tmp_path):
    """Without --calibration, token ids are zeros in every check row (their valid values are
    unknown): the checks then compare one input, and convert says so."""
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((4,), dtype="int32", name="ids")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(10, 3)(ids))
    keras.Model(ids, keras.layers.Dense(2)(hidden)).export(str(tmp_path / "saved_model"), verbose=False)
    result = run(tmp_path / "saved_model", "-o", tmp_path / "out", "--variants", "float32", "--tfjs", "none")
    assert result.exit_code == 0, result.output
    assert "input 'ids' (int32) holds the same value in all 32 rows" in result.stderr
    assert "pass --calibration with real rows" in result.stderr


def test_an_output_without_a_batch_axis_is_called_out_for_the_full_integer_variants(tmp_path):
    """helper-10's case: a sum over the batch's rows. Calibration runs one row at a time, so int8
    fitted its range to one row's sum and clips a batch's (0.99 where float32 gives 4.9)."""
    import tensorflow as tf

    class Summed(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            probs = tf.nn.softmax(tf.matmul(x, self.weights))
            return {"probs": probs, "class_mass": tf.reduce_sum(probs, 0)}

    module = Summed()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.serve)
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32))
    result = run(tmp_path / "saved_model", "-o", tmp_path / "out", "--variants", "float32,int8", "--tfjs", "none",
                 "--calibration", tmp_path / "rows.npz")
    assert "output 'class_mass' has no batch axis ([3])" in result.stderr
    assert "fitted one row at a time" in result.stderr and "ship a float variant" in result.stderr
