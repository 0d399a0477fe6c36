"""
The C{twistd relaymesh} plugin's options and service maker.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address
from relaymesh.discovery import ANNOUNCE_PORT, BROADCAST_ADDRESS, parse_target
from relaymesh.keystore import KeyStore, KeyStoreError, default_data_dir
from relaymesh.mesh import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_PEERS
from relaymesh.peerid import InvalidPeerId, validate_peer_id
from relaymesh.service import DEFAULT_API, DEFAULT_API_FALLBACK, DEFAULT_LISTEN, RelayService


def _heartbeat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"--heartbeat: {text!r} is not a positive number of seconds")
    return value


def _max_peers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
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

    optParameters = [
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Where to listen: a Twisted server endpoint string, or 'none'.",
        ],
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
            "announce-to",
            None,
            BROADCAST_ADDRESS,
            f"Where LAN announcements go: an IPv4 address, with :PORT [default port "
            f"{ANNOUNCE_PORT}].",
        ],
    ]

    optFlags = [
        ["metrics-public", None, "Serve /metrics without the API token."],
        ["no-announce", None, "Do not announce this node on the LAN (UDP broadcast)."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["peers"] = []

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

    def postOptions(self) -> None:
        listen = self["listen"]
        if listen.strip().lower() == "none":
            self["listen"] = None
        else:
            try:
                serverFromString(MemoryReactor(), listen)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--listen: invalid endpoint {listen!r}: {e}") from None
        self._check_api()
        try:
            self["announce-to"] = parse_target(self["announce-to"])
        except ValueError as e:
            raise usage.UsageError(f"--announce-to: {e}") from None
        self["no-announce"] = bool(self["no-announce"])
        self["data-dir"] = self["data-dir"] or default_data_dir()
        keystore = KeyStore(self["data-dir"])
        try:
            if self["identity"] is not None:
                validate_peer_id(self["identity"])
            else:
                self["identity"] = keystore.identity()
        except (InvalidPeerId, KeyStoreError, OSError) as e:
            raise usage.UsageError(f"--identity: {e}") from None
        self["keystore"] = keystore

    def _check_api(self) -> None:
        api = self["api"]
        if api.strip().lower() == "none":
            self["api"] = None
        else:
            try:
                serverFromString(MemoryReactor(), api)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--api: invalid endpoint {api!r}: {e}") from None
        token_file = self["api-token-file"]
        if token_file is not None:
            if not token_file.strip():
                raise usage.UsageError("--api-token-file must not be empty")
            if os.path.isdir(token_file):
                raise usage.UsageError(f"--api-token-file: {token_file} is a directory")
        self["metrics-public"] = bool(self["metrics-public"])


def makeService(options: Options, reactor: Any = None) -> RelayService:
    """
    Build the node described by the options.
    """
    peers: list[PeerAddress] = options["peers"]
    return RelayService(
        options["keystore"],
        listen=options["listen"],
        peers=peers,
        identity=options["identity"],
        heartbeat_interval=options["heartbeat"],
        max_peers=options["max-peers"],
        reactor=reactor,
        api=options["api"],
        api_token_file=options["api-token-file"],
        metrics_public=options["metrics-public"],
        api_fallback=DEFAULT_API_FALLBACK if options["api"] == DEFAULT_API else None,
        announce_to=None if options["no-announce"] else options["announce-to"],
    )
