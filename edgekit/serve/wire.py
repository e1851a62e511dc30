"""A PredictRequest's large tensor_content fields, used where they lie in the received bytes.

protobuf copies a bytes field when it parses the message, and again each time Python reads
it: two copies of a 602 KB image per gRPC call, each also evicting the model's weights from
the cache. `split_request` walks the message's wire format (tags and lengths only, a few
dozen fields) and returns the message without those fields, to be parsed as usual, plus where
each one lies in the bytes received, to be read in place (np.frombuffer).

The walk only takes a message of the shape clients send: each input named once, its map
entry holding only its name and its TensorProto, that holding one tensor_content; a few dozen
fields in all, little else besides the contents, tags and lengths in their shortest form.
Anything else (a malformed message, a repeated key, groups, values sent as thousands of
unpacked fields, which a walk in Python would take long over) returns None, and the whole
message is parsed as it came, with protobuf's own checks and errors. So the split never
changes what a message means, only where its bytes are read.
"""
from __future__ import annotations

# wire types
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# field numbers: PredictRequest.inputs, the map entry's key and value, TensorProto.tensor_content
_INPUTS, _KEY, _VALUE, _CONTENT = 2, 1, 2, 4
SPLIT_MIN_BYTES = 64 << 10  # smaller contents are parsed as usual: splitting them saves nothing
MAX_FIELDS = 256  # fields walked per message, all levels together, before leaving it to protobuf
MAX_REST_BYTES = 64 << 10  # what the split copies besides the contents (a client sends a few hundred)


def split_request(raw: bytes) -> tuple[bytes, dict[bytes, tuple[int, int]]] | None:
    """(the message without its large tensor_contents, {input name (UTF-8): (offset, length)
    of its content in `raw`}), or None where there is nothing to split or the message is not
    of the plain shape above."""
    if len(raw) < SPLIT_MIN_BYTES:
        return None  # no content to split: not worth a walk in Python (5 µs)
    try:
        return _Walk(raw).split()
    except _NotPlain:
        return None


class _NotPlain(Exception):
    pass


class _Walk:
    """One walk over a message, counting the fields it reads (MAX_FIELDS)."""

    def __init__(self, raw: bytes):
        self.view, self.left = memoryview(raw), MAX_FIELDS

    def split(self) -> tuple[bytes, dict[bytes, tuple[int, int]]] | None:
        view = self.view
        pieces: list[bytes | memoryview] = []  # joined once, at the end
        spans: dict[bytes, tuple[int, int]] = {}
        names: set[bytes] = set()
        kept = 0  # view[kept:start] goes unchanged before each rewritten entry
        for field, kind, start, body, end in self.fields(0, len(view)):
            if field != _INPUTS:
                continue
            if kind != _BYTES:
                raise _NotPlain
            name, value_tag, value_at, value_end, content = self.entry(body, end)
            if name in names:
                raise _NotPlain  # a map's repeated key (the last wins): left to protobuf
            names.add(name)
            if content is None or content[2] - content[1] < SPLIT_MIN_BYTES:
                continue
            content_tag, content_at, content_end = content
            # the entry again, its value without the content (the key where it was)
            value = [view[value_at:content_tag], view[content_end:value_end]]
            value_size = (content_tag - value_at) + (value_end - content_end)
            entry = [view[body:value_tag], _tag(_VALUE) + _varint(value_size), *value, view[value_end:end]]
            entry_size = (value_tag - body) + len(entry[1]) + value_size + (end - value_end)
            pieces += [view[kept:start], _tag(_INPUTS) + _varint(entry_size), *entry]
            kept = end
            spans[name] = (content_at, content_end - content_at)
        if not spans:
            return None
        if len(view) - sum(size for _, size in spans.values()) > MAX_REST_BYTES:
            return None  # much else besides the contents: no copy of it saved, one more made
        pieces.append(view[kept:])
        return b"".join(pieces), spans

    def entry(self, start: int, end: int) -> tuple[bytes, int, int, int, tuple[int, int, int] | None]:
        """A map entry's key, its value's tag start, payload start and end, and the value's
        tensor_content (tag start, content start, content end) or None. One key and one
        value, each once, and nothing else (upb drops the value of an entry with any other
        field), or _NotPlain."""
        key = value = None
        for field, kind, tag_start, body, stop in self.fields(start, end):
            if field == _KEY and kind == _BYTES and key is None:
                key = bytes(self.view[body:stop])
            elif field == _VALUE and kind == _BYTES and value is None:
                value = (tag_start, body, stop)
            else:
                raise _NotPlain
        if key is None or value is None:
            raise _NotPlain
        content = None
        for field, kind, tag_start, body, stop in self.fields(value[1], value[2]):
            if field == _CONTENT:
                if kind != _BYTES or content is not None:
                    raise _NotPlain
                content = (tag_start, body, stop)
        return key, *value, content

    def fields(self, at: int, end: int):
        """(field number, wire type, tag start, payload start, payload end) for each field in
        view[at:end]; _NotPlain past the end, on a group or unknown wire type, or past
        MAX_FIELDS."""
        while at < end:
            self.left -= 1
            if self.left < 0:
                raise _NotPlain
            tag_start = at
            tag, at = self.size(at, end)
            field, kind = tag >> 3, tag & 7
            if field == 0:
                raise _NotPlain
            if kind == _VARINT:
                _, at = self.varint(at, end)
                yield field, kind, tag_start, at, at
                continue
            if kind == _BYTES:
                length, at = self.size(at, end)
                stop = at + length
            elif kind == _FIXED64:
                stop = at + 8
            elif kind == _FIXED32:
                stop = at + 4
            else:
                raise _NotPlain
            if stop > end:
                raise _NotPlain
            yield field, kind, tag_start, at, stop
            at = stop

    def size(self, at: int, end: int) -> tuple[int, int]:
        """A tag or a length, as protobuf takes them: at most 5 bytes and below 2^31. Written
        in the fewest bytes, too: the split writes the ones it rewrites that way, so any other
        spelling would be judged by protobuf on a message it never saw."""
        value, stop = self.varint(at, end)
        if stop - at > 5 or value >= 1 << 31 or (stop - at > 1 and self.view[stop - 1] == 0):
            raise _NotPlain
        return value, stop

    def varint(self, at: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if at >= end or shift > 63:
                raise _NotPlain
            byte = self.view[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, at
            shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | _BYTES)
