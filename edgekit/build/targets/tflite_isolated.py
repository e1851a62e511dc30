"""A calibrated TFLite conversion in a process of its own, for models TFLite's calibrator may
crash on.

TensorFlow 2.21's calibrator dies with a segmentation fault on some graphs with control flow
(a `tf.while_loop`, measured), and a crash in-process would take every other artifact with it.
For such models the int8 and int16x8 conversions run here instead: `python -m
edgekit.build.targets.tflite_isolated JOB RESULT`, with the arguments and the result pickled in a
private temporary folder (edgekit's own objects, between its own processes). A crash becomes
that variant's failure, named, and the others still land. It costs one TensorFlow import
(about 3 s), so only models with control flow pay it.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.errors import ConversionFailed, EdgekitError

CONTROL_FLOW_OPS = frozenset({"While", "StatelessWhile", "If", "StatelessIf"})


def convert(saved_model_dir: str, signature: str, variant, options, rows, quiet: bool, start_with_flex: bool,
            picker, control_flow: tuple[str, ...]):
    """tflite.convert_variant's result (and the picker's record, reason, refusal and the models a
    later diagnosis needs, copied onto `picker`), from a child process."""
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-") as folder:
        job, result = Path(folder) / "job.pickle", Path(folder) / "result.pickle"
        job.write_bytes(pickle.dumps((saved_model_dir, signature, variant, options, rows, quiet, start_with_flex,
                                      picker)))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        done = subprocess.run([sys.executable, "-m", __name__, str(job), str(result)], capture_output=quiet,
                              env=env)
        if done.returncode < 0 or not result.is_file():
            how = (f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0
                   else f"exit {done.returncode}")
            raise ConversionFailed(
                f"{variant.value}: TFLite's converter crashed ({how}) while calibrating this model, whose graph "
                f"has control flow ({', '.join(control_flow)})",
                "TensorFlow 2.21's calibrator cannot take it: ship dynamic or float16 (no calibration), or "
                "rewrite the loop with a fixed number of steps")
        outcome, state = pickle.loads(result.read_bytes())
    if isinstance(outcome, EdgekitError):
        raise outcome
    if picker is not None:
        picker.record, picker.reason, picker.refusal, picker.calibrated, picker.kept = state
    return outcome


def main(job: str, result: str) -> None:
    from edgekit.build.targets.tflite import convert_variant, representative

    saved_model_dir, signature, variant, options, rows, quiet, start_with_flex, picker = pickle.loads(
        Path(job).read_bytes())
    try:
        outcome = convert_variant(saved_model_dir, signature, variant, options, representative(rows), quiet,
                                  start_with_flex, picker)
    except EdgekitError as exc:
        outcome = exc
    state = (picker.record, picker.reason, picker.refusal, picker.calibrated, picker.kept) if picker else None
    Path(result).write_bytes(pickle.dumps((outcome, state)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
