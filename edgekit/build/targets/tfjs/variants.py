"""The TF.js variants (how weights are stored), their defaults and check tolerances."""
from __future__ import annotations

from edgekit.agreement import Tolerance
from edgekit.errors import BadInput

VARIANTS = ("float32", "float16", "uint8")
DEFAULT_VARIANTS = ("float32", "uint8")
DEFAULT_SHARD_MB = 4.0
# What the check in TF.js accepts against the SavedModel (see agreement.judge). uint8 stores
# each weight tensor with one affine step of (max - min) / 255, coarser than TFLite's
# per-channel int8 weights (dynamic: 0.05), so its relative L2 may be larger; against the
# spread, every quantized variant is held to the same 5%.
TOLERANCES = {"float32": Tolerance(1e-3, 0.01), "float16": Tolerance(0.01, 0.02), "uint8": Tolerance(0.1, 0.05)}


def parse_variants(text: str) -> tuple[str, ...]:
    """`--tfjs float32,uint8` -> ("float32", "uint8"); "none" -> ()."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise BadInput(f"unknown TF.js variant {', '.join(unknown) or repr(text)}",
                       f"use a comma-separated list of {', '.join(VARIANTS)}, or none")
    return names
