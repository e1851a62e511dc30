"""A packaged web model, loaded by stock TF.js in a real (headless) Chromium.

    python scripts/check_web_in_browser.py [--json results/web_browser.json] [--chromium chromium]

Converts the sample digits CNN, runs `edgekit package --platform web` into a static site,
serves it on loopback with the TF.js UMD bundles from node_modules, and lets Chromium
load model.json with tf.loadGraphModel, classify the first 64 eval rows on the wasm
backend, and write the predictions into the page. The script compares them with the
labels and with LiteRT's float32 artifact. No timings: Chromium runs the page on virtual
time (--virtual-time-budget) so that --dump-dom waits for it.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn"
BUNDLES = {"tf-core.min.js": "@tensorflow/tfjs-core", "tf-converter.min.js": "@tensorflow/tfjs-converter",
           "tf-backend-cpu.min.js": "@tensorflow/tfjs-backend-cpu", "tf-backend-wasm.min.js": "@tensorflow/tfjs-backend-wasm"}
PAGE = """<!doctype html><meta charset="utf-8"><title>edgekit web check</title>
<script src="tf/tf-core.min.js"></script><script src="tf/tf-converter.min.js"></script>
<script src="tf/tf-backend-cpu.min.js"></script><script src="tf/tf-backend-wasm.min.js"></script>
<pre id="result">running</pre>
<script>
(async () => {
  try {
    tf.wasm.setWasmPaths('tf/');
    await tf.setBackend('wasm');
    const info = await (await fetch('models/digits/model_info.json')).json();
    const rows = await (await fetch('rows.json')).json();
    const model = await tf.loadGraphModel('models/digits/' + info.model);
    const input = info.inputs[0], output = info.outputs[0];
    const x = tf.tensor(rows.values, [rows.count, 8, 8, 1]);
    const probs = model.execute({[input.name]: x}, output.name);  // a name, not a list: one tensor back
    const predictions = Array.from(await tf.argMax(probs, 1).data());  // tf-core.min.js has no chained ops
    document.getElementById('result').textContent = JSON.stringify({
      backend: tf.getBackend(), tfjs: tf.version_core, predictions, variant: info.variant,
      userAgent: navigator.userAgent});
  } catch (error) {
    document.getElementById('result').textContent = JSON.stringify({error: String(error)});
  }
})();
</script>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/web_browser.json"))
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    from edgekit import convert, package
    from edgekit.runtime import TFLiteModel
    from edgekit.runtime.tfjs import require_tfjs

    modules = require_tfjs()
    work = Path(tempfile.mkdtemp(prefix="edgekit-web-"))
    site = work / "site"
    convert(DIGITS / "saved_model", work / "out", variants=("float32",))
    result = package(work / "out", "web", site / "models", name="digits")
    (site / "tf").mkdir()
    for bundle, npm in BUNDLES.items():
        shutil.copy(modules / npm / "dist" / bundle, site / "tf" / bundle)
    for wasm in (modules / "@tensorflow/tfjs-backend-wasm/dist").glob("*.wasm"):
        shutil.copy(wasm, site / "tf" / wasm.name)
    with np.load(DIGITS / "eval.npz") as archive:
        pixels, labels = archive["pixels"][:64], archive["y"][:64]
    (site / "rows.json").write_text(json.dumps({"count": len(pixels), "values": pixels.ravel().tolist()}))
    (site / "index.html").write_text(PAGE)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm"}

        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    try:
        done = subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={work / 'profile'}", "--virtual-time-budget=20000",
                               "--dump-dom", url], capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    text = done.stdout.split('<pre id="result">', 1)[-1].split("</pre>", 1)[0]
    page = json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))
    if "error" in page:
        raise SystemExit(f"the page failed: {page['error']}")
    litert = TFLiteModel(work / "out" / "model_float32.tflite").run({"pixels": pixels})["probs"].argmax(1)
    predictions = np.array(page.pop("predictions"))
    report = {**page, "rows": len(labels), "packaged_artifact": result.artifact,
              "accuracy": float((predictions == labels).mean()),
              "agreement_with_litert_float32": float((predictions == litert).mean())}
    print(json.dumps(report, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
