"""
Tests for start-up failures (L{relaymesh.startup}): a node that cannot
listen, serve its API or open its outbox logs one line naming the option
and the cause, closes what it had opened and fails C{whenStarted};
C{twistd relaymesh} then exits with a non-zero status, and its option
errors are one line and a pointer to C{--help}.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Generator

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.control.service import URL_FILE
from relaymesh.keystore import KeyStore
from relaymesh.listener import ListenerService
from relaymesh.reliable.store import STORE_FILE
from relaymesh.service import RelayService
from relaymesh.startup import (
    EXIT_START_FAILED,
    StartupError,
    exit_on_start_failure,
    listen_failure_reason,
)
from relaymesh.test.realtime import ProcessesMixin, free_port, log_lines, wait_for
from relaymesh.tls import NodeCertificate

#: How the system words "address in use", as the error says it.
IN_USE = os.strerror(errno.EADDRINUSE).lower()


def taken_port(test: SynchronousTestCase) -> int:
    """
    A port on 127.0.0.1 that a socket of the test listens on until the
    test ends.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(s.close)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port: int = s.getsockname()[1]
    return port


def refused(port: int) -> bool:
    """
    Whether a connection to 127.0.0.1:PORT is refused (nothing listens).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def error_events(test: SynchronousTestCase) -> EventLoggingObserver:
    """
    The log events of the test, to look for error lines in.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer


def error_lines(events: EventLoggingObserver) -> list[str]:
    """
    The text of each event logged at level error or above.
    """
    return [
        formatEvent(e)
        for e in events
        if e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


class RealSocketTests(TestCase):
    """
    A node on the real reactor whose port, API port or outbox is not to
    be had.
    """

    timeout = 20

    def setUp(self):
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.events = error_events(self)

    @defer.inlineCallbacks
    def test_listen_port_taken(self):
        """
        A --listen port in use: one error line naming the option and the
        cause, whenStarted() fails with it, nothing runs (not the
        heartbeats, not the diallers).
        """
        port = taken_port(self)
        listen = f"tcp:{port}:interface=127.0.0.1"
        node = RelayService(
            self.keystore, listen=listen, peers=["beta@127.0.0.1:1"], reactor=reactor
        )
        node.startService()
        error = yield self.assertFailure(node.whenStarted(), StartupError)
        expected = f"--listen {listen}: port {port} is already in use ({IN_USE})"
        self.assertEqual(str(error), expected)
        self.assertIsInstance(error.__cause__, CannotListenError)
        self.assertEqual(error_lines(self.events), [expected + "; the node does not start"])
        self.assertFalse(node.running)
        self.assertEqual([o.connector for o in node.outbound()], [None])
        self.assertFalse(node.mesh._heartbeats._loop.running)
        # a second caller learns it too
        self.assertEqual(str(self.failureResultOf(node.whenStarted(), StartupError).value), expected)

    @defer.inlineCallbacks
    def test_api_port_taken(self):
        """
        An --api port in use: the relay port that had opened is closed
        again before whenStarted() fails, and no api-url file is left.
        """
        port, relay_port = taken_port(self), free_port()
        api = f"tcp:{port}:interface=127.0.0.1"
        node = RelayService(
            self.keystore, listen=f"tcp:{relay_port}:interface=127.0.0.1", api=api, reactor=reactor
        )
        node.startService()
        error = yield self.assertFailure(node.whenStarted(), StartupError)
        self.assertEqual(str(error), f"--api {api}: port {port} is already in use ({IN_USE})")
        self.assertEqual(len(error_lines(self.events)), 1)
        self.assertTrue(refused(relay_port))
        self.assertIsNone(node.listener.port)
        self.assertFalse(os.path.exists(os.path.join(self.keystore.path, URL_FILE)))

    @defer.inlineCallbacks
    def test_outbox_cannot_open(self):
        """
        A data directory that cannot be made (a path under a regular file,
        which fails for root too): the outbox cannot open, and the error
        names --data-dir and the cause; nothing listens.
        """
        base = self.mktemp()
        with open(base, "w") as f:
            f.write("a file, not a directory\n")
        data_dir = os.path.join(base, "sub")
        relay_port = free_port()
        node = RelayService(
            KeyStore(data_dir),
            listen=f"tcp:{relay_port}:interface=127.0.0.1",
            identity="alpha",
            tls=NodeCertificate.generate("alpha"),
            outbox=True,
            reactor=reactor,
        )
        node.startService()
        error = yield self.assertFailure(node.whenStarted(), StartupError)
        reason = os.strerror(errno.ENOTDIR).lower()
        self.assertEqual(str(error), f"--data-dir {data_dir}: cannot open the outbox: {reason}")
        self.assertEqual(len(error_lines(self.events)), 1)
        self.assertIsNone(node.listener.port)
        self.assertTrue(refused(relay_port))

    @defer.inlineCallbacks
    def test_store_cannot_open(self):
        """
        A store file that SQLite cannot open (a directory in its place):
        one line naming --data-dir, and the store error as the cause.
        """
        os.makedirs(os.path.join(self.keystore.path, STORE_FILE))
        node = RelayService(
            self.keystore, listen="tcp:0:interface=127.0.0.1", outbox=True, reactor=reactor
        )
        node.startService()
        error = yield self.assertFailure(node.whenStarted(), StartupError)
        self.assertTrue(str(error).startswith(f"--data-dir {self.keystore.path}: cannot open the outbox: "))
        self.assertNotIn("\n", str(error))
        [line] = error_lines(self.events)
        self.assertNotIn("Traceback", line)
        self.assertIsNone(node.store)


class MemoryReactorTests(SynchronousTestCase):
    """
    Start-up failures on a memory reactor, whose ports the test sees.
    """

    def setUp(self):
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.events = error_events(self)
        self.reactor = PortsReactor(taken={9850: errno.EADDRINUSE, 80: errno.EACCES})

    def test_second_listener_fails(self):
        """
        Of two --listen, the second cannot listen: the first is closed,
        and the error names the second.
        """
        node = RelayService(self.keystore, listen=["tcp:9851", "tcp:9850"], reactor=self.reactor)
        node.startService()
        error = self.failureResultOf(node.whenStarted(), StartupError).value
        self.assertEqual(error.option, "--listen tcp:9850")
        self.assertEqual(self.reactor.open_ports(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_privileged_port(self):
        """
        A port the user may not listen on says so.
        """
        node = RelayService(self.keystore, listen="tcp:80", reactor=self.reactor)
        node.startService()
        error = self.failureResultOf(node.whenStarted(), StartupError).value
        self.assertEqual(
            str(error),
            f"--listen tcp:80: port 80 on every interface is not allowed for this user "
            f"({os.strerror(errno.EACCES).lower()})",
        )

    def test_api_fallback_taken_too(self):
        """
        When the API's port and its fallback are both taken, the error names
        --api; the relay listener is closed.
        """
        node = RelayService(
            self.keystore,
            listen="tcp:9851",
            api="tcp:9850:interface=127.0.0.1",
            api_fallback="tcp:9850",
            reactor=self.reactor,
        )
        node.startService()
        error = self.failureResultOf(node.whenStarted(), StartupError).value
        self.assertEqual(error.option, "--api tcp:9850:interface=127.0.0.1")
        self.assertEqual(self.reactor.open_ports(), [])

    def test_api_token_unreadable(self):
        """
        An --api-token-file that cannot be made: the error names that
        option and the cause; the relay listener is closed.
        """
        base = self.mktemp()
        with open(base, "w") as f:
            f.write("")
        token_file = os.path.join(base, "token")
        node = RelayService(
            self.keystore, listen="tcp:9851", api="tcp:9849", api_token_file=token_file, reactor=self.reactor
        )
        node.startService()
        error = self.failureResultOf(node.whenStarted(), StartupError).value
        self.assertTrue(str(error).startswith(f"--api-token-file {token_file}: cannot read or make "))
        self.assertEqual(self.reactor.open_ports(), [])

    def test_restart_after_failure(self):
        """
        Once what kept it from starting is gone, the same node starts.
        """
        node = RelayService(self.keystore, listen="tcp:9850", reactor=self.reactor)
        node.startService()
        self.failureResultOf(node.whenStarted(), StartupError)
        del self.reactor.taken[9850]
        node.startService()
        self.addCleanup(node.stopService)
        self.successResultOf(node.whenStarted())
        self.assertEqual(self.reactor.open_ports(), [9850])

    def test_reason_texts(self):
        """
        Every listen failure has a reason in words.
        """
        for code, words in [
            (errno.EADDRNOTAVAIL, "10.9.9.9 is not an address of this machine"),
            (errno.ECONNRESET, "cannot listen on port 9 of 10.9.9.9"),
        ]:
            reason = listen_failure_reason(CannotListenError("10.9.9.9", 9, OSError(code, os.strerror(code))))
            self.assertTrue(reason.startswith(words), reason)
            self.assertIn(os.strerror(code).lower(), reason)
        self.assertEqual(listen_failure_reason(CannotListenError("", 9, "odd")), "cannot listen on port 9 of every interface (odd)")
        self.assertEqual(listen_failure_reason(ValueError("bad\nthing")), "bad thing")


class TrackedPort:
    """
    A listening port in memory that knows whether it was stopped.
    """

    def __init__(self, port: int) -> None:
        self.address = IPv4Address("TCP", "0.0.0.0", port)
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> defer.Deferred[None]:
        self.stopped = True
        return defer.succeed(None)


class PortsReactor(MemoryReactorClock):
    """
    A memory reactor where some ports cannot be listened on, that knows
    which of its ports still listen.

    @ivar taken: port -> the errno listening on it fails with.
    """

    def __init__(self, taken: dict[int, int]) -> None:
        MemoryReactorClock.__init__(self)
        self.taken = dict(taken)
        self.ports: list[TrackedPort] = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            code = self.taken[port]
            raise CannotListenError(interface, port, OSError(code, os.strerror(code)))
        MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)
        listening = TrackedPort(port)
        self.ports.append(listening)
        return listening

    def open_ports(self) -> list[int]:
        return [p.address.port for p in self.ports if not p.stopped]


class ExitTests(SynchronousTestCase):
    """
    L{exit_on_start_failure}: how C{twistd relaymesh} ends when its node
    cannot start.
    """

    def setUp(self):
        self.reactor = FakeReactor()
        self.at_exit: list = []
        self.exits: list[int] = []
        self.started: defer.Deferred[None] = defer.Deferred()
        self.status = exit_on_start_failure(
            self.started, self.reactor, exit=self.exits.append, at_exit=self.at_exit.append
        )

    def test_started(self):
        """
        A node that starts: the reactor runs on, the process exits as it
        would have.
        """
        self.started.callback(None)
        self.assertEqual(self.reactor.stops, 0)
        [handler] = self.at_exit
        handler()
        self.assertEqual(self.exits, [])
        self.assertEqual(self.status, [])

    def test_failed_while_running(self):
        """
        A node that cannot start: the reactor stops, and the process exits
        with a non-zero status at interpreter exit, not before.
        """
        self.reactor.running = True
        self.started.errback(Failure(StartupError("--listen tcp:1", "taken")))
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.exits, [])
        [handler] = self.at_exit
        handler()
        self.assertEqual(self.exits, [EXIT_START_FAILED])
        self.assertNotEqual(EXIT_START_FAILED, 0)

    def test_failed_before_running(self):
        """
        A node that fails before the reactor runs (twistd starts it first)
        stops the reactor once it runs.
        """
        self.started.errback(Failure(StartupError("--listen tcp:1", "taken")))
        self.assertEqual(self.reactor.stops, 0)
        self.reactor.run()
        self.assertEqual(self.reactor.stops, 1)

    def test_already_stopping(self):
        """
        A reactor that is already stopping (a signal) is left to it.
        """
        self.reactor.running = True
        self.reactor.stopping = True
        self.started.errback(Failure(StartupError("--listen tcp:1", "taken")))
        self.assertEqual(self.reactor.stops, 0)
        self.assertEqual(self.status, [EXIT_START_FAILED])


class FakeReactor:
    """
    Just enough of a reactor for L{exit_on_start_failure}.
    """

    def __init__(self) -> None:
        self.running = False
        self.stopping = False
        self.stops = 0
        self._when_running: list = []

    def callWhenRunning(self, f) -> None:
        if self.running:
            f()
        else:
            self._when_running.append(f)

    def run(self) -> None:
        self.running = True
        for f in self._when_running:
            f()

    def stop(self) -> None:
        if self.stopping or not self.running:
            raise ReactorNotRunning()
        self.stopping = True
        self.stops += 1


class OptionTests(SynchronousTestCase):
    """
    Option errors of C{twistd relaymesh}.
    """

    def test_under_twistd(self):
        """
        Parsed as twistd's subcommand, an error ends the process with one
        line and a pointer to C{--help}, not the usage.
        """
        from twisted.scripts.twistd import ServerOptions

        self.patch(sys, "argv", ["twistd", "relaymesh", "--bogus"])
        for args, error in [
            (["--bogus"], "option --bogus not recognized"),
            (["--listen", "bogus:1"], "--listen: invalid endpoint 'bogus:1'"),
        ]:
            config = ServerOptions()
            with self.assertRaises(SystemExit) as ctx:
                config.parseOptions(["relaymesh", *args])
            first, second = str(ctx.exception.code).split("\n")
            self.assertTrue(first.startswith(f"twistd relaymesh: {error}"), first)
            self.assertEqual(second, "Run 'twistd relaymesh --help' for the options.")

    def test_on_their_own(self):
        """
        Parsed on their own, the options raise the usage error for the
        caller to report, and --help still lists every option.
        """
        options = tap.Options()
        with self.assertRaises(usage.UsageError):
            options.parseOptions(["--bogus"])
        text = str(tap.Options())
        for name in ("--listen", "--peers", "--api", "--announce", "--announce-to", "--no-announce", "--data-dir"):
            self.assertIn(name, text)

    def test_data_dir_under_a_file(self):
        """
        A data directory that cannot be made or read is blamed on
        --data-dir, with the cause; not on --identity.
        """
        base = self.mktemp()
        with open(base, "w") as f:
            f.write("")
        data_dir = os.path.join(base, "sub")
        reason = os.strerror(errno.ENOTDIR).lower()
        for extra in ([], ["--identity", "alpha"]):
            with self.assertRaises(usage.UsageError) as ctx:
                tap.Options().parseOptions(["--data-dir", data_dir, *extra])
            message = str(ctx.exception)
            self.assertTrue(message.startswith(f"--data-dir {data_dir}: "), message)
            self.assertTrue(message.endswith(reason), message)
            self.assertNotIn("--identity", message)

    def test_identity_file_damaged(self):
        """
        An identity file that holds no peer id is the data directory's
        fault too.
        """
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "identity"), "w") as f:
            f.write("not a peer id!\n")
        with self.assertRaises(usage.UsageError) as ctx:
            tap.Options().parseOptions(["--data-dir", data_dir])
        self.assertTrue(str(ctx.exception).startswith(f"--data-dir {data_dir}: "))


class TwistdTests(ProcessesMixin, TestCase):
    """
    C{twistd relaymesh} processes that cannot start, on 127.0.0.1.
    """

    timeout = 60

    def setUp(self):
        self.setUpProcesses()
        self.home = os.path.join(self.base, "home")

    @defer.inlineCallbacks
    def ended(
        self, process: subprocess.Popen, bound: float = 15
    ) -> Generator[defer.Deferred[object], object, None]:
        yield wait_for(lambda: process.poll() is not None, bound, 0.05, what="the process to end")

    def error_lines(self, logfile: str) -> list[str]:
        return [line for line in log_lines(logfile) if "#error]" in line or "#critical]" in line]

    @defer.inlineCallbacks
    def test_listen_port_taken(self):
        """
        A taken --listen port: the process ends on its own within the
        bound, with a non-zero status and one error line, no traceback.
        """
        port = taken_port(self)
        listen = f"tcp:{port}:interface=127.0.0.1"
        process, logfile = self.twistd("taken", self.home, "--listen", listen, "--api", "none")
        yield self.ended(process)
        self.assertEqual(process.returncode, EXIT_START_FAILED)
        lines = log_lines(logfile)
        self.assertFalse([line for line in lines if "Traceback" in line], lines)
        [line] = self.error_lines(logfile)
        self.assertTrue(
            line.endswith(f"--listen {listen}: port {port} is already in use ({IN_USE}); the node does not start"),
            line,
        )

    @defer.inlineCallbacks
    def test_api_port_taken(self):
        """
        A taken --api port: the relay port that opened is closed, the
        process ends with a non-zero status.
        """
        port, relay_port = taken_port(self), free_port()
        process, logfile = self.twistd(
            "api-taken",
            self.home,
            "--listen",
            f"tcp:{relay_port}:interface=127.0.0.1",
            "--api",
            f"tcp:{port}:interface=127.0.0.1",
        )
        yield self.ended(process)
        self.assertEqual(process.returncode, EXIT_START_FAILED)
        [line] = self.error_lines(logfile)
        self.assertIn(f"--api tcp:{port}:interface=127.0.0.1: port {port} is already in use", line)
        lines = log_lines(logfile)
        opened = [i for i, text in enumerate(lines) if f"listening on 127.0.0.1:{relay_port}" in text]
        closed = [i for i, text in enumerate(lines) if f"Port {relay_port} Closed" in text]
        self.assertEqual(len(opened), 1, lines)
        self.assertEqual(len(closed), 1, lines)
        self.assertLess(opened[0], closed[0])
        self.assertTrue(refused(relay_port))
        self.assertFalse([line for line in log_lines(logfile) if "Traceback" in line])

    def test_option_error(self):
        """
        C{twistd relaymesh --bogus}: one line and a pointer to --help on
        standard error, nothing else, exit status 1.
        """
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                "-n",
                "relaymesh",
                "--bogus",
            ],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "twistd relaymesh: option --bogus not recognized",
                "Run 'twistd relaymesh --help' for the options.",
            ],
        )


class ListenerServiceTests(SynchronousTestCase):
    """
    L{ListenerService} on its own.
    """

    def test_names_its_option(self):
        """
        It fails its start with a L{StartupError} that names its option,
        and is then not running.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        reactor_ = PortsReactor(taken={9850: errno.EADDRINUSE})
        listener = ListenerService(TCP4ServerEndpoint(reactor_, 9850), Factory(), "alpha", "--listen tcp:9850")
        with self.assertRaises(StartupError) as ctx:
            listener.startService()
        self.assertEqual(ctx.exception.option, "--listen tcp:9850")
        self.assertFalse(listener.running)

    def test_late_failure_logged(self):
        """
        An endpoint that fails later than at once is logged as one error
        line naming the option; the service is then not running.
        """
        events = error_events(self)
        listening: defer.Deferred = defer.Deferred()

        class Later:
            def listen(self, factory):
                return listening

        listener = ListenerService(Later(), None, "alpha", "--listen onion:80")
        listener.startService()
        listening.errback(CannotListenError("", 80, OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))))
        self.assertFalse(listener.running)
        self.assertEqual(error_lines(events), [f"--listen onion:80: port 80 is already in use ({IN_USE})"])
