"""wire.split_request: a PredictRequest with its large tensor contents left in place must mean
what protobuf reads from the whole message, for every message, hostile ones included."""
from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from edgekit.serve import wire
from edgekit.serve.grpc import read_predict, to_tensor
from edgekit.serve.protos import serving_pb2

LARGE = wire.SPLIT_MIN_BYTES


def parsed(raw: bytes) -> serving_pb2.PredictRequest | None:
    """What protobuf reads from the whole message (None: it refuses it)."""
    try:
        return serving_pb2.PredictRequest.FromString(raw)
    except DecodeError:
        return None


def rejoined(raw: bytes) -> serving_pb2.PredictRequest | None:
    """What the split reads: the rest parsed, each content put back from where it lay."""
    split = wire.split_request(raw)
    assert split is not None
    rest = parsed(split[0])
    if rest is not None:
        for name, (at, size) in split[1].items():
            rest.inputs[name.decode()].tensor_content = raw[at:at + size]
    return rest


def field(number: int, payload: bytes, tag_bytes: int = 0, length_bytes: int = 0) -> bytes:
    """A length-delimited field; its tag or length spelled in more bytes than needed if asked."""
    return (padded(number << 3 | 2, tag_bytes) + padded(len(payload), length_bytes) + payload)


def padded(value: int, size: int) -> bytes:
    """A varint in `size` bytes at least (protobuf takes up to 5 for a tag or a length)."""
    shortest = wire._varint(value)
    if size <= len(shortest):
        return shortest
    groups = [value >> (7 * i) & 0x7F for i in range(size)]
    return bytes(g | 0x80 for g in groups[:-1]) + bytes([groups[-1]])


def request(inputs: dict, **spec) -> serving_pb2.PredictRequest:
    message = serving_pb2.PredictRequest()
    message.model_spec.name = spec.get("name", "m")
    if "signature" in spec:
        message.model_spec.signature_name = spec["signature"]
    for name, array in inputs.items():
        message.inputs[name].CopyFrom(to_tensor(array))
    message.output_filter.extend(spec.get("filter", []))
    return message


def image(values: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(values).astype(dtype)


PLAIN = {
    "one float image": request({"x": image(LARGE)}),
    "int8 content at the threshold": request({"x": image(LARGE, np.int8)}),
    "a large and a small input, a filter": request({"big": image(LARGE), "small": image(3)}, filter=["y"]),
    "two large inputs, a signature": request({"a": image(LARGE), "b": image(LARGE // 2, np.float64)},
                                             signature="serving_default"),
    "a non-ASCII name": request({"bild_ü": image(LARGE)}),
}


@pytest.mark.parametrize("message", PLAIN.values(), ids=PLAIN.keys())
def test_plain_messages_split_and_mean_the_same(message):
    raw = message.SerializeToString()
    split, spans = wire.split_request(raw)
    assert len(split) < 200 and all(size >= LARGE for _, size in spans.values())
    assert rejoined(raw) == message
    request, contents = read_predict(raw)
    for name, content in contents.items():
        assert bytes(content) == message.inputs[name].tensor_content
        assert request.inputs[name].tensor_content == b""


def test_fields_in_any_order_and_unknown_fields_are_kept():
    content = image(LARGE).tobytes()
    tensor = (field(4, content) + bytes([0x08, 1])  # the content first, dtype after it
              + bytes([0xF8, 0x06, 7]) + field(2, field(2, b"\x08" + wire._varint(LARGE))))  # an unknown varint (111)
    entry = field(2, tensor) + field(1, b"x")  # the value before the key
    raw = bytes([0x48, 9]) + field(2, entry) + field(1, field(1, b"m")) + bytes([0x55, 1, 2, 3, 4])
    whole = parsed(raw)
    assert whole is not None and whole.inputs["x"].tensor_content == content
    assert rejoined(raw) == whole
    assert rejoined(raw).SerializeToString() == whole.SerializeToString()  # unknown fields too


NOT_PLAIN = {
    "no large content": request({"x": image(100)}).SerializeToString(),
    "a repeated key": (request({"x": image(LARGE)}).SerializeToString()
                       + request({"x": image(LARGE, seed=1)}).SerializeToString()),
    "two contents in one tensor": field(2, field(1, b"x") + field(2, field(4, b"a" * LARGE) + field(4, b"b" * LARGE))),
    "a content that is not bytes": field(2, field(1, b"x") + field(2, bytes([0x20, 1]))),
    "a map entry without a key": field(2, field(2, field(4, b"a" * LARGE))),
    "a map entry with another field": field(2, field(1, b"x") + field(2, field(4, b"a" * LARGE)) + bytes([0x18, 5])),
    "a group": bytes([0x0B, 0x0C]) + request({"x": image(LARGE)}).SerializeToString(),
    "inputs as a varint": bytes([0x10, 1]) + request({"x": image(LARGE)}).SerializeToString(),
    "a length past the end": request({"x": image(LARGE)}).SerializeToString()[:-1],
    "a varint that never ends": b"\x80" * 20,
    "field number 0": bytes([0x02, 0]) + request({"x": image(LARGE)}).SerializeToString(),
    "a content's tag in 6 bytes (protobuf refuses it)": field(2, field(1, b"x") + field(2, field(4, b"a" * LARGE, 6))),
    "an entry's length in 6 bytes": field(2, field(1, b"x") + field(2, field(4, b"a" * LARGE)), length_bytes=6),
    "a value's length in 2 bytes where 1 would do": field(2, field(1, b"x") + field(2, bytes([0x08, 1]), 0, 2)
                                                           + field(2, field(4, b"a" * LARGE))),
    "much else besides the content": field(2, field(1, b"x") + field(2, field(4, b"a" * LARGE) + field(99, b"b" * LARGE))),
    "thousands of fields before the content": bytes([0x48, 1]) * 5000 + request({"x": image(LARGE)}).SerializeToString(),
    "values as unpacked fields": field(2, field(1, b"x") + field(2, bytes([0x2D, 0, 0, 0, 0]) * 5000
                                                                   + field(4, b"a" * LARGE))),
}


@pytest.mark.parametrize("raw", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_anything_else_is_left_whole_to_protobuf(raw):
    assert wire.split_request(raw) is None


def test_mutated_messages_mean_the_same_split_or_whole():
    """Bytes flipped, cut, inserted near the fields (not in the content, which means nothing
    to either): where the split takes a message, protobuf reads the same from both, or
    refuses both."""
    base = request({"x": image(LARGE), "y": image(5)}, signature="s", filter=["p"]).SerializeToString()
    rng, taken = random.Random(7), 0
    for _ in range(3000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice([rng.randrange(0, 40), rng.randrange(len(raw) - 40, len(raw))])
            action = rng.random()
            if action < 0.6:
                raw[at] = rng.randrange(256)
            elif action < 0.8:
                del raw[at]
            else:
                raw.insert(at, rng.randrange(256))
        raw = bytes(raw[:rng.choice([len(raw), len(raw), rng.randrange(len(raw))])])
        if wire.split_request(raw) is None:
            continue
        taken += 1
        assert rejoined(raw) == parsed(raw)
    assert taken > 300


def random_message(rng: random.Random) -> bytes:
    """A message built field by field: inputs whose entries and tensors hold any mix of the
    fields they may hold (or should not), in any order, between unknown fields of every wire
    type; the shapes clients send among them."""
    def spelling() -> int:  # how many bytes a tag or length takes: mostly the fewest
        return rng.choice([2, 5, 6, 10]) if rng.random() < 0.01 else 0

    def spelled(number: int, payload: bytes) -> bytes:
        return field(number, payload, spelling(), spelling())

    def unknown() -> bytes:
        number = rng.choice([5, 9, 15, 111, 2047])
        kind = rng.choice([0, 1, 2, 5])
        tag = padded(number << 3 | kind, spelling())
        blob = b"abc" if rng.random() < 0.9 else b"b" * (LARGE + 1)
        return tag + {0: wire._varint(rng.randrange(1 << 40)), 1: bytes(8), 2: padded(len(blob), spelling()) + blob,
                      5: bytes(4)}[kind]

    def tensor() -> bytes:
        parts = [bytes([0x08, rng.choice([1, 3, 4, 7])]), spelled(2, spelled(2, b"\x08" + wire._varint(9)))]
        for _ in range(rng.choice([1, 1, 1, 2, 0])):
            parts.append(spelled(4, bytes([rng.randrange(256)]) * rng.choice([LARGE, LARGE + 3, 10])))
        parts += [unknown() for _ in range(rng.choice([0, 0, 1, 2]))]
        rng.shuffle(parts)
        return b"".join(parts)

    def entry() -> bytes:
        parts = [spelled(1, rng.choice([b"x", b"y", b"\xc3\xbc", b"\xff"])), spelled(2, tensor())]
        if rng.random() < 0.15:
            parts.append(rng.choice([unknown(), spelled(2, tensor()), spelled(1, b"z")]))
        if rng.random() < 0.1:
            parts.pop(rng.randrange(len(parts)))
        rng.shuffle(parts)
        return b"".join(parts)

    parts = [spelled(1, spelled(1, b"m")), spelled(3, b"probs")] + [spelled(2, entry()) for _ in range(rng.randint(1, 3))]
    parts += [unknown() for _ in range(rng.choice([0, 1, 2]))]
    rng.shuffle(parts)
    return b"".join(parts)


def test_random_messages_mean_the_same_split_or_whole():
    rng, taken, left = random.Random(11), 0, 0
    for _ in range(1500):
        raw = random_message(rng)
        if wire.split_request(raw) is None:
            left += 1
            continue
        taken += 1
        assert rejoined(raw) == parsed(raw)
    assert taken > 200 and left > 200
