"""
L{NodeConfig}: everything a node is built from, as one value.

L{relaymesh.service.RelayService} is built from one (its keyword arguments
make one), and C{twistd relaymesh} makes one from its options
(L{relaymesh.tap}).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from relaymesh.address import PeerAddress, parse_peer_address
from relaymesh.dialer import RETRY_INITIAL_DELAY, RETRY_MAX_DELAY
from relaymesh.heartbeats import DEFAULT_HEARTBEAT_INTERVAL
from relaymesh.mesh import DEFAULT_MAX_PEERS
from relaymesh.reliable.outbox import DEFAULT_DELIVERY_TIMEOUT, DEFAULT_RESEND_AFTER
from relaymesh.reliable.store import Store
from relaymesh.routing.table import MAX_HOPS
from relaymesh.sessions.claude import DEFAULT_CLAUDE_HOME
from relaymesh.tls import NodeCertificate

#: The prefix of a listen description served over TLS with the node's
#: certificate: C{tls:9847}, C{tls:9847:interface=127.0.0.1}.
TLS_LISTEN_PREFIX = "tls:"

#: Where a node listens unless told otherwise.
DEFAULT_LISTEN = "tcp:9847"  # claudectl 0.49: port 9847

#: Seconds a stopping node waits for its connections to close before it
#: aborts them.
SHUTDOWN_TIMEOUT = 5.0

#: Where C{twistd relaymesh} serves its control API unless told otherwise:
#: loopback only (L{relaymesh.service.RelayService} itself serves none
#: unless asked).
DEFAULT_API = "tcp:9849:interface=127.0.0.1"

#: Where it serves it when that port is taken (another node on the host):
#: any free loopback port, which the node writes to DATA_DIR/api-url.
DEFAULT_API_FALLBACK = "tcp:0:interface=127.0.0.1"

#: Opens a reliable-delivery store: C{(path, reactor) -> Deferred[Store]}.
StoreOpener = Callable[[str, Any], "Deferred[Store]"]


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """
    What a node is built from.

    @ivar listen: Where to accept peers: Twisted server endpoint strings, or
        C{tls:PORT[:interface=ADDR]} for TLS with this node's certificate;
        empty to accept no connections.
    @ivar peers: Addresses to keep dialling.
    @ivar identity: This node's peer id; the key store's if C{None}.
    @ivar heartbeat_interval: Seconds between heartbeats; a peer silent for
        three intervals is dropped.
    @ivar max_peers: Connected peers at most; more inbound are refused.
    @ivar jitter: Random spread of reconnection delays, 0 to 1.
    @ivar retry_initial_delay: Seconds before the first redial (5, as
        claudectl); the delay doubles up to L{retry_max_delay}.
    @ivar retry_max_delay: The longest wait between two dials (60).
    @ivar api: A Twisted server endpoint string for the control API,
        dashboard and metrics (L{relaymesh.control}), or C{None} for none.
    @ivar api_token_file: The API token file; C{DATA_DIR/api-token} if
        C{None}.
    @ivar metrics_public: Whether C{/metrics} is served without the token.
    @ivar api_fallback: Where to serve the API if C{api} cannot be listened
        on (its port is taken), or C{None} to fail then.
    @ivar api_hosts: Host names (or C{NAME:PORT}s) the API answers to besides
        C{localhost}, C{127.0.0.1}, C{[::1]} and its own address: any other
        C{Host} header is refused (L{relaymesh.control.hosts}).
    @ivar announce_to: Where to announce the node on the LAN by UDP (an IPv4
        address and port, see L{relaymesh.discovery}), or C{None} not to;
        only a listening node announces.
    @ivar tls: This node's certificate, for C{tls:} listeners and peers.
    @ivar outbox: Whether the node sends and acknowledges reliable messages
        (L{relaymesh.reliable}), with its outbox and delivered ids in
        C{DATA_DIR/state.sqlite3} (the reactor must then run threads); or a
        L{StoreOpener} that opens a store of its own (an in-memory one in
        tests and simulations).
    @ivar delivery_timeout: Seconds after which an unacknowledged reliable
        message is given up.
    @ivar resend_after: Seconds after which an unacknowledged reliable
        message is sent again.
    @ivar routing: Whether the node routes messages between peers that
        announce C{route/2} (L{relaymesh.routing}).
    @ivar max_hops: The hop limit of routes and routed messages.
    @ivar shutdown_timeout: Seconds a stopping node waits for its
        connections to close before it aborts them.
    @ivar sessions: Where the session list its heartbeats carry comes from
        (L{relaymesh.sessions.source}): C{"claude-code"} (this machine's
        Claude Code sessions; C{twistd relaymesh}'s default), C{"none"},
        C{"api"} (what the application or C{PUT /api/sessions} sets; the
        default here), or the path of a JSON file another program keeps
        current.
    @ivar claude_home: Where C{"claude-code"} looks for Claude Code's
        sessions.
    @ivar session_details: Whether sessions from C{"claude-code"} carry the
        paths of the files they changed and their tools' error messages.
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    peers: tuple[PeerAddress, ...] = ()
    identity: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    max_peers: int = DEFAULT_MAX_PEERS
    jitter: float = 0.0
    retry_initial_delay: float = RETRY_INITIAL_DELAY
    retry_max_delay: float = RETRY_MAX_DELAY
    api: str | None = None
    api_token_file: str | None = None
    metrics_public: bool = False
    api_fallback: str | None = None
    api_hosts: tuple[str, ...] = ()
    announce_to: tuple[str, int] | None = None
    tls: NodeCertificate | None = None
    outbox: bool | StoreOpener = False
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    resend_after: float = DEFAULT_RESEND_AFTER
    routing: bool = False
    max_hops: int = MAX_HOPS
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    sessions: str = "api"
    claude_home: str = DEFAULT_CLAUDE_HOME
    session_details: bool = False

    @classmethod
    def make(
        cls,
        listen: str | Sequence[str] | None = DEFAULT_LISTEN,
        peers: Iterable[PeerAddress | str] = (),
        **options: Any,
    ) -> NodeConfig:
        """
        A config from the forms an application writes: C{listen} as one
        description, several, or C{None}; C{peers} as addresses or their
        text.

        @raise relaymesh.address.InvalidAddress: for a peer that does not
            parse.
        @raise TypeError: for an option L{NodeConfig} does not have.
        """
        if listen is None:
            descriptions: tuple[str, ...] = ()
        elif isinstance(listen, str):
            descriptions = (listen,)
        else:
            descriptions = tuple(listen)
        addresses = tuple(
            parse_peer_address(p) if isinstance(p, str) else p for p in peers
        )
        return cls(listen=descriptions, peers=addresses, **options)
