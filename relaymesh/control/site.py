"""
The API's site: the resources of L{relaymesh.control.resources} behind an
HTTP channel with limits, a cap on connections and a check of the C{Host}
header.

  - At most L{ControlPlane.max_connections} connections are open at once; a
    connection over the cap is closed as soon as it is accepted, so a flood
    of connections cannot use up the node's file descriptors.
  - A client has L{ControlPlane.request_deadline} seconds to send each whole
    request (its line, headers and body), counted from when the connection
    opened or the previous answer was written; the same deadline closes an
    idle connection. A request that is slow to arrive is answered 408 and
    the connection closed.
  - A body announced (or sent) larger than L{MAX_BODY} is answered 413
    before it is read.
  - A request whose C{Host} is not the API's (L{relaymesh.control.hosts})
    is answered 421.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from relaymesh.control.hosts import HostPolicy
from relaymesh.control.plane import ControlPlane
from relaymesh.control.requests import MAX_BODY, ApiError, ApiRequest, dumps, write_error
from relaymesh.control.resources import Root

#: Seconds a refused connection has to read its answer and close before it
#: is cut.
CLOSE_GRACE = 2.0

#: Reason phrases where Twisted has none (421) or an old one (408).
_REASONS = {408: b"Request Timeout", 421: b"Misdirected Request"}

_log = Logger()


def raw_answer(status: int, message: str) -> bytes:
    """
    A whole HTTP answer with a JSON error, for a connection that is closed
    after it (there is no request object to answer through).
    """
    body = dumps({"error": message}) + b"\n"
    reason = _REASONS.get(status) or http.RESPONSES.get(status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, len(body))
    )
    return head + body


class ApiChannel(http.HTTPChannel):
    """
    An HTTP channel with a deadline for each request and a limit on bodies
    (see the module's docstring).

    @ivar site: The L{ApiSite} (set when it builds the channel).
    @ivar transport: Its connection's transport: TCP, TLS or UNIX, each of
        which can abort the connection (as C{ITCPTransport} says, and
        C{ITransport} does not).
    @ivar refused: Whether the channel answered an error of its own and
        takes no more input.
    """

    site: ApiSite
    transport: ITCPTransport
    refused = False
    _timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        http.HTTPChannel.connectionMade(self)
        self._arm(self.site.request_deadline, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if not self.refused:
            http.HTTPChannel.dataReceived(self, data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            http.HTTPChannel.rawDataReceived(self, data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY:
            self.refuse(http.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
            return
        http.HTTPChannel.allHeadersReceived(self)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._disarm()
        http.HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Request) -> None:
        # Armed before the channel reads what the client sent meanwhile: a
        # request already whole in it disarms the deadline again.
        self._arm(self.site.request_deadline, self._too_slow)
        http.HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.site.channel_closed(self)
        http.HTTPChannel.connectionLost(self, reason)

    def refuse(self, status: int, message: str) -> None:
        """
        Answer an error of the channel's own, take no more input, and close:
        the write side at once, the whole connection when the client closes
        or after L{CLOSE_GRACE} seconds.
        """
        if self.refused:
            return
        self.refused = True
        transport = self.transport
        transport.write(raw_answer(status, message))
        getattr(transport, "loseWriteConnection", transport.loseConnection)()
        self._arm(CLOSE_GRACE, transport.abortConnection)

    def _too_slow(self) -> None:
        self._timer = None
        if self.refused or getattr(self.transport, "disconnecting", False):
            self.transport.abortConnection()
            return
        self.refuse(
            http.REQUEST_TIMEOUT,
            f"no whole request within {self.site.request_deadline:g} s",
        )

    def _arm(self, seconds: float, action: Callable[[], object]) -> None:
        self._disarm()
        self._timer = self.site.clock.callLater(seconds, action)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class OverCap(Protocol):
    """
    A connection over the cap: closed as soon as it is made. (A factory may
    not return C{None} for a connection: a TLS endpoint's wrapper would
    fail on it.)
    """

    transport: ITCPTransport

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class Refusal(Resource):
    """
    Answers every request with one error.

    @ivar error: The error.
    """

    isLeaf = True

    def __init__(self, error: ApiError) -> None:
        Resource.__init__(self)
        self.error = error

    def render(self, request: Request) -> bytes:
        body = write_error(request, self.error)
        request.setResponseCode(self.error.status, _REASONS.get(self.error.status))
        return body


class ApiSite(Site):
    """
    The API's site: L{ApiChannel}s, at most C{max_connections} of them at
    once, L{ApiRequest}s, the C{Host} check, no tracebacks shown, and no
    access log lines in the node's log.

    @ivar clock: Times the deadlines.
    @ivar hosts: The C{Host} headers answered.
    @ivar max_connections: Connections open at once at most.
    @ivar request_deadline: Seconds to send a whole request.
    @ivar channels: The open channels.
    @ivar refused_connections: Connections closed at once for the cap.
    """

    # Twisted types a site's protocol as its own HTTP/2-capable wrapper of
    # HTTPChannel; a site may serve any HTTPChannel subclass instead.
    protocol = ApiChannel  # type: ignore[assignment]
    requestFactory = ApiRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: Resource,
        clock: IReactorTime,
        hosts: HostPolicy,
        max_connections: int,
        request_deadline: float,
    ) -> None:
        Site.__init__(self, resource, reactor=clock, timeout=None)
        self.clock = clock
        self.hosts = hosts
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.channels: set[ApiChannel] = set()
        self.refused_connections = 0
        self._full = False

    # The override returns what the protocol above makes (see there).
    def buildProtocol(self, addr: IAddress | None) -> ApiChannel | OverCap:  # type: ignore[override]
        """
        A channel, or an L{OverCap} that closes the connection at once when
        C{max_connections} are open.
        """
        if len(self.channels) >= self.max_connections:
            self.refused_connections += 1
            if not self._full:
                self._full = True
                _log.warn(
                    "control API: {count} connections open, the most it serves; "
                    "closing new ones until some end",
                    count=len(self.channels),
                )
            return OverCap()
        channel: ApiChannel = Site.buildProtocol(self, addr)
        self.channels.add(channel)
        return channel

    def channel_closed(self, channel: ApiChannel) -> None:
        """
        A channel's connection ended.
        """
        self.channels.discard(channel)
        if self._full and len(self.channels) < self.max_connections:
            self._full = False
            _log.info(
                "control API: taking connections again ({count} closed at once so far)",
                count=self.refused_connections,
            )

    def getResourceFor(self, request: Request) -> IResource:
        """
        The resource for a request, or a L{Refusal} (421) if its C{Host} is
        not the API's.
        """
        local = request.getHost()
        problem = self.hosts.refusal(
            request.getHeader(b"host"),
            getattr(local, "host", None),
            getattr(local, "port", None),
            request.isSecure(),
        )
        if problem is not None:
            request.site = self
            return Refusal(ApiError(421, problem))
        found: IResource = Site.getResourceFor(self, request)
        return found

    def log(self, request: http.Request) -> None:
        pass


def make_site(control: ControlPlane) -> ApiSite:
    """
    The site serving the control plane.
    """
    return ApiSite(
        Root(control),
        control.clock,
        control.hosts,
        control.max_connections,
        control.request_deadline,
    )
