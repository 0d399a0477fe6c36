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
heard, kept in a L{SightingTable}.

Anyone on the network can send announcements, with any source address, as
fast as the network carries them. So a datagram that cannot be one is
dropped before any JSON is parsed, and the table is bounded: at most
L{MAX_SIGHTINGS} entries, at most L{MAX_SIGHTINGS_PER_SOURCE} of them from
one source address; a newcomer takes the place of an entry not heard for
L{SIGHTING_EXPIRY} seconds, or else is turned away and counted. Nodes heard
before a flood keep their place as long as they go on announcing.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import IServiceCollection, Service
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IMulticastTransport, IReactorMulticast, IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaymesh.address import InvalidAddress, format_hostport, parse_port
from relaymesh.handshake.proofs import VERSION
from relaymesh.peerid import is_valid_peer_id
from relaymesh.printable import printable

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

#: Most C{E{lb}} and C{[} in an announcement: it is one flat JSON object, and
#: deeper nesting would only make the parser recurse.
MAX_BRACKETS = 8

#: Most sightings a L{SightingTable} keeps.
MAX_SIGHTINGS = 256

#: Most sightings one source address may have in a L{SightingTable}: one
#: host runs a few nodes at most.
MAX_SIGHTINGS_PER_SOURCE = 8

#: Seconds after which a sighting not heard again may make room for a
#: newcomer: three announcement intervals.
SIGHTING_EXPIRY = 3 * ANNOUNCE_INTERVAL


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
    @raise InvalidAnnouncement: if it is not one: too long, no C{CCTL},
        brackets enough for more than a flat object (checked before any
        parsing), not a JSON object, an invalid peer id, a port that is no
        TCP port, a version that is not a short string.
    """
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise InvalidAnnouncement(f"{len(data)} bytes is too long")
    if not data.startswith(ANNOUNCE_MAGIC):
        raise InvalidAnnouncement("does not start with CCTL")
    if data.count(b"{") + data.count(b"[") > MAX_BRACKETS:
        raise InvalidAnnouncement("nested too deeply to be an announcement")
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


class SightingTable:
    """
    The nodes heard, bounded however many announcements arrive.

    Each identity, address and port is one entry, refreshed each time it is
    heard again. A new entry from a source address that has
    L{MAX_SIGHTINGS_PER_SOURCE} already replaces that address's oldest; in
    a full table it replaces the entry heard longest ago if that one has
    not been heard for L{SIGHTING_EXPIRY} seconds, and is turned away (and
    counted in L{turned_away}) otherwise.

    @ivar turned_away: how many new entries found the table full.
    """

    def __init__(
        self,
        clock: IReactorTime,
        capacity: int = MAX_SIGHTINGS,
        per_source: int = MAX_SIGHTINGS_PER_SOURCE,
        expiry: float = SIGHTING_EXPIRY,
    ) -> None:
        """
        @param clock: what tells the time.
        @param capacity: most entries kept.
        @param per_source: most entries from one source address.
        @param expiry: seconds after which an entry not heard again may be
            replaced.
        @raise ValueError: for a capacity or per-source limit below one.
        """
        if capacity < 1 or per_source < 1:
            raise ValueError("a sighting table keeps at least one entry, and one per source")
        self._clock = clock
        self.capacity = capacity
        self.per_source = per_source
        self.expiry = expiry
        self.turned_away = 0
        # Least recently heard first.
        self._entries: OrderedDict[tuple[str, str, int], tuple[Sighting, float]] = OrderedDict()
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, sighting: Sighting) -> bool:
        """
        Note that C{sighting} was heard now.

        @return: whether it is in the table.
        """
        now = self._clock.seconds()
        key = (sighting.identity, sighting.host, sighting.port)
        if key in self._entries:
            self._entries[key] = (sighting, now)
            self._entries.move_to_end(key)
            return True
        if self._by_source.get(sighting.host, 0) >= self.per_source:
            self._remove(next(k for k in self._entries if k[1] == sighting.host))
        elif len(self._entries) >= self.capacity:
            oldest = next(iter(self._entries))
            if now - self._entries[oldest][1] < self.expiry:
                self.turned_away += 1
                return False
            self._remove(oldest)
        self._entries[key] = (sighting, now)
        self._by_source[sighting.host] = self._by_source.get(sighting.host, 0) + 1
        return True

    def _remove(self, key: tuple[str, str, int]) -> None:
        del self._entries[key]
        left = self._by_source[key[1]] - 1
        if left:
            self._by_source[key[1]] = left
        else:
            del self._by_source[key[1]]

    def sightings(self) -> list[Sighting]:
        """
        The latest sighting of each entry, sorted by identity, address and
        port.
        """
        heard = (sighting for sighting, _ in self._entries.values())
        return sorted(heard, key=lambda s: (s.identity, s.host, s.port))


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

    if TYPE_CHECKING:
        # Service's own, which Twisted leaves unannotated

        def setServiceParent(self, parent: IServiceCollection) -> None: ...

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
        @param port: returns the TCP port the node listens on, or C{None}
            while it does not (then nothing is sent).
        @param reactor: an C{IReactorUDP} and C{IReactorTime}.
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
        self._udp: IUDPTransport | None = None
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

    def stopService(self) -> Deferred[None] | None:
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
                    target="{}:{}".format(*self.target),
                    error=e,
                )
            return
        self._failing = False
        self.sent += 1


class AnnouncementReceiver(DatagramProtocol):
    """
    Hears announcements and reports each one from another node.

    A datagram that is no announcement is counted and dropped without a log
    line: anyone can send them as fast as the network carries them.

    @ivar malformed: how many datagrams were not announcements.
    """

    log = Logger()
    noisy = False

    def __init__(self, on_sighting: Callable[[Sighting], object], ignore: str | None = None) -> None:
        """
        @param on_sighting: called with each L{Sighting}.
        @param ignore: this node's own identity, to leave out.
        """
        self.on_sighting = on_sighting
        self.ignore = ignore
        self.malformed = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            announcement = parse_announcement(datagram)
        except InvalidAnnouncement:
            self.malformed += 1
            return
        if announcement.identity == self.ignore:
            return
        sighting = Sighting(announcement.identity, addr[0], announcement.port, announcement.version)
        try:
            self.on_sighting(sighting)
        except Exception:
            self.log.failure(
                "handling an announcement from {addr} failed", addr=printable(sighting.addr)
            )


def listen_for_announcements(
    reactor: IReactorMulticast, receiver: AnnouncementReceiver, port: int = ANNOUNCE_PORT, interface: str = ""
) -> IMulticastTransport:
    """
    Listen for announcements, sharing the port with other listeners on this
    machine (C{SO_REUSEADDR} and C{SO_REUSEPORT}), so that each one gets
    every broadcast.

    @param reactor: an C{IReactorMulticast}.
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
    table: SightingTable | None = None,
) -> Deferred[list[Sighting]]:
    """
    Listen for announcements for a while.

    @param reactor: an C{IReactorMulticast} and C{IReactorTime}.
    @param seconds: how long to listen.
    @param port: the UDP port.
    @param ignore: this node's own identity, to leave out.
    @param interface: the address to bind, all by default.
    @param table: where to keep what is heard (to read its counts after);
        a new L{SightingTable} on C{reactor}'s clock if C{None}.
    @return: a C{Deferred} firing with the L{Sighting}s, the latest of each
        identity, address and port, sorted by identity.
    """
    if table is None:
        table = SightingTable(reactor)
    listening = listen_for_announcements(
        reactor, AnnouncementReceiver(table.add, ignore), port, interface
    )
    d = task.deferLater(reactor, seconds, lambda: None)
    return d.addCallback(lambda _: maybeDeferred(listening.stopListening)).addCallback(
        lambda _: table.sightings()
    )


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
