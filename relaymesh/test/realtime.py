"""
Helpers for the tests that use the real reactor, real sockets on 127.0.0.1
and real processes: waiting with a bound, free ports, and C{twistd
relaymesh} processes stopped by their own handles.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import relaymesh

if TYPE_CHECKING:
    from relaymesh.listener import ListenerService
    from relaymesh.service import RelayService

    # what a mixin expects of the test case it is mixed into
    _CaseBase = SynchronousTestCase
else:
    _CaseBase = object


def wait_for(
    predicate: Callable[[], object], timeout: float, interval: float = 0.02, what: str = ""
) -> defer.Deferred:
    """
    Fire once C{predicate()} is true; fail after C{timeout} seconds.

    @param what: what is awaited, for the failure message (else the
        predicate's docstring).
    """
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if predicate():
            loop.stop()
        elif reactor.seconds() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate.__doc__ or predicate}"
            )

    loop = task.LoopingCall(check)
    return loop.start(interval)


def sleep(seconds: float) -> defer.Deferred:
    """
    Fire after C{seconds} of real time.
    """
    return task.deferLater(reactor, seconds, lambda: None)


def free_port(kind: int = socket.SOCK_STREAM, low: int = 0, high: int = 0) -> int:
    """
    A port on 127.0.0.1 that nothing uses right now; from C{low} to C{high}
    if given.
    """
    candidates = [0] if not low else random.sample(range(low, high + 1), high + 1 - low)
    for candidate in candidates:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = s.getsockname()[1]
            return port
    raise SkipTest(f"no free port from {low} to {high}")


def paired_homes(base: str, id_a: str, id_b: str) -> tuple[str, str]:
    """
    Two data directories under C{base}, C{a} and C{b}, with the identities
    C{id_a} and C{id_b} and a shared key for each other.
    """
    from relaymesh.keystore import KeyStore

    homes = os.path.join(base, "a"), os.path.join(base, "b")
    key = os.urandom(32)
    for home, identity, other in ((homes[0], id_a, id_b), (homes[1], id_b, id_a)):
        store = KeyStore(home)
        store.set_identity(identity)
        store.set_key(other, key)
    return homes


def loopback_node(
    case: SynchronousTestCase, identity: str, peers: Sequence[str] = (), start: bool = True
) -> RelayService:
    """
    A L{relaymesh.service.RelayService} in this process on the real
    reactor, on a fresh key store with C{identity}, listening and serving
    its control API on free loopback ports; started unless C{start} is
    false, and stopped when C{case} cleans up.
    """
    from relaymesh.keystore import KeyStore
    from relaymesh.service import RelayService

    keystore = KeyStore(case.mktemp())
    keystore.set_identity(identity)
    node = RelayService(
        keystore,
        listen="tcp:0:interface=127.0.0.1",
        api="tcp:0:interface=127.0.0.1",
        peers=peers,
        reactor=reactor,
    )
    if start:
        node.startService()
    case.addCleanup(lambda: node.stopService() if node.running else None)
    return node


def tls_node(case: SynchronousTestCase, identity: str, **kwargs: Any) -> RelayService:
    """
    A L{relaymesh.service.RelayService} on the real reactor, not started,
    on a fresh key store with C{identity} and a certificate in its data
    directory; C{kwargs} go to the service.
    """
    from relaymesh.keystore import KeyStore
    from relaymesh.service import RelayService
    from relaymesh.tls import NodeCertificate, create_certificate

    data_dir = case.mktemp()
    keystore = KeyStore(data_dir)
    keystore.set_identity(identity)
    create_certificate(data_dir, identity)
    return RelayService(keystore, reactor=reactor, tls=NodeCertificate.from_data_dir(data_dir), **kwargs)


def listening_port(listener: ListenerService | None) -> int:
    """
    The TCP port a node's listener (its peers' or its API's) listens on: it
    must be listening.
    """
    assert listener is not None and listener.port is not None
    address = listener.port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


def tls_pair(case, listen: str = "tls:", dial: str = "tls:"):
    """
    Two L{tls_node}s sharing a key: C{alpha}, started, listening on a free
    loopback port with the endpoint prefix C{listen} (C{"tls:"} or
    C{"tcp:"}), and C{beta}, not started yet, whose peer is alpha there,
    dialled as C{dial} says (C{"tls:"}, or C{""} for the in-band upgrade).
    Both are stopped when C{case} cleans up.
    """
    alpha = tls_node(case, "alpha", listen=f"{listen}0:interface=127.0.0.1")
    alpha.startService()
    case.addCleanup(alpha.stopService)
    port = listening_port(alpha.listener)
    key = os.urandom(32)
    alpha.keystore.set_key("beta", key)
    beta = tls_node(case, "beta", listen=None, peers=[f"{dial}alpha@127.0.0.1:{port}"])
    beta.keystore.set_key("alpha", key)
    case.addCleanup(lambda: beta.stopService() if beta.running else None)
    return alpha, beta


def log_lines(path: str) -> list[str]:
    """
    The lines of a log file so far (none if it does not exist yet).
    """
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class ProcessesMixin(_CaseBase):
    """
    For a trial C{TestCase}: runs the C{relaymesh} command and C{twistd
    relaymesh} nodes as processes of the relaymesh under test, in a private
    folder, and stops each node by its own handle when the test ends.

    @ivar base: The test's folder.
    @ivar env: The environment the processes get.
    """

    def setUpProcesses(self) -> None:
        if not hasattr(signal, "SIGTERM") or sys.platform == "win32":
            raise SkipTest("needs POSIX processes")
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        root = os.path.dirname(os.path.dirname(os.path.abspath(relaymesh.__file__)))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self.env.pop("RELAYMESH_API", None)
        self.processes: list[subprocess.Popen] = []
        self.addCleanup(self.stopProcesses)

    def stopProcesses(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def home(self, name: str) -> str:
        """
        A data directory in the test's folder, with an identity made by
        C{relaymesh identity}.
        """
        home = os.path.join(self.base, name)
        self.cli(home, "identity")
        return home

    def cli(self, home: str, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
        """
        Run C{relaymesh --data-dir HOME ARGS}; check its exit status.
        """
        result = subprocess.run(
            [sys.executable, "-m", "relaymesh", "--data-dir", home, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=45,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, status, result.stderr)
        return result

    def twistd(self, name: str, home: str, *args: str) -> tuple[subprocess.Popen, str]:
        """
        Start C{twistd -n relaymesh --data-dir HOME ARGS}, logging to a file.

        @return: the process and its log file.
        """
        logfile = os.path.join(self.base, f"{name}.log")
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                f"--logfile={logfile}",
                "relaymesh",
                "--data-dir",
                home,
                # the machine's own Claude Code sessions stay out of tests
                "--claude-home",
                os.path.join(self.base, "no-claude"),
                *args,
            ],
            env=self.env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process, logfile

    def wait_log(self, logfile: str, pattern: str, timeout: float = 15, after: int = 0) -> defer.Deferred:
        """
        Fire once a line of the log (from line C{after} on) matches C{pattern}.
        """
        regex = re.compile(pattern)
        return wait_for(
            lambda: any(regex.search(line) for line in log_lines(logfile)[after:]),
            timeout,
            0.05,
            what=f"{pattern!r} in {os.path.basename(logfile)}",
        )
