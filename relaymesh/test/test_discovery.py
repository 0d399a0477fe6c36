"""
Tests for L{relaymesh.discovery}: announcements, the announcer service,
the listener, C{relaymesh discover}, and the node's wiring.
"""

from __future__ import annotations

import json
import os
import socket
from io import StringIO

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.discovery import (
    ANNOUNCE_INTERVAL,
    ANNOUNCE_PORT,
    BROADCAST_ADDRESS,
    MAX_SIGHTINGS,
    MAX_SIGHTINGS_PER_SOURCE,
    SIGHTING_EXPIRY,
    Announcement,
    AnnouncementReceiver,
    Announcer,
    InvalidAnnouncement,
    Sighting,
    SightingTable,
    discover,
    parse_announcement,
    parse_target,
)
from relaymesh.handshake.proofs import VERSION
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.support import EPOCH


class FakeUDPPort:
    """
    A UDP port that records what is written to it.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.broadcast = False
        self.listening = True
        self.error: OSError | None = None

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = enabled

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((datagram, addr))

    def stopListening(self) -> None:
        self.listening = False


class UDPReactor(MemoryReactorClock):
    """
    A memory reactor with a clock that can open (fake) UDP ports.
    """

    def __init__(self) -> None:
        MemoryReactorClock.__init__(self)
        self.advance(EPOCH)
        self.udp: list[tuple[FakeUDPPort, object]] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        fake = FakeUDPPort(port)
        self.udp.append((fake, protocol))
        return fake

    def listenMulticast(self, port, protocol, interface="", maxPacketSize=8192, listenMultiple=False):
        """
        Listen in memory: the test hands datagrams to C{protocol} itself.
        """
        return self.listenUDP(port, protocol, interface, maxPacketSize)


CLAUDECTL_STYLE = b'CCTL{"identity":"laptop-a3f2","port":9847,"version":"0.49.2"}'


class AnnouncementTests(SynchronousTestCase):
    """
    Tests for the announcement format.
    """

    def test_encode(self):
        """
        C{CCTL} and compact JSON with identity, port and version.
        """
        self.assertEqual(Announcement("laptop-a3f2", 9847, "0.49.2").encode(), CLAUDECTL_STYLE)

    def test_parse(self):
        self.assertEqual(parse_announcement(CLAUDECTL_STYLE), Announcement("laptop-a3f2", 9847, "0.49.2"))
        spaced = b'CCTL { "version": "x", "port": 1, "identity": "a", "extra": [1] }'
        self.assertEqual(parse_announcement(spaced), Announcement("a", 1, "x"))

    def test_roundTrip(self):
        for announcement in [
            Announcement("a", 1, ""),
            Announcement("x" * 128, 65535, VERSION),
            Announcement("node_1-b", 9847, "relaymesh-\u00e9"),
        ]:
            self.assertEqual(parse_announcement(announcement.encode()), announcement)

    def test_malformed(self):
        """
        Anything else is not an announcement, with a reason.
        """
        for data, reason in [
            (b"", "does not start with CCTL"),
            (b"XCTL{}", "does not start with CCTL"),
            (b"CCTL", "not JSON"),
            (b"CCTL{", "not JSON"),
            (b"CCTL\xff\xfe", "not JSON"),
            (b"CCTL[1, 2]", "not a JSON object"),
            (b'CCTL{"port":1,"version":"x"}', "invalid identity"),
            (b'CCTL{"identity":"_pending","port":1,"version":"x"}', "invalid identity"),
            (b'CCTL{"identity":"a b","port":1,"version":"x"}', "invalid identity"),
            (b'CCTL{"identity":"a","port":0,"version":"x"}', "invalid port"),
            (b'CCTL{"identity":"a","port":65536,"version":"x"}', "invalid port"),
            (b'CCTL{"identity":"a","port":true,"version":"x"}', "invalid port"),
            (b'CCTL{"identity":"a","port":9847.0,"version":"x"}', "invalid port"),
            (b'CCTL{"identity":"a","port":"9847","version":"x"}', "invalid port"),
            (b'CCTL{"identity":"a","port":1}', "invalid version"),
            (b'CCTL{"identity":"a","port":1,"version":5}', "invalid version"),
            (b'CCTL{"identity":"a","port":1,"version":"' + b"v" * 65 + b'"}', "invalid version"),
            (b'CCTL{"identity":"a","port":1,"version":"a\\nb"}', "control characters"),
            (b"CCTL" + b" " * 3000 + b"{}", "too long"),
        ]:
            with self.assertRaises(InvalidAnnouncement) as ctx:
                parse_announcement(data)
            self.assertIn(reason, str(ctx.exception), data)


class ReceiverTests(SynchronousTestCase):
    """
    Tests for L{AnnouncementReceiver}.
    """

    def setUp(self):
        self.heard: list[Sighting] = []
        self.receiver = AnnouncementReceiver(self.heard.append, ignore="me")

    def test_sighting(self):
        """
        The address is the sender's, the port the announced one.
        """
        self.receiver.datagramReceived(CLAUDECTL_STYLE, ("192.168.1.50", 40000))
        self.assertEqual(self.heard, [Sighting("laptop-a3f2", "192.168.1.50", 9847, "0.49.2")])
        self.assertEqual(self.heard[0].addr, "192.168.1.50:9847")
        self.assertEqual(Sighting("a", "::1", 1, "v").addr, "[::1]:1")
        self.assertEqual(
            self.heard[0].to_dict(),
            {"identity": "laptop-a3f2", "addr": "192.168.1.50:9847", "host": "192.168.1.50", "port": 9847, "version": "0.49.2"},
        )

    def test_ignoresItselfAndJunk(self):
        """
        Its own announcements and malformed datagrams are dropped quietly.
        """
        self.receiver.datagramReceived(Announcement("me", 9847, "v").encode(), ("10.0.0.1", 1))
        for junk in [b"", b"CCTL", b"hello", b'CCTL{"identity":"x"}', os.urandom(100)]:
            self.receiver.datagramReceived(junk, ("10.0.0.1", 1))
        self.assertEqual(self.heard, [])

    def test_callbackError(self):
        """
        A failing callback is logged; the receiver goes on.
        """

        def broken(sighting):
            raise RuntimeError("boom")

        receiver = AnnouncementReceiver(broken)
        receiver.datagramReceived(CLAUDECTL_STYLE, ("10.0.0.1", 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AnnouncerTests(SynchronousTestCase):
    """
    Tests for L{Announcer}.
    """

    def setUp(self):
        self.reactor = UDPReactor()
        self.port: int | None = 9847
        self.announcer = Announcer("alpha", lambda: self.port, self.reactor, target=("127.0.0.1", 5555))

    def sent(self) -> list:
        [(udp, _)] = self.reactor.udp
        written: list = udp.written
        return written

    def test_announces(self):
        """
        It opens a broadcast-enabled UDP port and announces at once, then
        every interval.
        """
        self.announcer.startService()
        [(udp, _)] = self.reactor.udp
        self.assertEqual(udp.port, 0)
        self.assertTrue(udp.broadcast)
        expected = (Announcement("alpha", 9847, VERSION).encode(), ("127.0.0.1", 5555))
        self.assertEqual(self.sent(), [expected])
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.assertEqual(self.sent(), [expected] * 3)
        self.assertEqual(self.announcer.sent, 3)

    def test_defaults(self):
        """
        By default it broadcasts to the local network, port 9848.
        """
        announcer = Announcer("alpha", lambda: 1, self.reactor)
        self.assertEqual(announcer.target, ("255.255.255.255", 9848))
        self.assertEqual((BROADCAST_ADDRESS, ANNOUNCE_PORT), ("255.255.255.255", 9848))

    def test_notListening(self):
        """
        While the node has no port, nothing is sent.
        """
        self.port = None
        self.announcer.startService()
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.assertEqual(self.sent(), [])
        self.port = 9900
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.assertEqual(parse_announcement(self.sent()[0][0]).port, 9900)

    def test_sendErrors(self):
        """
        A failing send is logged once, and announcing goes on.
        """
        self.announcer.startService()
        [(udp, _)] = self.reactor.udp
        udp.error = OSError(101, "Network is unreachable")
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.assertEqual(len(udp.written), 1)
        udp.error = None
        self.reactor.advance(ANNOUNCE_INTERVAL)
        self.assertEqual(len(udp.written), 2)
        self.assertTrue(self.announcer._loop.running)

    def test_stop(self):
        self.announcer.startService()
        [(udp, _)] = self.reactor.udp
        self.announcer.stopService()
        self.assertFalse(udp.listening)
        self.reactor.advance(ANNOUNCE_INTERVAL * 3)
        self.assertEqual(len(udp.written), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ServiceWiringTests(SynchronousTestCase):
    """
    L{RelayService} announces only when asked and only while listening;
    C{twistd relaymesh} asks only when told C{--announce} or
    C{--announce-to}.
    """

    def setUp(self):
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")

    def test_offByDefault(self):
        service = RelayService(self.keystore, listen="tcp:9847", reactor=UDPReactor())
        self.assertIsNone(service.announcer)

    def test_announcesListeningPort(self):
        reactor_ = UDPReactor()
        service = RelayService(
            self.keystore, listen="tcp:9900", reactor=reactor_, announce_to=("127.255.255.255", 5555)
        )
        self.assertIs(service.announcer.parent, service)
        service.startService()
        [(udp, _)] = reactor_.udp
        [(datagram, target)] = udp.written
        self.assertEqual(parse_announcement(datagram), Announcement("alpha", 9900, VERSION))
        self.assertEqual(target, ("127.255.255.255", 5555))
        service.stopService()
        self.assertFalse(udp.listening)

    def test_notListening(self):
        service = RelayService(self.keystore, listen=None, reactor=UDPReactor(), announce_to=("127.0.0.1", 1))
        self.assertIsNone(service.announcer)

    def test_listenerWithoutPort(self):
        """
        A node whose listener has no port (C{unix:}) announces nothing, and
        its handshakes announce no port, rather than failing on the address.
        """
        reactor_ = UDPReactor()
        service = RelayService(
            self.keystore,
            listen="unix:" + self.mktemp(),
            reactor=reactor_,
            announce_to=("127.255.255.255", 5555),
        )
        service.startService()
        self.addCleanup(service.stopService)
        [(udp, _)] = reactor_.udp
        self.assertEqual(udp.written, [])
        self.assertEqual(service._announced_port(), (None, False))
        self.assertEqual(self.flushLoggedErrors(), [])

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--data-dir", self.keystore.path, "--api", "none", *args])
        return options

    def announcer(self, *args: str):
        return tap.makeService(self.parse(*args), reactor=UDPReactor()).announcer

    def test_options(self):
        """
        C{twistd relaymesh} announces nothing unless told C{--announce}
        (to the broadcast address) or C{--announce-to}, which takes an IPv4
        address and an optional port; C{--no-announce}, the default, is
        still accepted.
        """
        options = self.parse()
        self.assertFalse(options["announce"])
        self.assertIsNone(self.announcer())
        self.assertIsNone(self.announcer("--no-announce"))
        self.assertEqual(self.announcer("--announce").target, ("255.255.255.255", 9848))
        self.assertEqual(self.announcer("--announce-to", "127.0.0.1:5000").target, ("127.0.0.1", 5000))
        self.assertEqual(
            self.announcer("--announce", "--announce-to", "127.0.0.1").target, ("127.0.0.1", 9848)
        )

    def test_startsNoUDPPortByDefault(self):
        """
        A node started with the default options opens no UDP port and
        sends nothing, however long it runs.
        """
        reactor_ = UDPReactor()
        service = tap.makeService(self.parse("--no-outbox", "--sessions", "none"), reactor=reactor_)
        service.startService()
        self.addCleanup(service.stopService)
        reactor_.advance(60)
        self.assertEqual(reactor_.udp, [])

    def test_announceAndNoAnnounce(self):
        """
        C{--no-announce} with C{--announce} or C{--announce-to} is a
        one-line error, not a silent choice.
        """
        for args in (["--announce"], ["--announce-to", "127.0.0.1"]):
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse("--no-announce", *args)
            self.assertIn("--no-announce", str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))

    def test_badTarget(self):
        for value in ["example.com", "::1", "10.0.0.1:0", "10.0.0.1:x", ""]:
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse("--announce-to", value)
            self.assertIn("--announce-to", str(ctx.exception))

    def test_parseTarget(self):
        self.assertEqual(parse_target("<broadcast>"), ("255.255.255.255", 9848))
        self.assertEqual(parse_target(" 127.255.255.255:9 "), ("127.255.255.255", 9))


class DiscoverCommandTests(SynchronousTestCase):
    """
    Tests for C{relaymesh discover}, with the listening replaced.
    """

    def setUp(self):
        self.dataDir = self.mktemp()
        KeyStore(self.dataDir).set_identity("me")
        self.calls = []

    def discoverWith(self, sightings, *args):
        def fake_run(work):
            self.calls.append(work)
            return sightings

        self.patch(cli_pairing, "run_reactor", fake_run)
        stdout, stderr = StringIO(), StringIO()
        status = main(["discover", "--data-dir", self.dataDir, *args], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_table(self):
        status, out, err = self.discoverWith(
            [Sighting("alpha", "10.0.0.2", 9847, VERSION), Sighting("claude-box", "10.0.0.3", 9900, "0.49.2")]
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            "IDENTITY    ADDRESS        VERSION\n"
            f"alpha       10.0.0.2:9847  {VERSION}\n"
            "claude-box  10.0.0.3:9900  0.49.2\n",
        )

    def test_json(self):
        status, out, err = self.discoverWith([Sighting("alpha", "10.0.0.2", 9847, "v")], "--json", "--seconds", "2")
        self.assertEqual(
            json.loads(out),
            {"nodes": [{"identity": "alpha", "addr": "10.0.0.2:9847", "host": "10.0.0.2", "port": 9847, "version": "v"}], "seconds": 2.0},
        )

    def test_none(self):
        status, out, err = self.discoverWith([], "--seconds", "1.5")
        self.assertEqual(out, "No nodes heard in 1.5 s.\n")

    def test_cannotListen(self):
        def fail(work):
            raise CannotListenError("", 9848, OSError(13, "Permission denied"))

        self.patch(cli_pairing, "run_reactor", fail)
        stdout, stderr = StringIO(), StringIO()
        status = main(["discover", "--data-dir", self.dataDir], stdout=stdout, stderr=stderr)
        self.assertEqual(status, 2)
        self.assertEqual(stderr.getvalue(), "relaymesh: error: cannot listen on UDP port 9848: [Errno 13] Permission denied\n")

    def test_badArguments(self):
        for args in (["--seconds", "0"], ["--seconds", "x"], ["--port", "70000"]):
            status, out, err = self.discoverWith([], *args)
            self.assertEqual(status, 2)
            self.assertIn("relaymesh discover: error: argument", err)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LoopbackTests(TestCase):
    """
    Announcers and L{discover} on real UDP sockets, on loopback only.
    """

    timeout = 15

    @defer.inlineCallbacks
    def test_findsTwoNodes(self):
        """
        Two nodes broadcasting on the loopback network are found; the
        listener's own node and junk datagrams are left out.
        """
        port = free_udp_port()
        target = ("127.255.255.255", port)
        for identity, tcp_port in [("alpha", 9901), ("beta", 9902), ("me", 9903)]:
            announcer = Announcer(identity, lambda p=tcp_port: p, reactor, target=target, interval=0.1)
            announcer.startService()
            self.addCleanup(announcer.stopService)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            junk.sendto(b"CCTL{not json", ("127.0.0.1", port))
        found = yield discover(reactor, seconds=1.0, port=port, ignore="me")
        self.assertEqual(
            [(s.identity, s.host, s.port, s.version) for s in found],
            [("alpha", "127.0.0.1", 9901, VERSION), ("beta", "127.0.0.1", 9902, VERSION)],
        )

    @defer.inlineCallbacks
    def test_sharedPort(self):
        """
        Two listeners on one port both hear a broadcast.
        """
        port = free_udp_port()
        announcer = Announcer("alpha", lambda: 9901, reactor, target=("127.255.255.255", port), interval=0.1)
        first = discover(reactor, seconds=0.8, port=port)
        second = discover(reactor, seconds=0.8, port=port)
        announcer.startService()
        self.addCleanup(announcer.stopService)
        results = yield defer.gatherResults([first, second])
        self.assertEqual([[s.identity for s in r] for r in results], [["alpha"], ["alpha"]])


def spoofed(i: int) -> tuple[bytes, tuple[str, int]]:
    """
    The C{i}th announcement of a flood: a new identity each time, from a
    new (spoofed) source address.
    """
    datagram = Announcement(f"spoof-{i}", 9847, "x").encode()
    return datagram, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 9848)


class SightingTableTests(SynchronousTestCase):
    """
    L{SightingTable} stays bounded whatever arrives, and keeps the nodes it
    heard first as long as they go on announcing.
    """

    def setUp(self):
        self.clock = Clock()
        self.table = SightingTable(self.clock)

    def sighting(self, i: int, host: str | None = None) -> Sighting:
        return Sighting(f"node-{i}", host or f"10.0.{i >> 8}.{i & 255}", 9847, "v")

    def test_refresh(self):
        """
        Hearing an entry again updates it in place.
        """
        self.assertTrue(self.table.add(Sighting("a", "10.0.0.1", 9847, "1")))
        self.assertTrue(self.table.add(Sighting("a", "10.0.0.1", 9847, "2")))
        self.assertEqual(self.table.sightings(), [Sighting("a", "10.0.0.1", 9847, "2")])

    def test_fullTableTurnsNewcomersAway(self):
        """
        A full table of live entries turns a newcomer away and counts it.
        """
        for i in range(MAX_SIGHTINGS):
            self.assertTrue(self.table.add(self.sighting(i)))
        self.clock.advance(SIGHTING_EXPIRY - 1)
        self.assertFalse(self.table.add(self.sighting(MAX_SIGHTINGS)))
        self.assertEqual((len(self.table), self.table.turned_away), (MAX_SIGHTINGS, 1))
        self.assertNotIn(self.sighting(MAX_SIGHTINGS), self.table.sightings())

    def test_expiredMakeRoom(self):
        """
        An entry not heard for the expiry makes room, the one heard longest
        ago first; entries heard again keep their place.
        """
        for i in range(MAX_SIGHTINGS):
            self.table.add(self.sighting(i))
        self.clock.advance(SIGHTING_EXPIRY)
        self.table.add(self.sighting(0))  # heard again: now the newest
        self.assertTrue(self.table.add(self.sighting(1000)))
        kept = self.table.sightings()
        self.assertEqual(len(kept), MAX_SIGHTINGS)
        self.assertIn(self.sighting(0), kept)
        self.assertIn(self.sighting(1000), kept)
        self.assertNotIn(self.sighting(1), kept)

    def test_perSource(self):
        """
        One source address holds at most L{MAX_SIGHTINGS_PER_SOURCE}
        entries; its newest announcements replace its oldest.
        """
        for i in range(100):
            self.table.add(self.sighting(i, host="127.0.0.1"))
        self.table.add(self.sighting(500, host="127.0.0.2"))
        kept = self.table.sightings()
        self.assertEqual(len(kept), MAX_SIGHTINGS_PER_SOURCE + 1)
        self.assertEqual(
            sorted(s.identity for s in kept if s.host == "127.0.0.1"),
            sorted(f"node-{i}" for i in range(100 - MAX_SIGHTINGS_PER_SOURCE, 100)),
        )
        self.assertEqual(self.table.turned_away, 0)

    def test_badLimits(self):
        self.assertRaises(ValueError, SightingTable, self.clock, capacity=0)
        self.assertRaises(ValueError, SightingTable, self.clock, per_source=0)


class FloodTests(SynchronousTestCase):
    """
    The flood that filled C{discover} with 65,000 spoofed entries in 4 s,
    replayed in memory: the list stays at L{MAX_SIGHTINGS} and the real
    nodes heard before the flood stay in it.
    """

    def setUp(self):
        self.reactor = UDPReactor()
        self.table = SightingTable(self.reactor)
        self.result = discover(self.reactor, seconds=6.0, port=9848, ignore="me", table=self.table)
        [(self.port, self.protocol)] = self.reactor.udp
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def announce(self, identity: str, host: str, port: int = 9847) -> None:
        self.protocol.datagramReceived(Announcement(identity, port, VERSION).encode(), (host, 40000))

    def test_flood(self):
        self.announce("alpha", "127.0.0.2")
        self.announce("beta", "127.0.0.3")
        flood = 65000
        for step in range(4):  # 65,000 spoofed announcements over 4 s
            for i in range(step * flood // 4, (step + 1) * flood // 4):
                self.protocol.datagramReceived(*spoofed(i))
            self.reactor.advance(1)
        self.announce("alpha", "127.0.0.2")  # the real nodes go on announcing
        self.announce("beta", "127.0.0.3")
        self.reactor.advance(2)
        found = self.successResultOf(self.result)
        self.assertEqual(len(found), MAX_SIGHTINGS)
        identities = {s.identity for s in found}
        self.assertTrue({"alpha", "beta"} <= identities)
        self.assertEqual(self.table.turned_away, flood - (MAX_SIGHTINGS - 2))
        self.assertFalse(self.port.listening)
        self.assertEqual(self.events, [])  # nothing logged per datagram

    def test_floodFromOneAddress(self):
        """
        A flood from one address takes only its own few places.
        """
        self.announce("alpha", "127.0.0.2")
        for i in range(65000):
            self.announce(f"spoof-{i}", "127.0.0.9")
        self.reactor.advance(6)
        found = self.successResultOf(self.result)
        self.assertEqual(len(found), MAX_SIGHTINGS_PER_SOURCE + 1)
        self.assertIn("alpha", {s.identity for s in found})
        self.assertEqual(self.table.turned_away, 0)

    def test_malformedDroppedCheaply(self):
        """
        Datagrams that are no announcements are counted and dropped before
        any JSON is parsed when they cannot be one; deep nesting, which made
        the JSON parser raise C{RecursionError} out of C{datagramReceived},
        is one of them. Nothing is logged.
        """
        junk = [
            b"CCTL" + b"[" * 2040,
            b"CCTL" + b'{"a":' * 400,
            b"CCTL" + b"x" * 5000,
            b"XXXX" + b"{" * 100,
            b'CCTL{"identity":"a","port":9847,"version":"x","more":[[[[[[[[[1]]]]]]]]]}',
        ]
        for datagram in junk:
            self.assertRaises(InvalidAnnouncement, parse_announcement, datagram)
            self.protocol.datagramReceived(datagram, ("127.0.0.9", 1))
        self.assertEqual(self.protocol.malformed, len(junk))
        self.reactor.advance(6)
        self.assertEqual(self.successResultOf(self.result), [])
        self.assertEqual(self.events, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_commandSaysSo(self):
        """
        C{relaymesh discover} lists what the table kept and says how many
        announcements it turned away.
        """
        data_dir = self.mktemp()
        KeyStore(data_dir).set_identity("me")

        def run(work):
            memory = UDPReactor()
            d = work(memory)
            [(_, protocol)] = memory.udp
            protocol.datagramReceived(Announcement("alpha", 9847, VERSION).encode(), ("127.0.0.2", 1))
            for i in range(MAX_SIGHTINGS + 10):
                protocol.datagramReceived(*spoofed(i))
            memory.advance(60)
            return self.successResultOf(d)

        self.patch(cli_pairing, "run_reactor", run)
        for args, check in [
            ([], lambda out: self.assertIn("11 more announcements were not kept", out)),
            (["--json"], lambda out: self.assertEqual(json.loads(out)["turned_away"], 11)),
        ]:
            stdout, stderr = StringIO(), StringIO()
            status = main(["discover", "--data-dir", data_dir, *args], stdout=stdout, stderr=stderr)
            self.assertEqual((status, stderr.getvalue()), (0, ""))
            check(stdout.getvalue())


class PrintableOutputTests(SynchronousTestCase):
    """
    What a node announces is printed escaped.
    """

    def test_escaped(self):
        data_dir = self.mktemp()
        KeyStore(data_dir).set_identity("me")
        hostile = Sighting("alpha", "10.0.0.2", 9847, "1.0\x1b]52;c;aGk=\x07\u202e\nforged line")
        self.patch(cli_pairing, "run_reactor", lambda work: [hostile])
        stdout, stderr = StringIO(), StringIO()
        self.assertEqual(main(["discover", "--data-dir", data_dir], stdout=stdout, stderr=stderr), 0)
        out = stdout.getvalue()
        self.assertEqual(len(out.splitlines()), 2)
        self.assertIn("1.0\\x1b]52;c;aGk=\\x07\\u202e\\nforged line", out)
        self.assertFalse(any(c in out for c in "\x1b\x07\u202e"))
