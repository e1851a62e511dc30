"""TensorFlow Serving's REST API, plus health, readiness and metrics: routes and status codes.

http.py reads requests and writes replies; codec.py turns bodies into arrays; service.py
holds what REST shares with gRPC (auth, lookups, limits, the run, metrics and logs). Here a
path becomes a call and an error its status, always in TF Serving's `{"error": ...}` shape.
Decoding, inference and encoding run in a worker thread, so a large JSON body never blocks
the event loop, and the interpreter's invoke releases the GIL while it computes. Two kinds
of request are answered on the event loop instead, where a thread hop costs more than it
gives: a small body for a quick model (any machine), and an .npy body whose rows take up to
ONE_CORE_CALL_SECONDS when the server has one core (taskset, a container's --cpus, a
single-core board), where a worker thread cannot run beside the loop anyway. Those take
turns, one inference per pass of the loop, so bodies still arriving are read in between.
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl

from edgekit.errors import BadInput, EdgekitError, NotFound, NotImplementedHere
from edgekit.serve import codec
from edgekit.serve.http import Body, Request, Response, error_response
from edgekit.serve.limits import WouldWait
from edgekit.serve.repository import LoadedVersion
from edgekit.serve.service import Admission, Service, client_message

MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,127})"
    r"(?:/versions/(?P<version>\d{1,19})|/labels/(?P<label>[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}))?"
    r"(?:/(?P<metadata>metadata)|:(?P<verb>predict|classify|regress|bench))?$"
)
BENCH_PATH = "/v1/bench"
BENCH_OFF = ("the bench endpoint is off on this server",
             "start it with --allow-bench (which needs --api-key-file) to bench artifacts on this device")
QUICK_BODY_BYTES = 16 << 10  # small enough to decode and answer on the event loop (with a quick model)
# On one core, an .npy predict is answered on the event loop when the rows its body can hold
# take at most this long (_seconds_at_most): the most a health check or another client's read
# waits behind one turn. A 602 KB image to MobileNetV2 (1.5 ms a row) counts as 4 rows. Not an
# .npz: compressed, a small one can hold many rows (128 images in 19 KB held the loop 262 ms).
ONE_CORE_CALL_SECONDS = 0.02
KEY_HINT = "send the key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RestApp:
    """The handler http.HttpServer calls for every request."""

    def __init__(self, service: Service, one_core: bool = False):
        self.service, self.one_core = service, one_core
        self.executor = ThreadPoolExecutor(service.limits.max_inflight, thread_name_prefix="edgekit-rest")
        self.turns = LoopTurns()

    async def __call__(self, request: Request, body: Body) -> Response:
        started = time.perf_counter()
        path = request.path
        if path in ("/healthz", "/readyz", "/metrics"):
            response = self._plain(request)
            if path == "/metrics":
                self._log(request, response, started, "metrics", "-", "-")
            return response
        api, model, version = "status", "-", "-"
        try:
            if path == BENCH_PATH:
                api = "bench"
                response = await self._bench(request, body, None)
                self._log(request, response, started, api, model, version)
                return response
            match = MODEL_PATH.match(path)
            if not match:
                raise NotFound(f"Malformed request: {request.method} {path[:200]}",
                               "see /v1/models/{name}[/versions/{v}|/labels/{l}][/metadata|:predict]")
            self._authorize(request)
            model, label = match["name"], match["label"]
            number = self.service.version_number(match["version"])
            version = match["version"] or label or "latest"
            if match["verb"] == "bench":
                api = "bench"
                loaded = self.service.resolve(model, number, label)
                version = str(loaded.version)
                response = await self._bench(request, body, loaded)
            elif match["verb"]:
                api = match["verb"]
                response, version = await self._predict(request, body, match, number, label)
            elif request.method not in ("GET", "HEAD"):
                raise BadInput(f"{path[:200]} takes GET, not {request.method}", "use GET")
            elif match["metadata"]:
                api = "metadata"
                loaded = self.service.resolve(model, number, label)
                version = str(loaded.version)
                response = _json(200, {"model_spec": {"name": model, "signature_name": "", "version": version},
                                       "metadata": loaded.metadata()})
            else:
                response = _json(200, {"model_version_status": self.service.status(model, number, label)})
        except EdgekitError as exc:
            response = error_response(exc.http_status, client_message(exc))
        except Exception as exc:  # a bug of ours: answer 500, keep serving, log the traceback
            self.service.internal_error("rest", path[:200], exc)
            response = error_response(500, f"internal error: {type(exc).__name__}")
        self._log(request, response, started, api, model, version)
        return response

    def _plain(self, request: Request) -> Response:
        repository = self.service.repository
        if request.path == "/healthz":
            return _json(200, {"status": "alive"})
        if request.path == "/readyz":
            served = repository.served_versions()
            return _json(200 if repository.ready else 503,
                         {"ready": repository.ready, "models": {n: [str(v) for v in vs] for n, vs in served.items()}})
        try:
            self._authorize(request)
        except EdgekitError as exc:
            return error_response(exc.http_status, client_message(exc))
        text = self.service.metrics_text(repository.served_versions())
        return Response(200, text.encode(), METRICS_TYPE)

    def _authorize(self, request: Request) -> None:
        headers = request.headers
        self.service.authorize(headers.get("authorization") or headers.get("x-api-key"), KEY_HINT)

    async def _predict(self, request: Request, body: Body, match, number: int | None,
                       label: str | None) -> tuple[Response, str]:
        api = match["verb"]
        if request.method != "POST":
            raise BadInput(f"{api} takes POST, not {request.method}", "send the request as POST")
        if api != "predict":
            raise NotImplementedHere(f"edgekit serve does not implement :{api}: it needs tf.Example parsing, which "
                                     "the TFLite runtime lacks", "send the features as tensors to :predict")
        loaded = self.service.resolve(match["name"], number, label)  # 404/503 before the body is read
        data, held = await body.read()
        admission = self.service.admission(held)
        admission.wait_for_memory_here = False  # a worker thread never waits for memory: see below
        content_type = _media_type(request)
        quick = loaded.quick and len(data) <= QUICK_BODY_BYTES
        if quick or self.takes_turns(loaded, len(data), content_type, request.query):
            try:  # memory, a slot and an interpreter free right now: answer here, no thread hop
                arguments = (self.service, loaded, data, content_type, request.query, admission, False)
                response = _predict(*arguments) if quick else await self.turns.take(_predict, *arguments)
                response.on_sent = admission.close
                return response, str(loaded.version)
            except WouldWait:
                admission.wait = True
            except BaseException:
                admission.close()
                raise
        while True:
            work = asyncio.get_running_loop().run_in_executor(
                self.executor, _predict, self.service, loaded, data, content_type, request.query, admission)
            try:
                response = await work
            except WouldWait as short:
                # no memory free now: wait for it here, in the budget's line, holding no thread (a
                # thread that waited could wait for bodies queued behind it for a thread), then go on
                if short.memory <= admission.held:  # only memory sends a request back; never loop
                    admission.close()
                    raise RuntimeError("a worker thread would wait for something other than memory") from None
                try:
                    await admission.wait_async(short.memory)
                except EdgekitError as exc:
                    admission.close()
                    return error_response(exc.http_status, client_message(exc)), str(loaded.version)
                except BaseException:
                    admission.close()
                    raise
                continue
            except asyncio.CancelledError:  # the client left: the worker still owns the admission
                work.add_done_callback(lambda done: admission.close())
                raise
            except BaseException:
                admission.close()
                raise
            response.on_sent = admission.close
            return response, str(loaded.version)

    async def _bench(self, request: Request, body: Body, loaded: LoadedVersion | None) -> Response:
        """GET /v1/bench: this device; POST /v1/bench: an uploaded .tflite (an .npz with
        `__tflite__`, the file's bytes, and the rows by input name), checked against
        ?sha256=; POST /v1/models/NAME[/versions/V]:bench: a served version, on the rows."""
        self._authorize(request)
        bench = self.service.bench
        if bench is None:
            raise NotFound(*BENCH_OFF)
        if request.method == "GET" and loaded is None:
            return _json(200, bench.info())
        if request.method != "POST":
            raise BadInput(f"bench takes POST (GET {BENCH_PATH} describes the device)", "send the request as POST")
        data, held = await body.read()
        admission = self.service.admission(held)
        query = dict(parse_qsl(request.query[:4096]))
        work = asyncio.get_running_loop().run_in_executor(self.executor, _bench, self.service, loaded, data, query,
                                                          admission)
        try:
            response = await work
        except asyncio.CancelledError:
            work.add_done_callback(lambda done: admission.close())
            raise
        admission.close()
        return response

    def _log(self, request: Request, response: Response, started: float, api: str, model: str, version: str) -> None:
        self.service.record("rest", api, model, version, str(response.status), time.perf_counter() - started,
                            method=request.method, path=request.path[:200])

    def takes_turns(self, loaded: LoadedVersion, size: int, content_type: str, query: str) -> bool:
        """Whether a predict runs on the event loop in turns (LoopTurns): on one core, an .npy
        body whose rows take at most ONE_CORE_CALL_SECONDS."""
        return (self.one_core and content_type == codec.NPY
                and _seconds_at_most(loaded, size, query) <= ONE_CORE_CALL_SECONDS)

    def direct_body(self, request: Request) -> bool:
        """An .npy predict body is decoded in place, so it may be read straight into its own
        buffer (http.py) and arrive as a memoryview."""
        return _media_type(request) == codec.NPY and request.path.endswith(":predict")

    def body_limit(self, path: str) -> int:
        """A bench upload may be larger than a predict body (--bench-max-mb)."""
        if self.service.bench is not None and (path == BENCH_PATH or path.endswith(":bench")):
            return self.service.bench.max_bytes
        return self.service.limits.max_body_bytes

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class LoopTurns:
    """Calls run on the event loop in order, one per pass of the loop: between two, the loop
    reads what has arrived (the rest of another client's body, a health check) and writes
    what is ready, so no body waits behind a run of inferences."""

    def __init__(self):
        self.waiting: collections.deque = collections.deque()
        self.scheduled = False

    def take(self, call, *arguments) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((future, call, arguments))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._next, loop)
        return future

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self.waiting:
                future, call, arguments = self.waiting.popleft()
                if future.cancelled():  # its client left while it waited
                    continue
                try:
                    future.set_result(call(*arguments))
                except Exception as exc:
                    future.set_exception(exc)
                break
        finally:  # the next turn is due whatever this one raised
            self.scheduled = bool(self.waiting)
            if self.scheduled:
                loop.call_soon(self._next, loop)


def _seconds_at_most(loaded: LoadedVersion, body_bytes: int, query: str) -> float:
    """How long an .npy body can keep an interpreter busy, before it is decoded: a one-row
    call's time (at load) for each row it can hold, at one byte per value (uint8 images)."""
    served = loaded.signatures.get(_query_signature(query)) or next(iter(loaded.signatures.values()))
    return loaded.call_seconds * max(1, body_bytes // served.row_values)


def _predict(service: Service, loaded: LoadedVersion, body: bytes, content_type: str, query: str,
             admission: Admission, wait: bool = True) -> Response:
    """Reserve memory, decode, run, encode: in a worker thread, or (wait=False, small
    requests to quick models) on the event loop, raising WouldWait rather than waiting.
    A bad request becomes its error reply here: an exception carried back to the event loop
    would keep this frame, and so the body, alive until the garbage collector ran."""
    try:
        return _decode_run_encode(service, loaded, body, content_type, query, admission, wait)
    except EdgekitError as exc:
        return error_response(exc.http_status, client_message(exc))


def _decode_run_encode(service: Service, loaded: LoadedVersion, body: bytes, content_type: str, query: str,
                       admission: Admission, wait: bool) -> Response:
    admission.wait = wait
    if content_type in (codec.NPY, codec.NPZ):
        signature = _query_signature(query)
        served = loaded.specs(signature)

        def admit(decoded_bytes: int, rows: int, values: int) -> None:
            cost = service.tensor_cost(served, len(body), decoded_bytes, rows, values)
            admission.need(cost, f"a {len(body)}-byte {content_type} body")

        with service.slot(wait):
            decoded = codec.decode_binary(body, content_type, served.inputs, admit)
            outputs = service.run(loaded, signature, decoded.inputs, wait)
            payload, media_type = codec.encode_binary(outputs, decoded.style)
        return Response(200, payload, media_type)
    # TF Serving reads any other body as JSON (curl -d sends a form type)
    what = f"a {len(body)}-byte JSON body"
    first, general = service.json_costs(loaded, codec.DEFAULT_SIGNATURE, body)
    admission.need(first, what)
    with service.slot(wait):
        decoded = codec.decode_json_body(body, lambda signature: loaded.specs(signature).inputs,
                                         before_general=lambda: admission.need_now(general, what))
        outputs = service.run(loaded, decoded.signature_name, decoded.inputs, wait)
        return Response(200, codec.encode_json(outputs, decoded.style))


def _bench(service: Service, loaded: LoadedVersion | None, body: bytes, query: dict[str, str],
           admission: Admission) -> Response:
    """Read the upload (bounded), run the bench worker, answer its figures: in a worker thread."""
    try:
        admission.need(2 * len(body), f"a {len(body)}-byte bench upload")
        arrays = codec.read_npz(body, max_members=65, max_bytes=2 * service.bench.max_bytes) if body else {}
        model = loaded.path if loaded is not None else arrays.pop("__tflite__", None)
        if model is None:
            raise BadInput("the upload has no __tflite__ member", "np.savez(f, __tflite__=np.frombuffer(tflite_bytes, "
                                                                  "np.uint8), input_name=rows, ...)")
        if not isinstance(model, Path):
            model = model.tobytes()
        threads = [int(t) for t in query.get("threads", "1").split(",") if t.strip().isdigit()]
        result = service.bench.run(model, query.get("sha256"), arrays,
                                   signature=query.get("signature", codec.DEFAULT_SIGNATURE)[:256], threads=threads,
                                   runs=int(query.get("runs", "50")) if query.get("runs", "50").isdigit() else 0,
                                   warmup=int(query.get("warmup", "5")) if query.get("warmup", "5").isdigit() else -1)
        return _json(200, result)
    except EdgekitError as exc:
        return error_response(exc.http_status, client_message(exc))


def _media_type(request: Request) -> str:
    """The body's media type, without parameters; JSON when none is given (as TF Serving reads it)."""
    return request.headers.get("content-type", codec.JSON).split(";")[0].strip().lower()


def _query_signature(query: str) -> str:
    if not query:  # most requests: parse_qsl costs 2-3 µs even on nothing, and runs twice per .npy
        return codec.DEFAULT_SIGNATURE
    for key, value in parse_qsl(query[:4096]):
        if key == "signature_name" and value:
            return value
    return codec.DEFAULT_SIGNATURE


def _json(status: int, document) -> Response:
    return Response(status, json.dumps(document).encode())
