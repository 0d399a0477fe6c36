"""
The half-sent-request flood on the control API, replayed on real sockets.

A C{twistd relaymesh} node runs with its file descriptors limited to
L{FD_LIMIT} (a small C{ulimit -n}); L{FLOOD} connections to its API each
send half a request and wait. Without a cap they took every descriptor, and
a paired peer dialling the relay port was shut out. Now the API holds at
most L{MAX_CONNECTIONS} of them, the peer connects, and once the flood lets
go the API answers again. Bounded in time; every socket and process is
closed at the end.

Set C{RELAYMESH_FLOOD_REPORT=1} to print the figures docs/security.rst
reports.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from relaymesh.control.requests import MAX_CONNECTIONS
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import ProcessesMixin, free_port, sleep, wait_for

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

REPORT = os.environ.get("RELAYMESH_FLOOD_REPORT") == "1"

#: Half-sent requests in the flood.
FLOOD = 260

#: The node's limit on open files.
FD_LIMIT = 256

#: Seconds the flood may take at most.
FLOOD_SECONDS = 15.0


def open_files(pid: int) -> int:
    """
    How many file descriptors a process has open (Linux).
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def held(sockets: list[socket.socket]) -> int:
    """
    How many of the flood's sockets the node still holds open without an
    answer.
    """
    count = 0
    for s in sockets:
        try:
            s.setblocking(False)
            s.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


class ApiFloodTests(ProcessesMixin, TestCase):
    """
    One node as a process, flooded; one peer in this process.
    """

    timeout = 60

    def setUp(self):
        if resource is None or not hasattr(resource, "prlimit") or not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs Linux's prlimit and /proc")
        self.setUpProcesses()
        self.sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in self.sockets])

    @defer.inlineCallbacks
    def test_half_sent_requests(self):
        home = os.path.join(self.base, "alpha")
        alpha = KeyStore(home)
        alpha.set_identity("alpha")
        beta_store = KeyStore(os.path.join(self.base, "beta"))
        beta_store.set_identity("beta")
        key = os.urandom(32)
        alpha.set_key("beta", key)
        beta_store.set_key("alpha", key)
        relay, api = free_port(), free_port()
        process, log = self.twistd(
            "alpha", home,
            "--listen", f"tcp:{relay}:interface=127.0.0.1",
            "--api", f"tcp:{api}:interface=127.0.0.1",
            "--no-announce", "--no-outbox",
        )  # fmt: skip
        yield self.wait_log(log, "control API, dashboard and metrics on")
        hard = resource.prlimit(process.pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))
        before = open_files(process.pid)

        # The flood: each connection sends half a request and waits. A
        # connection may wait for the node's accept queue; the whole flood
        # takes at most FLOOD_SECONDS.
        started = time.monotonic()
        for _ in range(FLOOD):
            if time.monotonic() - started > FLOOD_SECONDS:
                break
            s = socket.socket()
            self.sockets.append(s)
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", api))
                s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % api)
            except OSError:
                pass  # closed at once: over the cap
        flood_seconds = time.monotonic() - started
        attempts = len(self.sockets)
        yield wait_for(lambda: held(self.sockets) <= MAX_CONNECTIONS, 5, what="the cap")
        yield sleep(0.2)
        during = open_files(process.pid)
        holding = held(self.sockets)
        self.assertLessEqual(holding, MAX_CONNECTIONS)
        self.assertLess(during - before, MAX_CONNECTIONS + 8)

        # Meanwhile a paired peer dials the relay port, and gets in.
        beta = RelayService(beta_store, listen=None, peers=[f"alpha@127.0.0.1:{relay}"], reactor=reactor)
        dialled = reactor.seconds()
        beta.startService()
        self.addCleanup(beta.stopService)
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10, what="the peer to connect")
        peer_seconds = reactor.seconds() - dialled

        # The flood lets go: the API answers the command line again.
        for s in self.sockets:
            s.close()
        self.sockets = []
        yield wait_for(lambda: open_files(process.pid) < before + 4, 10, what="the flood's sockets to close")
        result = yield threads.deferToThread(self.cli, home, "status")
        self.assertIn("alpha (relaymesh ", result.stdout)
        if REPORT:
            sys.stderr.write(
                f"\nAPI flood: {attempts} half-sent requests in {flood_seconds:.2f} s, node limited to "
                f"{FD_LIMIT} files; node files open {before} before, {during} during; "
                f"{holding} held by the flood; peer connected after {peer_seconds * 1000:.0f} ms\n"
            )
