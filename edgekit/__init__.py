"""edgekit: take a trained TensorFlow model to phones, browsers and small boards.

The public API is lazy: importing edgekit costs nothing, and only the job you call
imports what it needs (TensorFlow for convert; the device world never does).
Module names differ from the API's function names (`edgekit.converter` holds
`convert`), so importing a module never shadows a function here.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "bench", "convert", "package"]


def convert(*args, **kwargs):
    """Convert a SavedModel to checked TFLite artifacts; see edgekit.converter.convert."""
    from edgekit.converter import convert as _convert

    return _convert(*args, **kwargs)




def bench(*args, **kwargs):
    """Measure a convert OUT_DIR's artifacts against the SavedModel; see edgekit.benchmark.measure.bench."""
    from edgekit.benchmark.measure import bench as _bench

    return _bench(*args, **kwargs)


def package(*args, **kwargs):
    """Lay a chosen artifact out for an Android, iOS or web build; see edgekit.packaging.package."""
    from edgekit.packaging import package as _package

    return _package(*args, **kwargs)
