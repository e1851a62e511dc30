"""HTTP routes of TensorFlow Serving's REST API, plus health, readiness and metrics.

This module routes and maps errors to status codes; codec.py turns bodies into arrays,
repository.py owns the models. Decoding, inference and encoding run in a worker thread,
so a large JSON body never blocks the event loop, and the interpreter's invoke releases
the GIL while it computes.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import time
import traceback

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekit.errors import BadInput, EdgekitError, NotFound, NotImplementedHere, PayloadTooLarge, Unauthorized
from edgekit.serve import codec
from edgekit.serve.metrics import ServerMetrics
from edgekit.serve.repository import LoadedVersion, ModelRepository

log = logging.getLogger("edgekit.serve")

MODEL_PATH = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[A-Za-z0-9][A-Za-z0-9_.\-]*))?"
    r"(?:/(?P<metadata>metadata)|:(?P<verb>predict|classify|regress))?$"
)


def _error(exc: EdgekitError) -> Response:
    return Response(codec.error_body(exc.message), status_code=exc.http_status, media_type=codec.JSON)


def create_app(repository: ModelRepository, *, api_key: str | None = None, max_body_bytes: int = 32 << 20,
               metrics: ServerMetrics | None = None, grpc_server=None, max_inflight: int = 4) -> Starlette:
    """The REST app. It owns the repository's poller and, when given, the gRPC server
    (serve/grpc.py): both start and stop with it.

    At most `max_inflight` predict requests are read, decoded and run at once; the others
    wait with their bodies still unread in the socket. A decoded JSON image is megabytes of
    Python floats, so without the bound a Pi's memory grows with the number of clients.
    """
    metrics = metrics or ServerMetrics()
    limiters: list[anyio.CapacityLimiter] = []  # made on first use: it belongs to the running event loop

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise Unauthorized("missing or wrong API key",
                               "send the key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")

    async def read_body(request: Request) -> bytes:
        limit_mb = max_body_bytes / 1048576
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLarge(f"the body is {int(declared)} bytes; this server accepts at most {limit_mb:.3g} MB",
                                  "send fewer examples per request, or start the server with a larger --max-body-mb")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise PayloadTooLarge(f"the body exceeds {limit_mb:.3g} MB", "send fewer examples per request")
            chunks.append(chunk)
        return b"".join(chunks)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        served = repository.served_versions()
        body = {"ready": repository.ready, "models": {name: [str(v) for v in vs] for name, vs in served.items()}}
        return JSONResponse(body, status_code=200 if repository.ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        try:
            authorize(request)
        except EdgekitError as exc:
            return _error(exc)
        return Response(metrics.render(repository.served_versions()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        started = time.perf_counter()
        model, version, api = "-", "-", "status"
        try:
            authorize(request)
            match = MODEL_PATH.match(request.path_params["rest"])
            if not match:
                raise NotFound(f"Malformed request: {request.method} {request.url.path}",
                               "see /v1/models/{name}[/versions/{v}|/labels/{l}][/metadata|:predict]")
            model = match["name"]
            number = int(match["version"]) if match["version"] else None
            version = str(number) if number is not None else (match["label"] or "latest")
            if match["verb"]:
                api = match["verb"]
                if request.method != "POST":
                    raise BadInput(f"{api} takes POST, not {request.method}", "send the request as POST")
                if api != "predict":
                    raise NotImplementedHere(
                        f"edgekit serve does not implement :{api}: it needs tf.Example parsing, which the TFLite "
                        "runtime lacks", "send the features as tensors to :predict")
                if not limiters:
                    limiters.append(anyio.CapacityLimiter(max_inflight))
                async with limiters[0]:
                    body = await read_body(request)
                    loaded = repository.resolve(model, number, match["label"])
                    version = str(loaded.version)
                    response = await anyio.to_thread.run_sync(_predict, loaded, body, request, metrics)
            elif request.method != "GET":
                raise BadInput(f"{request.url.path} takes GET, not {request.method}", "use GET")
            elif match["metadata"]:
                api = "metadata"
                loaded = repository.resolve(model, number, match["label"])
                version = str(loaded.version)
                response = JSONResponse({"model_spec": {"name": model, "signature_name": "", "version": version},
                                         "metadata": loaded.metadata()})
            else:
                response = JSONResponse({"model_version_status": repository.status(model, number, match["label"])})
        except EdgekitError as exc:
            response = _error(exc)
            metrics.errors.inc(str(exc.http_status))
        except Exception as exc:  # a bug of ours: answer 500, keep serving, log the traceback
            log.error(json.dumps({"event": "internal_error", "path": request.url.path, "error": repr(exc),
                                  "traceback": traceback.format_exc()}))
            response = Response(codec.error_body(f"internal error: {type(exc).__name__}"), status_code=500,
                                media_type=codec.JSON)
            metrics.errors.inc("500")
        seconds = time.perf_counter() - started
        metrics.requests.inc(model, version, api, str(response.status_code))
        if api == "predict":
            metrics.latency.observe(seconds, model, version, api)
        log.info(json.dumps({"event": "request", "method": request.method, "path": request.url.path,
                             "status": response.status_code, "ms": round(seconds * 1000, 3),
                             "model": model, "version": version}))
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app):
        repository.start()  # the poller loads the models; /readyz says when they are in
        if grpc_server is not None:
            grpc_server.start()
        try:
            yield
        finally:  # uvicorn has stopped accepting and drained the requests in flight
            if grpc_server is not None:
                await anyio.to_thread.run_sync(lambda: grpc_server.stop(grace=10).wait())
            repository.stop()
            log.info(json.dumps({"event": "shutdown"}))

    return Starlette(lifespan=lifespan, routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/models/{rest:path}", models, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ])


def _predict(loaded: LoadedVersion, body: bytes, request: Request, metrics: ServerMetrics) -> Response:
    """Decode, run, encode: in a worker thread."""
    content_type = request.headers.get("content-type", codec.JSON).split(";")[0].strip().lower()
    if content_type in (codec.NPY, codec.NPZ):
        signature = request.query_params.get("signature_name", codec.DEFAULT_SIGNATURE)
        inputs_spec, _ = loaded.specs(signature)
        decoded = codec.decode_binary(body, content_type, inputs_spec)
    else:  # TF Serving reads any other body as JSON (curl -d sends a form type)
        document = codec.parse_json(body)
        signature = codec.signature_name_of(document)
        inputs_spec, _ = loaded.specs(signature)
        decoded = codec.decode_json(document, inputs_spec)
    started = time.perf_counter()
    outputs = loaded.run(signature, decoded.inputs)
    metrics.inference.observe(time.perf_counter() - started, loaded.name, str(loaded.version))
    if decoded.style in ("npy", "npz"):
        payload, media_type = codec.encode_binary(outputs, decoded.style)
        return Response(payload, media_type=media_type)
    return Response(codec.encode_json(outputs, decoded.style), media_type=codec.JSON)
