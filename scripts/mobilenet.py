"""MobileNetV2(weights=None) made usable for accuracy figures, shared by the measurement scripts.

Straight from keras.applications its activations vanish through the depth (logits near
1e-11), so every quantized variant looks either perfect or hopeless. We set each
BatchNormalization layer's moving statistics from a real batch (momentum 0, one fit step
at learning rate 0), which leaves the weights alone. No pretrained weights are fetched.

The images are smooth synthetic ones (low-frequency noise, in [-1, 1] as MobileNetV2
expects): nothing can be downloaded here. Every script that uses them says so in its JSON.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth_images(count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, size // 16, size // 16, 3)).astype(np.float32)
    images = coarse.repeat(16, axis=1).repeat(16, axis=2)
    images += rng.normal(0, 0.1, images.shape).astype(np.float32)
    return np.clip(images, -1, 1)


def export_mobilenet_v2(path: Path, batch: np.ndarray, classifier_activation: str | None = "softmax") -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=batch.shape[1:],
                                           classifier_activation=classifier_activation)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "sparse_categorical_crossentropy")
    model.fit(batch, np.zeros(len(batch)), batch_size=len(batch), epochs=1, verbose=0)
    model.export(str(path), verbose=False)
    return path
