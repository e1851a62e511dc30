"""A small HTTP/1.1 server (asyncio + httptools) with a bound on everything a client controls.

Why not uvicorn: with its fast parser (httptools) it has no bound on header size and no
header or body deadline, so one slow or endless client holds memory and a connection for
as long as it likes, and it answers protocol errors in plain text. A device server needs
those bounds (nginx's client_header_buffer_size, client_header_timeout,
client_body_timeout, keepalive_timeout, worker_connections), and TF Serving's error shape
on every reply. This module is only the protocol: it reads requests and writes replies;
app.py decides what they mean.

What it bounds, each from `Limits` (serve/limits.py):
- the request line and headers: `max_header_bytes` (431), in `read_timeout` seconds (408);
- a body: `max_body_bytes`, refused from Content-Length before it is read (413); silence
  of `read_timeout` between reads, and a total of `read_timeout` plus one second per
  MIN_BODY_RATE bytes (408); bodies still arriving hold at most `max_buffered_bytes` of
  the memory budget, past which their connections stop being read until memory frees.
  One body always goes on (`HttpServer.goes_on`): the readiest, judged by what waits in
  its socket, and a body whose rest all waits there goes first, so clients that declare
  bodies and send little cannot hold back one whose bytes are here. If that body stops
  arriving for STALL_SECONDS while others wait, or brings less than MIN_BODY_RATE (or its
  rest) in a window of that long, it is shed (503); one paused past `queue_timeout` gets 503;
- an idle keep-alive connection: closed after `keepalive_timeout`;
- connections: `max_connections` open at once. At the limit a new connection closes the
  longest-idle one (nginx does the same with keep-alive connections), else the one whose
  headers have been arriving longest, so idle or dribbling sockets cannot lock clients
  out; with none of either it gets 503. The process's file limit is raised to its hard
  limit at start;
- a reply the client does not read: closed after `read_timeout` plus MIN_BODY_RATE.

Pipelined requests are answered in order, one at a time. A reply sent before its request's
body was read (an error) closes the connection.

Reads go into buffers this module hands the event loop (a BufferedProtocol): requests and
small bodies into one shared read buffer, parsed and copied out by llhttp, and a large body
the app asks for (`direct_body`: an image sent as .npy) straight into a buffer of its own,
sized from Content-Length and never touched by the parser, so it reaches the decoder without
a copy in Python (a 602 KB body cost the server 0.056 ms less per request in a bare server).
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import json
import mmap
import resource
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import numpy as np

from edgekit.serve import malloc
from edgekit.serve.limits import Limits, MemoryBudget

MIN_BODY_RATE = 64 << 10  # bytes per second a client must average while it sends a body or reads a reply
SWEEP_SECONDS = 0.25  # how often deadlines are checked
LINGER_SECONDS = 2.0  # how long a refused upload may go on sending after its answer
READ_BYTES = 256 << 10  # the shared read buffer: uvloop's own read size
CRAMPED_READ_BYTES = 4 << 10  # a read past the bodies' share, by a body that does not go on
STALL_SECONDS = 1.0  # silence after which the body read on while others wait for memory is shed
WINDOW_BYTES = int(MIN_BODY_RATE * STALL_SECONDS)  # what that body must bring in each STALL_SECONDS
RESUME_EVERY = 0.02  # how often paused bodies are looked at
CHOOSE_EVERY = 0.1  # how often the body that goes on is chosen again (HttpServer.goes_on)
DIRECT_BODY_BYTES = 64 << 10  # a body the app takes directly is read into its own buffer from this size
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined by ", "
    content_length: int | None  # None: chunked or no body


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    on_sent: Callable[[], None] | None = None  # called once the reply left (or the connection died)
    log: dict = field(default_factory=dict)  # what the handler wants in the request's log line


Handler = Callable[[Request, "Body"], Awaitable[Response]]
ErrorHook = Callable[[int, str], None]


def error_response(status: int, message: str) -> Response:
    """TF Serving's error shape; a 503 says when to retry."""
    headers = (("retry-after", "1"),) if status == 503 else ()
    return Response(status, json.dumps({"error": message}).encode(), headers=headers)


class Body:
    """A request's body as it arrives; `read()` waits for all of it. The bytes are counted in
    the memory budget as they arrive; `read()` hands that reservation to the caller."""

    def __init__(self, connection: _Connection, request: Request, expect_continue: bool, keep_alive: bool):
        self._connection, self.request = connection, request
        self.chunks: list[bytes] = []
        self.view: memoryview | None = None  # read directly: the buffer its bytes arrive in
        self.unfilled = 0  # of the server's room for direct buffers, what this one holds until it is whole
        self.released = False  # its memory given back: nothing more of it is counted or kept
        self.keep_alive = keep_alive  # what the request's version and Connection header ask for
        self.size = 0
        self.held = 0  # bytes of the budget this body holds until read() hands them over
        self.arriving = 0  # of those, bytes of a body not complete yet
        self.limit = 0  # the most bytes this body may have
        self.complete = False
        self.consumed = False
        # while it goes on alone and others wait for memory (HttpServer._falls_behind): how long
        # its current window has run, what arrived in it, and what it must bring by its end
        self.window_seconds = 0.0
        self.window_bytes = 0
        self.window_need: int | None = None
        self._expect_continue = expect_continue
        self._waiter: asyncio.Future | None = None

    async def read(self) -> tuple[bytes | memoryview, int]:
        """The whole body, and the budget bytes it holds (now the caller's to release): bytes,
        or for a body read directly, a memoryview of its buffer."""
        if self._expect_continue and not self.complete and not self.size:
            self._expect_continue = False
            self._connection.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._connection.resume_body()
        if not self.complete:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.view is not None:
            data, self.view = self.view, None
        else:
            data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        held, self.held, self.consumed = self.held, 0, True
        return data, held

    def _finish(self) -> None:
        self.complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class HttpServer:
    """Serves `handler` on a listening socket until `shutdown()`."""

    def __init__(self, handler: Handler, limits: Limits, budget: MemoryBudget, on_error: ErrorHook | None = None,
                 body_limit: Callable[[str], int] | None = None, direct_body: Callable[[Request], bool] | None = None):
        self.handler, self.limits, self.budget = handler, limits, budget
        # the largest body a path takes (the bench upload's is its own), else --max-body-mb
        self.body_limit = body_limit or (lambda path: limits.max_body_bytes)
        # whether the handler takes a request's body as a memoryview (read without copies)
        self.direct_body = direct_body or (lambda request: False)
        # every connection reads into this, one read at a time on the event loop; what a request
        # keeps of it, llhttp copies out (its callbacks get bytes)
        self.read_buffer = memoryview(bytearray(READ_BYTES))
        # address space taken by direct buffers not yet filled: at most the bodies' share of the
        # budget, so clients that declare large bodies and send nothing cannot take more
        self.unfilled = 0
        self.on_error = on_error or (lambda status, message: None)
        self.connections: set[_Connection] = set()
        self.idle: dict[_Connection, None] = {}  # connections between requests, longest idle first
        self.heading: dict[_Connection, None] = {}  # connections whose request line or headers are arriving
        self.receiving: dict[_Connection, None] = {}  # connections whose body is arriving, first started first
        self.paused: set[_Connection] = set()
        self.buffered = 0  # bytes of bodies still arriving (counted in the budget too)
        self._server: asyncio.base_events.Server | None = None
        self._resume_scheduled = False
        self._resume_due = 0.0  # when _resume_paused should run: later means the loop was held up
        # the body that goes on while others wait, since when, and its size then (`_falls_behind`)
        self.turn: tuple[Body | None, float, int] = (None, 0.0, 0)
        self._going: _Connection | None = None  # goes_on's last choice, until _going_until
        self._going_until = 0.0

    async def start(self, sock) -> None:
        raise_file_limit()
        loop = asyncio.get_running_loop()
        self.budget.on_pressure = lambda: loop.call_soon_threadsafe(lambda: self._shed(self.budget.deficit()))
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)
        self._sweep_every = min(SWEEP_SECONDS, self.limits.read_timeout / 4, self.limits.keepalive_timeout / 4)
        loop.call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        """Fire the deadlines that have passed (within a quarter of a second, or of the
        shortest timeout)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self.connections if 0.0 < c.deadline <= now]:
            connection.deadline = 0.0
            connection.on_deadline()
        if self._server is not None and (self._server.is_serving() or self.connections):
            loop.call_later(self._sweep_every, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish (up to `grace`)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()

    def pause(self, connection: _Connection) -> None:
        """Resume this connection (paused by the memory budget) once the budget has room."""
        self.paused.add(connection)
        if not self._resume_scheduled:
            self._schedule_resume()

    def _schedule_resume(self) -> None:
        self._resume_scheduled = True
        loop = asyncio.get_running_loop()
        self._resume_due = loop.time() + RESUME_EVERY
        loop.call_later(RESUME_EVERY, self._resume_paused)

    def _shed(self, deficit: int) -> None:
        """A request that has its whole body waits for memory that bodies paused mid-way
        hold: answer those 503 (the most recently started first) until it can go on."""
        freed = 0
        for connection in sorted(self.paused, key=lambda c: c.body_deadline, reverse=True):
            if freed >= deficit:
                break
            body = connection.current
            freed += body.held if body is not None else 0
            self.paused.discard(connection)
            self.on_error(503, "body shed for memory")
            connection._reply_and_close(503, "the server needed this body's memory for requests it had already "
                                              "received; retry in a moment")

    def goes_on(self) -> _Connection | None:
        """Of the bodies arriving, the one read on when they fill their share. It keeps going
        on while it can, except that a body whose every remaining byte already waits in its
        socket goes first (reading it completes it). When it cannot, the next is the readiest
        (`_Connection.readiness`): one that would complete so, else one with a second's worth
        of bytes waiting and the fewest still to send. Never one whose client waits on the
        server (a request pipelined behind an unread reply, a body before its 100 Continue),
        which would not move. So clients that declare bodies and send little cannot hold back
        one whose bytes are here, and only one body at a time grows past the share (choosing
        afresh every 100 ms let each grow in turn: 40 JSON uploads took the budget from 20 to
        81 MB). Looking for a body that completes asks the kernel about each, so it is done
        every CHOOSE_EVERY at most (each read of a body asks for the choice)."""
        now = asyncio.get_running_loop().time()
        going = self._going
        keeps = going is not None and going in self.receiving and going.can_go_on()
        if keeps and now < self._going_until:
            return going
        self._going_until = now + CHOOSE_EVERY
        readiest = max(((c.readiness(), c) for c in self.receiving if c is not going and c.can_go_on()),
                       key=lambda ranked: ranked[0], default=None)
        if readiest is not None and (not keeps or readiest[0][0]):  # [0][0]: it completes from what waits
            self._going = readiest[1]
        elif not keeps:
            self._going = None
        return self._going

    def _falls_behind(self, going: _Connection, now: float) -> bool:
        """Whether the body that goes on while others wait has been silent for STALL_SECONDS,
        or brought less than MIN_BODY_RATE (or the rest of it) in a window of STALL_SECONDS of
        its turns: a client that sends a byte now and then cannot keep others waiting, even
        after a burst, or taking turns with another."""
        body = going.current
        if body is not self.turn[0]:
            self._end_turn(now)
            self.turn = (body, now, body.size)
            if body.window_need is None:
                body.window_need = min(WINDOW_BYTES, going.bytes_to_come())
        _, since, size = self.turn
        if now - going.last_arrival > STALL_SECONDS:
            return True
        if body.window_seconds + now - since < STALL_SECONDS:
            return False
        if body.window_bytes + body.size - size < body.window_need:
            return True
        body.window_seconds, body.window_bytes = 0.0, 0  # the next window, in the same turn
        body.window_need = min(WINDOW_BYTES, going.bytes_to_come())
        self.turn = (body, now, body.size)
        return False

    def _end_turn(self, now: float) -> None:
        """The turn of the body that went on ends (another goes on, or there is room again):
        its window so far is kept for its next turn (time paused by the server is not its)."""
        body, since, size = self.turn
        if body is not None:
            body.window_seconds += now - since
            body.window_bytes += body.size - size
        self.turn = (None, 0.0, 0)

    def room_for_bodies(self, margin: int) -> bool:
        return (self.buffered + margin <= self.limits.max_buffered_bytes
                and self.budget.used + margin <= self.budget.capacity)

    def _resume_paused(self) -> None:
        self._resume_scheduled = False
        now = asyncio.get_running_loop().time()
        # held up (a long call on the loop, a GC pass): the reads waiting since are not seen yet
        late = now - self._resume_due > RESUME_EVERY * 10
        deficit = self.budget.deficit()
        if deficit > 0:  # complete requests wait for memory: they go first
            self._shed(deficit)
        elif self.room_for_bodies(MIN_BODY_RATE):
            self._end_turn(now)
            for connection in list(self.paused):
                self.paused.discard(connection)
                connection.resume_reading()
        else:
            # no room, but one body always goes on: when the one that went on completes, the
            # next may be a paused one, and if every body left is paused and they alone fill
            # the bodies' share, none would ever move again (seen: 12 clients of 15 MB .npy
            # bodies, a 96 MB budget, a 30 s stall in 1 run of 6)
            first = self.goes_on()
            if first in self.paused:
                self.paused.discard(first)
                first.resume_reading()
            if first is not None and not late and self._falls_behind(first, now):
                self.on_error(503, "body shed for memory")
                first._reply_and_close(503, f"the body arrived slower than {MIN_BODY_RATE // 1024} KB/s (or stopped "
                                            f"for {STALL_SECONDS:g} s) while other requests waited for the memory it "
                                            "holds; retry in a moment")
        if self.paused:
            self._schedule_resume()
        else:
            self._end_turn(now)


def _body_buffer(size: int) -> memoryview | None:
    """Untouched memory for a body of `size` bytes, paged in as it arrives (which the budget
    counts), or None when the address space is short (a 32-bit board). A large one is a
    mapping of its own, in 4 KB pages (numpy would ask for 2 MB huge pages, resident whole at
    their first byte), unmapped when the body is dropped; a smaller one comes from the heap,
    reused (a mapping per request costs page faults on every request)."""
    try:
        if size >= malloc.MMAP_THRESHOLD:
            return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))
        return memoryview(np.empty(size, np.uint8))
    except (MemoryError, OSError, ValueError):
        return None


def raise_file_limit() -> None:
    """Each connection is a file descriptor: use the hard limit the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: HttpServer):
        self.server, self.limits = server, server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Body] = collections.deque()  # requests parsed, answered in order
        self.current: Body | None = None  # the request whose body is arriving
        self.direct: Body | None = None  # the current body, when it is read into its own buffer
        self.refusal: tuple[int, str] | None = None  # a refusal sent once the requests before it are answered
        self.task: asyncio.Task | None = None
        self.deadline = 0.0  # when `on_deadline` fires (0: no deadline); the server sweeps them
        self.on_deadline = None
        self.head_bytes = 0  # bytes of the request line and headers seen so far
        self.head_tail = b""  # the last bytes of the previous read of them
        self.head_size = 0  # bytes of the request line and headers the parser has passed on
        self.url = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.closing = False
        self.reading_paused = False
        self.body_deadline = 0.0
        self.paused_at = 0.0
        self.last_arrival = 0.0  # when the body last grew, or was last let go on
        self.started = 0.0  # when the current body's headers arrived
        self.fd: int | None = None  # the socket's, to ask the kernel what waits unread
        self.raw_left = 0  # body bytes still to come after an upgrade request
        self.discarding = False  # answered and closing: what the client still sends is dropped
        self.drained: asyncio.Future | None = None

    # --- connection ----------------------------------------------------------------------
    @property
    def gone(self) -> bool:
        return self.transport is None or self.transport.is_closing() or self.discarding

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else None
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            if not server.idle and not server.heading:
                server.on_error(503, "too many connections")
                self._reply_and_close(503, f"the server has {self.limits.max_connections} connections open, its "
                                           "limit (--max-connections), all busy; retry in a moment")
                return
            oldest = next(iter(server.idle or server.heading))
            oldest.abort()
            server.connections.discard(oldest)
            server.idle.pop(oldest, None)
            server.heading.pop(oldest, None)
        server.connections.add(self)
        self._set_idle(True)
        self._arm(self.limits.keepalive_timeout, self._idle_timeout)

    def _set_idle(self, idle: bool) -> None:
        if idle:
            self.server.idle[self] = None
        else:
            self.server.idle.pop(self, None)

    def bytes_to_come(self) -> int:
        body = self.current
        if body is None:
            return 1 << 62
        declared = body.request.content_length
        return (declared if declared is not None else body.limit) - body.size

    def readiness(self) -> tuple[bool, bool, int, float]:
        """HttpServer.goes_on's order, readiest first: every remaining byte waiting in the
        socket; then a second's worth waiting (MIN_BODY_RATE, or the rest), what the body that
        goes on must bring; then the fewest bytes the client has still to send; then the
        first started."""
        waiting, to_come = self.bytes_waiting(), self.bytes_to_come()
        return waiting >= to_come, waiting >= min(WINDOW_BYTES, to_come), waiting - to_come, -self.started

    def bytes_waiting(self) -> int:
        """Bytes the kernel holds for this connection, not read yet (0 where it cannot say)."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, TypeError):
            return 0

    def can_go_on(self) -> bool:
        """Its body would arrive if read: reading is on, or paused only for memory (the
        server resumes it), and the client is not waiting for a 100 Continue."""
        body = self.current
        return (body is not None and (not self.reading_paused or self in self.server.paused)
                and not (body._expect_continue and not body.size))

    def connection_lost(self, exc) -> None:
        self.current = self.direct = None
        self.server.connections.discard(self)
        self._set_idle(False)
        self.server.heading.pop(self, None)
        self.server.receiving.pop(self, None)
        self.server.paused.discard(self)
        self._disarm()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        for body in self.queue:
            self._release(body)
        self.queue.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Over the bodies' share, a connection that does not go on reads CRAMPED_READ_BYTES before
        # it is paused, not READ_BYTES: 200 connections with bodies waiting in their sockets took
        # the budget from 64 to 76 MB in one read each (helper-20), 84 MB when all were resumed.
        server = self.server
        size = READ_BYTES if server.room_for_bodies(0) or server.goes_on() is self else CRAMPED_READ_BYTES
        body = self.direct
        if body is not None and body.view is not None:
            # never empty: a direct body leaves this state as its last byte arrives. One read at a
            # time of at most READ_BYTES, as for any body, so the budget is checked between them
            return body.view[body.size : body.size + size]
        return server.read_buffer if size == READ_BYTES else server.read_buffer[:size]

    def buffer_updated(self, nbytes: int) -> None:
        body = self.direct
        if body is None:
            self.data_received(self.server.read_buffer[:nbytes])
        elif body.view is not None:
            self._direct_received(body, nbytes)
        # else: a direct body answered and given back before it was whole; the connection closes

    def _direct_received(self, body: Body, nbytes: int) -> None:
        """Bytes of a direct body arrived in its buffer. The parser does not see them: once
        the body is whole, the next request starts with a new parser."""
        if not self._count(body, nbytes):
            return
        if body.size == len(body.view):
            self.parser = httptools.HttpRequestParser(self)
            self.on_message_complete()
        elif not self.gone:
            self._check_body_budget()

    def data_received(self, data: memoryview) -> None:
        """`data`: a view of the shared read buffer, valid only during this call."""
        if self.discarding or (self.closing and not self.queue) or self.refusal is not None:
            return
        if self.queue and self.queue[-1].complete and not self.queue[-1].keep_alive:
            return  # after a request that closes the connection (Connection: close, HTTP/1.0)
        if self.raw_left:  # the body of a request that asked to upgrade (curl --http2 sends h2c)
            self._raw_body(bytes(data))
            return
        if self.in_head or self.current is None:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes and self._head_too_large(bytes(data)):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._refuse_upgrade(bytes(data[upgrade.args[0]:]) if upgrade.args else b"")
        except httptools.HttpParserError as exc:
            if self.queue and self.queue[-1].complete and not self.queue[-1].keep_alive:
                return  # llhttp refuses what follows a request that closes the connection: dropped
            self.server.on_error(400, "malformed HTTP")
            self._refuse(400, f"malformed HTTP request: {_parser_message(exc)}", self.current)
            return
        if self.in_head:  # headers go on in the next read: their blank line may begin in this one
            self.head_tail = (self.head_tail + bytes(data[-3:]))[-3:]
        if self.current is not None and not self.current.complete and not self.gone:
            self._check_body_budget()

    def _refuse_upgrade(self, rest: bytes) -> None:
        """No protocol upgrades: the request is answered over HTTP/1.1, then the connection
        closes. llhttp stops at an upgrade request's headers, so its body (if any) is read
        here, by its Content-Length."""
        self.closing = True
        body = self.queue[-1] if self.queue else None
        if body is None or self.gone:
            return
        request = body.request
        if request.headers.get("transfer-encoding"):
            self.server.on_error(400, "upgrade with a chunked body")
            self._reply_and_close(400, "this server speaks HTTP/1.1 only: send the request without 'Upgrade' "
                                       "(e.g. curl --http1.1), or with a Content-Length")
            return
        if request.content_length:
            body.complete = False
            body.view, self.direct = None, None  # read as the rest of this connection: parsed by hand
            self.current = body
            self.raw_left = request.content_length
            self._raw_body(rest)

    def _raw_body(self, data: bytes) -> None:
        chunk = data[: self.raw_left]
        self.raw_left -= len(chunk)
        if chunk:
            self.on_body(chunk)
        if not self.raw_left and self.current is not None:
            self.on_message_complete()

    def _head_too_large(self, data: bytes) -> bool:
        """Over the header limit, unless the headers end within this read (their blank line
        may have begun in the previous one)."""
        joined = self.head_tail + data  # ends where head_bytes ends
        end = joined.find(b"\r\n\r\n")
        if end >= 0 and self.head_bytes - len(joined) + end + 4 <= self.limits.max_header_bytes:
            return False
        self._refuse_large_head()
        return True

    def _refuse_large_head(self) -> None:
        self.server.on_error(431, "headers too large")
        self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes // 1024} KB "
                          "(--max-header-kb)")

    # --- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.refusal is not None:  # the rest of a read after a refused request: not read on
            return
        self._set_idle(False)
        self.server.heading[self] = None
        self.in_head = True
        self.url = b""
        self.header_list = []
        self.head_size = 0
        self._arm(self.limits.read_timeout, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))
        self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.server.heading.pop(self, None)
        if self.transport.is_closing() or self.refusal is not None:
            return
        self.in_head = False
        self.head_bytes = 0
        self.head_tail = b""
        if self.head_size > self.limits.max_header_bytes:  # a request pipelined behind another in one read
            self._refuse_large_head()
            return
        headers: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        raw_path, _, query = self.url.decode("latin-1").partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            raw_path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
        length = headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        request = Request(self.parser.get_method().decode("latin-1"), raw_path, query, headers, declared)
        expect = headers.get("expect", "").lower() == "100-continue"
        body = Body(self, request, expect, self.parser.should_keep_alive())
        self.current = body
        self.queue.append(body)
        self.server.receiving[self] = None
        self.last_arrival = self.started = self.loop.time()
        self.body_deadline = self.loop.time() + self.limits.read_timeout + (declared or 0) / MIN_BODY_RATE
        self._arm(self.limits.read_timeout, self._body_timeout)
        if len(self.queue) > 1:
            self._pause_reading()  # a pipelined request waits its turn: read no further
        body.limit = self.server.body_limit(raw_path)
        if declared is not None and declared > body.limit:
            self._refuse_oversized(body)
            return
        server = self.server
        if (declared is not None and declared >= DIRECT_BODY_BYTES and server.direct_body(request)
                and server.unfilled + declared <= self.limits.max_buffered_bytes):
            body.view = _body_buffer(declared)
            if body.view is not None:  # else read as any body is, as it arrives
                body.unfilled = declared
                server.unfilled += declared
                self.direct = body
        if self.task is None:
            self._start_next()

    def on_body(self, chunk: bytes) -> None:
        body = self.current
        if body is None or self.transport.is_closing() or not self._count(body, len(chunk)):
            return
        if body.view is not None:
            body.view[body.size - len(chunk) : body.size] = chunk
        else:
            body.chunks.append(chunk)

    def _count(self, body: Body, size: int) -> bool:
        """`size` more bytes of `body` arrived: within its limit (else 413, False), counted in
        the memory budget, and its deadline moved on."""
        if body.released or self.transport.is_closing():  # answered: its memory is given back
            return False
        body.size += size
        self.last_arrival = self.loop.time()
        if body.size > body.limit:
            self.current = None
            self._refuse_oversized(body)
            return False
        self.server.budget.force(size)
        self.server.buffered += size
        body.held += size
        body.arriving += size
        if not self.reading_paused:
            self._arm(min(self.limits.read_timeout, max(0.0, self.body_deadline - self.loop.time())),
                      self._body_timeout)
        return True

    def on_message_complete(self) -> None:
        body = self.current
        self.current = None
        self.direct = None
        self.server.receiving.pop(self, None)
        if body is not None:
            self.server.buffered -= body.arriving  # arrived: no longer a body in transit
            body.arriving = 0
            self.server.unfilled -= body.unfilled
            body.unfilled = 0
            body._finish()
        if self.queue:
            self._disarm()  # the server's turn: no client deadline while it answers

    # --- bounds ----------------------------------------------------------------------------
    def _check_body_budget(self) -> None:
        """Over the bodies' share of memory, a body stops being read until there is room,
        except the one that goes on (`HttpServer.goes_on`), so some body completes and frees
        memory (pausing every one of them would wait forever)."""
        server = self.server
        if not server.room_for_bodies(0) and server.goes_on() is not self:
            self._pause_reading()
            server.pause(self)
            self._arm(self.limits.queue_timeout, self._paused_too_long)

    def _paused_too_long(self) -> None:
        self.server.on_error(503, "no memory for the body")
        self._reply_and_close(503, f"the server had no memory for this body within {self.limits.queue_timeout:g} s "
                                   "(--queue-timeout; other large requests hold it): retry in a moment")

    def _pause_reading(self) -> None:
        """Stop reading: the client's silence from now on is ours, so its clock stops too
        (while a pipelined request waits; the memory budget sets its own limit)."""
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
            if self.current is not None and not self.current.complete:
                self._disarm()
                self.paused_at = self.loop.time()

    def resume_body(self) -> None:
        """The handler wants the body: read on, unless the budget has paused this connection."""
        if self.reading_paused and self not in self.server.paused and len(self.queue) <= 1:
            self.resume_reading()

    def resume_reading(self) -> None:
        if self.transport.is_closing() or not self.reading_paused:
            return
        self.reading_paused = False
        self.last_arrival = self.loop.time()  # its silence counts from now
        self.transport.resume_reading()
        if self.current is not None and not self.current.complete:
            self.body_deadline += self.loop.time() - self.paused_at
            self._arm(self.limits.read_timeout, self._body_timeout)

    def _refuse_oversized(self, body: Body) -> None:
        self.server.on_error(413, "body too large")
        size = body.request.content_length or body.size
        option = "--max-body-mb" if body.limit == self.limits.max_body_bytes else "--bench-max-mb"
        self._refuse(413, f"the body is {'at least ' if body.request.content_length is None else ''}"
                          f"{size} bytes; this server accepts at most {body.limit / 1048576:.3g} MB ({option})", body)

    def _head_timeout(self) -> None:
        self.server.on_error(408, "header timeout")
        self._reply_and_close(408, f"the request line and headers did not arrive within {self.limits.read_timeout:g} s "
                                   "(--read-timeout)")

    def _body_timeout(self) -> None:
        if self.current is None or self.current.complete:
            return
        self.server.on_error(408, "body timeout")
        self._reply_and_close(408, f"the body stopped arriving: nothing for {self.limits.read_timeout:g} s, or slower "
                                   f"than {MIN_BODY_RATE // 1024} KB/s (--read-timeout)")

    def _idle_timeout(self) -> None:
        self.abort()

    # --- answering -------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self.queue and not self.gone:
            self.task = self.loop.create_task(self._answer(self.queue[0]))

    async def _answer(self, body: Body) -> None:
        try:
            response = await self.server.handler(body.request, body)
        except asyncio.CancelledError:
            self._release(body)
            raise
        self._release(body)
        if self.gone:
            _sent(response)
            return
        keep_alive = (body.complete and not self.closing and body.keep_alive
                      and body.request.headers.get("connection", "").lower() != "close")
        try:
            self._write(response, keep_alive, head_only=body.request.method == "HEAD")
            if self.drained is not None and not self.drained.done():  # the client reads slowly, or not at all
                try:
                    await asyncio.wait_for(asyncio.shield(self.drained),
                                           self.limits.read_timeout + len(response.body) / MIN_BODY_RATE)
                except asyncio.TimeoutError:
                    self.transport.abort()
                    return
        finally:
            _sent(response)
        self.queue.popleft()
        self.task = None
        if self.refusal is not None and not self.queue:
            self._reply_and_close(*self.refusal)
            return
        if not keep_alive:
            if body.complete:
                self.transport.close()
            else:  # answered before its body was read (a 404, a 503): the client is still sending
                self._linger_close()
            return
        if self.queue:
            self._start_next()
        elif not self.in_head:
            self._set_idle(True)
            self._arm(self.limits.keepalive_timeout, self._idle_timeout)
        if self.reading_paused and self not in self.server.paused:
            self.resume_reading()

    def _write(self, response: Response, keep_alive: bool, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
                 f"content-type: {response.content_type}", f"content-length: {len(response.body)}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if not keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head_only or not response.body:
            self.transport.write(head)
        elif len(response.body) < 65536:
            self.transport.write(head + response.body)
        else:
            self.transport.writelines((head, response.body))

    def write_raw(self, data: bytes) -> None:
        if not self.gone:
            self.transport.write(data)

    def _refuse(self, status: int, message: str, failing: Body | None = None) -> None:
        """Refuse the request being read (`failing`, or one whose headers are arriving). Whole
        requests before it on the connection are answered first, as nginx does: nothing more
        is read, and the refusal goes out after their answers, then the connection closes."""
        first = self.queue[0] if self.queue else None
        if first is None or first is failing or not first.complete:
            self._reply_and_close(status, message)
            return
        if failing is not None and self.queue[-1] is failing:  # never answered: not in line
            self.queue.pop()
            self._release(failing)
        self.current = self.direct = None
        self.server.receiving.pop(self, None)
        self._disarm()  # the server's turn
        self.refusal = (status, message)
        self._pause_reading()

    def _reply_and_close(self, status: int, message: str) -> None:
        """A protocol-level refusal: answer it (TF Serving's shape) and close."""
        if self.gone:
            return
        if self.task is not None and not self.task.done():
            self.task.cancel()
        for body in self.queue:
            self._release(body)
        self.queue.clear()
        self._write(error_response(status, message), keep_alive=False)
        self._linger_close()

    def _linger_close(self) -> None:
        """A lingering close, as nginx does: end our side, and read (and drop) what the client
        still sends for a moment, so it gets the answer instead of a reset mid-upload."""
        self.current = None
        self.direct = None
        self.closing = True
        self.discarding = True
        self.server.paused.discard(self)
        self.server.receiving.pop(self, None)
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            self.loop.call_later(min(LINGER_SECONDS, self.limits.read_timeout), self.transport.abort)
        else:
            self.transport.close()
            self.loop.call_later(self.limits.read_timeout, self.transport.abort)

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.queue:
            self.abort()

    def abort(self) -> None:
        if not self.gone:
            self.transport.close()

    def _release(self, body: Body) -> None:
        """Give back what `body` holds: its budget, and its bytes now (a connection is in
        reference cycles, so what it keeps lives until the garbage collector's next full pass)."""
        if body.arriving:
            self.server.buffered -= body.arriving
            body.arriving = 0
        if body.held:
            self.server.budget.release(body.held)
            body.held = 0
        self.server.unfilled -= body.unfilled
        body.unfilled = 0
        body.chunks, body.view, body.released = [], None, True

    def _arm(self, seconds: float, callback) -> None:
        """A deadline, checked by the server's sweep (a timer per request costs more)."""
        self.deadline = self.loop.time() + seconds
        self.on_deadline = callback

    def _disarm(self) -> None:
        self.deadline = 0.0


def _sent(response: Response) -> None:
    if response.on_sent is not None:
        response.on_sent()


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("HPE_", "").lower()[:200]
