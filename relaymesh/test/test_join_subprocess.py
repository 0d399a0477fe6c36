"""
C{relaymesh invite} on one node and C{relaymesh join} on another, both
nodes real C{twistd relaymesh} processes on 127.0.0.1, ending with the two
connected and exchanging heartbeats; and C{relaymesh discover} finding both.

Every process is started with a bounded wait and stopped by its own handle;
announcements go to the loopback network only.
"""

from __future__ import annotations

import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from relaymesh import tap
from relaymesh.keystore import KeyStore
from relaymesh.test.realtime import ProcessesMixin, free_port, log_lines, sleep, wait_for

#: Seconds between heartbeats in these nodes: a link that carries none is
#: dropped after three.
HEARTBEAT = 0.5


def has_api_option() -> bool:
    """
    Whether C{twistd relaymesh} takes C{--api} (the node's control API).
    """
    return any(option[0] == "api" for option in tap.Options.optParameters)


class InviteJoinTests(ProcessesMixin, TestCase):
    """
    Two nodes paired with C{invite} and C{join}.
    """

    timeout = 90

    def setUp(self):
        self.setUpProcesses()

    def node(self, name: str, home: str, *args: str) -> str:
        """
        Start C{twistd relaymesh} in the foreground; return its log file.
        """
        if has_api_option() and "--api" not in args:
            args = ("--api", "none", *args)
        return self.twistd(name, home, "--heartbeat", str(HEARTBEAT), *args)[1]

    @defer.inlineCallbacks
    def assertConnectedWithHeartbeats(self, home_a: str, log_a: str, home_b: str, log_b: str, port_a: int):
        """
        Wait until B's node dialled A's and A accepted it, then stay for
        six heartbeat intervals: without heartbeats flowing both ways, each
        side would drop the link after three.
        """
        id_a, id_b = KeyStore(home_a).identity(), KeyStore(home_b).identity()
        yield self.wait_log(log_b, rf"peer {id_a} connected from 127\.0\.0\.1:{port_a} \(outbound\)")
        yield self.wait_log(log_a, rf"peer {id_b} connected from 127\.0\.0\.1:\d+ \(inbound\)")
        mark_a, mark_b = len(log_lines(log_a)), len(log_lines(log_b))
        yield sleep(6 * HEARTBEAT)
        self.assertEqual([line for line in log_lines(log_b)[mark_b:] if "disconnected" in line], [])
        dropped = [line for line in log_lines(log_a)[mark_a:] if f"peer {id_b} disconnected" in line]
        self.assertEqual(dropped, [])
        self.assertEqual(KeyStore(home_a).key(id_b), KeyStore(home_b).key(id_a))

    @defer.inlineCallbacks
    def test_quickStart(self):
        """
        As the README's quick start: a node runs on each side; C{invite} on
        one, C{join} with its relaymesh link on the other; the joining
        node's running node then dials the inviting one. C{discover} finds
        both nodes by their announcements.
        """
        if not has_api_option():
            raise SkipTest("needs the node's control API (--api)")
        home_a, home_b = self.home("a"), self.home("b")
        id_a, id_b = KeyStore(home_a).identity(), KeyStore(home_b).identity()
        port_a, port_b = free_port(), free_port()
        announce = free_port(socket.SOCK_DGRAM)
        log_a = self.node(
            "a", home_a, "--listen", f"tcp:{port_a}:interface=127.0.0.1",
            "--api", f"tcp:{free_port()}:interface=127.0.0.1",
            "--announce-to", f"127.255.255.255:{announce}",
        )
        log_b = self.node(
            "b", home_b, "--listen", f"tcp:{port_b}:interface=127.0.0.1",
            "--api", f"tcp:{free_port()}:interface=127.0.0.1",
            "--announce-to", f"127.255.255.255:{announce}",
        )
        yield self.wait_log(log_a, rf"listening on 127\.0\.0\.1:{port_a} as {id_a}")
        yield self.wait_log(log_b, rf"listening on 127\.0\.0\.1:{port_b} as {id_b}")
        yield wait_for(lambda: os.path.exists(os.path.join(home_b, "api-url")), 15)

        found = json.loads(
            self.cli(os.path.join(self.base, "c"), "discover", "--json", "--port", str(announce), "--seconds", "6").stdout
        )
        self.assertEqual(
            sorted((n["identity"], n["addr"]) for n in found["nodes"]),
            sorted([(id_a, f"127.0.0.1:{port_a}"), (id_b, f"127.0.0.1:{port_b}")]),
        )

        invite = json.loads(self.cli(home_a, "invite", "--json", "--host", "127.0.0.1").stdout)
        self.assertEqual(invite["port"], port_a)  # learned from the running node
        joined = self.cli(home_b, "join", invite["relaymesh_link"]).stdout.splitlines()
        self.assertEqual(joined, [f"Paired with {id_a} (127.0.0.1:{port_a})", f"The running node is connecting to {id_a}."])
        yield self.assertConnectedWithHeartbeats(home_a, log_a, home_b, log_b, port_a)
        self.assertEqual(KeyStore(home_a).meta(id_b)["paired_via"], "invite")
        self.assertEqual(KeyStore(home_b).meta(id_a)["paired_via"], "relaymesh_link")
        self.assertEqual(KeyStore(home_a).armed_keys(reactor.seconds()), [])

    @defer.inlineCallbacks
    def test_wordPhraseThenStart(self):
        """
        C{invite --words} on a running node; C{join} with the 32-bit word
        phrase (claudectl's form) while the joining node is not running;
        then that node starts with the peer it printed. Joining the same
        invite again is refused.
        """
        home_a, home_b = self.home("a"), self.home("b")
        id_a, id_b = KeyStore(home_a).identity(), KeyStore(home_b).identity()
        port_a = free_port(low=9848, high=10102)
        if port_a == 9975:
            raise SkipTest("9975 cannot be carried by a word phrase")
        log_a = self.node("a", home_a, "--listen", f"tcp:{port_a}:interface=127.0.0.1", "--no-announce")
        yield self.wait_log(log_a, rf"listening on 127\.0\.0\.1:{port_a} as {id_a}")

        invite = json.loads(
            self.cli(home_a, "invite", "--json", "--words", "--host", "127.0.0.1", "--port", str(port_a)).stdout
        )
        self.assertEqual(invite["join"], f"relaymesh join {invite['words']}")
        joined = json.loads(self.cli(home_b, "join", "--json", invite["words"]).stdout)
        self.assertEqual((joined["peer_id"], joined["form"], joined["node_dialling"]), (id_a, "words", False))
        self.assertEqual(KeyStore(home_a).meta(id_b)["paired_via"], "invite_legacy")

        again = self.cli(os.path.join(self.base, "c"), "join", invite["relaymesh_link"], status=2)
        self.assertIn("refused the key: the invite may have expired, been used already", again.stderr)
        self.assertEqual(again.stderr.count("\n"), 1)

        log_b = self.node("b", home_b, "--listen", "none", "--no-announce", "--peers", joined["peer"])
        yield self.assertConnectedWithHeartbeats(home_a, log_a, home_b, log_b, port_a)
