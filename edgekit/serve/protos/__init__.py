"""TF Serving's gRPC messages and services (the subset edgekit serves), generated from the
.proto files here by scripts/generate_protos.sh. Same packages, names and field numbers
as TensorFlow's and TF Serving's protos, so their clients work; no TensorFlow needed."""
