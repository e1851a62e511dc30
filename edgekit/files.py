"""Files as edgekit writes and identifies them.

Folders are built aside and renamed into place, so a failure never leaves one half-written
(convert's OUT_DIR, package's model folder). Files are identified by sha256 (the manifest,
model_info.json, incremental packaging).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def staging_dir(target: Path) -> Path:
    """An empty hidden folder beside `target` (same filesystem, so the rename is atomic),
    with the mode a plain mkdir would give (mkdtemp's is 0700). Its name carries this
    process's id, so the next run can remove what a killed run left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


def remove_leftovers(target: Path) -> list[Path]:
    """Staging and swapped-out folders beside `target` whose process is gone (killed
    mid-run): a folder of a run still going is left alone."""
    removed = []
    for sibling in target.parent.glob(f".{target.name}.*"):
        match = re.fullmatch(rf"\.{re.escape(target.name)}\.(?:partial-(\d+)-\w+|old-(\d+))", sibling.name)
        if match and sibling.is_dir() and not _alive(int(match[1] or match[2])):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def replace_dir(staging: Path, target: Path) -> None:
    """Swap `staging` in as `target` by renames; the old `target`, if any, is removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: Path) -> str:
    """One digest for a folder: every file's relative path and content, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()
