"""`edgekit bench --device` through an emulated Raspberry Pi: the mechanism end to end.

    python scripts/bench_on_emulated_pi.py [--pi-root ../shared/tools/pi-root] [--json results/bench_emulated_pi.json]

Builds edgekit's wheel, installs it with `[runtime]` in the emulated Raspberry Pi OS root
(Debian bookworm, arm64, under qemu-user; the tool of ../shared/tools/pi-root), starts
`edgekit serve --allow-bench` there on this machine's loopback, converts the sample
digits CNN here, and benches it against the "device". Emulated code runs 100-500x slower:
the timings mean nothing; what is checked is that every TFLite artifact was measured on an
aarch64 machine and that its outputs there agree with the SavedModel, and that a served predict
sent as a large JSON body and as .npy gives the same answer. Exits 0 with a note
when no pi-root tool is present (CI machines without it).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"


def served_json_matches_npy(port: int, key: str) -> None:
    """A served answer on aarch64: 300 digits rows as a JSON body over 64 KB (the server's one-tensor
    fast path) and as an .npy over 64 KB (read straight into its own buffer) give the same predictions."""
    import io

    import numpy as np

    with np.load(DIGITS / "eval.npz") as archive:
        rows = archive["pixels"][:300]
    answers = {}
    bodies = {"application/json": json.dumps({"instances": rows.tolist()}, indent=1).encode()}
    assert len(bodies["application/json"]) >= 64 * 1024
    buffer = io.BytesIO()
    np.save(buffer, rows)
    bodies["application/x-npy"] = buffer.getvalue()
    assert len(bodies["application/x-npy"]) >= 64 * 1024
    for content_type, body in bodies.items():
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/digits:predict", data=body, method="POST",
                                         headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            payload = reply.read()
        answers[content_type] = (np.array(json.loads(payload)["predictions"]) if content_type == "application/json"
                                 else np.load(io.BytesIO(payload)))
    np.testing.assert_allclose(answers["application/json"], answers["application/x-npy"], rtol=1e-6, atol=1e-7)
    print(f"served on aarch64: {len(rows)} rows as {len(bodies['application/json'])} bytes of JSON and as .npy agree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pi-root", type=Path, default=ROOT.parent / "shared" / "tools" / "pi-root")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "bench_emulated_pi.json")
    args = parser.parse_args()
    if not args.pi_root.is_file():
        print(f"skipped: no emulated Pi here ({args.pi_root} does not exist)")
        return
    python = str(ROOT / ".venv" / "bin" / "python")
    work = Path(tempfile.mkdtemp(prefix="edgekit-pi-bench-"))
    subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work), str(ROOT)],
                   check=True)
    wheel = next(work.glob("edgekit-*.whl"))
    pi = Path(subprocess.run([str(args.pi_root), "path"], capture_output=True, text=True, check=True).stdout.strip())
    (pi / "srv" / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(wheel, pi / "srv" / "bench" / wheel.name)
    key = secrets.token_urlsafe(24)
    (pi / "srv" / "bench" / "key.txt").write_text(key)
    (work / "key.txt").write_text(key)
    out = work / "digits"
    subprocess.run([str(ROOT / ".venv" / "bin" / "edgekit"), "convert", str(DIGITS / "saved_model"), "-o", str(out),
                    "--calibration", str(DIGITS / "calibration.npz"), "--tfjs", "none"], check=True,
                   capture_output=True)
    (pi / "srv" / "bench" / "models" / "digits").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(pi / "srv" / "bench" / "models" / "digits" / "1", ignore_errors=True)
    shutil.copytree(out, pi / "srv" / "bench" / "models" / "digits" / "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The root outlives a run: the same version number from an older tree must not be kept as
    # "already satisfied", so the wheel itself is always reinstalled.
    command = (f"python3 -m venv /opt/ek-bench && /opt/ek-bench/bin/pip install --quiet "
               f"'/srv/bench/{wheel.name}[runtime]' && /opt/ek-bench/bin/pip install --quiet --force-reinstall "
               f"--no-deps '/srv/bench/{wheel.name}' && exec /opt/ek-bench/bin/edgekit serve /srv/bench/models/digits "
               f"--port {port} --grpc-port 0 --allow-bench --api-key-file /srv/bench/key.txt --log-level warning")
    server = subprocess.Popen([str(args.pi_root), "run", command], stdout=subprocess.DEVNULL,
                              stderr=open(work / "pi.log", "w"))
    try:
        deadline = time.time() + 1800
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                raise SystemExit("the emulated server stopped:\n" + (work / "pi.log").read_text()[-2000:])
            if '"load_failed"' in (work / "pi.log").read_text():  # up, but it will never be ready
                raise SystemExit("the emulated server cannot load the model:\n" + (work / "pi.log").read_text()[-2000:])
            time.sleep(5)
        print(f"emulated Pi serving on 127.0.0.1:{port}", flush=True)
        report = work / "report.json"
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "edgekit"), "bench", str(out), "--data",
                               str(DIGITS / "eval.npz"), "--device", f"http://127.0.0.1:{port}", "--api-key-file",
                               str(work / "key.txt"), "--runs", "3", "--warmup", "1", "--threads", "1",
                               "--no-memory", "--json", str(report), "--tfjs-backends", "cpu"],
                              capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        print(done.stdout)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        document = json.loads(report.read_text())
        (label, device), = document["devices"].items()
        remote = [row for row in document["artifacts"] if row.get("machine") == label]
        assert device["machine"] == "aarch64", device
        assert len(remote) == 5 and all(row["status"] == "measured" for row in remote), remote
        agreement = {row["name"]: min(a["top1_agreement"] for a in row["agreement"].values()) for row in remote}
        assert min(agreement.values()) >= 0.98, agreement
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "agreement_with_savedmodel": agreement,
                                         "rows_scored_on_device": device["rows"],
                                         "note": "emulated under qemu-user: the timings mean nothing",
                                         "report": document}, indent=2) + "\n")
        print(f"aarch64 device rows: {agreement}; wrote {args.json}")
        served_json_matches_npy(port, key)
    finally:
        server.terminate()
        subprocess.run(["pkill", "-f", f"edgekit serve /srv/bench/models/digits --port {port}"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
