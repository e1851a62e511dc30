"""The one shape every output format has, so the converter loops over targets instead of
knowing each.

A target is built for one convert job (a `BuildContext`), says which steps it will take
(`steps()`: one per variant, in the order the user asked for, and `build_order()`, the
order that is fastest to build them in), builds a step into an `Artifact` (failed,
skipped or unverified: nothing to check) or a `Pending` (written, and opened in its
runtime for the converter to check against the SavedModel), and says which versions of
its tools went into the manifest. `start()` and `stop()` bracket the job, for a target that
works in a process of its own (TF.js). `for_job()` makes the target a convert job asks for
(or None); `TARGETS` in targets/__init__.py is the registry the converter loops over.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.agreement import Tolerance
from edgekit.manifest import Artifact, SignatureSpec, TensorSpec

if TYPE_CHECKING:
    from edgekit.build.converter import ConvertOptions


@dataclass(frozen=True)
class BuildContext:
    """What every target's build reads from the convert job."""

    source_dir: Path
    staging: Path  # the temporary OUT_DIR: a target writes its files here
    signature: str
    signature_spec: SignatureSpec
    calibration_rows: dict[str, np.ndarray] | None
    quiet: bool
    batch: int = 1  # rows per call: the signature's fixed batch size, if it has one
    control_flow: tuple[str, ...] = ()  # While/If ops in the signature's graph (see tflite_isolated)


@dataclass
class Pending:
    """A written artifact whose check (in LiteRT, onnxruntime or TF.js) is still to run."""

    label: str  # "int8", "onnx", "tfjs_uint8": for messages
    fields: dict  # the Artifact's fields so far
    model: object  # the artifact opened in its runtime: .run(inputs, signature), and .close() where it has one
    tolerance: Tolerance  # what the check accepts
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    known_failure: str | None = None  # a check rule it already broke while being built (on other rows)
    # When `model` cannot run the check rows: given why, another way to open it and a note saying so
    fallback: Callable[[str], tuple[object, str]] | None = None
    # When the check fails it: adds what explains the failure to `fields` (an integer model's per-layer errors)
    diagnose_failure: Callable[[], None] | None = None


class Target(ABC):
    format: str  # the manifest's "format": tflite, tfjs, onnx
    engine: str  # the runtime that checks it, for messages

    def __init__(self, context: BuildContext):
        self.context = context

    @classmethod
    @abstractmethod
    def for_job(cls, context: BuildContext, options: ConvertOptions) -> Target | None:
        """This target with its part of the job's options, or None when the job asks for
        none of its artifacts."""

    @abstractmethod
    def steps(self) -> list[str]:
        """The steps (one per artifact) in the order the user asked for."""

    def build_order(self) -> list[str]:
        """The order to build them in (the default: as asked)."""
        return self.steps()

    def start(self) -> None:
        """Before the first build (a target may start work that overlaps the others')."""

    @abstractmethod
    def build(self, step: str) -> Artifact | Pending:
        """Write one artifact to the staging folder and open it for its check."""

    def stop(self) -> None:
        """After the last build, even when the job failed."""

    def versions(self) -> dict[str, str]:
        """Tool versions for the manifest's `versions`."""
        return {}
