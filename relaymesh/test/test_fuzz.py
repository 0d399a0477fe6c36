"""
Property-based and fuzz tests of L{relaymesh.connection.RelayProtocol}.

Random and mutated lines, valid streams cut into random chunks, and random
handshake orderings go into an acceptor; the properties: nothing raises out
of C{dataReceived}, nobody is authenticated without the key, and the node
keeps serving its other peers.

The number of examples is C{RELAYMESH_FUZZ_EXAMPLES} (default 100; CI uses
the default, a long run sets it to thousands).
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.handshake.proofs import compute_proof
from relaymesh.connection import State
from relaymesh.test.support import (
    MemoryKeys,
    Node,
    client_protocol,
    line,
    make_clock,
    server_protocol,
    written,
)
from relaymesh.wire import MESSAGE_TYPES, RelayMessage, decode

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
EXAMPLES = int(os.environ.get("RELAYMESH_FUZZ_EXAMPLES", "100"))

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("RELAYMESH_FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
message_types = st.sampled_from(sorted(MESSAGE_TYPES) + ["bogus", ""])
peer_ids = st.sampled_from(["beta", "gamma", "", "_pending", "../x", "b" * 129]) | st.text(max_size=10)


def random_messages():
    return st.builds(
        RelayMessage,
        id=st.text(max_size=12),
        msg_type=message_types,
        from_peer=peer_ids,
        timestamp=st.integers(min_value=0, max_value=2**64 - 1),
        payload=json_values | st.fixed_dictionaries({"proof": st.text(max_size=70), "version": st.text(max_size=5)}),
    )


class AcceptorFuzzTests(SynchronousTestCase):
    def fresh(self):
        clock = make_clock()
        node = Node("alpha", clock, MemoryKeys({"beta": KEY}, pending=None))
        protocol, transport = server_protocol(node.server, host="10.9.9.9")
        [challenge] = written(transport)
        return node, protocol, transport, challenge.payload["nonce"]

    def assertStillServes(self, node):
        """
        Another peer, from another address, still gets in and is heard.
        """
        node.keys.keys["gamma"] = OTHER_KEY
        protocol, transport = server_protocol(node.server, host="10.1.1.1")
        [challenge] = written(transport)
        proof = compute_proof(OTHER_KEY, challenge.payload["nonce"])
        protocol.dataReceived(line(RelayMessage("h", "handshake", "gamma", 1, {"proof": proof})))
        protocol.dataReceived(line(RelayMessage("m", "task_status", "gamma", 1, {})))
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual(node.received[-1][0], "gamma")

    @fuzz
    @given(st.lists(st.binary(max_size=300), max_size=12))
    def test_random_bytes(self, chunks):
        """
        Random bytes never raise and never authenticate.
        """
        node, protocol, transport, nonce = self.fresh()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.assertFalse(node.mesh.is_connected("beta"))
        self.assertStillServes(node)

    @fuzz
    @given(st.lists(random_messages(), min_size=1, max_size=6))
    def test_random_handshake_orderings(self, messages):
        """
        Any sequence of well-formed messages authenticates only if it
        carries a handshake from beta with beta's proof for this nonce.
        """
        node, protocol, transport, nonce = self.fresh()
        for message in messages:
            try:
                data = line(message)
            except ValueError:
                continue
            protocol.dataReceived(data)
        if protocol.state is State.CONNECTED:
            first = messages[0]
            self.assertEqual((first.msg_type, first.from_peer), ("handshake", "beta"))
            self.assertEqual(first.payload["proof"], compute_proof(KEY, nonce))
        self.assertFalse(
            protocol.state is State.CONNECTED,
            "random messages cannot know the proof for a fresh nonce",
        )
        self.assertStillServes(node)

    @fuzz
    @given(st.data())
    def test_mutated_handshake(self, data):
        """
        A valid handshake with random byte changes authenticates only as
        beta, and only with beta's proof.
        """
        node, protocol, transport, nonce = self.fresh()
        good = bytearray(
            line(RelayMessage("h", "handshake", "beta", 1, {"proof": compute_proof(KEY, nonce), "version": "0.49.2"}))
        )
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            position = data.draw(st.integers(min_value=0, max_value=len(good) - 2))
            good[position] = data.draw(st.integers(min_value=0, max_value=255))
        protocol.dataReceived(bytes(good))
        if protocol.state is State.CONNECTED:
            parsed = decode(bytes(good).split(b"\n")[0])
            self.assertEqual(parsed.from_peer, "beta")
            self.assertEqual(parsed.payload["proof"], compute_proof(KEY, nonce))
        self.assertStillServes(node)


class ChunkingFuzzTests(SynchronousTestCase):
    @fuzz
    @given(st.data())
    def test_valid_stream_any_chunking(self, data):
        """
        A valid handshake and messages, cut into chunks anywhere, give the
        same result as whole lines: connected, every message delivered once,
        in order.
        """
        clock = make_clock()
        node = Node("beta", clock, MemoryKeys({"alpha": KEY}))
        protocol, transport = client_protocol(node.client("alpha", legacy=True))
        nonce = "ab" * 32
        payloads = data.draw(st.lists(json_values, max_size=8))
        stream = line(RelayMessage("c", "challenge", "", 1, {"nonce": nonce}))
        stream += line(RelayMessage("a", "handshake_ack", "alpha", 1, {"status": "ok"}))
        for i, payload in enumerate(payloads):
            stream += line(RelayMessage(f"m{i}", "task_status", "alpha", i, payload))
        cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(stream) - 1), max_size=20)))
        start = 0
        for cut in cuts + [len(stream)]:
            protocol.dataReceived(stream[start:cut])
            start = cut
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual([m.id for _, m in node.received], [f"m{i}" for i in range(len(payloads))])
        self.assertEqual([m.payload for _, m in node.received], payloads)
