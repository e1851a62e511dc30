"""`edgekit bench --device URL` against a real `edgekit serve --allow-bench` on loopback: the
device's rows beside the workstation's, and what the endpoint refuses."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from conftest import DIGITS
from serving import API_KEY, Client, Server

from edgekit import bench
from edgekit.errors import BadInput


@pytest.fixture(scope="module")
def device(tmp_path_factory, digits_out):
    root = tmp_path_factory.mktemp("device")
    shutil.copytree(digits_out, root / "digits" / "1")
    key = root / "key.txt"
    key.write_text(API_KEY)
    running = Server([str(root / "digits"), "--allow-bench", "--api-key-file", str(key), "--bench-max-mb", "1"],
                     key=API_KEY)
    yield running
    running.stop()


def upload(artifact_bytes: bytes, **inputs) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, __tflite__=np.frombuffer(artifact_bytes, np.uint8), **inputs)
    return buffer.getvalue()


def test_bench_measures_every_tflite_artifact_on_the_device_too(device, digits_out):
    report = bench(digits_out, eval_data=DIGITS / "eval.npz", runs=5, warmup=1, threads=(1,), memory=False,
                   devices=(f"http://127.0.0.1:{device.port}",), api_key=API_KEY, tfjs_backends=("cpu",))
    label = f"127.0.0.1:{device.port}"
    assert report.devices[label]["machine"] and report.devices[label]["cpus"] >= 1
    assert report.devices[label]["runtime"].startswith("ai-edge-litert")
    remote = [row for row in report.artifacts if row.machine == label]
    assert sorted(row.variant for row in remote) == ["dynamic", "float16", "float32", "int16x8", "int8"]
    names = [row.name for row in report.artifacts]
    assert names.index(f"tflite_int8@{label}") == names.index("tflite_int8") + 1  # side by side
    for row in remote:
        assert row.status == "measured" and row.latency_ms["1"].runs == 5 and row.memory["peak_rss_mb"] > 0
        assert row.top1_agreement >= 0.98 and "accuracy" in row.task_metrics
    float32 = next(row for row in remote if row.variant == "float32")
    assert float32.agreement["probs"]["rel_l2_error"] < 1e-5  # the same kernels as here: the same outputs
    from edgekit.benchmark.report import render_html, render_table

    assert f"@{label}:" in render_table(report) and f"@{label}" in render_html(report)
    assert json.loads(report.to_json())["devices"][label]["url"] == f"http://127.0.0.1:{device.port}"


def test_the_endpoint_refuses_what_it_should(device, digits_out):
    artifact = (digits_out / "model_float32.tflite").read_bytes()
    digest = hashlib.sha256(artifact).hexdigest()
    rows = {"pixels": np.zeros((2, 8, 8, 1), np.float32)}
    keyed = Client(device.port, API_KEY)

    def post(body, query, client=keyed):
        status, _, reply = client.request("POST", "/v1/bench?" + urllib.parse.urlencode(query), body,
                                          "application/x-npz")
        return status, json.loads(reply)

    assert post(upload(artifact, **rows), {"sha256": digest}, Client(device.port))[0] == 401  # no key
    status, reply = post(upload(artifact, **rows), {"sha256": "0" * 64})
    assert status == 400 and "does not match its sha256" in reply["error"]
    status, reply = post(upload(artifact, **rows), {})
    assert status == 400 and "needs its sha256" in reply["error"]
    status, reply = post(upload(artifact + b"\0" * 2_000_000), {"sha256": digest})
    assert status == 413 and "--bench-max-mb" in reply["error"]
    status, reply = post(upload(artifact, **rows), {"sha256": digest, "signature": "../../etc/passwd"})
    assert status == 400 and "signature" in reply["error"]
    status, reply = post(upload(b"\0" * 5000, **rows), {"sha256": hashlib.sha256(b"\0" * 5000).hexdigest()})
    assert status == 400 and "cannot run it" in reply["error"]
    status, reply = post(upload(artifact, **rows), {"sha256": digest, "threads": "1", "runs": "3"})
    assert status == 200 and reply["latency_ms"]["1"]["runs"] == 3
    status, _, reply = keyed.request("POST", "/v1/models/digits:bench?runs=2", b"")
    assert status == 200 and json.loads(reply)["rows"] == 1  # a served version, on zeros
    assert keyed.json("GET", "/v1/bench")[1]["device"]["cpus"] >= 1
    import tempfile
    from pathlib import Path

    assert not list(Path(tempfile.gettempdir()).glob("edgekit-bench-*"))  # every upload's folder removed


def test_the_endpoint_is_off_by_default_and_needs_a_key(digits_out, tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "1").symlink_to(digits_out)
    with Server([str(tmp_path / "digits")]) as running:
        status, _, reply = Client(running.port).request("GET", "/v1/bench")
        assert status == 404 and "--allow-bench" in json.loads(reply)["error"]
        with pytest.raises(BadInput, match="answered 404"):
            bench(digits_out, runs=2, warmup=0, memory=False, threads=(1,), artifact="int8",
                  devices=(f"127.0.0.1:{running.port}",))
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", str(tmp_path / "digits"), "--allow-bench"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--allow-bench needs --api-key-file" in result.stderr
