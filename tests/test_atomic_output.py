"""A failed conversion leaves no OUT_DIR and no staging folder; --force swaps atomically."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DIGITS

from edgekit import convert
from edgekit.errors import BadInput


class Interrupted(Exception):
    pass


def _stop_at_second_variant(step):
    if step.stage == "start" and step.index == 2:
        raise Interrupted


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def test_failure_mid_run_leaves_nothing(tmp_path):
    """The TF.js writer starts with the job (its own process); an interrupted convert stops
    it before removing the staging folder, so nothing reappears afterwards."""
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        convert(DIGITS / "saved_model", out, variants=("float32", "float16"), progress=_stop_at_second_variant)
    assert list(tmp_path.iterdir()) == []
    assert _processes_mentioning(f"edgekit.build.targets.tfjs {DIGITS / 'saved_model'} --signature serving_default "
                                 f"--out {tmp_path}") == []


def test_failure_mid_run_with_force_keeps_the_old_out_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    with pytest.raises(Interrupted):
        convert(DIGITS / "saved_model", out, variants=("float32", "float16"), tfjs=(), force=True,
                progress=_stop_at_second_variant)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "keep.txt").read_text() == "previous build"


def test_existing_out_dir_is_refused_without_force_and_replaced_with_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(BadInput, match="already exists"):
        convert(DIGITS / "saved_model", out, variants=("float32",), tfjs=())
    convert(DIGITS / "saved_model", out, variants=("float32",), tfjs=(), force=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model_float32.tflite"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_runs_staging_folders_are_removed_by_the_next_run(tmp_path):
    """Folders of a process that is gone go; those of a process still running stay."""
    import os
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, alive = finished.pid, os.getppid()
    for name in (f".out.partial-{dead}-abc123", f".out.old-{dead}", f".out.partial-{alive}-def456"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_float32.tflite").write_bytes(b"half-written")
    convert(DIGITS / "saved_model", tmp_path / "out", variants=("float32",), tfjs=())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.partial-{alive}-def456", "out"]
