"""Refresh edgekit/build/targets/tfjs_ops.json from the installed @tensorflow/tfjs-converter.

The TF.js writer checks ops against the installed package when Node packages are
present, and against this snapshot when they are not. Run after bumping TF.js in
package.json (then `npm ci`):  python scripts/update_tfjs_ops.py
"""
import json

from edgekit.build.targets.tfjs.graph import OPS_SNAPSHOT, supported_ops
from edgekit.engines.tfjs import node_modules

modules = node_modules()
if modules is None:
    raise SystemExit("the TF.js npm packages are not installed: run `npm ci` first")
ops, source = supported_ops(modules)
snapshot = {"version": source.split()[-1], "source": "@tensorflow/tfjs-converter dist/operations/op_list/*.js",
            "ops": sorted(ops)}
OPS_SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")
print(f"{OPS_SNAPSHOT}: {len(ops)} ops from {source}")
