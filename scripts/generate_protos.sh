#!/usr/bin/env bash
# Regenerate edgekit/serve/protos/*_pb2.py from the .proto files beside them (grpcio-tools).
# The generated modules are committed: a device installs grpcio and protobuf, not the tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
"$python" -m grpc_tools.protoc -I. -I"$include" --python_out=. --grpc_python_out=. \
  edgekit/serve/protos/tensorflow.proto edgekit/serve/protos/error_codes.proto edgekit/serve/protos/serving.proto
rm -f edgekit/serve/protos/tensorflow_pb2_grpc.py edgekit/serve/protos/error_codes_pb2_grpc.py
# Register in edgekit's own descriptor pool (see protos/__init__.py), not the default one
# that TensorFlow fills with the same message names.
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/from edgekit.serve.protos import POOL as _POOL\nDESCRIPTOR = _POOL.AddSerializedFile(/' \
  edgekit/serve/protos/tensorflow_pb2.py edgekit/serve/protos/error_codes_pb2.py edgekit/serve/protos/serving_pb2.py
