"""
Round trips between relaymesh nodes: the C{ping} and C{pong} link messages.

A node that announces C{ping/1} in its handshake answers every C{ping} of
a peer that announced it too with a C{pong} at once, on the same
connection::

    {"id": "msg_...", "msg_type": "ping", "from_peer": "alpha", "timestamp": ..., "payload": {}}
    {"id": "msg_...", "msg_type": "pong", "from_peer": "beta", "timestamp": ...,
     "payload": {"ping_id": "msg_..."}}

The pinging node times the C{pong} from the moment its C{ping} went to the
transport. It sends one only when the line goes out at once (nothing of
the connection waits to be written, its send buffer has room, no batch is
open), and a node whose send buffer is full does not answer: no wait in a
queue is ever counted as a round trip. A C{ping} still unanswered when the
next is sent is forgotten, and a C{pong} that names anything but the
C{ping} waiting is not timed.

Both types are link messages: the connection handles them and never hands
them to the mesh, so no application, event stream or deduplication window
sees one. A claudectl peer announces nothing, so it is never sent one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relaymesh.handshake.proofs import CAP_PING
from relaymesh.wire import PING_TYPE, PONG_TYPE, RelayMessage

#: The payload field of a C{pong} that names the C{ping} it answers.
PING_ID_FIELD = "ping_id"

#: Told the peer id and the seconds a C{ping} took to be answered.
PongCallback = Callable[[str, float], None]


class Pinger:
    """
    The C{ping}/C{pong} half of a relay connection.

    Mixed into L{relaymesh.connection.RelayProtocol}, which provides the
    rest: C{owner}, C{clock}, C{outcome}, C{peer_id}, C{close_reason},
    C{sendMessage} and the outbound state of L{relaymesh.outbound.LineWriter}.
    """

    owner: Any
    clock: Any
    outcome: Any
    peer_id: str | None
    close_reason: str | None
    writable: bool
    _pending: list[bytes]
    _writes: Any
    _outbound_closed: bool
    # the ping waiting for its pong: (id, when written, who is told)
    _ping: tuple[str, float, PongCallback] | None

    def sendMessage(self, message: RelayMessage) -> None:
        raise NotImplementedError

    def pings(self) -> bool:
        """
        Whether the authenticated peer announced C{ping/1}: it answers a
        C{ping} at once. A claudectl peer never does, and is never sent one.
        """
        return self.outcome is not None and CAP_PING in self.outcome.capabilities

    def ping(self, answered: PongCallback) -> bool:
        """
        Send the peer a C{ping}, timed from now, if it announced C{ping/1}
        and the line goes to the transport at once. A ping still waiting for
        its C{pong} is forgotten first.

        @param answered: Called with the peer id and the seconds until the
            C{pong} came, if it comes.
        @return: whether a ping was sent.
        """
        self._ping = None
        if not self.pings() or self.close_reason is not None or self._outbound_closed:
            return False
        if not self.writable or self._pending or self._writes.depth:
            return False  # it would wait behind other lines
        message = self.owner.message(PING_TYPE, {})
        self.sendMessage(message)
        self._ping = (message.id, self.clock.seconds(), answered)
        return True

    def _linkMessage(self, message: RelayMessage) -> None:
        """
        A C{ping} or C{pong} from the authenticated peer. A C{ping} is
        answered at once, unless the send buffer is full; a C{pong} that
        names the C{ping} waiting for it gives a round trip. Neither goes
        any further; from a peer that did not announce C{ping/1}, both are
        dropped.
        """
        if not self.pings():
            return
        if message.msg_type == PING_TYPE:
            if self.writable:
                self.sendMessage(self.owner.message(PONG_TYPE, {PING_ID_FIELD: message.id}))
            return
        waiting = self._ping
        payload = message.payload
        if waiting is None or type(payload) is not dict or payload.get(PING_ID_FIELD) != waiting[0]:
            return  # late, or not an answer to ours: not timed
        self._ping = None
        _, sent_at, answered = waiting
        assert self.peer_id is not None
        answered(self.peer_id, self.clock.seconds() - sent_at)
