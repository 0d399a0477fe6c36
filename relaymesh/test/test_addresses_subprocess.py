"""
A node paired by C{relaymesh join} keeps its peer across restarts: real
C{twistd relaymesh} processes on 127.0.0.1, the joining one started and
restarted with no C{--peers}.

Every process is started with a bounded wait and stopped by its own handle;
nothing is announced on the network.
"""

from __future__ import annotations

import json
import signal

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from relaymesh.keystore import KeyStore
from relaymesh.test.realtime import ProcessesMixin, free_port, log_lines, wait_for

#: Seconds between heartbeats in these nodes.
HEARTBEAT = 0.5


def exited(process, timeout: float = 15) -> defer.Deferred:
    """
    Fire with a process's exit status once it has exited.
    """
    d = wait_for(lambda: process.poll() is not None, timeout, 0.05)
    return d.addCallback(lambda _: process.returncode)


class JoinedNodeRestartTests(ProcessesMixin, TestCase):
    timeout = 90

    def setUp(self):
        self.setUpProcesses()

    def node(self, name: str, home: str, *args: str):
        return self.twistd(name, home, "--heartbeat", str(HEARTBEAT), "--no-announce", "--api", "none", *args)

    @defer.inlineCallbacks
    def test_join_then_restarts(self):
        """
        B joins A's invite while B's node is not running; B's node, started
        with no peers named, dials A; stopped and started again, it dials A
        again. B's peers list shows A's address, learned from join.
        """
        home_a, home_b = self.home("a"), self.home("b")
        id_a = KeyStore(home_a).identity()
        port_a = free_port()
        _, log_a = self.node("a", home_a, "--listen", f"tcp:{port_a}:interface=127.0.0.1")
        yield self.wait_log(log_a, rf"listening on 127\.0\.0\.1:{port_a} as {id_a}")
        invite = json.loads(
            self.cli(home_a, "invite", "--json", "--host", "127.0.0.1", "--port", str(port_a)).stdout
        )
        joined = json.loads(self.cli(home_b, "join", "--json", invite["relaymesh_link"]).stdout)
        self.assertEqual((joined["peer_id"], joined["node_dialling"]), (id_a, False))
        listed = json.loads(self.cli(home_b, "peers", "--json").stdout)["peers"]
        self.assertEqual(
            [(p["peer_id"], p["stored_address"], p["address_source"]) for p in listed],
            [(id_a, f"{id_a}@127.0.0.1:{port_a}", "join")],
        )

        for run in ("b1", "b2"):
            b, log_b = self.node(run, home_b, "--listen", "none")
            yield self.wait_log(log_b, rf"peer {id_a} connected from 127\.0\.0\.1:{port_a} \(outbound\)", 20)
            self.assertTrue(any("redialling " + id_a in line for line in log_lines(log_b)))
            b.send_signal(signal.SIGTERM)
            self.assertEqual((yield exited(b)), -signal.SIGTERM)
