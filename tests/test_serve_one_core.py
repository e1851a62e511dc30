"""edgekit serve on one core (taskset, a container's --cpus, a single-core board): binary
predicts are answered on the event loop, one inference per pass of the loop, instead of in a
worker thread that could not run beside it. A real server pinned with taskset, and LoopTurns
on a real event loop."""
from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from attacks import npy_bytes
from serving import Client, Server, reserved_memory, wait_for

from edgekit.serve.app import LoopTurns

PREDICT = "/v1/models/digits:predict"
pytestmark = pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")


def test_loop_turns_run_one_call_per_pass_in_order_skip_the_cancelled_and_carry_errors():
    async def main():
        loop = asyncio.get_running_loop()
        order: list = []

        def tick(left: int) -> None:  # a callback of every pass of the loop, as a read would be
            order.append("pass")
            if left:
                loop.call_soon(tick, left - 1)

        loop.call_soon(tick, 12)
        turns = LoopTurns()
        futures = [turns.take(order.append, n) for n in range(4)]
        futures[2].cancel()
        failing = turns.take(lambda: 1 / 0)
        results = await asyncio.gather(*futures, failing, return_exceptions=True)
        return order, results

    order, results = asyncio.run(main())
    calls = [entry for entry in order if entry != "pass"]
    assert calls == [0, 1, 3]
    positions = [order.index(n) for n in calls]
    assert all(later - earlier >= 2 for earlier, later in zip(positions, positions[1:]))  # a pass between
    assert isinstance(results[2], asyncio.CancelledError) and isinstance(results[4], ZeroDivisionError)


def test_usable_cores_follows_the_cpu_affinity():
    probe = "from edgekit.serve.server import usable_cores; print(usable_cores())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "1"


def test_a_body_that_can_hold_many_rows_is_not_run_on_the_event_loop(repo):
    """The event loop may be held for ONE_CORE_CALL_SECONDS at most, whatever the batch: a
    body's rows are counted at one byte per value before it is decoded."""
    from pathlib import Path

    from edgekit.serve.app import ONE_CORE_CALL_SECONDS, _seconds_at_most
    from edgekit.serve.repository import LoadedVersion

    version = LoadedVersion("digits", 1, Path(repo / "digits" / "1" / "model_int8.tflite"), 1, 1)
    version.warm_up()
    one_row = 64 * 4 + 128  # an .npy of one float32 8x8 image
    assert _seconds_at_most(version, one_row, "") <= ONE_CORE_CALL_SECONDS
    assert _seconds_at_most(version, 16 << 20, "") > ONE_CORE_CALL_SECONDS
    assert _seconds_at_most(version, 16 << 20, "") >= version.call_seconds * (16 << 20) // 64
    from edgekit.serve.app import RestApp
    from edgekit.serve.limits import Limits
    from edgekit.serve.service import Service

    on_one_core, on_several = RestApp(Service(None, Limits()), one_core=True), RestApp(Service(None, Limits()))
    assert on_one_core.takes_turns(version, one_row, "application/x-npy", "")
    assert not on_one_core.takes_turns(version, 16 << 20, "application/x-npy", "")
    # a compressed .npz says nothing of its rows by its size (128 images in 19 KB): never on the loop
    assert not on_one_core.takes_turns(version, one_row, "application/x-npz", "")
    assert not on_several.takes_turns(version, one_row, "application/x-npy", "")
    on_one_core.close()
    on_several.close()


@pytest.fixture(scope="module")
def pinned(repo):
    running = Server(["--model-config", str(repo / "models.json")], prefix=("taskset", "-c", "0"))
    yield running
    running.stop()


def test_on_one_core_concurrent_large_bodies_each_get_their_own_answer(pinned):
    with open(pinned.log.name) as log:
        start = next(json.loads(line) for line in log if '"event": "start"' in line)
    assert start["log"]["cores"] == 1
    client = Client(pinned.port)
    inputs, expected = [], []
    for slot in range(4):  # 300 rows (77 KB): past the quick path, answered on the loop in turns
        rows = np.random.default_rng(slot).random((300, 8, 8, 1), dtype=np.float32)
        status, reply = client.predict(PREDICT, {"instances": rows.tolist()})  # JSON: in a worker thread
        assert status == 200
        inputs.append(rows)
        expected.append(np.array(reply["predictions"]))
    wrong, health = [], []

    def send(slot: int) -> None:
        for _ in range(8):
            status, _, payload = client.request("POST", PREDICT, npy_bytes(inputs[slot]), "application/x-npy")
            if status != 200 or not np.allclose(np.load(io.BytesIO(payload)), expected[slot], atol=1e-6):
                wrong.append((slot, status))

    def check_health() -> None:
        for _ in range(5):
            started = time.perf_counter()
            health.append((client.request("GET", "/healthz")[0], time.perf_counter() - started))
            time.sleep(0.02)

    threads = [threading.Thread(target=send, args=(slot,)) for slot in range(4)] + [threading.Thread(target=check_health)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    assert all(status == 200 and seconds < 1.0 for status, seconds in health), health


def test_on_one_core_a_client_gone_before_its_turn_costs_nothing(pinned):
    body = npy_bytes(np.zeros((300, 8, 8, 1), np.float32))
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", pinned.port), timeout=10) as sock:
            sock.sendall(head + body)  # and leave without reading the reply

    assert wait_for(lambda: reserved_memory(pinned.port) == 0.0, 10)
    status, _, payload = Client(pinned.port).request("POST", PREDICT, body, "application/x-npy")
    assert status == 200 and np.load(io.BytesIO(payload)).shape == (300, 10)
    assert pinned.process.poll() is None
