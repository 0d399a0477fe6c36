"""
Peer addresses as users write them: C{[tls:|legacy:][peer_id@]host[:port]}.

C{tls:} dials the peer over TLS; C{legacy:} marks a peer that speaks only
claudectl's one-way handshake (it cannot prove the key back).
"""

from __future__ import annotations

import dataclasses

from relaymesh.peerid import InvalidPeerId, validate_peer_id

#: The relay's TCP port.
DEFAULT_PORT = 9847  # claudectl 0.49: 9847

#: The most digits a port is written with.
MAX_PORT_DIGITS = 5


class InvalidAddress(ValueError):
    """
    A peer address that cannot be parsed; the message says why.
    """


@dataclasses.dataclass(frozen=True)
class PeerAddress:
    """
    Where to dial a peer, and which peer to expect there.

    @ivar peer_id: The peer expected at the address, or C{None} to learn it
        from the handshake.
    @ivar host: A host name or an IP address (IPv6 without brackets).
    @ivar port: The TCP port.
    @ivar tls: Whether to dial over TLS.
    @ivar legacy: Whether the peer is a claudectl-style peer, accepted with
        one-way authentication.
    """

    peer_id: str | None
    host: str
    port: int
    tls: bool = False
    legacy: bool = False

    @property
    def hostport(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 address.
        """
        return format_hostport(self.host, self.port)

    def __str__(self) -> str:
        prefix = "tls:" if self.tls else "legacy:" if self.legacy else ""
        if self.peer_id is None:
            return prefix + self.hostport
        return f"{prefix}{self.peer_id}@{self.hostport}"


def is_port_text(text: str) -> bool:
    """
    Whether C{text} is written as a port may be: one to five ASCII digits.

    C{str.isdigit} alone is not enough: it is true of C{"\u00b2"} (which
    C{int} refuses) and of other scripts' digits (which C{int} reads), and
    of digit strings too long for C{int} to read at all.
    """
    return 0 < len(text) <= MAX_PORT_DIGITS and text.isascii() and text.isdigit()


def parse_port(text: str) -> int:
    """
    A TCP or UDP port number from text: the one parser for every port read
    from a user or the network.

    @raise InvalidAddress: if it is not a number from 1 to 65535 in ASCII
        digits.
    """
    if not is_port_text(text) or not 0 < int(text) < 65536:
        raise InvalidAddress(f"invalid port {text[:20]!r}: want a number from 1 to 65535")
    return int(text)


def parse_peer_address(text: str) -> PeerAddress:
    """
    Parse C{[tls:|legacy:][peer_id@]host[:port]}; an IPv6 host is written
    in brackets.

    @raise InvalidAddress: with a one-line reason.
    """
    original = text
    text = text.strip()
    flags = {"tls": False, "legacy": False}
    while True:
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in flags or rest.isdigit():
            # "tls:9847" is the host "tls" and a port (and "tls:\u00b2" a
            # bad port, refused below, rather than the host "\u00b2")
            break
        if flags[scheme]:
            raise InvalidAddress(f"{original!r}: {scheme}: given twice")
        flags[scheme] = True
        text = rest
    if flags["tls"] and flags["legacy"]:
        raise InvalidAddress(f"{original!r}: a legacy (claudectl) peer cannot use TLS")
    if not text:
        raise InvalidAddress(f"empty peer address {original!r}")
    peer_id = None
    if "@" in text:
        peer_id, _, text = text.rpartition("@")
        try:
            validate_peer_id(peer_id)
        except InvalidPeerId as e:
            raise InvalidAddress(f"{original!r}: {e}") from None
    elif flags["legacy"]:
        raise InvalidAddress(
            f"{original!r}: a legacy (claudectl) peer needs its id, legacy:ID@HOST:PORT "
            f"(claudectl does not say who it is, and no key is proved to a node that does not)"
        )
    port = DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise InvalidAddress(f"{original!r}: unclosed '[' around an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise InvalidAddress(f"{original!r}: expected ':port' after ']'")
            port = parse_port(rest[1:])
    elif text.count(":") > 1:
        raise InvalidAddress(f"{original!r}: write an IPv6 address in brackets, [addr]:port")
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            port = parse_port(port_text)
    if not host or any(c.isspace() or not c.isprintable() or c in "/@" for c in host):
        raise InvalidAddress(f"{original!r}: invalid host {host!r}")
    return PeerAddress(peer_id, host, port, **flags)


def format_hostport(host: str, port: int) -> str:
    """
    C{host:port}, with brackets around an IPv6 address.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_address(address: object) -> str:
    """
    C{host:port} for an IPv4 or IPv6 address object, C{str()} for others.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return str(address)
    return format_hostport(host, port)
