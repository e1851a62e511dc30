"""edgekit serve under hostile and careless traffic: every bad request is a 4xx (or a precise
gRPC code) in TF Serving's error shape, memory stays bounded, slow and idle clients cannot
starve the others, and the server is alive after each attack. Classes of cases, generated
where that is cheap (hypothesis), against a real server process on loopback."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from attacks import (
    Holders,
    attack_models,
    error_of,
    long_number_json,
    nested_json,
    npy_bytes,
    npy_header_only,
    npz_bomb,
    npz_of,
    post,
    raw_exchange,
    served_ok,
    status_of,
)
from conftest import DIGITS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import Client, Server, free_port, memory_mb, reserved_memory, wait_for

from edgekit.serve.grpc import to_tensor
from edgekit.serve.protos import serving_pb2, serving_pb2_grpc, tensorflow_pb2

PREDICT = "/v1/models/digits:predict"
HALF = "/v1/models/half:predict"
# small bounds, so each attack meets them in well under a second
FLAGS = ["--read-timeout", "1", "--keepalive-timeout", "3", "--max-connections", "32", "--queue-timeout", "5",
         "--max-memory-mb", "64", "--max-body-mb", "16", "--interpreters", "2"]
MEMORY_CEILING_MB = 400  # the Pi unit's MemoryMax


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits_out):
    """digits (int8, [N, 8, 8, 1]) and half_plus_two (float32, [N]), in one model config."""
    return attack_models(tmp_path_factory.mktemp("attack-models"), digits_out)


@pytest.fixture(scope="module")
def server(models):
    running = Server(["--model-config", str(models / "models.json"), *FLAGS])
    yield running
    running.stop()


def alive(running: Server) -> None:
    """A well-behaved client is answered at once, on REST and gRPC."""
    status, seconds = served_ok(running.port, PREDICT, json.dumps({"instances": [[[[0.5]] * 8] * 8]}).encode())
    assert status == 200 and seconds < 2.0, (status, seconds)
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}"))
    assert stub.Predict(grpc_request("half", "x", to_tensor(np.ones(3, np.float32))), timeout=10).outputs["y"]


@pytest.fixture(autouse=True)
def memory_comes_back(request):
    """Whatever a test sent the shared server, every byte of request memory it reserved is
    given back once its clients are answered, refused or gone (a body shed for memory
    once kept its bytes counted forever)."""
    yield
    if "server" in request.fixturenames:
        running = request.getfixturevalue("server")
        assert wait_for(lambda: reserved_memory(running.port) == 0.0, 15), reserved_memory(running.port)


def grpc_request(model: str, name: str, tensor) -> serving_pb2.PredictRequest:
    request = serving_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[name].CopyFrom(tensor)
    return request


def tensor(dtype: int, dims: list[int], **values) -> tensorflow_pb2.TensorProto:
    proto = tensorflow_pb2.TensorProto(dtype=dtype, **values)
    proto.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    return proto


# --- the HTTP protocol ------------------------------------------------------------------------

def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


HTTP_ATTACKS = {
    "garbage request line": (b"GARBAGE\r\n\r\n", 400),
    "unknown method BREW": (b"BREW /v1/models/digits HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "Content-Length: abc": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    "two Content-Lengths": (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "a bad chunk size": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "a 100 KB URL": (b"GET /v1/models/" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 431),
    "3000 headers": (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(3000)) + b"\r\n", 431),
    "a Content-Length of 10^20": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nContent-Length: 100000000000000000000"
                                  b"\r\n\r\n", 400),
    "a Content-Length over --max-body-mb": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nContent-Length: 99999999"
                                            b"\r\n\r\n", 413),
    "a chunked body over --max-body-mb": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked"
                                          b"\r\n\r\n" + _chunked(*[b"0" * 1_000_000] * 17), 413),
    "PUT on a model": (b"PUT /v1/models/digits HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
    "GET on :predict": (b"GET " + PREDICT.encode() + b" HTTP/1.1\r\n\r\n", 400),
    "a NUL in the path": (b"GET /v1/models/dig\x00its HTTP/1.1\r\n\r\n", 400),
    "a 5000-digit version": (b"GET /v1/models/digits/versions/" + b"9" * 5000 + b" HTTP/1.1\r\n\r\n", 404),
    "a 19-digit version beyond int64": (b"GET /v1/models/digits/versions/9999999999999999999 HTTP/1.1\r\n\r\n", 404),
    "a path outside the API": (b"GET /v1/models/../../etc/passwd HTTP/1.1\r\n\r\n", 404),
}


@pytest.mark.parametrize("name", HTTP_ATTACKS)
def test_protocol_abuse_gets_a_4xx_in_tf_servings_shape(server, name):
    data, expected = HTTP_ATTACKS[name]
    reply = raw_exchange(server.port, data, wait_for_close=False)  # a 4xx of the app keeps the connection open
    assert status_of(reply) == expected, reply[:300]
    assert error_of(reply), reply[:300]
    alive(server)


def test_pipelined_requests_are_answered_in_order_and_100_continue_is_honoured(server):
    one = json.dumps({"instances": [[[[0.25]] * 8] * 8]}).encode()
    keep = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(one)}\r\n\r\n").encode() + one
    data = keep * 5 + b"GET /v1/models/digits HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_exchange(server.port, data)
    assert reply.count(b"HTTP/1.1 200 OK") == 6 and reply.rstrip().endswith(b"}]}")
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(one)}\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(one)
        assert status_of(sock.recv(65536)) == 200


# --- bodies -------------------------------------------------------------------------------------

def _zero_row_then_rows() -> list[tuple[str, bytes, str]]:
    return [("a 1-row batch", npy_bytes(np.zeros((1, 8, 8, 1), np.float32)), "application/x-npy"),
            ("then a 0-row batch", npy_bytes(np.zeros((0, 8, 8, 1), np.float32)), "application/x-npy")]


BODY_ATTACKS = {  # name: (path, body, content type, expected status, a fragment of the error)
    "JSON nested 100k deep": (PREDICT, nested_json(100_000), "application/json", 400, "deeper than 1024"),
    "JSON nested 900 deep": (PREDICT, nested_json(900), "application/json", 400, "nest too deep"),
    "a 5000-digit number": (PREDICT, long_number_json(5000), "application/json", 400, "not valid JSON"),
    "a 4000-digit integer": (PREDICT, long_number_json(4000), "application/json", 400, "beyond 64 bits"),
    "not UTF-8": (PREDICT, b'{"instances": ["\xff\xfe"]}', "application/json", 400, "not valid JSON"),
    "an empty body": (PREDICT, b"", "application/json", 400, "not valid JSON"),
    "a JSON list": (PREDICT, b"[1, 2]", "application/json", 400, "must be an object"),
    "null values": (PREDICT, json.dumps({"instances": [[[[None]] * 8] * 8]}).encode(), "application/json", 400,
                    "expected numbers"),
    "b64 for numbers": (PREDICT, b'{"instances": [{"b64": "AAAA"}]}', "application/json", 400, "expected numbers"),
    "a 0-row JSON batch": (PREDICT, b'{"inputs": []}', "application/json", 400, "does not fit"),
    "a 0-row .npy batch": (PREDICT, npy_bytes(np.zeros((0, 8, 8, 1), np.float32)), "application/x-npy", 400,
                           "batch is empty"),
    "an .npy declaring 10^12 rows": (PREDICT, npy_header_only((10**12, 8, 8, 1), data=b"\0" * 256),
                                     "application/x-npy", 400, "declares shape"),
    "an .npy declaring 2^62 elements": (HALF, npy_header_only((2**62,), data=b"\0" * 8), "application/x-npy", 400,
                                        "declares shape"),
    "an .npy of objects": (PREDICT, npy_header_only((1,), "|O"), "application/x-npy", 400, "without pickle"),
    "an .npy of strings": (HALF, npy_bytes(np.array(["a", "b"])), "application/x-npy", 400, "plain numbers"),
    "an .npy of records": (HALF, npy_bytes(np.zeros(2, dtype=[("a", "<f4")])), "application/x-npy", 400, "records"),
    "an .npy of complex": (HALF, npy_bytes(np.zeros(2, np.complex64)), "application/x-npy", 400, "complex"),
    "an .npy with a broken header": (PREDICT, b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4'}\n", "application/x-npy",
                                     400, "not a .npy file"),
    "an .npy body sent as x-npz": (PREDICT, npy_bytes(np.zeros((1, 8, 8, 1), np.float32)), "application/x-npz", 400,
                                   "send it as application/x-npy"),
    "an .npz sent as x-npy": (PREDICT, npz_of(**{"pixels.npy": npy_bytes(np.zeros((1, 8, 8, 1), np.float32))}),
                              "application/x-npy", 400, "send it as application/x-npz"),
    "an .npz member that is not .npy": (PREDICT, npz_of(**{"pixels.txt": b"hello"}), "application/x-npz", 400,
                                        "not one .npy per input"),
    "an .npz member that is not an array": (PREDICT, npz_of(**{"pixels.npy": b"hello"}), "application/x-npz", 400,
                                            "not a .npy file"),
    "an .npz of 1000 members": (PREDICT, npz_of(**{f"m{i}.npy": b"" for i in range(1000)}), "application/x-npz", 400,
                                "lists 1000 members"),
    "an .npz unpacking to 1 GiB": (PREDICT, npz_bomb("pixels", (8, 8, 1), 1 << 30), "application/x-npz", 413,
                                   "--max-memory-mb"),
    "an .npz lying about its size": (PREDICT, npz_of(**{"pixels.npy": npy_header_only((1000, 8, 8, 1), data=b"\0" * 4)}),
                                     "application/x-npz", 400, "declares shape"),
    "a JSON batch over the memory budget": (HALF, json.dumps({"instances": [0.5] * 1_500_000}).encode(),
                                            "application/json", 413, "--max-memory-mb"),
    "a signature_name of 10k characters": (PREDICT, json.dumps({"signature_name": "s" * 10_000, "instances": [1]})
                                           .encode(), "application/json", 400, "signature_name"),
}


@pytest.mark.parametrize("name", BODY_ATTACKS)
def test_bad_bodies_get_a_4xx_naming_the_problem(server, name):
    path, body, content_type, expected, fragment = BODY_ATTACKS[name]
    reply = raw_exchange(server.port, post(path, body, content_type), timeout=30)
    assert status_of(reply) == expected, reply[:400]
    assert fragment in error_of(reply), reply[:400]


def test_a_zero_row_batch_after_another_size_and_odd_but_legal_arrays(server):
    for _, body, content_type in _zero_row_then_rows():
        raw_exchange(server.port, post(PREDICT, body, content_type))
    legal = [np.asfortranarray(np.ones((3, 8, 8, 1), np.float32)), np.ones((2, 8, 8, 1), ">f4"),
             np.ones((2, 8, 8, 1), np.float16), np.ones((2, 8, 8, 1), np.uint8), np.ones((2, 8, 8, 1), bool)]
    answers = [np.load(__import__("io").BytesIO(raw_exchange(server.port, post(PREDICT, npy_bytes(a), "application/x-npy"))
                                               .partition(b"\r\n\r\n")[2])) for a in legal]
    assert [a.shape for a in answers] == [(3, 10), (2, 10), (2, 10), (2, 10), (2, 10)]
    assert np.allclose(answers[0][0], answers[1][0]) and np.allclose(answers[1][0], answers[2][0])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=40)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=st.one_of(JSON_VALUES, st.fixed_dictionaries({"instances": JSON_VALUES}),
                          st.fixed_dictionaries({"inputs": JSON_VALUES}),
                          st.fixed_dictionaries({"signature_name": JSON_VALUES, "instances": JSON_VALUES})),
       path=st.sampled_from([PREDICT, HALF]))
def test_any_json_document_gets_a_200_or_a_4xx(server, document, path):
    body = json.dumps(document, allow_nan=True).encode()
    status, _, reply = Client(server.port).request("POST", path, body, "application/json")
    assert status == 200 or (400 <= status < 500 and json.loads(reply)["error"]), (status, body[:200], reply[:200])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=400) | st.builds(lambda b: b"\x93NUMPY" + b, st.binary(max_size=200))
       | st.builds(lambda b: b"PK\x03\x04" + b, st.binary(max_size=200)),
       content_type=st.sampled_from(["application/x-npy", "application/x-npz", "application/json", "text/plain"]),
       path=st.sampled_from([PREDICT, HALF]))
def test_any_bytes_get_a_200_or_a_4xx(server, body, content_type, path):
    status, _, reply = Client(server.port).request("POST", path, body, content_type)
    assert status == 200 or (400 <= status < 500 and json.loads(reply)["error"]), (status, body[:100], reply[:200])


# --- gRPC -------------------------------------------------------------------------------------

F, I64 = tensorflow_pb2.DT_FLOAT, tensorflow_pb2.DT_INT64
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
GRPC_ATTACKS = {  # name: (model, input, tensor, expected code)
    "dtype enum 999": ("half", "x", tensor(999, [1], float_val=[1]), INVALID),
    "tensor_content of 255 bytes for one float": ("half", "x", tensor(F, [1], tensor_content=b"\0" * 255), INVALID),
    "tensor_content too short for its shape": ("half", "x", tensor(F, [100], tensor_content=b"\0" * 8), INVALID),
    "dims [2^40, 2^40]": ("half", "x", tensor(F, [2**40, 2**40], float_val=[1]), INVALID),
    "dims [2^40, 8, 8, 1], one value": ("digits", "pixels", tensor(F, [2**40, 8, 8, 1], float_val=[0.5]), EXHAUSTED),
    "[1000000, 8, 8, 1] from one value": ("digits", "pixels", tensor(F, [1000000, 8, 8, 1], float_val=[0.5]),
                                          EXHAUSTED),
    "[100000000] from one value": ("half", "x", tensor(F, [100000000], float_val=[0.5]), EXHAUSTED),
    "10^12 elements from one value": ("half", "x", tensor(F, [10**12], float_val=[0.5]), EXHAUSTED),
    "a 0-row batch": ("digits", "pixels", tensor(F, [0, 8, 8, 1]), INVALID),
    "a negative dimension": ("half", "x", tensor(F, [-3], float_val=[1]), INVALID),
    "an unknown rank": ("half", "x", tensorflow_pb2.TensorProto(dtype=F, tensor_shape={"unknown_rank": True}), INVALID),
    "strings for a float input": ("half", "x", tensor(tensorflow_pb2.DT_STRING, [1], string_val=[b"a"]), INVALID),
    "a complex64 tensor": ("half", "x", tensor(tensorflow_pb2.DT_COMPLEX64, [1], scomplex_val=[1, 2]), INVALID),
    "a bfloat16 tensor": ("half", "x", tensor(tensorflow_pb2.DT_BFLOAT16, [1], half_val=[1]), INVALID),
    "3 values for a shape of 2": ("half", "x", tensor(F, [2], float_val=[1, 2, 3]), INVALID),
    "int64 values into a float input": ("half", "x", tensor(I64, [2], int64_val=[1, 2]), grpc.StatusCode.OK),
}


@pytest.mark.parametrize("name", GRPC_ATTACKS)
def test_grpc_tensors_get_precise_codes_counted_in_metrics(server, name):
    model, input_name, proto, expected = GRPC_ATTACKS[name]
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    before = _metric(server, "edgekit_request_errors_total", expected.name)
    if expected == grpc.StatusCode.OK:
        assert stub.Predict(grpc_request(model, input_name, proto), timeout=30).outputs
        return
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(grpc_request(model, input_name, proto), timeout=30)
    assert error.value.code() == expected, error.value.details()
    assert _metric(server, "edgekit_request_errors_total", expected.name) == before + 1


def test_grpc_version_labels_and_specs_out_of_range(server):
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    request = grpc_request("half", "x", to_tensor(np.ones(2, np.float32)))
    request.model_spec.version.value = -5
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.ClearField("version")
    request.model_spec.signature_name = "s" * 100_000
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and len(error.value.details()) < 2000


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(dtype=st.integers(0, 30) | st.integers(-5, 2**31 - 1), dims=st.lists(st.integers(-2, 2**62), max_size=5),
       content=st.binary(max_size=64), floats=st.lists(st.floats(width=32), max_size=5),
       strings=st.lists(st.binary(max_size=4), max_size=3))
def test_any_tensor_proto_gets_a_precise_code(server, dtype, dims, content, floats, strings):
    proto = tensor(dtype, dims, tensor_content=content, float_val=floats, string_val=strings)
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    try:
        stub.Predict(grpc_request("half", "x", proto), timeout=30)
    except grpc.RpcError as error:
        assert error.code() in (INVALID, EXHAUSTED), (error.code(), error.details())
    except ValueError:  # the client library refuses to send it (an enum out of its range)
        pass


def _metric(running: Server, name: str, code: str) -> float:
    text = Client(running.port).request("GET", "/metrics")[2].decode()
    line = next((line for line in text.splitlines() if line.startswith(f'{name}{{code="{code}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


# --- clients that hold resources ---------------------------------------------------------------

def test_slow_and_silent_clients_do_not_starve_the_others(server):
    """Half-sent bodies, headers dripped one byte at a time: the others are served meanwhile,
    and the slow ones are cut off with 408 after --read-timeout."""
    holders = Holders()
    try:
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode()
        silent = [holders.open(server.port, head + b'{"instances": [') for _ in range(8)]
        for _ in range(8):
            holders.drip(holders.open(server.port, b"POST /v1/models/digits:predict HTTP/1.1\r\n"), b"X-Slow: y\r\n",
                         0.2)
        for _ in range(20):
            alive(server)
        statuses = holders.replies(timeout=5)
        assert statuses[: len(silent)] == [408] * len(silent)
        assert set(statuses[len(silent):]) == {408}
    finally:
        holders.close()
    alive(server)


def test_endless_header_lines_are_cut_at_the_header_limit(server):
    holders = Holders()
    try:
        for _ in range(10):
            holders.flood(holders.open(server.port, b"GET /healthz HTTP/1.1\r\nX-Endless: "), b"a" * 65536)
        time.sleep(1.0)
        alive(server)
        assert set(holders.replies()) == {431}
    finally:
        holders.close()
    assert memory_mb(server.process.pid)["peak_rss_mb"] < MEMORY_CEILING_MB


def test_idle_connections_cannot_lock_clients_out(server):
    """Three times --max-connections sockets that never send: new clients still get in (the
    longest-idle connection makes room), and the idle ones are closed."""
    holders = Holders()
    try:
        for _ in range(96):
            holders.open(server.port)
        for _ in range(10):
            alive(server)
    finally:
        holders.close()


def test_a_client_that_never_reads_its_replies_is_dropped(server):
    import socket

    body = npy_bytes(np.zeros((5000, 8, 8, 1), np.float32))  # 1.3 MB in, 200 KB out, again and again
    request = (f"POST {PREDICT} HTTP/1.1\r\nContent-Type: application/x-npy\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    try:
        for _ in range(120):
            sock.sendall(request)
    except OSError:
        pass  # the server stopped reading, then closed it
    finally:
        sock.close()
    alive(server)
    assert memory_mb(server.process.pid)["peak_rss_mb"] < MEMORY_CEILING_MB


# --- memory -------------------------------------------------------------------------------------

def test_concurrent_large_requests_share_the_memory_budget(server):
    """16 clients with 1-3 MB bodies at once against a 64 MB budget: each is answered (200,
    or 503 if it waited past --queue-timeout), memory stays under the ceiling."""
    bodies = [json.dumps({"instances": np.random.default_rng(0).random((1000, 8, 8, 1)).round(4).tolist()}).encode(),
              npy_bytes(np.ones((12000, 8, 8, 1), np.float32))]
    statuses = []

    def client(number: int):
        body = bodies[number % 2]
        content_type = "application/json" if number % 2 == 0 else "application/x-npy"
        statuses.append(served_ok(server.port, PREDICT, body, content_type, timeout=60)[0])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 8, statuses
    assert memory_mb(server.process.pid)["peak_rss_mb"] < MEMORY_CEILING_MB
    alive(server)


def test_a_large_legal_batch_runs_in_chunks_and_memory_comes_back(models):
    rows = np.random.default_rng(1).random((40000, 8, 8, 1)).astype(np.float32)  # 10 MB
    with Server(["--model-config", str(models / "models.json"), *FLAGS, "--max-batch-rows", "512"]) as running:
        idle = memory_mb(running.process.pid)["rss_mb"]
        reply = raw_exchange(running.port, post(PREDICT, npy_bytes(rows), "application/x-npy"), timeout=60)
        assert status_of(reply) == 200
        probs = np.load(__import__("io").BytesIO(reply.partition(b"\r\n\r\n")[2]))
        single = json.loads(raw_exchange(running.port, post(PREDICT, json.dumps({"instances": rows[-1:].tolist()})
                                                            .encode()))
                            .partition(b"\r\n\r\n")[2])["predictions"]
        assert probs.shape == (40000, 10) and np.allclose(probs[-1], single[0])
        after = memory_mb(running.process.pid)
        assert after["rss_mb"] < idle + 40, (idle, after)
        log = running.stop()
    assert '"batch_rows": 512' in log


# --- start-up and operations -------------------------------------------------------------------

def test_ports_are_owned_and_a_taken_one_stops_start_up(server, models):
    config = str(models / "models.json")
    for args, port_name in ((["--port", str(free_port()), "--grpc-port", str(server.grpc_port)], "gRPC"),
                            (["--port", str(server.port), "--grpc-port", str(free_port())], "REST port"),
                            # gRPC would bind ::1 alone and start (the server holds 127.0.0.1)
                            (["--host", "localhost", "--port", str(free_port()), "--grpc-port",
                              str(server.grpc_port)], "gRPC")):
        result = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", "--model-config", config, *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "error: " in result.stderr and port_name in result.stderr and "hint: " in result.stderr
        assert "Traceback" not in result.stderr
    alive(server)


def test_exposed_without_a_key_warns(models):
    with Server([str(models / "half"), "--host", "0.0.0.0"]) as running:
        log = running.stop()
    assert '"event": "exposed_without_key"' in log


def test_a_broken_version_deployed_while_serving_fails_alone(models, tmp_path):
    base = tmp_path / "half"
    shutil.copytree(models / "half" / "1", base / "1")
    with Server([str(base), *FLAGS]) as running:
        (base / "2").mkdir()
        (base / "2" / "manifest.json").write_text("[]")
        deadline = time.time() + 20
        while time.time() < deadline:
            status = Client(running.port).json("GET", "/v1/models/half")[1]["model_version_status"]
            if status[0]["state"] == "END":
                break
            time.sleep(0.1)
        assert status[0]["version"] == "2" and "not an object" in status[0]["status"]["error_message"]
        shutil.copytree(models / "half" / "1", base / "3")
        deadline = time.time() + 20
        while time.time() < deadline and Client(running.port).json("GET", "/v1/models/half")[1][
                "model_version_status"][0]["version"] != "3":
            time.sleep(0.1)
        status, reply = Client(running.port).predict(HALF, {"instances": [2.0]})
        assert status == 200 and reply == {"predictions": [3.0]}
        log = running.stop()
    assert "poll_error" not in log


def test_convert_out_dir_as_the_base_path_is_refused_with_the_fix(tmp_path, digits_out):
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", str(digits_out)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "version folders" in result.stderr and "hint: " in result.stderr


def test_the_digits_sample_answers_after_the_attacks(server):
    with np.load(DIGITS / "eval.npz") as archive:
        pixels, labels = archive["pixels"][:32], archive["y"][:32]
    status, reply = Client(server.port).predict(PREDICT, {"instances": pixels.tolist()})
    assert status == 200 and (np.argmax(reply["predictions"], 1) == labels).mean() > 0.85
    assert memory_mb(server.process.pid)["peak_rss_mb"] < MEMORY_CEILING_MB
    assert server.process.poll() is None
    text = Client(server.port).request("GET", "/metrics")[2].decode()
    assert 'code="500"' not in text and 'code="INTERNAL"' not in text and 'code="UNKNOWN"' not in text


# --- models with unusual signatures (what an attacker found on models the tests did not have) ----

@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """.tflite files with the signatures that broke batching and estimates: a fixed batch of
    1 beside a scalar, an input with no batch axis, a reduction over the batch, a free
    sequence length into an embedding, and integer inputs."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("odd-models")

    def lite(function) -> bytes:
        module = tf.Module()
        module.serve = function
        path = root / "saved_model"
        tf.saved_model.save(module, str(path), signatures={"serving_default": function})
        return tf.lite.TFLiteConverter.from_saved_model(str(path)).convert()

    table = tf.constant(np.arange(1000 * 64, dtype=np.float32).reshape(1000, 64) / 1000)
    models = {
        "fixed1": tf.function(lambda x, s: {"y": x * s}, input_signature=[
            tf.TensorSpec([1, 3], tf.float32, name="x"), tf.TensorSpec([], tf.float32, name="s")]),
        "shared": tf.function(lambda x, w: {"y": x * w}, input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"), tf.TensorSpec([3], tf.float32, name="w")]),
        "colstats": tf.function(lambda x: {"colmean": tf.reduce_mean(x, 0), "x2": x * 2}, input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x")]),
        "embed": tf.function(lambda ids: {"vectors": tf.gather(table, ids)}, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="ids")]),
        "ints": tf.function(lambda a, b: {"s": tf.cast(a, tf.float32) + tf.cast(b, tf.float32)}, input_signature=[
            tf.TensorSpec([None], tf.int32, name="a"), tf.TensorSpec([None], tf.uint8, name="b")]),
    }
    for name, function in models.items():
        (root / name / "7").mkdir(parents=True)  # version 7 in folder 007/ for one of them, below
        (root / name / "7" / "model.tflite").write_bytes(lite(function))
    (root / "ints" / "7").rename(root / "ints" / "007")
    (root / "models.json").write_text(json.dumps({"model_config_list": [
        {"name": name, "base_path": name} for name in models]}))
    return root


@pytest.fixture(scope="module")
def odd_server(odd_models):
    running = Server(["--model-config", str(odd_models / "models.json"), *FLAGS, "--max-batch-rows", "1000"])
    yield running
    running.stop()


def test_inputs_without_a_batch_axis_go_whole_to_every_call(odd_server):
    client = Client(odd_server.port)
    status, reply = client.predict("/v1/models/fixed1:predict", {"inputs": {"x": [[1, 2, 3], [4, 5, 6]], "s": 2.0}})
    assert status == 200 and reply == {"outputs": [[2, 4, 6], [8, 10, 12]]}  # a row at a time, s each time
    status, reply = client.predict("/v1/models/shared:predict", {"inputs": {"x": [[1, 2, 3], [4, 5, 6]],
                                                                            "w": [1, 10, 100]}})
    assert status == 200 and reply == {"outputs": [[1, 20, 300], [4, 50, 600]]}
    status, reply = client.predict("/v1/models/shared:predict", {"inputs": {"x": [[1, 2, 3]] * 5, "w": [1, 1, 1]}})
    assert status == 200 and len(reply["outputs"]) == 5


def test_a_reduction_over_the_batch_is_never_split_and_the_row_format_refuses_it(odd_server):
    rows = np.random.default_rng(0).random((5000, 3)).astype(np.float32)  # 5 calls' worth at --max-batch-rows 1000
    reply = raw_exchange(odd_server.port, post("/v1/models/colstats:predict",
                                               npz_of(**{"x.npy": npy_bytes(rows)}), "application/x-npz"))
    outputs = np.load(__import__("io").BytesIO(reply.partition(b"\r\n\r\n")[2]))
    assert outputs["colmean"].shape == (3,) and np.allclose(outputs["colmean"], rows.mean(0), atol=1e-5)
    status, reply = Client(odd_server.port).predict("/v1/models/colstats:predict", {"instances": [[1, 2, 3]] * 4})
    assert status == 400 and "columnar" in reply["error"]


def test_the_model_refusing_an_input_at_run_time_is_a_400(odd_server):
    status, reply = Client(odd_server.port).predict("/v1/models/embed:predict", {"inputs": [[5, 5000]]})
    assert status == 400 and "cannot run on this input" in reply["error"]
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{odd_server.grpc_port}"))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(grpc_request("embed", "ids", to_tensor(np.array([[-1]], np.int32))), timeout=10)
    assert error.value.code() == INVALID


def test_an_input_with_a_free_length_is_bounded_by_its_memory_before_it_runs(odd_server):
    """[1, 1.5M] token ids would unfold into a 384 MB [1, L, 64] output."""
    long = npy_bytes(np.zeros((1, 1_500_000), np.int32))
    reply = raw_exchange(odd_server.port, post("/v1/models/embed:predict", long, "application/x-npy"), timeout=30)
    assert status_of(reply) == 413 and "--max-memory-mb" in error_of(reply)
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{odd_server.grpc_port}"))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(grpc_request("embed", "ids", to_tensor(np.zeros((1, 1_500_000), np.int32))), timeout=30)
    assert error.value.code() == EXHAUSTED
    assert memory_mb(odd_server.process.pid)["peak_rss_mb"] < MEMORY_CEILING_MB
    status, reply = Client(odd_server.port).predict("/v1/models/embed:predict", {"inputs": [[1, 2, 3]]})
    assert status == 200 and np.array(reply["outputs"]).shape == (1, 3, 64)


@pytest.mark.parametrize("inputs, fragment", [
    ({"a": [4294967297], "b": [1]}, "takes int32 values"),
    ({"a": [1], "b": [-1]}, "takes uint8 values"),
    ({"a": [1], "b": [300]}, "takes uint8 values"),
    ({"a": [18446744073709551615], "b": [1]}, "takes int32 values"),
])
def test_integers_that_do_not_fit_are_refused_not_wrapped(odd_server, inputs, fragment):
    status, reply = Client(odd_server.port).predict("/v1/models/ints:predict", {"inputs": inputs})
    assert status == 400 and fragment in reply["error"], reply


def test_grpc_integers_that_do_not_fit_are_refused_and_zero_padded_versions_load(odd_server):
    stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{odd_server.grpc_port}"))
    request = grpc_request("ints", "a", tensor(I64, [1], int64_val=[2**40]))
    request.inputs["b"].CopyFrom(tensor(tensorflow_pb2.DT_UINT8, [1], int_val=[1]))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == INVALID and "int32" in error.value.details()
    request.inputs["a"].CopyFrom(tensor(tensorflow_pb2.DT_INT32, [1], int_val=[2]))
    request.inputs["b"].CopyFrom(tensor(tensorflow_pb2.DT_UINT8, [1], int_val=[1000]))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == INVALID and "uint8" in error.value.details()
    request.inputs["b"].CopyFrom(tensor(tensorflow_pb2.DT_UINT8, [1], int_val=[3]))
    reply = stub.Predict(request, timeout=10)
    assert reply.model_spec.version.value == 7  # served from ints/007/


def test_nan_into_a_quantized_input_is_refused(server):
    body = json.dumps({"instances": [[[[float("nan")]] * 8] * 8]})  # the bare word NaN, as TF Serving reads it
    status, _, reply = Client(server.port).request("POST", PREDICT, body, "application/json")
    assert status == 400 and "NaN" in json.loads(reply)["error"]


def test_curl_http2_upgrade_requests_are_answered_over_http1(server):
    body = json.dumps({"instances": [[[[0.5]] * 8] * 8]}).encode()
    request = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               f"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    reply = raw_exchange(server.port, request)
    assert status_of(reply) == 200 and b'"predictions"' in reply


def test_header_dribblers_at_the_connection_limit_cannot_lock_clients_out(server):
    """As many sockets as --max-connections, each stuck mid-header line, reopened when
    closed: well-behaved clients still get answers (the longest-stuck are closed for them)."""
    holders = Holders()
    try:
        for _ in range(32):
            holders.drip(holders.open(server.port, b"POST /v1/models/digits:predict HTTP/1.1\r\nX-A: "), b"a", 0.3)
        answered = [served_ok(server.port, PREDICT, json.dumps({"instances": [[[[0.5]] * 8] * 8]}).encode(),
                              timeout=10)[0] for _ in range(20)]
        assert answered.count(200) >= 18, answered
    finally:
        holders.close()


def test_several_large_bodies_at_once_never_wedge_the_server(models):
    """Bodies arriving together fill the bodies' share of memory: the first keeps going, paused
    ones are answered 503 when a complete request needs their memory, and nothing waits out
    the queue timeout."""
    body = npy_bytes(np.ones((60000, 8, 8, 1), np.float32))  # 15 MB each
    with Server(["--model-config", str(models / "models.json"), *FLAGS, "--max-memory-mb", "120",
                 "--queue-timeout", "20"]) as running:
        statuses = []

        def client():
            statuses.append(served_ok(running.port, PREDICT, body, "application/x-npy", timeout=60))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {status for status, _ in statuses} <= {200, 503} and any(status == 200 for status, _ in statuses)
        assert max(seconds for _, seconds in statuses) < 10, statuses
        alive(running)


def test_a_model_file_overwritten_in_place_does_not_crash_the_server(models, tmp_path):
    base = tmp_path / "half"
    shutil.copytree(models / "half" / "1", base / "1")
    served = next((base / "1").glob("*.tflite"))
    with Server([str(base), *FLAGS]) as running:
        assert Client(running.port).predict(HALF, {"instances": [2.0]}) == (200, {"predictions": [3.0]})
        served.write_bytes(served.read_bytes()[:1000])  # cp over it, half-done
        assert Client(running.port).predict(HALF, {"instances": [2.0]}) == (200, {"predictions": [3.0]})
        assert running.process.poll() is None


def test_refused_large_bodies_do_not_hold_memory(server):
    body = npy_bytes(np.zeros((30000, 8, 8, 2), np.float32))  # 15 MB of the wrong shape
    idle = memory_mb(server.process.pid)["rss_mb"]
    for _ in range(8):
        assert status_of(raw_exchange(server.port, post(PREDICT, body, "application/x-npy"), timeout=30)) == 400
    assert memory_mb(server.process.pid)["rss_mb"] < idle + 40


def test_api_keys_http_cannot_carry_are_refused_and_surrounding_spaces_are_forgiven(models, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("clé-0123456789abcdef")
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", str(models / "half"), "--api-key-file",
                             str(key_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot carry" in result.stderr
    key_file.write_text("k" * 20)
    with Server([str(models / "half"), "--api-key-file", str(key_file)]) as running:
        status, _, _ = Client(running.port).request("GET", "/v1/models/half",
                                                    headers={"Authorization": f"Bearer {'k' * 20} "})
        assert status == 200


@pytest.mark.parametrize("path", ["/v1/models/nope:predict", "/v1/models/digits/versions/9:predict",
                                  "/v1/models/digits:nope"])
def test_an_answer_before_a_large_body_is_read_reaches_the_client(server, path):
    """A 404 decided from the path alone, while 12 MB are still on their way: the client reads
    it (a lingering close), rather than a connection reset mid-upload."""
    import http.client

    body = b'{"instances": [' + b",".join([b"0"] * 6_000_000) + b"]}"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status in (400, 404, 501) and "error" in json.loads(response.read())
    connection.close()
    alive(server)


def test_paused_bodies_that_fill_the_bodies_share_go_on_when_the_first_completes(models):
    """A small body starts first and dribbles; three 12 MB bodies arrive behind it and are
    paused once they fill the bodies' share of memory (16 MB). When the first completes, the
    next in line is a paused one, and it must go on: before, all three stood still until the
    queue timeout (seen with `--workers 2`: a 30 s stall in 1 run of 6)."""
    import socket

    small = npy_bytes(np.ones((400, 8, 8, 1), np.float32))
    big = npy_bytes(np.ones((47_000, 8, 8, 1), np.float32))  # 12 MB

    def head(body: bytes) -> bytes:
        return (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()

    def status(sock: socket.socket) -> int:
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                return 0
            reply += chunk
        return int(reply.split(b" ", 2)[1])

    with Server(["--model-config", str(models / "models.json"), *FLAGS, "--queue-timeout", "8"]) as running:
        first = socket.create_connection(("127.0.0.1", running.port), timeout=20)
        first.sendall(head(small) + small[:10])
        time.sleep(0.2)
        answers: dict[int, tuple[int, float]] = {}

        def big_client(number: int) -> None:
            with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
                sock.sendall(head(big))
                try:
                    sock.sendall(big)
                except OSError:  # answered 503 and closed mid-body
                    pass
                answers[number] = (status(sock), time.time())

        threads = [threading.Thread(target=big_client, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.6)  # the three fill the share and are paused
        first.sendall(small[10:])
        completed = time.time()
        assert status(first) == 200
        first.close()
        for thread in threads:
            thread.join()
    assert sorted(code for code, _ in answers.values()) in ([200, 503, 503], [200, 200, 503], [200, 200, 200])
    assert max(at for _, at in answers.values()) - completed < 4, answers


def test_bodies_that_declare_much_and_send_little_cannot_hold_back_a_small_one(models):
    """Forty clients declare 16 MB bodies, send 0.5 MB of each and go quiet: they fill the
    bodies' share (16 MB). A 77 KB image arriving behind them goes on, as the body with the
    fewest bytes still to come, instead of waiting for their deadlines (helper-15: 29 s).
    Clients that would take that place with a small body and then do not send cannot hold it:
    twenty that stall (the image's bytes wait in the socket, theirs do not), one that drips a byte
    every 0.3 s (shed with 503 once it has its turn; helper-18: 10 s and 503s for the image),
    and one whose small body is pipelined behind a request whose large reply it does not read,
    which the server waits on (helper-18: every upload stood still 28 s)."""
    import socket

    def status(sock: socket.socket) -> tuple[int, bytes]:
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return int(reply.split(b" ", 2)[1]) if reply else 0, reply

    def declared(size: int) -> bytes:
        return f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()

    head, image = _large_npy_request(np.ones((300, 8, 8, 1), np.float32))
    with Server(["--model-config", str(models / "models.json"), *FLAGS, "--read-timeout", "20", "--queue-timeout", "6",
                 "--max-connections", "64"]) as running:
        holders = Holders()
        try:
            pipelined = socket.socket()
            pipelined.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads its replies
            pipelined.connect(("127.0.0.1", running.port))
            big_head, big = _large_npy_request(np.ones((30_000, 8, 8, 1), np.float32))
            holders.sockets.append(pipelined)
            threading.Thread(target=pipelined.sendall, args=((big_head + big) * 3 + declared(1),), daemon=True).start()
            time.sleep(3.0)  # its replies (3 x 1.2 MB) fill the socket buffers: the server waits to send
            for _ in range(40):
                holders.open(running.port, declared(16 << 20) + b"[" * (512 << 10))
            time.sleep(0.5)
            assert reserved_memory(running.port) >= 15 << 20  # the share is full
            shed = []
            for kind in ("holders alone", "twenty stallers", "a dripper"):
                if kind == "twenty stallers":  # each would hold the place 1 s (helper-19: 29 s for 40)
                    shed += [holders.open(running.port, declared(2) + b"[") for _ in range(20)]
                elif kind == "a dripper":
                    shed.append(holders.open(running.port, declared(4000)))
                    holders.drip(shed[-1], b"[" * 4000, 0.3)
                time.sleep(0.2)
                started = time.time()
                with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
                    sock.sendall(head + image[:1000])  # in two reads at least, as over a network
                    time.sleep(0.1)
                    sock.sendall(image[1000:])
                    code, _ = status(sock)
                assert code == 200 and time.time() - started < 3, (kind, code, time.time() - started)
        finally:
            holders.close()


def test_a_body_that_goes_on_must_keep_arriving_or_give_its_place_up(models):
    """Under pressure, a body that sends 600 KB at once goes on (its bytes are here), then
    drips a byte every 0.3 s: it must bring 64 KB (or its rest) in each second of its turn or
    be shed (503), so a 1 MB body sent at 200 KB/s behind it goes on and is answered. Without
    that it held the place until its own deadline (helper-19: a 2 MB burst bought 32 s)."""
    import socket

    def declared(size: int) -> bytes:
        return f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()

    head, body = _large_npy_request(np.ones((4096, 8, 8, 1), np.float32))  # 1 MB
    with Server(["--model-config", str(models / "models.json"), *FLAGS, "--read-timeout", "20", "--queue-timeout", "12",
                 "--max-connections", "64"]) as running:
        holders = Holders()
        try:
            for _ in range(40):
                holders.open(running.port, declared(16 << 20))
            for sock in holders.sockets:
                sock.sendall(b"[" * (512 << 10))
            time.sleep(0.5)
            burst = holders.open(running.port, declared((600 << 10) + 100) + b"[" * (600 << 10))
            time.sleep(0.3)
            holders.drip(burst, b"[" * 100, 0.3)
            started = time.time()
            with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
                sock.sendall(head)
                for at in range(0, len(body), 16 << 10):  # about 200 KB/s
                    sock.sendall(body[at:at + (16 << 10)])
                    time.sleep(0.08)
                reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200") and time.time() - started < 10, (reply[:200], time.time() - started)
            burst.settimeout(5)
            reply = burst.recv(65536)
            assert reply.startswith(b"HTTP/1.1 503") and b"while other requests waited" in reply
        finally:
            holders.close()


# --- large .npy bodies: read straight into a buffer of their own ---------------------------------

def _replies(stream: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP reply in `stream`, in order."""
    replies = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        replies.append((int(lines[0].split()[1]), rest[:length]))
        stream = rest[length:]
    return replies


def _large_npy_request(rows: np.ndarray, content_type: str = "application/x-npy") -> tuple[bytes, bytes]:
    body = npy_bytes(rows)
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


CUTS = {
    "in one write with the next request": lambda head, body, after: [head + body + after],
    "head alone, then the body in seven pieces": lambda head, body, after: [head, *np.array_split(
        np.frombuffer(body, np.uint8), 7)[:-1], np.array_split(np.frombuffer(body, np.uint8), 7)[-1].tobytes() + after],
    "head and a few body bytes, then the rest with the next request": lambda head, body, after: [
        head + body[:100], body[100:] + after],
    "its last bytes ten at a time": lambda head, body, after: [head + body[:-50]] + [
        body[i:i + 10] for i in range(len(body) - 50, len(body), 10)] + [after],
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_large_npy_body_arrives_whole_however_it_is_cut_and_the_next_request_follows(server, cut):
    """A .npy predict body of 64 KB or more is read into its own buffer, outside the HTTP
    parser; the request after it on the connection must still be parsed from its first byte."""
    import socket

    rows = np.random.default_rng(7).random((300, 8, 8, 1), dtype=np.float32)  # 76.8 KB
    status, expected = Client(server.port).predict(PREDICT, {"instances": rows.tolist()})
    assert status == 200
    head, body = _large_npy_request(rows)
    small = json.dumps({"instances": rows[:2].tolist()}).encode()
    after = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(small)}\r\nConnection: close\r\n\r\n"
             ).encode() + small
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for piece in CUTS[cut](head, body, after):
            sock.sendall(bytes(piece))
            time.sleep(0.01)
        stream = b""
        while chunk := sock.recv(1 << 20):
            stream += chunk
    (first, answer), (second, rest) = _replies(stream)
    assert first == 200 and np.allclose(np.load(io.BytesIO(answer)), expected["predictions"], atol=1e-6)
    assert second == 200 and np.allclose(json.loads(rest)["predictions"], expected["predictions"][:2], atol=1e-6)


def test_a_client_that_leaves_half_way_through_a_large_body_holds_no_memory(server):
    import socket

    head, body = _large_npy_request(np.zeros((20000, 8, 8, 1), np.float32))  # 5 MB: a mapping of its own
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.05)
    assert wait_for(lambda: reserved_memory(server.port) == 0.0, 10), reserved_memory(server.port)
    alive(server)


@pytest.mark.parametrize("name, body, code, fragment", [
    ("an .npy whose header claims more rows than it holds",
     npy_header_only((400, 8, 8, 1), data=b"\0" * (300 * 256)), 400, "the .npy body"),
    ("an .npz archive sent as x-npy", npz_of(**{"pixels.npy": npy_bytes(np.zeros((300, 8, 8, 1), np.float32))}), 400,
     "sent as application/x-npy"),
    ("a Fortran-ordered array", npy_bytes(np.asfortranarray(np.zeros((300, 8, 8, 1), np.float32))), 200, ""),
    ("the wrong shape", npy_bytes(np.zeros((300, 8, 8, 2), np.float32)), 400, "does not fit"),
])
def test_large_npy_bodies_read_in_place_get_the_same_answers_as_small_ones(server, name, body, code, fragment):
    assert len(body) >= 64 << 10
    reply = raw_exchange(server.port, post(PREDICT, body, "application/x-npy"), timeout=20)
    assert status_of(reply) == code and fragment in error_of(reply), (name, reply[:300])
    alive(server)



@pytest.mark.parametrize("cut", ["two reads", "three reads", "behind another request"])
@pytest.mark.parametrize("kind", ["a large .npy", "JSON"])
def test_the_blank_line_ending_the_headers_may_come_apart_from_them(server, kind, cut):
    """The blank line that ends the headers split across reads, with more than the header
    limit of body behind it: a valid request, not 431."""
    import socket

    rows = np.zeros((300, 8, 8, 1), np.float32)
    if kind == "JSON":
        body, content_type = json.dumps({"instances": rows[:100].tolist()}).encode(), "application/json"
    else:
        body, content_type = npy_bytes(rows), "application/x-npy"
    request = post(PREDICT, body, content_type)
    end = request.index(b"\r\n\r\n")
    before = post(PREDICT, json.dumps({"instances": rows[:1].tolist()}).encode()).replace(b"Connection: close\r\n", b"")
    pieces = {"two reads": [request[:end + 2], request[end + 2:]],
              "three reads": [request[:end + 1], request[end + 1:end + 2], request[end + 2:]],
              "behind another request": [before + request[:end + 3], request[end + 3:]]}[cut]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)
        stream = b""
        while chunk := sock.recv(1 << 20):
            stream += chunk
    assert [status for status, _ in _replies(stream)] == [200] * (2 if cut == "behind another request" else 1)


BAD_NEXT = {  # a request that is refused, pipelined behind good ones: (bytes, status, words)
    "garbage": (b"\x00GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    "a bad chunk size": (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
                         400, "chunk size"),
    "a body over the limit": (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".encode(),
                              413, "this server accepts at most"),
    "headers over the limit": (f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 40000}\r\n\r\n".encode(), 431,
                               "exceed 16 KB"),
}


@pytest.mark.parametrize("bad", list(BAD_NEXT))
@pytest.mark.parametrize("good", ["a small .npy", "a large .npy", "two JSON requests"])
def test_a_refused_request_behind_good_ones_is_refused_after_their_answers(server, good, bad):
    """Whatever refuses it (its head, its framing, its size), a request pipelined in the same
    write behind good ones lets them be answered first, in order; then it gets its 4xx."""
    rows = np.zeros((300, 8, 8, 1), np.float32)
    if good == "two JSON requests":
        one = json.dumps({"instances": rows[:1].tolist()}).encode()
        data = post(PREDICT, one).replace(b"Connection: close\r\n", b"") * 2
    else:
        body = npy_bytes(rows[:1] if good == "a small .npy" else rows)
        data = post(PREDICT, body, "application/x-npy").replace(b"Connection: close\r\n", b"")
    refused, status, words = BAD_NEXT[bad]
    replies = _replies(raw_exchange(server.port, data + refused, timeout=10))
    assert [code for code, _ in replies] == [200] * (2 if good == "two JSON requests" else 1) + [status]
    assert words in json.loads(replies[-1][1])["error"]


def test_what_follows_a_request_that_closes_the_connection_is_dropped(server):
    data = post(PREDICT, npy_bytes(np.zeros((1, 8, 8, 1), np.float32)), "application/x-npy")  # Connection: close
    replies = _replies(raw_exchange(server.port, data + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10))
    assert [code for code, _ in replies] == [200]


def test_clients_declaring_large_bodies_take_no_more_than_the_bodies_share(server):
    """40 clients each declare a 16 MB .npy and send 1 MB: buffers are made for the bodies'
    share of the budget at most (the rest are read as they arrive), and everything is given
    back, to the system too, once they leave (a connection lives in reference cycles until
    the garbage collector's full pass: its bodies are dropped when it closes)."""
    import socket

    before = memory_mb(server.process.pid)
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {16 << 20}\r\n\r\n").encode() + npy_header_only((65535, 8, 8, 1))
    sockets = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setblocking(False)
        try:
            sock.send(head + bytes(1 << 20))
        except BlockingIOError:
            pass
        sockets.append(sock)
    time.sleep(1.0)
    during = memory_mb(server.process.pid)
    for sock in sockets:
        sock.close()
    assert wait_for(lambda: reserved_memory(server.port) == 0.0, 15)
    time.sleep(0.5)
    after = memory_mb(server.process.pid)
    assert during["size_mb"] - before["size_mb"] < 300, (before, during)  # 40 x 16 MB = 640 MB declared
    assert after["rss_mb"] - before["rss_mb"] < 40, (before, during, after)
    alive(server)
