"""
Joining: the one-shot connection that pairs with an inviting node.

C{relaymesh join} pairs with the inviting node over one connection of its
own (L{join_directly}), made with L{RelayProtocol} and
L{ConnectorHandshake}. Then, if a node runs on the same key store and
offers its control API (L{local_node}), it is asked to dial the new peer
(L{ask_node_to_dial}), so that it keeps a connection to it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh import pairing
from relaymesh.address import InvalidAddress, parse_port
from relaymesh.addresses import JOIN, AddressBook
from relaymesh.codes import Invite
from relaymesh.connection import HANDSHAKE_TIMEOUT, RelayProtocol
from relaymesh.dialer import CONNECT_TIMEOUT
from relaymesh.handshake.base import Authenticated, HandshakeFailed
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.interfaces import IHandshakeObserver
from relaymesh.joinforms import FORM_DESCRIPTIONS, LEGACY_FORMS, RELAYMESH_FORMS
from relaymesh.keystore import KeyStore, KeyStoreError
from relaymesh.linkerrors import PLAIN_EXPECTED, TLS_EXPECTED
from relaymesh.mesh import Mesh
from relaymesh.printable import printable
from relaymesh.tls import NodeCertificate, TLSError

#: Seconds a join may take in all; its TCP connection must be made sooner.
JOIN_TIMEOUT = HANDSHAKE_TIMEOUT  # claudectl 0.49: 30 s read timeout
JOIN_CONNECT_TIMEOUT = CONNECT_TIMEOUT  # claudectl 0.49: 10 s


class JoinError(Exception):
    """
    A join that did not pair; the message is one line for users.
    """


class JoinDenied(JoinError):
    """
    The inviting node refused the key.
    """


class AlreadyPaired(JoinError):
    """
    The inviting node is a peer this node is already paired with, and the
    join was not asked to replace its key.

    @ivar peer_id: that peer.
    """

    def __init__(self, message: str, peer_id: str) -> None:
        super().__init__(message)
        self.peer_id = peer_id


def already_paired(peer_id: str) -> AlreadyPaired:
    """
    The refusal to join a peer already paired with, before connecting.
    """
    return AlreadyPaired(
        f"already paired with {peer_id}: joining would replace its key; "
        f"run relaymesh forget {peer_id} first, or join again with --replace",
        peer_id,
    )


def paired_meanwhile(peer_id: str, addr: str) -> AlreadyPaired:
    """
    The refusal to store the key of a peer already paired with, learnt only
    from the handshake (the invite did not name it).
    """
    return AlreadyPaired(
        f"{printable(addr)} is {peer_id}, already paired with this node: kept its key "
        f"and stored no new one, but the invite is used up; to replace the key, "
        f"ask {peer_id} for a new invite and join it with --replace",
        peer_id,
    )


@dataclass(frozen=True)
class JoinResult:
    """
    A finished pairing.

    @ivar peer_id: the inviting node's peer id.
    @ivar addr: where it listens, C{host:port}.
    @ivar form: the form joined with, now its C{paired_via}.
    @ivar through: C{"direct"}, or C{"node"} when the running node paired.
    @ivar replaced: whether a key already stored for the peer was replaced.
    @ivar tls: whether it was joined over TLS from the start (C{--tls}).
    """

    peer_id: str
    addr: str
    form: str
    through: str = "direct"
    replaced: bool = False
    tls: bool = False

    @property
    def peer(self) -> str:
        """
        C{[tls:]ID@HOST:PORT}, for C{--peers}.
        """
        return f"{'tls:' if self.tls else ''}{self.peer_id}@{self.addr}"


def denial_message(invite: Invite) -> str:
    """
    Say why an invite's key may have been refused.

    @param invite: the invite joined with.
    @return: one line.
    """
    addr = printable(invite.addr)
    if invite.form in LEGACY_FORMS:
        what = FORM_DESCRIPTIONS[invite.form]
        return (
            f"{addr} refused the key of this {what}: it may have expired or been "
            f"used; and claudectl 0.49 relay codes and word phrases cannot pair at all, "
            f"so if claudectl printed it, join with its invite link (cctl://...) instead"
        )
    return (
        f"{addr} refused the key: the invite may have expired, been used "
        f"already, or been replaced by a newer one"
    )


@implementer(IHandshakeObserver)
class JoinFactory(ClientFactory):
    """
    Makes one connection to an inviting node and runs the connector's side
    of the handshake with the invite's key.

    @ivar done: fires with the L{RelayProtocol} once the handshake
        succeeds, or fails with a L{JoinError}.
    @ivar closed: fires once the connection is gone (or was never made).
    @ivar replace: whether a key already stored for the peer that answers
        may be replaced.
    @ivar shown_addr: the address joined, escaped for an error message.
    """

    noisy = False

    def __init__(
        self,
        mesh: Mesh,
        invite: Invite,
        keys: KeyStore | None = None,
        replace: bool = False,
        certificate: NodeCertificate | None = None,
    ) -> None:
        """
        @param mesh: a mesh with this node's identity, for the protocol.
        @param invite: what to join: the address, the key and, if known,
            the peer id that must answer.
        @param keys: this node's key store.
        @param replace: whether to replace a key already stored for the
            peer that answers; if not, such a join fails (L{AlreadyPaired}).
        @param certificate: this node's certificate, for the upgrade to TLS
            that a relaymesh node offers.
        """
        self.mesh = mesh
        self.certificate = certificate
        self.invite = invite
        self.keys = keys
        self.replace = replace
        self.shown_addr = printable(invite.addr)
        self.done: Deferred[RelayProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._refusal: JoinError | None = None

    # Twisted's Factory wants protocols whose factory is a Factory of them;
    # a RelayProtocol's is typed by what it tells it (IHandshakeObserver).
    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:  # type: ignore[override]
        # A relaymesh node names itself, upgrades to TLS and proves the key
        # back, whatever the form. Only claudectl's forms may come from
        # claudectl, which does none of that: to an acceptor that does not
        # name itself, their key is proved in claudectl's one-way form.
        handshake = ConnectorHandshake(
            self.mesh.identity,
            self.invite.key,
            self.invite.identity,
            legacy=self.invite.key is not None and self.invite.form not in RELAYMESH_FORMS,
            keys=self.keys,
            strong_code=self.invite.strong_code,
            issued=self.mesh.issued_nonces,
        )
        handshake.one_shot = True  # said inside TLS: the inviter lists no lasting peer for it
        protocol = RelayProtocol(self.mesh, handshake, self.certificate)
        protocol.factory = self
        return protocol

    def handshakeVerified(self, protocol: RelayProtocol, outcome: Authenticated) -> None:
        """
        The inviting node proved the key: nothing is recorded until the
        join ends (L{join_directly} records the key with the address).

        A form that does not name the inviting node (a relay code, a word
        phrase) tells who it is only now: if that is a peer already paired
        with, and the join may not replace its key, the join ends here.

        @raise HandshakeFailed: for such a peer.
        """
        if self.replace or self.keys is None:
            return
        try:
            known = self.keys.key(outcome.peer_id) is not None
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot read the key of {outcome.peer_id}: {e}") from None
        if known:
            self._refusal = paired_meanwhile(outcome.peer_id, self.invite.addr)
            raise HandshakeFailed(str(self._refusal))

    def handshakeSucceeded(self, protocol: RelayProtocol) -> None:
        """
        The inviting node took the key.
        """
        if not self.done.called:
            self.done.callback(protocol)

    def handshakeFailed(self, protocol: RelayProtocol, reason: str) -> None:
        """
        The connection ended before the handshake succeeded.
        """
        if self.done.called:
            return
        reason = printable(reason, REASON_LIMIT)
        if self._refusal is not None:
            self.done.errback(self._refusal)
        elif protocol.proof_rejected and reason.startswith("the peer denied"):
            self.done.errback(JoinDenied(denial_message(self.invite)))
        elif protocol.mismatch == TLS_EXPECTED:
            self.done.errback(
                JoinError(
                    f"no challenge from {self.shown_addr}: it may be a TLS listener; "
                    f"run relaymesh join again with --tls"
                )
            )
        elif protocol.mismatch == PLAIN_EXPECTED:
            self.done.errback(
                JoinError(
                    f"the TLS handshake with {self.shown_addr} failed: it may be a plain "
                    f"listener; run relaymesh join again without --tls"
                )
            )
        elif protocol.traffic.msgs_in == 0:
            self.done.errback(
                JoinError(
                    f"{self.shown_addr} closed the connection before the handshake "
                    f"({reason}): it may be at its peer limit, or refusing this address "
                    f"for a minute after failed attempts"
                )
            )
        else:
            self.done.errback(JoinError(f"the handshake with {self.shown_addr} failed: {reason}"))

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(
                JoinError(f"cannot connect to {self.shown_addr}: {_describe(reason)}")
            )
        self._closed()

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self._closed()

    def _closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def _describe(reason: Failure) -> str:
    text = " ".join(reason.getErrorMessage().split()).rstrip(".") or "failed"
    return printable(text, REASON_LIMIT)


#: Characters of a reason from the network kept in a join's error.
REASON_LIMIT = 300


@inlineCallbacks
def join_directly(
    store: KeyStore,
    invite: Invite,
    reactor: Any,
    connect_timeout: float = JOIN_CONNECT_TIMEOUT,
    timeout: float = JOIN_TIMEOUT,
    certificate: NodeCertificate | None = None,
    replace: bool = False,
) -> Generator[Deferred[Any], Any, JoinResult]:
    """
    Pair with an inviting node over one connection of our own.

    On success the key is stored for the peer id that answered, with meta
    C{addr}, C{paired_at} (epoch milliseconds) and C{paired_via}, and the
    address joined at is remembered for the node to redial
    (L{relaymesh.addresses}, source C{join}); then the connection is
    closed.

    A peer already paired with keeps its key unless C{replace}: when the
    invite names the peer, the join is refused before connecting; when it
    does not (a relay code, a word phrase), once the handshake says who
    answered, and then the new key is not stored.

    @param store: this node's key store.
    @param invite: what to join.
    @param reactor: an C{IReactorTCP} and C{IReactorTime}.
    @param connect_timeout: seconds for TCP to connect.
    @param timeout: seconds for the whole join.
    @param certificate: this node's certificate, to join over a C{tls:}
        connection; without one, the join dials plain TCP and upgrades to TLS
        in band with the certificate of the key store's directory (made if
        there is none yet). The peer's certificate is then pinned.
    @param replace: whether to replace the key of a peer already paired
        with.
    @return: a C{Deferred} firing with a L{JoinResult}, or failing with a
        L{JoinError} (L{AlreadyPaired} for a peer already paired with).
    """
    identity = store.identity()
    if invite.identity == identity:
        raise JoinError(f"this invite is from this node itself ({identity})")
    if invite.identity is not None and _has_key(store, invite.identity) and not replace:
        raise already_paired(invite.identity)
    over_tls = certificate is not None
    if certificate is None:
        try:
            certificate = NodeCertificate.for_data_dir(store.path, identity)
        except TLSError as e:
            raise JoinError(str(e)) from None
    factory = JoinFactory(
        Mesh(identity, reactor), invite, keys=store, replace=replace, certificate=certificate
    )
    if over_tls:
        connector = reactor.connectSSL(
            invite.host, invite.port, factory, certificate.client_options(), timeout=connect_timeout
        )
    else:
        connector = reactor.connectTCP(invite.host, invite.port, factory, timeout=connect_timeout)

    def give_up() -> None:
        if not factory.done.called:
            factory.done.errback(
                JoinError(f"no answer from {factory.shown_addr} within {timeout:g} s")
            )
        connector.disconnect()

    timer = reactor.callLater(timeout, give_up)
    protocol = None
    replaced = False
    try:
        protocol = yield factory.done
        outcome = dataclasses.replace(protocol.outcome, paired_via=invite.form)
        replaced = _has_key(store, outcome.peer_id)
        pairing.record(
            store,
            outcome,
            reactor.seconds(),
            addr=invite.addr,
        )
        _remember(store, outcome.peer_id, invite.addr, over_tls)
    finally:
        if timer.active():
            timer.cancel()
        if protocol is not None:
            protocol.close("paired")
        yield _at_most(factory.closed, CLOSE_WAIT, reactor)
    return JoinResult(protocol.peer_id, invite.addr, invite.form, replaced=replaced, tls=over_tls)


def _remember(store: KeyStore, peer_id: str, addr: str, tls: bool) -> None:
    """
    Remember where a peer was joined, so that a node on this key store
    redials it after any restart; a failure only loses that (logged).
    """
    try:
        AddressBook(store.path).record(peer_id, f"{'tls:' if tls else ''}{peer_id}@{addr}", JOIN)
    except (OSError, ValueError) as e:
        Logger().warn("cannot remember the address of {peer_id}: {error}", peer_id=peer_id, error=e)


def _has_key(store: KeyStore, peer_id: str) -> bool:
    """
    Whether a key is stored for C{peer_id}.

    @raise JoinError: if the key store cannot say.
    """
    try:
        return store.key(peer_id) is not None
    except (KeyStoreError, OSError) as e:
        raise JoinError(f"cannot read the key of {peer_id}: {e}") from None


#: Seconds to wait for the connection to close after a join.
CLOSE_WAIT = 5.0


def _at_most(d: Deferred[Any], seconds: float, clock: IReactorTime) -> Deferred[None]:
    """
    A C{Deferred} firing with C{None} when C{d} fires or C{seconds} pass,
    whichever is first.
    """
    done: Deferred[None] = Deferred()

    def fire(_: object = None) -> None:
        if not done.called:
            done.callback(None)

    late = clock.callLater(seconds, fire)
    d.addBoth(fire)
    return done.addBoth(lambda _: late.cancel() if late.active() else None)


# The running local node


#: Seconds to wait for the local node's API.
LOCAL_NODE_TIMEOUT = 5.0

#: The HTTP status of a peer the node does not know.
NOT_FOUND = 404


def local_node(
    data_dir: str, identity: str, api: str | None = None, token_file: str | None = None
) -> Any | None:
    """
    The control API of the node running on this key store, if one runs.

    The API client (L{relaymesh.control.client}) finds the node's URL and token
    through the data directory; a node is used only if it answers with
    this key store's identity.

    @param data_dir: the key store's directory.
    @param identity: this node's peer id.
    @param api: the node's API URL, if named (C{--api}).
    @param token_file: the API token file, if not the data directory's.
    @return: a C{NodeClient}, or C{None} if no such node answers.
    """
    try:
        from relaymesh.control import client as apiclient
    except ImportError:
        return None
    try:
        token = apiclient.read_token(token_file or os.path.join(data_dir, apiclient.TOKEN_FILE))
        client = apiclient.NodeClient(
            apiclient.resolve_url(data_dir, api), token, timeout=LOCAL_NODE_TIMEOUT
        )
        status = client.call("GET", "/api/status")
    except (
        apiclient.TokenMissing,
        apiclient.NodeNotRunning,
        apiclient.ApiRequestError,
        OSError,
        ValueError,
    ):
        return None
    if not isinstance(status, dict) or status.get("identity") != identity:
        return None
    client.status = status
    return client


def local_node_port(data_dir: str, identity: str) -> int | None:
    """
    The TCP port the node running on this key store accepts peers on.

    @return: the port, or C{None} if no node answers or it does not listen.
    """
    return node_port(local_node(data_dir, identity))


def node_port(node: Any) -> int | None:
    """
    The TCP port a running node accepts peers on, from its status; C{None}
    without a node, or if it does not listen.
    """
    listen = node.status.get("listen") if node is not None else None
    if not isinstance(listen, str):
        return None
    try:
        return parse_port(listen.rpartition(":")[2])
    except InvalidAddress:
        return None


def ask_node_to_dial(node: Any, result: JoinResult) -> bool:
    """
    Ask the running node to dial a peer just paired with, so that it keeps
    a connection to it.

    When the pairing replaced the peer's key, the node is first asked to
    close its connection to the peer and stop dialling it
    (C{DELETE /api/peers/ID}): a connection made with the old key would
    otherwise go on, and the old dialler would keep its address.

    @param node: the node's API client, from L{local_node}.
    @param result: the pairing.
    @return: whether the node took the request.
    """
    from relaymesh.control import client as apiclient

    try:
        if result.replaced:
            try:
                node.call("DELETE", f"/api/peers/{result.peer_id}")
            except apiclient.ApiRequestError as e:
                if e.status != NOT_FOUND:
                    raise
                # the node knows nothing of the peer: nothing to close
        node.call("POST", "/api/peers", {"addr": result.peer, "source": JOIN})
    except (apiclient.NodeNotRunning, apiclient.ApiRequestError, OSError):
        return False
    return True
