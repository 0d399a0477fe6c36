"""
Peer-supplied text on its way to a terminal or a log: every line the
command line prints, and the control plane's log lines, show escapes where a
peer put control characters (L{relaymesh.printable}).
"""

from __future__ import annotations

import argparse
from io import StringIO

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.cli import main as cli_main
from relaymesh.cli.base import Command, CommandError, Context, terminal_text
from relaymesh.cli.live import describe_event
from relaymesh.control.plane import ControlPlane
from relaymesh.control.site import make_site
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.apisupport import TOKEN

#: What a hostile peer puts in a string: erase the line and start a fake
#: one, write the clipboard (OSC 52), a C1 control, a bidirectional
#: override.
HOSTILE = "\x1b[2K\r10:00:00 mallory connected\x1b]52;c;ZXZpbA==\x07\x9b1m\u202e"


def visible(text: str) -> bool:
    """
    Whether every line of C{text} is free of anything a terminal acts on.
    """
    return all(line.isprintable() for line in text.split("\n"))


class DescribeEventTests(SynchronousTestCase):
    """
    Every field of every kind of event goes through L{printable}.
    """

    def test_every_kind(self):
        message = {"id": HOSTILE, "msg_type": HOSTILE, "payload": {HOSTILE: [HOSTILE]}}
        events = [
            {"event": "message", "from": HOSTILE, "message": message, "time": 0},
            {"event": "peer_connected", "peer_id": HOSTILE, "direction": HOSTILE, "address": HOSTILE},
            {"event": "peer_disconnected", "peer_id": HOSTILE, "reason": HOSTILE},
            {"event": "peer_denied", "address": HOSTILE, "direction": HOSTILE, "reason": HOSTILE},
            {"event": "peer_reconnect_scheduled", "peer_id": HOSTILE, "delay": HOSTILE},
            {"event": "peer_connecting", "peer_id": HOSTILE, "address": HOSTILE},
            {"event": HOSTILE, "other": HOSTILE},
        ]
        for event in events:
            line = describe_event(event)
            self.assertTrue(line.isprintable(), repr(line))
            self.assertRegex(line, r"\\(x1b|u001b)")
        # Fields of the wrong kind are shown as placeholders, not trusted.
        for event, shown in [
            ({"event": "message", "message": HOSTILE, "time": HOSTILE}, "--:--:-- message from ?: ? null (?)"),
            ({"event": "peer_connected", "time": 1e300}, "--:--:-- (unknown peer) connected (?, ?)"),
        ]:
            self.assertEqual(describe_event(event), shown)

    def test_plain_text_unchanged(self):
        line = describe_event(
            {"event": "peer_connected", "peer_id": "beta", "direction": "inbound", "address": "127.0.0.1:5", "time": 0}
        )
        self.assertEqual(line[9:], "beta connected (inbound, 127.0.0.1:5)")
        line = describe_event({"event": "peer_connecting", "address": "h:1"})
        self.assertEqual(line, "--:--:-- dialling at h:1")


class TerminalTextTests(SynchronousTestCase):
    def test_guard(self):
        """
        The guard on every line printed keeps line breaks, escapes the rest
        of what a terminal acts on, and leaves text that is already safe
        alone.
        """
        self.assertEqual(terminal_text("a\nb\\x1b c\u00e9"), "a\nb\\x1b c\u00e9")
        guarded = terminal_text(HOSTILE + "\n" + HOSTILE)
        self.assertTrue(visible(guarded))
        self.assertEqual(guarded.count("\n"), 1)
        self.assertTrue(guarded.startswith("\\x1b[2K\\r10:00:00 mallory connected\\x1b]52;c;ZXZpbA==\\x07\\x9b1m\\u202e"))

    def test_emit_and_errors(self):
        """
        A command's result text, its warnings and its error line are all
        guarded, whatever module made them.
        """
        stdout, stderr = StringIO(), StringIO()
        context = Context(self.mktemp(), False, stdout, stderr)
        context.emit({}, f"IDENTITY\n{HOSTILE}")
        context.warn(f"note: {HOSTILE}")
        self.assertTrue(visible(stdout.getvalue()))
        self.assertEqual(stdout.getvalue().count("\n"), 2)
        self.assertTrue(visible(stderr.getvalue()))
        self.assertEqual(stderr.getvalue().count("\n"), 1)

        def fail(context: Context, args: argparse.Namespace) -> None:
            raise CommandError(f"the peer said {HOSTILE}")

        self.patch(cli_main, "COMMANDS", (Command("fail", "fails", lambda parser: None, fail),))
        stdout, stderr = StringIO(), StringIO()
        status = cli_main.main(["--data-dir", self.mktemp(), "fail"], stdout=stdout, stderr=stderr)
        self.assertEqual(status, 2)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertTrue(visible(stderr.getvalue()), repr(stderr.getvalue()))
        self.assertTrue(stderr.getvalue().startswith("relaymesh: error: the peer said \\x1b[2K 10:00"))


class ControlLogTests(SynchronousTestCase):
    """
    The control plane's log lines show a request's method and path escaped
    (Twisted refuses C0 controls in a request line, but not DEL or bytes
    that read as C1 controls).
    """

    def test_failure_line(self):
        clock = MemoryReactorClock()
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        control = ControlPlane(RelayService(keystore, listen=None, reactor=clock), clock, token=TOKEN)

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        control.authorize = broken
        site = make_site(control)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 9849))
        channel = site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /api/status/\x9b2J\x7f HTTP/1.1\r\nHost: 127.0.0.1:9849\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        self.assertIn(b"HTTP/1.1 500 ", transport.value())
        [failure] = [e for e in events if e.get("log_failure") is not None]
        text = formatEvent(failure)
        self.assertTrue(text.isprintable(), repr(text))
        self.assertIn("GET /api/status/\\x9b2J\\x7f failed", text)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
