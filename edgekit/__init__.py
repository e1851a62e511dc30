"""edgekit: take a trained TensorFlow model to phones, browsers and small boards.

The public API is lazy: importing edgekit costs nothing, and only the job you call
imports what it needs (TensorFlow for convert; the device world never does).
Module names differ from the API's function names (`edgekit.build.converter` holds
`convert`), so importing a module never shadows a function here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit._version import __version__

if TYPE_CHECKING:  # the types only: importing edgekit imports none of the jobs
    from pathlib import Path

    from edgekit.benchmark.measure import BenchOptions
    from edgekit.benchmark.results import BenchReport
    from edgekit.build.converter import ConvertOptions
    from edgekit.manifest import Manifest
    from edgekit.packaging import PackageResult

__all__ = ["__version__", "bench", "convert", "package"]


def convert(saved_model: str | Path, out_dir: str | Path, options: ConvertOptions | None = None,
            **settings) -> Manifest:
    """Convert a SavedModel to checked TFLite (and TF.js, ONNX) artifacts with a manifest.
    `settings` are ConvertOptions' fields; see edgekit.build.converter.convert."""
    from edgekit.build.converter import convert as _convert

    return _convert(saved_model, out_dir, options, **settings)


def bench(out_dir: str | Path, options: BenchOptions | None = None, **settings) -> BenchReport:
    """Measure a convert OUT_DIR's artifacts against the SavedModel (and on devices, with
    `devices=`). `settings` are BenchOptions' fields; see edgekit.benchmark.measure.bench."""
    from edgekit.benchmark.measure import bench as _bench

    return _bench(out_dir, options, **settings)


def package(out_dir: str | Path, platform: str, dest: str | Path, **settings) -> PackageResult:
    """Lay a chosen artifact out for an Android, iOS or web build; see edgekit.packaging.package."""
    from edgekit.packaging import package as _package

    return _package(out_dir, platform, dest, **settings)
