"""
The C{twistd relaymesh} plugin's options and service maker.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address
from relaymesh.config import (
    DEFAULT_API,
    DEFAULT_API_FALLBACK,
    DEFAULT_LISTEN,
    TLS_LISTEN_PREFIX,
    NodeConfig,
)
from relaymesh.control.hosts import InvalidHost, parse_host
from relaymesh.discovery import ANNOUNCE_INTERVAL, ANNOUNCE_PORT, BROADCAST_ADDRESS, parse_target
from relaymesh.heartbeats import DEFAULT_HEARTBEAT_INTERVAL
from relaymesh.keystore import KeyStore, KeyStoreError, default_data_dir
from relaymesh.mesh import DEFAULT_MAX_PEERS
from relaymesh.peerid import InvalidPeerId, validate_peer_id
from relaymesh.service import RelayService
from relaymesh.sessions.claude import DEFAULT_CLAUDE_HOME
from relaymesh.sessions.source import CLAUDE_CODE_SOURCE, parse_sessions_option
from relaymesh.startup import exit_on_start_failure, os_error_text
from relaymesh.tls import NodeCertificate, TLSError


def _heartbeat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"--heartbeat: {text!r} is not a positive number of seconds")
    return value


def _max_peers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"--max-peers: {text!r} is not a whole number of at least 1")
    return int(text)


class Options(usage.Options):
    """
    Options of C{twistd relaymesh}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a relaymesh node: listen for peers, dial the --peers, authenticate "
        "each connection with its pre-shared key, send heartbeats and reconnect "
        "with backoff. Wire-compatible with the claudectl 0.49 relay."
    )

    optParameters: list[list[object]] = [
        [
            "data-dir",
            "d",
            None,
            "Key store directory [default: $RELAYMESH_HOME, else ~/.relaymesh]; "
            "~/.claudectl/relay shares keys with claudectl.",
        ],
        [
            "identity",
            "i",
            None,
            "This node's peer id [default: the key store's, created on first use].",
        ],
        [
            "heartbeat",
            None,
            DEFAULT_HEARTBEAT_INTERVAL,
            "Seconds between heartbeats; a peer silent for 3 intervals is dropped.",
            _heartbeat,
        ],
        [
            "max-peers",
            None,
            DEFAULT_MAX_PEERS,
            "Connected peers at most; more inbound connections are refused.",
            _max_peers,
        ],
        [
            "api",
            None,
            DEFAULT_API,
            "Where the control API, dashboard and metrics listen: a Twisted server "
            "endpoint string, or 'none' [default: if its port is taken, any free "
            "loopback port, written to DATA_DIR/api-url].",
        ],
        [
            "api-token-file",
            None,
            None,
            "The API token file [default: DATA_DIR/api-token, made on first start].",
        ],
        [
            "sessions",
            None,
            CLAUDE_CODE_SOURCE,
            "Where the session list the heartbeats carry comes from: claude-code "
            "(this machine's Claude Code sessions, refreshed every 2 s), none, api "
            "(only what PUT /api/sessions sets), or the path of a JSON file another "
            "program keeps current.",
        ],
        [
            "claude-home",
            None,
            DEFAULT_CLAUDE_HOME,
            "Where Claude Code keeps its sessions and transcripts, for --sessions "
            "claude-code.",
        ],
        [
            "announce-to",
            None,
            None,
            f"Where LAN announcements go: an IPv4 address, with :PORT [default: "
            f"{BROADCAST_ADDRESS}:{ANNOUNCE_PORT}]; implies --announce.",
        ],
    ]

    optFlags = [
        [
            "tls",
            None,
            "Use this node's certificate (relaymesh tls-init): listen on tls:9847 "
            "unless --listen says otherwise, and dial every peer not marked legacy: "
            "over TLS.",
        ],
        ["metrics-public", None, "Serve /metrics without the API token."],
        [
            "session-details",
            None,
            "Let sessions carry the paths of the files they changed and their tools' "
            "error messages (never prompts or replies).",
        ],
        [
            "announce",
            None,
            f"Announce this node on the LAN: its identity and TCP port, by UDP "
            f"broadcast every {ANNOUNCE_INTERVAL:g} s [default: off].",
        ],
        ["no-announce", None, "Do not announce this node on the LAN (the default)."],
        [
            "no-outbox",
            None,
            "Send and acknowledge no reliable messages (keep no outbox in "
            "DATA_DIR/state.sqlite3; ack/1 is not announced).",
        ],
        [
            "no-routing",
            None,
            "Route no messages between peers (route/2 is not announced).",
        ],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["peers"] = []
        self["listen"] = []
        self["api-host"] = []

    def opt_listen(self, value: str) -> None:
        """
        Where to accept peers (repeatable): a Twisted server endpoint string
        (tcp:9847, ssl:9847:privateKey=...:certKey=...), tls:PORT for TLS with
        this node's certificate, or none [default: tcp:9847].
        """
        self["listen"].append(value)

    opt_l = opt_listen

    def opt_peers(self, value: str) -> None:
        """
        Peers to dial, comma-separated: host:port or peer_id@host:port
        (repeatable).
        """
        for item in value.replace(",", " ").split():
            try:
                address = parse_peer_address(item)
            except InvalidAddress as e:
                raise usage.UsageError(f"--peers: {e}") from None
            if address not in self["peers"]:
                self["peers"].append(address)

    opt_p = opt_peers

    def opt_api_host(self, value: str) -> None:
        """
        A host name (or NAME:PORT) the control API answers to besides
        localhost, 127.0.0.1, [::1] and its own address (repeatable).
        """
        try:
            parse_host(value.strip())
        except InvalidHost as e:
            raise usage.UsageError(f"--api-host: {e}") from None
        self["api-host"].append(value.strip())

    def postOptions(self) -> None:
        self["tls"] = bool(self["tls"])
        self._check_listen()
        self._check_api()
        self._check_announce()
        self["session-details"] = bool(self["session-details"])
        try:
            parse_sessions_option(self["sessions"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if not self["claude-home"].strip():
            raise usage.UsageError("--claude-home must not be empty")
        self["data-dir"] = self["data-dir"] or default_data_dir()
        keystore = KeyStore(self["data-dir"])
        if self["identity"] is not None:
            try:
                validate_peer_id(self["identity"])
            except InvalidPeerId as e:
                raise usage.UsageError(f"--identity: {e}") from None
            try:
                os.makedirs(self["data-dir"], mode=0o700, exist_ok=True)
            except OSError as e:
                raise usage.UsageError(
                    f"--data-dir {self['data-dir']}: cannot make it: {os_error_text(e)}"
                ) from None
        else:
            try:
                self["identity"] = keystore.identity()
            except KeyStoreError as e:
                raise usage.UsageError(f"--data-dir {self['data-dir']}: {e}") from None
            except OSError as e:
                raise usage.UsageError(
                    f"--data-dir {self['data-dir']}: cannot read or make its identity file "
                    f"{keystore.identity_path()}: {os_error_text(e)}"
                ) from None
        self["keystore"] = keystore
        self._check_tls()

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse the options; under C{twistd}, an error ends the process with
        one line and a pointer to C{--help}, not the whole usage.

        C{twistd} prints all of its usage before an option error of a
        plugin. Parsed on their own (by an application, or a test), these
        options raise the C{usage.UsageError} for the caller to report.
        """
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            command = f"{os.path.basename(sys.argv[0]) or 'twistd'} {self.parent.subCommand}"
            raise SystemExit(f"{command}: {e}\nRun '{command} --help' for the options.") from None

    def _check_announce(self) -> None:
        """
        LAN announcements are off unless --announce or --announce-to.
        """
        target = self["announce-to"]
        try:
            self["announce-to"] = parse_target(BROADCAST_ADDRESS if target is None else target)
        except ValueError as e:
            raise usage.UsageError(f"--announce-to: {e}") from None
        self["announce"] = bool(self["announce"]) or target is not None
        self["no-announce"] = bool(self["no-announce"])
        if self["announce"] and self["no-announce"]:
            raise usage.UsageError("--no-announce: give it or --announce (or --announce-to), not both")

    def _check_listen(self) -> None:
        listen = self["listen"] or [TLS_LISTEN_PREFIX + "9847" if self["tls"] else DEFAULT_LISTEN]
        if [item.strip().lower() for item in listen] == ["none"]:
            self["listen"] = []
            return
        for item in listen:
            plain = "tcp:" + item[len(TLS_LISTEN_PREFIX) :] if item.startswith(TLS_LISTEN_PREFIX) else item
            _endpoint("--listen", plain)
        self["listen"] = listen

    def _check_tls(self) -> None:
        """
        With --tls, dial every peer not marked legacy over TLS; load the
        node certificate wherever TLS is used.
        """
        if self["tls"]:
            self["peers"] = [
                p if p.legacy else dataclasses.replace(p, tls=True) for p in self["peers"]
            ]
        uses_tls = any(p.tls for p in self["peers"]) or any(
            item.startswith(TLS_LISTEN_PREFIX) for item in self["listen"]
        )
        self["certificate"] = None
        if uses_tls:
            try:
                self["certificate"] = NodeCertificate.from_data_dir(self["data-dir"])
            except TLSError as e:
                raise usage.UsageError(f"--tls: {e}") from None

    def _check_api(self) -> None:
        api = self["api"]
        self["api"] = None if api.strip().lower() == "none" else _endpoint("--api", api)
        token_file = self["api-token-file"]
        if token_file is not None:
            if not token_file.strip():
                raise usage.UsageError("--api-token-file must not be empty")
            if os.path.isdir(token_file):
                raise usage.UsageError(f"--api-token-file: {token_file} is a directory")
        self["metrics-public"] = bool(self["metrics-public"])


def _endpoint(option: str, description: str) -> str:
    """
    Check that a server endpoint description parses, without listening.

    Twisted reads its numbers (the port, C{backlog}) with C{int}, which
    takes any script's digits: C{tcp:\u0669\u0668\u0664\u0667} would
    listen on 9847. Numbers here are ASCII digits only, as everywhere else
    a port is read.

    @raise usage.UsageError: naming the option, if it does not.
    """
    if any(c.isdigit() and not c.isascii() for c in description):
        raise usage.UsageError(
            f"{option}: invalid endpoint {description!r}: write ports and numbers in ASCII digits"
        )
    try:
        # Parsing a description only builds an endpoint object; nothing
        # listens on it, so it needs no reactor.
        serverFromString(None, description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"{option}: invalid endpoint {description!r}: {e}") from None
    return description


def makeService(options: Options, reactor: Any = None) -> RelayService:
    """
    Build the node described by the options.

    @param reactor: The node's reactor. Without one (as C{twistd} calls
        this), the node runs on the global reactor, and a node that cannot
        start stops it and ends the process with a non-zero exit status
        (L{exit_on_start_failure}).
    """
    if reactor is not None:
        return _record_no_api(RelayService(options["keystore"], reactor=reactor, config=node_config(options)))
    from twisted.internet import reactor as global_reactor

    node = _record_no_api(RelayService(options["keystore"], reactor=global_reactor, config=node_config(options)))
    exit_on_start_failure(node.whenStarted(), global_reactor)
    return node


def _record_no_api(node: RelayService) -> RelayService:
    """
    Have a node without a control API (C{--api none}) say so in its data
    directory's C{api-url} while it runs (L{relaymesh.control.service.NoApiRecord}).
    """
    if node.api is None:
        from relaymesh.control.service import NoApiRecord

        # Service.setServiceParent, which Twisted leaves unannotated
        NoApiRecord(node.keystore.path).setServiceParent(node)  # type: ignore[no-untyped-call]
    return node


def node_config(options: Options) -> NodeConfig:
    """
    The L{NodeConfig} the options describe.
    """
    peers: list[PeerAddress] = options["peers"]
    return NodeConfig.make(
        options["listen"],
        peers,
        identity=options["identity"],
        heartbeat_interval=options["heartbeat"],
        max_peers=options["max-peers"],
        api=options["api"],
        api_token_file=options["api-token-file"],
        metrics_public=options["metrics-public"],
        api_fallback=DEFAULT_API_FALLBACK if options["api"] == DEFAULT_API else None,
        api_hosts=tuple(options["api-host"]),
        announce_to=options["announce-to"] if options["announce"] else None,
        tls=options["certificate"],
        outbox=not options["no-outbox"],
        routing=not options["no-routing"],
        sessions=options["sessions"],
        claude_home=options["claude-home"],
        session_details=options["session-details"],
    )
