"""What a client can make the server spend, and the bound on each.

A server left running on a Raspberry Pi gets careless and hostile traffic. Every resource a
request can consume has a bound here, checked *before* it is spent, with the option that
sets it named in the error the client gets:

    resource                          bound                        option
    one request body / gRPC message   16 MB                        --max-body-mb
    request memory, both doors        192 MB (estimated, below)    --max-memory-mb
    predicts decoding or running      2 x interpreters             --max-inflight
    rows per interpreter call         4 MB of tensors (~16 MB)     --max-batch-rows
    request line + headers            16 KB                        --max-header-kb
    a client's silence mid-request    10 s                         --read-timeout
    an idle keep-alive connection     15 s                         --keepalive-timeout
    waiting for memory or a slot      30 s, then 503               --queue-timeout
    open REST connections             256                          --max-connections

Request memory is reserved from one `MemoryBudget` shared by REST and gRPC: a request
reserves its estimated peak before it is decoded and releases it when the reply is
written. The estimate is an upper bound measured on real bodies (scripts/attack_serve.py,
results/serve_attacks.json): parsing JSON takes up to 32x the body in Python objects
(orjson's lists and floats), a large body of numbers only far less (the codec's fast path,
below), a binary body its decoded tensors three times over (the cast, the quantized copy,
the interpreter's input).
"""
from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.errors import BadInput, PayloadTooLarge, ServerBusy

MB = 1 << 20
# Peak bytes per body byte while a JSON body becomes arrays (measured: 15-31x).
JSON_PARSE_FACTOR = 32
# ...unless it is dense with lists (`[[[[0]]]]` per value, `[],[],...`: up to 57x the body, found
# by helper-9): then orjson's working memory, about 13x the text, and each list as a Python object.
JSON_WORK_PER_TEXT_BYTE = 14
JSON_BYTES_PER_LIST = 128
# A large JSON body of numbers only (one quoted string: its key; an image, rows of features) goes
# to the codec's fast path, which parses the numbers in pieces: it is first admitted at what that
# takes (measured with tracemalloc on 12 kinds of body: 3.0-9.1x the body, against 14-24x for the
# general path), costed by its text, lists and values, plus one piece's parse. If the fast path
# declines it, the rest of JSON_PARSE_FACTOR is taken then, or 503 if it is not free at once.
FAST_JSON_BYTES_PER_TEXT_BYTE = 4  # the body's copies: the tensor's text, its marks, the blanked numbers
FAST_JSON_BYTES_PER_LIST = 24  # the bracket positions the checks gather
FAST_JSON_BYTES_PER_VALUE = 24  # each piece's array, the joined array, the cast
FAST_JSON_PIECE_PARSE_FACTOR = 16  # orjson's working memory, per byte of the piece it parses (13.5x seen)
# Peak bytes per output byte while outputs become a JSON reply (orjson from numpy).
JSON_REPLY_FACTOR = 4
# Copies of the decoded tensors alive at once for a binary or gRPC body.
TENSOR_COPIES = 3


@dataclass(frozen=True)
class Limits:
    """The bounds above; validated once, where they are built (the CLI only fills them in)."""

    max_body_bytes: int = 16 * MB
    max_memory_bytes: int = 192 * MB
    max_inflight: int = 4
    max_batch_rows: int | None = None  # None: as many rows as fit BATCH_TENSOR_BYTES of tensors
    max_header_bytes: int = 16 << 10
    read_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    queue_timeout: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_memory_bytes", "max_inflight", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise BadInput(f"--{_option(name)} must be positive", f"e.g. --{_option(name)} {Limits.example(name)}")
        for name in ("read_timeout", "keepalive_timeout", "queue_timeout"):
            if not getattr(self, name) > 0:
                raise BadInput(f"--{_option(name)} must be positive (seconds)", f"e.g. --{_option(name)} 10")
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise BadInput("--max-batch-rows must be positive", "e.g. --max-batch-rows 32, or leave it out (auto)")
        if self.max_body_bytes > self.max_memory_bytes:
            raise BadInput(f"--max-body-mb ({self.max_body_bytes / MB:g}) is larger than --max-memory-mb "
                           f"({self.max_memory_bytes / MB:g}): no body that large could be admitted",
                           "raise --max-memory-mb or lower --max-body-mb")

    @staticmethod
    def example(name: str) -> str:
        return {"max_body_bytes": "32", "max_memory_bytes": "192", "max_header_bytes": "16"}.get(name, "4")

    @property
    def max_buffered_bytes(self) -> int:
        """Bodies still arriving may hold at most a quarter of the memory budget, so
        slow senders cannot keep the requests already read from being decoded."""
        return max(self.max_body_bytes, self.max_memory_bytes // 4)


def _option(field: str) -> str:
    return {"max_body_bytes": "max-body-mb", "max_memory_bytes": "max-memory-mb",
            "max_header_bytes": "max-header-kb"}.get(field, field.replace("_", "-"))


class MemoryBudget:
    """Bytes of request memory in use across both front doors.

    `reserve` waits in one first-come queue, so a large request is not starved by a stream
    of small ones; `try_reserve` never waits (the event loop's quick path); `force` counts
    bytes that are already in memory (a body as it arrives).

    Requests wait holding memory (their body). When the first in line could not fit even
    once every running request is done, because those behind it hold too much, the last in
    line give up at once (503, retry) rather than all waiting out the queue timeout."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        # called (from a worker thread) when a request has to wait: the REST door then drops
        # bodies it had paused mid-way, which hold memory without progressing
        self.on_pressure: Callable[[], None] | None = None

    def check(self, amount: int, what: str) -> None:
        """A request that could never fit: 413, naming the budget and the way around it."""
        if amount > self.capacity:
            raise PayloadTooLarge(
                f"{what} needs an estimated {amount / MB:.1f} MB of memory; this server admits "
                f"{self.capacity / MB:.3g} MB of requests at once (--max-memory-mb)",
                "send fewer rows per request or a binary body (application/x-npy), "
                "or start the server with a larger --max-memory-mb")

    def try_reserve(self, amount: int) -> bool:
        """Reserve now if it fits and nobody is queued first."""
        with self._lock:
            if self._waiters or self.used + amount > self.capacity:
                return False
            self._take(amount)
            return True

    def force(self, amount: int) -> None:
        with self._lock:
            self._take(amount)

    def reserve(self, amount: int, timeout: float, held: int = 0) -> None:
        """Wait (up to `timeout`) for `amount` more bytes; the caller already holds `held`."""
        waiter = self._join_line(amount, held)
        if waiter is not None:
            waiter.signal.wait(timeout)
            self._end_wait(waiter)

    async def reserve_async(self, amount: int, timeout: float, held: int = 0) -> None:
        """`reserve` for the event loop: the request waits in the same line without holding a
        thread. (A REST worker thread that waited here could wait for memory held by the bodies
        of requests queued behind it for a thread: with memory for two requests and two
        threads, the server stood still until the queue timeout.)"""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        waiter = self._join_line(amount, held, lambda: loop.call_soon_threadsafe(_resolve, woken))
        if waiter is None:
            return
        try:
            await asyncio.wait_for(woken, timeout)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:  # the client left while it waited
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.preempted:
                    self.used -= amount  # granted as it left: give it back
                self._grant()
            raise
        self._end_wait(waiter)

    def _join_line(self, amount: int, held: int, notify: Callable[[], None] | None = None) -> _Waiter | None:
        """Take `amount` now if it fits and nobody waits first (None), else a place at the end
        of the line (its holders behind the head may be sent away, `_preempt`)."""
        with self._lock:
            if not self._waiters and self.used + amount <= self.capacity:
                self._take(amount)
                return None
            waiter = _Waiter(amount, held, notify)
            self._waiters.append(waiter)
            self._preempt()
        if self.on_pressure is not None:
            self.on_pressure()
        return waiter

    def _end_wait(self, waiter: _Waiter) -> None:
        """After a wait: return if the memory was granted, else leave the line and 503."""
        with self._lock:
            if waiter in self._waiters:  # still in line at the timeout
                self._waiters.remove(waiter)
                self._grant()
            elif not waiter.preempted:
                return
        raise ServerBusy(f"the server is busy: no memory for this request "
                         f"{'in time' if not waiter.preempted else 'while larger ones wait'} "
                         f"({self.used / MB:.0f} of {self.capacity / MB:.3g} MB in use by other requests)",
                         "retry in a moment, send smaller requests, or raise --max-memory-mb")

    def release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
            self._grant()

    def deficit(self) -> int:
        """Bytes that the first request in line needs beyond what is free (0: none waits). Only
        the first: the line is served in order, and (now that every REST request waiting for
        memory stands in it) counting them all would shed paused bodies the head never needed."""
        with self._lock:
            if not self._waiters:
                return 0
            return max(0, self.used + self._waiters[0].amount - self.capacity)

    def _take(self, amount: int) -> None:
        self.used += amount
        self.peak = max(self.peak, self.used)

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0].amount <= self.capacity:
            waiter = self._waiters.popleft()
            self._take(waiter.amount)
            waiter.wake()

    def _preempt(self) -> None:
        """While the head of the line could not fit even with every running request done,
        send the last in line away (it raises ServerBusy and frees what it holds)."""
        while len(self._waiters) > 1:
            waiting_hold = sum(w.held for w in self._waiters)
            if self._waiters[0].amount + waiting_hold <= self.capacity:
                return
            last = self._waiters.pop()
            last.preempted = True
            last.wake()


class _Waiter:
    __slots__ = ("amount", "held", "signal", "preempted", "notify")

    def __init__(self, amount: int, held: int, notify: Callable[[], None] | None = None):
        self.amount, self.held, self.signal, self.preempted = amount, held, threading.Event(), False
        self.notify = notify  # an event loop's waiter: how to wake it

    def wake(self) -> None:
        self.signal.set()
        if self.notify is not None:
            self.notify()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class WouldWait(Exception):
    """Raised by the non-waiting variants (memory, a slot, an interpreter) when the thing is
    not free right now: the caller takes the waiting path instead. `memory`: for memory, the
    bytes the request must hold in all before it goes on."""

    def __init__(self, memory: int = 0):
        super().__init__()
        self.memory = memory


class Slots:
    """At most `count` predicts decode or run at once, across both doors: a request waits
    for a slot at most `timeout` seconds (then 503)."""

    def __init__(self, count: int):
        self._semaphore = threading.BoundedSemaphore(count)

    def acquire(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (503 after); None: do not wait (WouldWait)."""
        if timeout is None:
            if not self._semaphore.acquire(blocking=False):
                raise WouldWait
            return
        if not self._semaphore.acquire(timeout=timeout):
            raise ServerBusy("the server is busy: no inference slot came free within the queue timeout",
                             "retry in a moment, or raise --max-inflight / --interpreters")

    def release(self) -> None:
        self._semaphore.release()
