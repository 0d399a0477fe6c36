"""
Invites: the forms one node prints so that another can pair with it, and
the keys it arms for them.

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

The forms are read back by L{relaymesh.joinforms.parse_join_input} and
joined with by L{relaymesh.join.join_directly}; the names the command line
uses from those two modules are offered here too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from relaymesh.address import format_hostport
from relaymesh.codes import (
    PAIR_CODE_BYTES,
    SEED_BYTES,
    InvalidCode,
    derive_pair_key,
    derive_seed_key,
    encode_invite_link,
    encode_relay_code,
    encode_word_phrase,
    format_pair_code,
)
from relaymesh.handshake.pake import generate_strong_code
from relaymesh.join import JoinError, ask_node_to_dial, join_directly, local_node, local_node_port, node_port
from relaymesh.joinforms import (
    ARMED_INVITE,
    ARMED_INVITE_LEGACY,
    FORM_DESCRIPTIONS,
    encode_relaymesh_link,
    encode_strong_link,
    parse_join_input,
)
from relaymesh.keystore import KeyStore

__all__ = [
    "DEFAULT_EXPIRY",
    "FORM_DESCRIPTIONS",
    "InviteForms",
    "JoinError",
    "arm_invite",
    "ask_node_to_dial",
    "default_invite_host",
    "join_directly",
    "local_ipv4_addresses",
    "local_node",
    "local_node_port",
    "make_invite",
    "node_port",
    "parse_join_input",
]

#: How long an invite's keys stay armed, in seconds.
DEFAULT_EXPIRY = 600.0


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
    @ivar relay_code: the claudectl relay code (32-bit), or C{None} if the
        address cannot be put in one.
    @ivar words: the word phrase (32-bit), or C{None} likewise.
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
    Arm every key of an invite and its strong code, as one invite that is
    used once, replacing whatever was armed.

    @param store: the key store.
    @param invite: the invite.
    """
    store.arm(list(invite.keys), expires_at=invite.expires_at, strong_code=invite.strong_code)


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
            found.append(str(sockaddr[0]))  # an IPv4 address: a str already
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
