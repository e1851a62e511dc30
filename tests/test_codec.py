"""The TF Serving body codec: every case of its contract, and each malformed body."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from edgekit.errors import BadInput
from edgekit.serve import codec
from edgekit.serve.codec import (
    NPY,
    NPZ,
    ServingTensor,
    decode_binary,
    _one_numeric_tensor,
    decode_json,
    decode_json_body,
    encode_binary,
    encode_json,
    parse_json,
)

PIXELS = [ServingTensor("pixels", np.dtype(np.float32), (-1, 2, 2))]
IRIS = [ServingTensor("petal", np.dtype(np.float32), (-1, 2)), ServingTensor("sepal", np.dtype(np.float32), (-1, 2))]
TEXT = [ServingTensor("text", np.dtype(object), (-1,))]


def test_row_format_one_input():
    request = decode_json({"instances": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}, PIXELS)
    assert request.style == "row" and request.signature_name == "serving_default"
    assert request.inputs["pixels"].dtype == np.float32 and request.inputs["pixels"].shape == (2, 2, 2)


def test_row_format_named_inputs():
    request = decode_json({"signature_name": "embed",
                           "instances": [{"petal": [1, 2], "sepal": [3, 4]}, {"petal": [5, 6], "sepal": [7, 8]}]}, IRIS)
    assert request.signature_name == "embed"
    assert request.inputs["sepal"].tolist() == [[3, 4], [7, 8]]


def test_columnar_format_one_input_and_named_inputs():
    assert decode_json({"inputs": [[[1, 2], [3, 4]]]}, PIXELS).inputs["pixels"].shape == (1, 2, 2)
    request = decode_json({"inputs": {"petal": [[1, 2]], "sepal": [[3, 4]]}}, IRIS)
    assert request.style == "columnar" and request.inputs["petal"].tolist() == [[1, 2]]


def test_b64_values_become_bytes():
    encoded = base64.b64encode(b"\x00\xffhello").decode()
    request = decode_json({"instances": [{"b64": encoded}, {"b64": encoded}]}, TEXT)
    assert request.inputs["text"].tolist() == [b"\x00\xffhello"] * 2


@pytest.mark.parametrize("document, fragment", [
    ({}, "exactly one of"),
    ({"instances": [], "inputs": []}, "exactly one of"),
    ({"instances": []}, "non-empty list"),
    ({"instances": [[[1, 2], [3]]]}, "ragged"),
    ({"instances": [[["a", "b"], ["c", "d"]]]}, "expected numbers"),
    ({"instances": [[1, 2, 3]]}, "shape (1, 3) does not fit"),
    ({"instances": [[[True, False], [True, True]]]}, None),
    ({"signature_name": 3, "instances": [[[1, 2], [3, 4]]]}, "signature_name"),
])
def test_malformed_one_input_bodies(document, fragment):
    if fragment is None:  # bools are numbers for a float input, as in TF Serving
        assert decode_json(document, PIXELS).inputs["pixels"].dtype == np.float32
        return
    with pytest.raises(BadInput, match=re_escape(fragment)):
        decode_json(document, PIXELS)


def re_escape(text):
    import re

    return re.escape(text)


@pytest.mark.parametrize("document, fragment", [
    ({"instances": [{"petal": [1, 2]}]}, "missing sepal"),
    ({"instances": [{"petal": [1, 2], "sepal": [1, 2], "x": 1}]}, "unknown x"),
    ({"instances": [[1, 2]]}, "must be an object keyed by input name"),
    ({"instances": [{"petal": [1, 2], "sepal": [1, 2]}, [1, 2]]}, "mixes named"),
    ({"inputs": [[1, 2]]}, "must be an object keyed by input name"),
    ({"inputs": {"petal": [[1, 2]]}}, "missing sepal"),
])
def test_malformed_named_input_bodies(document, fragment):
    with pytest.raises(BadInput, match=re_escape(fragment)):
        decode_json(document, IRIS)


def test_float_into_integer_input_is_refused():
    ids = [ServingTensor("ids", np.dtype(np.int32), (-1, 3))]
    assert decode_json({"instances": [[1, 2, 3]]}, ids).inputs["ids"].dtype == np.int32
    with pytest.raises(BadInput, match="float64 values cannot feed 'ids', which is int32"):
        decode_json({"instances": [[1.5, 2, 3]]}, ids)


def test_parse_json_reads_nan_and_infinity_as_tf_serving_writes_them():
    document = parse_json(b'{"instances": [NaN, Infinity, -Infinity, 1.5]}')
    values = document["instances"]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf and values[3] == 1.5


def test_parse_json_refuses_non_objects_and_garbage():
    with pytest.raises(BadInput, match="not valid JSON"):
        parse_json(b"{nope")
    with pytest.raises(BadInput, match="must be an object"):
        parse_json(b"[1, 2]")


def test_replies_are_shaped_as_tf_serving_shapes_them():
    one = {"probs": np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)}
    two = {"probs": np.array([[0.5, 0.5]], np.float32), "embedding": np.array([[1.0]], np.float32)}
    assert json.loads(encode_json(one, "row")) == {"predictions": [[0.25, 0.75], [1.0, 0.0]]}
    assert json.loads(encode_json(one, "columnar")) == {"outputs": [[0.25, 0.75], [1.0, 0.0]]}
    assert json.loads(encode_json(two, "row")) == {"predictions": [{"embedding": [1.0], "probs": [0.5, 0.5]}]}
    assert json.loads(encode_json(two, "columnar")) == {"outputs": {"embedding": [[1.0]], "probs": [[0.5, 0.5]]}}


def test_nan_and_infinity_are_written_as_tf_serving_writes_them():
    body = encode_json({"y": np.array([np.nan, np.inf, -np.inf], np.float32)}, "columnar")
    assert body == b'{"outputs":[NaN,Infinity,-Infinity]}'


@pytest.mark.parametrize("value", [np.float32(0.25), np.int64(3), np.float32(np.nan), np.bool_(True)])
def test_a_0_d_output_is_written_as_a_bare_value_as_tf_serving_writes_it(value):
    """Every path (orjson's for finite numbers, the standard one for NaN) writes a scalar output
    as a value, not a 1-element list (helper-10: `"mean_conf": [0.86]` in the columnar reply)."""
    reply = json.loads(encode_json({"mean": np.array(value), "rows": np.zeros((2, 3), np.float32)}, "columnar"))
    assert reply["outputs"]["rows"] == [[0.0] * 3] * 2
    assert not isinstance(reply["outputs"]["mean"], list)
    assert reply["outputs"]["mean"] == value.item() or np.isnan(value)


def test_bytes_outputs_go_out_as_b64_when_named_so():
    outputs = {"image_bytes": np.array([b"\x00\x01"], dtype=object), "label": np.array([b"cat"], dtype=object)}
    reply = json.loads(encode_json(outputs, "columnar"))
    assert reply["outputs"] == {"image_bytes": [{"b64": "AAE="}], "label": ["cat"]}


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_binary_bodies_in_and_out():
    request = decode_binary(_npy(np.zeros((3, 2, 2), np.float64)), NPY, PIXELS)
    assert request.style == "npy" and request.inputs["pixels"].dtype == np.float32
    buffer = io.BytesIO()
    np.savez(buffer, petal=np.ones((2, 2)), sepal=np.zeros((2, 2)))
    request = decode_binary(buffer.getvalue(), NPZ, IRIS)
    assert request.style == "npz" and request.inputs["petal"].shape == (2, 2)
    payload, media = encode_binary({"probs": np.ones((2, 3), np.float32)}, "npy")
    assert media == NPY and np.load(io.BytesIO(payload)).shape == (2, 3)
    payload, media = encode_binary({"a": np.ones(1), "b": np.zeros(1)}, "npz")
    assert media == NPZ and sorted(np.load(io.BytesIO(payload)).files) == ["a", "b"]


@pytest.mark.parametrize("array", [
    np.zeros((1, 1000), np.float32), np.arange(5, dtype=np.int64), np.array(3.5), np.ones((2, 3, 4), bool),
    np.zeros((0, 4), np.float16), np.ones((2, 3), ">f4"), np.arange(8, dtype=np.uint8)[::2],
    np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.zeros((1,) * 64, np.int8),
], ids=lambda array: f"{array.dtype}{list(array.shape)[:4]}")
def test_an_npy_reply_is_what_np_save_writes_and_reads_back_alike_twice(array):
    """Output headers are written once per dtype and shape, then reused."""
    first, _ = encode_binary({"y": array}, "npy")
    second, _ = encode_binary({"y": array}, "npy")
    expected = io.BytesIO()
    np.save(expected, np.ascontiguousarray(array) if array.ndim else array)
    assert first == second == expected.getvalue()
    back = np.load(io.BytesIO(first))
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_an_npy_body_may_be_a_memoryview_of_its_buffer():
    body = bytearray(_npy(np.arange(24, dtype=np.float32).reshape(2, 3, 4)))
    request = decode_binary(memoryview(body), NPY, [ServingTensor("pixels", np.dtype(np.float32), (-1, 3, 4))])
    assert request.inputs["pixels"].tolist() == np.arange(24, dtype=np.float32).reshape(2, 3, 4).tolist()
    with pytest.raises(BadInput, match="sent as application/x-npy"):
        decode_binary(memoryview(bytearray(b"PK" + bytes(200))), NPY, PIXELS)
    with pytest.raises(BadInput, match="not a .npy file"):
        decode_binary(memoryview(bytearray(b"\x93NUMPY\x01\x00\xff\xff" + bytes(100))), NPY, PIXELS)


def test_bad_binary_bodies():
    with pytest.raises(BadInput, match="not a .npy file"):
        decode_binary(b"hello", NPY, PIXELS)
    unclosed = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 8, 8, 1"  # numpy's tokenizer gives up
    unclosed += b" " * (63 - (len(unclosed) + 10) % 64) + b"\n"
    with pytest.raises(BadInput, match="not a .npy file"):
        decode_binary(b"\x93NUMPY\x01\x00" + len(unclosed).to_bytes(2, "little") + unclosed, NPY, PIXELS)
    signs = b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"-" * 4900 + b"1,), }"  # ast recurses
    signs += b" " * (63 - (len(signs) + 10) % 64) + b"\n"
    with pytest.raises(BadInput, match="not a .npy file"):
        decode_binary(b"\x93NUMPY\x01\x00" + len(signs).to_bytes(2, "little") + signs, NPY, PIXELS)
    with pytest.raises(BadInput, match="without pickle"):
        decode_binary(_npy(np.array([{"a": 1}], dtype=object)), NPY, PIXELS)
    with pytest.raises(BadInput, match="holds one array"):
        decode_binary(_npy(np.zeros((1, 2))), NPY, IRIS)
    with pytest.raises(BadInput, match="not a readable .npz"):
        decode_binary(b"PK-not-really", NPZ, IRIS)
    buffer = io.BytesIO()
    np.savez(buffer, petal=np.ones((2, 2)), sepal=np.zeros((3, 2)))
    with pytest.raises(BadInput, match="different batch sizes"):
        decode_binary(buffer.getvalue(), NPZ, IRIS)


def _decoded_or_error(decode, body, specs):
    try:
        request = decode(body, specs)
    except BadInput as exc:
        return ("error", str(exc))
    return (request.signature_name, request.style,
            {name: (array.dtype.str, array.shape, array.tobytes()) for name, array in request.inputs.items()})


def _general(body, specs):
    document = parse_json(body)
    return decode_json(document, specs)


def _whole(body, specs):
    return decode_json_body(body, lambda signature: specs)


IMAGE = [ServingTensor("image", np.dtype(np.float32), (-1, 4, 3, 2))]
IDS = [ServingTensor("ids", np.dtype(np.int32), (-1, 3))]
BODIES = [
    b'{"instances": [5]}', b'{"instances": []}', b'{"instances": [[]]}', b'{"inputs": [[1,2],[3,4]]}',
    b'{"instances": [[1,2],[3,4,5],[6]]}', b'{"instances": [[1,2],[3,4]], "x": [1]}', b'{"instances": [1e+5]}',
    b'{"instances": [[-1, 18446744073709551615, 3]]}', b'{"instances": [[99999999999999999999999, 1, 2]]}',
    b'{"instances": [1 2]}', b' {\n"instances" :\t[ [1.5 , 2] ,[3,4] ] }\r\n', b'{"instances": [[[1]],[[2]]]}',
    b'{"instances": [NaN]}', b'{"instances": [01]}', b'{"instances": [[1,2],[3,4]]', b'{"instances": [1,2]}}',
    b'{"instances": [[1,2,3]], "signature_name": "serving_default"}', b'{"instances": [[1, 2, 3.0]]}',
    b'{"inputs": [[1, 2, 2147483648]]}', b'{"instances": [["1", 2, 3]]}', b'{"instances": [[true, 2, 3]]}',
    b'{"instances": [[1,,3]]}', b'{"instances": [[1,2,3,]]}', b'{"instances": [[-, 2, 3]]}', b'{"instances": [[1e, 2, 3]]}',
    b'{"instances": [[.5, 2, 3]]}', b'{"instances": [[1., 2, 3]]}', b'{"instances": [[1, 2, 3]],}', b'{"Instances": [[1,2,3]]}',
    b'{"instances": [[1, 2, 3]]} x', b'{"instances": [[1, 2, 3]]}\x0b', b'{"instances":[[1,2,3]][[4,5,6]]}',
    *(b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}" for depth in (31, 32, 33, 64, 65, 2000)),
    *(b'{"instances": ' + b"[" * depth + b'"a"' + b"]" * depth + b"}" for depth in (64, 65, 600)),
]


@pytest.mark.parametrize("specs", [PIXELS, IDS, IMAGE, TEXT], ids=["float", "int32", "image", "text"])
def test_the_fast_json_path_answers_as_the_general_one_does(specs, monkeypatch):
    """Every body, valid or not, gets the same arrays or the same error either way: the
    listed edge cases, then 300 random corruptions of a valid body of the signature's shape."""
    monkeypatch.setattr(codec, "FAST_JSON_MIN_BYTES", 0)  # small bodies here, to try many
    monkeypatch.setattr(codec, "FAST_JSON_PIECE_BYTES", 3)  # numbers parsed a few at a time
    rng = np.random.default_rng(7)
    shape = tuple(2 if axis < 0 else axis for axis in specs[0].shape)
    values = rng.integers(-300, 300, shape) if specs[0].dtype.kind == "i" else rng.normal(size=shape).round(3)
    valid = json.dumps({"instances": values.tolist()}).encode()
    alphabet = list(b'[],. -+e0123456789"ax{}:\n')
    bodies = list(BODIES) + [valid]
    for _ in range(300):
        body = bytearray(valid)
        for _ in range(int(rng.integers(1, 4))):
            at, how = int(rng.integers(0, len(body))), rng.integers(0, 3)
            if how == 0:
                del body[at]
            elif how == 1:
                body.insert(at, int(rng.choice(alphabet)))
            else:
                body[at] = int(rng.choice(alphabet))
        bodies.append(bytes(body))
    for body in bodies:
        assert _decoded_or_error(_whole, body, specs) == _decoded_or_error(_general, body, specs), body
    taken = sum(_one_numeric_tensor(body) is not None for body in bodies)
    assert 20 < taken < len(bodies) - 100  # both paths are tried, on valid and on broken bodies


def test_an_image_body_takes_the_fast_path_and_keeps_every_value():
    image = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    body = json.dumps({"inputs": image.tolist()}, indent=1).encode()
    assert len(body) >= codec.FAST_JSON_MIN_BYTES
    key, array = _one_numeric_tensor(body)
    assert key == "inputs" and array.shape == image.shape
    specs = [ServingTensor("image", np.dtype(np.float32), (-1, 32, 32, 3))]
    request = decode_json_body(body, lambda signature: specs)
    assert request.style == "columnar" and np.array_equal(request.inputs["image"], image)


def _json_bodies_of_many_kinds():
    rng = np.random.default_rng(3)
    image = rng.random((1, 96, 96, 3))
    float_image = [ServingTensor("image", np.dtype(np.float32), (-1, 96, 96, 3))]
    rows = [ServingTensor("x", np.dtype(np.float32), (-1, 64))]
    flat = [ServingTensor("x", np.dtype(np.float32), (-1,))]
    ids = [ServingTensor("ids", np.dtype(np.int64), (-1,))]
    deep = [ServingTensor("x", np.dtype(np.float32), (-1, 2, 2, 2, 2, 2))]
    return [
        ("image, full floats", json.dumps({"instances": image.tolist()}), float_image),
        ("image, 3 decimals", json.dumps({"instances": image.round(3).tolist()}), float_image),
        ("image, 0-255", json.dumps({"instances": (image * 255).astype(int).tolist()}), float_image),
        ("image, pretty", json.dumps({"inputs": image.round(2).tolist()}, indent=1), float_image),
        ("rows", json.dumps({"instances": rng.random((800, 64)).tolist()}), rows),
        ("flat 300s", '{"instances": [' + ",".join(["300"] * 60_000) + "]}", flat),
        ("flat 0s", '{"instances": [' + ",".join(["0"] * 100_000) + "]}", flat),
        ("int64 ids", json.dumps({"instances": rng.integers(0, 10**12, 30_000).tolist()}), ids),
        ("deep lists", json.dumps({"instances": rng.random((2000, 2, 2, 2, 2, 2)).round(1).tolist()}), deep),
        ("zeros after two brackets", '{"instances": [[' + ",".join(["0"] * 60_000) + "]]}",
         [ServingTensor("x", np.dtype(np.float32), (-1, 60_000))]),
        # the fast path declines these: the general path's memory is taken then
        ("exponents with +", json.dumps({"instances": (image * 1e20).tolist()}).replace("e+", "E+"), float_image),
        ("ragged", json.dumps({"instances": [[1.5] * 64] * 400 + [[1.5] * 63]}), rows),
        ("40 lists per value", '{"instances": [' + ",".join(["[" * 39 + "0" + "]" * 39] * 1000) + "]}", flat),
        ("empty lists", '{"instances": [' + ",".join(["[]"] * 40_000) + "]}", rows),
        ("no comma for 400 KB", '{"instances": [[0' + " " * 400_000 + "]]}", rows),
    ]


GENERAL_PATH_BODIES = ("exponents with +", "ragged", "40 lists per value", "empty lists", "no comma for 400 KB")


@pytest.mark.parametrize("name, text, specs", _json_bodies_of_many_kinds(), ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "")
def test_a_json_body_parses_within_the_memory_the_server_reserves_for_it(name, text, specs):
    """The server admits a numbers-only JSON body at the fast path's cost, and takes the
    general path's only if the fast path declines the body: each within its reservation
    (tracemalloc sees orjson's and numpy's allocations), and the first far below the general."""
    import tracemalloc

    from edgekit.serve.service import json_parse_costs

    body = text.encode()
    assert len(body) >= codec.FAST_JSON_MIN_BYTES
    first, general, values = json_parse_costs(body)
    declined = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            decode_json_body(body, lambda signature: specs, before_general=lambda: declined.append(
                tracemalloc.get_traced_memory()[1] - base))
        except BadInput:
            assert name in GENERAL_PATH_BODIES
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert bool(declined) == (name in GENERAL_PATH_BODIES)
    if declined:
        assert declined[0] <= first and peak <= general, (declined[0] / len(body), peak / len(body))
    else:
        assert peak <= first, (peak / len(body), first / len(body))


def test_a_json_image_is_admitted_at_a_fraction_of_the_general_cost():
    from edgekit.serve.service import json_parse_costs

    image = np.random.default_rng(0).random((1, 224, 224, 3))
    for body, share in ((json.dumps({"instances": image.tolist()}), 0.25),
                        (json.dumps({"instances": image.round(3).tolist()}), 0.45)):
        first, general, values = json_parse_costs(body.encode())
        # 150,528 numbers and 50,401 lists in all, counted by commas and brackets
        assert first < share * general and values == 150_528 + 50_401 + 1


@pytest.mark.parametrize("document", [{"instances": [[]]}, {"inputs": [[], []]}, {"instances": [[], []]}])
def test_examples_with_no_values_are_named_as_empty_not_as_the_wrong_type(document):
    """JSON's [] reads as float64 in numpy: an empty token row was refused as "float64 values
    cannot feed 'ids'" (helper-11). It is empty, and the error says so."""
    ids = [ServingTensor("ids", np.dtype(np.int32), (-1, -1))]
    with pytest.raises(BadInput, match=r"'ids' holds no values \(shape \(\d, 0\)\)"):
        decode_json(document, ids)


@pytest.mark.parametrize("dtype, value", [(np.int64, 2**63), (np.int64, -(2**64)), (np.int32, 2**63)])
def test_whole_numbers_beyond_the_inputs_integer_range_are_named_as_out_of_range(dtype, value):
    """JSON parsing holds an integer past int64 as a float: helper-11's 2**63 token id was refused
    as "float64 values", where the problem is its range. 3.0 for an int input is still refused as a float."""
    ids = [ServingTensor("ids", np.dtype(dtype), (-1, 2))]
    info = np.iinfo(dtype)
    with pytest.raises(BadInput, match=rf"'ids' is {np.dtype(dtype).name}, from {info.min} to {info.max}"):
        decode_json(parse_json(f'{{"instances": [[{value}, 1]]}}'.encode()), ids)
    with pytest.raises(BadInput, match="float64 values cannot feed 'ids'"):
        decode_json({"instances": [[3.0, 1]]}, ids)
