"""One service behind both front doors: what REST (app.py) and gRPC (grpc.py) share.

The API key check, model and version lookup, status, the memory budget and inference
slots, the row and size checks, the run itself, metrics and the request log live here,
written once; the doors only map their protocol onto it (paths and JSON bodies, or
protobuf messages and status codes). A limit added here is enforced by both.

A predict goes through `Admission`: the request's estimated peak memory is reserved from
the shared budget (waiting in line, at most --queue-timeout) before anything is decoded,
then an inference slot is taken for decoding, running and encoding, and both are given
back when the reply has left.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, NotFound, ServerBusy, Unauthorized
from edgekit.serve import codec, malloc
from edgekit.serve.limits import (
    FAST_JSON_BYTES_PER_LIST,
    FAST_JSON_BYTES_PER_TEXT_BYTE,
    FAST_JSON_BYTES_PER_VALUE,
    FAST_JSON_PIECE_PARSE_FACTOR,
    JSON_BYTES_PER_LIST,
    JSON_PARSE_FACTOR,
    JSON_REPLY_FACTOR,
    JSON_WORK_PER_TEXT_BYTE,
    MB,
    TENSOR_COPIES,
    Limits,
    MemoryBudget,
    Slots,
    WouldWait,
)
from edgekit.serve.prometheus import ServerMetrics
from edgekit.serve.repository import LoadedVersion, ModelRepository, ServedSignature

log = logging.getLogger("edgekit.serve")
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64


def client_message(exc: EdgekitError) -> str:
    """What a client reads: the problem and, when there is one, the fix; bounded, since a
    message may quote what the client sent."""
    text = exc.message if len(exc.message) <= 1000 else exc.message[:1000] + "..."
    return f"{text} (hint: {exc.hint[:300]})" if exc.hint else text


class Admission:
    """A predict's share of the memory budget, held until its reply has left.

    `wait` False (the event loop's quick path): nothing waits, WouldWait instead.
    `wait_for_memory_here` False (REST): memory is never waited for in the calling thread;
    WouldWait(total) sends the request back to the event loop to wait there (`wait_async`)."""

    def __init__(self, service: Service, held: int = 0):
        self.service, self.held = service, held
        self.wait = True
        self.wait_for_memory_here = True

    def need(self, total: int, what: str) -> None:
        """Hold `total` bytes in all: 413 if it could never fit, else wait for room (or raise
        WouldWait, above)."""
        if self._take_now(total, what):
            return
        if not (self.wait and self.wait_for_memory_here):
            raise WouldWait(total)
        self.service.budget.reserve(total - self.held, self.service.limits.queue_timeout, self.held)
        self.held = total

    async def wait_async(self, total: int) -> None:
        """On the event loop: wait in the budget's line until `total` bytes are held in all."""
        if total > self.held:
            await self.service.budget.reserve_async(total - self.held, self.service.limits.queue_timeout, self.held)
            self.held = total

    def need_now(self, total: int, what: str) -> None:
        """Hold `total` bytes in all, now or never (503): for a caller that holds an inference
        slot, where waiting for memory could wait on requests that wait for that slot."""
        if not self._take_now(total, what):
            raise ServerBusy(f"{what} needs {(total - self.held) / MB:.1f} MB more memory than its first "
                             "estimate, which is in use now", "retry shortly, or send it as .npy")

    def _take_now(self, total: int, what: str) -> bool:
        """413 if `total` could never fit; True once `total` is held (now or already)."""
        budget = self.service.budget
        budget.check(total, what)
        if total > self.held:
            if not budget.try_reserve(total - self.held):
                return False
            self.held = total
        return True

    def close(self) -> bool:
        """Give the memory back; True if the C heap was trimmed too (a large request)."""
        trimmed = False
        if self.held:
            self.service.budget.release(self.held)
            if self.held >= malloc.TRIM_AFTER_BYTES:
                malloc.trim()
                trimmed = True
            self.held = 0
        return trimmed


class Service:
    def __init__(self, repository: ModelRepository, limits: Limits, *, api_key: str | None = None,
                 metrics: ServerMetrics | None = None):
        self.repository, self.limits, self.api_key = repository, limits, api_key
        self.metrics = metrics or ServerMetrics()
        self.budget = MemoryBudget(limits.max_memory_bytes)
        self.slots = Slots(limits.max_inflight)
        self.connections = None  # set by the REST door: a callable counting its open connections
        self.bench = None  # a DeviceBench when the server runs with --allow-bench
        self.shared_metrics = None  # a MetricsFolder when this is one of several worker processes

    # --- who and what ------------------------------------------------------------------------
    def authorize(self, credential: str | None, how: str) -> None:
        """`credential`: what the client sent ("Bearer KEY" or the key alone)."""
        if self.api_key is None:
            return
        given = (credential or "").strip()
        if given[:7].lower() == "bearer ":
            given = given[7:].strip()
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key.encode()):
            raise Unauthorized("missing or wrong API key", how)

    def version_number(self, text: str | None) -> int | None:
        if text is None:
            return None
        number = int(text)
        if number > MAX_VERSION:
            raise NotFound(f"version {text[:40]} is beyond int64, so no such version exists", "use a served version")
        return number

    def resolve(self, model: str, version: int | None, label: str | None) -> LoadedVersion:
        return self.repository.resolve(model, version, label)

    def status(self, model: str, version: int | None, label: str | None) -> list[dict[str, Any]]:
        return self.repository.status(model, version, label)

    # --- predict -----------------------------------------------------------------------------
    def admission(self, held: int = 0) -> Admission:
        return Admission(self, held)

    def json_costs(self, loaded: LoadedVersion, signature: str, body: bytes) -> tuple[int, int]:
        """Peak memory for a JSON body, first and if the codec's fast path declines it: parsing
        it (json_parse_costs), plus a JSON reply for as many rows and values as it holds."""
        served = loaded.signatures.get(signature) or next(iter(loaded.signatures.values()))
        first, general, values = json_parse_costs(body)
        reply = _output_bytes(served, values // served.row_values + 1, values) * JSON_REPLY_FACTOR
        return first + reply, general + reply

    def tensor_cost(self, served: ServedSignature, message_bytes: int, decoded_bytes: int, rows: int,
                    values: int) -> int:
        """Peak memory for a binary body or gRPC message whose tensors are `decoded_bytes`
        (`values` numbers): the body twice (its pieces, then joined), the tensors' copies,
        the outputs and their encoding."""
        return 2 * message_bytes + decoded_bytes * TENSOR_COPIES + _output_bytes(served, rows, values) * 2

    def run(self, loaded: LoadedVersion, signature: str, inputs: dict[str, np.ndarray],
            wait: bool = True) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = loaded.run(signature, inputs, wait)
        self.metrics.inference.observe(time.perf_counter() - started, loaded.name, str(loaded.version))
        return outputs

    def slot(self, wait: bool = True) -> _Slot:
        return _Slot(self.slots, self.limits.queue_timeout if wait else None)

    # --- accounting ---------------------------------------------------------------------------
    @property
    def logs_requests(self) -> bool:
        return log.isEnabledFor(logging.INFO)

    def metrics_text(self, served: dict[str, list[int]]) -> str:
        """What GET /metrics answers: this process's figures, or all workers' (--workers)."""
        if self.shared_metrics is not None:
            return self.shared_metrics.render(served)
        return self.metrics.render(served, self.gauges())

    def gauges(self) -> dict[str, tuple[str, float]]:
        budget = self.budget
        gauges = {
            "edgekit_request_memory_bytes": ("Request memory reserved now (--max-memory-mb budget).", budget.used),
            "edgekit_request_memory_peak_bytes": ("Most request memory reserved at once since start.", budget.peak),
            "edgekit_request_memory_limit_bytes": ("The request memory budget.", budget.capacity),
        }
        if self.connections is not None:
            gauges["edgekit_http_connections"] = ("Open REST connections.", self.connections())
        return gauges

    def record(self, door: str, api: str, model: str, version: str, code: str, seconds: float, **fields) -> None:
        """Metrics and the request's log line, the same for both doors."""
        self.metrics.requests.inc(model, version, api, code)
        if api in ("predict", "grpc_predict") and code in ("200", "OK"):
            self.metrics.latency.observe(seconds, model, version, api)
        if code not in ("200", "OK"):
            self.metrics.errors.inc(code)
        if self.logs_requests:
            log.info(json.dumps({"event": "request", "door": door, "api": api, **fields, "status": code,
                                 "ms": round(seconds * 1000, 3), "model": model, "version": version}))

    def internal_error(self, door: str, where: str, exc: BaseException) -> None:
        import traceback

        log.error(json.dumps({"event": "internal_error", "door": door, "where": where, "error": repr(exc)[:500],
                              "traceback": traceback.format_exc()}))


class _Slot:
    def __init__(self, slots: Slots, timeout: float | None):
        self.slots, self.timeout = slots, timeout

    def __enter__(self) -> None:
        self.slots.acquire(self.timeout)

    def __exit__(self, *exc_info) -> None:
        self.slots.release()


def json_parse_costs(body: bytes) -> tuple[int, int, int]:
    """(memory to parse `body` first, if the fast path declines it, the values it can hold).
    The general path: 32x the body, or more for a body dense with lists (counted by its
    brackets). A body with one quoted string (its key) holds only numbers, lists and literals,
    counted by its commas and brackets (a few ms for 16 MB); the values of any other are
    assumed one per two characters."""
    size = len(body)
    lists = body.count(b"[")
    general = max(size * JSON_PARSE_FACTOR, size * JSON_WORK_PER_TEXT_BYTE + lists * JSON_BYTES_PER_LIST)
    if body.count(b'"') != 2:
        return general, general, size // 2 + 1
    values = body.count(b",") + lists + 1  # a list of k values has k - 1 commas
    if size < codec.FAST_JSON_MIN_BYTES:
        return general, general, values
    piece = min(size, codec.FAST_JSON_PIECE_BYTES + codec.FAST_JSON_PIECE_GAP)  # the largest piece parsed
    first = (size * FAST_JSON_BYTES_PER_TEXT_BYTE + lists * FAST_JSON_BYTES_PER_LIST
             + values * FAST_JSON_BYTES_PER_VALUE + piece * FAST_JSON_PIECE_PARSE_FACTOR)
    return min(general, first), general, values


def _output_bytes(served: ServedSignature, rows: int, values: int) -> int:
    """The outputs' size: from their shapes where only the batch is unknown, else from how
    the interpreter's tensors grew with the inputs at load (an embedding's [N, L, 64])."""
    if served.outputs_known:
        return rows * served.output_row_bytes
    return int(max(rows * served.output_row_bytes, rows * served.row_bytes(values / max(1, rows))))
