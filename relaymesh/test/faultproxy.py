"""
A TCP proxy for fault-injection tests: it sits between two nodes on
127.0.0.1 and breaks the link between them on command::

    proxy = FaultProxy(reactor, "127.0.0.1", acceptor_port)
    self.addCleanup(proxy.stop)
    # dial proxy.port instead of acceptor_port, then:
    proxy.blackhole()   # the peer vanishes: sockets stay open, nothing flows
    proxy.restore()     # ... and comes back; held bytes flow on, in order
    proxy.delay(0.5)    # every byte from now on arrives half a second late
    proxy.cut()         # both sides see an orderly close (FIN)
    proxy.reset()       # both sides see a connection reset (RST)
    proxy.refuse()      # new connections are closed at once

Modes apply to every proxied connection, current and future. Delays use
the clock given (the reactor by default), so a test with a
L{twisted.internet.task.Clock} decides exactly when delayed bytes move.
"""

from __future__ import annotations

import collections
import socket
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, ISystemHandle, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds the proxy waits for the target to accept a connection.
CONNECT_TIMEOUT = 5.0

#: What marks the end of one direction's stream in a pipe's queue.
_EOF = object()


class _End(Protocol):
    """
    One socket of a proxied connection: the client's or the target's.
    """

    #: The proxy runs on real TCP sockets only.
    transport: ITCPTransport

    def __init__(self, proxy: FaultProxy, link: _Link | None, role: str) -> None:
        self.proxy = proxy
        self.link = link
        self.role = role
        self.gone = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # pragma: no cover
            pass
        if self.role == "client":
            self.proxy._accepted(self)

    def dataReceived(self, data: bytes) -> None:
        if self.link is None:
            return
        if self.role == "client":
            self.proxy.received_from_client += len(data)
        else:
            self.proxy.received_from_target += len(data)
        self.link.pipe_from(self).push(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        if self.link is not None:
            self.link.end_lost(self)
        self.lost.callback(None)

    def close(self) -> None:
        """
        Close with a FIN after what is already written.
        """
        if not self.gone:
            self.transport.loseConnection()

    def abort(self, reset: bool) -> None:
        """
        Close at once; with C{reset}, make sure the peer gets an RST.
        """
        if self.gone:
            return
        if reset:
            handle = ISystemHandle(self.transport).getHandle()
            assert isinstance(handle, socket.socket)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class _Pipe:
    """
    One direction of a proxied connection: bytes wait here until their time
    comes and the proxy is not holding them.
    """

    def __init__(self, proxy: FaultProxy, to_target: bool) -> None:
        self.proxy = proxy
        self.to_target = to_target
        self.dest: _End | None = None
        self.queue: collections.deque[tuple[float, Any]] = collections.deque()
        self.timer: IDelayedCall | None = None
        self.last_due = 0.0

    def push(self, item: Any) -> None:
        """
        Queue bytes (or L{_EOF}) to go out after the proxy's current delay.
        """
        proxy = self.proxy
        if proxy._dropping:
            if item is not _EOF:
                proxy.bytes_dropped += len(item)
            return
        self.last_due = max(self.last_due, proxy.clock.seconds() + proxy._delay)
        self.queue.append((self.last_due, item))
        if self.timer is None:
            self.pump()

    def pump(self) -> None:
        """
        Send everything that is due, and wait for the rest.
        """
        self.timer = None
        if self.proxy._held or self.dest is None:
            return
        clock = self.proxy.clock
        now = clock.seconds()
        while self.queue:
            due, item = self.queue[0]
            if due > now:
                self.timer = clock.callLater(due - now, self.pump)
                return
            self.queue.popleft()
            self._emit(item)

    def _emit(self, item: Any) -> None:
        dest = self.dest
        if dest is None or dest.gone:
            if item is not _EOF:
                self.proxy.bytes_dropped += len(item)
            return
        if item is _EOF:
            dest.close()
            return
        dest.transport.write(item)
        if self.to_target:
            self.proxy.bytes_to_target += len(item)
        else:
            self.proxy.bytes_to_client += len(item)

    def clear(self) -> None:
        """
        Forget everything queued and stop waiting.
        """
        self.queue.clear()
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None


class _Link:
    """
    One proxied connection: the client's socket, the target's, and a pipe
    each way.
    """

    log = Logger()

    def __init__(self, proxy: FaultProxy, client: _End) -> None:
        self.proxy = proxy
        self.client = client
        self.target: _End | None = None
        self.to_target = _Pipe(proxy, to_target=True)
        self.to_client = _Pipe(proxy, to_target=False)
        self.to_client.dest = client
        self.connecting: defer.Deferred | None = None

    def dial(self, reactor: Any, host: str, port: int) -> None:
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        self.connecting = connectProtocol(endpoint, _End(self.proxy, self, "target"))
        self.connecting.addCallbacks(self._dialled, self._dial_failed)

    def _dialled(self, target: _End) -> None:
        self.connecting = None
        self.target = target
        self.to_target.dest = target
        if self.to_target.timer is None:
            self.to_target.pump()

    def _dial_failed(self, reason: Failure) -> None:
        self.connecting = None
        if not reason.check(defer.CancelledError):
            self.log.debug("fault proxy could not reach its target: {reason}", reason=reason.value)
        self.client.close()
        self._maybe_done()

    def pipe_from(self, end: _End) -> _Pipe:
        return self.to_target if end is self.client else self.to_client

    def end_lost(self, end: _End) -> None:
        # The close travels like data: delayed, held or dropped with it.
        self.pipe_from(end).push(_EOF)
        self._maybe_done()

    def ends(self) -> list[_End]:
        return [e for e in (self.client, self.target) if e is not None]

    def stop_dialling(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()

    def clear(self) -> None:
        self.to_target.clear()
        self.to_client.clear()

    def _maybe_done(self) -> None:
        if self.connecting is None and all(e.gone for e in self.ends()):
            self.clear()
            self.proxy._links.discard(self)


class _ProxyFactory(Factory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _End:
        return _End(self.proxy, None, "client")


class FaultProxy:
    """
    A TCP proxy on 127.0.0.1 that can cut, reset, blackhole, delay and
    refuse the connections it carries.

    @ivar port: The port it listens on.
    @ivar target_host: Where it connects to.
    @ivar target_port: Where it connects to.
    @ivar clock: The L{IReactorTime} delays use.
    @ivar received_from_client: Bytes read from clients.
    @ivar received_from_target: Bytes read from the target.
    @ivar bytes_to_target: Bytes forwarded to the target.
    @ivar bytes_to_client: Bytes forwarded to clients.
    @ivar bytes_dropped: Bytes read and never forwarded.
    @ivar accepted: Connections accepted and proxied.
    @ivar refused: Connections closed at once by L{refuse}.
    """

    def __init__(
        self,
        reactor: Any,
        target_host: str,
        target_port: int,
        clock: Any = None,
        interface: str = "127.0.0.1",
    ) -> None:
        """
        Start listening on C{interface}, on a port the system picks.

        @param reactor: An L{IReactorTCP} (and L{IReactorTime}).
        @param clock: The L{IReactorTime} for delays; the reactor if L{None}.
        """
        self._reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.target_host = target_host
        self.target_port = target_port
        self.received_from_client = self.received_from_target = 0
        self.bytes_to_target = self.bytes_to_client = self.bytes_dropped = 0
        self.accepted = self.refused = 0
        self._links: set[_Link] = set()
        self._refused_ends: set[_End] = set()
        self._delay = 0.0
        self._held = False
        self._dropping = False
        self._refusing = False
        self._stopped: defer.Deferred | None = None
        self._listener = reactor.listenTCP(0, _ProxyFactory(self), interface=interface)
        self.port: int = self._listener.getHost().port

    @property
    def bytes_forwarded(self) -> int:
        """
        Bytes forwarded in both directions.
        """
        return self.bytes_to_target + self.bytes_to_client

    def links(self) -> int:
        """
        How many proxied connections are open (on either side).
        """
        return len(self._links)

    # -- faults --------------------------------------------------------------

    def cut(self) -> None:
        """
        Close every proxied connection on both sides with a FIN; bytes not
        yet forwarded are dropped.
        """
        for link in list(self._links):
            link.clear()
            link.stop_dialling()
            for end in link.ends():
                end.close()

    def reset(self) -> None:
        """
        Abort every proxied connection on both sides with an RST.
        """
        for link in list(self._links):
            link.clear()
            link.stop_dialling()
            for end in link.ends():
                end.abort(reset=True)

    def blackhole(self, drop: bool = False) -> None:
        """
        Stop forwarding in both directions, silently: sockets stay open and
        keep reading, closes are not passed on either, as when a peer's host
        vanishes or a link goes dark.

        @param drop: Discard what arrives meanwhile, instead of holding it
            for L{restore}. Held bytes keep each stream intact, as TCP would;
            dropped bytes leave a gap, so cut the connections before
            restoring if anything reads them as lines.
        """
        self._held = True
        self._dropping = drop

    def restore(self) -> None:
        """
        End a blackhole: held bytes (and closes) flow on, in order.
        """
        self._held = self._dropping = False
        for link in list(self._links):
            for pipe in (link.to_target, link.to_client):
                if pipe.timer is None:
                    pipe.pump()

    def delay(self, seconds: float) -> None:
        """
        Forward every byte read from now on C{seconds} late (0 for no delay).
        Order is kept: bytes never overtake ones read before them.
        """
        if not seconds >= 0:
            raise ValueError("delay must be a non-negative number of seconds")
        self._delay = float(seconds)

    def refuse(self, refusing: bool = True) -> None:
        """
        Close every new connection at once (C{refusing=False}: proxy again).
        Connections already proxied are not touched.
        """
        self._refusing = refusing

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening and abort every connection.

        @return: a L{Deferred} that fires once the port and every socket
            are closed. Stopping twice is harmless.
        """
        if self._stopped is not None:
            return _after(self._stopped)
        self._refusing = True
        waits = [defer.maybeDeferred(self._listener.stopListening)]
        for link in list(self._links):
            link.clear()
            link.stop_dialling()
            for end in link.ends():
                if not end.gone:
                    waits.append(end.lost)
                    end.abort(reset=False)
        for end in list(self._refused_ends):
            waits.append(end.lost)
            end.abort(reset=False)
        self._stopped = defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
        return _after(self._stopped)

    # -- called by the ends --------------------------------------------------

    def _accepted(self, client: _End) -> None:
        if self._refusing:
            self.refused += 1
            self._refused_ends.add(client)
            client.lost.addCallback(lambda _: self._refused_ends.discard(client))
            client.transport.loseConnection()
            return
        self.accepted += 1
        link = client.link = _Link(self, client)
        self._links.add(link)
        link.dial(self._reactor, self.target_host, self.target_port)


def _after(d: defer.Deferred) -> defer.Deferred:
    """
    A new L{Deferred} that fires with C{d}'s result, leaving C{d} alone.
    """
    follower: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        (follower.errback if isinstance(result, Failure) else follower.callback)(result)
        return None

    d.addBoth(relay)
    return follower
