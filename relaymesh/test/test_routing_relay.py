"""
Tests for how a relay forwards routed messages (L{relaymesh.routing.router}):
the forwarded line written from the header checked once as it arrived, and
the relay's backpressure: it stops reading from a neighbour while the next
hop's send buffer is full.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.routing import envelope
from relaymesh.routing.envelope import (
    VALID_IDS_KEPT,
    EnvelopeError,
    RouteHeader,
    encode_routed,
    route_fields,
    routed_line,
)
from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL, HOLD_AT_MOST
from relaymesh.test.support import Node, connect, make_clock, pair_keys
from relaymesh.wire import RelayMessage


class RoutedLineTests(SynchronousTestCase):
    def test_same_line(self):
        """
        The line a relay writes from a header's values is the line
        L{encode_routed} writes from the header.
        """
        message = RelayMessage("msg_0_7_cd", "delegate_task", "beta", 1795718866757, None)
        for header in (
            RouteHeader("alpha", "delta", 2, "msg_0_7_cd"),
            RouteHeader("alpha", "delta", 15, "msg_0_7_cd/3"),
        ):
            self.assertEqual(
                routed_line(
                    message.id,
                    message.msg_type,
                    message.from_peer,
                    message.timestamp,
                    (header.origin, header.to, header.hops, header.origin_id),
                    "c2VhbGVk",
                ),
                encode_routed(message, header, "c2VhbGVk"),
            )


class RememberedIdsTests(SynchronousTestCase):
    def header(self, origin, to="delta"):
        return {"origin": origin, "to": to, "hops": 1, "origin_id": "m"}

    def test_only_valid_ids_remembered(self):
        """
        The peer ids a header names are remembered once found valid; an
        invalid one is refused every time, however often it comes.
        """
        envelope._VALID_IDS.clear()
        self.assertEqual(route_fields(self.header("alpha")), ("alpha", "delta", 1, "m"))
        self.assertEqual(envelope._VALID_IDS, {"alpha", "delta"})
        for bad in ("a b", "_pending", "x" * 129, 7, ["alpha"], None):
            for _ in range(2):
                self.assertRaises(EnvelopeError, route_fields, self.header(bad))
                self.assertRaises(EnvelopeError, route_fields, self.header("alpha", bad))
        self.assertEqual(envelope._VALID_IDS, {"alpha", "delta"})

    def test_bounded(self):
        """
        At most L{VALID_IDS_KEPT} ids are remembered: one more starts
        afresh.
        """
        envelope._VALID_IDS.clear()
        for i in range(VALID_IDS_KEPT + 1):
            route_fields(self.header(f"n{i}"))
        self.assertLessEqual(len(envelope._VALID_IDS), VALID_IDS_KEPT)
        self.assertIn(f"n{VALID_IDS_KEPT}", envelope._VALID_IDS)


class Spy:
    """
    Records when a transport is told to stop and start reading.
    """

    def __init__(self, transport) -> None:
        self.calls: list[str] = []
        transport.pauseProducing = lambda: self.calls.append("pause")
        transport.resumeProducing = lambda: self.calls.append("resume")


class RelayBackpressureTests(SynchronousTestCase):
    """
    alpha — beta — gamma, beta accepting both; alpha and gamma are paired,
    so alpha's messages for gamma go through beta.
    """

    def setUp(self):
        self.clock = make_clock()
        self.nodes = {
            name: Node(name, self.clock, routing=True) for name in ("alpha", "beta", "gamma")
        }
        alpha, beta, gamma = (self.nodes[n] for n in ("alpha", "beta", "gamma"))
        pair_keys(alpha, gamma)
        pair_keys(beta, alpha)
        pair_keys(beta, gamma)
        self.from_alpha, _, self.alpha_link = connect(beta, alpha, host="10.0.1.2")
        self.to_gamma, _, self.gamma_link = connect(beta, gamma, host="10.0.2.2")
        for _ in range(6):
            self.flush()
            self.clock.advance(ADVERTISE_MIN_INTERVAL)
        self.flush()
        self.assertIsNotNone(alpha.router.route("gamma"))
        self.spy = Spy(self.from_alpha.transport)

    def flush(self):
        for _ in range(3):
            self.alpha_link.flush()
            self.gamma_link.flush()

    def send(self, n=1):
        for i in range(n):
            self.nodes["alpha"].mesh.send("gamma", "delegate_task", {"n": i})
        self.flush()

    def tasks(self):
        return [m.payload for _, m in self.nodes["gamma"].received if m.msg_type == "delegate_task"]

    def test_reads_on_while_the_next_hop_takes_more(self):
        """
        While the next hop's connection has room, the relay reads on.
        """
        self.send(3)
        self.assertEqual(self.tasks(), [{"n": 0}, {"n": 1}, {"n": 2}])
        self.assertEqual(self.spy.calls, [])

    def test_held_until_the_next_hop_has_room(self):
        """
        A message forwarded to a next hop whose send buffer is full stops
        the relay reading from the neighbour it came from (once, however
        many follow), until that buffer has room again.
        """
        self.to_gamma.pauseProducing()  # what a full send buffer does
        self.send(2)
        self.assertEqual(self.spy.calls, ["pause"])
        self.to_gamma.resumeProducing()
        self.assertEqual(self.spy.calls, ["pause", "resume"])
        self.flush()
        self.assertEqual(self.tasks(), [{"n": 0}, {"n": 1}])
        self.send(1)
        self.assertEqual(self.spy.calls, ["pause", "resume"])

    def test_released_when_the_next_hop_is_gone(self):
        """
        A neighbour held for a next hop whose connection ends is read from
        again.
        """
        self.to_gamma.pauseProducing()
        self.send(1)
        self.assertEqual(self.spy.calls, ["pause"])
        self.to_gamma.close("closed by the test")
        self.flush()
        self.assertEqual(self.spy.calls, ["pause", "resume"])

    def test_not_released_once_closed(self):
        """
        A held neighbour whose own connection this node closed meanwhile
        is not read from again.
        """
        self.to_gamma.pauseProducing()
        self.send(1)
        self.from_alpha.close("closed by the test")
        self.to_gamma.resumeProducing()
        self.assertEqual(self.spy.calls, ["pause"])

    def test_held_one_second_at_most(self):
        """
        A neighbour is held for L{HOLD_AT_MOST} seconds at most, then read
        from again even if the next hop still has no room, and not held
        again for it until it has had room (relays holding each other
        around a loop are not stalled for good).
        """
        self.to_gamma.pauseProducing()
        self.send(1)
        self.clock.advance(HOLD_AT_MOST - 0.01)
        self.assertEqual(self.spy.calls, ["pause"])
        self.clock.advance(0.01)
        self.assertEqual(self.spy.calls, ["pause", "resume"])
        self.send(2)
        self.assertEqual(self.spy.calls, ["pause", "resume"])
        self.to_gamma.resumeProducing()
        self.assertEqual(self.spy.calls, ["pause", "resume"])
        self.to_gamma.pauseProducing()
        self.send(1)
        self.assertEqual(self.spy.calls, ["pause", "resume", "pause"])
        self.to_gamma.resumeProducing()
        self.assertEqual(self.spy.calls, ["pause", "resume", "pause", "resume"])
        self.clock.advance(HOLD_AT_MOST)
        self.assertEqual(self.spy.calls, ["pause", "resume", "pause", "resume"])
        self.flush()
        self.assertEqual(len(self.tasks()), 4)

    def test_stop_forgets_holds(self):
        """
        A stopping router leaves no timer behind for its holds.
        """
        self.to_gamma.pauseProducing()
        self.send(1)
        router = self.nodes["beta"].router
        self.assertIn(self.from_alpha, router.holds)
        router.stop()
        self.assertNotIn(self.from_alpha, router.holds)
        self.clock.advance(HOLD_AT_MOST)
        self.assertEqual(self.spy.calls, ["pause"])
