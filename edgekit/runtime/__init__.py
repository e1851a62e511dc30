"""The device world: load and run artifacts with the TFLite runtime and numpy only.

Nothing under edgekit.runtime (or edgekit.serve) imports tensorflow, directly or through
a helper; tests/test_device_world.py proves it in a fresh process.
"""
from edgekit.runtime.tflite import TensorInfo, TFLiteModel

__all__ = ["TFLiteModel", "TensorInfo"]
