"""Build a folder aside, then rename it into place: a failure never leaves it half-written.

convert (OUT_DIR) and package (the app's model folder) both write this way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_dir(target: Path) -> Path:
    """An empty hidden folder beside `target` (same filesystem, so the rename is atomic),
    with the mode a plain mkdir would give (mkdtemp's is 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Swap `staging` in as `target` by renames; the old `target`, if any, is removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
