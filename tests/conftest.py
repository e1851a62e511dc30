"""Shared fixtures: the shipped sample models, and tiny models built in seconds.

Conversions are session-scoped: a test that only reads a manifest reuses one run.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "digits_cnn"
IRIS = SAMPLES / "iris_two_inputs"


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory) -> Path:
    """The digits CNN converted to all five variants, calibrated on its .npz."""
    from edgekit import convert

    out = tmp_path_factory.mktemp("digits") / "out"
    convert(DIGITS / "saved_model", out, calibration=DIGITS / "calibration.npz")
    return out


@pytest.fixture(scope="session")
def lstm_saved_model(tmp_path_factory) -> Path:
    """A Keras 3 LSTM: its TensorListReserve op has no TFLite builtin (the flex path)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 3), name="seq")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(4)(inputs)))
    path = tmp_path_factory.mktemp("lstm") / "saved_model"
    model.export(str(path), verbose=False)
    return path


@pytest.fixture(scope="session")
def digits_rows() -> dict[str, np.ndarray]:
    with np.load(DIGITS / "eval.npz") as archive:
        return {key: archive[key] for key in archive.files}
