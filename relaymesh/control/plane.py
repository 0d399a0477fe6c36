"""
L{ControlPlane}: what the API's resources share about the node they serve.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from relaymesh.control.auth import authorize
from relaymesh.control.history import EventHistory
from relaymesh.control.hosts import HostPolicy
from relaymesh.control.metrics import NodeMetrics, RoundTrips
from relaymesh.control.requests import MAX_CONNECTIONS, REQUEST_DEADLINE
from relaymesh.control.sse import KEEPALIVE_INTERVAL, MAX_STREAM_BACKLOG, EventStream
from relaymesh.control.views import NodeViews
from relaymesh.interfaces import INode


class ControlPlane:
    """
    What the API serves, in one place: the node, its token, its clock, its
    views, its metrics and the open event streams.

    @ivar node: The node (L{INode}).
    @ivar mesh: The node's mesh (L{relaymesh.interfaces.IRelayMesh}).
    @ivar clock: The node's clock.
    @ivar token: The API token, or C{None} until it is loaded.
    @ivar metrics_public: Whether /metrics is served without the token.
    @ivar keepalive_interval: Seconds between an event stream's keepalives.
    @ivar max_stream_backlog: Bytes an event stream client may fall behind.
    @ivar hosts: The C{Host} headers the API answers.
    @ivar max_connections: Connections the API serves at once.
    @ivar request_deadline: Seconds a client has to send a whole request.
    @ivar started_at: When the control plane was made (clock seconds).
    @ivar round_trips: The node's L{RoundTrips}.
    @ivar metrics: The node's L{NodeMetrics}.
    @ivar views: The node's L{NodeViews}.
    @ivar streams: The open L{EventStream}s.
    @ivar history: The recent events (L{EventHistory}).
    @ivar api_address: Where the API listens (C{host:port}), once it does.
    """

    def __init__(
        self,
        node: INode,
        clock: IReactorTime,
        token: str | None = None,
        metrics_public: bool = False,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_stream_backlog: int = MAX_STREAM_BACKLOG,
        hosts: Iterable[str] = (),
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        """
        @param hosts: Names (or C{NAME:PORT}s) the API answers to besides
            the loopback names and its own address (L{HostPolicy}).
        @raise relaymesh.control.hosts.InvalidHost: for a name that does not
            parse.
        """
        self.node = node
        self.mesh = node.mesh
        self.clock = clock
        self.token = token
        self.metrics_public = metrics_public
        self.keepalive_interval = keepalive_interval
        self.max_stream_backlog = max_stream_backlog
        self.hosts = HostPolicy(hosts)
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.started_at = clock.seconds()
        self.round_trips = RoundTrips(self.mesh, clock)
        self.metrics = NodeMetrics(self.mesh, clock, self.round_trips, self.started_at)
        self.views = NodeViews(node, clock, self.round_trips.rtt_ms, self.started_at)
        self.streams: set[EventStream] = set()
        self.history = EventHistory(self.mesh, clock)
        self.api_address: str | None = None

    def authorize(self, request: Request, allow_cookie: bool = False) -> None:
        """
        Check the request's bearer token (or, if allowed, its token cookie).

        @raise relaymesh.control.requests.ApiError: 401 if the token is
            missing or wrong.
        """
        authorize(request, self.token, allow_cookie)

    def status(self) -> dict[str, Any]:
        """
        The node at a glance (see L{NodeViews.status}).
        """
        return self.views.status(self.api_address, len(self.streams))

    def open_stream(
        self, request: Request, wanted: frozenset[str] | None, history: int = 0
    ) -> EventStream:
        """
        Start answering a request with an event stream, kept in L{streams}
        until it ends.

        @param wanted: The event types to send (C{None}: all).
        @param history: How many recent events of those types to send
            first.
        """
        stream = EventStream(
            request,
            self.mesh,
            self.clock,
            wanted,
            self.keepalive_interval,
            self.max_stream_backlog,
            replay=self.history.recent(history, wanted),
            peer_object=self.history.joins.event_object,
        )
        self.streams.add(stream)
        stream.finished.addBoth(lambda _: self.streams.discard(stream))
        stream.start()
        return stream

    def close_streams(self) -> None:
        """
        End every open event stream (the node is stopping).
        """
        for stream in list(self.streams):
            stream.close()
