"""Rebuild sample_models/ deterministically from scikit-learn's bundled data sets.

    python scripts/make_sample_models.py [--out sample_models] [--only NAME]

digits_cnn/       a small CNN on load_digits (8x8 grey images, 10 classes):
                  input "pixels" [N, 8, 8, 1] in 0..1, output "probs" [N, 10]
iris_two_inputs/  two named inputs ("sepal", "petal": [N, 2]) and dict outputs
                  ("probs" [N, 3], "embedding" [N, 8]); a second signature "embed"
mtcnn_onet/       MTCNN's O-Net, trained weights from the `mtcnn` package (MIT, its LICENSE
                  copied beside it; `pip install mtcnn==1.0.0` to rebuild): input "image"
                  [N, 48, 48, 3] RGB in 0..255, outputs "box" [N, 4], "landmarks" [N, 10] and
                  "face" [N, 2] (softmax). Its rows are 48x48 crops of scikit-learn's two
                  bundled photographs, stored as uint8. Plain int8 loses quality on it.
Each folder: saved_model/, calibration.npz (training rows, keyed by input name),
eval.npz (held-out rows, plus labels "y" where there are labels), model_card.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _seed() -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


def _split(count: int, held_out: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    cut = int(round(count * (1 - held_out)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _export(out: Path, endpoints: dict, model) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    if out.exists():
        shutil.rmtree(out)
    archive.write_out(str(out), verbose=False)


def make_digits(folder: Path) -> dict:
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    _seed()
    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    train, held = _split(len(labels), 0.3)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pixels[train], labels[train], epochs=30, batch_size=32, verbose=0, shuffle=True)
    accuracy = float(np.mean(np.argmax(model.predict(pixels[held], verbose=0), 1) == labels[held]))

    folder.mkdir(parents=True, exist_ok=True)
    spec = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name="pixels")]
    _export(folder / "saved_model", {"serving_default": (lambda pixels: {"probs": model(pixels)}, spec)}, model)
    np.savez(folder / "calibration.npz", pixels=pixels[train][:300])
    np.savez(folder / "eval.npz", pixels=pixels[held], y=labels[held])
    card = {"task": "classification", "data": "sklearn.datasets.load_digits", "inputs": {"pixels": "8x8 grey, 0..1"},
            "outputs": {"probs": "softmax over digits 0-9"}, "train_rows": int(len(train)),
            "eval_rows": int(len(held)), "eval_accuracy": round(accuracy, 4), "calibration_rows": 300}
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def make_iris(folder: Path) -> dict:
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_iris

    _seed()
    iris = load_iris()
    features = iris.data.astype(np.float32)
    mean, std = features.mean(0), features.std(0)
    features = (features - mean) / std
    labels = iris.target.astype(np.int64)
    train, held = _split(len(labels), 0.3)
    sepal_in = keras.Input((2,), name="sepal")
    petal_in = keras.Input((2,), name="petal")
    joined = keras.layers.Concatenate()([sepal_in, petal_in])
    embedding = keras.layers.Dense(8, activation="tanh", name="embedding")(joined)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(embedding)
    model = keras.Model([sepal_in, petal_in], [probs, embedding])
    trainer = keras.Model([sepal_in, petal_in], probs)
    trainer.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    trainer.fit([features[train, :2], features[train, 2:]], labels[train], epochs=60, batch_size=16, verbose=0)
    predicted = np.argmax(trainer.predict([features[held, :2], features[held, 2:]], verbose=0), 1)
    accuracy = float(np.mean(predicted == labels[held]))

    def serve(sepal, petal):
        p, e = model([sepal, petal])
        return {"probs": p, "embedding": e}

    def embed(sepal, petal):
        return {"embedding": model([sepal, petal])[1]}

    spec = [tf.TensorSpec([None, 2], tf.float32, name="sepal"), tf.TensorSpec([None, 2], tf.float32, name="petal")]
    folder.mkdir(parents=True, exist_ok=True)
    _export(folder / "saved_model", {"serving_default": (serve, spec), "embed": (embed, spec)}, model)
    np.savez(folder / "calibration.npz", sepal=features[train, :2], petal=features[train, 2:])
    np.savez(folder / "eval.npz", sepal=features[held, :2], petal=features[held, 2:], y=labels[held])
    card = {"task": "classification", "data": "sklearn.datasets.load_iris, standardised",
            "feature_mean": mean.round(6).tolist(), "feature_std": std.round(6).tolist(),
            "inputs": {"sepal": "length, width", "petal": "length, width"},
            "outputs": {"probs": "softmax over 3 species", "embedding": "8-d hidden layer"},
            "signatures": ["serving_default", "embed"], "train_rows": int(len(train)),
            "eval_rows": int(len(held)), "eval_accuracy": round(accuracy, 4), "calibration_rows": int(len(train))}
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def photo_crops(count: int, seed: int) -> np.ndarray:
    """`count` random square crops of scikit-learn's two bundled photographs, resized to
    48x48 RGB uint8: natural-image rows without downloading anything."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        size = int(rng.integers(48, 200))
        top, left = int(rng.integers(0, photo.shape[0] - size)), int(rng.integers(0, photo.shape[1] - size))
        crop = tf.image.resize(photo[top:top + size, left:left + size].astype(np.float32), (48, 48))
        crops.append(np.clip(np.round(crop.numpy()), 0, 255).astype(np.uint8))
    return np.stack(crops)


def make_onet(folder: Path) -> dict:
    import importlib.metadata

    import tensorflow as tf
    from mtcnn.network.onet import ONet
    from mtcnn.utils.tensorflow import load_weights

    _seed()
    net = ONet()
    net.build()
    net.set_weights(load_weights("onet.lz4"))

    def serve(image):
        box, landmarks, face = net((image - 127.5) / 128.0)  # mtcnn's own normalisation
        return {"box": box, "landmarks": landmarks, "face": face}

    folder.mkdir(parents=True, exist_ok=True)
    spec = [tf.TensorSpec([None, 48, 48, 3], tf.float32, name="image")]
    _export(folder / "saved_model", {"serving_default": (serve, spec)}, net)
    crops = photo_crops(500, seed=0)
    np.savez_compressed(folder / "calibration.npz", image=crops[:200])
    np.savez_compressed(folder / "eval.npz", image=crops[200:])
    license_text = next(f for f in importlib.metadata.files("mtcnn") if f.name == "LICENSE").read_text()
    (folder / "LICENSE").write_text(license_text)
    card = {"task": "face detection, last stage (box, landmarks and face probability of a 48x48 crop)",
            "source": f"mtcnn {importlib.metadata.version('mtcnn')} (PyPI), onet.lz4: trained weights",
            "license": "MIT, see LICENSE", "data": "48x48 crops of sklearn.datasets.load_sample_images",
            "inputs": {"image": "48x48 RGB, 0..255 (normalised inside the model)"},
            "outputs": {"box": "bounding-box regression (4)", "landmarks": "5 landmarks (10)",
                        "face": "softmax [not face, face]"},
            "calibration_rows": 200, "eval_rows": 300}
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


SAMPLES = {"digits_cnn": make_digits, "iris_two_inputs": make_iris, "mtcnn_onet": make_onet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "sample_models", type=Path)
    parser.add_argument("--only", choices=sorted(SAMPLES), help="rebuild this one only")
    args = parser.parse_args()
    for name, make in SAMPLES.items():
        if args.only in (None, name):
            card = make(args.out / name)
            figure = f"eval accuracy {card['eval_accuracy']:.4f}" if "eval_accuracy" in card else "built"
            print(f"{name}: {figure} ({card['eval_rows']} held-out rows)")


if __name__ == "__main__":
    main()
