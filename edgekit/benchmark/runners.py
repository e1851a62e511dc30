"""Engines that run a model on named inputs: one small interface, one class per engine.

A runner loads once, runs batches of real values (`run`) for accuracy, and hands back a
zero-argument invoke on fixed inputs (`prepare`) that `latency` and `throughput` time.
An engine that must time itself (TF.js: the calls cross a pipe into Node) overrides
those two. Adding an engine (a remote `edgekit serve`, say) means adding one class here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.benchmark.timing import (
    Latency,
    measure_latency,
    measure_throughput,
    summarize,
)
from edgekit.build.data import run_in_batches
from edgekit.errors import BadInput, EdgekitError
from edgekit.runtime.tflite import runtime_error_text, zeros


class Runner(ABC):
    engine: str
    device: str = "CPU"
    threads: int | None = None

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch of real values in, real values out."""

    @abstractmethod
    def prepare(self, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
        """Inputs set once; the returned call runs the model on them."""

    @abstractmethod
    def memory_argv(self) -> list[str]:
        """The command that loads and runs this model in a fresh process (benchmark.memory)."""

    def run_batches(self, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        return run_in_batches(self.run, inputs, batch)

    def latency(self, inputs: dict[str, np.ndarray], warmup: int, runs: int) -> Latency:
        return measure_latency(self.prepare(inputs), warmup, runs)

    def throughput(self, inputs: dict[str, np.ndarray], rows: int) -> float:
        return measure_throughput(self.prepare(inputs), rows)

    def memory(self) -> dict[str, float] | None:
        """Peak RSS of a fresh process that loads the model and runs it once (None: it failed)."""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(self.memory_argv(), capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        """Let go of what the runner holds beyond this process (TF.js: its Node process)."""


class LiteRTRunner(Runner):
    """A .tflite in the LiteRT interpreter (device world: no TensorFlow)."""

    engine = "litert"

    def __init__(self, path: Path, signature: str, threads: int):
        from edgekit.runtime import TFLiteModel

        self.path, self.signature, self.threads = path, signature, threads
        self.model = TFLiteModel(path, num_threads=threads)
        self.engine = self.model.runtime.split()[0]

    def run(self, inputs):
        try:
            return self.model.run(inputs, self.signature)
        except RuntimeError as exc:  # a kernel LiteRT lacks for a type the converter chose: a row, not a crash
            raise EdgekitError(f"LiteRT stops at run time: {runtime_error_text(exc)}") from None

    def prepare(self, inputs):
        return self.model.prepare(inputs, self.signature)

    def memory_argv(self):
        return [sys.executable, "-m", "edgekit.benchmark.memory", "tflite", str(self.path),
                "--signature", self.signature, "--threads", str(self.threads)]


class OnnxRuntimeRunner(Runner):
    """An .onnx in onnxruntime on the CPU (intra-op threads = `threads`)."""

    engine = "onnxruntime"

    def __init__(self, path: Path, signature: str, threads: int):
        from edgekit.engines.onnx import OnnxModel

        self.path, self.signature, self.threads = path, signature, threads
        self.model = OnnxModel(path, num_threads=threads)

    def run(self, inputs):
        return self.model.run(inputs)

    def prepare(self, inputs):
        return self.model.prepare(inputs)

    def memory_argv(self):
        return [sys.executable, "-m", "edgekit.benchmark.memory", "onnx", str(self.path),
                "--threads", str(self.threads)]


class TfjsRunner(Runner):
    """A TF.js graph model in stock TF.js under Node.js on one backend (cpu or wasm),
    timed inside Node so the pipe to it is not counted. `path` is its model.json."""

    def __init__(self, path: Path, signature: str, backend: str):
        from edgekit.engines.tfjs import TfjsModel

        self.folder, self.backend = Path(path).parent, backend
        self.model = TfjsModel(self.folder, backend)
        self.engine = self.model.runtime.split(" (")[0]  # "tfjs 4.22.0"
        self.device = f"CPU ({backend})"
        self.threads = self.model.threads

    def run(self, inputs):
        return self.model.run(inputs)

    def prepare(self, inputs):
        return lambda: self.model.run(inputs)

    def latency(self, inputs, warmup, runs):
        cold, samples = self.model.time(inputs, warmup, runs)
        return summarize(cold, samples, warmup)

    def throughput(self, inputs, rows):
        calls, seconds = self.model.throughput(inputs, min_seconds=0.3, min_calls=3)
        return rows * calls / seconds

    def memory_argv(self):
        raise NotImplementedError("TF.js memory is read by Node itself: see memory()")

    def memory(self):
        """VmHWM of a fresh Node process that loaded the model and ran it once on zeros (None:
        it could not, e.g. zeros 1 long on an image's unknown axes, as for the other runners)."""
        from edgekit.engines.tfjs import TfjsModel

        try:
            with TfjsModel(self.folder, self.backend) as fresh:
                fresh.run({i["name"]: zeros(i["shape"], i["dtype"] or "float32") for i in fresh.inputs})
                return fresh.memory()
        except EdgekitError:
            return None

    def close(self):
        self.model.close()


RUNNERS = {"tflite": LiteRTRunner, "onnx": OnnxRuntimeRunner, "tfjs": TfjsRunner}  # artifact format -> runner


def tensorflow_device() -> str:
    """'GPU:0 (<name>)' when TensorFlow sees a GPU, else 'CPU': the reference runs there."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', 'GPU')})"


class TensorFlowRunner(Runner):
    """The original SavedModel signature in TensorFlow: the reference every artifact is
    measured against. It runs on the first GPU when one is visible, else the CPU."""

    engine = "tensorflow"

    def __init__(self, saved_model: Path, signature: str):
        import tensorflow as tf

        from edgekit.build import savedmodel

        self.saved_model, self.signature = saved_model, signature
        self.device = tensorflow_device()
        self._tf_device = "/GPU:0" if self.device.startswith("GPU") else "/CPU:0"
        self._loaded = savedmodel.load(saved_model)
        if signature not in self._loaded.signatures:
            raise BadInput(f"the SavedModel has no signature {signature!r}", "convert it again")
        self._function = self._loaded.signatures[signature]
        self._tf = tf

    def run(self, inputs):
        with self._tf.device(self._tf_device):
            outputs = self._function(**{k: self._tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in outputs.items()}

    def prepare(self, inputs):
        with self._tf.device(self._tf_device):
            tensors = {k: self._tf.constant(v) for k, v in inputs.items()}

        def invoke():
            with self._tf.device(self._tf_device):
                # .numpy() waits for the device, so GPU time is counted in full
                return [v.numpy() for v in self._function(**tensors).values()]

        return invoke

    def memory_argv(self):
        return [sys.executable, "-m", "edgekit.benchmark.memory", "savedmodel", str(self.saved_model),
                "--signature", self.signature]
