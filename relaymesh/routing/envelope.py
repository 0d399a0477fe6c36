"""
The routed envelope: a relay message with two extra top-level fields, which
claudectl ignores (it never gets one)::

    {"id": ..., "msg_type": ..., "from_peer": ..., "timestamp": ...,
     "payload": null, "route": {"origin": "alpha", "to": "delta",
                                "hops": 2, "origin_id": "msg_..."},
     "sealed": "..."}

C{from_peer} is always the neighbour that sent this copy (the protocol
checks it); C{origin} and C{origin_id} name the message end to end;
C{sealed} is its payload, sealed for C{to} by C{origin}
(L{relaymesh.routing.seal}).

Every node a routed message crosses checks its header once, as it arrives
(L{envelope}, L{route_fields}), into plain values, and a relay writes the
line it forwards from those values (L{routed_line}); L{RouteHeader},
L{check_envelope} and L{encode_routed} are the same checks and encoding
with a header object. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relaymesh.peerid import is_valid_peer_id
from relaymesh.reliable.fields import MAX_ID_LENGTH
from relaymesh.wire import HANDSHAKE_TYPES, MAX_LINE_BYTES, RelayMessage, WireError, dumps

# This module's names are its own: relaymesh.routing.table re-exports them,
# and an API reference documents them here, where they are defined.
__all__ = [
    "MAX_ORIGIN_ID_LENGTH", "MAX_WIRE_HOPS", "ROUTE_FIELD", "SEALED_FIELD", "VALID_IDS_KEPT",
    "EnvelopeError", "RouteHeader", "RoutingError", "check_envelope", "encode_routed", "envelope",
    "header_from_object", "route_fields", "routed_line",
]

#: The top-level field of a relay message that carries its L{RouteHeader}.
ROUTE_FIELD = "route"

#: The top-level field of a routed message that carries its sealed payload
#: (L{relaymesh.routing.seal}).
SEALED_FIELD = "sealed"

#: The longest message id, and origin id, a routed message may carry.
MAX_ORIGIN_ID_LENGTH = MAX_ID_LENGTH

#: The most hops a routed message may carry on the wire: one less than the
#: metric that means unreachable (L{relaymesh.routing.table.INFINITY}).
MAX_WIRE_HOPS = 15


class RoutingError(ValueError):
    """
    An advertisement or a routing request that is not valid; one line says why.
    """


class EnvelopeError(RoutingError, WireError):
    """
    A routed message whose C{route} field is not valid; one line says why.

    It is a L{WireError}, so the protocol treats it as any unparseable line.
    """


@dataclasses.dataclass(frozen=True)
class RouteHeader:
    """
    The C{route} field of a routed message.

    @ivar origin: The node that first sent the message.
    @ivar to: Its destination.
    @ivar hops: The links it has crossed (at least 1 on the wire).
    @ivar origin_id: Its id at the origin: with C{origin} and C{to}, the
        key relays deduplicate by, and what the destination delivers it
        under (a reliable message's copies differ in it: see
        L{relaymesh.reliable.outbox.routed_origin_id}).
    """

    origin: str
    to: str
    hops: int
    origin_id: str

    def forwarded(self) -> RouteHeader:
        """
        The header for the next link: one more hop.
        """
        # a plain constructor call costs a fraction of dataclasses.replace
        return RouteHeader(self.origin, self.to, self.hops + 1, self.origin_id)

    def to_object(self) -> dict[str, Any]:
        """
        The header as a JSON object.
        """
        return {
            "origin": self.origin,
            "to": self.to,
            "hops": self.hops,
            "origin_id": self.origin_id,
        }


_HEADER_FIELDS = ("origin", "to", "hops", "origin_id")


def header_from_object(obj: Any) -> RouteHeader:
    """
    Validate a parsed C{route} field.

    @raise EnvelopeError: naming the first field that is missing or wrong.
    """
    return RouteHeader(*route_fields(obj))


#: Peer ids a route header named lately that were found valid, so that the
#: same origins and destinations are not matched against the pattern again
#: for every message (at most L{VALID_IDS_KEPT}, forgotten all at once).
_VALID_IDS: set[str] = set()

#: Valid peer ids L{route_fields} remembers at most.
VALID_IDS_KEPT = 4096


def _remember_valid(peer_id: str) -> None:
    if len(_VALID_IDS) >= VALID_IDS_KEPT:
        _VALID_IDS.clear()
    _VALID_IDS.add(peer_id)


def route_fields(obj: Any) -> tuple[str, str, int, str]:
    """
    L{header_from_object}'s checks, and the header's four fields as a plain
    tuple: C{(origin, to, hops, origin_id)}.

    @raise EnvelopeError: naming the first field that is missing or wrong.
    """
    # Once per routed message at every node it crosses: a header of the
    # four fields is read with plain subscripts; any other object goes
    # through the loop that names what is unknown or missing.
    if type(obj) is not dict:
        raise EnvelopeError(f"route must be a JSON object, not {type(obj).__name__}")
    try:
        if len(obj) != 4:
            raise KeyError
        origin = obj["origin"]
        to = obj["to"]
        hops = obj["hops"]
        origin_id = obj["origin_id"]
    except KeyError:
        for key in obj:
            if key not in _HEADER_FIELDS:
                raise EnvelopeError(f"route has an unknown field {str(key)[:40]!r}") from None
        for name in _HEADER_FIELDS:
            if name not in obj:
                raise EnvelopeError(f"route is missing the field {name!r}") from None
        raise AssertionError("unreachable: four known fields, none missing") from None
    valid = _VALID_IDS
    if type(origin) is not str or origin not in valid:
        if not is_valid_peer_id(origin):
            raise EnvelopeError("route field 'origin' must be a valid peer id")
        _remember_valid(origin)
    if type(to) is not str or to not in valid:
        if not is_valid_peer_id(to):
            raise EnvelopeError("route field 'to' must be a valid peer id")
        _remember_valid(to)
    if to == origin:
        raise EnvelopeError("route field 'to' names the origin itself")
    if type(hops) is not int:
        raise EnvelopeError(f"route field 'hops' must be an integer, not {type(hops).__name__}")
    if not 1 <= hops <= MAX_WIRE_HOPS:
        raise EnvelopeError(f"route field 'hops' must be from 1 to {MAX_WIRE_HOPS}")
    if type(origin_id) is not str or not origin_id:
        raise EnvelopeError("route field 'origin_id' must be a non-empty string")
    if len(origin_id) > MAX_ORIGIN_ID_LENGTH:
        raise EnvelopeError(
            f"route field 'origin_id' is longer than {MAX_ORIGIN_ID_LENGTH} characters"
        )
    return origin, to, hops, origin_id


def check_envelope(message: RelayMessage, fields: dict[str, Any]) -> tuple[RouteHeader, str]:
    """
    Validate a routed message as it arrived: its C{route} header, its id,
    its type, and its C{sealed} field, checked only for its type (relays
    pass it on unread; its destination opens it).

    @param fields: The message's whole JSON object.
    @return: the header and the C{sealed} text.
    @raise EnvelopeError: naming what is wrong.
    """
    origin, to, hops, origin_id, sealed = envelope(message, fields)
    return RouteHeader(origin, to, hops, origin_id), sealed


def envelope(message: RelayMessage, fields: dict[str, Any]) -> tuple[str, str, int, str, str]:
    """
    L{check_envelope}'s checks, and what it returns as one plain tuple:
    C{(origin, to, hops, origin_id, sealed)}.

    @raise EnvelopeError: naming what is wrong.
    """
    origin, to, hops, origin_id = route_fields(fields.get(ROUTE_FIELD))
    if len(message.id) > MAX_ORIGIN_ID_LENGTH:
        raise EnvelopeError(f"a routed message id is at most {MAX_ORIGIN_ID_LENGTH} characters")
    if message.msg_type in HANDSHAKE_TYPES:
        raise EnvelopeError(f"a {message.msg_type} cannot be routed")
    sealed = fields.get(SEALED_FIELD)
    if type(sealed) is not str or not sealed:
        raise EnvelopeError(f"a routed message needs a non-empty string {SEALED_FIELD!r} field")
    return origin, to, hops, origin_id, sealed


def encode_routed(message: RelayMessage, header: RouteHeader, sealed: str) -> bytes:
    """
    Serialize a routed message as one line, without C{\\n}: the message's
    id, type and timestamp, a C{null} payload, its route header and the
    C{sealed} box that holds its payload.

    @param message: The message; its payload is not written (it travels in
        C{sealed}), and C{from_peer} is this node, the neighbour sending.
    @raise EnvelopeError: if the header is not valid on the wire, the id
        is too long, or the message is a handshake message.
    @raise WireError: if the line would be too long.
    """
    header_from_object(header.to_object())
    if message.msg_type in HANDSHAKE_TYPES:
        raise EnvelopeError(f"a {message.msg_type} cannot be routed")
    if len(message.id) > MAX_ORIGIN_ID_LENGTH:
        raise EnvelopeError(f"a routed message id is at most {MAX_ORIGIN_ID_LENGTH} characters")
    return routed_line(
        message.id,
        message.msg_type,
        message.from_peer,
        message.timestamp,
        (header.origin, header.to, header.hops, header.origin_id),
        sealed,
    )


def routed_line(
    msg_id: str,
    msg_type: str,
    from_peer: str,
    timestamp: int,
    header: tuple[str, str, int, str],
    sealed: str,
) -> bytes:
    """
    The line L{encode_routed} writes, of parts already known to be valid
    on the wire: a header's C{(origin, to, hops, origin_id)} as
    L{route_fields} returned them, or one hop on within the hop limit
    (L{judge}), and the id and type of a message L{envelope} took. A relay
    encodes what it forwards with this, so that each header is checked
    once, when it arrives.

    @raise WireError: if the line would be too long.
    """
    origin, to, hops, origin_id = header
    line = dumps(
        {
            "id": msg_id,
            "msg_type": msg_type,
            "from_peer": from_peer,
            "timestamp": timestamp,
            "payload": None,
            ROUTE_FIELD: {"origin": origin, "to": to, "hops": hops, "origin_id": origin_id},
            SEALED_FIELD: sealed,
        }
    )
    if len(line) > MAX_LINE_BYTES:
        raise WireError(
            f"routed message of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"
        )
    return line
