"""Load a .tflite and run one of its signatures: the device world's only engine.

Imports numpy and the LiteRT interpreter (`ai_edge_litert`, or `tflite_runtime` where that
is what a device has) and nothing else: a Raspberry Pi has no TensorFlow. Quantized
(int8/int16/uint8) inputs and outputs are mapped to and from real values here with the
tensor's own scale and zero point, so callers always speak float.

An interpreter is not thread-safe: use one `TFLiteModel` per thread (serve keeps a pool).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.errors import BadInput, FlexOpsRequired, MissingDependency, NotFound

DEFAULT_SIGNATURE = "serving_default"
_FLEX_MESSAGE = "Select TensorFlow op"


def interpreter_class() -> tuple[type, str]:
    """The Interpreter class of the installed runtime, and that runtime's name and version."""
    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, f"ai-edge-litert {_version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite_runtime

        return tflite_runtime.Interpreter, f"tflite-runtime {_version('tflite-runtime')}"
    except ImportError:
        raise MissingDependency(
            "no TFLite runtime is installed (neither ai-edge-litert nor tflite-runtime)",
            "pip install 'edgekit[runtime]'",
        ) from None


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class TensorInfo:
    """What a caller needs to feed or read one tensor of a signature."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 where the model accepts any size (shape_signature)
    scale: float | list[float] | None  # None: not quantized
    zero_point: int | list[int] | None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    def quantization_dict(self) -> dict[str, Any] | None:
        if self.scale is None:
            return None
        return {"scale": self.scale, "zero_point": self.zero_point}


def _from_details(name: str, detail: dict[str, Any]) -> TensorInfo:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
    scale: float | list[float] | None = None
    zero_point: int | list[int] | None = None
    if scales.size == 1 and scales[0] != 0:
        scale, zero_point = float(scales[0]), int(zero_points[0])
    elif scales.size > 1:
        scale, zero_point = [float(s) for s in scales], [int(z) for z in zero_points]
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    return TensorInfo(
        name=name,
        dtype=np.dtype(detail["dtype"]),
        shape=tuple(int(d) for d in shape),
        scale=scale,
        zero_point=zero_point,
    )


def quantize(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    """real -> stored integer, q = round(real / scale) + zero_point, clipped to the dtype.
    float32 arithmetic (exact enough to round to 8 or 16 bits) and in place: this runs on
    every request of a quantized model, on arrays of an image's size."""
    low, high = _limits(info.dtype)
    q = np.array(values, dtype=np.float32)  # a copy we may overwrite
    if not np.isfinite(q).all():
        raise BadInput(f"input {info.name!r} holds NaN or infinity, which its {info.dtype.name} quantization "
                       "cannot represent", "send finite values")
    np.multiply(q, np.float32(1.0 / info.scale), out=q)
    np.rint(q, out=q)
    np.add(q, np.float32(info.zero_point), out=q)
    np.maximum(q, low, out=q)
    np.minimum(q, high, out=q)
    return q.astype(info.dtype)


@functools.lru_cache(maxsize=None)
def _limits(dtype: np.dtype) -> tuple[np.float32, np.float32]:
    limits = np.iinfo(dtype)
    return np.float32(limits.min), np.float32(limits.max)


def dequantize(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    """stored integer -> real, real = scale * (q - zero_point)."""
    return (np.asarray(values, dtype=np.float32) - np.float32(info.zero_point)) * np.float32(
        info.scale
    )


def zeros(shape, dtype, rows: int = 1) -> np.ndarray:
    """Zeros for a tensor whose unknown axes (None or -1; no shape at all: one axis) are
    `rows` long: what warm-ups, memory probes and growth measurements feed a model."""
    return np.zeros([rows if d is None or d < 0 else d for d in (shape if shape is not None else [-1])], dtype)


def _open_axes(interpreter) -> bool:
    """Whether an input has an unknown axis beyond the first (the batch)."""
    return any(-1 in list(detail.get("shape_signature", []))[1:] for detail in interpreter.get_input_details())


def flex_ops_in(message: str) -> list[str]:
    """The Flex op names LiteRT's refusal mentions, e.g. ['FlexTensorListReserve']."""
    return sorted(set(re.findall(r"\b(Flex\w+)", message)))


# TfLiteType codes, as LiteRT's kernels name the type they were given ("got 7")
_TFLITE_TYPES = {1: "float32", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16", 9: "int8",
                 10: "float16", 11: "float64", 13: "uint64", 16: "uint32", 17: "uint16", 18: "int4"}


def runtime_error_text(exc: BaseException) -> str:
    """LiteRT's invoke() error in words: a kernel's "got 7" becomes "got int16" (an op the
    converter quantized but LiteRT has no kernel for at that type), with its sentences apart."""
    text = str(exc).strip()
    for times in (3, 2):  # LiteRT repeats a whole message: "div.cc:262 ... failed to invoke.div.cc:262 ..."
        if len(text) % times == 0 and text == text[: len(text) // times] * times:
            text = text[: len(text) // times]
    text = re.sub(r"(?<=[a-z])(?=Node number)", ". ", text)
    text = re.sub(r"\.(?=[A-Z])", ". ", text)  # LiteRT runs its messages together: "...prepare.XNNPack ..."
    text = re.sub(r"\bgot (\d+)\b", lambda m: f"got {_TFLITE_TYPES.get(int(m[1]), m[1])}", text)
    sentences = re.split(r"(?<=\.)\s+", text)  # LiteRT repeats its lines: XNNPACK's reshape error comes twice
    return " ".join(dict.fromkeys(sentences))


class TFLiteModel:
    """One loaded .tflite, ready to run any of its signatures on float or integer inputs."""

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None):
        interpreter_cls, self.runtime = interpreter_class()
        kwargs: dict[str, Any] = {"num_threads": num_threads} if num_threads else {}
        source = "model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise BadInput(f"{model} does not exist", "pass the path of a .tflite file")
        try:
            if isinstance(model, bytes):
                self._interpreter = interpreter_cls(model_content=model, **kwargs)
            else:
                self._interpreter = interpreter_cls(model_path=str(model), **kwargs)
            try:
                self._interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                # An input with unknown axes beyond the batch is 1 long by default: too small for a model
                # that shrinks its input (an unpadded or strided conv). Each call sizes its tensors anyway.
                if _FLEX_MESSAGE in str(exc) or not _open_axes(self._interpreter):
                    raise
        except (RuntimeError, ValueError) as exc:
            message = str(exc)
            if _FLEX_MESSAGE in message:
                ops = flex_ops_in(message) or ["unknown"]
                raise FlexOpsRequired(
                    f"{source} uses TensorFlow (flex) ops that this runtime cannot run: "
                    + ", ".join(ops),
                    "no Python LiteRT wheel links the flex delegate; convert without "
                    "--allow-flex, or run it in an app that bundles "
                    "tensorflow-lite-select-tf-ops",
                ) from exc
            raise BadInput(
                f"cannot load {source} as a TFLite model: {message}",
                "check that the file is a complete .tflite written by `edgekit convert`",
            ) from exc
        self._runners: dict[str, Any] = {}
        self._infos: dict[tuple[str, str], list[TensorInfo]] = {}
        self.signature_names = list(self._interpreter.get_signature_list())
        if not self.signature_names:
            raise BadInput(f"{source} has no signatures, so its inputs have no names to serve them by",
                           "convert it from a SavedModel (edgekit convert, or TFLiteConverter.from_saved_model)")

    def _runner(self, signature: str | None) -> Any:
        name = signature or self.signature_names[0]
        if name not in self._runners:
            if name not in self.signature_names:
                raise NotFound(
                    f"the model has no signature {name!r}",
                    "use one of: " + ", ".join(self.signature_names),
                )
            self._runners[name] = self._interpreter.get_signature_runner(name)
        return self._runners[name]

    def _details(self, signature: str | None, kind: str) -> list[TensorInfo]:
        key = (signature or self.signature_names[0], kind)
        if key not in self._infos:
            runner = self._runner(signature)
            details = runner.get_input_details() if kind == "in" else runner.get_output_details()
            self._infos[key] = [_from_details(name, detail) for name, detail in details.items()]
        return self._infos[key]

    def inputs(self, signature: str | None = None) -> list[TensorInfo]:
        return self._details(signature, "in")

    def outputs(self, signature: str | None = None) -> list[TensorInfo]:
        return self._details(signature, "out")

    def tensor_bytes(self) -> int:
        """Bytes of the interpreter's tensors at their current shapes, weights included."""
        return sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
                   for d in self._interpreter.get_tensor_details())

    def feeds(
        self, inputs: dict[str, np.ndarray], signature: str | None = None, real: bool = True
    ) -> dict[str, np.ndarray]:
        """The arrays the interpreter takes: real values quantized for integer tensors (when
        `real`), everything cast to the tensor's dtype; a missing input is a BadInput."""
        feeds = {}
        for info in self.inputs(signature):
            if info.name not in inputs:
                raise BadInput(
                    f"input {info.name!r} is missing",
                    "the signature's inputs are: " + ", ".join(i.name for i in self.inputs(signature)),
                )
            value = np.asarray(inputs[info.name])
            if real and info.quantized and value.dtype != info.dtype:
                value = quantize(value, info)
            feeds[info.name] = value.astype(info.dtype, copy=False)
        return feeds

    def prepare(self, inputs: dict[str, np.ndarray], signature: str | None = None) -> Callable[[], None]:
        """Resize, allocate and set `inputs` once, without running, and return a
        zero-argument invoke: what a timing loop should call, as TFLite's benchmark_model
        does (no per-call resize, copy or dict). Its first call is the cold inference.

        It drives the interpreter's wrapper with the signature's subgraph index, the same
        calls SignatureRunner makes: once a SignatureRunner exists, the public Interpreter
        methods refuse to run (they count references to that wrapper)."""
        runner = self._runner(signature)
        feeds = self.feeds(inputs, signature)
        wrapper, subgraph = runner._interpreter_wrapper, runner._subgraph_index
        indices = {name: detail["index"] for name, detail in runner.get_input_details().items()}
        for name, value in feeds.items():
            wrapper.ResizeInputTensor(indices[name], np.array(value.shape, np.int32), False, subgraph)
        wrapper.AllocateTensors(subgraph)
        for name, value in feeds.items():
            wrapper.SetTensor(indices[name], value, subgraph)
        return lambda: wrapper.Invoke(subgraph)

    def run(
        self, inputs: dict[str, np.ndarray], signature: str | None = None, real: bool = True
    ) -> dict[str, np.ndarray]:
        """Run one batch. With real=True, inputs given as real values are quantized for
        integer tensors (an array already in the tensor's dtype passes as it is) and
        integer outputs dequantized, so the caller sees the model's real values."""
        runner = self._runner(signature)
        results = runner(**self.feeds(inputs, signature, real))
        if not real:
            return dict(results)
        infos = {info.name: info for info in self.outputs(signature)}
        return {
            name: dequantize(value, infos[name]) if infos[name].quantized else value
            for name, value in results.items()
        }
