"""Start `edgekit serve`: models from a base path or a config file, a poller, and uvicorn.

uvicorn handles SIGTERM and SIGINT gracefully: it stops accepting, lets in-flight
requests finish, then we stop the poller. Logs are JSON lines on stderr.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from edgekit.errors import BadInput
from edgekit.serve.app import create_app
from edgekit.serve.metrics import ServerMetrics
from edgekit.serve.repository import ModelConfig, ModelRepository, VersionPolicy, check_name, read_model_config

log = logging.getLogger("edgekit.serve")


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('{"time": "%(asctime)s", "level": "%(levelname)s", "log": %(message)s}'))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def model_configs(base_path: str | None, model_name: str | None, config_file: str | None, variant: str | None,
                  policy: VersionPolicy) -> list[ModelConfig]:
    if (base_path is None) == (config_file is None):
        raise BadInput("give either MODEL_BASE_PATH or --model-config", "edgekit serve /srv/models/digits")
    if config_file:
        return read_model_config(config_file, variant)
    base = Path(base_path)
    if not base.is_dir():
        raise BadInput(f"{base} is not a folder", "lay models out as BASE/<version>/model.tflite (or a convert OUT_DIR)")
    name = check_name(model_name or base.resolve().name)
    return [ModelConfig(name=name, base_path=base, policy=policy, variant=variant)]


def read_api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise BadInput(f"cannot read the API key file {path}: {exc.strerror}", "pass a readable file") from None
    if len(key) < 16:
        raise BadInput("the API key is shorter than 16 characters", "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def default_interpreters(threads: int) -> int:
    return max(1, (os.cpu_count() or 1) // threads)


def run(configs: list[ModelConfig], *, host: str = "127.0.0.1", port: int = 8501, grpc_port: int = 8500,
        threads: int = 1, interpreters: int | None = None, poll_seconds: float = 2.0, max_body_mb: float = 32,
        api_key: str | None = None, log_level: str = "info", max_inflight: int | None = None) -> None:
    """Serve until SIGTERM: REST on `port`, gRPC on `grpc_port` (0: no gRPC), same models.
    `max_inflight` bounds the predict requests in progress at once on each front door
    (default: twice the interpreters per version, so they never wait on the bound)."""
    import uvicorn

    configure_logging(log_level)
    started = time.perf_counter()
    metrics = ServerMetrics()

    def on_event(kind: str, **fields) -> None:
        if kind in ("loaded", "load_failed", "unloaded"):
            metrics.loads.inc(fields["model"], str(fields["version"]), kind)
        if kind == "ready":
            fields["seconds_since_start"] = round(time.perf_counter() - started, 3)
        level = logging.WARNING if kind in ("load_failed", "poll_error") else logging.INFO
        log.log(level, json.dumps({"event": kind, **fields}))

    repository = ModelRepository(configs, threads=threads, interpreters=interpreters or default_interpreters(threads),
                                 poll_seconds=poll_seconds, on_event=on_event)
    max_body_bytes = int(max_body_mb * 1048576)
    max_inflight = max_inflight or 2 * repository.interpreters
    grpc_server = None
    if grpc_port:
        from edgekit.serve.grpc import create_server

        grpc_server, grpc_port = create_server(repository, host=host, port=grpc_port, api_key=api_key,
                                               max_message_bytes=max_body_bytes, metrics=metrics,
                                               workers=max_inflight)
    app = create_app(repository, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics,
                     grpc_server=grpc_server, max_inflight=max_inflight)
    log.info(json.dumps({"event": "start", "host": host, "port": port, "grpc_port": grpc_port or None,
                         "models": [c.name for c in configs], "threads": threads,
                         "interpreters": repository.interpreters, "max_inflight": max_inflight,
                         "auth": api_key is not None}))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
