"""TF Serving's gRPC messages and services (the subset edgekit serves), generated from the
.proto files here by scripts/generate_protos.sh. Same packages, names and field numbers
as TensorFlow's and TF Serving's protos, so their clients work; no TensorFlow needed.

The messages live in a private descriptor pool, not protobuf's default one: TensorFlow
registers the same full names (tensorflow.TensorProto, ...) there, and one process may
load both (a notebook that imports tensorflow, then edgekit's gRPC stubs).
"""
from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _dependency in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_dependency.DESCRIPTOR.serialized_pb)
