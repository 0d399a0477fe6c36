"""
The relay protocol's wire format: one JSON object per line.

Each message is a compact JSON object with the fields C{id}, C{msg_type},
C{from_peer}, C{timestamp} and C{payload}, followed by C{\\n}. This module
turns lines into L{RelayMessage}s and back, and refuses every line that
claudectl 0.49 would refuse: bad JSON, invalid UTF-8, a missing field, a field
of the wrong type, an unknown C{msg_type}, nesting deeper than claudectl's JSON
parser takes, or more than L{MAX_LINE_BYTES} bytes.

The codec is msgspec, a dependency: it decodes a line straight into a
L{RelayMessage}, checking the fields' types as it goes. orjson and the
standard library's C{json} are kept as alternatives (C{RELAYMESH_CODEC=orjson}
or C{json}), and C{json} is the fallback where msgspec cannot be installed.
The bytes on the wire and the lines refused are the same on every codec;
L{CODEC} names the one in use.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import os
import re
import types
from collections.abc import Callable, Sequence
from typing import Any

from relaymesh.nesting import (
    MAX_NESTING,
    SHORTEST_TOO_DEEP,
    flat,
    may_be_too_deep,
    nesting_depth,
    shallow,
    too_deep,
)

# The codecs are optional modules (None where one is not installed).
_msgspec: types.ModuleType | None
_orjson: types.ModuleType | None

try:  # pragma: no cover - exercised by whichever codecs the machine has
    import msgspec as _msgspec
except ImportError:  # pragma: no cover
    _msgspec = None

try:  # pragma: no cover
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

#: What L{RelayMessage} is built on: a C{msgspec.Struct} that refuses
#: fields besides the five when it decodes a line (a line with more takes
#: the path that reads every field), or nothing (a dataclass).
_MESSAGE_BASES: tuple[type, ...] = (
    (_msgspec.Struct,) if _msgspec is not None else ()
)
_MESSAGE_OPTIONS: dict[str, Any] = (
    {"forbid_unknown_fields": True, "gc": False} if _msgspec is not None else {}
)

#: The longest line, in bytes without the C{\n}, a node accepts or sends.
MAX_LINE_BYTES = 1024 * 1024  # claudectl 0.49: 1 MiB

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


class RelayMessage(*_MESSAGE_BASES, **_MESSAGE_OPTIONS):  # type: ignore[misc]
    """
    One relay protocol message.

    With msgspec (the default codec) a message is a C{msgspec.Struct},
    decoded from a line in one step, and not tracked by the garbage
    collector (a payload must not refer back to its message); otherwise a
    slotted dataclass. Either way it has the five fields, compares by value
    and shows them in its repr.

    @ivar id: The message id, unique per sender.
    @ivar msg_type: One of L{MESSAGE_TYPES}, as a plain string.
    @ivar from_peer: The sender's peer id (empty in a challenge).
    @ivar timestamp: Milliseconds since the epoch.
    @ivar payload: Any JSON value; normally an object.
    """

    id: str
    msg_type: str
    from_peer: str
    timestamp: int
    payload: Any

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


if _msgspec is None:  # pragma: no cover - the fallback for platforms without msgspec
    RelayMessage = dataclasses.dataclass(slots=True)(RelayMessage)  # type: ignore[misc]


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


def _msgspec_codec() -> dict[str, Any]:
    """
    msgspec's functions: a line is decoded straight into a L{RelayMessage}
    (or, with extension fields, a C{_Envelope} made by L{_envelope_type}), its fields' types checked
    in C.
    """
    assert _msgspec is not None
    encoder = _msgspec.json.Encoder()
    return {
        "_loads": _msgspec.json.Decoder().decode,
        "_dumps": encoder.encode,
        "_decode_message": _msgspec.json.Decoder(RelayMessage).decode,
        "_decode_envelope": _msgspec.json.Decoder(_envelope_type()).decode,
        "_encode_message": encoder.encode,
    }


def _codec_functions(name: str) -> dict[str, Any]:
    """
    The module globals that make C{name} (C{msgspec}, C{orjson} or C{json})
    the codec: C{_loads} and C{_dumps} for any JSON value, and the typed
    decoders of the message path (C{None} where the codec has none).

    @raise ValueError: if C{name} is not installed or not a codec.
    """
    if name == "msgspec" and _msgspec is not None:
        return _msgspec_codec()
    if name == "orjson" and _orjson is not None:
        functions = {"_loads": _orjson.loads, "_dumps": _orjson.dumps}
    elif name == "json":
        functions = {"_loads": _stdlib_loads, "_dumps": _stdlib_dumps}
    else:
        raise ValueError(f"codec {name!r} is not available")
    dumps = functions["_dumps"]
    return {
        **functions,
        "_decode_message": None,
        "_decode_envelope": None,
        "_encode_message": lambda message: dumps(message.to_dict()),
    }


def _pick_codec(requested: str | None) -> str:
    """
    The codec to use: the one C{RELAYMESH_CODEC} names if it is installed,
    else msgspec, else the standard library.
    """
    installed = [
        name
        for name, module in (("msgspec", _msgspec), ("orjson", _orjson), ("json", json))
        if module is not None
    ]
    if requested in installed:
        return requested
    return installed[0]




def _parse_error(line: bytes, error: Exception) -> WireError:
    """
    The L{WireError} that says why the parser refused C{line}, in the same
    words on every codec.
    """
    if isinstance(error, WireError):
        return error
    if too_deep(line):
        return WireError(f"JSON nested deeper than {MAX_NESTING} levels")
    if isinstance(error, UnicodeEncodeError) or (
        _LONE_SURROGATE_HINT.search(line) is not None and _has_lone_surrogate(line)
    ):
        return WireError("lone UTF-16 surrogate in a string")
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return WireError(f"invalid UTF-8 at byte {e.start}")
    if isinstance(error, RecursionError):
        return WireError("JSON nested too deeply")
    # json.JSONDecodeError, orjson.JSONDecodeError and msgspec's errors are
    # ValueErrors, and so is int() refusing a number with thousands of digits.
    return WireError(f"bad JSON: {str(error).splitlines()[0][:120]}")


def _has_lone_surrogate(line: bytes) -> bool:
    """
    Whether a line that is valid UTF-8 holds a string with a lone UTF-16
    surrogate escape.
    """
    try:
        _stdlib_loads(line)
    except UnicodeError:
        return True
    except (ValueError, RecursionError):
        return False
    return False


def loads(line: bytes) -> Any:
    """
    Parse one line of JSON the way claudectl's parser would.

    @raise WireError: if the line is not valid JSON, not valid UTF-8, or
        nested too deeply.
    """
    if may_be_too_deep(line) and nesting_depth(line) > MAX_NESTING:
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


def _line_too_long(line: bytes) -> WireError:
    return WireError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")


def decode(line: bytes) -> RelayMessage:
    """
    Parse one line (without its C{\\n}) into a L{RelayMessage}.

    @raise WireError: if claudectl would not accept the line.
    """
    if len(line) > MAX_LINE_BYTES:
        raise _line_too_long(line)
    # Every message from a claudectl peer takes this path, so it is written
    # for speed. msgspec decodes a line of the five fields straight into a
    # message, checking their types; the few checks left are made here
    # (_taken). Anything else, refused or not, takes the path that reads
    # every field (_parsed), which also says why a line is refused.
    if _decode_message is not None:
        try:
            message = _decode_message(line)
        except (ValueError, RecursionError):
            pass  # not a plain message: _parsed says what it is
        else:
            if _taken(line, message, message.payload):
                return message
    return _checked(line, _parsed(line))


def _decode_checked(line: bytes | memoryview) -> RelayMessage:
    """
    L{decode} on a codec that parses a line into plain JSON values (orjson,
    json): the bulk path's decoder there.
    """
    return decode(bytes(line))


def _parsed(line: bytes) -> Any:
    """
    The JSON value of a whole line.

    @raise WireError: if it is not JSON claudectl would parse.
    """
    try:
        return _loads(line)
    except (ValueError, RecursionError) as e:
        raise _parse_error(line, e) from None


def _taken(line: bytes, message: Any, *values: Any) -> bool:
    """
    Whether a message whose fields msgspec decoded, typed, may be taken: its
    type is a relay type, its timestamp fits in 64 bits, and it is nested
    within L{MAX_NESTING} levels (plainly so when the top-level C{values} it
    holds are L{flat}, as nearly every message's are).
    """
    timestamp = message.timestamp
    if message.msg_type not in _WIRE_TYPES or not 0 <= timestamp <= MAX_TIMESTAMP:
        return False
    if len(line) < SHORTEST_TOO_DEEP:
        return True
    for value in values:
        if not flat(value):
            return not (may_be_too_deep(line) and nesting_depth(line) > MAX_NESTING)
    return True  # every value flat


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
            len(line) >= SHORTEST_TOO_DEEP
            and not shallow(obj, payload)
            and may_be_too_deep(line)
            and nesting_depth(line) > MAX_NESTING
        ):
            raise WireError(f"JSON nested deeper than {MAX_NESTING} levels")
        return RelayMessage(msg_id, msg_type, from_peer, timestamp, payload)
    return _refuse(line, obj)


def _refuse(line: bytes, obj: Any) -> RelayMessage:
    """
    Raise the L{WireError} that says why a parsed line is not a message: too
    deep, or the first field that is missing or wrong.
    """
    if too_deep(line):
        raise WireError(f"JSON nested deeper than {MAX_NESTING} levels")
    return message_from_object(obj)


def decode_many(
    lines: Sequence[bytes | memoryview],
    start: int,
    types: frozenset[str],
    sender: str,
    counts: dict[str, list[int]],
) -> tuple[list[RelayMessage], int, int]:
    """
    Decode C{lines[start:]} (bytes, or views of them) as long as each is a
    plain message (the five fields) of one of C{types} from C{sender} that
    L{decode} would take: the bulk of a connected peer's traffic, a chunk at
    a time.

    @param counts: Per message type, a list whose first two items are the
        messages and bytes (with the newline) received; each message
        decoded is added to its type's.
    @return: The messages, the index of the first line not decoded (the
        caller reads it the way that says what it is, or why it is
        refused) or C{len(lines)}, and the bytes of the lines decoded.
    """
    decode_message = _decode_message or _decode_checked
    messages: list[RelayMessage] = []
    append = messages.append
    size = 0
    tallied: str | None = None
    tally: list[int]  # the counts of type tallied, set with it
    # Written for speed: each line decoded becomes one message, so the
    # index of a line not decoded is start + len(messages).
    for line in lines[start:] if start else lines:
        try:
            message = decode_message(line)
        except (ValueError, RecursionError):
            break
        msg_type = message.msg_type
        length = len(line) + 1
        if (
            msg_type not in types
            or message.from_peer != sender
            or not 0 <= message.timestamp <= MAX_TIMESTAMP
            or (
                length > SHORTEST_TOO_DEEP
                and not flat(message.payload)
                and may_be_too_deep(bytes(line))
            )
        ):
            break
        append(message)
        size += length
        if msg_type != tallied:  # a run of one type looks it up once
            found = counts.get(msg_type)
            if found is None:
                found = counts[msg_type] = [0, 0, 0, 0]
            tally = found
            tallied = msg_type
        tally[0] += 1
        tally[1] += length
    return messages, start + len(messages), size


#: The top-level fields besides the five that relaymesh nodes read in each
#: other's messages: a routed message's C{route} header and C{sealed} box
#: (L{relaymesh.routing.table}), the C{routes} a heartbeat advertises
#: (L{relaymesh.routing.router}), and the C{reliable} mark
#: (L{relaymesh.reliable.fields}). msgspec decodes a line with these fields
#: in one step; a line with any other goes the way that reads every field.
EXTENSION_FIELDS = ("route", "sealed", "routes", "reliable")

#: The protocol's own fields.
_FIVE = frozenset(("id", "msg_type", "from_peer", "timestamp", "payload"))


def _envelope_type() -> type:
    """
    The msgspec type of a message with L{EXTENSION_FIELDS}: the five fields,
    then each extension field, left unset when absent.
    """
    assert _msgspec is not None
    envelope: type = _msgspec.defstruct(
        "_Envelope",
        [(name, kind) for name, kind in RelayMessage.__annotations__.items()]
        + [(name, Any, _msgspec.UNSET) for name in EXTENSION_FIELDS],
        forbid_unknown_fields=True,
    )
    return envelope


def decode_fields(line: bytes) -> tuple[RelayMessage, dict[str, Any]]:
    """
    Parse one line (without its C{\\n}) into a L{RelayMessage} and its
    top-level fields besides the five of the protocol (the extension fields
    a message between relaymesh nodes may carry, see L{EXTENSION_FIELDS}).

    @raise WireError: if claudectl would not accept the line.
    """
    if len(line) > MAX_LINE_BYTES:
        raise _line_too_long(line)
    # Plain messages from a connected peer take the bulk path (decode_many);
    # the lines that come here mostly carry extension fields.
    if _decode_envelope is not None:
        taken = _extended(line)
        if taken is not None:
            return taken
    obj = _parsed(line)
    message = _checked(line, obj)
    return message, {name: value for name, value in obj.items() if name not in _FIVE}


def _extended(line: bytes) -> tuple[RelayMessage, dict[str, Any]] | None:
    """
    A line with L{EXTENSION_FIELDS} decoded by msgspec in one step, or
    C{None} if it is not one (refused, or with other fields).
    """
    assert _msgspec is not None and _decode_envelope is not None
    try:
        values = _msgspec.structs.astuple(_decode_envelope(line))
    except (ValueError, RecursionError):
        return None
    message = RelayMessage(*values[:5])
    fields = {}
    for name, value in zip(EXTENSION_FIELDS, values[5:]):
        if value is not _UNSET:
            fields[name] = value
    if not _taken(line, message, message.payload, *fields.values()):
        return None
    return message, fields


_UNSET = _msgspec.UNSET if _msgspec is not None else object()


def encode(message: RelayMessage) -> bytes:
    """
    Serialize a message as one line, without the C{\\n}.

    @raise WireError: if the payload is not JSON or the line would be longer
        than L{MAX_LINE_BYTES}.
    """
    try:
        line = _encode_message(message)
    except (TypeError, ValueError) as e:
        raise WireError(f"not serializable as JSON: {e}") from None
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


#: The codec in use: C{"msgspec"}, C{"orjson"} or C{"json"}.
CODEC = _pick_codec(os.environ.get("RELAYMESH_CODEC"))
_functions = _codec_functions(CODEC)
_loads: Callable[[bytes], Any] = _functions["_loads"]
_dumps: Callable[[Any], bytes] = _functions["_dumps"]
_decode_message: Callable[[bytes | memoryview], RelayMessage] | None = _functions["_decode_message"]
_decode_envelope: Callable[[bytes], Any] | None = _functions["_decode_envelope"]
_encode_message: Callable[[RelayMessage], bytes] = _functions["_encode_message"]
del _functions
