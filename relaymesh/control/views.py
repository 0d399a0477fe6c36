"""
What the API shows of a node and what it asks of it: the status, the peer
list, the workers; dialling and disconnecting a peer.

It sees the node only through L{INode} and its mesh only through
L{IRelayMesh}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http

from relaymesh._version import __version__
from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address
from relaymesh.addresses import CONNECT, JOIN, SET_ADDRESS, StoredAddress
from relaymesh.control.requests import ApiError
from relaymesh.control.sessions import STALE_AFTER_INTERVALS, session_rows
from relaymesh.errors import UnknownPeer
from relaymesh.events import Direction, PeerState, PeerStatus
from relaymesh.interfaces import INode
from relaymesh.keystore import KeyStoreError
from relaymesh.peerid import is_valid_peer_id

#: What C{DELETE /api/peers/ID?forget=...} may forget besides disconnecting.
FORGET_ADDRESS = "address"
FORGET_ALL = "all"

#: The sources C{POST /api/peers} may give an address.
POST_SOURCES = (CONNECT, JOIN, SET_ADDRESS)


def _time(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class NodeViews:
    """
    The API's views of a node, and its actions on it, as JSON objects.

    A peer is known if the mesh has seen it, if it is paired (has a key in
    the key store) or if the node dials it.

    @ivar node: The node.
    @ivar started_at: When the node started (clock seconds).
    """

    log = Logger()

    def __init__(
        self,
        node: INode,
        clock: IReactorTime,
        rtt_ms: Callable[[str], float | None],
        started_at: float,
    ) -> None:
        """
        @param node: The node.
        @param clock: Its clock.
        @param rtt_ms: A peer's latest round-trip time in milliseconds, or
            C{None} (L{relaymesh.control.metrics.RoundTrips.rtt_ms}).
        @param started_at: When the node started (clock seconds).
        """
        self.node = node
        self.started_at = started_at
        self._clock = clock
        self._rtt_ms = rtt_ms

    def status(self, api_address: str | None, event_streams: int) -> dict[str, Any]:
        """
        The node at a glance.

        @param api_address: Where the API listens (C{host:port}), if it does.
        @param event_streams: How many event streams are open.
        """
        mesh = self.node.mesh
        now = self._clock.seconds()
        peers = self.peer_list()
        return {
            "identity": mesh.identity,
            "version": __version__,
            "listen": self.node.listening_address(),
            "listen_tls": self.node.listening_tls(),
            "api": api_address,
            "started_at": _time(self.started_at),
            "uptime": round(now - self.started_at, 3),
            "peers": {
                "known": len(peers),
                "connected": sum(1 for p in peers if p["state"] == PeerState.CONNECTED),
                "dialled": len(self.node.dialled()),
            },
            "workers": len(mesh.sessions()),
            "sessions": self._session_counts(),
            "event_streams": event_streams,
            "heartbeat_interval": mesh.heartbeat_interval,
            "max_peers": mesh.max_peers,
        }

    def _session_counts(self) -> dict[str, Any]:
        fleet = self.node.mesh.fleet
        local = fleet.local()
        return {
            "source": fleet.source,
            "local": None if local is None else len(local.sessions),
            "peers": sum(len(held.sessions) for held in fleet.sessions().values()),
        }

    def peer_list(self) -> list[dict[str, Any]]:
        """
        Every known peer: paired, dialled, connected (or connecting, or
        reachable through routing); a peer the mesh saw once and that is
        none of those now (a key forgotten since) is not listed.
        """
        paired = set(self._paired())
        dialled = self._dialled()
        stored = self._stored()
        views = {
            p.peer_id: self._view(self._seen_before(p, paired), paired, dialled, stored)
            for p in self.node.mesh.peers()
            if p.state != PeerState.DISCONNECTED or p.peer_id in paired or p.peer_id in dialled
        }
        for peer_id in (paired | set(dialled)) - set(views):
            status = self._unseen(peer_id, paired, dialled)
            views[peer_id] = self._view(status, paired, dialled, stored)
        return [views[k] for k in sorted(views)] + self._unnamed_dials()

    def _unnamed_dials(self) -> list[dict[str, Any]]:
        """
        The addresses dialled whose peer is not known yet: a row each, with
        no peer id, in state C{dialling}.
        """
        rows = []
        for address in self.node.dialled():
            if address.peer_id is None:
                status = PeerStatus.without_traffic(
                    "", PeerState.DISCONNECTED, address=address.hostport, direction=Direction.OUTBOUND
                )
                error, error_at = self.node.dial_error(address)
                status = dataclasses.replace(status, last_error=error, last_error_at=error_at)
                row = self._view(status, set(), {}, {}, named=False)
                row.update(state="dialling", dialled=True, dial_address=str(address))
                rows.append(row)
        return rows

    def peer_view(self, peer_id: str) -> dict[str, Any]:
        """
        One known peer.

        @raise UnknownPeer: if no peer has that id.
        """
        for view in self.peer_list():
            if view["peer_id"] == peer_id:
                return view
        raise UnknownPeer(f"unknown peer {peer_id!r}")

    def workers(self) -> list[dict[str, Any]]:
        """
        Every peer's latest unexpired session list, with its age in seconds.
        """
        return [
            {
                "peer_id": s.peer_id,
                "worker_id": s.worker_id,
                "sessions": s.sessions,
                "age": round(s.age, 3),
            }
            for _, s in sorted(self.node.mesh.sessions().items())
        ]

    def fleet(self) -> dict[str, Any]:
        """
        Every session the node knows, its own first, then each peer's by
        peer id (see L{relaymesh.control.sessions}).
        """
        mesh = self.node.mesh
        fleet = mesh.fleet
        stale_after = mesh.heartbeat_interval * STALE_AFTER_INTERVALS
        return {
            "sessions": session_rows(fleet.lists(), stale_after),
            "source": fleet.source,
            "stale_after": stale_after,
            "expire_after": fleet.expiry,
        }

    # -- actions -------------------------------------------------------------

    def connect(self, text: str, source: str = CONNECT) -> dict[str, Any]:
        """
        Start dialling a peer address, and remember it for the next start.

        A peer already connected (through another link) is not dialled at
        this address: the answer says C{already_connected} and where it is
        connected, and only an address set with C{set-address} is
        remembered (C{remembered}). An address set with C{set-address}
        replaces the peer's other diallers.

        @param text: The address, C{[tls:|legacy:][peer_id@]host[:port]}.
        @param source: Where the address comes from (L{POST_SOURCES}).
        @raise relaymesh.address.InvalidAddress: if it does not parse.
        @raise ApiError: 400 if no key could authenticate to it.
        """
        address = parse_peer_address(text)
        if address.peer_id is not None and self.node.mesh.is_connected(address.peer_id):
            view = self.peer_view(address.peer_id)
            remembered = source == SET_ADDRESS
            if remembered:
                try:
                    self.node.remember_address(address.peer_id, address, source)
                except OSError as e:
                    raise ApiError(http.INTERNAL_SERVER_ERROR, f"cannot remember the address: {e}") from None
            return {
                "addr": str(address),
                "peer_id": address.peer_id,
                "already_dialled": False,
                "already_connected": True,
                "connected_address": view["address"],
                "direction": view["direction"],
                "remembered": remembered,
            }
        if not self._has_key_for(address):
            who = address.peer_id or address.hostport
            raise ApiError(
                http.BAD_REQUEST,
                f"field 'addr': no key for {who} and no pending pairing key; pair first "
                "(relaymesh pair / relaymesh accept)",
            )
        if source == SET_ADDRESS and address.peer_id is not None:
            self.node.remove_peer(address.peer_id)  # its old addresses; it is not connected
        before = len(self.node.dialled())
        try:
            self.node.add_peer(address, source)
        except OSError as e:
            raise ApiError(http.INTERNAL_SERVER_ERROR, f"cannot remember the address: {e}") from None
        known = len(self.node.dialled()) == before
        return {
            "addr": str(address),
            "peer_id": address.peer_id,
            "already_dialled": known,
            "already_connected": False,
        }

    def disconnect(self, peer_id: str, forget: str | None = None) -> dict[str, Any]:
        """
        Close a peer's connection and stop dialling it; with C{forget},
        also forget its remembered address (L{FORGET_ADDRESS}) or the peer
        entirely: key, address, outbox (L{FORGET_ALL}).

        C{peer_id} may be an address dialled without a peer id instead
        (C{host:port}): its dialler is stopped.

        @raise UnknownPeer: if no peer has that id (nor a dialler that
            address).
        @raise ApiError: 400 for another C{forget}.
        """
        if forget not in (None, FORGET_ADDRESS, FORGET_ALL):
            raise ApiError(http.BAD_REQUEST, f"forget must be {FORGET_ADDRESS!r} or {FORGET_ALL!r}")
        if not is_valid_peer_id(peer_id):
            return self._stop_address(peer_id)
        stored = self._stored()
        if peer_id not in stored:
            self.peer_view(peer_id)  # raises UnknownPeer
        was_connected = self.node.mesh.is_connected(peer_id)
        was_dialled = peer_id in self._dialled()
        answer: dict[str, Any] = {"peer_id": peer_id, "was_connected": was_connected, "stopped_dialling": was_dialled}
        try:
            if forget == FORGET_ALL:
                answer["forgotten"] = self.node.forget_peer(peer_id)
            else:
                self.node.remove_peer(peer_id)
            if forget == FORGET_ADDRESS:
                answer["forgot_address"] = self.node.forget_address(peer_id)
        except (KeyStoreError, OSError) as e:
            raise ApiError(http.INTERNAL_SERVER_ERROR, f"cannot forget {peer_id}: {e}") from None
        if forget is None and peer_id in stored:
            answer["address_remembered"] = stored[peer_id].address
        return answer

    def _stop_address(self, text: str) -> dict[str, Any]:
        """
        Stop the diallers of an address whose peer is not known yet.

        @raise UnknownPeer: if none dials it.
        """
        try:
            stopped = self.node.remove_address(text)
        except InvalidAddress:
            stopped = False
        if not stopped:
            raise UnknownPeer(f"unknown peer {text[:130]!r}")
        return {"peer_id": None, "addr": text, "was_connected": False, "stopped_dialling": True}

    # -- reading the node ----------------------------------------------------

    def _paired(self) -> list[str]:
        try:
            return self.node.keystore.peers()
        except (KeyStoreError, OSError) as e:
            self.log.warn("cannot list the paired peers: {error}", error=e)
            return []

    def _stored(self) -> dict[str, StoredAddress]:
        try:
            return self.node.stored_addresses()
        except OSError as e:
            self.log.warn("cannot read the remembered addresses: {error}", error=e)
            return {}

    def _dialled(self) -> dict[str, PeerAddress]:
        """
        The dialled addresses whose peer id is known, by peer id.
        """
        return {a.peer_id: a for a in self.node.dialled() if a.peer_id is not None}

    def _has_key_for(self, address: PeerAddress) -> bool:
        keystore = self.node.keystore
        try:
            if keystore.pending_key() is not None:
                return True
            if address.peer_id is not None:
                return keystore.key(address.peer_id) is not None
            return bool(keystore.peers())
        except (KeyStoreError, OSError) as e:
            raise ApiError(http.INTERNAL_SERVER_ERROR, f"cannot read the key store: {e}") from None

    def _view(
        self,
        status: PeerStatus,
        paired: set[str],
        dialled: dict[str, PeerAddress],
        stored: dict[str, StoredAddress],
        named: bool = True,
    ) -> dict[str, Any]:
        """
        A peer's row of the peer list.

        @param named: Whether the row names its peer: C{False} for an
            address dialled without a peer id, whose row has none (and
            C{status} an empty one).
        """
        peer_id = status.peer_id
        connected = status.state == PeerState.CONNECTED
        remembered = stored.get(peer_id)
        dial = dialled.get(peer_id)
        # A retry is shown only while something still dials the peer (an
        # unnamed dial's row is dialled by construction), and only when it
        # is still to come.
        retrying = not named or peer_id in dialled
        next_retry_at = status.next_retry_at if retrying else None
        if next_retry_at is not None and next_retry_at <= self._clock.seconds():
            next_retry_at = None
        return {
            "peer_id": peer_id if named else None,
            "state": status.state,
            "address": status.address,
            "direction": status.direction,
            "connected_since": _time(status.since) if connected else None,
            "state_since": _time(status.since),
            "last_seen": _time(status.last_seen),
            # a round trip measured on a link that is gone says nothing now
            "rtt_ms": self._rtt_ms(peer_id) if connected else None,
            "msgs_in": status.msgs_in,
            "msgs_out": status.msgs_out,
            "bytes_in": status.bytes_in,
            "bytes_out": status.bytes_out,
            "reconnect_attempt": status.reconnect_attempt if retrying else 0,
            "next_retry_at": _time(next_retry_at),
            "paired": peer_id in paired,
            "dialled": peer_id in dialled,
            "via": status.via,
            "hops": status.hops,
            "encrypted": status.encrypted,
            "mutual": status.mutual,
            "link": _link(status),
            "last_error": status.last_error,
            "last_error_at": _time(status.last_error_at),
            "dial_address": None if dial is None else str(dial),
            "connected_by_dial": dial is not None and connected and self.node.dial_connected(dial),
            "stored_address": None if remembered is None else remembered.address,
            "address_source": None if remembered is None else remembered.source,
            "address_learned_at": None if remembered is None else _time(remembered.learned_at),
        }

    def _unseen(
        self, peer_id: str, paired: set[str], dialled: dict[str, PeerAddress]
    ) -> PeerStatus:
        """
        The status of a peer the mesh has not seen: disconnected, at the
        address it is dialled at or its key store metadata names.
        """
        meta = self._meta(peer_id, paired)
        address = meta.get("addr") if isinstance(meta.get("addr"), str) else None
        if peer_id in dialled:
            address = dialled[peer_id].hostport
        return PeerStatus.without_traffic(
            peer_id,
            PeerState.DISCONNECTED,
            address=address,
            direction=Direction.OUTBOUND if peer_id in dialled else None,
            last_seen=_meta_last_seen(meta),
        )

    def _seen_before(self, status: PeerStatus, paired: set[str]) -> PeerStatus:
        """
        C{status}, with the C{last_seen} its key store metadata records when
        the mesh has not seen the peer since the node started (a peer dialled
        since, even in vain, has a record without one).
        """
        if status.last_seen is not None or status.peer_id not in paired:
            return status
        last_seen = _meta_last_seen(self._meta(status.peer_id, paired))
        if last_seen is None:
            return status
        return dataclasses.replace(status, last_seen=last_seen)

    def _meta(self, peer_id: str, paired: set[str]) -> dict[str, Any]:
        """
        A paired peer's key store metadata; empty for another peer, or one
        whose metadata cannot be read.
        """
        if peer_id not in paired:
            return {}
        try:
            meta = self.node.keystore.meta(peer_id)
        except (KeyStoreError, OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}


def _meta_last_seen(meta: dict[str, Any]) -> float | None:
    """
    The C{last_seen} of a peer's key store metadata (epoch milliseconds
    there) in clock seconds, or C{None} if it records none.
    """
    last_seen = meta.get("last_seen")
    if isinstance(last_seen, bool) or not isinstance(last_seen, int):
        return None
    return last_seen / 1000


def _link(status: PeerStatus) -> str | None:
    """
    What protects a connected peer's link, in a word or two: C{"tls"}
    between relaymesh nodes, C{"plain, one-way"} for a claudectl peer;
    C{None} when it is not connected.
    """
    if status.encrypted is None:
        return None
    if status.encrypted:
        return "tls"
    return "plain" if status.mutual else "plain, one-way"
