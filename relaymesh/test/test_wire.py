"""
Tests for L{relaymesh.wire}: the message format claudectl 0.49 speaks.
"""

import importlib
import importlib.util
import json
import os
import sys
import types
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaymesh import wire
from relaymesh.test.support import load_transcript
from relaymesh.wire import (
    MAX_LINE_BYTES,
    MESSAGE_TYPES,
    MessageIds,
    MessageType,
    RelayMessage,
    WireError,
    decode,
    decode_fields,
    encode,
)


def obj(**overrides):
    base = {
        "id": "msg_1_0",
        "msg_type": "heartbeat",
        "from_peer": "alpha",
        "timestamp": 1764180000000,
        "payload": {},
    }
    base.update(overrides)
    return base


def raw(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def with_payload(payload: bytes, **fields) -> bytes:
    """
    A message line whose payload is the JSON text C{payload}.
    """
    return raw(obj(**fields)).replace(b'"payload":{}', b'"payload":' + payload, 1)


def arrays(depth: int) -> bytes:
    """
    JSON text of C{depth} nested arrays: C{[[...]]}.
    """
    return b"[" * depth + b"]" * depth


def objects(depth: int) -> bytes:
    """
    JSON text of C{depth} nested objects: C{{"a":{"a":...1}}}.
    """
    return b'{"a":' * depth + b"1" + b"}" * depth


def mixed(depth: int) -> bytes:
    """
    JSON text of C{depth} levels, arrays and objects in turn: C{[{"a":[...]}]}.
    """
    opening = b"".join(b"[" if level % 2 == 0 else b'{"a":' for level in range(depth))
    closing = b"".join(b"]" if level % 2 == 0 else b"}" for level in reversed(range(depth)))
    return opening + b"1" + closing


def codecs():
    """
    The codecs L{wire} may run that this machine has: msgspec (the default),
    orjson and the standard library's C{json}.
    """
    return [name for name in ("msgspec", "orjson", "json") if importlib.util.find_spec(name)]


def use_codec(case, name):
    """
    Make L{wire} run codec C{name} for the rest of test C{case}.
    """
    for attribute, value in wire._codec_functions(name).items():
        case.patch(wire, attribute, value)


class MessageTypeTests(SynchronousTestCase):
    def test_types(self):
        """
        The twelve claudectl 0.49 message types, in snake_case.
        """
        self.assertEqual(
            MESSAGE_TYPES,
            {
                "challenge",
                "handshake",
                "handshake_ack",
                "heartbeat",
                "ack",
                "delegate_task",
                "task_status",
                "task_handoff",
                "task_interrupt",
                "knowledge_sync",
                "knowledge_request",
                "knowledge_snapshot",
            },
        )
        self.assertEqual(MessageType.TASK_STATUS, "task_status")
        self.assertEqual(str(MessageType.ACK), "ack")


class DecodeTests(SynchronousTestCase):
    def test_transcript_lines(self):
        """
        Every line claudectl 0.49.2 wrote in the recorded handshake decodes,
        and encodes back to the same bytes.
        """
        for entry in load_transcript():
            data = entry["line"].encode()
            message = decode(data)
            self.assertIn(message.msg_type, MESSAGE_TYPES)
            self.assertEqual(encode(message), data)

    def test_field_order(self):
        """
        Encoded messages are compact, with the fields in claudectl's order.
        """
        message = RelayMessage("msg_5_1", "ack", "beta", 5, {"ack_id": "x"})
        self.assertEqual(
            encode(message),
            b'{"id":"msg_5_1","msg_type":"ack","from_peer":"beta","timestamp":5,'
            b'"payload":{"ack_id":"x"}}',
        )

    def test_non_ascii_is_utf8(self):
        """
        Non-ASCII text is written as UTF-8, not escaped, as serde_json does.
        """
        message = RelayMessage("m", "task_status", "a", 1, {"status": "fertig ✓"})
        self.assertIn("fertig ✓".encode(), encode(message))

    def test_extra_fields_ignored(self):
        """
        Unknown extra fields are ignored, as claudectl ignores them.
        """
        message = decode(raw(obj(extra=1)))
        self.assertEqual(message.msg_type, "heartbeat")

    def test_payload_any_json(self):
        """
        The payload may be any JSON value, including null.
        """
        self.assertIsNone(decode(raw(obj(payload=None))).payload)
        self.assertEqual(decode(raw(obj(payload=[1, "a"]))).payload, [1, "a"])

    def assertRefused(self, data: bytes, fragment: str):
        with self.assertRaises(WireError) as ctx:
            decode(data)
        self.assertIn(fragment, str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))

    def test_bad_json(self):
        self.assertRefused(b'{"id":', "bad JSON")

    def test_not_an_object(self):
        self.assertRefused(b"[1,2]", "must be a JSON object")
        self.assertRefused(b'"text"', "must be a JSON object")

    def test_invalid_utf8(self):
        self.assertRefused(raw(obj(id="x")).replace(b'"x"', b'"\xff\xfe"'), "UTF-8")

    def test_lone_surrogate(self):
        """
        A lone surrogate escape parses in Python but not in claudectl.
        """
        with self.assertRaises(WireError):
            decode(raw(obj()).replace(b'"alpha"', b'"\\ud800"'))

    def test_missing_fields(self):
        for field in ("id", "msg_type", "from_peer", "timestamp", "payload"):
            value = obj()
            del value[field]
            self.assertRefused(raw(value), f"missing field {field!r}")

    def test_wrong_types(self):
        self.assertRefused(raw(obj(id=5)), "field 'id' must be a string")
        self.assertRefused(raw(obj(msg_type=None)), "field 'msg_type' must be a string")
        self.assertRefused(raw(obj(from_peer=[])), "field 'from_peer' must be a string")
        self.assertRefused(raw(obj(timestamp="1")), "field 'timestamp'")
        self.assertRefused(raw(obj(timestamp=1.5)), "field 'timestamp'")
        self.assertRefused(raw(obj(timestamp=True)), "field 'timestamp'")

    def test_timestamp_range(self):
        """
        claudectl's timestamp is an unsigned 64-bit integer.
        """
        self.assertRefused(raw(obj(timestamp=-1)), "out of range")
        self.assertRefused(raw(obj(timestamp=2**64)), "timestamp")
        self.assertEqual(decode(raw(obj(timestamp=2**64 - 1))).timestamp, 2**64 - 1)

    def test_unknown_type(self):
        self.assertRefused(raw(obj(msg_type="route_update")), "unknown msg_type")

    def test_deep_nesting(self):
        """
        Nesting deeper than serde_json's 128 levels is refused.
        """
        payload = "[" * 200 + "]" * 200
        data = raw(obj()).replace(b'"payload":{}', b'"payload":' + payload.encode())
        self.assertRefused(data, "nested deeper")

    def test_brackets_in_strings_do_not_count(self):
        """
        Brackets inside strings are not nesting.
        """
        message = decode(raw(obj(payload={"text": "[" * 500 + '\\"{' * 10})))
        self.assertEqual(message.payload["text"][:3], "[[[")

    def test_moderate_nesting(self):
        value = {}
        for _ in range(100):
            value = {"a": value}
        self.assertEqual(decode(raw(obj(payload=value))).msg_type, "heartbeat")

    def test_huge_numbers(self):
        """
        Numbers outside a double's range and integers of thousands of digits
        are refused, not turned into infinity or left to raise.
        """
        self.assertRefused(raw(obj()).replace(b'"payload":{}', b'"payload":1e400'), "")
        self.assertRefused(
            raw(obj()).replace(b'"payload":{}', b'"payload":' + b"9" * 5000), ""
        )

    def test_nan_refused(self):
        self.assertRefused(raw(obj()).replace(b'"payload":{}', b'"payload":NaN'), "")

    def test_line_limit(self):
        """
        A line over 1 MiB is refused; encoding refuses to produce one.
        """
        self.assertEqual(MAX_LINE_BYTES, 1048576)
        self.assertRefused(b" " * (MAX_LINE_BYTES + 1), "exceeds")
        big = RelayMessage("m", "task_status", "a", 1, {"x": "y" * MAX_LINE_BYTES})
        with self.assertRaises(WireError):
            encode(big)

    def test_unserializable_payload(self):
        with self.assertRaises(WireError):
            encode(RelayMessage("m", "task_status", "a", 1, {"x": object()}))


class StdlibCodecTests(SynchronousTestCase):
    """
    The standard library codec, used when orjson is not installed, refuses
    and writes the same things.
    """

    def test_same_bytes(self):
        value = obj(payload={"text": "héllo ✓", "n": [1, 2.5, None, True]})
        self.assertEqual(wire._stdlib_dumps(value), wire.dumps(value))

    def test_refusals(self):
        for data in (
            b"\xff",
            b'{"a":NaN}',
            b'{"a":1e400}',
            b'{"a":"\\ud800"}',
            b'{"a":',
        ):
            with self.assertRaises((ValueError, UnicodeError)):
                wire._stdlib_loads(data)

    def test_accepts_pairs(self):
        self.assertEqual(wire._stdlib_loads(b'"\\ud83d\\ude00"'), "\U0001f600")


class MessageIdsTests(SynchronousTestCase):
    def test_format(self):
        """
        Ids keep claudectl's msg_<epoch ms>_<counter> shape, with a node tag.
        """
        ids = MessageIds(randbytes=lambda n: bytes(range(n)))
        self.assertEqual(ids.next(1764180000000), "msg_1764180000000_0_0001020304050607")
        self.assertEqual(ids.next(1764180000000), "msg_1764180000000_1_0001020304050607")

    def test_nodes_do_not_collide(self):
        """
        Two nodes started at the same instant do not produce the same ids,
        unlike claudectl's time-and-counter ids.
        """
        a, b = MessageIds(), MessageIds()
        first = {a.next(1000) for _ in range(100)}
        second = {b.next(1000) for _ in range(100)}
        self.assertEqual(len(first), 100)
        self.assertFalse(first & second)


def reference_depth(line: bytes) -> int:
    """
    The nesting depth the plain way, byte by byte: what
    L{wire.nesting_depth} must agree with.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class NestingTests(SynchronousTestCase):
    """
    The nesting check on the fast path refuses exactly what serde_json
    refuses, with the same reason, whatever the line's length.
    """

    def test_depth_like_the_reference(self):
        for text in (
            b"",
            b"[]",
            b'{"a":[1,{"b":"]]]"}]}',
            b'["\\"]',
            b'["\\\"[[["]',
            b'"unterminated [[[',
            b'"ends in a backslash\\',
            b"]]][[[",
            b'\\"[["',
            "[\u00e9\u2713]".encode(),
        ):
            self.assertEqual(wire.nesting_depth(text), reference_depth(text), text)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b",", b"\xc3\xa9"]), max_size=60))
    def test_depth_property(self, pieces):
        text = b"".join(pieces)
        self.assertEqual(wire.nesting_depth(text), reference_depth(text))

    def nested(self, depth: int) -> bytes:
        payload = "[" * (depth - 1) + "]" * (depth - 1)
        return raw(obj()).replace(b'"payload":{}', b'"payload":' + payload.encode())

    def test_limit(self):
        """
        128 levels (the message object counts as one) are taken; 129 are not.
        """
        self.assertEqual(decode(self.nested(128)).msg_type, "heartbeat")
        with self.assertRaises(WireError) as ctx:
            decode(self.nested(129))
        self.assertIn("nested deeper", str(ctx.exception))

    def test_short_deep_line_named_as_before(self):
        """
        A line too short to be valid JSON nested that deep is still refused
        as too deep, not as bad JSON.
        """
        with self.assertRaises(WireError) as ctx:
            decode(b"[" * 200)
        self.assertIn("nested deeper", str(ctx.exception))

    def test_deep_anywhere(self):
        """
        Depth is found wherever it is: in an extra field, or among many
        items of the payload, and on the standard library's codec too.
        """
        deep = [[[]]]
        for _ in range(130):
            deep = [deep]
        cases = [obj(extra=deep), obj(payload=[1] * 40 + [deep]), obj(payload={"k": deep}), obj(payload=deep)]
        for codec in codecs():
            use_codec(self, codec)
            for case in cases:
                with self.assertRaises(WireError) as ctx:
                    decode(raw(case))
                self.assertIn("nested deeper", str(ctx.exception))
            self.assertEqual(len(decode(raw(obj(payload=[1] * 32))).payload), 32)

    def test_many_shallow_brackets(self):
        """
        A payload with hundreds of small objects is shallow and is taken.
        """
        message = decode(raw(obj(payload={"units": [{"k": i} for i in range(400)]})))
        self.assertEqual(len(message.payload["units"]), 400)

    def test_brackets_in_a_long_string(self):
        message = decode(raw(obj(payload={"text": "[{" * 300})))
        self.assertEqual(len(message.payload["text"]), 600)


class FastPathTests(SynchronousTestCase):
    """
    L{decode}'s fast path gives what the field-by-field validation gives:
    the same message, or the same refusal.
    """

    def test_same_refusals(self):
        cases = [
            [1, 2],
            "text",
            None,
            obj(id=5),
            obj(msg_type=["heartbeat"]),
            obj(msg_type={"a": 1}),
            obj(msg_type="bogus"),
            obj(from_peer=None),
            obj(timestamp=-1),
            obj(timestamp=2**64),
            obj(timestamp=True),
            obj(timestamp=1.0),
        ]
        for field in ("id", "msg_type", "from_peer", "timestamp", "payload"):
            value = obj()
            del value[field]
            cases.append(value)
        for case in cases:
            with self.assertRaises(WireError) as fast:
                decode(raw(case))
            with self.assertRaises(WireError) as slow:
                wire.message_from_object(wire.loads(raw(case)))
            self.assertEqual(str(fast.exception), str(slow.exception), case)

    def test_same_message(self):
        for case in (
            obj(),
            obj(payload=None),
            obj(payload=[1, {"a": "b"}], extra=True),
            obj(timestamp=0),
            obj(timestamp=2**64 - 1),
        ):
            self.assertEqual(decode(raw(case)), wire.message_from_object(wire.loads(raw(case))))



class RelayMessageTests(SynchronousTestCase):
    """
    L{RelayMessage} compares and prints by its five fields.
    """

    def test_equality(self):
        """
        Two messages are equal when their five fields are; a message is not
        equal to anything else, not even its own fields as a dict.
        """
        message = RelayMessage("m", "ack", "alpha", 1, {"ack_id": "x"})
        self.assertIs(message == RelayMessage("m", "ack", "alpha", 1, {"ack_id": "x"}), True)
        for other in (
            RelayMessage("n", "ack", "alpha", 1, {"ack_id": "x"}),
            RelayMessage("m", "heartbeat", "alpha", 1, {"ack_id": "x"}),
            RelayMessage("m", "ack", "beta", 1, {"ack_id": "x"}),
            RelayMessage("m", "ack", "alpha", 2, {"ack_id": "x"}),
            RelayMessage("m", "ack", "alpha", 1, {"ack_id": "y"}),
        ):
            self.assertIs(message == other, False, other)
            self.assertIs(message != other, True, other)
        for other in (message.to_dict(), "m", None):
            self.assertIs(message == other, False, other)
            self.assertIs(message != other, True, other)

    def test_repr(self):
        """
        The repr names every field.
        """
        self.assertEqual(
            repr(RelayMessage("m", "ack", "alpha", 1, {"ack_id": "x"})),
            "RelayMessage(id='m', msg_type='ack', from_peer='alpha', timestamp=1, "
            "payload={'ack_id': 'x'})",
        )


class ValuesTests(SynchronousTestCase):
    """
    What a value becomes on the wire and back, on the installed codec and on
    the standard library's.
    """

    def each_codec(self):
        for name in codecs():
            use_codec(self, name)
            yield name

    def test_numbers_keep_their_value(self):
        """
        Integers stay integers and floats stay floats of the same value, up
        to the largest a double holds.
        """
        payload = {"i": -7, "f": 2.5, "tiny": -1e-7, "max": 1.7976931348623157e308, "zero": -0.0}
        line = with_payload(json.dumps(payload, separators=(",", ":")).encode())
        for name in self.each_codec():
            decoded = decode(line).payload
            self.assertEqual(decoded, payload, name)
            self.assertEqual({k: type(v) for k, v in decoded.items()}, {k: type(v) for k, v in payload.items()})
            self.assertEqual(str(decoded["zero"]), "-0.0")

    def test_non_finite_numbers_refused(self):
        """
        NaN, Infinity, and numbers beyond a double's range are not JSON to
        serde_json; they are refused, each with its reason, never read as
        infinity. Every codec refuses them; the standard library's names
        each reason.
        """
        for _codec in self.each_codec():
            for text in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" + b"0" * 5000):
                for parse in (decode, decode_fields, wire.loads):
                    with self.assertRaises(WireError, msg=_codec):
                        parse(with_payload(text))
        use_codec(self, "json")
        for text, reason in (
            (b"NaN", "NaN is not valid JSON"),
            (b"Infinity", "Infinity is not valid JSON"),
            (b"-Infinity", "-Infinity is not valid JSON"),
            (b"1e400", "number 1e400 is out of range"),
            (b"-1e400", "number -1e400 is out of range"),
        ):
            for parse in (decode, decode_fields, wire.loads):
                with self.assertRaises(WireError) as ctx:
                    parse(with_payload(text))
                self.assertEqual(str(ctx.exception), reason)

    def test_non_finite_numbers_never_sent(self):
        """
        A payload holding NaN or an infinity never puts a line on the wire
        that peers refuse: it is refused, or written as JSON they accept.
        """
        for _codec in self.each_codec():
            for number in (float("nan"), float("inf"), float("-inf")):
                message = RelayMessage("m", "task_status", "a", 1, {"x": number})
                try:
                    line = encode(message)
                except WireError as e:
                    self.assertIn("not serializable as JSON", str(e))
                else:
                    self.assertEqual(decode(line).payload, {"x": None})
        use_codec(self, "json")
        with self.assertRaises(WireError):
            encode(RelayMessage("m", "task_status", "a", 1, {"x": float("nan")}))

    def test_non_ascii_on_the_wire(self):
        """
        Non-ASCII text, in and beyond the Basic Multilingual Plane, goes on
        the wire as raw UTF-8, as serde_json writes it, on every codec.
        """
        payload = {"status": "fertig ✓", "face": "\U0001f600"}
        for _codec in self.each_codec():
            line = encode(RelayMessage("m", "task_status", "a", 1, payload))
            self.assertTrue(line.endswith('"payload":{"status":"fertig ✓","face":"😀"}}'.encode()))
            self.assertNotIn(b"\\u", line)

    def test_lone_surrogate_named(self):
        """
        A lone UTF-16 surrogate escape, which serde_json refuses, is refused
        as such on every codec, wherever it is.
        """
        for line in (
            raw(obj()).replace(b'"alpha"', b'"\\ud800"'),
            raw(obj()).replace(b'"alpha"', b'"a\\uDFFFb"'),
            with_payload(b'{"\\udbff":1}'),
            with_payload(b'"\\ud800abc"'),
        ):
            for _codec in self.each_codec():
                for parse in (decode, decode_fields, wire.loads):
                    with self.assertRaises(WireError) as ctx:
                        parse(line)
                    self.assertEqual(str(ctx.exception), "lone UTF-16 surrogate in a string", _codec)

    def test_parser_out_of_stack(self):
        """
        A parser that runs out of stack (the standard library's, called with
        little stack left) refuses the line with a L{WireError}: no
        C{RecursionError} gets out.
        """

        def out_of_stack(line):
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON object")

        use_codec(self, "json")
        self.patch(wire, "_loads", out_of_stack)
        for parse in (decode, decode_fields, wire.loads):
            with self.assertRaises(WireError) as ctx:
                parse(raw(obj()))
            self.assertEqual(str(ctx.exception), "JSON nested too deeply")

    def test_loads_refuses(self):
        """
        L{wire.loads} refuses what is not JSON, with the reason.
        """
        for line, reason in (
            (b'{"id":', "bad JSON"),
            (b"", "bad JSON"),
            (b"\xff", "invalid UTF-8 at byte 0"),
            (b"[1]x", "bad JSON"),
        ):
            with self.assertRaises(WireError) as ctx:
                wire.loads(line)
            self.assertIn(reason, str(ctx.exception))


class DecodeFieldsTests(SynchronousTestCase):
    """
    L{decode_fields}, which every connection reads lines with, takes and
    refuses exactly what L{decode} does, and also gives the whole object.
    """

    def test_fields(self):
        """
        The fields besides the five come back, on every codec: the
        extension fields relaymesh reads, and any other.
        """
        for codec in codecs():
            use_codec(self, codec)
            for extra in (
                {"route": {"hops": ["a", "b"]}, "ttl": 3},
                {"route": {"hops": ["a", "b"]}, "sealed": "box", "reliable": True},
                {"routes": [{"to": "x", "hops": 1}]},
                {"reliable": None},
                {},
            ):
                line = raw(obj(**extra))
                message, fields = decode_fields(line)
                self.assertEqual(message, RelayMessage(**{k: obj()[k] for k in obj()}), codec)
                self.assertEqual(fields, extra, codec)

    def test_extension_fields_named(self):
        """
        The extension fields the wire module decodes in one step are those
        the routing and the reliable delivery read.
        """
        from relaymesh.reliable.fields import RELIABLE_FIELD
        from relaymesh.routing.router import ADVERTISEMENT_FIELD
        from relaymesh.routing.table import ROUTE_FIELD, SEALED_FIELD

        self.assertEqual(
            set(wire.EXTENSION_FIELDS),
            {ROUTE_FIELD, SEALED_FIELD, ADVERTISEMENT_FIELD, RELIABLE_FIELD},
        )

    def test_same_refusals(self):
        """
        Every line L{decode} refuses, L{decode_fields} refuses with the same
        reason.
        """
        cases = [
            b'{"id":',
            b"[1,2]",
            raw(obj(id=5)),
            raw(obj(msg_type="route_update")),
            raw(obj(timestamp=-1)),
            raw(obj(timestamp=2**64)),
            with_payload(arrays(128)),
            with_payload(objects(128)),
            raw(obj()).replace(b'"alpha"', b'"\\ud800"'),
            b" " * (MAX_LINE_BYTES + 1),
        ]
        cases += [line[:-1] + b',"route":{"to":"b"}}' for line in cases if line.endswith(b"}")]
        for codec in codecs():
            use_codec(self, codec)
            for line in cases:
                with self.assertRaises(WireError) as ctx:
                    decode(line)
                with self.assertRaises(WireError) as fields_ctx:
                    decode_fields(line)
                self.assertEqual(str(fields_ctx.exception), str(ctx.exception), (codec, line[:60]))

    def test_line_limit(self):
        """
        A message of exactly L{MAX_LINE_BYTES} bytes is taken; one byte more
        is refused before it is parsed.
        """
        padding = MAX_LINE_BYTES - len(raw(obj(payload="")))
        at_limit = raw(obj(payload="x" * padding))
        self.assertEqual(len(at_limit), MAX_LINE_BYTES)
        over = raw(obj(payload="x" * (padding + 1)))
        for parse in (decode, lambda line: decode_fields(line)[0]):
            self.assertEqual(len(parse(at_limit).payload), padding)
            with self.assertRaises(WireError) as ctx:
                parse(over)
            self.assertEqual(
                str(ctx.exception),
                f"line of {MAX_LINE_BYTES + 1} bytes exceeds the {MAX_LINE_BYTES}-byte limit",
            )


class NestingLimitTests(SynchronousTestCase):
    """
    serde_json's limit of 128 levels holds for arrays, objects and mixes of
    them, on every way in (L{decode}, L{decode_fields}, L{wire.loads}) and on
    either codec: at the limit a line is taken, one level more is refused,
    as "nested deeper than 128 levels".
    """

    deep = "JSON nested deeper than 128 levels"

    def assertTaken(self, parse, line):
        try:
            parse(line)
        except WireError as e:
            self.fail(f"{line[:40]!r}... refused: {e}")

    def assertTooDeep(self, parse, line):
        with self.assertRaises(WireError) as ctx:
            parse(line)
        self.assertEqual(str(ctx.exception), self.deep, line[:40])

    def each_codec(self):
        for name in codecs():
            use_codec(self, name)
            yield name

    def test_messages(self):
        """
        The message object is the first level: a payload of 127 levels is
        taken, of 128 refused, whatever brackets nest, and wherever in the
        message the nesting is.
        """
        for _codec in self.each_codec():
            for nested in (arrays, objects, mixed):
                for parse in (decode, decode_fields):
                    self.assertTaken(parse, with_payload(nested(127)))
                    self.assertTooDeep(parse, with_payload(nested(128)))
                    # In an object or array of the payload, an extension
                    # field, or among many extension fields.
                    self.assertTaken(parse, with_payload(b'{"k":' + nested(126) + b"}"))
                    self.assertTooDeep(parse, with_payload(b'{"k":' + nested(127) + b"}"))
                    self.assertTooDeep(parse, with_payload(b"[1," + nested(127) + b"]"))
                    self.assertTooDeep(parse, with_payload(b'{"k":[' + nested(126) + b"]}"))
                    extra = b"".join(b',"x%d":%d' % (i, i) for i in range(20))
                    self.assertTaken(parse, with_payload(b"1" + extra + b',"deep":' + nested(127)))
                    self.assertTooDeep(parse, with_payload(b"1" + extra + b',"deep":' + nested(128)))

    def test_bare_json(self):
        """
        L{wire.loads} counts levels from the top, down to the shortest text
        that nests too deeply (129 brackets and 129 closing ones).
        """
        for _codec in self.each_codec():
            for nested in (arrays, objects, mixed):
                self.assertTaken(wire.loads, nested(128))
                self.assertTooDeep(wire.loads, nested(129))
                self.assertTooDeep(wire.loads, b'{"k":' + nested(128) + b"}")
            self.assertEqual(len(arrays(129)), 258)
            self.assertEqual(wire.loads(arrays(2)), [[]])

    def test_many_brackets_at_the_limit(self):
        """
        Many shallow brackets besides one branch at the limit do not make a
        line too deep; and a line refused for another reason is refused for
        that reason, not as too deep.
        """
        shallow = b",".join([b"{}"] * 200)
        payload = b"[" + arrays(126) + b"," + shallow + b"]"
        for _codec in self.each_codec():
            for parse in (decode, decode_fields):
                self.assertTaken(parse, with_payload(payload))
                self.assertTaken(parse, with_payload(b"[" + shallow + b"]"))
            self.assertTaken(wire.loads, b"[" + payload + b"]")
            self.assertTaken(wire.loads, b"[" + shallow + b"]")
            line = with_payload(payload)
            for parse in (decode, decode_fields):
                with self.assertRaises(WireError) as ctx:
                    parse(line.replace(b'"id":"msg_1_0",', b""))
                self.assertEqual(str(ctx.exception), "missing field 'id'")
                with self.assertRaises(WireError) as ctx:
                    parse(line[:-1])
                self.assertIn("bad JSON", str(ctx.exception))
                with self.assertRaises(WireError) as ctx:
                    parse(with_payload(b"[" + shallow + b",x]"))
                self.assertIn("bad JSON", str(ctx.exception))
            with self.assertRaises(WireError) as ctx:
                wire.loads(b"[" + shallow + b",x]")
            self.assertIn("bad JSON", str(ctx.exception))

    def test_any_byte_among_brackets(self):
        """
        Whatever byte stands among hundreds of brackets, the line is taken
        if it is JSON (a digit: the last item of an array) and refused with
        a L{WireError} otherwise, never with another exception.
        """
        items = b",".join([b"[]"] * 130)
        for _codec in self.each_codec():
            for parse in (decode, decode_fields, wire.loads):
                taken = bytearray()
                for byte in range(256):
                    line = with_payload(b"[" + items + b"," + bytes([byte]) + b"]")
                    try:
                        parse(line)
                    except WireError:
                        pass
                    else:
                        taken.append(byte)
                self.assertEqual(bytes(taken), b"0123456789")

    def test_too_deep_first(self):
        """
        A line too deep is refused as too deep whatever else is wrong with
        it, as serde_json stops at the nesting before it sees anything else.
        """
        for _codec in self.each_codec():
            for nested in (arrays, objects, mixed):
                for parse in (decode, decode_fields, wire.loads):
                    self.assertTooDeep(parse, with_payload(nested(128), id=5))
                    self.assertTooDeep(parse, with_payload(nested(128)).replace(b'"id":"msg_1_0",', b""))
                    self.assertTooDeep(parse, with_payload(nested(128))[:-1])
                    self.assertTooDeep(parse, with_payload(nested(128)).replace(b'"alpha"', b'"\\ud800"'))
                    self.assertTooDeep(parse, with_payload(nested(128)) + b"\xff")


class FakeOrjson(types.ModuleType):
    """
    A stand-in for orjson that speaks JSON through the standard library and
    records the calls it gets.
    """

    def __init__(self):
        super().__init__("orjson")
        self.calls = []

    def loads(self, line):
        self.calls.append(("loads", line))
        return json.loads(line)

    def dumps(self, value):
        self.calls.append(("dumps", value))
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class CodecChoiceTests(SynchronousTestCase):
    """
    L{wire} uses msgspec, a dependency; C{RELAYMESH_CODEC=orjson} or
    C{json} picks orjson (when installed) or the standard library instead.
    Without msgspec it falls back to orjson, then to the standard library.
    L{wire.CODEC} names the choice.
    """

    def import_afresh(self, msgspec, orjson, codec_variable):
        """
        Import a separate copy of L{relaymesh.wire}, as a new process would,
        with C{msgspec} and C{orjson} as those modules (C{None}: not
        installed) and C{RELAYMESH_CODEC} set to C{codec_variable}
        (C{None}: unset). The copy every other module uses is left in place.
        """
        import relaymesh

        names = ("relaymesh.wire", "orjson", "msgspec")
        saved = {name: sys.modules.get(name) for name in names}
        present = {name for name in names if name in sys.modules}

        def restore():
            relaymesh.wire = saved["relaymesh.wire"]
            for name in names:
                if name in present:
                    sys.modules[name] = saved[name]
                else:
                    sys.modules.pop(name, None)

        self.addCleanup(restore)
        sys.modules["orjson"] = orjson
        sys.modules["msgspec"] = msgspec
        del sys.modules["relaymesh.wire"]
        with mock.patch.dict(os.environ):
            os.environ.pop("RELAYMESH_CODEC", None)
            if codec_variable is not None:
                os.environ["RELAYMESH_CODEC"] = codec_variable
            fresh = importlib.import_module("relaymesh.wire")
        restore()
        self.assertIsNot(fresh, wire)
        return fresh

    def round_trip(self, module):
        """
        A message written and read back by C{module} is the same, in the
        same bytes as this process's codec writes, and a bad line is
        refused in the same words.
        """
        message = module.RelayMessage("m", "task_status", "a", 1, {"t": "✓"})
        line = module.encode(message)
        self.assertEqual(line, encode(RelayMessage("m", "task_status", "a", 1, {"t": "✓"})))
        self.assertEqual(module.decode(line), message)
        self.assertEqual(module.decode_fields(line), (message, {}))
        with self.assertRaises(module.WireError) as ctx:
            module.decode(line.replace(b'"m"', b"5"))
        self.assertEqual(str(ctx.exception), "field 'id' must be a string, not int")
        return line

    def test_msgspec_by_default(self):
        """
        With msgspec installed, and C{RELAYMESH_CODEC} unset or naming no
        codec, msgspec reads and writes lines, even with orjson installed.
        """
        import msgspec

        for variable in (None, "", "JSON", "simdjson"):
            orjson = FakeOrjson()
            module = self.import_afresh(msgspec, orjson, variable)
            self.assertEqual(module.CODEC, "msgspec")
            self.round_trip(module)
            self.assertEqual(orjson.calls, [])
            self.assertTrue(issubclass(module.RelayMessage, msgspec.Struct))

    def test_orjson_when_asked(self):
        """
        C{RELAYMESH_CODEC=orjson} makes orjson parse and write lines.
        """
        import msgspec

        orjson = FakeOrjson()
        module = self.import_afresh(msgspec, orjson, "orjson")
        self.assertEqual(module.CODEC, "orjson")
        line = self.round_trip(module)
        self.assertEqual([name for name, _ in orjson.calls][:2], ["dumps", "loads"])
        self.assertEqual(orjson.calls[1], ("loads", line))

    def test_json_when_asked(self):
        """
        C{RELAYMESH_CODEC=json} makes the standard library parse and write
        lines even with msgspec and orjson installed.
        """
        import msgspec

        orjson = FakeOrjson()
        module = self.import_afresh(msgspec, orjson, "json")
        self.assertEqual(module.CODEC, "json")
        self.round_trip(module)
        self.assertEqual(orjson.calls, [])

    def test_fallbacks(self):
        """
        Without msgspec, orjson is used if it is installed, else the
        standard library, and a message is a plain slotted class.
        """
        orjson = FakeOrjson()
        module = self.import_afresh(None, orjson, None)
        self.assertEqual(module.CODEC, "orjson")
        self.round_trip(module)
        for variable in (None, "msgspec", "orjson", "json"):
            module = self.import_afresh(None, None, variable)
            self.assertEqual(module.CODEC, "json")
            self.round_trip(module)
            self.assertFalse(hasattr(module.RelayMessage("m", "ack", "a", 1, None), "__dict__"))
            self.assertEqual(
                repr(module.RelayMessage("m", "ack", "a", 1, None)),
                "RelayMessage(id='m', msg_type='ack', from_peer='a', timestamp=1, payload=None)",
            )
