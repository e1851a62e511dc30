"""A device's `edgekit serve --allow-bench`, as bench's way to measure artifacts there.

The workstation keeps the reference (the SavedModel) and the scoring; the device gets the
artifact and the rows, times it with its own runtime and cores, and sends back its figures
and its outputs, so an ARM kernel that computes differently shows up as lower agreement.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.parse
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput


class DeviceClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = 900.0):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise BadInput(f"--device {url!r} is not an http://HOST:PORT address", "e.g. --device http://raspberrypi:8501")
        self.url, self.host, self.port = url, parsed.hostname, parsed.port or 8501
        self.api_key, self.timeout = api_key, timeout
        self.label = f"{self.host}:{self.port}"

    def info(self) -> dict:
        return self._call("GET", "/v1/bench", None)

    def bench(self, artifact: Path, sha256: str, signature: str, inputs: dict[str, np.ndarray], threads: list[int],
              runs: int, warmup: int) -> tuple[dict, dict[str, np.ndarray]]:
        """The device's figures for `artifact`, and its outputs on `inputs`."""
        buffer = io.BytesIO()
        np.savez(buffer, __tflite__=np.frombuffer(Path(artifact).read_bytes(), np.uint8), **inputs)
        query = urllib.parse.urlencode({"sha256": sha256, "signature": signature, "runs": runs, "warmup": warmup,
                                        "threads": ",".join(map(str, threads))})
        result = self._call("POST", f"/v1/bench?{query}", buffer.getvalue())
        with np.load(io.BytesIO(base64.b64decode(result.pop("outputs_npz_b64"))), allow_pickle=False) as archive:
            outputs = {name: archive[name] for name in archive.files}
        return result, outputs

    def _call(self, method: str, path: str, body: bytes | None) -> dict:
        headers = {"Content-Type": "application/x-npz"} if body is not None else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as exc:
            raise BadInput(f"cannot reach the device at {self.url}: {exc}",
                           "start `edgekit serve --allow-bench --api-key-file KEY` there and check the address") from None
        try:
            document = json.loads(payload)
        except ValueError:
            document = {"error": payload[:200].decode(errors="replace")}
        if response.status != 200:
            message = document.get("error", "") if isinstance(document, dict) else ""
            hint = {401: "pass the device's key with --api-key-file",
                    404: "start the device's server with --allow-bench"}.get(response.status, "see the device's log")
            raise BadInput(f"the device at {self.url} answered {response.status}: {message}", hint)
        return document
