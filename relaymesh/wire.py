"""
The relay protocol's wire format: one JSON object per line.

Each message is a compact JSON object with the fields C{id}, C{msg_type},
C{from_peer}, C{timestamp} and C{payload}, followed by C{\\n}. This module
turns lines into L{RelayMessage}s and back, and refuses every line that
claudectl 0.49 would refuse: bad JSON, invalid UTF-8, a missing field, a field
of the wrong type, an unknown C{msg_type}, nesting deeper than claudectl's JSON
parser takes, or more than L{MAX_LINE_BYTES} bytes.

When C{orjson} is installed it is used for speed; the bytes on the wire are
the same either way.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import re
from typing import Any, Callable

try:  # pragma: no cover - exercised by whichever codec the machine has
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

#: The longest line, in bytes without the C{\n}, a node accepts or sends.
MAX_LINE_BYTES = 1024 * 1024  # claudectl 0.49: 1 MiB

#: The deepest nesting of arrays and objects a line may have. claudectl's JSON
#: parser (serde_json) refuses anything deeper than 128 levels.
MAX_NESTING = 128  # serde_json default recursion limit

#: The largest timestamp claudectl accepts (an unsigned 64-bit integer).
MAX_TIMESTAMP = 2**64 - 1


class MessageType(str, enum.Enum):
    """
    The message types of the claudectl 0.49 relay protocol.
    """

    CHALLENGE = "challenge"
    HANDSHAKE = "handshake"
    HANDSHAKE_ACK = "handshake_ack"
    HEARTBEAT = "heartbeat"
    ACK = "ack"
    DELEGATE_TASK = "delegate_task"
    TASK_STATUS = "task_status"
    TASK_HANDOFF = "task_handoff"
    TASK_INTERRUPT = "task_interrupt"
    KNOWLEDGE_SYNC = "knowledge_sync"
    KNOWLEDGE_REQUEST = "knowledge_request"
    KNOWLEDGE_SNAPSHOT = "knowledge_snapshot"

    def __str__(self) -> str:
        return self.value


#: Every C{msg_type} a claudectl 0.49 peer understands.
MESSAGE_TYPES = frozenset(t.value for t in MessageType)

#: The link types: a C{ping}, and the C{pong} that answers it, measure the
#: round trip between two relaymesh nodes that announced C{ping/1}. They are
#: no claudectl type and never reach an application (see
#: L{relaymesh.connection}).
PING_TYPE = "ping"
PONG_TYPE = "pong"
LINK_TYPES = frozenset({PING_TYPE, PONG_TYPE})

#: Every C{msg_type} a line may carry.
_WIRE_TYPES = MESSAGE_TYPES | LINK_TYPES

#: The types that belong to the handshake and never come from an application.
HANDSHAKE_TYPES = frozenset(
    {MessageType.CHALLENGE.value, MessageType.HANDSHAKE.value, MessageType.HANDSHAKE_ACK.value}
)


class WireError(ValueError):
    """
    A line or message that is not a valid relay message; the text says why.
    """


class RelayMessage:
    """
    One relay protocol message.

    @ivar id: The message id, unique per sender.
    @ivar msg_type: One of L{MESSAGE_TYPES}, as a plain string.
    @ivar from_peer: The sender's peer id (empty in a challenge).
    @ivar timestamp: Milliseconds since the epoch.
    @ivar payload: Any JSON value; normally an object.
    """

    __slots__ = ("id", "msg_type", "from_peer", "timestamp", "payload")

    def __init__(
        self, id: str, msg_type: str, from_peer: str, timestamp: int, payload: Any
    ) -> None:
        self.id = id
        self.msg_type = msg_type
        self.from_peer = from_peer
        self.timestamp = timestamp
        self.payload = payload

    def to_dict(self) -> dict[str, Any]:
        """
        The message as a JSON object, fields in claudectl's order.
        """
        return {
            "id": self.id,
            "msg_type": self.msg_type,
            "from_peer": self.from_peer,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RelayMessage):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"RelayMessage(id={self.id!r}, msg_type={self.msg_type!r}, "
            f"from_peer={self.from_peer!r}, timestamp={self.timestamp!r}, "
            f"payload={self.payload!r})"
        )


def _reject_constant(name: str) -> Any:
    raise WireError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise WireError(f"number {text[:20]} is out of range")
    return value


_stdlib_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float
)
_stdlib_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_LONE_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")


def _stdlib_loads(line: bytes) -> Any:
    text = line.decode("utf-8")  # strict: invalid UTF-8 raises
    value = _stdlib_decoder.decode(text)
    if _LONE_SURROGATE_HINT.search(line) is not None:
        # A lone surrogate escape parses in Python but not in claudectl, and
        # could never be written back out as UTF-8.
        _stdlib_encoder.encode(value).encode("utf-8")
    return value


def _stdlib_dumps(value: Any) -> bytes:
    return _stdlib_encoder.encode(value).encode("utf-8")


if _orjson is not None:
    _loads: Callable[[bytes], Any] = _orjson.loads
    _dumps: Callable[[Any], bytes] = _orjson.dumps
    CODEC = "orjson"
else:  # pragma: no cover
    _loads = _stdlib_loads
    _dumps = _stdlib_dumps
    CODEC = "json"

if os.environ.get("RELAYMESH_CODEC") == "json":  # pragma: no cover
    _loads, _dumps, CODEC = _stdlib_loads, _stdlib_dumps, "json"


#: A JSON string, or an unterminated one running to the end of the line.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
#: Every byte but the four brackets, for C{bytes.translate} to delete.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: How each bracket changes the nesting depth.
_DEPTH_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}  # [ { ] }


def _nesting_depth(line: bytes) -> int:
    """
    The deepest nesting of arrays and objects in a JSON text, ignoring
    brackets inside strings.
    """
    # Done in C, not byte by byte in Python: strings (with their escapes, and
    # an unterminated one up to the end) are cut out, every byte but the
    # brackets is deleted, and the running sum of +1/-1 steps gives the depth.
    brackets = _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKETS)
    return max(0, max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0))


def _too_deep(line: bytes) -> bool:
    """
    Whether a JSON text nests deeper than L{MAX_NESTING}.
    """
    return line.count(b"[") + line.count(b"{") > MAX_NESTING and _nesting_depth(line) > MAX_NESTING


#: The shortest valid JSON text nested deeper than L{MAX_NESTING}: that many
#: opening brackets plus as many closing ones.
_SHORTEST_TOO_DEEP = 2 * (MAX_NESTING + 1)


def _may_be_too_deep(line: bytes) -> bool:
    """
    A cheap test that is true of every valid JSON text nested deeper than
    L{MAX_NESTING}, and false of nearly every message.
    """
    # Shaped by what lines look like: a line shorter than _SHORTEST_TOO_DEEP
    # cannot be both valid and too deep (the parser refuses it, and
    # _parse_error then still names the nesting), and a line has a handful
    # of brackets, which bytes.find (memchr) skips to much faster than
    # bytes.count walks the whole line.
    if len(line) < _SHORTEST_TOO_DEEP:
        return False  # too short to be valid and that deep
    find = line.find
    seen = 0
    for opener in (b"{", b"["):
        at = find(opener)
        while at >= 0:
            seen += 1
            if seen > 16:
                return line.count(b"[") + line.count(b"{") > MAX_NESTING
            at = find(opener, at + 1)
    return False  # 16 brackets or fewer


def _parse_error(line: bytes, error: Exception) -> WireError:
    """
    The L{WireError} that says why the parser refused C{line}.
    """
    if isinstance(error, WireError):
        return error
    if _too_deep(line):
        return WireError(f"JSON nested deeper than {MAX_NESTING} levels")
    if isinstance(error, UnicodeDecodeError):
        return WireError(f"invalid UTF-8 at byte {error.start}")
    if isinstance(error, UnicodeEncodeError):
        return WireError("lone UTF-16 surrogate in a string")
    if isinstance(error, RecursionError):
        return WireError("JSON nested too deeply")
    # json.JSONDecodeError and orjson.JSONDecodeError are ValueErrors, and so
    # is int() refusing a number with thousands of digits.
    return WireError(f"bad JSON: {str(error).splitlines()[0][:120]}")


def loads(line: bytes) -> Any:
    """
    Parse one line of JSON the way claudectl's parser would.

    @raise WireError: if the line is not valid JSON, not valid UTF-8, or
        nested too deeply.
    """
    if _may_be_too_deep(line) and _nesting_depth(line) > MAX_NESTING:
        raise WireError(f"JSON nested deeper than {MAX_NESTING} levels")
    try:
        return _loads(line)
    except (ValueError, RecursionError) as e:
        raise _parse_error(line, e) from None


def dumps(value: Any) -> bytes:
    """
    Serialize a JSON value compactly, as UTF-8, without a newline.

    @raise WireError: if the value cannot be represented as JSON.
    """
    try:
        return _dumps(value)
    except (TypeError, ValueError) as e:
        raise WireError(f"not serializable as JSON: {e}") from None


def _field_error(name: str, expected: str, value: Any) -> WireError:
    if value is _MISSING:
        return WireError(f"missing field {name!r}")
    return WireError(f"field {name!r} must be {expected}, not {type(value).__name__}")


_MISSING = object()


def message_from_object(obj: Any) -> RelayMessage:
    """
    Validate a parsed JSON value as a relay message.

    Unknown extra fields are ignored, as claudectl does.

    @raise WireError: naming the first field that is missing or wrong.
    """
    if type(obj) is not dict:
        raise WireError(f"message must be a JSON object, not {type(obj).__name__}")
    get = obj.get
    msg_id = get("id", _MISSING)
    if type(msg_id) is not str:
        raise _field_error("id", "a string", msg_id)
    msg_type = get("msg_type", _MISSING)
    if type(msg_type) is not str:
        raise _field_error("msg_type", "a string", msg_type)
    if msg_type not in _WIRE_TYPES:
        raise WireError(f"unknown msg_type {msg_type[:40]!r}")
    from_peer = get("from_peer", _MISSING)
    if type(from_peer) is not str:
        raise _field_error("from_peer", "a string", from_peer)
    timestamp = get("timestamp", _MISSING)
    if type(timestamp) is not int:
        raise _field_error("timestamp", "an unsigned integer", timestamp)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise WireError("field 'timestamp' is out of range for an unsigned 64-bit integer")
    payload = get("payload", _MISSING)
    if payload is _MISSING:
        raise WireError("missing field 'payload'")
    return RelayMessage(msg_id, msg_type, from_peer, timestamp, payload)


def decode(line: bytes) -> RelayMessage:
    """
    Parse one line (without its C{\\n}) into a L{RelayMessage}.

    @raise WireError: if claudectl would not accept the line.
    """
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    # Every message takes this path, so it is written for speed: the parse
    # inlined, then _checked. The nesting limit is checked after parsing
    # (orjson stops at 1024 levels, json at the recursion limit; both are
    # refused as too deep).
    try:
        obj = _loads(line)
    except (ValueError, RecursionError) as e:
        raise _parse_error(line, e) from None
    return _checked(line, obj)


def _checked(line: bytes, obj: Any) -> RelayMessage:
    """
    The message a parsed line holds, checked the way claudectl checks it.

    @raise WireError: if it is nested too deeply, or not a message.
    """
    # Plain subscripts and type checks for a well-formed message; anything
    # else (not an object, a field missing or of the wrong type) goes to
    # _refuse, which names what is wrong. A typical message is plainly
    # shallow (_shallow); only other lines are scanned for their depth.
    try:
        msg_id = obj["id"]
        msg_type = obj["msg_type"]
        from_peer = obj["from_peer"]
        timestamp = obj["timestamp"]
        payload = obj["payload"]
    except (KeyError, TypeError, IndexError):
        return _refuse(line, obj)
    if (
        type(msg_id) is str
        and type(msg_type) is str
        and msg_type in _WIRE_TYPES
        and type(from_peer) is str
        and type(timestamp) is int
        and 0 <= timestamp <= MAX_TIMESTAMP
    ):
        if (
            len(line) >= _SHORTEST_TOO_DEEP
            and not _shallow(obj, payload)
            and _may_be_too_deep(line)
            and _nesting_depth(line) > MAX_NESTING
        ):
            raise WireError(f"JSON nested deeper than {MAX_NESTING} levels")
        return RelayMessage(msg_id, msg_type, from_peer, timestamp, payload)
    return _refuse(line, obj)


def _shallow(obj: dict, payload: Any) -> bool:
    """
    Whether a parsed message is plainly within the nesting limit: its
    payload, and any field besides the five (a routing header, say), is a
    scalar, or an object or array of at most 32 scalars.
    """
    # Looking at a few parsed values costs the same for any line length;
    # scanning a 4 KiB line for brackets cost about 15% of receiving it.
    if len(obj) == 5:
        return _flat(payload)
    if len(obj) > 16:
        return False
    for value in obj.values():
        if not _flat(value):
            return False
    return True  # every field flat


def _flat(value: Any) -> bool:
    """
    Whether a parsed value is a scalar, or an object or array of at most 32
    scalars.
    """
    kind = type(value)
    if kind is dict:
        values = value.values()
    elif kind is list:
        values = value
    else:
        return True  # a scalar
    if len(values) > 32:
        return False
    for item in values:
        kind = type(item)
        if kind is dict or kind is list:
            return False
    return True  # scalars only


def _refuse(line: bytes, obj: Any) -> RelayMessage:
    """
    Raise the L{WireError} that says why a parsed line is not a message: too
    deep, or the first field that is missing or wrong.
    """
    if _too_deep(line):
        raise WireError(f"JSON nested deeper than {MAX_NESTING} levels")
    return message_from_object(obj)


def decode_fields(line: bytes) -> tuple[RelayMessage, dict[str, Any]]:
    """
    Parse one line (without its C{\\n}) into a L{RelayMessage} and the whole
    JSON object, for the extension fields a message may carry besides the
    five of the protocol.

    @raise WireError: if claudectl would not accept the line.
    """
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        obj = _loads(line)
    except (ValueError, RecursionError) as e:
        raise _parse_error(line, e) from None
    return _checked(line, obj), obj


def encode(message: RelayMessage) -> bytes:
    """
    Serialize a message as one line, without the C{\\n}.

    @raise WireError: if the payload is not JSON or the line would be longer
        than L{MAX_LINE_BYTES}.
    """
    line = dumps(message.to_dict())
    if len(line) > MAX_LINE_BYTES:
        raise WireError(
            f"message of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"
        )
    return line


class MessageIds:
    """
    Message ids in claudectl's C{msg_<epoch ms>_<counter>} form that cannot
    collide across nodes.

    claudectl remembers recent ids across all of its peers, so two nodes
    whose ids are only a time and a per-process counter can silently lose each
    other's messages. Each generator adds a random 64-bit tag of its own to
    the counter: C{msg_1764180000000_42_9f3ac1d2e4b5a6c7}. claudectl accepts
    any string as an id.

    @ivar tag: This generator's random tag, 16 hex characters.
    """

    def __init__(self, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self.tag = randbytes(8).hex()
        self._counter = itertools.count()

    def next(self, epoch_ms: int) -> str:
        """
        A new id for a message sent at C{epoch_ms}.
        """
        return f"msg_{epoch_ms}_{next(self._counter)}_{self.tag}"
