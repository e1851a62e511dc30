"""edgekit's TF.js artifacts in a real browser: stock TF.js in headless Chromium.

    python scripts/tfjs_in_browser.py [--json results/tfjs_browser.json] [--chromium chromium] [--runs 30]

1. Correctness: converts the sample digits CNN, runs `edgekit package --platform web`, and
   lets the page load the packaged model.json with tf.loadGraphModel and classify the first
   64 eval rows on the wasm backend; compared with the labels and with LiteRT float32.
2. Speed: MobileNetV2(weights=None, BatchNorm statistics from smooth synthetic images)
   as edgekit's uint8 artifact, median latency of one inference on the wasm backend, served
   twice: plainly, and with the COOP/COEP headers that make the page cross-origin isolated,
   the only way TF.js's wasm backend gets threads (the page then asks for one per core:
   TF.js's default is half the cores).

The site is served on loopback; each page posts its result back to the server.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"
BUNDLES = {"tf-core.min.js": "@tensorflow/tfjs-core", "tf-converter.min.js": "@tensorflow/tfjs-converter",
           "tf-backend-cpu.min.js": "@tensorflow/tfjs-backend-cpu", "tf-backend-wasm.min.js": "@tensorflow/tfjs-backend-wasm"}
HEAD = """<!doctype html><meta charset="utf-8">
<script src="/tf/tf-core.min.js"></script><script src="/tf/tf-converter.min.js"></script>
<script src="/tf/tf-backend-cpu.min.js"></script><script src="/tf/tf-backend-wasm.min.js"></script>
<script>
async function report(body) { await fetch('/result', {method: 'POST', body: JSON.stringify(body)}); }
async function start() {
  tf.wasm.setWasmPaths('/tf/');
  // TF.js's default pool is half the cores (1 on 2); threads need cross-origin isolation
  if (self.crossOriginIsolated) tf.wasm.setThreadsCount(navigator.hardwareConcurrency);
  await tf.setBackend('wasm');
}
</script>
"""
CORRECTNESS = HEAD + """<script>
(async () => {
  try {
    await start();
    const info = await (await fetch('/models/digits/model_info.json')).json();
    const rows = await (await fetch('/rows.json')).json();
    const model = await tf.loadGraphModel('/models/digits/' + info.model);
    const x = tf.tensor(rows.values, [rows.count, 8, 8, 1]);
    const probs = model.execute({[info.inputs[0].name]: x}, info.outputs[0].name);
    const predictions = Array.from(await tf.argMax(probs, 1).data());  // tf-core.min.js has no chained ops
    await report({backend: tf.getBackend(), tfjs: tf.version_core, variant: info.variant, predictions});
  } catch (error) { await report({error: String(error)}); }
})();
</script>"""
SPEED = HEAD + """<script>
(async () => {
  try {
    await start();
    const model = await tf.loadGraphModel('/mobilenet/model.json');
    const x = tf.randomUniform([1, 224, 224, 3], -1, 1);
    const name = Object.keys(model.signature.inputs)[0];
    const once = async () => { const y = model.execute({[name]: x}); await y.data(); y.dispose(); };
    let t = performance.now(); await once(); const cold = performance.now() - t;
    for (let i = 0; i < 5; i++) await once();
    const samples = [];
    for (let i = 0; i < RUNS; i++) { t = performance.now(); await once(); samples.push(performance.now() - t); }
    samples.sort((a, b) => a - b);
    await report({crossOriginIsolated: self.crossOriginIsolated, threads: tf.wasm.getThreadsCount(),
                  multithread_support: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
                  hardware_concurrency: navigator.hardwareConcurrency,
                  cold_ms: cold, p50_ms: samples[Math.floor(samples.length / 2)], runs: samples.length});
  } catch (error) { await report({error: String(error)}); }
})();
</script>"""


class Site:
    """A static folder on loopback; a page's POST to /result ends the visit."""

    def __init__(self, folder: Path, isolated: bool):
        results: list[dict] = []
        done = threading.Event()

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm"}

            def end_headers(self) -> None:
                if isolated:  # cross-origin isolation: SharedArrayBuffer, so wasm threads
                    self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                    self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                super().end_headers()

            def do_POST(self) -> None:
                results.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()
                done.set()

            def log_message(self, *args) -> None:
                pass

        self.results, self.done = results, done
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def visit(self, page: str, chromium: str, profile: Path, timeout: float = 300) -> dict:
        self.done.clear()
        url = f"http://127.0.0.1:{self.server.server_address[1]}/{page}"
        browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                    f"--user-data-dir={profile}", url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not self.done.wait(timeout):
                raise SystemExit(f"{page}: no result from the browser in {timeout:.0f} s")
        finally:
            browser.kill()
            browser.wait()
        result = self.results[-1]
        if "error" in result:
            raise SystemExit(f"{page} failed in the browser: {result['error']}")
        return result

    def close(self) -> None:
        self.server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/tfjs_browser.json"))
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from mobilenet import export_mobilenet_v2, smooth_images

    from edgekit import convert, package
    from edgekit.engines.tfjs import require_tfjs
    from edgekit.runtime import TFLiteModel

    modules = require_tfjs()
    work = Path(tempfile.mkdtemp(prefix="edgekit-browser-"))
    site = work / "site"
    (site / "tf").mkdir(parents=True)
    for bundle, npm in BUNDLES.items():
        shutil.copy(modules / npm / "dist" / bundle, site / "tf" / bundle)
    for wasm in (modules / "@tensorflow/tfjs-backend-wasm/dist").glob("*.wasm"):
        shutil.copy(wasm, site / "tf" / wasm.name)

    convert(DIGITS / "saved_model", work / "digits", variants=("float32",))
    packaged = package(work / "digits", "web", site / "models", name="digits")
    with np.load(DIGITS / "eval.npz") as archive:
        pixels, labels = archive["pixels"][:64], archive["y"][:64]
    (site / "rows.json").write_text(json.dumps({"count": len(pixels), "values": pixels.ravel().tolist()}))
    (site / "correctness.html").write_text(CORRECTNESS)

    mobilenet = export_mobilenet_v2(work / "mobilenet_v2", smooth_images(64))
    manifest = convert(mobilenet, work / "mobilenet_out", variants=("float32",), tfjs=("uint8",))
    shutil.copytree(work / "mobilenet_out" / "tfjs_uint8", site / "mobilenet")
    (site / "speed.html").write_text(SPEED.replace("RUNS", str(args.runs)))

    report = {"chromium": subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip()}
    plain, isolated = Site(site, isolated=False), Site(site, isolated=True)
    try:
        page = plain.visit("correctness.html", args.chromium, work / "profile")
        predictions = np.array(page.pop("predictions"))
        litert = TFLiteModel(work / "digits" / "model_float32.tflite").run({"pixels": pixels})["probs"].argmax(1)
        report["digits_packaged"] = {**page, "artifact": packaged.artifact, "rows": len(labels),
                                     "accuracy": float((predictions == labels).mean()),
                                     "agreement_with_litert_float32": float((predictions == litert).mean())}
        print(json.dumps(report["digits_packaged"]), flush=True)
        report["mobilenet_v2_uint8"] = {"bytes": manifest.artifact("tfjs_uint8").bytes}
        for name, server in (("wasm", plain), ("wasm_cross_origin_isolated", isolated)):
            report["mobilenet_v2_uint8"][name] = server.visit("speed.html", args.chromium, work / "profile")
            print(name, json.dumps(report["mobilenet_v2_uint8"][name]), flush=True)
    finally:
        plain.close()
        isolated.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
