"""
Property-based and fuzz tests of L{relaymesh.connection.RelayProtocol}.

Random and mutated lines, valid streams cut into random chunks, and random
handshake orderings (the TLS upgrade's included) go into an acceptor and a
connector; the properties: nothing raises out of C{dataReceived}, nobody is
authenticated without the key, no key is proved where it may not be, and
the node keeps serving its other peers.

The number of examples is C{RELAYMESH_FUZZ_EXAMPLES} (default 100; CI uses
the default, a long run sets it to thousands).
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from relaymesh.connection import State
from relaymesh.handshake.proofs import VERSION, compute_proof
from relaymesh.test.support import Node, client_protocol, line, make_clock, server_protocol, written
from relaymesh.testing import MemoryKeys
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
peer_ids = st.sampled_from(["alpha", "beta", "gamma", "", "_pending", "../x", "b" * 129]) | st.text(max_size=10)
nonces = st.binary(min_size=32, max_size=32).map(bytes.hex) | st.sampled_from(["ab" * 32, "AB" * 32]) | st.text(max_size=70)
capabilities = st.lists(st.sampled_from(["mutual-auth/2", "starttls/1", "x"]) | st.text(max_size=12), max_size=4)
texts = st.text(max_size=70)

#: What the connector sends: claudectl's proof, the request for TLS, the
#: labelled proof, strong pairing.
handshake_payloads = st.one_of(
    st.fixed_dictionaries({"proof": texts, "version": st.text(max_size=5)}),
    st.fixed_dictionaries({"starttls": st.just(True) | json_scalars, "version": st.text(max_size=5)}),
    st.fixed_dictionaries({"proof": texts, "nonce": nonces, "caps": capabilities | json_values}),
    st.fixed_dictionaries({"pake": texts, "nonce": nonces, "confirm": texts}),
)
#: What the acceptor sends: claudectl's and relaymesh's challenges, acks.
acceptor_payloads = st.one_of(
    st.fixed_dictionaries({"nonce": nonces}),
    st.fixed_dictionaries(
        {"nonce": nonces, "peer": st.sampled_from(["alpha", "mallory"]) | peer_ids | json_scalars, "caps": capabilities}
    ),
    st.fixed_dictionaries(
        {"status": st.sampled_from(["ok", "starttls", "denied", "pake"]) | json_scalars},
        optional={"proof": texts, "caps": capabilities, "pake": texts},
    ),
)


def assert_still_serves(test, node):
    """
    Another peer, from another address, still gets in and is heard.
    """
    node.keys.keys["gamma"] = OTHER_KEY
    node.keys.metas["gamma"] = {"legacy": True}
    protocol, transport = server_protocol(node.server, host="10.1.1.1")
    [challenge] = written(transport)
    proof = compute_proof(OTHER_KEY, challenge.payload["nonce"])
    protocol.dataReceived(line(RelayMessage("h", "handshake", "gamma", 1, {"proof": proof})))
    protocol.dataReceived(line(RelayMessage("m", "task_status", "gamma", 1, {})))
    test.assertIs(protocol.state, State.CONNECTED)
    test.assertEqual(node.received[-1][0], "gamma")


def encodable(messages):
    """
    The messages that can be put on the wire, and their lines.
    """
    sent = []
    for message in messages:
        try:
            sent.append((message, line(message)))
        except ValueError:
            continue
    return sent


def random_messages(payloads=handshake_payloads, types=message_types):
    return st.builds(
        RelayMessage,
        id=st.text(max_size=12),
        msg_type=types,
        from_peer=peer_ids,
        timestamp=st.integers(min_value=0, max_value=2**64 - 1),
        payload=json_values | payloads,
    )


def plausible(msg_type, peers, payloads):
    """
    Messages of one type from likely peers, with likely payloads.
    """
    return st.builds(
        RelayMessage, id=st.just("p"), msg_type=st.just(msg_type), from_peer=st.sampled_from(peers),
        timestamp=st.just(1), payload=payloads,
    )


#: Handshakes a connector might send, among random messages.
handshakes = plausible("handshake", ["beta", "gamma"], handshake_payloads) | random_messages()

#: A relaymesh connector's request for TLS, to start with or not.
requests = st.lists(plausible("handshake", ["beta", "gamma"], st.just({"starttls": True, "version": "x"})), max_size=1)

#: A challenge (claudectl's, or one naming a relaymesh node and offering
#: TLS) and an ack, to start with or not.
hex_nonces = st.binary(min_size=32, max_size=32).map(bytes.hex)
openings = st.tuples(
    st.lists(
        plausible("challenge", [""], st.fixed_dictionaries({"nonce": hex_nonces}))
        | plausible(
            "challenge",
            [""],
            st.fixed_dictionaries(
                {"nonce": hex_nonces, "peer": st.sampled_from(["alpha", "mallory"]), "caps": st.just(["starttls/1"])}
            ),
        ),
        max_size=1,
    ),
    st.lists(plausible("handshake_ack", ["alpha"], st.fixed_dictionaries({"status": st.sampled_from(["ok", "starttls"])})), max_size=1),
)

#: Challenges and acks an acceptor might send, among random messages.
acceptor_messages = st.one_of(
    plausible("challenge", [""], acceptor_payloads),
    plausible("handshake_ack", ["alpha", "mallory"], acceptor_payloads),
    random_messages(acceptor_payloads),
)


def can_start_tls(transport):
    """
    Make a string transport one that can start TLS: it notes the options
    in C{tls_started}, and goes on in clear.
    """
    transport.tls_started = []
    transport.startTLS = lambda options, normal=True: transport.tls_started.append(options)
    alsoProvides(transport, ITLSTransport)
    return transport


class AcceptorFuzzTests(SynchronousTestCase):
    def fresh(self):
        """
        An acceptor on a transport that cannot start TLS, where beta (a
        claudectl peer, its key marked legacy) may prove its key in clear.
        """
        clock = make_clock()
        node = Node("alpha", clock, MemoryKeys({"beta": KEY}, pending=None))
        node.keys.metas["beta"] = {"legacy": True}
        protocol, transport = server_protocol(node.server, host="10.9.9.9")
        [challenge] = written(transport)
        return node, protocol, transport, challenge.payload["nonce"]

    def assertStillServes(self, node):
        assert_still_serves(self, node)

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
        self.assertIsNone(protocol.outcome)
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


class UpgradingAcceptorFuzzTests(SynchronousTestCase):
    """
    An acceptor that offers TLS, fed random handshakes in clear; beta's key
    is not marked legacy, so nothing in clear authenticates it.
    """

    def fresh(self):
        node = Node("alpha", make_clock(), MemoryKeys({"beta": KEY}, pending=OTHER_KEY))
        node.keys.strong_code = "7-ace-act"
        address = IPv4Address("TCP", "10.9.9.9", 40000)
        protocol = node.server.buildProtocol(address)
        transport = can_start_tls(StringTransportWithDisconnection(peerAddress=address))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        [challenge] = written(transport)
        self.assertIn("starttls/1", challenge.payload["caps"])
        return node, protocol, transport

    @fuzz
    @given(requests, st.lists(handshakes, min_size=1, max_size=6), st.booleans())
    def test_random_handshakes(self, request, messages, one_chunk):
        """
        Nothing raises, nobody is authenticated, the armed keys stay armed,
        and TLS starts only on a first line that asks for it, alone in its
        chunk.
        """
        node, protocol, transport = self.fresh()
        sent = encodable(request + messages)
        if one_chunk:
            protocol.dataReceived(b"".join(data for _, data in sent))
        else:
            for _, data in sent:
                protocol.dataReceived(data)
        self.assertIsNone(protocol.outcome)
        self.assertEqual(node.mesh.connected_count(), 0)
        self.assertEqual(node.keys.pending, OTHER_KEY)
        if transport.tls_started:
            self.assertEqual(transport.tls_started, [node.certificate.server_options()])
            first = sent[0][0]
            self.assertEqual(first.msg_type, "handshake")
            self.assertIs(first.payload["starttls"], True)
            self.assertTrue(len(sent) == 1 or not one_chunk)
        assert_still_serves(self, node)


class ConnectorFuzzTests(SynchronousTestCase):
    """
    A connector dialling alpha on a transport that can start TLS, fed
    random challenges, acks and bytes: it proves alpha's key in clear only
    in claudectl's form, only to a challenge that does not name a relaymesh
    node, and only if the key is marked legacy; it is authenticated only by
    alpha's ok to that proof.
    """

    def fresh(self, legacy):
        node = Node("beta", make_clock(), MemoryKeys({"alpha": KEY}))
        if legacy:
            node.keys.metas["alpha"] = {"legacy": True}
        protocol, transport = client_protocol(node.client("alpha"))
        return node, protocol, can_start_tls(transport)

    def assertProvedOnlyWhereItMay(self, sent, transport, legacy):
        answers = [decode(raw) for raw in transport.value().split(b"\n") if raw]
        self.assertLessEqual(len(answers), 1)
        for answer in answers:
            self.assertEqual(answer.msg_type, "handshake")
            challenge = sent[0]
            if "proof" in answer.payload:
                self.assertTrue(legacy)
                self.assertIsNone(challenge.payload.get("peer"))
                self.assertEqual(answer.payload, {"proof": compute_proof(KEY, challenge.payload["nonce"]), "version": VERSION})
            else:
                self.assertEqual(answer.payload, {"starttls": True, "version": VERSION})
                self.assertEqual(challenge.payload["peer"], "alpha")
                self.assertIn("starttls/1", challenge.payload["caps"])
        return answers

    @fuzz
    @given(openings, st.lists(acceptor_messages, min_size=1, max_size=5), st.booleans())
    def test_random_acceptor(self, opening, messages, legacy):
        node, protocol, transport = self.fresh(legacy)
        sent = encodable(opening[0] + opening[1] + messages)
        for _, data in sent:
            protocol.dataReceived(data)
        answers = self.assertProvedOnlyWhereItMay([m for m, _ in sent], transport, legacy)
        if protocol.outcome is not None:  # authenticated, whatever came after
            self.assertIn("proof", answers[0].payload)
            ack = sent[1][0]
            self.assertEqual((ack.msg_type, ack.from_peer, ack.payload["status"]), ("handshake_ack", "alpha", "ok"))

    @fuzz
    @given(st.lists(st.binary(max_size=300), max_size=12), st.booleans())
    def test_random_bytes(self, chunks, legacy):
        node, protocol, transport = self.fresh(legacy)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.assertIsNot(protocol.state, State.CONNECTED)
        self.assertEqual(transport.tls_started, [])

    @fuzz
    @given(st.data())
    def test_mutated_exchange(self, data):
        """
        claudectl's exchange with random byte changes authenticates only if
        it is still an unnamed challenge and alpha's ok.
        """
        node, protocol, transport = self.fresh(legacy=True)
        stream = bytearray(
            line(RelayMessage("c", "challenge", "", 1, {"nonce": "ab" * 32}))
            + line(RelayMessage("a", "handshake_ack", "alpha", 1, {"status": "ok"}))
        )
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            position = data.draw(st.integers(min_value=0, max_value=len(stream) - 2))
            stream[position] = data.draw(st.integers(min_value=0, max_value=255))
        protocol.dataReceived(bytes(stream))
        if transport.value():
            self.assertProvedOnlyWhereItMay([decode(bytes(stream).split(b"\n")[0])], transport, True)
        if protocol.state is State.CONNECTED:
            ack = decode(bytes(stream).split(b"\n")[1])
            self.assertEqual((ack.from_peer, ack.payload["status"]), ("alpha", "ok"))


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
