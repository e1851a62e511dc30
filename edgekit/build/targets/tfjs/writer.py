"""The TF.js writer: every step from SavedModel to tfjs_<variant>/ folders, run in a
subprocess (`python -m edgekit.build.targets.tfjs`) because grappler can abort the whole process
(a fatal "Type not set")."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.build.targets.tfjs.fuse import fuse
from edgekit.build.targets.tfjs.graph import (
    freeze,
    graph_ops,
    optimize,
    signature_entry,
    supported_ops,
)
from edgekit.build.targets.tfjs.variants import (
    DEFAULT_SHARD_MB,
    DEFAULT_VARIANTS,
    parse_variants,
)
from edgekit.build.targets.tfjs.weights import extract_weights, write_variant
from edgekit.errors import BadInput, ConversionFailed

UNSUPPORTED_EXIT = 3  # the subprocess's exit status when the op check fails


def build(saved_model_dir: Path, signature: str, out: Path, variants: tuple[str, ...], shard_mb: float,
          node_modules: Path | None, calibration: Path | None = None) -> dict:
    """Everything the subprocess does; returns what the parent needs for the manifest.
    `calibration`: an .npz of calibration rows by input name, to fit uint8 weights on."""
    import tensorflow as tf
    from google.protobuf import json_format

    from edgekit._version import __version__

    graph_def, inputs, outputs = freeze(saved_model_dir, signature)
    keep = {e.tensor.split(":")[0] for e in inputs + outputs}
    graph_def = optimize(graph_def, outputs)
    unfused = graph_def
    graph_def, fused = fuse(graph_def, keep)
    known, ops_source = supported_ops(node_modules)
    unsupported = sorted(graph_ops(graph_def) - known)
    summary = {"inputs": [e.__dict__ for e in inputs], "outputs": [e.__dict__ for e in outputs],
               "fused": fused, "ops_source": ops_source, "unsupported": unsupported}
    if unsupported:
        return summary
    fitted = None
    if calibration is not None and "uint8" in variants:  # before extract_weights empties the constants
        fitted, summary["weight_rounding"] = _fitted_uint8(unfused, graph_def, inputs, calibration)
    weights = extract_weights(graph_def)
    topology = json_format.MessageToDict(graph_def)
    signature_json = {"inputs": {e.key: signature_entry(e) for e in inputs},
                      "outputs": {e.key: signature_entry(e) for e in outputs}}
    shard_bytes = int(shard_mb * 1024 * 1024)
    for variant in variants:
        write_variant(out / f"tfjs_{variant}", topology, signature_json, weights, variant, shard_bytes,
                      tf.__version__, __version__, fitted)
    return summary


def _fitted_uint8(unfused, graph_def, inputs, calibration: Path) -> tuple[dict, dict]:
    """rounding.fitted_uint8 on the calibration rows; whatever it meets leaves the weights at
    nearest with a note (it is a refinement: never costs the artifact)."""
    import numpy as np

    from edgekit.build.targets.activation_ranges import first_line
    from edgekit.build.targets.tfjs.rounding import fitted_uint8

    try:
        with np.load(calibration) as archive:
            rows = {key: archive[key] for key in archive.files}
        return fitted_uint8(unfused, graph_def, inputs, rows)
    except Exception as exc:  # noqa: BLE001 - an optional refinement
        return {}, {"method": "nearest", "note": f"error-feedback rounding skipped: {first_line(exc)}"}


class TfjsWriter:
    """The TF.js writer in its own process: `python -m edgekit.build.targets.tfjs`.

    convert starts it before the TFLite variants, so on a second core it overlaps them,
    and collects it with `result()` at the first TF.js step. Its output goes to temporary
    files, not pipes: a child that logs more than a pipe holds would block while nobody reads.
    """

    def __init__(self, saved_model_dir: Path, signature: str, variants: tuple[str, ...], shard_mb: float,
                 out: Path, node_modules: Path | None, quiet: bool = True, calibration: Path | None = None):
        self.quiet = quiet  # False (--debug): the writer's log is copied to stderr when it ends
        command = [sys.executable, "-m", "edgekit.build.targets.tfjs", str(saved_model_dir), "--signature", signature,
                   "--out", str(out), "--variants", ",".join(variants), "--shard-mb", str(shard_mb)]
        if node_modules is not None:
            command += ["--node-modules", str(node_modules)]
        if calibration is not None:
            command += ["--calibration", str(calibration)]
        self._stdout, self._stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdout=self._stdout, stderr=self._stderr,
                                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        self._result: dict | ConversionFailed | None = None

    def result(self) -> dict:
        """Wait for the writer; its summary, or ConversionFailed naming the ops TF.js lacks
        (nothing written) or saying how the process died."""
        if self._result is None:
            code = self._process.wait()
            stdout, stderr = (self._read(f) for f in (self._stdout, self._stderr))
            if not self.quiet:
                sys.stderr.write(stderr)
            try:
                self._result = _summary(code, stdout, stderr)
            except ConversionFailed as exc:
                self._result = exc
        if isinstance(self._result, ConversionFailed):
            raise self._result
        return self._result

    def stop(self) -> None:
        """Kill a writer still running (convert failed or was interrupted): it writes into
        the staging folder that is about to be removed."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for handle in (self._stdout, self._stderr):
            handle.close()

    @staticmethod
    def _read(handle) -> str:
        handle.seek(0)
        return handle.read().decode(errors="replace")


def _summary(code: int, stdout: str, stderr: str) -> dict:
    last = (stdout.strip().splitlines() or [""])[-1]
    if code in (0, UNSUPPORTED_EXIT) and last.startswith("{"):
        summary = json.loads(last)
        if summary["unsupported"]:
            raise ConversionFailed(
                f"tfjs: TF.js has no kernel for these ops: {', '.join(summary['unsupported'])} "
                f"(checked against {summary['ops_source']})",
                "the TFLite artifacts do not depend on it; for the web, replace those ops in the model")
        return summary
    log = [line for line in stderr.strip().splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in log if line.startswith("error: ")]
    if code == 2 and ours:  # a model the writer refused, with its reason
        raise ConversionFailed(ours[-1], "the TFLite artifacts do not depend on it")
    errors = [line for line in log if line.startswith(("F0", "E0")) or "Error" in line]
    detail = (errors or log or ["no output"])[-1].strip()
    how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
    raise ConversionFailed(f"tfjs: the TF.js writer {how}: {detail}",
                           "the TFLite artifacts do not depend on it; rerun with --debug for the full log")


def convert_tfjs(saved_model_dir: Path, signature: str, variants: tuple[str, ...], shard_mb: float,
                 out: Path, node_modules: Path | None) -> dict:
    """Write OUT/tfjs_<variant>/ for each variant and return the writer's summary."""
    writer = TfjsWriter(saved_model_dir, signature, variants, shard_mb, out, node_modules)
    try:
        return writer.result()
    finally:
        writer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="edgekit's TF.js writer (run by edgekit convert)")
    parser.add_argument("saved_model", type=Path)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB)
    parser.add_argument("--node-modules", type=Path, default=None)
    parser.add_argument("--calibration", type=Path, default=None, help="rows (.npz by input name) to fit uint8 on")
    args = parser.parse_args(argv)
    if args.node_modules is None:
        from edgekit.engines.tfjs import node_modules

        args.node_modules = node_modules()
    try:
        summary = build(args.saved_model, args.signature, args.out, parse_variants(args.variants), args.shard_mb,
                        args.node_modules, args.calibration)
    except (BadInput, ConversionFailed) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))
    sys.exit(UNSUPPORTED_EXIT if summary["unsupported"] else 0)
