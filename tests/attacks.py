"""Hostile and careless traffic for `edgekit serve`, as classes of cases: the attack tests
(tests/test_serve_attacks.py) and the measuring script (scripts/attack_serve.py) both send
these. Each builder returns bytes a client would send; nothing here knows the server's
internals, only TF Serving's API and the model's signature.
"""
from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zipfile

import numpy as np

# --- raw HTTP ----------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, wait_for_close: bool = True) -> bytes:
    """Send `data` on a fresh connection and read what comes back until the server closes
    it (or `timeout`, or, with wait_for_close False, one full reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused mid-send: read its answer
        return _read_reply(sock, timeout, wait_for_close)


def _read_reply(sock: socket.socket, timeout: float, wait_for_close: bool) -> bytes:
    received = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
        if not wait_for_close and _complete(received):
            break
    return received


def _complete(reply: bytes) -> bool:
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def status_of(reply: bytes) -> int | None:
    """The status code of the first reply in `reply` (None: no reply at all)."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


def error_of(reply: bytes) -> str:
    """The TF Serving error message of a reply, or '' when its body is not {"error": ...}."""
    body = reply.partition(b"\r\n\r\n")[2]
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return ""


def post(path: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> bytes:
    """An .npy that declares `shape` and holds only `data` (a lie about its size)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npz_bomb(name: str, row_shape: tuple[int, ...], total_bytes: int) -> bytes:
    """A small deflated .npz whose one member unpacks to `total_bytes` of zeros, streamed so
    the client never holds them either."""
    rows = total_bytes // (4 * int(np.prod(row_shape)))
    header = npy_header_only((rows, *row_shape))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = bytes(1 << 20)
            left = rows * 4 * int(np.prod(row_shape))
            while left > 0:
                member.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)
    return buffer.getvalue()


def npz_of(**members: bytes) -> bytes:
    """An .npz from raw member bytes (names as given)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- connections that misbehave ---------------------------------------------------------------


class Holders:
    """Sockets held open by a misbehaving client; closed together."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def open(self, port: int, first: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if first:
            sock.sendall(first)
        self.sockets.append(sock)
        return sock

    def drip(self, sock: socket.socket, data: bytes, every: float) -> None:
        """Send `data` one byte every `every` seconds, forever (until stop)."""
        def loop():
            position = 0
            while not self.stop.wait(every):
                try:
                    sock.sendall(data[position % len(data):position % len(data) + 1])
                except OSError:
                    return
                position += 1
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.threads.append(thread)

    def flood(self, sock: socket.socket, data: bytes) -> None:
        """Send `data` again and again as fast as the server reads it (until it closes)."""
        def loop():
            while not self.stop.is_set():
                try:
                    sock.sendall(data)
                except OSError:
                    return
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.threads.append(thread)

    def replies(self, timeout: float = 5.0) -> list[int | None]:
        """The status each held socket got, if the server answered and closed it."""
        out = []
        for sock in self.sockets:
            sock.settimeout(timeout)
            out.append(status_of(_read_reply(sock, timeout, wait_for_close=False)))
        return out

    def close(self) -> None:
        self.stop.set()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass
        for thread in self.threads:
            thread.join(timeout=5)


# --- JSON bodies that break parsers ---------------------------------------------------------

def nested_json(depth: int) -> bytes:
    return b'{"instances": ' + b"[" * depth + b"0" + b"]" * depth + b"}"


def long_number_json(digits: int) -> bytes:
    return b'{"instances": [' + b"9" * digits + b"]}"


def served_ok(port: int, path: str, body: bytes, content_type: str = "application/json",
              timeout: float = 10.0) -> tuple[int | None, float]:
    """A well-behaved client's predict on a fresh connection: its status and seconds."""
    started = time.perf_counter()
    reply = raw_exchange(port, post(path, body, content_type), timeout=timeout, wait_for_close=False)
    return status_of(reply), time.perf_counter() - started


# --- the models the attacks are aimed at -------------------------------------------------------

def attack_models(root, digits_out=None):
    """root/digits/1 (the digits CNN, int8: a convert OUT_DIR, given or converted here),
    root/half/1 (half_plus_two, float32, input [N]) and root/models.json naming both."""
    import shutil

    import tensorflow as tf

    from edgekit import convert

    digits = root / "digits" / "1"
    if digits_out is not None:
        shutil.copytree(digits_out, digits)
    else:
        from pathlib import Path

        samples = Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn"
        convert(samples / "saved_model", digits, calibration=samples / "calibration.npz", variants=("int8",),
                tfjs=())

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 0.5 + 2.0}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(root / "half_saved_model"), signatures={"serving_default": module.serve})
    convert(root / "half_saved_model", root / "half" / "1", variants=("float32",), tfjs=())
    (root / "models.json").write_text(json.dumps({"model_config_list": [
        {"name": "digits", "base_path": "digits"}, {"name": "half", "base_path": "half"}]}))
    return root
