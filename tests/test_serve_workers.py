"""`edgekit serve --workers N`: several processes on one REST and one gRPC port, one set of
metrics, a crashed worker started again, one SIGTERM stopping them all."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import deploy_version
from serving import Server, free_port, wait_for

from edgekit.serve.protos import serving_pb2, serving_pb2_grpc

ROW = {"instances": [[[[0.25]] * 8] * 8]}


def _log(running: Server) -> str:
    running.log.flush()
    running.log.seek(0)
    return running.log.read()


def _events(running: Server, event: str) -> list[dict]:
    lines = [json.loads(line) for line in _log(running).splitlines() if line.startswith("{")]
    # "from": the worker that wrote the line (None: the parent)
    return [{**line["log"], "from": line.get("worker")} for line in lines if line["log"].get("event") == event]


def _metric(text: str, pattern: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


def _grpc_predict(port: int) -> serving_pb2.PredictResponse:
    request = serving_pb2.PredictRequest()
    request.model_spec.name = "digits"
    tensor = request.inputs["pixels"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1
    for size in (8, 8, 1):
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = np.full((1, 8, 8, 1), 0.25, np.float32).tobytes()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return serving_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)


@pytest.fixture(scope="module")
def workers(repo):
    running = Server([str(repo / "digits"), "--workers", "2"])
    assert wait_for(lambda: len(_events(running, "ready")) == 2)  # /readyz answered: one of them is
    yield running
    running.stop()


def test_both_workers_answer_on_one_port_and_metrics_add_up(workers):
    replies = [workers.client.predict("/v1/models/digits:predict", ROW)[0] for _ in range(60)]
    assert replies == [200] * 60  # each on a fresh connection
    answered = {line["from"] for line in _events(workers, "request")}
    assert answered == {0, 1}
    time.sleep(1.5)  # each worker writes its figures every second
    text = workers.client.request("GET", "/metrics")[2].decode()
    assert _metric(text, r'edgekit_requests_total\{model="digits",version="1",api="predict",code="200"\}') >= 60
    assert _metric(text, r"edgekit_workers ") == 2
    # a budget of request memory each, summed: 2 x 192 MB
    assert _metric(text, r"edgekit_request_memory_limit_bytes ") == 2 * 192 * (1 << 20)


def test_grpc_answers_on_the_shared_port(workers):
    for _ in range(10):
        response = _grpc_predict(workers.grpc_port)
        assert response.outputs["probs"].tensor_shape.dim[1].size == 10


def test_a_killed_worker_is_started_again_and_totals_never_go_down(workers):
    first = {line["worker"]: line["pid"] for line in _events(workers, "worker_started")}
    time.sleep(1.2)
    before = _metric(workers.client.request("GET", "/metrics")[2].decode(), r"edgekit_requests_total\{")
    os.kill(first[1], signal.SIGKILL)
    assert wait_for(lambda: len(_events(workers, "worker_started")) == 3)
    exits = _events(workers, "worker_exit")
    assert exits[0]["from"] is None and exits[0]["pid"] == first[1] and exits[0]["how"] == "signal SIGKILL"
    assert [r for r in (workers.client.predict("/v1/models/digits:predict", ROW)[0] for _ in range(30))] == [200] * 30

    def the_new_worker_answers():
        assert workers.client.predict("/v1/models/digits:predict", ROW)[0] == 200
        return any(line["from"] == 1 for line in _events(workers, "request")[-5:])

    assert wait_for(the_new_worker_answers)
    time.sleep(1.2)
    after = _metric(workers.client.request("GET", "/metrics")[2].decode(), r"edgekit_requests_total\{")
    assert after >= before + 30


def test_a_new_version_reaches_every_worker(repo, tmp_path):
    base = tmp_path / "digits"
    shutil.copytree(repo / "digits" / "1", base / "1")
    with Server([str(base), "--workers", "2"]) as running:
        # both serving version 1 first (a worker still starting would load version 2 alone)
        assert wait_for(lambda: len(_events(running, "ready")) == 2)
        deploy_version(base, 2, repo / "digits" / "1" / "model_float32.tflite", tmp_path / "staging")

        # version 1 unloaded once in each worker
        assert wait_for(lambda: len(_events(running, "unloaded")) == 2), _log(running)[-3000:]
        answers = [running.client.json("GET", "/v1/models/digits")[1]["model_version_status"][0]["version"]
                   for _ in range(12)]
        assert answers == ["2"] * 12


def test_sigterm_drains_every_worker_and_the_server_exits_0(repo):
    big_batch = json.dumps({"instances": [[[[0.5]] * 8] * 8] * 3000})
    replies = []
    with Server([str(repo / "digits"), "--workers", "2"]) as running:
        pids = [line["pid"] for line in _events(running, "worker_started")]
        senders = [threading.Thread(target=lambda: replies.append(
            running.client.request("POST", "/v1/models/digits:predict", big_batch, "application/json")[0]))
            for _ in range(4)]
        for sender in senders:
            sender.start()
        time.sleep(0.2)
        log = running.stop()
        for sender in senders:
            sender.join()
    assert replies == [200] * 4
    assert running.process.returncode == 0 and "Traceback" not in log
    assert [line["from"] for line in _events(running, "shutdown")] in ([0, 1, None], [1, 0, None])
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_taken_grpc_port_stops_start_up_with_its_name(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from click.testing import CliRunner

        from edgekit.cli import cli

        result = CliRunner().invoke(cli, ["serve", str(repo / "digits"), "--workers", "2", "--port", str(free_port()),
                                          "--grpc-port", str(port)])
    assert result.exit_code == 2 and f"gRPC port {port} on 127.0.0.1 is in use" in result.output
    result = CliRunner().invoke(cli, ["serve", str(repo / "digits"), "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output


SUPERVISED = """
import os, sys, time
from pathlib import Path
from edgekit.errors import EdgekitError
from edgekit.serve.server import configure_logging
from edgekit.serve.workers import supervise

marks, scenario = Path(sys.argv[1]), sys.argv[2]
def serve_worker(number, folder):
    if scenario == "independent":
        (folder / f"worker-{os.getpid()}.json").write_text("{}")  # what serving writes
        (marks / f"{number}-{os.getpid()}").touch()
        if number == 1:
            raise RuntimeError("worker 1 dies every time")  # started again after 0, 1, 2, 4 ... s
        if len([m for m in marks.iterdir() if m.name.startswith("0-")]) == 1:  # its first launch
            time.sleep(4.5)  # inside worker 1's third wait (4 s, from about 3.2 s)
            (marks / "died").write_text(str(time.time()))
            raise RuntimeError("worker 0 dies once, while worker 1 waits out a delay")
        raise EdgekitError("enough", "-")
    if number == 1:
        (marks / str(os.getpid())).touch()
        if scenario == "dies before serving":
            raise RuntimeError("an import that fails")
        launches = len(list(marks.iterdir()))
        if launches < 3:
            (folder / f"worker-{os.getpid()}.json").write_text("{}")  # what serving writes
        if launches == 1:
            raise RuntimeError("a crash the first time")   # started again at once
        if launches == 2:
            os.kill(os.getpid(), 9)                          # and again, after a short wait
        raise EdgekitError("cannot bind the widget", "free the widget")  # stops the server
    time.sleep(60)

configure_logging()
try:
    supervise(serve_worker, 2, 5.0, [])
except EdgekitError as exc:
    print("error:", exc.message, "/", exc.hint)
    sys.exit(exc.exit_code)
"""


def _supervise(tmp_path, scenario):
    started = time.time()
    result = subprocess_run_supervised(tmp_path, scenario)
    events = [json.loads(line)["log"] for line in result.stderr.splitlines() if line.startswith('{"time"')]
    assert time.time() - started < 30  # worker 0 was stopped, not waited for
    return result, events


def test_a_worker_that_dies_after_serving_is_restarted_and_one_that_cannot_start_stops_the_server(tmp_path):
    result, events = _supervise(tmp_path, "restarts")
    assert result.returncode == 1, result.stderr
    assert "error: cannot bind the widget / free the widget" in result.stdout
    assert [e["how"] for e in events if e["event"] == "worker_exit"] == ["exit status 1", "signal SIGKILL",
                                                                         "exit status 3"]
    assert [e["seconds"] for e in events if e["event"] == "worker_restart_delayed"] == [1.0]
    assert "RuntimeError: a crash the first time" in result.stderr
    assert len(list(tmp_path.iterdir())) == 3


def test_a_worker_that_dies_before_its_first_accept_stops_the_server(tmp_path):
    result, events = _supervise(tmp_path, "dies before serving")
    assert result.returncode == 1, result.stderr
    assert "error: worker 1 stopped (exit status 1) before it took a connection" in result.stdout
    assert "RuntimeError: an import that fails" in result.stderr and len(list(tmp_path.iterdir())) == 1


def test_metrics_folder_sums_counters_of_all_workers_and_gauges_of_live_ones(tmp_path):
    import subprocess
    import sys

    from edgekit.serve.prometheus import MetricsFolder, ServerMetrics

    def worker_file(pid: int, requests: int, connections: float, live: bool = True) -> None:
        other = ServerMetrics()
        other.requests.inc("digits", "1", "predict", "200", amount=requests)
        other.latency.observe(0.003, "digits", "1", "predict")
        (tmp_path / f"worker-{pid}.json").write_text(json.dumps({
            "pid": pid, "live": live, "metrics": other.state(),
            "gauges": {"edgekit_http_connections": ["Open REST connections.", connections]} if live else {}}))

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        worker_file(alive.pid, 1_000_000, 3)
        worker_file(dead.pid, 234_567, 7)  # killed: its file says live, its pid is gone
        (tmp_path / "worker-1.json").write_text('{"pid": 1, "metrics": {"requests": [[[')  # half-written
        mine = ServerMetrics()
        mine.requests.inc("digits", "1", "predict", "200")
        folder = MetricsFolder(tmp_path, mine, lambda: {"edgekit_http_connections": ("Open REST connections.", 2)})
        text = folder.render({"digits": [1]})
    finally:
        alive.kill()
    # every digit: 1,234,568 requests, not 1.23457e+06
    assert 'edgekit_requests_total{model="digits",version="1",api="predict",code="200"} 1234568' in text
    assert 'edgekit_request_duration_seconds_count{model="digits",version="1",api="predict"} 2' in text
    assert "edgekit_http_connections 5" in text.splitlines()  # 2 here + 3 in the live one; the dead one's 7 dropped
    assert "edgekit_workers 2" in text.splitlines()


def test_a_delayed_restart_does_not_hold_up_another_workers(tmp_path):
    from datetime import datetime

    result = subprocess_run_supervised(tmp_path, "independent")
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"time"')]

    def at(line):
        return datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    died = float((tmp_path / "died").read_text())
    again = [line for line in lines if line["log"]["event"] == "worker_started" and line["log"]["worker"] == 0][1]
    delays = [line["log"]["seconds"] for line in lines if line["log"]["event"] == "worker_restart_delayed"]
    assert delays[:3] == [1.0, 2.0, 4.0] and at(again) - died < 0.35, (delays, at(again) - died)


def subprocess_run_supervised(tmp_path, scenario):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", SUPERVISED, str(tmp_path), scenario], capture_output=True,
                          text=True, timeout=60)


def test_workers_of_a_killed_parent_stop_and_free_the_ports(repo):
    running = Server([str(repo / "digits"), "--workers", "2"])
    try:
        assert wait_for(lambda: len(_events(running, "ready")) == 2)
        pids = [line["pid"] for line in _events(running, "worker_started")]
        running.process.kill()

        def gone():
            for pid in pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                return False
            return True

        assert wait_for(gone, 15)
        with socket.socket() as sock:  # the REST port is free again
            sock.bind(("127.0.0.1", running.port))
    finally:
        running.stop()


def test_a_stopped_worker_is_killed_and_started_again(repo):
    with Server([str(repo / "digits"), "--workers", "2"]) as running:
        assert wait_for(lambda: len(_events(running, "ready")) == 2)
        stopped = _events(running, "worker_started")[1]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        assert wait_for(lambda: _events(running, "worker_unresponsive"), 20)
        assert _events(running, "worker_unresponsive")[0]["pid"] == stopped
        assert wait_for(lambda: len(_events(running, "ready")) == 3, 20)
        for _ in range(12):  # on fresh channels, some of which the kernel would have given the stopped one
            assert _grpc_predict(running.grpc_port).outputs["probs"].tensor_shape.dim[1].size == 10


def test_totals_never_go_down_between_scrapes_answered_by_different_workers(workers):
    import re as regex

    stop = threading.Event()

    def load():
        while not stop.is_set():
            workers.client.predict("/v1/models/digits:predict", ROW)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    totals = []
    try:
        for _ in range(60):
            text = workers.client.request("GET", "/metrics")[2].decode()
            totals.append(_metric(text, regex.escape('edgekit_requests_total{model="digits",version="1",'
                                                     'api="predict",code="200"}')))
            time.sleep(0.03)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(later >= earlier for earlier, later in zip(totals, totals[1:])), totals
    assert totals[-1] > totals[0]


def test_one_bench_at_a_time_on_the_device_whichever_worker_takes_it(repo, tmp_path):
    """--allow-bench with --workers: two benches at once get one answer and one 503, also when
    they reach different workers (a file lock across them)."""
    import hashlib
    import io

    from serving import API_KEY, Client

    key = tmp_path / "key.txt"
    key.write_text(API_KEY)
    artifact = (repo / "digits" / "1" / "model_int8.tflite").read_bytes()
    buffer = io.BytesIO()
    np.savez(buffer, __tflite__=np.frombuffer(artifact, np.uint8), pixels=np.zeros((4, 8, 8, 1), np.float32))
    body, digest = buffer.getvalue(), hashlib.sha256(artifact).hexdigest()
    with Server([str(repo / "digits"), "--workers", "2", "--allow-bench", "--api-key-file", str(key)],
                key=API_KEY) as running:
        assert wait_for(lambda: len(_events(running, "ready")) == 2)
        client = Client(running.port, API_KEY)
        for _ in range(8):  # until the two land on different workers
            statuses = []
            threads = [threading.Thread(target=lambda: statuses.append(client.request(
                "POST", f"/v1/bench?sha256={digest}&runs=200&threads=1", body, "application/octet-stream")[0]))
                for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(statuses) == [200, 503], statuses
            benches = [line for line in _events(running, "request") if line.get("path", "").startswith("/v1/bench")]
            if {line["from"] for line in benches[-2:]} == {0, 1}:
                break
        else:
            pytest.fail("the two benches never reached different workers")
