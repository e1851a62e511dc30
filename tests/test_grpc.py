"""TF Serving's gRPC API on edgekit serve, driven by the official client: tensorflow-serving-api,
installed with --no-deps beside tensorflow-cpu as a user would bring it."""
from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import DIGITS, deploy_version
from serving import API_KEY, Server
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from edgekit.serve import wire


def stubs(running):
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def predict_request(name, inputs, version=None, label=None, signature="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value))
    return request


@pytest.fixture(scope="module")
def digits_rows():
    with np.load(DIGITS / "eval.npz") as archive:
        return archive["pixels"][:6]


def test_the_tutorial_predict_matches_rest(server, digits_rows):
    prediction, _ = stubs(server)
    response = prediction.Predict(predict_request("digits", {"pixels": digits_rows}), timeout=10.0)
    probs = tf.make_ndarray(response.outputs["probs"])
    _, reply = server.client.predict("/v1/models/digits:predict", {"instances": digits_rows.tolist()})
    assert probs.shape == (6, 10) and np.allclose(probs, reply["predictions"], atol=1e-6)
    assert (response.model_spec.name, response.model_spec.version.value) == ("digits", 1)


def test_typed_value_fields_and_a_broadcast_scalar(server):
    prediction, _ = stubs(server)
    sepal = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.1, 0.2, 1.0, -1.0],
                                   tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                       dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2),
                                            tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
    petal = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[0.5], tensor_shape=sepal.tensor_shape)
    response = prediction.Predict(predict_request("iris", {"sepal": sepal, "petal": petal}, label="stable"))
    _, reply = server.client.predict("/v1/models/iris/versions/1:predict",
                                     {"inputs": {"sepal": [[0.1, 0.2], [1.0, -1.0]], "petal": [[0.5, 0.5]] * 2}})
    assert np.allclose(tf.make_ndarray(response.outputs["probs"]), reply["outputs"]["probs"], atol=1e-6)
    assert sorted(response.outputs) == ["embedding", "probs"]
    filtered = predict_request("iris", {"sepal": sepal, "petal": petal}, version=1)
    filtered.output_filter.append("probs")
    assert sorted(prediction.Predict(filtered).outputs) == ["probs"]


def test_metadata_and_status_agree_with_rest(server):
    prediction, models = stubs(server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "iris"
    response = prediction.GetModelMetadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    grpc_signature = signature_map.signature_def["serving_default"]
    _, rest = server.client.json("GET", "/v1/models/iris/metadata")
    rest_signature = rest["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(grpc_signature.inputs) == sorted(rest_signature["inputs"])
    for name, info in grpc_signature.inputs.items():
        assert types_pb2.DataType.Name(info.dtype) == rest_signature["inputs"][name]["dtype"]
        assert [str(d.size) for d in info.tensor_shape.dim] == [
            d["size"] for d in rest_signature["inputs"][name]["tensor_shape"]["dim"]]
        assert info.name == rest_signature["inputs"][name]["name"]
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = models.GetModelStatus(status_request).model_version_status
    _, rest_status = server.client.json("GET", "/v1/models/digits")
    assert [(str(s.version), get_model_status_pb2.ModelVersionStatus.State.Name(s.state)) for s in status] == [
        (s["version"], s["state"]) for s in rest_status["model_version_status"]]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_errors_map_to_tf_serving_status_codes_and_the_server_keeps_serving(server, digits_rows):
    prediction, models = stubs(server)
    cases = [
        (predict_request("digits", {"image": digits_rows}), grpc.StatusCode.INVALID_ARGUMENT, "missing pixels"),
        (predict_request("digits", {"pixels": digits_rows[:, :4]}), grpc.StatusCode.INVALID_ARGUMENT, "does not fit"),
        (predict_request("nope", {"pixels": digits_rows}), grpc.StatusCode.NOT_FOUND, "nope"),
        (predict_request("digits", {"pixels": digits_rows}, version=9), grpc.StatusCode.NOT_FOUND, "9"),
        (predict_request("digits", {"pixels": digits_rows}, signature="x"), grpc.StatusCode.NOT_FOUND, "'x'"),
    ]
    for request, code, fragment in cases:
        got, details = _code(lambda: prediction.Predict(request))
        assert got == code and fragment in details
    got, details = _code(lambda: prediction.Classify(classification_pb2.ClassificationRequest()))
    assert got == grpc.StatusCode.UNIMPLEMENTED and "Classify" in details
    got, _ = _code(lambda: models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest()))
    assert got == grpc.StatusCode.UNIMPLEMENTED
    assert prediction.Predict(predict_request("digits", {"pixels": digits_rows})).outputs["probs"].dtype == 1


def test_a_large_tensor_is_read_in_place_and_answers_as_rest(server):
    """Contents of 64 KB or more are read where they lie in the message (wire.py), at whatever
    alignment the fields before them leave: the answers are REST's."""
    with np.load(DIGITS / "eval.npz") as archive:
        rows = np.tile(archive["pixels"], (2, 1, 1, 1))[:300]  # 300 x 256 bytes
    _, reply = server.client.predict("/v1/models/digits:predict", {"instances": rows.tolist()})
    prediction, _ = stubs(server)
    offsets = set()
    for signature in ("serving_default", ""):  # 17 bytes more or less before the content
        request = predict_request("digits", {"pixels": rows}, signature=signature)
        offsets.add(wire.split_request(request.SerializeToString())[1][b"pixels"][0] % 4)
        probs = tf.make_ndarray(prediction.Predict(request, timeout=10.0).outputs["probs"])
        assert probs.shape == (300, 10) and np.allclose(probs, reply["predictions"], atol=1e-6)
    assert len(offsets) == 2


def test_a_message_that_is_not_a_predict_request_is_invalid_argument(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    request = predict_request("digits", {"pixels": np.zeros((300, 8, 8, 1), np.float32)}).SerializeToString()
    for raw in (b"\xff\xff\xff", request[:-1000], request[:70]):  # garbage, and cut inside the content or before
        got, details = _code(lambda: predict(raw, timeout=10.0))
        assert got == grpc.StatusCode.INVALID_ARGUMENT and "not a tensorflow.serving.PredictRequest" in details
    channel.close()


def test_api_key_and_message_size_limit(repo, digits_rows):
    key_file = repo / "grpc-key.txt"
    key_file.write_text(API_KEY)
    with Server([str(repo / "digits"), "--api-key-file", str(key_file), "--max-body-mb", "0.01"],
                key=API_KEY) as running:
        prediction, _ = stubs(running)
        request = predict_request("digits", {"pixels": digits_rows[:1]})
        assert _code(lambda: prediction.Predict(request))[0] == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer not-the-key-0123456789"),)
        assert _code(lambda: prediction.Predict(request, metadata=wrong))[0] == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", f"Bearer {API_KEY}"),)
        assert prediction.Predict(request, metadata=good).outputs["probs"].tensor_shape.dim[0].size == 1
        big = predict_request("digits", {"pixels": np.zeros((100, 8, 8, 1), np.float32)})
        assert _code(lambda: prediction.Predict(big, metadata=good))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert prediction.Predict(request, metadata=good).outputs["probs"].tensor_shape.dim[1].size == 10


def test_hot_reload_under_grpc_load_loses_no_request(repo, tmp_path, digits_rows):
    base = tmp_path / "digits"
    shutil.copytree(repo / "digits" / "1", base / "1")
    codes: list = []
    stop = threading.Event()
    with Server([str(base)]) as running:
        prediction, models = stubs(running)
        request = predict_request("digits", {"pixels": digits_rows[:1]})

        def load():
            while not stop.is_set():
                try:
                    prediction.Predict(request, timeout=10)
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            deploy_version(base, 2, repo / "digits" / "1" / "model_float32.tflite", tmp_path / "staging")
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name = "digits"
            deadline = time.time() + 30
            while time.time() < deadline:
                versions = {s.version: s.state for s in models.GetModelStatus(status_request).model_version_status}
                if versions.get(2) == 30 and versions.get(1) == 50:  # AVAILABLE, END
                    break
                time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert versions == {2: 30, 1: 50}
    assert len(codes) > 20 and set(codes) == {"OK"}, json.dumps(sorted(set(codes)))


def test_edgekit_protos_live_beside_tensorflows_in_one_process():
    """Both register tensorflow.TensorProto & co.; edgekit's use a private pool, so a process
    with TensorFlow loaded (this one) can still use edgekit's stubs, and the bytes agree."""
    from edgekit.serve.grpc import to_numpy, to_tensor
    from edgekit.serve.protos import serving_pb2

    ours = serving_pb2.PredictRequest()
    ours.model_spec.name = "digits"
    ours.model_spec.version.value = 3
    ours.inputs["pixels"].CopyFrom(to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)))
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert (theirs.model_spec.name, theirs.model_spec.version.value) == ("digits", 3)
    assert tf.make_ndarray(theirs.inputs["pixels"]).tolist() == [[0, 1, 2], [3, 4, 5]]
    back = serving_pb2.PredictRequest.FromString(
        predict_request("digits", {"pixels": np.ones((1, 2), np.int64)}).SerializeToString())
    assert to_numpy(back.inputs["pixels"]).dtype == np.int64


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.float64), np.array([[1, -2]], np.int8),
    np.array([3, 4], np.uint8), np.array([5, 6], np.int32), np.array([2**40], np.int64), np.array([True, False]),
    np.array([1.5, -2.25], np.float16),
])
def test_tensors_from_tensorflow_decode_in_both_encodings(array):
    """tf.make_tensor_proto's tensor_content, and the typed value fields, give the same array."""
    from edgekit.serve.grpc import to_numpy, to_tensor
    from edgekit.serve.protos import tensorflow_pb2 as ours

    content = ours.TensorProto.FromString(tf.make_tensor_proto(array).SerializeToString())
    typed = ours.TensorProto.FromString(tf.make_tensor_proto(array.tolist(), dtype=tf.as_dtype(array.dtype),
                                                             shape=array.shape).SerializeToString())
    for tensor in (content, typed):
        decoded = to_numpy(tensor)
        assert decoded.dtype == array.dtype and np.array_equal(decoded, array)
    assert np.array_equal(tf.make_ndarray(tensor_pb2.TensorProto.FromString(to_tensor(array).SerializeToString())),
                          array)


def test_a_single_value_is_broadcast_and_a_wrong_count_is_refused():
    from edgekit.errors import BadInput
    from edgekit.serve.grpc import to_numpy
    from edgekit.serve.protos import tensorflow_pb2 as ours

    shape = ours.TensorShapeProto(dim=[ours.TensorShapeProto.Dim(size=2), ours.TensorShapeProto.Dim(size=2)])
    assert to_numpy(ours.TensorProto(dtype=ours.DT_FLOAT, tensor_shape=shape, float_val=[7])).tolist() == [[7, 7]] * 2
    with pytest.raises(BadInput, match="holds 3 values but its shape"):
        to_numpy(ours.TensorProto(dtype=ours.DT_FLOAT, tensor_shape=shape, float_val=[1, 2, 3]))
    with pytest.raises(BadInput, match="holds 0 values"):
        to_numpy(ours.TensorProto(dtype=ours.DT_STRING, tensor_shape=shape))
    assert to_numpy(ours.TensorProto(dtype=ours.DT_STRING, tensor_shape=shape, string_val=[b"a"])).tolist() == [
        [b"a", b"a"], [b"a", b"a"]]
