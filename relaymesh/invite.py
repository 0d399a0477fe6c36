"""
Invites and joins: the forms one node prints so that another can pair with
it, and the one-shot connection that pairs with such a form.

C{relaymesh invite} makes two secrets and arms the key of each, with one
expiry (L{DEFAULT_EXPIRY}):

  - an 8-byte pair code prefix. Its key (L{relaymesh.codes.derive_pair_key})
    becomes the pending key, the one claudectl reads too; the relaymesh link,
    the C{cctl://} link and the bare pair code (with C{--peer}) carry it;
  - a separate 4-byte seed. Its key (L{relaymesh.codes.derive_seed_key}) is
    armed beside the pending key; claudectl's relay code and word phrase
    carry it. These legacy forms hold only 32 bits of secret, so the seed
    is not part of the pair code: they cannot help guess the 64-bit key.

Whichever form a peer uses, the key it proves is armed, so C{claudectl relay
join} pairs with every form relaymesh prints (claudectl 0.49.2's own relay
codes never pair: it arms only the pair code's key). Claiming one key
disarms them all.

The relaymesh link is C{relaymesh://ID@HOST:PORT/k/<16 hex digits>}: the
C{cctl://} link under relaymesh's own scheme. The C{/k/} names the kind of
secret that follows; C{/s/<code>} is kept for strong one-time codes, which
a relaymesh that cannot use them refuses by name.

C{relaymesh join} reads any of these forms (L{parse_join_input}) and pairs
with the inviting node over one connection of its own (L{join_directly}),
made with L{RelayProtocol} and L{ConnectorHandshake}. Then, if a node runs
on the same key store and offers its control API (L{local_node}), it is
asked to dial the new peer (L{ask_node_to_dial}), so that it keeps a
connection to it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IAddress, IConnector
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from relaymesh.address import InvalidAddress, format_hostport, parse_peer_address
from relaymesh.codes import (
    FORM_LINK,
    FORM_RELAY_CODE,
    FORM_WORDS,
    LINK_SCHEME,
    PAIR_CODE_BYTES,
    SEED_BYTES,
    InvalidCode,
    Invite,
    decode_invite,
    decode_invite_link,
    decode_relay_code,
    decode_word_phrase,
    derive_pair_key,
    derive_seed_key,
    detect_invite_form,
    encode_invite_link,
    encode_relay_code,
    encode_word_phrase,
    format_pair_code,
    parse_pair_code,
    wordlist,
)
from relaymesh.dialer import CONNECT_TIMEOUT
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.proofs import STRONG_FORM
from relaymesh.keystore import PAIR_CODE_FORM, KeyStore
from relaymesh.mesh import Mesh
from relaymesh.handshake.pake import InvalidStrongCode, generate_strong_code, normalize_strong_code
from relaymesh.connection import HANDSHAKE_TIMEOUT, RelayProtocol
from relaymesh.tls import NodeCertificate

#: How long an invite's keys stay armed, in seconds.
DEFAULT_EXPIRY = 600.0

#: relaymesh's own invite link scheme.
RELAYMESH_LINK_SCHEME = "relaymesh://"

#: The kinds of secret a relaymesh link carries, after the address.
LINK_KIND_KEY = "k"  # /k/<16 hex digits>: the 64-bit pair code prefix
LINK_KIND_STRONG = "s"  # /s/<code>: a strong one-time code for SPAKE2

#: The forms a joining node pairs with; recorded as its C{paired_via}.
FORM_RELAYMESH_LINK = "relaymesh_link"
FORM_STRONG_LINK = "strong_link"  # a relaymesh link with a strong code
FORM_STRONG_CODE = STRONG_FORM  # a bare strong code with --peer
FORM_PAIR_CODE = PAIR_CODE_FORM

#: The forms of the keys an invite arms; recorded as the joiner's
#: C{paired_via} on the inviting node, which cannot tell apart forms that
#: carry the same key.
ARMED_INVITE = "invite"  # the links and the bare pair code
ARMED_INVITE_LEGACY = "invite_legacy"  # the relay code and the word phrase

#: How each C{paired_via} value reads in C{relaymesh peers}.
FORM_DESCRIPTIONS = {
    FORM_STRONG_CODE: "strong code",
    FORM_STRONG_LINK: "relaymesh link (strong code)",
    FORM_RELAYMESH_LINK: "relaymesh link",
    FORM_LINK: "cctl:// link",
    FORM_RELAY_CODE: "relay code",
    FORM_WORDS: "word phrase",
    FORM_PAIR_CODE: "pair code",
    ARMED_INVITE: "invite link or pair code",
    ARMED_INVITE_LEGACY: "relay code or word phrase",
}

#: The forms only a relaymesh node prints: its peer must prove the key back.
RELAYMESH_FORMS = (FORM_RELAYMESH_LINK, FORM_STRONG_LINK, FORM_STRONG_CODE)

#: The forms whose key has only 32 bits of secret.
LEGACY_FORMS = (FORM_RELAY_CODE, FORM_WORDS)

#: Seconds a join may take in all; its TCP connection must be made sooner.
JOIN_TIMEOUT = HANDSHAKE_TIMEOUT  # claudectl 0.49: 30 s read timeout
JOIN_CONNECT_TIMEOUT = CONNECT_TIMEOUT  # claudectl 0.49: 10 s

_HEX = frozenset("0123456789abcdefABCDEF")
_PAIR_CODE_SEPARATORS = frozenset("- \t")
_NOT_BASE32_DIGITS = frozenset("0189")


# The relaymesh link


def encode_relaymesh_link(identity: str, host: str, port: int, prefix: bytes) -> str:
    """
    Make a relaymesh invite link carrying a 64-bit pair code prefix.

    @param identity: the inviting node's peer id.
    @param host: the address to dial (an IPv6 address is bracketed).
    @param port: the TCP port.
    @param prefix: the 8-byte pair code prefix.
    @return: C{relaymesh://ID@HOST:PORT/k/<16 lowercase hex digits>}.
    @raise relaymesh.peerid.InvalidPeerId: if C{identity} is not valid.
    @raise InvalidCode: for a bad host, port or prefix.
    """
    link = encode_invite_link(identity, host, port, prefix)
    return RELAYMESH_LINK_SCHEME + link[len(LINK_SCHEME) :]


def encode_strong_link(identity: str, host: str, port: int, code: str) -> str:
    """
    Make a relaymesh invite link carrying a strong one-time code.

    @return: C{relaymesh://ID@HOST:PORT/s/<code>}.
    """
    base = encode_relaymesh_link(identity, host, port, bytes(PAIR_CODE_BYTES))
    return base.rsplit("/" + LINK_KIND_KEY + "/", 1)[0] + f"/{LINK_KIND_STRONG}/{normalize_strong_code(code)}"


def looks_like_strong_code(text: str) -> bool:
    """
    Whether C{text} is meant as a strong code: a number and two words.
    """
    parts = text.strip().split("-")
    return len(parts) == 3 and parts[0].isdigit() and all(p.isalpha() for p in parts[1:])


def decode_relaymesh_link(text: str) -> Invite:
    """
    Decode a relaymesh invite link.

    @param text: C{relaymesh://ID@HOST:PORT/k/CODE}; the scheme in any case.
    @return: the invite, with the identity and the pair code's key, of form
        L{FORM_RELAYMESH_LINK}.
    @raise InvalidCode: for a missing or bad part, or a kind of secret this
        version cannot use.
    """
    text = text.strip()
    if text[: len(RELAYMESH_LINK_SCHEME)].lower() != RELAYMESH_LINK_SCHEME:
        raise InvalidCode(f"a relaymesh invite link must start with {RELAYMESH_LINK_SCHEME}")
    rest = text[len(RELAYMESH_LINK_SCHEME) :]
    _, slash, after = rest.partition("/")
    kind = after.partition("/")[0]
    if slash and kind == LINK_KIND_STRONG:
        address, _, code = rest.partition("/" + LINK_KIND_STRONG + "/")
        try:
            code = normalize_strong_code(code)
        except InvalidStrongCode as e:
            raise InvalidCode(str(e)) from None
        invite = decode_invite_link(LINK_SCHEME + address + "/k/" + "0" * 16)
        return dataclasses.replace(invite, key=None, form=FORM_STRONG_LINK, strong_code=code)
    if slash and kind != LINK_KIND_KEY:
        raise InvalidCode(f"unknown code kind {kind[:10]!r} in relaymesh invite link (want /k/)")
    invite = decode_invite_link(LINK_SCHEME + rest)
    return dataclasses.replace(invite, form=FORM_RELAYMESH_LINK)


# Reading what a user gives to join


def _hex_only(text: str) -> bool:
    """
    Whether C{text} has hex digits and nothing but dashes and spaces besides.
    """
    chars = set(text)
    return chars <= _HEX | _PAIR_CODE_SEPARATORS and not chars <= _PAIR_CODE_SEPARATORS


def looks_like_pair_code(text: str) -> bool:
    """
    Whether C{text} is meant as a pair code rather than a relay code or a
    word phrase.

    It is if it holds only hex digits, dashes and spaces, and either 16 hex
    digits or a digit that no relay code has (0, 1, 8 or 9).

    @param text: what the user gave.
    """
    text = text.strip()
    if not _hex_only(text):
        return False
    digits = sum(c in _HEX for c in text)
    return digits == 2 * PAIR_CODE_BYTES or not _NOT_BASE32_DIGITS.isdisjoint(text)


def parse_join_input(text: str, peer: str | None = None) -> Invite:
    """
    Decode what a user gives C{relaymesh join}, in whichever form it is.

    C{relaymesh://} starts a relaymesh link, C{cctl://} a claudectl link; a
    pair code (see L{looks_like_pair_code}) needs C{peer}; anything else is
    told apart as claudectl does (L{relaymesh.codes.decode_invite}).

    @param text: a link, relay code, word phrase or pair code.
    @param peer: C{ID@HOST:PORT}, the inviting node, for a bare pair code.
    @return: the invite.
    @raise InvalidCode: with one line saying what is wrong.
    """
    text = text.strip()
    if not text:
        raise InvalidCode(
            "empty invite: give a relaymesh:// or cctl:// link, a relay code, "
            "a word phrase, or a pair code with --peer"
        )
    if looks_like_strong_code(text):
        try:
            code = normalize_strong_code(text)
        except InvalidStrongCode as e:
            raise InvalidCode(str(e)) from None
        if peer is None:
            raise InvalidCode("a strong code needs --peer ID@HOST:PORT (the inviting node's id and address)")
        invite = _pair_code_invite(None, peer)
        return dataclasses.replace(invite, form=FORM_STRONG_CODE, strong_code=code)
    if looks_like_pair_code(text) or (peer is not None and _hex_only(text)):
        key = parse_pair_code(text)
        if peer is None:
            raise InvalidCode(
                "a pair code needs --peer ID@HOST:PORT (the inviting node's id and address)"
            )
        return _pair_code_invite(key, peer)
    if peer is not None:
        raise InvalidCode("--peer goes only with a pair code; links and codes carry the address")
    if text[: len(RELAYMESH_LINK_SCHEME)].lower() == RELAYMESH_LINK_SCHEME:
        return decode_relaymesh_link(text)
    if detect_invite_form(text) == FORM_WORDS:
        try:
            return decode_word_phrase(text)
        except InvalidCode:
            if not _no_words(text):
                raise
        return decode_relay_code(text)  # a relay code with a character too few or many
    return decode_invite(text)


def _no_words(text: str) -> bool:
    """
    Whether no C{-}-separated part of C{text} is a word of the word list.
    """
    words = set(wordlist())
    return not any(part.strip().lower() in words for part in text.split("-"))


def _pair_code_invite(key: bytes | None, peer: str) -> Invite:
    try:
        address = parse_peer_address(peer)
    except InvalidAddress as e:
        raise InvalidCode(f"--peer: {e}") from None
    if address.peer_id is None:
        raise InvalidCode(f"--peer needs the node's id too: ID@{address.hostport}")
    return Invite(address.host, address.port, key, address.peer_id, FORM_PAIR_CODE)


# Making an invite


@dataclass(frozen=True)
class InviteForms:
    """
    Every form of one invite, and the keys to arm for it.

    @ivar identity: the inviting node's peer id.
    @ivar host: the address peers dial.
    @ivar port: the TCP port peers dial.
    @ivar expires_at: when the keys stop working (epoch seconds).
    @ivar relaymesh_link: the relaymesh link with the 64-bit pair code.
    @ivar strong_code: the one-time strong code (SPAKE2).
    @ivar strong_link: the relaymesh link with the strong code.
    @ivar link: the claudectl C{cctl://} link.
    @ivar pair_code: the pair code, for C{join CODE --peer ID@HOST:PORT}.
    @ivar relay_code: the claudectl relay code (32-bit), or L{None} if the
        address cannot be put in one.
    @ivar words: the word phrase (32-bit), or L{None} likewise.
    @ivar no_legacy_reason: why there is no relay code or word phrase.
    @ivar keys: the C{(form, key)} pairs to arm, the pending key first.
    """

    identity: str
    host: str
    port: int
    expires_at: float
    relaymesh_link: str
    strong_code: str
    strong_link: str
    link: str
    pair_code: str
    relay_code: str | None
    words: str | None
    no_legacy_reason: str | None
    keys: tuple[tuple[str, bytes], ...] = dataclasses.field(repr=False)

    @property
    def addr(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 host.
        """
        return format_hostport(self.host.strip("[]"), self.port)

    @property
    def peer(self) -> str:
        """
        C{ID@HOST:PORT}, what C{join --peer} takes with the pair code.
        """
        return f"{self.identity}@{self.addr}"


def make_invite(
    identity: str,
    host: str,
    port: int,
    now: float,
    expires_in: float = DEFAULT_EXPIRY,
    randbytes: Callable[[int], bytes] = os.urandom,
    strong_code: str | None = None,
) -> InviteForms:
    """
    Make a new invite in every form.

    The relay code and word phrase are left out when they cannot carry the
    address: a host name, an IPv6 address, or a port outside 9847..10102.

    @param identity: this node's peer id.
    @param host: the address peers dial.
    @param port: the TCP port peers dial.
    @param now: the time (epoch seconds).
    @param expires_in: seconds until the keys stop working.
    @param randbytes: a function returning that many random bytes.
    @return: the invite; nothing is armed yet (see L{arm_invite}).
    @raise relaymesh.peerid.InvalidPeerId: if C{identity} is not valid.
    @raise InvalidCode: for a bad host or port.
    """
    prefix = randbytes(PAIR_CODE_BYTES)
    seed = randbytes(SEED_BYTES)
    strong_code = strong_code or generate_strong_code()
    link = encode_invite_link(identity, host, port, prefix)
    keys = [(ARMED_INVITE, derive_pair_key(prefix))]
    relay_code = words = reason = None
    try:
        relay_code = encode_relay_code(host, port, seed, strict=True)
        words = encode_word_phrase(host, port, seed, strict=True)
    except InvalidCode as e:
        reason = str(e)
    else:
        keys.append((ARMED_INVITE_LEGACY, derive_seed_key(seed)))
    return InviteForms(
        identity=identity,
        host=host.strip("[]"),
        port=port,
        expires_at=now + expires_in,
        relaymesh_link=encode_relaymesh_link(identity, host, port, prefix),
        strong_code=strong_code,
        strong_link=encode_strong_link(identity, host, port, strong_code),
        link=link,
        pair_code=format_pair_code(prefix),
        relay_code=relay_code,
        words=words,
        no_legacy_reason=reason,
        keys=tuple(keys),
    )


def arm_invite(store: KeyStore, invite: InviteForms) -> None:
    """
    Arm every key of an invite, replacing whatever was armed.

    @param store: the key store.
    @param invite: the invite.
    """
    store.arm(list(invite.keys), expires_at=invite.expires_at)
    store.arm_strong_code(invite.strong_code, expires_at=invite.expires_at)


# The address to invite to


def local_ipv4_addresses() -> list[str]:
    """
    This machine's IPv4 addresses, in interface order, loopback included.

    On Linux every interface's address is read with C{SIOCGIFADDR}; the
    addresses the host name resolves to follow.

    @return: dotted-quad addresses, without duplicates.
    """
    found: list[str] = []
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    request = struct.pack("256s", name.encode()[:15])
                    answer = fcntl.ioctl(s.fileno(), 0x8915, request)  # SIOCGIFADDR
                except OSError:
                    continue
                found.append(socket.inet_ntoa(answer[20:24]))
    except (ImportError, AttributeError, OSError):
        pass
    try:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(sockaddr[0])
    except OSError:
        pass
    return list(dict.fromkeys(found))


def default_invite_host(addresses: Callable[[], list[str]] = local_ipv4_addresses) -> str:
    """
    The address peers should dial: the first non-loopback IPv4 address
    (a link-local one only if there is nothing else).

    @param addresses: what lists this machine's IPv4 addresses.
    @return: the address.
    @raise InvalidCode: if there is none, saying to use C{--host}.
    """
    usable = []
    for text in addresses():
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_unspecified):
            usable.append(address)
    usable.sort(key=lambda a: a.is_link_local)
    if not usable:
        raise InvalidCode("found no non-loopback IPv4 address to invite to; give one with --host")
    return str(usable[0])


# Joining


class JoinError(Exception):
    """
    A join that did not pair; the message is one line for users.
    """


class JoinDenied(JoinError):
    """
    The inviting node refused the key.
    """


@dataclass(frozen=True)
class JoinResult:
    """
    A finished pairing.

    @ivar peer_id: the inviting node's peer id.
    @ivar addr: where it listens, C{host:port}.
    @ivar form: the form joined with, now its C{paired_via}.
    @ivar through: C{"direct"}, or C{"node"} when the running node paired.
    """

    peer_id: str
    addr: str
    form: str
    through: str = "direct"

    @property
    def peer(self) -> str:
        """
        C{ID@HOST:PORT}, for C{--peers}.
        """
        return f"{self.peer_id}@{self.addr}"


def denial_message(invite: Invite) -> str:
    """
    Say why an invite's key may have been refused.

    @param invite: the invite joined with.
    @return: one line.
    """
    if invite.form in LEGACY_FORMS:
        what = FORM_DESCRIPTIONS[invite.form]
        return (
            f"{invite.addr} refused the key of this {what}: it may have expired or been "
            f"used; and claudectl 0.49 relay codes and word phrases cannot pair at all, "
            f"so if claudectl printed it, join with its invite link (cctl://...) instead"
        )
    return (
        f"{invite.addr} refused the key: the invite may have expired, been used "
        f"already, or been replaced by a newer one"
    )


class JoinFactory(ClientFactory):
    """
    Makes one connection to an inviting node and runs the connector's side
    of the handshake with the invite's key.

    @ivar done: fires with the L{RelayProtocol} once the handshake
        succeeds, or fails with a L{JoinError}.
    @ivar closed: fires once the connection is gone (or was never made).
    """

    noisy = False

    def __init__(self, mesh: Mesh, invite: Invite, keys: KeyStore | None = None) -> None:
        """
        @param mesh: a mesh with this node's identity, for the protocol.
        @param invite: what to join: the address, the key and, if known,
            the peer id that must answer.
        """
        self.mesh = mesh
        self.invite = invite
        self.keys = keys
        self.done: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        # Only a relaymesh link promises a relaymesh node, which proves the key
        # back; claudectl's forms may come from claudectl, which cannot.
        handshake = ConnectorHandshake(
            self.mesh.identity,
            self.invite.key,
            self.invite.identity,
            keys=self.keys,
            strong_code=self.invite.strong_code,
            accept_one_way=self.invite.form not in RELAYMESH_FORMS,
        )
        protocol = RelayProtocol(self.mesh, handshake)
        protocol.factory = self
        return protocol

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
        if protocol.proof_rejected and reason.startswith("the peer denied"):
            self.done.errback(JoinDenied(denial_message(self.invite)))
        elif protocol.msgs_in == 0:
            self.done.errback(
                JoinError(
                    f"{self.invite.addr} closed the connection before the handshake "
                    f"({reason}): it may be at its peer limit, or refusing this address "
                    f"for a minute after failed attempts"
                )
            )
        else:
            self.done.errback(JoinError(f"the handshake with {self.invite.addr} failed: {reason}"))

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(
                JoinError(f"cannot connect to {self.invite.addr}: {_describe(reason)}")
            )
        self._closed()

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self._closed()

    def _closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def _describe(reason: Failure) -> str:
    return " ".join(reason.getErrorMessage().split()).rstrip(".") or "failed"


@inlineCallbacks
def join_directly(
    store: KeyStore,
    invite: Invite,
    reactor: Any,
    connect_timeout: float = JOIN_CONNECT_TIMEOUT,
    timeout: float = JOIN_TIMEOUT,
    certificate: NodeCertificate | None = None,
):
    """
    Pair with an inviting node over one connection of our own.

    On success the key is stored for the peer id that answered, with meta
    C{addr}, C{paired_at} (epoch milliseconds) and C{paired_via}; then the
    connection is closed.

    @param store: this node's key store.
    @param invite: what to join.
    @param reactor: an L{IReactorTCP} and L{IReactorTime}.
    @param connect_timeout: seconds for TCP to connect.
    @param timeout: seconds for the whole join.
    @param certificate: this node's certificate, to join over TLS (the
        peer's certificate is then pinned); plain TCP if L{None}.
    @return: a L{Deferred} firing with a L{JoinResult}, or failing with a
        L{JoinError}.
    """
    identity = store.identity()
    if invite.identity == identity:
        raise JoinError(f"this invite is from this node itself ({identity})")
    factory = JoinFactory(Mesh(identity, reactor), invite, keys=store)
    if certificate is not None:
        connector = reactor.connectSSL(
            invite.host, invite.port, factory, certificate.client_options(), timeout=connect_timeout
        )
    else:
        connector = reactor.connectTCP(invite.host, invite.port, factory, timeout=connect_timeout)

    def give_up() -> None:
        if not factory.done.called:
            factory.done.errback(JoinError(f"no answer from {invite.addr} within {timeout:g} s"))
        connector.disconnect()

    timer = reactor.callLater(timeout, give_up)
    protocol = None
    try:
        protocol = yield factory.done
        store.set_key(protocol.peer_id, protocol.handshake.psk)
        store.update_meta(
            protocol.peer_id,
            addr=invite.addr,
            paired_at=int(reactor.seconds() * 1000),
            paired_via=invite.form,
            # A peer that did not prove the key back is dialled as claudectl is.
            legacy=not protocol.handshake.mutual,
        )
    finally:
        if timer.active():
            timer.cancel()
        if protocol is not None:
            protocol.close("paired")
        yield _at_most(factory.closed, CLOSE_WAIT, reactor)
    return JoinResult(protocol.peer_id, invite.addr, invite.form)


#: Seconds to wait for the connection to close after a join.
CLOSE_WAIT = 5.0


def _at_most(d: Deferred, seconds: float, clock: Any) -> Deferred:
    """
    A L{Deferred} firing with L{None} when C{d} fires or C{seconds} pass,
    whichever is first.
    """
    done: Deferred = Deferred()

    def fire(_: object = None) -> None:
        if not done.called:
            done.callback(None)

    late = clock.callLater(seconds, fire)
    d.addBoth(fire)
    return done.addBoth(lambda _: late.cancel() if late.active() else None)


# The running local node


#: Seconds to wait for the local node's API.
LOCAL_NODE_TIMEOUT = 5.0


def local_node(data_dir: str, identity: str) -> Any | None:
    """
    The control API of the node running on this key store, if one runs.

    The API client (L{relaymesh.control.client}) finds the node's URL and token
    through the data directory; a node is used only if it answers with
    this key store's identity.

    @param data_dir: the key store's directory.
    @param identity: this node's peer id.
    @return: a C{NodeClient}, or L{None} if no such node answers.
    """
    try:
        from relaymesh.control import client as apiclient
    except ImportError:
        return None
    try:
        token = apiclient.read_token(os.path.join(data_dir, apiclient.TOKEN_FILE))
        client = apiclient.NodeClient(
            apiclient.resolve_url(data_dir), token, timeout=LOCAL_NODE_TIMEOUT
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

    @return: the port, or L{None} if no node answers or it does not listen.
    """
    node = local_node(data_dir, identity)
    listen = node.status.get("listen") if node is not None else None
    if not isinstance(listen, str):
        return None
    port = listen.rpartition(":")[2]
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


def ask_node_to_dial(node: Any, result: JoinResult) -> bool:
    """
    Ask the running node to dial a peer just paired with, so that it keeps
    a connection to it.

    @param node: the node's API client, from L{local_node}.
    @param result: the pairing.
    @return: whether the node took the request.
    """
    from relaymesh.control import client as apiclient

    try:
        node.call("POST", "/api/peers", {"addr": result.peer})
    except (apiclient.NodeNotRunning, apiclient.ApiRequestError, OSError):
        return False
    return True
