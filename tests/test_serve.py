"""edgekit serve: a real server process on loopback and a real HTTP client (http.client)."""
from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DIGITS, deploy_version
from serving import API_KEY, Client, Server, free_port, wait_for

from edgekit.cli import cli
from edgekit.runtime import TFLiteModel


@pytest.fixture(scope="module")
def digits_eval():
    with np.load(DIGITS / "eval.npz") as archive:
        return archive["pixels"][:8], archive["y"][:8]


def still_serving(client: Client) -> None:
    status, reply = client.predict("/v1/models/iris:predict", {"instances": [{"sepal": [0, 0], "petal": [0, 0]}]})
    assert status == 200 and len(reply["predictions"]) == 1


def test_status_of_a_model_a_version_and_a_label(server):
    client = server.client
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.json("GET", "/v1/models/digits") == (200, expected)
    assert client.json("GET", "/v1/models/iris/versions/1") == (200, expected)
    assert client.json("GET", "/v1/models/iris/labels/stable") == (200, expected)


def test_metadata_lists_signature_inputs_and_outputs(server):
    status, reply = server.client.json("GET", "/v1/models/iris/metadata")
    assert status == 200
    assert reply["model_spec"] == {"name": "iris", "signature_name": "", "version": "1"}
    signature = reply["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["petal", "sepal"]
    assert sorted(signature["outputs"]) == ["embedding", "probs"]
    assert signature["inputs"]["sepal"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["sepal"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "2", "name": ""}]
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_row_format_predictions_match_the_interpreter(server, repo, digits_eval):
    pixels, labels = digits_eval
    status, reply = server.client.predict("/v1/models/digits:predict", {"instances": pixels.tolist()})
    assert status == 200
    expected = TFLiteModel(repo / "digits" / "1" / "model_int8.tflite").run({"pixels": pixels})["probs"]
    assert np.allclose(reply["predictions"], expected)
    assert (np.argmax(reply["predictions"], 1) == labels).mean() >= 0.85


def test_columnar_format_and_several_outputs(server):
    rows = {"sepal": [[0.1, 0.2], [1.0, -1.0]], "petal": [[0.3, 0.4], [1.5, 1.2]]}
    status, reply = server.client.predict("/v1/models/iris:predict", {"inputs": rows})
    assert status == 200 and sorted(reply["outputs"]) == ["embedding", "probs"]
    assert np.array(reply["outputs"]["probs"]).shape == (2, 3)
    status, reply = server.client.predict("/v1/models/iris/versions/1:predict", {
        "instances": [{"sepal": s, "petal": p} for s, p in zip(rows["sepal"], rows["petal"])]})
    assert status == 200 and sorted(reply["predictions"][0]) == ["embedding", "probs"]
    status, reply = server.client.predict("/v1/models/iris/labels/stable:predict",
                                          {"signature_name": "serving_default", "inputs": rows})
    assert status == 200 and np.array(reply["outputs"]["embedding"]).shape == (2, 8)


def test_binary_bodies(server, digits_eval):
    pixels, _ = digits_eval
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    status, content_type, payload = server.client.request("POST", "/v1/models/digits:predict", buffer.getvalue(),
                                                          "application/x-npy")
    assert status == 200 and content_type == "application/x-npy"
    probs = np.load(io.BytesIO(payload))
    _, reply = server.client.predict("/v1/models/digits:predict", {"instances": pixels.tolist()})
    assert np.allclose(probs, reply["predictions"])
    buffer = io.BytesIO()
    np.savez(buffer, sepal=np.zeros((3, 2), np.float32), petal=np.ones((3, 2), np.float32))
    status, content_type, payload = server.client.request("POST", "/v1/models/iris:predict", buffer.getvalue(),
                                                          "application/x-npz")
    assert status == 200 and content_type == "application/x-npz"
    assert sorted(np.load(io.BytesIO(payload)).files) == ["embedding", "probs"]


@pytest.mark.parametrize("path, body, code, fragment", [
    ("/v1/models/digits:predict", "{not json", 400, "not valid JSON"),
    ("/v1/models/digits:predict", {"instances": [[1, 2, 3]]}, 400, "does not fit 'pixels'"),
    ("/v1/models/digits:predict", {"instances": [[[["a"]] * 8] * 8]}, 400, "expected numbers"),
    ("/v1/models/iris:predict", {"instances": [{"sepal": [1, 2]}]}, 400, "missing petal"),
    ("/v1/models/iris:predict", {"inputs": {"sepal": [[1, 2]], "petal": [[1, 2]], "x": [[1]]}}, 400, "unknown x"),
    ("/v1/models/nope:predict", {"instances": [1]}, 404, "nope"),
    ("/v1/models/digits/versions/9:predict", {"instances": [1]}, 404, "Specific(digits, 9)"),
    ("/v1/models/iris/labels/canary:predict", {"instances": [1]}, 404, "canary"),
    ("/v1/models/iris:predict", {"signature_name": "nope", "instances": [1]}, 404, "no signature 'nope'"),
    ("/v1/models/digits:classify", {"examples": []}, 501, "does not implement :classify"),
    ("/v1/models/../etc/passwd:predict", {"instances": [1]}, 404, "Malformed request"),
])
def test_bad_requests_get_tf_serving_errors_and_the_server_keeps_serving(server, path, body, code, fragment):
    payload = body if isinstance(body, str) else json.dumps(body)
    status, content_type, reply = server.client.request("POST", path, payload, "application/json")
    assert status == code, reply
    assert content_type == "application/json"
    assert fragment in json.loads(reply)["error"]
    still_serving(server.client)


def test_health_readiness_and_metrics(server):
    client = server.client
    assert client.json("GET", "/healthz") == (200, {"status": "alive"})
    assert client.json("GET", "/readyz") == (200, {"ready": True, "models": {"digits": ["1"], "iris": ["1"]}})
    still_serving(client)
    status, content_type, text = client.request("GET", "/metrics")
    text = text.decode()
    assert status == 200 and content_type.startswith("text/plain")
    assert 'edgekit_requests_total{model="iris",version="1",api="predict",code="200"}' in text
    assert 'edgekit_request_duration_seconds_bucket{model="iris",version="1",api="predict",le="+Inf"}' in text
    assert 'edgekit_model_load_events_total{model="digits",version="1",event="loaded"} 1' in text
    assert 'edgekit_model_versions_served{model="digits"} 1' in text


def test_api_key_and_body_limit(repo):
    key_file = repo / "key.txt"
    key_file.write_text(API_KEY + "\n")
    with Server([str(repo / "digits"), "--api-key-file", str(key_file), "--max-body-mb", "0.01"],
                key=API_KEY) as running:
        client = running.client
        ok = {"instances": [[[[0.0]] * 8] * 8]}
        assert client.predict("/v1/models/digits:predict", ok)[0] == 200
        for headers in ({"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": ""}):
            status, _, reply = client.request("POST", "/v1/models/digits:predict", json.dumps(ok), "application/json",
                                              headers)
            assert status == 401 and "API key" in json.loads(reply)["error"]
        assert client.request("GET", "/v1/models/digits", headers={"X-API-Key": API_KEY})[0] == 200
        assert Client(running.port).request("GET", "/metrics")[0] == 401
        assert Client(running.port).request("GET", "/healthz")[0] == 200  # probes need no key
        big = json.dumps({"instances": [[[[0.5]] * 8] * 8] * 200})
        status, _, reply = client.request("POST", "/v1/models/digits:predict", big, "application/json")
        assert status == 413 and "at most 0.01 MB" in json.loads(reply)["error"]
        assert client.predict("/v1/models/digits:predict", ok)[0] == 200


def test_hot_reload_under_load_loses_no_request_and_a_corrupt_version_leaves_the_old_one(repo, tmp_path):
    base = tmp_path / "digits"
    shutil.copytree(repo / "digits" / "1", base / "1")
    results: list[int] = []
    stop = threading.Event()
    row = {"instances": [[[[0.25]] * 8] * 8]}
    with Server([str(base)]) as running:
        client = running.client

        def load():
            while not stop.is_set():
                results.append(client.predict("/v1/models/digits:predict", row)[0])

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            deploy_version(base, 2, repo / "digits" / "1" / "model_float32.tflite", tmp_path / "staging")
            assert wait_for(lambda: client.json("GET", "/v1/models/digits")[1]["model_version_status"][0]
                             == {"version": "2", "state": "AVAILABLE",
                                 "status": {"error_code": "OK", "error_message": ""}})
            assert client.json("GET", "/v1/models/digits/versions/1")[1]["model_version_status"][0]["state"] == "END"
            # version 3 is corrupt: it fails to load, version 2 keeps serving
            (base / "3").mkdir()
            (base / "3" / "model.tflite").write_bytes(b"\x00" * 100)
            assert wait_for(lambda: client.json("GET", "/v1/models/digits/versions/3")[0] == 200
                             and client.json("GET", "/v1/models/digits/versions/3")[1]["model_version_status"][0]
                             ["status"]["error_code"] != "OK")
            time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        status = client.json("GET", "/v1/models/digits")[1]["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "END"), ("2", "AVAILABLE"), ("1", "END")]
        assert "failed to load" in status[0]["status"]["error_message"]
        assert len(results) > 20 and set(results) == {200}, f"{len(results)} requests: {sorted(set(results))}"
        assert client.predict("/v1/models/digits:predict", row)[0] == 200
        log = running.stop()
    assert '"event": "load_failed"' in log and '"event": "unloaded"' in log


def test_sigterm_lets_the_request_in_flight_finish(repo):
    big_batch = json.dumps({"instances": [[[[0.5]] * 8] * 8] * 3000})  # a few hundred ms of work
    replies = []
    with Server([str(repo / "digits")]) as running:
        worker = threading.Thread(target=lambda: replies.append(
            running.client.request("POST", "/v1/models/digits:predict", big_batch, "application/json")))
        worker.start()
        time.sleep(0.1)
        log = running.stop()
        worker.join()
    status, _, payload = replies[0]
    assert status == 200 and len(json.loads(payload)["predictions"]) == 3000
    # the server drains in-flight requests, then exits 0 (the unit also accepts exit by SIGTERM)
    assert running.process.returncode in (0, -signal.SIGTERM)
    assert '"event": "shutdown"' in log


def test_requests_beyond_max_inflight_wait_their_turn_and_all_succeed(repo):
    batch = json.dumps({"instances": [[[[0.25]] * 8] * 8] * 500})
    replies = []
    with Server([str(repo / "digits"), "--max-inflight", "1"]) as running:
        workers = [threading.Thread(target=lambda: replies.append(
            running.client.request("POST", "/v1/models/digits:predict", batch, "application/json")))
            for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        log = running.stop()
    assert [status for status, _, _ in replies] == [200] * 6
    assert all(len(json.loads(payload)["predictions"]) == 500 for _, _, payload in replies)
    assert '"max_inflight": 1' in log
    result = CliRunner().invoke(cli, ["serve", str(repo / "digits"), "--max-inflight", "0"])
    assert result.exit_code == 2 and "--max-inflight must be positive" in result.output


def test_serving_imports_no_tensorflow(repo):
    """A server in a fresh process answers a REST and a gRPC predict; TensorFlow never
    enters sys.modules."""
    port, grpc_port = free_port(), free_port()
    script = textwrap.dedent(f"""
        import http.client, json, os, signal, sys, threading, time
        import grpc, numpy as np
        from pathlib import Path
        from edgekit.serve.grpc import to_tensor
        from edgekit.serve.limits import Limits
        from edgekit.serve.protos import serving_pb2, serving_pb2_grpc
        from edgekit.serve.repository import ModelConfig
        from edgekit.serve.server import run

        def client():
            for _ in range(300):
                time.sleep(0.05)
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", {port})
                    connection.request("GET", "/readyz")
                    if connection.getresponse().status == 200:
                        break
                except OSError:
                    pass
            connection = http.client.HTTPConnection("127.0.0.1", {port})
            connection.request("POST", "/v1/models/digits:predict", json.dumps({{"instances": [[[[0.0]] * 8] * 8]}}))
            assert connection.getresponse().status == 200
            request = serving_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.inputs["pixels"].CopyFrom(to_tensor(np.zeros((1, 8, 8, 1), np.float32)))
            stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("127.0.0.1:{grpc_port}"))
            assert stub.Predict(request, timeout=10).outputs["probs"].tensor_shape.dim[1].size == 10
            print("ANSWERED", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=client, daemon=True).start()
        run([ModelConfig("digits", Path({str(repo / 'digits')!r}))], Limits(), port={port}, grpc_port={grpc_port},
            poll_seconds=0.2, log_level="warning")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print("LOADED", loaded)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ANSWERED" in result.stdout and "LOADED []" in result.stdout


def test_every_log_line_is_json_and_both_doors_log_their_requests(repo):
    """LiteRT's own "INFO: Created TensorFlow Lite XNNPACK delegate" is captured at load and
    logged as a JSON event (at debug level), never printed raw."""
    import grpc

    from edgekit.serve.grpc import to_tensor
    from edgekit.serve.protos import serving_pb2, serving_pb2_grpc

    with Server([str(repo / "digits"), "--log-level", "debug"]) as running:
        assert running.client.predict("/v1/models/digits:predict", {"instances": [[[[0.0]] * 8] * 8]})[0] == 200
        request = serving_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["pixels"].CopyFrom(to_tensor(np.zeros((1, 8, 8, 1), np.float32)))
        stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}"))
        stub.Predict(request, timeout=10)
        log = running.stop()
    events = [json.loads(line)["log"] for line in log.splitlines() if line.strip()]
    doors = {event.get("door") for event in events if event["event"] == "request"}
    assert doors == {"rest", "grpc"}
    assert any(event["event"] == "runtime_output" and "XNNPACK" in event["text"] for event in events)


def test_a_numbers_only_json_body_is_admitted_at_the_fast_paths_cost_and_the_general_path_pays_the_rest(repo):
    """600 digits rows of full floats need about 11 MB on the fast path and 28 MB on the general
    one: under a 16 MB budget the body is answered, and the same numbers written with 'E+'
    exponents (which the fast path declines) get 413 naming the general path's estimate."""
    from edgekit.serve.service import json_parse_costs

    import re

    rows = np.random.default_rng(5).random((600, 8, 8, 1)) + 0.001
    body = json.dumps({"instances": rows.tolist()})
    exponents = re.sub(r"(\d)(?=[,\]])", r"\1E+0", body)  # 0.5488135039273248E+0: the same numbers
    assert np.array_equal(json.loads(exponents)["instances"], rows)
    first, general, _ = json_parse_costs(body.encode())
    assert first < 14 * (1 << 20) < 16 * (1 << 20) < general
    with Server([str(repo / "digits"), "--max-memory-mb", "16"]) as running:
        status, _, payload = running.client.request("POST", "/v1/models/digits:predict", body, "application/json")
        assert status == 200 and len(json.loads(payload)["predictions"]) == 600
        status, _, payload = running.client.request("POST", "/v1/models/digits:predict", exponents,
                                                    "application/json")
        assert status == 413 and "needs an estimated" in json.loads(payload)["error"]
        assert running.client.request("POST", "/v1/models/digits:predict", body, "application/json")[0] == 200


def test_many_large_json_requests_under_a_tight_budget_never_stand_still(repo):
    """16 keep-alive clients sending for 6 s, each body 2.8 MB of JSON that needs about 25 MB
    to decode, under a 56 MB budget: every request is answered within seconds (200, or 503
    with retry-after when the line is too long), none waits out the 30 s queue timeout. A
    REST worker thread used to wait for memory that the bodies queued behind it for a
    thread held, and the server stood still until the timeout."""
    import http.client

    rows = np.random.default_rng(9).random((2000, 8, 8, 1))
    body = json.dumps({"instances": rows.tolist()}).encode()
    answers: list[tuple[int, float]] = []

    with Server([str(repo / "digits"), "--interpreters", "1", "--max-memory-mb", "56"]) as running:
        def client():
            connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=60)
            deadline = time.time() + 6
            while time.time() < deadline:
                started = time.time()
                connection.request("POST", "/v1/models/digits:predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                answers.append((response.status, time.time() - started))
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=60)
            connection.close()

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 20, (len(answers), sorted(set(statuses)))
    assert max(seconds for _, seconds in answers) < 10


def test_a_model_that_cannot_run_zeros_warms_up_on_its_calibration_data_and_serves(tmp_path):
    """helper-11's case: softmax(logits / temperature), int8. LiteRT's int8 DIV refuses a divisor
    at its zero point, which is what 0.0 quantizes to, so a warm-up on zeros failed the load of an
    artifact convert had checked `ok`: the version never served. It warms up on the middle of what
    calibration saw now, and a request dividing by zero gets a 400 naming the op."""
    import tensorflow as tf

    from edgekit import convert

    class Tempered(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="logits"),
                                      tf.TensorSpec([None, 1], tf.float32, name="temperature")])
        def serve(self, logits, temperature):
            return {"probs": tf.nn.softmax(logits / temperature)}

    module = Tempered()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures=module.serve)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rows.npz", logits=rng.normal(size=(64, 4)).astype(np.float32),
             temperature=rng.uniform(0.5, 3.0, size=(64, 1)).astype(np.float32))
    manifest = convert(tmp_path / "saved_model", tmp_path / "out", variants=("int8",), tfjs=(),
                       calibration=tmp_path / "rows.npz")
    assert manifest.artifact("int8").status == "ok"
    shutil.copytree(tmp_path / "out", tmp_path / "models" / "tempered" / "1")
    with Server([str(tmp_path / "models" / "tempered")]) as running:
        status, body = running.client.predict("/v1/models/tempered:predict",
                                              {"instances": [{"logits": [1.0, 0.0, 0.0, 0.0], "temperature": [1.0]}]})
        assert status == 200 and np.argmax(body["predictions"][0]) == 0, body
        status, body = running.client.predict("/v1/models/tempered:predict",
                                              {"instances": [{"logits": [1.0, 0.0, 0.0, 0.0], "temperature": [0.0]}]})
        assert status == 400 and "(DIV) failed to invoke" in body["error"], body


def test_a_signature_the_savedmodel_has_but_the_artifact_lacks_is_named_with_the_way_to_get_it(tmp_path):
    import tensorflow as tf

    from edgekit import convert

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def embed(self, x):
            return {"e": tf.nn.relu(x)}

    module = Two()
    tf.saved_model.save(module, str(tmp_path / "saved_model"),
                        signatures={"serving_default": module.double, "embed": module.embed})
    convert(tmp_path / "saved_model", tmp_path / "models" / "two" / "1", variants=("float32",), tfjs=())
    with Server([str(tmp_path / "models" / "two")]) as running:
        status, body = running.client.predict("/v1/models/two:predict",
                                              {"signature_name": "embed", "instances": [[1.0, -1.0, 2.0]]})
        assert status == 404 and "has no signature 'embed'" in body["error"]
        assert "the SavedModel has 'embed'" in body["error"] and "convert with --signature embed" in body["error"]
        status, body = running.client.predict("/v1/models/two:predict",
                                              {"signature_name": "nope", "instances": [[1.0, -1.0, 2.0]]})
        assert status == 404 and "SavedModel" not in body["error"]
