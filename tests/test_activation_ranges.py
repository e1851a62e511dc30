"""int8 activation ranges beyond min/max: the range methods on histograms, and convert
choosing among them on a trained model whose plain int8 loses quality (MTCNN's O-Net)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import DIGITS, ONET

from edgekit import convert
from edgekit.build.targets.activation_ranges import BINS, Histogram, choose_ranges
from edgekit.manifest import Manifest


def histogram_of(values: np.ndarray) -> Histogram:
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    counts, _ = np.histogram(values, bins=BINS, range=(low, high))
    return Histogram(float(low), float(high), counts)


def test_minmax_changes_nothing():
    assert choose_ranges({3: histogram_of(np.arange(10.0))}, "minmax") == {}


def test_percentile_clips_a_rare_outlier_that_min_max_would_stretch_the_range_for():
    values = np.concatenate([np.random.default_rng(0).normal(0, 1, 200_000), [60.0]])
    (low, high), = choose_ranges({7: histogram_of(values)}, "percentile").values()
    assert -5 < low < -3 and 3 < high < 5


def test_mse_trades_a_heavy_tail_for_finer_steps():
    values = np.random.default_rng(0).laplace(0, 1, 200_000)  # min -13.5, max 11.9
    (low, high), = choose_ranges({7: histogram_of(values)}, "mse").values()
    assert values.min() * 0.9 < low < -5 and 5 < high < values.max() * 0.9


def test_mse_keeps_the_whole_range_of_values_spread_evenly_over_it():
    (low, high), = choose_ranges({0: histogram_of(np.linspace(-1, 3, 100_000))}, "mse").values()
    assert low == pytest.approx(-1, abs=0.03) and high == pytest.approx(3, abs=0.1)


def test_ranges_always_hold_zero():
    for method in ("percentile", "mse"):
        (low, high), = choose_ranges({0: histogram_of(np.linspace(2, 5, 10_000))}, method).values()
        assert low == 0.0 and high > 2


@pytest.fixture(scope="module")
def onet_int8(tmp_path_factory):
    """O-Net's int8 under the defaults, under auto ranges with nearest weight rounding, and as
    TFLite makes it (min/max ranges, nearest rounding)."""
    out = tmp_path_factory.mktemp("onet")
    runs = {"auto": ("auto", "auto"), "auto nearest": ("auto", "nearest"), "minmax": ("minmax", "nearest")}
    return {name: convert(ONET / "saved_model", out / name.replace(" ", "_"), variants=("int8",), tfjs=(),
                          int8_io="float", calibration=ONET / "calibration.npz", range_method=ranges,
                          weight_rounding=rounding).artifacts[0]
            for name, (ranges, rounding) in runs.items()}


def test_auto_tries_every_method_and_keeps_the_best_on_the_check(onet_int8):
    ranges = onet_int8["auto"].quantization["ranges"]
    candidates = {c["method"]: c for c in ranges["candidates"]}
    assert list(candidates)[:3] == ["minmax", "percentile", "mse"]
    assert ranges["method"] != "minmax"  # on O-Net, clipping beats TFLite's own min/max
    best = candidates[ranges["method"]]["worst_error"]
    assert best == min(c["worst_error"] for c in candidates.values()) < candidates["minmax"]["worst_error"]
    assert ranges["tensors"] > 10
    assert onet_int8["auto"].sha256 != onet_int8["minmax"].sha256


def test_auto_offers_the_best_ranges_with_their_biases_corrected_and_keeps_it_when_it_scores_better(onet_int8):
    """On O-Net the mean shift int8 leaves in each conv/fc channel is a part of its error that
    a bias can take out: the corrected candidate, same bytes, scores better and is kept."""
    candidates = {c["method"]: c for c in onet_int8["auto nearest"].quantization["ranges"]["candidates"]}
    plain = min((c for m, c in candidates.items() if "+" not in m), key=lambda c: c["worst_error"])
    corrected = candidates[f"{plain['method']}+bias"]
    assert corrected["bytes"] == plain["bytes"] and corrected["worst_error"] < plain["worst_error"]
    assert onet_int8["auto nearest"].quantization["ranges"]["method"] == corrected["method"]
    assert (onet_int8["auto nearest"].check.outputs["box"].rms_over_std
            < onet_int8["minmax"].check.outputs["box"].rms_over_std)


def test_auto_offers_the_best_ranges_with_weights_rounded_by_error_feedback_and_keeps_them_when_better(onet_int8):
    """GPTQ-style rounding of O-Net's conv and fully-connected weights, fitted on 150 calibration
    rows and judged against the plain ranges on the 50 held out (before any bias is fitted, which
    would see them too: helper-14), then bias-corrected as the best so far was: same bytes, closer
    to the float model than nearest rounding."""
    ranges = onet_int8["auto"].quantization["ranges"]
    candidates = {c["method"]: c for c in ranges["candidates"]}
    plain = min((c for m, c in candidates.items() if "+" not in m), key=lambda c: c["worst_error"])
    rounded = candidates[f"{plain['method']}+gptq"]
    assert rounded["ops_rounded"] == 8 and rounded["bytes"] == plain["bytes"]  # 4 convolutions, 4 fully-connected
    held = rounded["held_out"]
    assert held["rows"] == 50 and held["against"] == plain["method"] and held["worst_error"] < held["its_worst_error"]
    kept, corrected = candidates[f"{plain['method']}+gptq+bias"], candidates[f"{plain['method']}+bias"]
    assert kept["worst_error"] < corrected["worst_error"] and ranges["method"] == kept["method"]
    assert (onet_int8["auto"].check.outputs["box"].rms_over_std
            < onet_int8["auto nearest"].check.outputs["box"].rms_over_std)


def test_bias_less_convolutions_get_a_bias_of_their_own_to_correct(tmp_path):
    """TFLite gives every bias-less convolution one shared zero bias: each is copied (4 bytes a
    channel) so each op takes its own shift out."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="pixels")
    hidden = keras.layers.MaxPooling2D()(keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs))
    hidden = keras.layers.MaxPooling2D()(keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(hidden))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(hidden))
    keras.Model(inputs, outputs).export(str(tmp_path / "saved_model"), verbose=False)
    with np.load(DIGITS / "calibration.npz") as archive:
        np.savez(tmp_path / "rows.npz", pixels=archive["pixels"][:100])
    ranges = convert(tmp_path / "saved_model", tmp_path / "out", variants=("int8",), tfjs=(),
                     calibration=tmp_path / "rows.npz").artifacts[0].quantization["ranges"]
    plain, corrected = ranges["candidates"][2], ranges["candidates"][3]
    assert corrected["method"].endswith("+bias") and corrected["ops_corrected"] == 2  # both convolutions
    assert 0 < corrected["bytes"] - plain["bytes"] <= 2 * 16 * 4 + 64


def test_bias_correction_needs_enough_calibration_rows_and_says_so(tmp_path):
    """On 16 rows a channel's mean error is mostly those rows' own: fitting it would only
    look better on the rows it was fitted to."""
    ranges = convert(ONET / "saved_model", tmp_path / "few", variants=("int8",), tfjs=(), int8_io="float",
                     calibration=ONET / "calibration.npz", calibration_samples=16).artifacts[0].quantization["ranges"]
    assert [c["method"] for c in ranges["candidates"]] == ["minmax", "percentile", "mse"]
    assert ranges["note"].startswith("bias correction skipped: 16 calibration rows")


def test_bias_correction_takes_each_channels_mean_shift_out_in_graph_order(tmp_path):
    from edgekit.build.targets import bias_correction
    from edgekit.build.targets.activation_ranges import chunks
    from edgekit.build.targets.tflite import (
        TFLiteOptions,
        Variant,
        convert_variant,
        representative,
    )

    captured = {}

    class Keep:
        """Stands where the range picker would: keeps the calibrated and the quantized model."""
        record = reason = refusal = None

        def __call__(self, calibrated, quantize):
            captured["calibrated"], captured["quantized"] = calibrated, quantize(calibrated)
            return captured["quantized"]

    with np.load(ONET / "calibration.npz") as archive:
        rows = {"image": archive["image"][:40].astype(np.float32)}
    convert_variant(str(ONET / "saved_model"), "serving_default", Variant.INT8, TFLiteOptions(int8_io="float"),
                    representative(rows), True, False, Keep())
    parts = list(chunks(rows, 1))
    calibrated, quantized = captured["calibrated"], captured["quantized"]
    fixed, count = bias_correction.corrected(calibrated, quantized, parts, "serving_default")
    from edgekit.build.targets.int8_layers import quantized_layers

    targets = bias_correction._correctable(quantized, quantized_layers(calibrated, quantized)[0])
    assert count == len(targets) == 8 and len(fixed) == len(quantized)  # O-Net's 4 convs and 4 fully-connected

    def mean_shift(model):
        floats = bias_correction._channel_means(calibrated, parts, "serving_default", [t["float_index"] for t in targets])
        stored = bias_correction._channel_means(model, parts, "serving_default", [t["index"] for t in targets])
        return [np.abs((q - t["zero_point"]) * t["scale"] - f).mean() for t, q, f in zip(targets, stored, floats)]

    before, after = mean_shift(quantized), mean_shift(fixed)
    assert all(a < b / 3 for a, b in zip(after, before)), (before, after)  # measured: 4.7x to 60x smaller


def test_candidates_are_scored_on_every_calibration_row_and_the_check_agrees(onet_int8):
    auto, minmax = onet_int8["auto"], onet_int8["minmax"]
    assert minmax.quantization["ranges"]["method"] == "minmax"  # TFLite's own, not scored: no candidates
    assert not {"scored_on_rows", "candidates"} & set(minmax.quantization["ranges"])
    assert auto.quantization["ranges"]["scored_on_rows"] == auto.quantization["calibration_samples"] == 200
    assert auto.check.outputs["box"].rms_over_std < minmax.check.outputs["box"].rms_over_std


def test_plain_int8_of_o_net_fails_its_check_on_the_spread_of_its_box(onet_int8):
    """Still over 5% with the best ranges: a failed check is a result, kept with its figures."""
    for artifact in onet_int8.values():
        assert artifact.status == "failed" and "output box: error is" in artifact.error


def test_an_int8_that_misses_its_check_says_which_layers_add_the_error(onet_int8):
    layers = onet_int8["auto"].quantization["ranges"]["layers"]
    assert {"CONV_2D", "PRELU", "MAX_POOL_2D", "FULLY_CONNECTED"} <= {layer["op"] for layer in layers}
    quantize, first = layers[0], layers[1]  # the float input, quantized; then the first conv
    assert quantize["op"] == "QUANTIZE" and quantize["rms_over_scale"] == 0  # whole pixels, step 1: exact
    assert first["op"] == "CONV_2D" and 0.2 < first["rms_over_scale"] < 1  # little more than rounding
    assert first["range"][0] < 0 < first["range"][1] and first["scale"] > 0
    worst = max(layers, key=lambda layer: layer["added"])
    assert worst["tensor"] == "StatefulPartitionedCall:0"  # the box head amplifies what reaches it
    # minmax alone is not scored on the calibration rows; its check fails, and the diagnosis runs then
    minmax = onet_int8["minmax"]
    assert minmax.status == "failed" and minmax.quantization["ranges"]["layers"][0]["op"] == "QUANTIZE"


def test_diagnose_prints_where_int8_drifts_and_what_to_try(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(ONET / "saved_model"), "-o", str(tmp_path / "out"),
                                      "--variants", "int8", "--tfjs", "none", "--range-method", "minmax",
                                      "--diagnose", "--calibration", str(ONET / "calibration.npz")])
    assert result.exit_code == 1, result.output  # the check failed: a result, not a crash
    line = next(line for line in result.stderr.splitlines() if line.startswith("int8: "))
    assert "the layers that add most: StatefulPartitionedCall:0 (FULLY_CONNECTED" in line
    assert "--variants dynamic" in line and "quantization.ranges.layers" in line


def test_a_passing_int8_gets_its_layers_only_when_asked(tmp_path):
    def ranges(diagnose: bool) -> dict:
        manifest = convert(DIGITS / "saved_model", tmp_path / str(diagnose), variants=("int8",), tfjs=(),
                           calibration=DIGITS / "calibration.npz", diagnose=diagnose)
        assert manifest.artifacts[0].status == "ok"
        return manifest.artifacts[0].quantization["ranges"]

    assert "layers" not in ranges(False)
    assert [layer["op"] for layer in ranges(True)["layers"]][:3] == ["INPUT", "CONV_2D", "CONV_2D"]


def test_int16x8_gets_its_layers_when_asked_and_says_its_weights_set_the_error(tmp_path):
    """int16x8 is calibrated and quantized in one TFLite call: its diagnosis converts again,
    calibrate-only, to compare with. Its activation steps are fine, so its layers sit many steps
    off: the int8 weights' error, which the printed advice names."""
    from click.testing import CliRunner

    from edgekit.cli import cli

    def run(*extra):
        result = CliRunner().invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / str(extra)),
                                          "--variants", "int16x8", "--tfjs", "none", *extra,
                                          "--calibration", str(DIGITS / "calibration.npz")])
        assert result.exit_code == 0, result.output
        return result, Manifest.read(tmp_path / str(extra)).artifact("int16x8").quantization

    _, quantization = run()
    assert "ranges" not in quantization  # it passed, and no diagnosis was asked for
    result, quantization = run("--diagnose")
    layers = quantization["ranges"]["layers"]
    assert quantization["ranges"]["method"] == "minmax"
    assert [layer["op"] for layer in layers][:3] == ["QUANTIZE", "CONV_2D", "CONV_2D"]
    assert all(layer["rms_over_scale"] > 4 for layer in layers if layer["op"] in ("CONV_2D", "FULLY_CONNECTED"))
    line = next(line for line in result.stderr.splitlines() if line.startswith("int16x8: "))
    assert "the int8 weights set this error" in line and "Try float16" in line and "--float-layers" not in line


def test_a_rule_broken_on_the_calibration_rows_fails_int8_even_when_the_check_rows_pass(tmp_path):
    """One calibration row of 50s (pixels are 0..1) coarsens the input step: the 32 check rows
    still agree, but confident decisions flip on the calibration rows, so int8 is not `ok`."""
    from click.testing import CliRunner

    from edgekit.cli import cli

    with np.load(DIGITS / "calibration.npz") as archive:
        pixels = archive["pixels"][:200].copy()
    pixels[0] = 50.0
    np.savez(tmp_path / "outlier.npz", pixels=pixels)
    result = CliRunner().invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / "out"),
                                      "--variants", "int8", "--tfjs", "none", "--check-samples", "4",
                                      "--calibration", str(tmp_path / "outlier.npz")])
    assert result.exit_code == 1, result.output
    int8 = Manifest.read(tmp_path / "out").artifacts[0]
    assert int8.status == "failed" and int8.check.outputs["probs"].confident_top1_agreement == 1.0
    assert int8.error.startswith("on the 200 calibration rows, against the float model: ")
    assert "confident decisions flipped" in int8.error
    assert "warning: input 'pixels' of the calibration data spans 0 to 50 while 98% of its values lie within" \
        in result.stderr
    assert "warning: the checks ran on 4 rows only" in result.stderr


@pytest.fixture(scope="module")
def digits_float_head(tmp_path_factory):
    """digits int8 with its fully-connected ops and its first layer (named as --diagnose lists it)
    kept float."""
    out = tmp_path_factory.mktemp("float_layers")
    plain = convert(DIGITS / "saved_model", out / "plain", variants=("int8",), tfjs=(),
                    calibration=DIGITS / "calibration.npz", diagnose=True).artifacts[0]
    first = plain.quantization["ranges"]["layers"][1]["tensor"]
    kept = convert(DIGITS / "saved_model", out / "kept", variants=("int8",), tfjs=(),
                   calibration=DIGITS / "calibration.npz", float_layers=f"FULLY_CONNECTED,{first}").artifacts[0]
    return plain, kept, out / "kept" / kept.file


def test_float_layers_keep_named_ops_float_and_report_the_byte_cost(digits_float_head):
    plain, kept, _ = digits_float_head
    first = plain.quantization["ranges"]["layers"][1]["tensor"]
    record = kept.quantization["ranges"]["float_layers"]
    assert record["ops_kept_float"] == ["FULLY_CONNECTED"]
    assert [name.split(";")[0] for name in record["tensors_kept_float"]] == [first]
    assert record["bytes"] == kept.bytes > record["bytes_all_int8_estimate"]  # float weights cost bytes
    assert record["byte_cost"] == pytest.approx(kept.bytes / record["bytes_all_int8_estimate"], abs=1e-3)
    assert record["bytes_all_int8_estimate"] == pytest.approx(plain.bytes, rel=0.02)
    assert record["worst_error"] >= 0 and record["worst_error_all_int8"] >= 0
    assert record["ops_int8"] >= 1 and record["ops_float"] >= 2  # the first conv and the dense layer(s)
    assert record["outputs_kept_float"] == [] and "note" not in record  # the output is the softmax's, still int8
    assert kept.status == "ok"  # float ops in an int8 graph still run in LiteRT and pass the check


def test_float_layers_leave_the_kept_ops_out_of_the_int8_graph(digits_float_head):
    from tensorflow.lite.tools import flatbuffer_utils

    _, _, kept_file = digits_float_head
    model = flatbuffer_utils.read_model(str(kept_file))
    graph = model.subgraphs[0]
    codes = [model.operatorCodes[op.opcodeIndex] for op in graph.operators]
    fully_connected = [op for op, code in zip(graph.operators, codes) if max(code.builtinCode, code.deprecatedBuiltinCode) == 9]
    assert fully_connected and all(graph.tensors[op.outputs[0]].type == 0 for op in fully_connected)  # FLOAT32


def test_float_layers_take_op_types_in_any_case_and_fail_int8_when_nothing_is_left_in_int8(tmp_path):
    everything = "conv_2d,Max_Pool_2D,reshape,shape,strided_slice,pack,fully_connected,softmax"
    int8 = convert(DIGITS / "saved_model", tmp_path / "all", variants=("int8",), tfjs=(),
                   calibration=DIGITS / "calibration.npz", float_layers=everything).artifacts[0]
    record = int8.quantization["ranges"]["float_layers"]
    assert record["ops_kept_float"] == sorted(everything.upper().split(","))
    assert record["ops_int8"] == 0
    assert int8.status == "failed" and "nothing runs in int8" in int8.error and "float32" in int8.error


def test_an_output_kept_float_under_int8_io_is_said_to_be_quantized_again(tmp_path):
    int8 = convert(DIGITS / "saved_model", tmp_path / "softmax", variants=("int8",), tfjs=(),
                   calibration=DIGITS / "calibration.npz", float_layers="SOFTMAX").artifacts[0]
    record = int8.quantization["ranges"]["float_layers"]
    assert record["outputs_kept_float"] == ["StatefulPartitionedCall:0"]
    assert "--int8-io float" in record["note"]


@pytest.mark.parametrize("args, message", [
    (["--variants", "int8", "--float-layers", "FULLY_CONECTED"],
     "the model has no op output or op type named 'FULLY_CONECTED'"),
    (["--variants", "int8", "--float-layers", "LSTM"], "op types this model has: CONV_2D, FULLY_CONNECTED"),
    (["--variants", "int8", "--float-layers", "serving_default_pixels:0"], "is the model's input or its quantization"),
    (["--variants", "int8", "--float-layers", "INPUT"], "is the model's input or its quantization"),
    (["--variants", "int8", "--float-layers", " , ,"], "--float-layers names no layer"),
    (["--float-layers", "FULLY_CONNECTED", "--no-calibration"], "needs calibration data"),
    (["--variants", "float32", "--float-layers", "FULLY_CONNECTED"],
     "--float-layers only applies to the int8 variant"),
    (["--variants", "dynamic", "--float-layers", "FULLY_CONNECTED", "--range-method", "mse"],
     "--float-layers, --range-method mse only apply to the int8 variant"),
    (["--variants", "dynamic,float16", "--diagnose"],
     "--diagnose only applies to the full-integer variants (int8, int16x8), which this run does not build"),
    (["--diagnose", "--no-calibration"], "--diagnose only applies to the full-integer variants, which need calibration"),
])
def test_int8_only_options_that_cannot_apply_are_bad_input_and_write_nothing(tmp_path, args, message):
    from click.testing import CliRunner

    from edgekit.cli import cli

    calibration = [] if "--no-calibration" in args else ["--calibration", str(DIGITS / "calibration.npz")]
    args = [arg for arg in args if arg != "--no-calibration"]
    result = CliRunner().invoke(cli, ["convert", str(DIGITS / "saved_model"), "-o", str(tmp_path / "out"),
                                      "--tfjs", "none", *calibration, *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
    if "FULLY_CONECTED" in args:
        assert "did you mean FULLY_CONNECTED" in result.stderr
    if "LSTM" in args:
        assert "did you mean" not in result.stderr  # no op type the model lacks is suggested


def test_a_tensor_the_quantizer_gave_no_step_has_no_figure_and_the_manifest_is_written(tmp_path):
    """An unrolled GRU's zero initial state (FILL) is quantized with scale 0: its error over its
    step is no number. helper-11's convert then died writing the manifest (JSON has no NaN) and
    lost every artifact; the figure is None now."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3), name="seq")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GRU(4, unroll=True)(inputs)))
    model.export(str(tmp_path / "saved_model"), verbose=False)
    np.savez(tmp_path / "rows.npz", seq=np.random.default_rng(0).normal(size=(40, 4, 3)).astype(np.float32))
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("int16x8",), tfjs=(), diagnose=True,
                       calibration=tmp_path / "rows.npz")
    layers = manifest.artifacts[0].quantization["ranges"]["layers"]
    assert [(layer["op"], layer["rms_over_scale"]) for layer in layers if layer["scale"] == 0] == [("FILL", None)]
    assert Manifest.read(tmp_path / "out").artifacts[0].quantization["ranges"]["layers"] == layers
