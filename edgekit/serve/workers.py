"""`edgekit serve --workers N`: N server processes behind one REST port and one gRPC port.

One Python process answers at most about one core's worth of requests (the front end holds
the GIL), so a small model on a multi-core board leaves cores idle. Here a parent process
owns the ports and N forked workers, each with its own interpreters, answer on them:

- REST: the parent binds the port exclusively and every worker accepts on that same
  socket, inherited. Nothing else can join it.
- gRPC: grpcio cannot take an inherited socket, so the parent binds the port exclusively
  (a port in use is an error, as without workers) and only then marks it SO_REUSEPORT, so
  the workers' gRPC servers can bind it too. The parent's socket never listens. Another
  process of the same user that binds the port with SO_REUSEPORT while the server runs
  would be let in as well: the one gap.
- A worker accepts once its first pass over the models is done, so a client never meets
  a worker still loading while another answers.
- A worker that dies after it has served (a native crash in a kernel, the OOM killer) is
  started again, at once the first time, then after 1, 2, 4 ... 30 s while it keeps dying
  within 30 s. A worker that cannot start (a bad port, a missing package), or dies before
  its first accept, stops the whole server with its error: it would only die again.
- A worker whose event loop stops beating for 10 s (SIGSTOP, a stuck loop) is killed and
  started again: the kernel would go on handing it gRPC connections.
- SIGTERM or SIGINT: the parent passes SIGTERM to the workers, which drain as a single
  server does, and exits 0 when they have; a worker still running after the grace
  period (+15 s) is killed. If the parent itself dies (SIGKILL), its workers drain and
  exit too, and free the ports.
- /metrics sums all workers (prometheus.MetricsFolder); the parent holds no interpreter
  and serves nothing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from edgekit.errors import BadInput, EdgekitError

log = logging.getLogger("edgekit.serve")
START_FAILED = 3  # a worker's exit status for "cannot start": do not start it again
FAST_DEATH_SECONDS = 30.0
MAX_RESTART_DELAY = 30.0
TICK_SECONDS = 0.1  # how often the parent looks at its workers
HEARTBEAT_SECONDS = 0.25  # how often a worker writes its metrics file, from its event loop
HEARTBEAT_STALE_SECONDS = 10.0  # a worker whose file is older is killed (and started again)


def can_fork() -> None:
    if not hasattr(os, "fork"):
        raise BadInput("--workers needs os.fork, which this platform lacks", "run one process: --workers 1")


def reserve_shared_port(host: str, port: int) -> socket.socket:
    """Bind the gRPC port exclusively (so a port in use is refused), then let the workers'
    SO_REUSEPORT sockets join it. The returned socket holds the port and never listens."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise BadInput(f"cannot listen on --host {host}: {exc.strerror}", "use an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = "is in use (another edgekit serve?)" if exc.errno == 98 else f"cannot be bound: {exc.strerror}"
        raise BadInput(f"gRPC port {port} on {host} {reason}",
                       "stop the other server, or choose another --grpc-port (0 turns gRPC off)") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def supervise(serve_worker: Callable[[int, Path], None], workers: int, grace_seconds: float,
              keep: list[socket.socket]) -> None:
    """Fork `workers` processes running serve_worker(number, metrics_folder) and keep them
    running until SIGTERM. `keep`: the sockets the parent holds for the ports' lifetime.

    The parent looks at its workers every TICK_SECONDS: it reaps the dead, starts again those
    whose time has come (a delayed restart never holds up another worker's), and kills a
    worker whose heartbeat (its metrics file, written from its event loop) is older than
    HEARTBEAT_STALE_SECONDS: stopped, or its loop stuck, it would still be handed gRPC
    connections."""
    folder = Path(tempfile.mkdtemp(prefix="edgekit-serve-"))
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, monotonic start)
    deaths: dict[int, int] = {}  # worker number -> deaths in a row, each within FAST_DEATH_SECONDS
    served: dict[int, bool] = {}  # worker number -> has one of its processes accepted connections
    due: dict[int, float] = {}  # worker number -> when to start it again
    killed: set[int] = set()  # pids killed for a stale heartbeat
    state = {"stopping": False, "failure": None}

    def stop_all(number=None, frame=None) -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        log.info(json.dumps({"event": "stopping", "workers": len(children)}))
        for pid in children:
            _signal(pid, signal.SIGTERM)
        signal.alarm(int(grace_seconds) + 15)

    def kill_all(number=None, frame=None) -> None:
        log.warning(json.dumps({"event": "workers_killed", "pids": list(children),
                                "reason": f"still running {int(grace_seconds) + 15} s after SIGTERM"}))
        for pid in children:
            _signal(pid, signal.SIGKILL)

    def spawn(number: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(_worker_main(serve_worker, number, folder, parent))
        children[pid] = (number, time.monotonic())
        log.info(json.dumps({"event": "worker_started", "worker": number, "pid": pid}))

    def died(pid: int, status: int) -> None:
        number, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if state["stopping"]:
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        log.warning(json.dumps({"event": "worker_exit", "worker": number, "pid": pid, "how": how}))
        served[number] = served.get(number, False) or (folder / f"worker-{pid}.json").exists()
        if code == START_FAILED or not served[number]:
            # an error at start, or a death before the first accept: it would die again
            state["failure"] = _start_failure(folder, pid, number, how)
            stop_all()
            return
        deaths[number] = deaths.get(number, 0) + 1 if time.monotonic() - started < FAST_DEATH_SECONDS else 0
        delay = 0.0 if deaths[number] <= 1 else min(MAX_RESTART_DELAY, 2.0 ** (deaths[number] - 2))
        if delay:
            log.warning(json.dumps({"event": "worker_restart_delayed", "worker": number, "seconds": delay}))
        due[number] = time.monotonic() + delay

    previous = {kind: signal.signal(kind, handler) for kind, handler in
                ((signal.SIGTERM, stop_all), (signal.SIGINT, stop_all), (signal.SIGALRM, kill_all))}
    try:
        for number in range(workers):
            spawn(number)
        while children or (due and not state["stopping"]):
            for pid, status in _reaped():
                died(pid, status)
            if state["stopping"]:
                due.clear()
            for number, when in list(due.items()):
                if time.monotonic() >= when:
                    del due[number]
                    spawn(number)
            if not state["stopping"]:
                _kill_the_stale(children, folder, killed)
            time.sleep(TICK_SECONDS)
    finally:
        signal.alarm(0)
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        shutil.rmtree(folder, ignore_errors=True)
    if state["failure"] is not None:
        raise state["failure"]
    log.info(json.dumps({"event": "shutdown"}))


def beat(loop, write: Callable[[], None]) -> None:
    """In a worker: write its metrics file every HEARTBEAT_SECONDS from the event loop (the
    parent reads the file's age as the loop's heartbeat), and stop (SIGTERM to itself, so it
    drains) if the parent has gone: a parent killed with SIGKILL would leave workers holding
    the ports with nobody to stop or restart them."""
    parent = os.getppid()

    def tick() -> None:
        if os.getppid() != parent:
            log.warning(json.dumps({"event": "parent_gone", "parent": parent}))
            os.kill(os.getpid(), signal.SIGTERM)
            return
        write()
        loop.call_later(HEARTBEAT_SECONDS, tick)

    tick()


def _reaped():
    """(pid, status) of every child that has ended, without waiting."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _kill_the_stale(children: dict[int, tuple[int, float]], folder: Path, killed: set[int]) -> None:
    """SIGKILL a worker whose heartbeat is stale (never one still loading: it has no file yet)."""
    now = time.time()
    for pid, (number, _) in children.items():
        try:
            age = now - (folder / f"worker-{pid}.json").stat().st_mtime
        except OSError:
            continue
        if age > HEARTBEAT_STALE_SECONDS and pid not in killed:
            killed.add(pid)
            log.warning(json.dumps({"event": "worker_unresponsive", "worker": number, "pid": pid,
                                    "seconds_since_heartbeat": round(age, 1)}))
            _signal(pid, signal.SIGKILL)


def _worker_main(serve_worker: Callable[[int, Path], None], number: int, folder: Path, parent: int) -> int:
    """The forked child: the parent's signal handlers undone, told to stop if the parent
    dies, then one ordinary server."""
    for kind in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(kind, signal.SIG_DFL)
    _stop_with_parent(parent)
    code = 0
    try:
        serve_worker(number, folder)
    except EdgekitError as exc:
        (folder / f"failed-{os.getpid()}.json").write_text(json.dumps({"message": exc.message, "hint": exc.hint,
                                                                       "exit_code": exc.exit_code}))
        code = START_FAILED
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for handler in logging.getLogger("edgekit.serve").handlers:
            handler.flush()
        sys.stderr.flush()
    return code


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this worker when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere `beat`
    notices within a quarter second), and exit now if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _start_failure(folder: Path, pid: int, number: int, how: str) -> EdgekitError:
    try:
        document = json.loads((folder / f"failed-{pid}.json").read_text())
    except (OSError, ValueError):
        return EdgekitError(f"worker {number} stopped ({how}) before it took a connection: the log above says why",
                            "run with --workers 1 to see the error alone")
    error = EdgekitError(document["message"], document.get("hint"))
    error.exit_code = document.get("exit_code", 1)  # the CLI exits as it would have without workers
    return error


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass
