"""
API requests and answers: the JSON answer and error format, the request
body checks, and the one table mapping the mesh's exceptions to statuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.web import http
from twisted.web.server import Request

from relaymesh.address import InvalidAddress
from relaymesh.errors import PeerNotConnected, UnknownPeer, UnsupportedMessageType
from relaymesh.peerid import InvalidPeerId
from relaymesh.wire import WireError, loads

#: The largest request body taken, in bytes.
MAX_BODY = 1024 * 1024

#: Connections the API serves at once; more are closed as soon as they are
#: accepted.
MAX_CONNECTIONS = 64

#: Seconds a client has to send a whole request (line, headers and body),
#: from when its connection opened or its previous answer was written.
REQUEST_DEADLINE = 10.0


class ApiError(Exception):
    """
    A request the API refuses: an HTTP status and a one-line reason.

    @ivar status: The HTTP status.
    @ivar message: The reason, the C{error} of the JSON answer.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.message = message


#: The one place mapping the mesh's (and the parsers') exceptions to statuses.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownPeer, http.NOT_FOUND),
    (PeerNotConnected, http.CONFLICT),
    (UnsupportedMessageType, http.BAD_REQUEST),
    (WireError, http.BAD_REQUEST),
    (InvalidAddress, http.BAD_REQUEST),
    (InvalidPeerId, http.BAD_REQUEST),
)


def as_api_error(error: Exception) -> ApiError | None:
    """
    The L{ApiError} an exception of the mesh stands for, or C{None}.
    """
    if isinstance(error, ApiError):
        return error
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return ApiError(status, " ".join(str(error).split()) or kind.__name__)
    return None


class ApiRequest(Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body, notes when
    there was more, and then has its channel answer 413 at once if the
    channel can (L{relaymesh.control.site.ApiChannel.refuse}).

    @ivar body_too_large: Whether the body was over L{MAX_BODY} bytes.
    """

    body_too_large = False
    _body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._body_received <= MAX_BODY:
            Request.handleContentChunk(self, data)
        elif not self.body_too_large:
            self.body_too_large = True
            refuse = getattr(self.channel, "refuse", None)
            if refuse is not None:
                refuse(http.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")


def dumps(value: object) -> bytes:
    """
    A JSON value as compact UTF-8 bytes.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_json(request: Request, value: object, status: int = http.OK) -> bytes:
    """
    Set the status and headers of a JSON answer; return its body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return dumps(value) + b"\n"


def write_error(request: Request, error: ApiError) -> bytes:
    """
    Set up a JSON error answer; return its body.
    """
    if error.status == http.UNAUTHORIZED:
        request.setHeader(b"www-authenticate", b'Bearer realm="relaymesh"')
    return write_json(request, {"error": error.message}, error.status)


class Field:
    """
    One field of a JSON request body.

    @ivar name: Its name.
    @ivar kinds: The Python types it may have (C{object} for any JSON value).
    @ivar what: How to name those types in an error.
    @ivar required: Whether it must be present.
    @ivar default: Its value when absent.
    """

    def __init__(
        self,
        name: str,
        kinds: tuple[type, ...],
        what: str,
        required: bool = True,
        default: object = None,
    ) -> None:
        self.name = name
        self.kinds = kinds
        self.what = what
        self.required = required
        self.default = default

    def accepts(self, value: object) -> bool:
        """
        Whether C{value} has one of the field's types (C{True} is no number).
        """
        if object in self.kinds:
            return True
        if isinstance(value, bool):
            return bool in self.kinds
        return isinstance(value, self.kinds)


def read_body(request: Request, fields: Iterable[Field]) -> dict[str, Any]:
    """
    The request's JSON object, checked against C{fields}.

    @param request: An L{ApiRequest} (any other request is read whole).
    @return: Each field's value (its default when absent), by name.
    @raise ApiError: 413 for a body over L{MAX_BODY} bytes; 400 for one that
        is not a JSON object, with an unknown or missing field, or with a
        field of the wrong type, naming the field.
    """
    length = request.getHeader(b"content-length")
    too_large = isinstance(request, ApiRequest) and request.body_too_large
    if too_large or (length is not None and length.isdigit() and int(length) > MAX_BODY):
        raise ApiError(http.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(http.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        raise ApiError(http.BAD_REQUEST, "malformed JSON: the request body is empty")
    try:
        value = loads(raw)
    except WireError as e:
        raise ApiError(http.BAD_REQUEST, f"malformed JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(http.BAD_REQUEST, "malformed JSON: the body must be a JSON object")
    fields = list(fields)
    known = {f.name for f in fields}
    for name in value:
        if name not in known:
            raise ApiError(http.BAD_REQUEST, f"unknown field {name!r}")
    checked = {}
    for field in fields:
        if field.name not in value:
            if field.required:
                raise ApiError(http.BAD_REQUEST, f"missing field {field.name!r}")
            checked[field.name] = field.default
            continue
        item = value[field.name]
        if not field.accepts(item):
            raise ApiError(http.BAD_REQUEST, f"field {field.name!r} must be {field.what}")
        checked[field.name] = item
    return checked
