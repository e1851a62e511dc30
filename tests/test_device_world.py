"""The device world (edgekit.runtime, edgekit.serve) loads and runs .tflite without importing
TensorFlow, nor the build world (edgekit.build), nor the workstation engines (edgekit.engines,
which drive TF.js in Node without TensorFlow either).

Checked in a fresh interpreter, since this test session has TensorFlow loaded already.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgekit.runtime.tflite import TensorInfo, dequantize, quantize


def test_running_a_tflite_or_tfjs_artifact_imports_no_tensorflow(digits_out):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import edgekit, edgekit.cli, edgekit.manifest, edgekit.agreement, edgekit.errors
        from edgekit.runtime import TFLiteModel
        from edgekit.engines.tfjs import TfjsModel
        manifest = edgekit.manifest.Manifest.read({str(digits_out)!r})
        for artifact in manifest.artifacts:
            path = {str(digits_out)!r} + "/" + artifact.file
            if artifact.format == "tfjs":
                with TfjsModel(path.rsplit("/", 1)[0]) as model:
                    out = model.run({{"pixels": np.zeros((2, 8, 8, 1), np.float32)}})
            else:
                out = TFLiteModel(path).run({{"pixels": np.zeros((2, 8, 8, 1), np.float32)}})
            assert out["probs"].shape == (2, 10) and out["probs"].dtype == np.float32
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("LOADED", loaded)
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def test_quantize_round_trips_within_half_a_step():
    info = TensorInfo("x", np.dtype(np.int8), (-1, 4), scale=0.05, zero_point=-3)
    values = np.array([[-6.0, -0.1, 0.0, 6.0]], np.float32)
    q = quantize(values, info)
    assert q.dtype == np.int8
    assert np.all(np.abs(dequantize(q, info) - np.clip(values, -6.25, 6.5)) <= 0.025 + 1e-6)


def test_quantize_saturates_at_the_dtype_limits():
    info = TensorInfo("x", np.dtype(np.int8), (1,), scale=0.1, zero_point=0)
    assert quantize(np.array([1000.0, -1000.0]), info).tolist() == [127, -128]


def test_runtime_names_missing_inputs_and_unknown_signatures(digits_out):
    from edgekit.errors import BadInput, NotFound
    from edgekit.runtime import TFLiteModel

    model = TFLiteModel(digits_out / "model_float32.tflite")
    with pytest.raises(BadInput, match="'pixels' is missing"):
        model.run({"image": np.zeros((1, 8, 8, 1), np.float32)})
    with pytest.raises(NotFound, match="serving_default"):
        model.run({"pixels": np.zeros((1, 8, 8, 1), np.float32)}, signature="nope")


def test_a_corrupt_file_is_a_clear_error(tmp_path):
    from edgekit.errors import BadInput
    from edgekit.runtime import TFLiteModel

    (tmp_path / "bad.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(BadInput, match="cannot load"):
        TFLiteModel(tmp_path / "bad.tflite")


def test_a_missing_file_says_so(tmp_path):
    from edgekit.errors import BadInput
    from edgekit.runtime import TFLiteModel

    with pytest.raises(BadInput, match="does not exist"):
        TFLiteModel(tmp_path / "nope.tflite")


def test_no_device_world_module_imports_tensorflow_or_the_build_world_even_lazily():
    """Static: every import, at module level or inside a function, of every module a device
    runs (serve and the LiteRT runtime), followed through edgekit's own modules."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "edgekit"
    device_world = [f"edgekit.{world}.{p.stem}".removesuffix(".__init__")
                    for world in ("runtime", "serve") for p in (package / world).glob("*.py")]
    forbidden_roots = {"tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "PIL", "sklearn"}
    build_world = {"edgekit.build", "edgekit.engines", "edgekit.benchmark.measure", "edgekit.benchmark.runners"}

    def source(module: str) -> Path | None:
        path = package.parent / Path(*module.split("."))
        return path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py") \
            if path.with_suffix(".py").is_file() else None

    seen, todo, offenders = set(), list(device_world), []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = source(module)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in forbidden_roots or any(name == b or name.startswith(b + ".")
                                                                 for b in build_world):
                    offenders.append(f"{module} imports {name}")
                elif name.startswith("edgekit") and source(name) is not None:
                    todo.append(name)
    assert not offenders, offenders
    assert "edgekit.serve.app" in seen and "edgekit.runtime.tflite" in seen
