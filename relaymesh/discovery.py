"""
LAN discovery: nodes announce themselves by UDP broadcast, and
C{relaymesh discover} lists who it hears.

An announcement is one datagram to UDP port 9848: the four bytes C{CCTL}
followed by the JSON object C{{"identity": ID, "port": TCP_PORT, "version":
VERSION}}, as claudectl sends it. It carries no secret: it says who listens
where, and pairing still needs an invite.

L{Announcer} is a service that sends one every L{ANNOUNCE_INTERVAL} seconds;
L{AnnouncementReceiver} parses what arrives, ignoring its own node and
anything malformed; L{discover} listens for a while and returns what it
heard.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaymesh.address import InvalidAddress, format_hostport, parse_port
from relaymesh.handshake.proofs import VERSION
from relaymesh.peerid import is_valid_peer_id

#: The UDP port announcements go to.
ANNOUNCE_PORT = 9848  # claudectl 0.49: 9848

#: What every announcement starts with.
ANNOUNCE_MAGIC = b"CCTL"  # claudectl 0.49: CCTL

#: Seconds between announcements.
ANNOUNCE_INTERVAL = 5.0

#: Where announcements go unless told otherwise: the local network.
BROADCAST_ADDRESS = "255.255.255.255"

#: Seconds C{relaymesh discover} listens by default: a little more than one
#: announcement interval.
DEFAULT_LISTEN_SECONDS = ANNOUNCE_INTERVAL + 1.0

#: Longest datagram considered; longer ones are not announcements.
MAX_ANNOUNCEMENT_BYTES = 2048

#: Longest version string accepted.
MAX_VERSION_LENGTH = 64


class InvalidAnnouncement(ValueError):
    """
    A datagram that is not an announcement; the message says why.
    """


@dataclass(frozen=True)
class Announcement:
    """
    What a node says about itself.

    @ivar identity: its peer id.
    @ivar port: the TCP port it accepts peers on.
    @ivar version: its version string.
    """

    identity: str
    port: int
    version: str

    def encode(self) -> bytes:
        """
        The datagram: C{CCTL} and compact JSON.
        """
        body = {"identity": self.identity, "port": self.port, "version": self.version}
        return ANNOUNCE_MAGIC + json.dumps(body, separators=(",", ":")).encode("utf-8")


def parse_announcement(data: bytes) -> Announcement:
    """
    Read an announcement datagram.

    @param data: the datagram.
    @return: the announcement.
    @raise InvalidAnnouncement: if it is not one: no C{CCTL}, not a JSON
        object, an invalid peer id, a port that is no TCP port, a version
        that is not a short string.
    """
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise InvalidAnnouncement(f"{len(data)} bytes is too long")
    if not data.startswith(ANNOUNCE_MAGIC):
        raise InvalidAnnouncement("does not start with CCTL")
    try:
        body = json.loads(data[len(ANNOUNCE_MAGIC) :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidAnnouncement("not JSON after CCTL") from None
    if not isinstance(body, dict):
        raise InvalidAnnouncement("not a JSON object after CCTL")
    identity, port, version = body.get("identity"), body.get("port"), body.get("version")
    if not is_valid_peer_id(identity):
        raise InvalidAnnouncement(f"invalid identity {str(identity)[:40]!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidAnnouncement(f"invalid port {str(port)[:20]!r}")
    if not isinstance(version, str) or len(version) > MAX_VERSION_LENGTH:
        raise InvalidAnnouncement(f"invalid version {str(version)[:20]!r}")
    if not version.isprintable():
        raise InvalidAnnouncement("version holds control characters")
    return Announcement(identity, port, version)


@dataclass(frozen=True)
class Sighting:
    """
    A node heard on the network.

    @ivar identity: its peer id.
    @ivar host: the address the announcement came from.
    @ivar port: the TCP port it announced.
    @ivar version: its version string.
    """

    identity: str
    host: str
    port: int
    version: str

    @property
    def addr(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 host.
        """
        return format_hostport(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        """
        The sighting as a JSON object.
        """
        return {
            "identity": self.identity,
            "addr": self.addr,
            "host": self.host,
            "port": self.port,
            "version": self.version,
        }


class AnnouncementSender(DatagramProtocol):
    """
    The sending socket's protocol: it expects nothing.
    """

    noisy = False


class Announcer(Service):
    """
    Announces a node every L{ANNOUNCE_INTERVAL} seconds while running.

    @ivar target: where announcements go, C{(ip, port)}.
    @ivar sent: how many announcements were sent.
    """

    log = Logger()

    def __init__(
        self,
        identity: str,
        port: Callable[[], int | None],
        reactor: Any,
        target: tuple[str, int] = (BROADCAST_ADDRESS, ANNOUNCE_PORT),
        interval: float = ANNOUNCE_INTERVAL,
        version: str = VERSION,
    ) -> None:
        """
        @param identity: the node's peer id.
        @param port: returns the TCP port the node listens on, or L{None}
            while it does not (then nothing is sent).
        @param reactor: an L{IReactorUDP} and L{IReactorTime}.
        @param target: where to send, an IP address and a UDP port.
        @param interval: seconds between announcements.
        @param version: the version to announce.
        """
        self.identity = identity
        self._port = port
        self._reactor = reactor
        self.target = target
        self.interval = interval
        self.version = version
        self.sent = 0
        self._udp: IListeningPort | None = None
        self._loop: LoopingCall | None = None
        self._failing = False

    def startService(self) -> None:
        Service.startService(self)
        self._udp = self._reactor.listenUDP(0, AnnouncementSender())
        self._udp.setBroadcastAllowed(True)
        self._loop = LoopingCall(self.announce)
        self._loop.clock = self._reactor
        d = self._loop.start(self.interval, now=True)
        d.addErrback(lambda f: self.log.failure("announcements stopped", f))

    def stopService(self) -> Deferred | None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        udp, self._udp = self._udp, None
        if udp is not None:
            return udp.stopListening()
        return None

    def announce(self) -> None:
        """
        Send one announcement now, if the node listens; a send that fails
        is logged once until one succeeds again.
        """
        port = self._port()
        if port is None or self._udp is None:
            return
        datagram = Announcement(self.identity, port, self.version).encode()
        try:
            self._udp.write(datagram, self.target)
        except OSError as e:
            if not self._failing:
                self._failing = True
                self.log.warn(
                    "cannot announce to {target}: {error}",
                    target="%s:%d" % self.target,
                    error=e,
                )
            return
        self._failing = False
        self.sent += 1


class AnnouncementReceiver(DatagramProtocol):
    """
    Hears announcements and reports each one from another node.
    """

    log = Logger()
    noisy = False

    def __init__(self, on_sighting: Callable[[Sighting], None], ignore: str | None = None) -> None:
        """
        @param on_sighting: called with each L{Sighting}.
        @param ignore: this node's own identity, to leave out.
        """
        self.on_sighting = on_sighting
        self.ignore = ignore

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            announcement = parse_announcement(datagram)
        except InvalidAnnouncement as e:
            self.log.debug("ignored a datagram from {addr}: {error}", addr=addr, error=e)
            return
        if announcement.identity == self.ignore:
            return
        sighting = Sighting(announcement.identity, addr[0], announcement.port, announcement.version)
        try:
            self.on_sighting(sighting)
        except Exception:
            self.log.failure("handling an announcement from {addr} failed", addr=addr)


def listen_for_announcements(
    reactor: Any, receiver: AnnouncementReceiver, port: int = ANNOUNCE_PORT, interface: str = ""
) -> IListeningPort:
    """
    Listen for announcements, sharing the port with other listeners on this
    machine (C{SO_REUSEADDR} and C{SO_REUSEPORT}), so that each one gets
    every broadcast.

    @param reactor: an L{IReactorMulticast}.
    @param receiver: what hears them.
    @param port: the UDP port.
    @param interface: the address to bind, all by default.
    @return: the listening port.
    """
    return reactor.listenMulticast(port, receiver, interface=interface, listenMultiple=True)


def discover(
    reactor: Any,
    seconds: float = DEFAULT_LISTEN_SECONDS,
    port: int = ANNOUNCE_PORT,
    ignore: str | None = None,
    interface: str = "",
) -> Deferred:
    """
    Listen for announcements for a while.

    @param reactor: an L{IReactorMulticast} and L{IReactorTime}.
    @param seconds: how long to listen.
    @param port: the UDP port.
    @param ignore: this node's own identity, to leave out.
    @param interface: the address to bind, all by default.
    @return: a L{Deferred} firing with the L{Sighting}s, the latest of each
        identity, address and port, sorted by identity.
    """
    heard: dict[tuple[str, str, int], Sighting] = {}

    def note(sighting: Sighting) -> None:
        heard[sighting.identity, sighting.host, sighting.port] = sighting

    listening = listen_for_announcements(
        reactor, AnnouncementReceiver(note, ignore), port, interface
    )
    d = task.deferLater(reactor, seconds, lambda: None)
    d.addCallback(lambda _: maybeDeferred(listening.stopListening))
    d.addCallback(lambda _: sorted(heard.values(), key=lambda s: (s.identity, s.host, s.port)))
    return d


def parse_target(text: str) -> tuple[str, int]:
    """
    Read where announcements go: C{HOST} or C{HOST:PORT}.

    C{<broadcast>} stands for L{BROADCAST_ADDRESS}; the port defaults to
    L{ANNOUNCE_PORT}.

    @param text: the address; the host must be an IPv4 address.
    @return: C{(ip, port)}.
    @raise ValueError: with a one-line reason.
    """
    host, colon, port_text = text.strip().partition(":")
    if host == "<broadcast>":
        host = BROADCAST_ADDRESS
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: want an IPv4 address, optionally with :PORT") from None
    port = ANNOUNCE_PORT
    if colon:
        try:
            port = parse_port(port_text)
        except InvalidAddress:
            raise ValueError(f"{text!r}: invalid port {port_text[:10]!r}") from None
    return host, port
