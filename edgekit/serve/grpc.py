"""TF Serving's gRPC API: a second front door on the same model repository.

`tensorflow.serving.PredictionService` (Predict, GetModelMetadata; Classify, Regress
and MultiInference answer UNIMPLEMENTED) and `tensorflow.serving.ModelService`
(GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED), with the messages
declared in protos/ so a device needs no TensorFlow. Errors map to gRPC status codes as
TF Serving maps them: INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, RESOURCE_EXHAUSTED (past
the message size limit, enforced by gRPC), UNAUTHENTICATED (the API key, sent as
`authorization` metadata, "Bearer KEY" or the key alone).

TensorProto in: dtype, tensor_shape, and either tensor_content (what tf.make_tensor_proto
sends) or the typed value fields; one value is broadcast to the whole shape, as
TensorFlow does. A tensor_content of 64 KB or more is read where it lies in the message as
received, not copied (wire.py). The declared shape and dtype are checked against the
signature, and the memory they unfold to reserved, before a value is copied or broadcast.
Out: tensor_content, which tf.make_ndarray decodes.

This module maps the protocol only; service.py holds what both doors share.
"""
from __future__ import annotations

import errno
import math
import socket
import time
from concurrent import futures

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from edgekit.errors import BadInput, EdgekitError, NotFound, NotImplementedHere
from edgekit.serve import codec, malloc, wire
from edgekit.serve.protos import serving_pb2, serving_pb2_grpc, tensorflow_pb2
from edgekit.serve.repository import LoadedVersion
from edgekit.serve.service import Service, client_message

KEY_HINT = "send it as 'authorization' metadata: 'Bearer <key>'"

NUMPY_OF = {
    tensorflow_pb2.DT_FLOAT: np.float32, tensorflow_pb2.DT_DOUBLE: np.float64, tensorflow_pb2.DT_HALF: np.float16,
    tensorflow_pb2.DT_INT8: np.int8, tensorflow_pb2.DT_UINT8: np.uint8, tensorflow_pb2.DT_INT16: np.int16,
    tensorflow_pb2.DT_UINT16: np.uint16, tensorflow_pb2.DT_INT32: np.int32, tensorflow_pb2.DT_INT64: np.int64,
    tensorflow_pb2.DT_UINT32: np.uint32, tensorflow_pb2.DT_UINT64: np.uint64, tensorflow_pb2.DT_BOOL: np.bool_,
}
DTYPE_OF = {np.dtype(v): k for k, v in NUMPY_OF.items()}
# which typed field carries each dtype's values
_VALUE_FIELD = {
    tensorflow_pb2.DT_FLOAT: "float_val", tensorflow_pb2.DT_DOUBLE: "double_val", tensorflow_pb2.DT_HALF: "half_val",
    tensorflow_pb2.DT_INT8: "int_val", tensorflow_pb2.DT_UINT8: "int_val", tensorflow_pb2.DT_INT16: "int_val",
    tensorflow_pb2.DT_UINT16: "int_val", tensorflow_pb2.DT_INT32: "int_val", tensorflow_pb2.DT_INT64: "int64_val",
    tensorflow_pb2.DT_UINT32: "uint32_val", tensorflow_pb2.DT_UINT64: "uint64_val", tensorflow_pb2.DT_BOOL: "bool_val",
}
_FIELD_DTYPE = {"float_val": np.float32, "double_val": np.float64, "int_val": np.int32, "int64_val": np.int64,
                "uint32_val": np.uint32, "uint64_val": np.uint64, "bool_val": np.bool_}
_GRPC_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
              413: grpc.StatusCode.RESOURCE_EXHAUSTED, 431: grpc.StatusCode.RESOURCE_EXHAUSTED,
              501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
_STATE = {name: serving_pb2.ModelVersionStatus.State.Value(name)
          for name in ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")}


# --- TensorProto <-> numpy ----------------------------------------------------------------

def declared(tensor: tensorflow_pb2.TensorProto, where: str = "a tensor") -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a TensorProto claims, checked before any value is touched."""
    if tensor.dtype == tensorflow_pb2.DT_STRING:
        dtype = np.dtype(object)
    elif tensor.dtype in NUMPY_OF:
        dtype = np.dtype(NUMPY_OF[tensor.dtype])
    else:
        name = tensorflow_pb2.DataType.Name(tensor.dtype) if tensor.dtype in tensorflow_pb2.DataType.values() \
            else f"number {tensor.dtype}"
        raise BadInput(f"{where}: tensor dtype {name} is not served", "send DT_FLOAT, DT_INT32, DT_INT64, ... tensors")
    shape = tuple([d.size for d in tensor.tensor_shape.dim])
    if tensor.tensor_shape.unknown_rank or any(size < 0 for size in shape):
        raise BadInput(f"{where}: the tensor has an unknown rank or dimension", "send concrete shapes")
    return shape, dtype


def to_numpy(tensor: tensorflow_pb2.TensorProto, where: str = "a tensor") -> np.ndarray:
    """A TensorProto's values as an array of its declared shape. A single value is
    broadcast over the shape, as TensorFlow does; any other count must match the shape."""
    return _values(tensor, *declared(tensor, where), where)


def _values(tensor: tensorflow_pb2.TensorProto, shape: tuple[int, ...], dtype: np.dtype, where: str,
            content: memoryview | None = None) -> np.ndarray:
    """`content`: the tensor_content as it lies in the received message (wire.py), where it
    was split off; else it is read from the message (each read of a bytes field copies it)."""
    strings = tensor.dtype == tensorflow_pb2.DT_STRING
    if strings:
        content = b""
    elif content is None:
        content = tensor.tensor_content
    if strings:
        have = len(tensor.string_val)
    elif content:
        if len(content) % dtype.itemsize:
            raise BadInput(f"{where}: tensor_content holds {len(content)} bytes, not a whole number of "
                           f"{dtype} values", "send shape x itemsize bytes (what tf.make_tensor_proto writes)")
        have = len(content) // dtype.itemsize
    else:
        have = len(getattr(tensor, _VALUE_FIELD[tensor.dtype]))
    count = math.prod(shape)
    if have != count and not (have == 1 and count > 1):
        raise BadInput(f"{where}: the tensor holds {have} values but its shape {list(shape)} needs {count}",
                       "send one value per element (or a single value to fill the shape)")
    if strings:
        values = np.empty(have, dtype=object)
        values[:] = list(tensor.string_val)
    elif content:
        values = np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    elif tensor.dtype == tensorflow_pb2.DT_HALF:
        bits = np.array(tensor.half_val, dtype=np.int64)
        codec.check_range(bits, np.dtype(np.uint16), f"{where}: half_val (float16 bits)")
        values = bits.astype(np.uint16).view(np.float16)
    else:  # read each field in its own type, then check the values fit the declared one
        field = _VALUE_FIELD[tensor.dtype]
        values = np.array(getattr(tensor, field), dtype=_FIELD_DTYPE[field])
        codec.check_range(values, dtype, f"{where}: {tensorflow_pb2.DataType.Name(tensor.dtype)}")
        values = values.astype(dtype, copy=False)
    if have == count:
        return values.reshape(shape)
    return np.full(shape, values[0], dtype=dtype)


def _cast(values: np.ndarray, spec: codec.ServingTensor) -> np.ndarray:
    codec.check_range(values, spec.dtype, spec.name)
    return values.astype(spec.dtype, copy=False)


def to_tensor(array: np.ndarray) -> tensorflow_pb2.TensorProto:
    array = np.asarray(array)
    tensor = tensorflow_pb2.TensorProto()
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "SO":
        tensor.dtype = tensorflow_pb2.DT_STRING
        tensor.string_val.extend(bytes(v) for v in array.reshape(-1))
        return tensor
    tensor.dtype = DTYPE_OF[array.dtype]
    tensor.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor


def _tensor_info_proto(spec: codec.ServingTensor, name: str) -> tensorflow_pb2.TensorInfo:
    info = tensorflow_pb2.TensorInfo(name=name, dtype=DTYPE_OF.get(spec.dtype, tensorflow_pb2.DT_STRING))
    info.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape)
    return info


# --- services -------------------------------------------------------------------------------

class _Door:
    """The protocol mapping both gRPC services share: the key from metadata, a ModelSpec to a
    version, EdgekitError to a status code, and one metrics entry and log line per call."""

    def __init__(self, service: Service):
        self.service = service

    def resolve(self, spec: serving_pb2.ModelSpec) -> LoadedVersion:
        version = spec.version.value if spec.HasField("version") else None
        if version is not None and version < 0:
            raise NotFound(f"version {version} does not exist", "versions are positive numbers")
        return self.service.resolve(spec.name, version, spec.version_label or None)

    def call(self, api: str, context: grpc.ServicerContext, work):
        started = time.perf_counter()
        model, version, code, message = "-", "-", grpc.StatusCode.OK, ""
        try:
            if self.service.api_key is not None:
                metadata = dict(context.invocation_metadata())
                self.service.authorize(metadata.get("authorization"), KEY_HINT)
            model, version, reply = work()
            return reply
        except EdgekitError as exc:
            code, message = _GRPC_CODE.get(exc.http_status, grpc.StatusCode.INTERNAL), client_message(exc)
        except Exception as exc:  # a bug of ours: INTERNAL, keep serving, log the traceback
            self.service.internal_error("grpc", api, exc)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
        finally:
            self.service.record("grpc", api, model, version, code.name, time.perf_counter() - started,
                                peer=context.peer()[:64] if self.service.logs_requests else "")
        context.abort(code, message)


def read_predict(raw: bytes) -> tuple[serving_pb2.PredictRequest, dict[str, memoryview]]:
    """A PredictRequest from the bytes received, with its large tensor contents left where
    they lie in `raw` (wire.py): {input name: content}."""
    split = wire.split_request(raw)
    try:
        request = serving_pb2.PredictRequest.FromString(split[0] if split else raw)
    except DecodeError as exc:
        raise BadInput(f"the message is not a tensorflow.serving.PredictRequest: {exc}"[:300],
                       "send a serialized PredictRequest (TF Serving's predict.proto)") from None
    if not split:
        return request, {}
    view = memoryview(raw)
    return request, {name.decode(): view[at:at + size] for name, (at, size) in split[1].items()}


class PredictionService(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, door: _Door):
        self.door, self.service = door, door.service

    def Predict(self, raw: bytes, context):
        """`raw`: the message as received (registered without a deserializer: _add_prediction_service)."""
        def work():
            # gRPC read the message before this runs; it is counted from here on, with what
            # decoding it takes (waiting for room: a waiting call holds only its message)
            admission = self.service.admission()
            try:
                return self._predict(raw, admission)
            finally:
                trimmed = admission.close()
                if not trimmed and len(raw) >= malloc.TRIM_AFTER_BYTES:
                    malloc.trim()  # a large message refused before it held memory: give it back too

        return self.door.call("grpc_predict", context, work)

    def _predict(self, raw: bytes, admission) -> tuple[str, str, serving_pb2.PredictResponse]:
        request, contents = read_predict(raw)
        loaded = self.door.resolve(request.model_spec)
        signature = request.model_spec.signature_name or codec.DEFAULT_SIGNATURE
        served = loaded.specs(signature)
        given = request.inputs
        if len(given) != len(served.inputs) or any(t.name not in given for t in served.inputs):
            codec.check_names(set(given), served.inputs, "PredictRequest.inputs")
        wanted = served.output_names
        if request.output_filter:
            wanted = tuple(dict.fromkeys(request.output_filter))
            unknown = sorted(set(wanted) - set(served.output_names))
            if unknown:
                raise BadInput(f"output_filter names unknown outputs: {', '.join(unknown)[:200]}",
                               "the signature's outputs are: " + ", ".join(served.output_names))
        decoded_bytes, rows, values, tensors = 0, 1, 0, []
        for spec in served.inputs:  # every declared shape checked before any value is read
            tensor = request.inputs[spec.name]
            shape, dtype = declared(tensor, spec.name)
            decoded_bytes += codec.check_declared(spec, shape, dtype, spec.name)
            rows, values = max(rows, shape[0] if shape else 1), values + math.prod(shape)
            tensors.append((spec, tensor, shape, dtype))
        admission.need(self.service.tensor_cost(served, len(raw), decoded_bytes, rows, values), "this PredictRequest")
        with self.service.slot():
            inputs = {spec.name: _cast(_values(tensor, shape, dtype, spec.name, contents.get(spec.name)), spec)
                      for spec, tensor, shape, dtype in tensors}
            outputs = self.service.run(loaded, signature, inputs)
            reply = serving_pb2.PredictResponse()
            reply.model_spec.name = loaded.name
            reply.model_spec.version.value = loaded.version
            reply.model_spec.signature_name = signature
            for name in wanted:
                reply.outputs[name].CopyFrom(to_tensor(outputs[name]))
        return loaded.name, str(loaded.version), reply

    def GetModelMetadata(self, request, context):
        def work():
            if list(request.metadata_field) != ["signature_def"]:
                raise BadInput("metadata_field must be exactly [\"signature_def\"]", "ask for signature_def")
            loaded = self.door.resolve(request.model_spec)
            signature_map = serving_pb2.SignatureDefMap()
            for signature, served in loaded.signatures.items():
                names = served.tensor_names
                definition = signature_map.signature_def[signature]
                definition.method_name = "tensorflow/serving/predict"
                for spec in served.inputs:
                    definition.inputs[spec.name].CopyFrom(_tensor_info_proto(spec, names.get(spec.name, spec.name)))
                for spec in served.outputs:
                    definition.outputs[spec.name].CopyFrom(_tensor_info_proto(spec, names.get(spec.name, spec.name)))
            reply = serving_pb2.GetModelMetadataResponse()
            reply.model_spec.name = loaded.name
            reply.model_spec.version.value = loaded.version
            reply.metadata["signature_def"].Pack(signature_map)
            return loaded.name, str(loaded.version), reply

        return self.door.call("grpc_metadata", context, work)

    def _unimplemented(self, name: str, context) -> None:
        def work():
            raise NotImplementedHere(f"edgekit serve does not implement {name}: it needs tf.Example parsing, "
                                     "which the TFLite runtime lacks; send the features as tensors to Predict")

        return self.door.call(f"grpc_{name.lower()}", context, work)

    def Classify(self, request, context):
        return self._unimplemented("Classify", context)

    def Regress(self, request, context):
        return self._unimplemented("Regress", context)

    def MultiInference(self, request, context):
        return self._unimplemented("MultiInference", context)


class ModelService(serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, door: _Door):
        self.door = door

    def GetModelStatus(self, request, context):
        def work():
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            reply = serving_pb2.GetModelStatusResponse()
            for entry in self.door.service.status(spec.name, version, spec.version_label or None):
                status = reply.model_version_status.add(version=int(entry["version"]), state=_STATE[entry["state"]])
                status.status.error_code = 0 if entry["status"]["error_code"] == "OK" else 2  # UNKNOWN
                status.status.error_message = entry["status"]["error_message"]
            return spec.name, str(version or "latest"), reply

        return self.door.call("grpc_status", context, work)

    def HandleReloadConfigRequest(self, request, context):
        def work():
            raise NotImplementedHere("edgekit serve reloads by polling: change the model folders (or restart "
                                     "with a new --model-config) instead of HandleReloadConfigRequest")

        return self.door.call("grpc_reload", context, work)


def create_server(service: Service, *, host: str, port: int, workers: int = 2,
                  share_port: bool = False) -> tuple[grpc.Server, int]:
    """A started-later gRPC server on host:port (0 picks a free port), bound exclusively
    (no SO_REUSEPORT: a second server cannot silently share the port); returns it and its port.
    `share_port`: one of `serve --workers` processes, joining the port the parent reserved
    (workers.reserve_shared_port).

    Bounds: messages of --max-body-mb (RESOURCE_EXHAUSTED beyond, from gRPC itself);
    `workers` threads (one per interpreter), each holding at most one message while it waits
    for the memory budget; at most --max-connections calls in progress, more are refused
    with RESOURCE_EXHAUSTED; handshakes within --read-timeout."""
    limits = service.limits
    options = [("grpc.max_receive_message_length", limits.max_body_bytes),
               ("grpc.max_send_message_length", limits.max_body_bytes),
               ("grpc.so_reuseport", 1 if share_port else 0),
               ("grpc.server_handshake_timeout_ms", int(limits.read_timeout * 1000)),
               ("grpc.max_connection_idle_ms", 300_000),
               # no flow-control window growth (BDP probing): calls waiting for a worker hold
               # less of their message here (30 calls of 31 MB: 340-353 MB peak instead of 864)
               ("grpc.http2.bdp_probe", 0),
               # but a fixed 1 MB window instead of 64 KB, so that an image's message is not
               # sent in 64 KB steps (each window update costs the server CPU): 8-11% more 602 KB
               # requests a second, for 5-20 MB more peak in those 30 calls
               ("grpc.http2.lookahead_bytes", 1 << 20)]
    if not share_port:
        _refuse_if_taken(host, port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgekit-grpc"),
                         options=options, maximum_concurrent_rpcs=limits.max_connections)
    door = _Door(service)
    _add_prediction_service(PredictionService(door), server)
    serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(door), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise BadInput(f"cannot listen for gRPC on {host}:{port}: the port is in use (another edgekit serve?) "
                        "or the address is not this machine's",
                        "stop the other server, or choose another --grpc-port (0 turns gRPC off)")
    return server, bound


def _add_prediction_service(servicer: PredictionService, server: grpc.Server) -> None:
    """serving_pb2_grpc.add_PredictionServiceServicer_to_server, but Predict gets the bytes as
    received, to parse them itself (read_predict)."""
    pb = serving_pb2
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=ask,
                                                          response_serializer=reply.SerializeToString)
                for name, ask, reply in (
                    ("Predict", None, pb.PredictResponse),
                    ("GetModelMetadata", pb.GetModelMetadataRequest.FromString, pb.GetModelMetadataResponse),
                    ("Classify", pb.ClassificationRequest.FromString, pb.ClassificationResponse),
                    ("Regress", pb.RegressionRequest.FromString, pb.RegressionResponse),
                    ("MultiInference", pb.MultiInferenceRequest.FromString, pb.MultiInferenceResponse))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService",
                                                                          handlers),))
    server.add_registered_method_handlers("tensorflow.serving.PredictionService", handlers)


def _refuse_if_taken(host: str, port: int) -> None:
    """gRPC binds every address a name resolves to and starts if any one is free: with --host
    localhost and 127.0.0.1's port taken by another server, it served on ::1 alone (helper-8).
    So each address is tried here first (SO_REUSEADDR, as the REST port: a port only in
    TIME_WAIT after a restart is free), and one that is in use stops start-up."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gRPC's own bind names the problem
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BadInput(f"cannot listen for gRPC on {address[0]}:{port}: the port is in use "
                                   "(another edgekit serve?)",
                                   "stop the other server, or choose another --grpc-port (0 turns gRPC off)") from None
