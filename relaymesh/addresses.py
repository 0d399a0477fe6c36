"""
The peer addresses a node remembers, so that it redials its paired peers
after a restart without C{--peers}.

They are kept in one small JSON file in the data directory, next to the
keys::

    addresses.json   {"version": 1, "peers": {"<peer_id>": {
                         "address": "tls:<peer_id>@10.0.0.7:9847",
                         "source": "join", "learned_at": 1764180000.0}}}

Each entry is the address as a user would type it (see
L{relaymesh.address}), where it was learned (L{SOURCES}) and when. An
address learned from an accepted connection (L{INBOUND}) never replaces
one a user gave (L{EXPLICIT_SOURCES}).

The file is written atomically, mode 0600, like the key files
(L{relaymesh.files.write_atomically}). A file that cannot be read as such
an object is logged on one line and treated as empty; entries that do not
parse are skipped. L{AddressKeeper} is a running node's side of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address
from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.files import make_private_directory, remove_file, write_atomically
from relaymesh.peerid import is_valid_peer_id, validate_peer_id

#: The file, in the data directory.
ADDRESSES_FILE = "addresses.json"

#: The format version written.
VERSION = 1

#: The most bytes the file is read to; a longer one is corrupt.
MAX_FILE_SIZE = 4 * 1024 * 1024

JOIN = "join"
CONNECT = "connect"
PEERS_OPTION = "peers-option"
INBOUND = "inbound"
SET_ADDRESS = "set-address"

#: Where an address may come from.
SOURCES = (JOIN, CONNECT, PEERS_OPTION, INBOUND, SET_ADDRESS)

#: The sources a user chose; L{INBOUND} never replaces one of them.
EXPLICIT_SOURCES = frozenset({JOIN, CONNECT, PEERS_OPTION, SET_ADDRESS})

#: What the C{peers} tables show for each source.
SOURCE_DESCRIPTIONS = {
    JOIN: "join",
    CONNECT: "connect",
    PEERS_OPTION: "--peers",
    INBOUND: "inbound",
    SET_ADDRESS: "set-address",
}


@dataclasses.dataclass(frozen=True)
class StoredAddress:
    """
    One remembered address.

    @ivar peer_id: The peer.
    @ivar address: Its address as a user would type it, with its id
        (C{[tls:|legacy:]peer_id@host:port}).
    @ivar source: Where it was learned (one of L{SOURCES}).
    @ivar learned_at: When (epoch seconds).
    """

    peer_id: str
    address: str
    source: str
    learned_at: float

    def peer_address(self) -> PeerAddress:
        """
        The address parsed.
        """
        return parse_peer_address(self.address)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "source": self.source, "learned_at": self.learned_at}


def with_peer_id(address: PeerAddress | str, peer_id: str) -> PeerAddress:
    """
    C{address} naming C{peer_id}.

    @raise InvalidAddress: if the text does not parse, or names another peer.
    """
    if isinstance(address, str):
        address = parse_peer_address(address)
    if address.peer_id is not None and address.peer_id != peer_id:
        raise InvalidAddress(f"{address} names {address.peer_id}, not {peer_id}")
    return dataclasses.replace(address, peer_id=peer_id)


class AddressBook:
    """
    The addresses file of one data directory.

    @ivar path: The file.
    """

    log = Logger()

    def __init__(self, data_dir: str, now: Callable[[], float] = time.time) -> None:
        self.directory = os.fspath(data_dir)
        self.path = os.path.join(self.directory, ADDRESSES_FILE)
        self._now = now

    def __repr__(self) -> str:
        return f"AddressBook({self.directory!r})"

    # -- reading -------------------------------------------------------------

    def entries(self) -> dict[str, StoredAddress]:
        """
        Every remembered address, by peer id; empty if there is no file or
        it is corrupt (logged once per read, on one line).
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.log.warn("cannot read {path}: {error}; no address is remembered", path=self.path, error=e)
            return {}
        try:
            if len(raw) > MAX_FILE_SIZE:
                raise ValueError(f"longer than {MAX_FILE_SIZE} bytes")
            value = json.loads(raw)
            if not isinstance(value, dict) or not isinstance(value.get("peers"), dict):
                raise ValueError("not an object with a 'peers' object")
        except ValueError as e:
            self.log.warn(
                "{path} is corrupt ({error}); treated as empty", path=self.path, error=str(e)[:100]
            )
            return {}
        found = {}
        for peer_id, fields in value["peers"].items():
            entry = _entry(peer_id, fields)
            if entry is not None:
                found[peer_id] = entry
        return found

    def get(self, peer_id: str) -> StoredAddress | None:
        """
        The address remembered for a peer, if any.
        """
        return self.entries().get(peer_id)

    # -- writing -------------------------------------------------------------

    def record(self, peer_id: str, address: PeerAddress | str, source: str) -> bool:
        """
        Remember a peer's address, unless an address a user gave would be
        replaced by one from L{INBOUND}.

        @return: whether it was written (C{False} also when the same address
            and source are there already).
        @raise InvalidAddress: for an address that does not parse or names
            another peer.
        @raise ValueError: for an invalid peer id or source.
        @raise OSError: if the file cannot be written.
        """
        validate_peer_id(peer_id)
        if source not in SOURCES:
            raise ValueError(f"unknown address source {source!r}")
        text = str(with_peer_id(address, peer_id))
        entries = self.entries()
        old = entries.get(peer_id)
        if old is not None:
            if source == INBOUND and old.source in EXPLICIT_SOURCES:
                return False
            if old.address == text and old.source == source:
                return False
        entries[peer_id] = StoredAddress(peer_id, text, source, round(self._now(), 3))
        self._write(entries)
        return True

    def forget(self, peer_id: str) -> bool:
        """
        Drop a peer's address.

        @return: whether there was one.
        """
        entries = self.entries()
        if entries.pop(peer_id, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, StoredAddress]) -> None:
        if not entries:
            remove_file(self.path)
            return
        make_private_directory(self.directory)
        document = {"version": VERSION, "peers": {k: entries[k].to_dict() for k in sorted(entries)}}
        write_atomically(self.path, json.dumps(document, indent=2).encode("utf-8"))


def _entry(peer_id: object, fields: object) -> StoredAddress | None:
    """
    One entry of the file, or C{None} if it is not valid.
    """
    if not isinstance(peer_id, str) or not is_valid_peer_id(peer_id) or not isinstance(fields, dict):
        return None
    address, source, learned_at = fields.get("address"), fields.get("source"), fields.get("learned_at")
    if not isinstance(address, str) or source not in SOURCES:
        return None
    if isinstance(learned_at, bool) or not isinstance(learned_at, (int, float)):
        learned_at = 0.0
    try:
        parsed = parse_peer_address(address)
    except InvalidAddress:
        return None
    if parsed.peer_id != peer_id:
        return None
    return StoredAddress(peer_id, address, source, float(learned_at))


class AddressKeeper:
    """
    A running node's side of its L{AddressBook}: what its diallers and
    accepted connections teach it, and which remembered peers to redial on
    start (L{relaymesh.service.RelayService} owns one).

    @ivar book: The book, or C{None} for a node whose key store is in
        memory (nothing is remembered).
    @ivar sources: The source of each address dialled that is to be
        remembered once its dial connects (C{None}: nothing to remember).
    """

    log = Logger()

    def __init__(
        self,
        book: AddressBook | None,
        keystore: Any,
        mesh: Any,
        outbound: Callable[[], dict[PeerAddress, Any]],
        stop: Callable[[PeerAddress], None] = lambda address: None,
    ) -> None:
        """
        @param keystore: The node's key store (whose peers are redialled).
        @param mesh: Its mesh, whose registry has the connections.
        @param outbound: The addresses dialled, each with its dialler (a
            L{relaymesh.dialer.RelayClientFactory}: its C{peer_id} and
            C{current} connection).
        @param stop: Stops the dialler of an address.
        """
        self.book = book
        self.sources: dict[PeerAddress, str | None] = {}
        self._keystore = keystore
        self._mesh = mesh
        self._outbound = outbound
        self._stop = stop

    def entries(self) -> dict[str, StoredAddress]:
        """
        The remembered addresses, by peer id.
        """
        return {} if self.book is None else self.book.entries()

    def dialling(self, address: PeerAddress, source: str | None) -> None:
        """
        A dialler of C{address} starts: remember the address once this dial
        connects (a mistyped address, in C{connect} or C{--peers}, never
        replaces a good one); one set with C{set-address} that names its
        peer at once.
        """
        if source == SET_ADDRESS and address.peer_id is not None:
            self.remember(address.peer_id, address, source)
            source = None
        if self.sources.get(address) is None:
            self.sources[address] = source

    def stopped(self, address: PeerAddress) -> None:
        """
        The dialler of C{address} stopped.
        """
        self.sources.pop(address, None)

    def forget(self, peer_id: str) -> bool:
        """
        Drop a peer's address; whether there was one.
        """
        return self.book is not None and self.book.forget(peer_id)

    def remember(self, peer_id: str, address: PeerAddress, source: str) -> None:
        """
        Record an address; a failure to write is logged, not raised.
        """
        if self.book is None:
            return
        try:
            self.book.record(peer_id, address, source)
        except (OSError, ValueError) as e:
            self.log.warn("cannot remember the address of {peer_id}: {error}", peer_id=peer_id, error=e)

    def to_redial(self) -> list[StoredAddress]:
        """
        The remembered addresses of peers whose key is still held and that
        no dialler dials yet, each logged.
        """
        if self.book is None:
            return []
        try:
            held = set(self._keystore.peers())
        except OSError as e:
            self.log.warn("cannot list the paired peers, so none is redialled: {error}", error=e)
            return []
        dialled = {factory.peer_id for factory in self._outbound().values()}
        found = []
        for peer_id, entry in sorted(self.book.entries().items()):
            if peer_id in held and peer_id not in dialled:
                self.log.info(
                    "redialling {peer_id} at its remembered address {address} ({source})",
                    peer_id=peer_id,
                    address=entry.address,
                    source=entry.source,
                )
                found.append(entry)
        return found

    def learned(self, event: PeerEvent) -> None:
        """
        A peer connected: remember the address whose dial made the
        connection, or where an inbound peer said it accepts connections (in
        its handshake inside TLS; claudectl never says).
        """
        if event.kind != EventKind.CONNECTED or event.peer_id is None:
            return
        peer_id = event.peer_id
        protocol = self._mesh.registry.connection(peer_id)
        for address, factory in self._outbound().items():
            source = self.sources.get(address)
            if source is None or factory.peer_id != peer_id:
                continue
            if factory.current is protocol:
                self.remember(peer_id, address, source)
                self.sources[address] = None
            elif source == CONNECT:
                # a connect that never connected: the peer is reached through
                # another link, so that address is not dialled forever
                self.log.info(
                    "{peer_id} connected through another link; stopped dialling {address}, "
                    "which never connected",
                    peer_id=peer_id,
                    address=str(address),
                )
                self._stop(address)
        if event.direction == Direction.OUTBOUND:
            return
        handshake = getattr(protocol, "handshake", None)
        port = getattr(handshake, "listen_port", None)
        transport = getattr(protocol, "transport", None)
        host = getattr(transport.getPeer(), "host", None) if transport is not None else None
        if handshake is None or port is None or not isinstance(host, str):
            return
        address = PeerAddress(peer_id, host, port, tls=handshake.listen_tls)
        self.remember(peer_id, address, INBOUND)
