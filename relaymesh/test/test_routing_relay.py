"""
Tests for how a relay forwards routed messages (L{relaymesh.routing.router}):
the forwarded line written from the header checked once as it arrived.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.routing.envelope import RouteHeader, encode_routed, routed_line
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
