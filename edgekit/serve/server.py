"""Start `edgekit serve`: models from a base path or a config file, a poller, the REST and
gRPC front doors on one service.

Both ports are bound before anything else starts, exclusively: a port that is taken stops
start-up with an error that names it. On SIGTERM or SIGINT the server stops accepting,
lets the requests in flight finish (up to 30 s), then stops gRPC and the poller and exits
0. Logs are JSON lines on stderr. With --workers N, a parent process holds the ports and N
forked processes serve on them (workers.py).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path

from edgekit.errors import BadInput
from edgekit.manifest import MANIFEST_NAME, PREFERRED_VARIANTS
from edgekit.serve import malloc
from edgekit.serve.app import RestApp
from edgekit.serve.http import HttpServer
from edgekit.serve.limits import Limits
from edgekit.serve.prometheus import ServerMetrics
from edgekit.serve.repository import (
    ModelConfig,
    ModelRepository,
    VersionPolicy,
    check_name,
    read_model_config,
)
from edgekit.serve.service import Service

log = logging.getLogger("edgekit.serve")
SHUTDOWN_GRACE_SECONDS = 30


def configure_logging(level: str = "info", worker: int | None = None) -> None:
    """JSON lines on stderr; each of several worker processes names itself in its lines."""
    handler = logging.StreamHandler(sys.stderr)
    who = "" if worker is None else f'"worker": {int(worker)}, '
    handler.setFormatter(logging.Formatter('{"time": "%(asctime)s", "level": "%(levelname)s", ' + who
                                           + '"log": %(message)s}'))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def model_configs(base_path: str | None, model_name: str | None, config_file: str | None, variant: str | None,
                  policy: VersionPolicy) -> list[ModelConfig]:
    if (base_path is None) == (config_file is None):
        raise BadInput("give either MODEL_BASE_PATH or --model-config", "edgekit serve /srv/models/digits")
    if config_file:
        configs = read_model_config(config_file, variant)
    else:
        base = Path(base_path)
        if not base.is_dir():
            what = "is not a folder" if base.exists() else "does not exist"
            raise BadInput(f"{base} {what}", "lay models out as BASE/<version>/model.tflite (or a convert OUT_DIR)")
        configs = [ModelConfig(name=check_name(model_name or base.resolve().name), base_path=base, policy=policy,
                               variant=variant)]
    for config in configs:
        check_layout(config.base_path)
        check_variant(config.variant)
    return configs


def check_variant(variant: str | None) -> None:
    """A typo in --variant (or a config's "variant") is refused at start, with the choices."""
    names = {*PREFERRED_VARIANTS, *(f"tflite_{v}" for v in PREFERRED_VARIANTS)}
    if variant is not None and variant not in names:
        raise BadInput(f"unknown variant {variant!r}",
                       f"serve runs TFLite variants: {', '.join(PREFERRED_VARIANTS)} (or tflite_<variant>)")


def check_layout(base: Path) -> None:
    """A base path holding a model itself, instead of version folders, is the easiest
    mistake to make: say so at start rather than answer 503 forever."""
    if not base.is_dir() or any(p.name.isdigit() and p.is_dir() for p in base.iterdir()):
        return
    if (base / MANIFEST_NAME).is_file() or any(base.glob("*.tflite")):
        raise BadInput(f"{base} holds a model itself, but serve reads version folders: BASE/1/, BASE/2/, ...",
                       f"put it in a version folder, e.g. mkdir -p models/{base.name} && "
                       f"cp -r {base} models/{base.name}/1 && edgekit serve models/{base.name}")


def read_api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read the API key file {path}: {getattr(exc, 'strerror', None) or exc}",
                       "pass a readable text file") from None
    if len(key) < 16:
        raise BadInput("the API key is shorter than 16 characters", "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise BadInput("the API key has characters that HTTP headers and gRPC metadata cannot carry "
                       "(non-ASCII, spaces or control characters)",
                       "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset) and a container's CPU
    quota (cgroup v2 cpu.max, docker --cpus), whichever is fewer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_interpreters(threads: int, workers: int = 1) -> int:
    """One interpreter per core, shared out among the worker processes."""
    return max(1, usable_cores() // (threads * workers))


def bind(host: str, port: int) -> socket.socket:
    """The REST listening socket, bound now so a taken port is an error before anything starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise BadInput(f"cannot listen on --host {host}: {exc.strerror}", "use an address of this machine, "
                                                                         "e.g. 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind past TIME_WAIT; never shares
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = "is in use (another edgekit serve?)" if exc.errno == 98 else f"cannot be bound: {exc.strerror}"
        raise BadInput(f"REST port {port} on {host} {reason}", "stop the other server, or choose another --port") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_at_start(configs: list[ModelConfig], host: str, api_key: str | None) -> None:
    """What an unattended server's operator should see in its first log lines."""
    if api_key is None and not is_loopback(host):
        log.warning(json.dumps({"event": "exposed_without_key", "host": host,
                                "hint": "anyone who can reach this address can use the models: "
                                        "start with --api-key-file FILE"}))
    for config in configs:
        base = config.base_path
        if not (base.is_dir() and any(p.name.isdigit() for p in base.iterdir())):
            log.warning(json.dumps({"event": "no_versions", "model": config.name, "base_path": str(config.base_path),
                                    "hint": f"nothing to serve until a version folder appears: "
                                            f"{config.base_path}/1/ holding model.tflite or a convert OUT_DIR"}))


def run(configs: list[ModelConfig], limits: Limits, *, host: str = "127.0.0.1", port: int = 8501,
        grpc_port: int = 8500, threads: int = 1, interpreters: int | None = None, poll_seconds: float = 2.0,
        api_key: str | None = None, log_level: str = "info", bench_max_bytes: int | None = None,
        workers: int = 1) -> None:
    """Serve until SIGTERM: REST on `port`, gRPC on `grpc_port` (0: no gRPC), same models.
    `bench_max_bytes` turns the bench endpoint on (device_bench.py); it needs `api_key`.
    `workers` > 1: that many processes on the same ports (workers.py), each with its own
    interpreters and `limits` (a budget of request memory each)."""
    if bench_max_bytes is not None and api_key is None:
        raise BadInput("--allow-bench needs --api-key-file: the bench endpoint runs uploaded models",
                       "start with --allow-bench --api-key-file FILE")
    if workers < 1:
        raise BadInput("--workers must be positive", "e.g. --workers 2 on a board with 2 or more cores")
    configure_logging(log_level)
    interpreters = interpreters or default_interpreters(threads, workers)
    options = dict(host=host, grpc_port=grpc_port, threads=threads, interpreters=interpreters,
                   poll_seconds=poll_seconds, api_key=api_key, bench_max_bytes=bench_max_bytes)
    if workers == 1:
        serve_process(bind(host, port), configs, limits, **options)
        return
    from edgekit.serve import workers as supervisor

    supervisor.can_fork()
    sock = bind(host, port)
    try:
        held = [sock] + ([supervisor.reserve_shared_port(host, grpc_port)] if grpc_port else [])
    except BaseException:
        sock.close()
        raise
    log.info(json.dumps({"event": "start_workers", "workers": workers, "host": host, "port": port,
                         "grpc_port": grpc_port or None, "pid": os.getpid(),
                         "request_memory_bytes_in_all": workers * limits.max_memory_bytes}))
    if workers > usable_cores():
        log.warning(json.dumps({"event": "more_workers_than_cores", "workers": workers, "cores": usable_cores(),
                                "hint": "each worker is a whole server (about 70 MB idle): one per core at most"}))

    def serve_worker(number: int, metrics_folder: Path) -> None:
        configure_logging(log_level, worker=number)
        serve_process(sock, configs, limits, **options, worker=number, metrics_folder=metrics_folder)

    supervisor.supervise(serve_worker, workers, SHUTDOWN_GRACE_SECONDS, held)


def serve_process(sock: socket.socket, configs: list[ModelConfig], limits: Limits, *, host: str, grpc_port: int,
                  threads: int, interpreters: int, poll_seconds: float, api_key: str | None,
                  bench_max_bytes: int | None, worker: int | None = None, metrics_folder: Path | None = None) -> None:
    """One server process on the bound REST socket `sock`: the whole server, or one of
    --workers (`worker`, with the folder where the workers share their metrics)."""
    started = time.perf_counter()
    metrics = ServerMetrics()

    def on_event(kind: str, **fields) -> None:
        if kind in ("loaded", "load_failed", "unloaded"):
            metrics.loads.inc(fields["model"], str(fields["version"]), kind)
        if kind == "ready":
            fields["seconds_since_start"] = round(time.perf_counter() - started, 3)
        level = {"load_failed": logging.WARNING, "poll_error": logging.WARNING,
                 "runtime_output": logging.DEBUG}.get(kind, logging.INFO)
        log.log(level, json.dumps({"event": kind, **fields}))

    malloc.tune()
    repository = ModelRepository(configs, threads=threads, interpreters=interpreters, poll_seconds=poll_seconds,
                                 on_event=on_event, max_batch_rows=limits.max_batch_rows,
                                 max_call_bytes=limits.max_memory_bytes // interpreters)
    service = Service(repository, limits, api_key=api_key, metrics=metrics)
    if metrics_folder is not None:
        from edgekit.serve.prometheus import MetricsFolder

        service.shared_metrics = MetricsFolder(metrics_folder, metrics, service.gauges)
    if bench_max_bytes is not None:
        from edgekit.serve.device_bench import DeviceBench

        shared = service.shared_metrics
        service.bench = DeviceBench(bench_max_bytes, shared.predicts if shared else metrics.predicts,
                                    lock_path=metrics_folder / "bench.lock" if metrics_folder else None)
    grpc_server = None
    try:
        if grpc_port:
            from edgekit.serve.grpc import create_server

            grpc_server, grpc_port = create_server(service, host=host, port=grpc_port, workers=max(2, interpreters),
                                                   share_port=worker is not None)
    except BaseException:
        sock.close()
        raise
    log.info(json.dumps({"event": "start", "host": host, "port": sock.getsockname()[1],
                         "grpc_port": grpc_port or None,
                         "models": {c.name: str(c.base_path) for c in configs}, "threads": threads,
                         "cores": usable_cores(),
                         "interpreters": repository.interpreters, "auth": api_key is not None,
                         "bench_endpoint": bench_max_bytes is not None,
                         "limits": {k: v for k, v in vars(limits).items()}}))
    if worker in (None, 0):
        _warn_at_start(configs, host, api_key)
    try:
        from uvloop import run as run_loop  # the faster event loop, where installed
    except ImportError:
        run_loop = asyncio.run
    run_loop(_serve(sock, service, grpc_server, load_first=worker is not None))


async def _serve(sock: socket.socket, service: Service, grpc_server, load_first: bool = False) -> None:
    """`load_first`: one pass over the models before accepting, so that of several workers
    on one port only those that have loaded take connections."""
    loop = asyncio.get_running_loop()
    app = RestApp(service, one_core=usable_cores() == 1)
    if load_first:
        await loop.run_in_executor(None, service.repository.poll_once)

    def on_protocol_error(status: int, reason: str) -> None:
        service.record("rest", "http", "-", "-", str(status), 0.0, reason=reason)

    http = HttpServer(app, service.limits, service.budget, on_error=on_protocol_error, body_limit=app.body_limit,
                      direct_body=app.direct_body)
    service.connections = lambda: len(http.connections)
    await http.start(sock)
    service.repository.start()  # the poller loads the models; /readyz says when they are in
    if service.shared_metrics is not None:  # one of --workers: its figures, and a heartbeat
        from edgekit.serve.workers import beat

        beat(loop, service.shared_metrics.write)
    if grpc_server is not None:
        grpc_server.start()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    log.info(json.dumps({"event": "stopping", "in_flight": sum(len(c.queue) for c in http.connections)}))
    grpc_stopped = grpc_server.stop(grace=10) if grpc_server is not None else None
    await http.shutdown(SHUTDOWN_GRACE_SECONDS)
    if grpc_stopped is not None:
        await loop.run_in_executor(None, grpc_stopped.wait)
    service.repository.stop()
    if service.shared_metrics is not None:
        service.shared_metrics.stop()
    app.close()
    log.info(json.dumps({"event": "shutdown"}))
