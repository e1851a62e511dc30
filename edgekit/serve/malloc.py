"""Give freed request memory back to the system (glibc), so a Pi's RSS returns near idle
after a large request instead of staying at its peak.

glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, so later
large buffers (bodies, decoded tensors) come from the heap, which it rarely returns. A
fixed threshold keeps the largest in their own mappings, unmapped on free; a trim after a
large request returns what the heap freed. No-ops where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Buffers up to an image batch's size stay in the heap and are reused (mapping each one
# anew costs page faults on every request: MobileNetV2 over REST went from 543 to 382
# requests/s with a 256 KB threshold); larger ones get their own mapping, returned on free.
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20  # free() trims the heap top past this; trim() below does the rest
TRIM_AFTER_BYTES = 8 << 20  # trim after a request that reserved at least this much

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _mallopt, _malloc_trim = _libc.mallopt, _libc.malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS)
    _mallopt = _malloc_trim = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _mallinfo2 = _libc.mallinfo2  # glibc 2.33 and later (Raspberry Pi OS bookworm: 2.36)
    _mallinfo2.restype = _MallInfo2
except (NameError, AttributeError):
    _mallinfo2 = None


def tune() -> None:
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def trim() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def allocated() -> int | None:
    """Bytes the C heap has handed out now, mmapped blocks included (None where glibc cannot
    say): what an interpreter holds beyond its tensors, XNNPACK's workspaces among it."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)
