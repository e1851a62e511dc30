#!/usr/bin/env bash
# What a Raspberry Pi user does, on this machine: build edgekit's wheel, install it with the
# runtime extra into a fresh virtual environment (no TensorFlow may come with it), serve a
# converted sample model from it, and get a REST and a gRPC answer. CI runs it (.ci/run).
#
#   scripts/check_wheel_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

.venv/bin/pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/edgekit-*.whl)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$wheel[runtime]"
if "$work/venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("tensorflow") is None)'; then
  echo "check_wheel_install: edgekit[runtime] pulled in TensorFlow" >&2; exit 1
fi
.venv/bin/edgekit convert sample_models/digits_cnn/saved_model -o "$work/models/digits/1" --variants int8 \
  --calibration sample_models/digits_cnn/calibration.npz --tfjs none > /dev/null 2>&1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
grpc_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$work/venv/bin/edgekit" serve "$work/models/digits" --port "$port" --grpc-port "$grpc_port" 2> "$work/serve.log" &
server=$!
for attempt in $(seq 300); do curl -sf "localhost:$port/readyz" > /dev/null && break; sleep 0.2; done
curl -sf -X POST "localhost:$port/v1/models/digits:predict" -d '{"instances": [[[[0.5]]]]}' > /dev/null && {
  echo "check_wheel_install: a 1x1 image must be refused" >&2; exit 1; } || true
answer=$(curl -sf -X POST "localhost:$port/v1/models/digits:predict" \
  -d "{\"instances\": $(python3 -c 'print([[[[0.0]] * 8] * 8])')}")
echo "REST: $answer"
"$work/venv/bin/python" - "$grpc_port" <<'PY'
import sys
import grpc
import numpy as np
from edgekit.serve.grpc import to_numpy, to_tensor
from edgekit.serve.protos import serving_pb2, serving_pb2_grpc

request = serving_pb2.PredictRequest()
request.model_spec.name = "digits"
request.inputs["pixels"].CopyFrom(to_tensor(np.zeros((2, 8, 8, 1), np.float32)))
stub = serving_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
probs = to_numpy(stub.Predict(request, timeout=30).outputs["probs"])
assert probs.shape == (2, 10), probs.shape
print("gRPC:", probs.argmax(1).tolist())
PY
echo "check_wheel_install: $(basename "$wheel") with [runtime] serves REST and gRPC, without TensorFlow"
