"""
Tests for L{relaymesh.wire}: the message format claudectl 0.49 speaks.
"""

import json

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
    L{wire._nesting_depth} must agree with.
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
            self.assertEqual(wire._nesting_depth(text), reference_depth(text), text)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b",", b"\xc3\xa9"]), max_size=60))
    def test_depth_property(self, pieces):
        text = b"".join(pieces)
        self.assertEqual(wire._nesting_depth(text), reference_depth(text))

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
        for codec in (wire._loads, wire._stdlib_loads):
            self.patch(wire, "_loads", codec)
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
        for case in (obj(), obj(payload=None), obj(payload=[1, {"a": "b"}], extra=True)):
            self.assertEqual(decode(raw(case)), wire.message_from_object(wire.loads(raw(case))))

