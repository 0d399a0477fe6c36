"""
Which C{Host} headers the API answers.

A page of another site can point a name of its own at 127.0.0.1 (DNS
rebinding) and then reach the API from the browser as its own origin. Its
requests carry that name in C{Host}, which the browser will not let it
change, so the API answers only requests whose C{Host} is one of:

  - C{localhost}, C{127.0.0.1} or C{[::1]};
  - the IP address the connection came in on (the address the API listens
    on, or, listening on every interface, the one the client dialled);
  - a name the user configured (C{--api-host NAME}),

each with the port the connection came in on; a configured C{NAME:PORT}
is taken with its own port (behind a proxy or a tunnel).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from relaymesh.printable import printable

#: The names every node answers to, besides its own address.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class InvalidHost(ValueError):
    """
    A host name or C{Host} header that does not parse; the message says why.
    """


@dataclass(frozen=True)
class HostName:
    """
    A host and maybe a port, as in a C{Host} header.

    @ivar host: The name in lower case, or the IP address without brackets.
    @ivar port: The port, or C{None} if none was written.
    """

    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_host(text: str) -> HostName:
    """
    Parse C{name}, C{name:port}, C{[v6 address]} or C{[v6 address]:port}.

    @raise InvalidHost: for anything else.
    """
    shown = printable(text, 64)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ipv6(host):
            raise InvalidHost(f"{shown}: want a valid IPv6 address in brackets")
        if rest and not rest.startswith(":"):
            raise InvalidHost(f"{shown}: want [ADDRESS]:PORT")
        port_text = rest[1:] if rest else None
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        if not host or not host.isascii() or not all(c.isalnum() or c in "-._" for c in host):
            raise InvalidHost(f"{shown}: not a host name or address")
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise InvalidHost(f"{shown}: the port must be a number from 1 to 65535")
    return HostName(host.lower(), None if port_text is None else int(port_text))


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _same_ip(name: str, local: str) -> bool:
    """
    Whether C{name} is an IP address and the same as C{local}.
    """
    try:
        a, b = ipaddress.ip_address(name), ipaddress.ip_address(local.partition("%")[0])
    except ValueError:
        return False
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    return a == b


class HostPolicy:
    """
    The C{Host} headers one API answers.

    @ivar configured: The names the user added, each with or without a port.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        """
        @param names: Names (and C{NAME:PORT}s) to answer besides the
            loopback names and the API's own address.
        @raise InvalidHost: for a name that does not parse.
        """
        self.configured = tuple(parse_host(name.strip()) for name in names)

    def refusal(self, header: bytes | None, local_host: str | None, local_port: int | None, secure: bool) -> str | None:
        """
        Why a request with this C{Host} header is refused, or C{None} if it
        is answered.

        @param header: The request's C{Host} header, if any.
        @param local_host: The IP address the connection came in on, or
            C{None} if it is no IP connection (then any host is answered:
            no browser reaches it by a name).
        @param local_port: The port it came in on.
        @param secure: Whether it is a TLS connection (the default port is
            then 443, not 80).
        """
        if local_host is None or local_port is None:
            return None
        if header is None:
            return "missing Host header"
        try:
            asked = parse_host(header.decode("ascii"))
        except (UnicodeDecodeError, InvalidHost):
            return f"malformed Host header '{printable(header.decode('latin-1'), 64)}'"
        port = asked.port if asked.port is not None else 443 if secure else 80
        if port == local_port and (asked.host in LOOPBACK_NAMES or _same_ip(asked.host, local_host)):
            return None
        for name in self.configured:
            if name.host == asked.host and (name.port or local_port) == port:
                return None
        return (
            f"Host '{printable(str(asked), 64)}' is not this node's API: use localhost, 127.0.0.1, "
            f"[::1] or its own address, with port {local_port}, or start the node with "
            "--api-host NAME"
        )
