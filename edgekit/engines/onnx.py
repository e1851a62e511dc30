"""Load a .onnx and run it with onnxruntime on the CPU: the same small interface as
TFLiteModel (named inputs in, named outputs out; `prepare` for timing loops).
Needs the `onnx` extra. No TensorFlow."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, MissingDependency

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class OnnxModel:
    def __init__(self, path: str | Path, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency("running ONNX needs onnxruntime", "pip install 'edgekit[onnx]'") from None
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise BadInput(f"onnxruntime cannot load {path}: {exc}", "convert again") from None
        self.runtime = f"onnxruntime {ort.__version__}"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dtypes = {i.name: _ONNX_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}

    def _feeds(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise BadInput(f"input {missing[0]!r} is missing", "the model's inputs are: " + ", ".join(self.input_names))
        return {name: np.ascontiguousarray(inputs[name], dtype=self._dtypes[name]) for name in self.input_names}

    def run(self, inputs: dict[str, np.ndarray], signature: str | None = None) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, self._feeds(inputs))))

    def prepare(self, inputs: dict[str, np.ndarray], signature: str | None = None) -> Callable[[], object]:
        feeds = self._feeds(inputs)
        names = self.output_names
        return lambda: self.session.run(names, feeds)
