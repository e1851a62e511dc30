"""Calibration and evaluation samples: .npz, .npy (never pickle) and folders of images.

Every loader returns `{input name: array [N, ...]}` checked against a signature, so a
wrong key, shape or dtype fails here with a message naming it, not deep inside the
converter. Images need Pillow (the `convert` extra); everything else is numpy.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, MissingDependency
from edgekit.manifest import SignatureSpec, TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
DEFAULT_CALIBRATION_SAMPLES = 200  # rows int8/int16x8 calibrate on, spread over the data
DEFAULT_CHECK_SAMPLES = 32  # rows each artifact is compared with the SavedModel on
IMAGE_RANGES = {"0:255": (0.0, 255.0), "0:1": (0.0, 1.0), "-1:1": (-1.0, 1.0)}
DEFAULT_BATCH = 32


def load_samples(
    path: str | Path, signature: SignatureSpec, image_range: str = "0:255"
) -> dict[str, np.ndarray]:
    """Read samples for `signature` from a .npz, a .npy or an image folder, and check them."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"calibration data {path} does not exist", "pass a .npz, a .npy or a folder of images")
    if path.is_dir():
        samples = _load_image_folder(path, signature, image_range)
    elif path.suffix == ".npz":
        samples = _load_npz(path, signature)
    elif path.suffix == ".npy":
        samples = _load_npy(path, signature)
    else:
        raise BadInput(
            f"cannot read samples from {path.name}: unknown format {path.suffix or '(none)'}",
            "use a .npz keyed by input name, a .npy (one-input models) or a folder of images",
        )
    return fit_to_signature(samples, signature, str(path))


def _no_pickle(path: Path) -> BadInput:
    return BadInput(
        f"{path} holds Python objects that only pickle can read, and edgekit never unpickles data",
        "save plain numeric arrays: np.save(path, np.asarray(x, dtype=np.float32))",
    )


def _check_magic(path: Path, magic: bytes, kind: str, writer: str) -> None:
    with open(path, "rb") as handle:
        if handle.read(len(magic)) != magic:
            raise BadInput(f"{path} is not a {kind} file", f"write it with {writer}")


def _load_npz(path: Path, signature: SignatureSpec) -> dict[str, np.ndarray]:
    _check_magic(path, b"PK", ".npz", "np.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [spec.name for spec in signature.inputs]
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise BadInput(
                    f"{path.name} has no array named {', '.join(map(repr, missing))}; "
                    f"it holds {', '.join(map(repr, archive.files)) or 'nothing'}",
                    "key each array by the signature's input name: np.savez(path, "
                    + ", ".join(f"{n}=..." for n in names)
                    + ")",
                )
            return {name: archive[name] for name in names}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _no_pickle(path) from exc
        raise BadInput(f"{path} is not a readable .npz: {exc}", "write it with np.savez") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInput(f"{path} is not a readable .npz: {exc}", "write it with np.savez") from exc


def _load_npy(path: Path, signature: SignatureSpec) -> dict[str, np.ndarray]:
    if len(signature.inputs) != 1:
        names = [spec.name for spec in signature.inputs]
        raise BadInput(
            f"a .npy holds one array, but the signature has {len(names)} inputs: {', '.join(names)}",
            "use a .npz keyed by input name: np.savez(path, "
            + ", ".join(f"{n}=..." for n in names)
            + ")",
        )
    _check_magic(path, b"\x93NUMPY", ".npy", "np.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _no_pickle(path) from exc
        raise BadInput(f"{path} is not a readable .npy: {exc}", "write it with np.save") from exc
    return {signature.inputs[0].name: array}


def _load_image_folder(
    path: Path, signature: SignatureSpec, image_range: str
) -> dict[str, np.ndarray]:
    if image_range not in IMAGE_RANGES:
        raise BadInput(
            f"unknown image range {image_range!r}", "use one of: " + ", ".join(IMAGE_RANGES)
        )
    spec = _image_input(signature, path)
    _, height, width, channels = spec.shape
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(
            f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
            "put the calibration images in the folder, or pass a .npz",
        )
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency(
            "reading a folder of images needs Pillow", "pip install 'edgekit[convert]'"
        ) from None
    low, high = IMAGE_RANGES[image_range]
    mode = "L" if channels == 1 else "RGB"
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                resized = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        except OSError as exc:
            raise BadInput(f"cannot read image {file}: {exc}", "remove or replace the file") from exc
        pixels = np.asarray(resized, dtype=np.float32).reshape(height, width, channels)
        images.append(low + pixels * ((high - low) / 255.0))
    return {spec.name: np.stack(images)}


def _image_input(signature: SignatureSpec, path: Path) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise BadInput(
            f"a folder of images can feed a one-input model; this signature has "
            f"{len(signature.inputs)} inputs",
            "pass a .npz keyed by input name",
        )
    spec = signature.inputs[0]
    shape = spec.shape
    if (
        shape is None
        or len(shape) != 4
        or None in shape[1:]
        or shape[3] not in (1, 3)
        or not spec.dtype.startswith("float")
    ):
        raise BadInput(
            f"input {spec.name!r} ({spec.dtype} {shape}) is not a float image batch "
            f"[N, height, width, 1 or 3], so {path} cannot feed it",
            "pass a .npz keyed by input name",
        )
    return spec


def _dtype_fits(array: np.ndarray, dtype: str) -> bool:
    kind = array.dtype.kind
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return kind in "fiub"
    if dtype.startswith("int") or dtype.startswith("uint"):
        return kind in "iub"
    if dtype == "bool":
        return kind == "b"
    if dtype == "string":
        return kind in "SU"
    return False


def fit_to_signature(
    samples: dict[str, np.ndarray], signature: SignatureSpec, source: str
) -> dict[str, np.ndarray]:
    """Check names, shapes, dtypes and values against the signature; cast to its dtypes."""
    fitted = {}
    counts = set()
    for spec in signature.inputs:
        array = np.asarray(samples[spec.name])
        where = f"{source}: input {spec.name!r}"
        if array.dtype == object:
            raise BadInput(f"{where} holds Python objects", "save plain numeric arrays")
        if not _dtype_fits(array, spec.dtype):
            raise BadInput(
                f"{where} is {array.dtype}, which cannot feed a {spec.dtype} input",
                f"save it as {spec.dtype}",
            )
        if spec.shape is not None:
            expected = spec.shape
            got = list(array.shape)
            if len(got) != len(expected) or any(
                e is not None and e != g for e, g in zip(expected[1:], got[1:])
            ):
                shown = ["N" if d is None else d for d in expected]
                raise BadInput(
                    f"{where} has shape {tuple(got)}, the signature wants {shown} "
                    "(first axis: one row per sample)",
                    "reshape the samples to the signature's shape",
                )
        if array.ndim == 0 or len(array) == 0:
            raise BadInput(f"{where} holds no samples", "give at least one sample per input")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise BadInput(f"{where} holds NaN or infinite values", "clean the data first")
        target = np.float32 if spec.dtype == "bfloat16" else (
            np.dtype(spec.dtype) if spec.dtype != "string" else array.dtype
        )
        if array.dtype.kind in "iu" and np.dtype(target).kind in "iu" and array.size:
            limits = np.iinfo(target)
            if array.min() < limits.min or array.max() > limits.max:
                raise BadInput(f"{where} holds {array.dtype} values from {array.min()} to {array.max()}, outside "
                               f"the {spec.dtype} input's range [{limits.min}, {limits.max}]",
                               f"save values that fit {spec.dtype}: a cast would wrap them silently")
        fitted[spec.name] = array.astype(target, copy=False)
        counts.add(len(array))
    if len(counts) > 1:
        raise BadInput(
            f"{source}: inputs have different numbers of samples ({sorted(counts)})",
            "give every input the same number of rows",
        )
    return fitted


def distinct_rows(samples: dict[str, np.ndarray]) -> int:
    """How many rows differ from every other (over all inputs): a calibration set of one image
    repeated has 1, however many rows it holds."""
    import hashlib

    count = len(next(iter(samples.values())))
    return len({hashlib.blake2b(b"".join(np.ascontiguousarray(array[i]).tobytes() for array in samples.values()),
                                digest_size=16).digest() for i in range(count)})


def spread_rows(samples: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """`count` rows spread evenly over the data (all when fewer): deterministic, and not
    just the first class of a sorted data set."""
    total = len(next(iter(samples.values())))
    if count >= total:
        return samples
    index = np.linspace(0, total - 1, count).round().astype(int)
    return {name: array[index] for name, array in samples.items()}


def synthetic_samples(signature: SignatureSpec, count: int) -> dict[str, np.ndarray]:
    """Deterministic inputs for the post-conversion check when no data was given.
    Never used for calibration: full-integer variants need real data."""
    rng = np.random.default_rng(0)
    samples = {}
    for spec in signature.inputs:
        shape = [count] + [1 if d is None else d for d in (spec.shape or [None])[1:]]
        if spec.dtype.startswith("float"):
            samples[spec.name] = rng.random(shape, dtype=np.float32).astype(np.dtype(spec.dtype))
        elif spec.dtype == "bool":
            samples[spec.name] = np.zeros(shape, dtype=bool)
        elif spec.dtype in ("string", "object", "bytes"):
            samples[spec.name] = np.full(shape, b"edgekit", dtype=object)
        else:
            samples[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
    return samples


def value_ranges(rows: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """What the calibration rows span, per input: int8 ranges come from these values, so a
    reader can judge whether they look like what the model will see."""
    ranges = {}
    for name, values in rows.items():
        if values.dtype.kind not in "fiub" or not values.size:
            continue
        flat = values.astype(np.float64).reshape(-1)
        low, p1, p99, high = np.percentile(flat, [0, 1, 99, 100])
        ranges[name] = {"min": float(low), "p1": float(p1), "p99": float(p99), "max": float(high)}
    return ranges


def batch_size(signature: SignatureSpec) -> int:
    """Rows per call: the signature's fixed batch size if it has one, else DEFAULT_BATCH."""
    return signature.fixed_batch or DEFAULT_BATCH


def run_in_batches(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], inputs: dict[str, np.ndarray], batch: int
) -> dict[str, np.ndarray]:
    """Call `run` on `batch` rows at a time and join its outputs: any engine, any row count.
    A model whose outputs do not have a row per example (a sum over the batch, a scalar)
    cannot be run in parts: it gets every row in one call."""
    count = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, count, batch):
        chunk = {k: v[start : start + batch] for k, v in inputs.items()}
        outputs = run(chunk)
        rows = len(next(iter(chunk.values())))
        if count > batch and any(np.ndim(v) == 0 or len(v) != rows for v in outputs.values()):
            return {name: np.array(value) for name, value in run(inputs).items()}
        for name, value in outputs.items():
            parts.setdefault(name, []).append(np.array(value))  # a copy: runtimes reuse buffers
    return {name: np.concatenate(chunks) if chunks[0].ndim else chunks[0] for name, chunks in parts.items()}
