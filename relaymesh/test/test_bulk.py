"""
Tests for L{relaymesh.bulk}: a connected peer's chunks are split and
decoded as a batch, and what the node does with them is exactly what it did
line by line: the same messages delivered in the same order, the same
refusals at the same place, nothing after the connection stops, the same
traffic counted.
"""

import importlib.util

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.bulk import (
    BULK_TYPES,
    BULK_TYPES_FIELDS,
    LONG_LINE,
    READ_SIZE,
    STREAMING_BYTES,
    STREAMING_CHUNK,
)
from relaymesh.connection import State
from relaymesh.handshake.proofs import LEGACY_FIELD
from relaymesh.test.support import Node, accepted, authenticate, line, make_clock
from relaymesh.testing import MemoryKeys
from relaymesh.wire import MAX_LINE_BYTES, RelayMessage

KEY = bytes(range(32))


def message(i, msg_type="task_status", peer="beta", payload=None):
    return RelayMessage(f"m{i}", msg_type, peer, 1, {"n": i} if payload is None else payload)


class Connected:
    """
    A node with a connected claudectl-style peer C{beta}, fed bytes.
    """

    def __init__(self):
        self.node = Node("alpha", make_clock(), MemoryKeys({"beta": KEY}))
        self.protocol, self.transport = accepted(self.node, "beta", KEY)

    def feed(self, data, cuts=()):
        """
        Feed C{data} in pieces cut at the offsets C{cuts}.
        """
        start = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            if cut > start:
                self.protocol.dataReceived(data[start:cut])
                start = cut

    def delivered(self):
        return [m.id for _, m in self.node.received]


#: Lines a peer may send, good and bad, with what a node does with each.
GOOD = [line(message(i, t)) for i, t in enumerate(["task_status", "delegate_task", "ack", "knowledge_sync"])]
BAD = {
    b"\n": "bad JSON",
    line(message(90, "handshake")): "unexpected handshake",
    line(message(91, peer="gamma")): "claims to be from 'gamma'",
    b'{"id":"x","msg_type":"bogus","from_peer":"beta","timestamp":1,"payload":{}}\n': "unknown msg_type",
    b'{"id":"\xff","msg_type":"ack","from_peer":"beta","timestamp":1,"payload":{}}\n': "invalid UTF-8",
    line(message(92, payload=[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]])).replace(b"[]", b"[" * 130 + b"]" * 130): "nested deeper",
}


class BulkTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        count=st.integers(0, 40),
        bad=st.one_of(st.none(), st.sampled_from(sorted(BAD))),
        bad_at=st.integers(0, 40),
        cuts=st.lists(st.integers(0, 80000), max_size=12),
        long=st.booleans(),
    )
    def test_any_chunking(self, count, bad, bad_at, cuts, long):
        """
        However a stream of short or long lines (split, or read as views of
        their chunk) is cut into chunks, the messages before a bad line are
        delivered in order, the connection closes for the reason the bad
        line gives, and nothing after it is delivered.
        """
        payload = {"text": "x" * (2 * LONG_LINE if long else 10)}
        lines = [line(message(i, payload=payload)) for i in range(count)]
        bad_at = min(bad_at, count)
        if bad is not None:
            lines.insert(bad_at, bad)
        data = b"".join(lines)
        peer = Connected()
        peer.feed(data, [c % (len(data) + 1) for c in cuts])
        if bad is None:
            self.assertEqual(peer.delivered(), [f"m{i}" for i in range(count)])
            self.assertIs(peer.protocol.state, State.CONNECTED)
        else:
            self.assertEqual(peer.delivered(), [f"m{i}" for i in range(bad_at)])
            self.assertIs(peer.protocol.state, State.CLOSED)
            self.assertIn(BAD[bad], peer.protocol.close_reason)

    def test_every_codec(self):
        """
        On each codec installed the bulk path delivers the messages before
        a bad line, in order, and refuses the bad line for its reason.
        """
        from relaymesh import wire

        for codec in [name for name in ("msgspec", "orjson", "json") if importlib.util.find_spec(name)]:
            for attribute, value in wire._codec_functions(codec).items():
                self.patch(wire, attribute, value)
            for bad, reason in BAD.items():
                for long in (False, True):
                    payload = {"text": "x" * (2 * LONG_LINE if long else 10)}
                    lines = [line(message(i, payload=payload)) for i in range(6)]
                    data = b"".join(lines[:3] + [bad] + lines[3:])
                    peer = Connected()
                    peer.feed(data, cuts=[len(data) // 3])
                    self.assertEqual(peer.delivered(), ["m0", "m1", "m2"], (codec, bad))
                    self.assertIn(reason, peer.protocol.close_reason, (codec, bad))

    def test_views_of_long_lines(self):
        """
        A chunk whose lines are long is read as views of it; each message
        delivered holds its own values, not the chunk, and a refused long
        line is named as it would be alone.
        """
        long = [line(message(i, payload={"text": str(i) * 3000})) for i in range(4)]
        peer = Connected()
        chunk = b"".join(long)
        peer.feed(chunk, cuts=[len(long[0]) // 2])
        self.assertEqual(peer.delivered(), ["m0", "m1", "m2", "m3"])
        self.assertEqual([m.payload["text"][:1] for _, m in peer.node.received], ["0", "1", "2", "3"])
        deep = Connected()
        deep.feed(long[0] + line(message(9, payload={"text": "y" * 3000, "a": [[[]]]})).replace(b"[[[]]]", b"[" * 129 + b"]" * 129) + long[1])
        self.assertEqual(deep.delivered(), ["m0"])
        self.assertIn("nested deeper than 128", deep.protocol.close_reason)

    def test_one_call_per_run(self):
        """
        A chunk of plain messages is decoded as one batch and handed to the
        mesh in one call; a line that is not plain (a ping) splits the run
        in two. Long lines reach the decoder as views of the chunk, short
        ones as bytes split out of it.
        """
        from relaymesh import bulk

        real_decode = bulk.decode_many
        for size, kind in ((10, bytes), (2 * LONG_LINE, memoryview)):
            peer = Connected()
            batches, given = [], []
            real_deliver = peer.node.mesh.messages_received

            # patched in for this iteration's messages only
            def messages_received(protocol, messages):
                batches.append([m.id for m in messages])  # noqa: B023
                real_deliver(protocol, messages)  # noqa: B023

            def decode_many(lines, *args):
                given.extend(type(line) for line in lines)  # noqa: B023
                return real_decode(lines, *args)

            self.patch(peer.node.mesh, "messages_received", messages_received)
            self.patch(bulk, "decode_many", decode_many)
            payload = {"text": "x" * size}
            lines = [line(message(i, payload=payload)) for i in range(6)]
            peer.feed(b"".join(lines))
            self.assertEqual(batches, [["m0", "m1", "m2", "m3", "m4", "m5"]])
            self.assertEqual(set(given), {kind})
            del batches[:]
            ping = line(RelayMessage("p", "ping", "beta", 1, {"ping_id": "x"}))
            renamed = [piece.replace(b'"m', b'"n', 1) for piece in lines[:3]]
            peer.feed(renamed[0] + renamed[1] + ping + renamed[2])
            self.assertEqual(batches, [["n0", "n1"], ["n2"]])
            self.assertIs(peer.protocol.state, State.CONNECTED)

    def test_same_traffic_counted(self):
        """
        The traffic counted for a chunk is what counting each line gives:
        messages and bytes, in all and per type.
        """
        data = b"".join(GOOD * 5)
        bulk, single = Connected(), Connected()
        bulk.feed(data)
        for piece in GOOD * 5:
            single.feed(piece)
        for traffic in (bulk.protocol.traffic, single.protocol.traffic):
            self.assertEqual(traffic.by_type["task_status"][:2], [5, 5 * len(GOOD[0])])
        self.assertEqual(bulk.protocol.traffic.by_type, single.protocol.traffic.by_type)
        self.assertEqual(
            (bulk.protocol.traffic.msgs_in, bulk.protocol.traffic.bytes_in),
            (single.protocol.traffic.msgs_in, single.protocol.traffic.bytes_in),
        )
        self.assertEqual(bulk.delivered(), single.delivered())

    def test_duplicates_in_one_chunk(self):
        """
        A message repeated within a chunk is delivered once; heartbeats are
        not deduplicated.
        """
        beat = line(RelayMessage("hb", "heartbeat", "beta", 1, {"sessions": [], "worker_id": "w"}))
        peer = Connected()
        peer.feed(GOOD[0] * 3 + beat * 2 + GOOD[1])
        self.assertEqual(peer.delivered(), ["m0", "hb", "hb", "m1"])

    def test_subscriber_closes(self):
        """
        A subscriber that closes the connection on a message stops delivery
        there: the rest of the chunk is not delivered.
        """
        peer = Connected()

        def close_on_third(peer_id, received):
            if received.id == "m2":
                peer.protocol.close("enough")

        peer.node.mesh.subscribe(close_on_third)
        peer.feed(b"".join(line(message(i)) for i in range(10)))
        self.assertEqual(peer.delivered(), ["m0", "m1", "m2"])
        self.assertEqual(peer.protocol.close_reason, "enough")

    def test_partial_line_limit(self):
        """
        A line that spans chunks is still held to the 1 MiB limit, and one
        at the limit is taken.
        """
        padding = MAX_LINE_BYTES - len(line(message(0, payload="")))
        at_limit = line(message(0, payload="x" * (padding + 1)))
        self.assertEqual(len(at_limit), MAX_LINE_BYTES + 1)  # with its newline
        peer = Connected()
        peer.feed(GOOD[1] + at_limit + GOOD[2], cuts=range(100, len(at_limit), 65536))
        self.assertEqual(peer.delivered(), ["m1", "m0", "m2"])
        over = Connected()
        over.feed(at_limit.replace(b'"x', b'"xx', 1), cuts=range(0, MAX_LINE_BYTES, 65536))
        self.assertIs(over.protocol.state, State.CLOSED)
        self.assertIn("line longer than", over.protocol.close_reason)

    def test_one_chunk_over_the_limit(self):
        """
        A single chunk longer than the limit (as an in-memory transport may
        give) is framed line by line, and a line in it over the limit is
        refused.
        """
        peer = Connected()
        peer.feed(GOOD[0] + b"x" * (MAX_LINE_BYTES + 1) + b"\n" + GOOD[1])
        self.assertEqual(peer.delivered(), ["m0"])
        self.assertIn("line longer than", peer.protocol.close_reason)

    def test_types(self):
        """
        Every type but the handshake's and the link's takes the bulk path
        from a claudectl peer; from a peer whose fields this node reads an
        ack does not (it may settle a reliable message).
        """
        self.assertEqual(
            BULK_TYPES,
            {
                "heartbeat", "ack", "delegate_task", "task_status", "task_handoff",
                "task_interrupt", "knowledge_sync", "knowledge_request", "knowledge_snapshot",
            },
        )
        self.assertEqual(BULK_TYPES - BULK_TYPES_FIELDS, {"ack"})


class ReadSizeTests(SynchronousTestCase):
    def test_reads_grow_once_streaming(self):
        """
        A TCP transport reads 64 KiB at once by default; once its connected
        peer streams (L{STREAMING_BYTES} in chunks of L{STREAMING_CHUNK}
        bytes or more), the connection reads L{READ_SIZE} at once. Smaller
        chunks, such as an idle peer's heartbeats, and a short burst leave
        it as it is, and so does a transport without a read size.
        """
        self.assertEqual(FileDescriptor.bufferSize, 65536)
        self.assertGreater(READ_SIZE, FileDescriptor.bufferSize)
        self.assertLess(STREAMING_CHUNK, FileDescriptor.bufferSize)
        unsized = Connected()
        unsized.feed(b"".join(GOOD * 400))
        self.assertFalse(hasattr(unsized.transport, "bufferSize"))
        node = Node("alpha", make_clock(), MemoryKeys({"beta": KEY}))
        node.keys.metas.setdefault("beta", {})[LEGACY_FIELD] = True
        address = IPv4Address("TCP", "10.0.0.2", 40000)
        protocol = node.server.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.bufferSize = FileDescriptor.bufferSize
        transport.protocol = protocol
        protocol.makeConnection(transport)
        authenticate(protocol, transport, "beta", KEY)
        self.assertIs(protocol.state, State.CONNECTED)
        small = b"".join(GOOD)
        for _ in range(STREAMING_BYTES // len(small) + 1):
            protocol.dataReceived(small)
        self.assertEqual(transport.bufferSize, 65536)
        chunk = b"".join(GOOD * (STREAMING_CHUNK // len(small) + 1))
        needed = -(-STREAMING_BYTES // len(chunk))
        for _ in range(needed - 1):
            protocol.dataReceived(chunk)
        self.assertEqual(transport.bufferSize, 65536)
        protocol.dataReceived(chunk)
        self.assertEqual(transport.bufferSize, READ_SIZE)
        self.assertIs(protocol.state, State.CONNECTED)
