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
TensorFlow does. Out: tensor_content, which tf.make_ndarray decodes.
"""
from __future__ import annotations

import hmac
import time
from concurrent import futures

import grpc
import numpy as np

from edgekit.errors import BadInput, EdgekitError, NotImplementedHere, Unauthorized
from edgekit.serve import codec
from edgekit.serve.metrics import ServerMetrics
from edgekit.serve.protos import serving_pb2, serving_pb2_grpc, tensorflow_pb2
from edgekit.serve.repository import LoadedVersion, ModelRepository

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
_GRPC_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
              501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
_STATE = {name: serving_pb2.ModelVersionStatus.State.Value(name)
          for name in ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")}


# --- TensorProto <-> numpy ----------------------------------------------------------------

def to_numpy(tensor: tensorflow_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in tensor.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise BadInput("a request tensor has an unknown dimension", "send concrete shapes")
    count = int(np.prod(shape))
    if tensor.dtype == tensorflow_pb2.DT_STRING:
        values = np.array(list(tensor.string_val), dtype=object)
        dtype = np.dtype(object)
    elif tensor.dtype not in NUMPY_OF:
        raise BadInput(f"tensor dtype {tensorflow_pb2.DataType.Name(tensor.dtype)} is not served",
                       "send DT_FLOAT, DT_INT32, DT_INT64, ... tensors")
    else:
        values, dtype = _values(tensor), np.dtype(NUMPY_OF[tensor.dtype])
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:  # TensorFlow broadcasts a single value over the shape
        return np.full(shape, values[0], dtype=dtype)
    raise BadInput(f"the tensor holds {values.size} values but its shape {shape} needs {count}",
                   "send one value per element (or a single value to fill the shape)")


def _values(tensor: tensorflow_pb2.TensorProto) -> np.ndarray:
    """A numeric tensor's values, flat, from tensor_content or its typed field."""
    dtype = np.dtype(NUMPY_OF[tensor.dtype])
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype.newbyteorder("<"))
    if tensor.dtype == tensorflow_pb2.DT_HALF:
        return np.array(tensor.half_val, dtype=np.uint16).view(np.float16)
    return np.array(getattr(tensor, _VALUE_FIELD[tensor.dtype]), dtype=dtype)


def to_tensor(array: np.ndarray) -> tensorflow_pb2.TensorProto:
    array = np.asarray(array)
    tensor = tensorflow_pb2.TensorProto()
    tensor.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    if array.dtype.kind in "SO":
        tensor.dtype = tensorflow_pb2.DT_STRING
        tensor.string_val.extend(bytes(v) for v in array.reshape(-1))
        return tensor
    tensor.dtype = DTYPE_OF[array.dtype]
    tensor.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor


def _tensor_info(spec: codec.ServingTensor, name: str) -> tensorflow_pb2.TensorInfo:
    info = tensorflow_pb2.TensorInfo(name=name, dtype=DTYPE_OF.get(spec.dtype, tensorflow_pb2.DT_STRING))
    info.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape)
    return info


# --- services -------------------------------------------------------------------------------

class _Front:
    """What both services share: the key check, model lookup, and error mapping."""

    def __init__(self, repository: ModelRepository, api_key: str | None, metrics: ServerMetrics):
        self.repository, self.api_key, self.metrics = repository, api_key, metrics

    def authorize(self, context: grpc.ServicerContext) -> None:
        if self.api_key is None:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else given
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise Unauthorized("missing or wrong API key", "send it as 'authorization' metadata: 'Bearer <key>'")

    def resolve(self, spec: serving_pb2.ModelSpec) -> LoadedVersion:
        version = spec.version.value if spec.HasField("version") else None
        return self.repository.resolve(spec.name, version, spec.version_label or None)

    def call(self, api: str, context: grpc.ServicerContext, work):
        started = time.perf_counter()
        model, version, code = "-", "-", grpc.StatusCode.OK
        try:
            self.authorize(context)
            model, version, reply = work()
            return reply
        except EdgekitError as exc:
            code = _GRPC_CODE.get(exc.http_status, grpc.StatusCode.INTERNAL)
            self.metrics.errors.inc(code.name)
            context.abort(code, exc.message)
        finally:
            self.metrics.requests.inc(model, version, api, code.name)
            if api == "grpc_predict" and code == grpc.StatusCode.OK:
                self.metrics.latency.observe(time.perf_counter() - started, model, version, api)


class PredictionService(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, front: _Front):
        self.front = front

    def Predict(self, request, context):
        def work():
            loaded = self.front.resolve(request.model_spec)
            signature = request.model_spec.signature_name or codec.DEFAULT_SIGNATURE
            inputs_spec, outputs_spec = loaded.specs(signature)
            names = {spec.name for spec in inputs_spec}
            if set(request.inputs) != names:
                missing, extra = sorted(names - set(request.inputs)), sorted(set(request.inputs) - names)
                raise BadInput("input names do not fit the signature ("
                               + "; ".join(p for p in (missing and f"missing {', '.join(missing)}",
                                                       extra and f"unknown {', '.join(extra)}") if p)
                               + "); the signature's inputs are: " + ", ".join(sorted(names)))
            inputs = {spec.name: codec.cast_input(to_numpy(request.inputs[spec.name]), spec, spec.name)
                      for spec in inputs_spec}
            wanted = list(request.output_filter) or [spec.name for spec in outputs_spec]
            unknown = sorted(set(wanted) - {spec.name for spec in outputs_spec})
            if unknown:
                raise BadInput(f"output_filter names unknown outputs: {', '.join(unknown)}")
            started = time.perf_counter()
            outputs = loaded.run(signature, inputs)
            self.front.metrics.inference.observe(time.perf_counter() - started, loaded.name, str(loaded.version))
            reply = serving_pb2.PredictResponse()
            reply.model_spec.name = loaded.name
            reply.model_spec.version.value = loaded.version
            reply.model_spec.signature_name = signature
            for name in wanted:
                reply.outputs[name].CopyFrom(to_tensor(outputs[name]))
            return loaded.name, str(loaded.version), reply

        return self.front.call("grpc_predict", context, work)

    def GetModelMetadata(self, request, context):
        def work():
            if list(request.metadata_field) != ["signature_def"]:
                raise BadInput("metadata_field must be exactly [\"signature_def\"]", "ask for signature_def")
            loaded = self.front.resolve(request.model_spec)
            signature_map = serving_pb2.SignatureDefMap()
            for signature, (ins, outs) in loaded.signatures.items():
                names = loaded.tensor_names[signature]
                definition = signature_map.signature_def[signature]
                definition.method_name = "tensorflow/serving/predict"
                for spec in ins:
                    definition.inputs[spec.name].CopyFrom(_tensor_info(spec, names.get(spec.name, spec.name)))
                for spec in outs:
                    definition.outputs[spec.name].CopyFrom(_tensor_info(spec, names.get(spec.name, spec.name)))
            reply = serving_pb2.GetModelMetadataResponse()
            reply.model_spec.name = loaded.name
            reply.model_spec.version.value = loaded.version
            reply.metadata["signature_def"].Pack(signature_map)
            return loaded.name, str(loaded.version), reply

        return self.front.call("grpc_metadata", context, work)

    def _unimplemented(self, name: str, context) -> None:
        def work():
            raise NotImplementedHere(f"edgekit serve does not implement {name}: it needs tf.Example parsing, "
                                     "which the TFLite runtime lacks; send the features as tensors to Predict")

        return self.front.call(f"grpc_{name.lower()}", context, work)

    def Classify(self, request, context):
        return self._unimplemented("Classify", context)

    def Regress(self, request, context):
        return self._unimplemented("Regress", context)

    def MultiInference(self, request, context):
        return self._unimplemented("MultiInference", context)


class ModelService(serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, front: _Front):
        self.front = front

    def GetModelStatus(self, request, context):
        def work():
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            reply = serving_pb2.GetModelStatusResponse()
            for entry in self.front.repository.status(spec.name, version, spec.version_label or None):
                status = reply.model_version_status.add(version=int(entry["version"]), state=_STATE[entry["state"]])
                status.status.error_code = 0 if entry["status"]["error_code"] == "OK" else 2  # UNKNOWN
                status.status.error_message = entry["status"]["error_message"]
            return spec.name, str(version or "latest"), reply

        return self.front.call("grpc_status", context, work)

    def HandleReloadConfigRequest(self, request, context):
        def work():
            raise NotImplementedHere("edgekit serve reloads by polling: change the model folders (or restart "
                                     "with a new --model-config) instead of HandleReloadConfigRequest")

        return self.front.call("grpc_reload", context, work)


def create_server(repository: ModelRepository, *, host: str, port: int, api_key: str | None,
                  max_message_bytes: int, metrics: ServerMetrics, workers: int = 8) -> tuple[grpc.Server, int]:
    """A started-later gRPC server on host:port (0 picks a free port); returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgekit-grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    front = _Front(repository, api_key, metrics)
    serving_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(front), server)
    serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(front), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise BadInput(f"cannot listen for gRPC on {host}:{port}", "choose another --grpc-port (0 turns gRPC off)")
    return server, bound
