"""Keep TensorFlow's C++ chatter off the user's terminal.

The TFLite converter and calibrator write pages of MLIR notes to file descriptors 1 and
2, under Python's sys.stdout; that would also corrupt `--json` on stdout. We park both
descriptors in a temporary file while native code runs, and hand back what it wrote so
an error can still quote it. `--debug` turns this off.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# File descriptors belong to the process: two threads swapping them at once would leave
# stdout pointing at a closed file. One capture at a time.
_LOCK = threading.RLock()


class CapturedOutput:
    text = ""


@contextmanager
def captured_native_output(enabled: bool = True) -> Iterator[CapturedOutput]:
    captured = CapturedOutput()
    if not enabled:
        yield captured
        return
    with _LOCK, tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")
