"""
The control plane: a local HTTP API, the mesh dashboard and the metrics.

L{ApiService} serves, on its own endpoint (loopback by default)::

    GET    /                    the dashboard (a static page; no token needed)
    GET    /api/status          identity, version, addresses, uptime, counts
    GET    /api/peers           every known peer with its state, traffic and route
                                (via: the neighbour it is reached through, hops)
    POST   /api/peers           {"addr": "peer_id@host:port"}: dial a peer
    GET    /api/peers/PEER_ID   one peer
    DELETE /api/peers/PEER_ID   disconnect a peer and stop dialling it
    POST   /api/send            {"to", "msg_type", "payload", "reliable"}
    POST   /api/broadcast       {"msg_type", "payload"}
    GET    /api/events          Server-Sent Events: messages and peer events
    PUT    /api/sessions        {"sessions": [...], "worker_id": ...}
    GET    /api/workers         every peer's latest session list
    GET    /metrics             Prometheus text format

Every C{/api} request needs C{Authorization: Bearer TOKEN}; the token is
kept in a file (C{DATA_DIR/api-token}, mode 0600, made on first start).
C{/api/events} also takes the token from a cookie whose name starts with
C{relaymesh_token}, because a browser's C{EventSource} cannot send headers;
no other resource does, so a cookie alone cannot make a node do anything.
Every answer is JSON, and every error is C{{"error": "one line"}}.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
from importlib import resources
from typing import Any, Callable, Iterable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from relaymesh._version import __version__
from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address
from relaymesh.keystore import KeyStoreError, write_atomically
from relaymesh.errors import PeerNotConnected, UnknownPeer, UnsupportedMessageType
from relaymesh.events import PeerEvent, PeerState
CONNECTED = PeerState.CONNECTED
from relaymesh.control.metrics import NodeMetrics, RoundTrips
from relaymesh.peerid import InvalidPeerId, is_valid_peer_id
from relaymesh.address import format_address
from relaymesh.listener import ListenerService
from relaymesh.wire import RelayMessage, WireError, loads

#: The token file's name in the data directory.
TOKEN_FILE = "api-token"

#: The file in the data directory where a running node writes its API's URL,
#: so that the command line finds the node of a data directory.
URL_FILE = "api-url"

#: The largest request body taken, in bytes.
MAX_BODY = 1024 * 1024

#: Seconds between keepalive comments on an event stream.
KEEPALIVE_INTERVAL = 15.0

#: Bytes an event stream may have waiting beyond the socket's own buffer
#: before the client is dropped as too slow (a relay message may be 1 MiB).
MAX_STREAM_BACKLOG = 4 * 1024 * 1024

#: The name of the cookie (or its prefix) that may carry the token to
#: /api/events.
TOKEN_COOKIE = b"relaymesh_token"

#: The event types of /api/events.
EVENT_TYPES = (
    "message",
    "peer_connecting",
    "peer_connected",
    "peer_disconnected",
    "peer_denied",
    "peer_reconnect_scheduled",
)


class ApiError(Exception):
    """
    A request the API refuses: an HTTP status and a one-line reason.
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
    The L{ApiError} an exception of the mesh stands for, or L{None}.
    """
    if isinstance(error, ApiError):
        return error
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return ApiError(status, " ".join(str(error).split()) or kind.__name__)
    return None


# -- the token ---------------------------------------------------------------


def token_path(data_dir: str) -> str:
    """
    The default token file of a data directory.
    """
    return os.path.join(data_dir, TOKEN_FILE)


def load_token(path: str, create: bool = True) -> str:
    """
    Read the API token, making a new one (mode 0600) if there is none.

    @raise KeyStoreError: if the file is empty.
    @raise OSError: if it cannot be read or written.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("ascii", "replace").strip()
    except FileNotFoundError:
        if not create:
            raise
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        token = secrets.token_urlsafe(32)
        write_atomically(path, token.encode("ascii") + b"\n")
        return token
    if not text:
        raise KeyStoreError(f"API token file {path} is empty; delete it to make a new token")
    return text


def _token_is_private(path: str) -> bool:
    try:
        return not stat.S_IMODE(os.stat(path).st_mode) & 0o077
    except OSError:
        return True


# -- requests and answers ----------------------------------------------------


class ApiRequest(Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body, and notes
    when there was more.
    """

    body_too_large = False
    _body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._body_received > MAX_BODY:
            self.body_too_large = True
        else:
            Request.handleContentChunk(self, data)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_json(request: Request, value: Any, status: int = http.OK) -> bytes:
    """
    Set the status and headers of a JSON answer; return its body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return _dumps(value) + b"\n"


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
        self, name: str, kinds: tuple[type, ...], what: str, required: bool = True, default: Any = None
    ) -> None:
        self.name = name
        self.kinds = kinds
        self.what = what
        self.required = required
        self.default = default

    def accepts(self, value: Any) -> bool:
        """
        Whether C{value} has one of the field's types (C{True} is no number).
        """
        if object in self.kinds:
            return True
        if isinstance(value, bool):
            return bool in self.kinds
        return isinstance(value, self.kinds)


def read_body(request: ApiRequest, fields: Iterable[Field]) -> dict[str, Any]:
    """
    The request's JSON object, checked against C{fields}.

    @raise ApiError: 413 for a body over L{MAX_BODY} bytes; 400 for one that
        is not a JSON object, with an unknown or missing field, or with a
        field of the wrong type, naming the field.
    """
    length = request.getHeader(b"content-length")
    if getattr(request, "body_too_large", False) or (
        length is not None and length.isdigit() and int(length) > MAX_BODY
    ):
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


def _time(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# -- what the API serves -----------------------------------------------------


class ControlPlane:
    """
    What the API serves, in one place: the node, its token, its clock, its
    metrics and the open event streams.

    @ivar node: The L{relaymesh.service.RelayService} (or anything with its
        C{mesh}, C{keystore}, C{add_peer}, C{remove_peer}, C{outbound}).
    @ivar mesh: The node's mesh.
    @ivar token: The API token, or L{None} until it is loaded.
    @ivar metrics_public: Whether /metrics is served without the token.
    @ivar round_trips: The node's L{RoundTrips}.
    @ivar metrics: The node's L{NodeMetrics}.
    @ivar streams: The open L{EventStream}s.
    @ivar api_address: Where the API listens (C{host:port}), once it does.
    """

    log = Logger()

    def __init__(
        self,
        node: Any,
        clock: IReactorTime,
        token: str | None = None,
        metrics_public: bool = False,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_stream_backlog: int = MAX_STREAM_BACKLOG,
    ) -> None:
        self.node = node
        self.mesh = node.mesh
        self.clock = clock
        self.token = token
        self.metrics_public = metrics_public
        self.keepalive_interval = keepalive_interval
        self.max_stream_backlog = max_stream_backlog
        self.started_at = clock.seconds()
        self.round_trips = RoundTrips(self.mesh, clock)
        self.metrics = NodeMetrics(self.mesh, clock, self.round_trips, self.started_at)
        self.streams: set[EventStream] = set()
        self.api_address: str | None = None

    # -- authorization -------------------------------------------------------

    def authorize(self, request: Request, allow_cookie: bool = False) -> None:
        """
        Check the request's bearer token (or, if allowed, its token cookie).

        @raise ApiError: 401 if the token is missing or wrong.
        """
        token = self.token
        header = request.getHeader(b"authorization") or b""
        scheme, _, credentials = header.partition(b" ")
        offered: list[bytes] = []
        if scheme.lower() == b"bearer":
            offered.append(credentials.strip())
        elif allow_cookie:
            offered = [v for k, v in request.received_cookies.items() if k.startswith(TOKEN_COOKIE)]
        if token is not None:
            expected = token.encode("ascii")
            if any(hmac.compare_digest(candidate, expected) for candidate in offered):
                return
        raise ApiError(
            http.UNAUTHORIZED,
            "missing or wrong API token: send 'Authorization: Bearer TOKEN' "
            "with the token from the node's api-token file",
        )

    # -- views ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        The node at a glance.
        """
        mesh = self.mesh
        now = self.clock.seconds()
        peers = self.peer_list()
        listener = getattr(self.node, "listener", None)
        port = getattr(listener, "port", None)
        return {
            "identity": mesh.identity,
            "version": __version__,
            "listen": None if port is None else format_address(port.getHost()),
            "api": self.api_address,
            "started_at": _time(self.started_at),
            "uptime": round(now - self.started_at, 3),
            "peers": {
                "known": len(peers),
                "connected": sum(1 for p in peers if p["state"] == CONNECTED),
                "dialled": len(self.node.outbound()),
            },
            "workers": len(mesh.sessions()),
            "event_streams": len(self.streams),
            "heartbeat_interval": mesh.heartbeat_interval,
            "max_peers": mesh.max_peers,
        }

    def _paired(self) -> list[str]:
        try:
            return self.node.keystore.peers()
        except (KeyStoreError, OSError) as e:
            self.log.warn("cannot list the paired peers: {error}", error=e)
            return []

    def _dialled(self) -> dict[str, PeerAddress]:
        return {
            o.factory.peer_id: o.target
            for o in self.node.outbound()
            if o.factory.peer_id is not None
        }

    def peer_list(self) -> list[dict[str, Any]]:
        """
        Every known peer: connected or seen by the mesh, paired, or dialled.
        """
        paired = set(self._paired())
        dialled = self._dialled()
        views = {p.peer_id: self._view(p.to_dict(), paired, dialled) for p in self.mesh.peers()}
        for peer_id in (paired | set(dialled)) - set(views):
            views[peer_id] = self._unseen(peer_id, paired, dialled)
        return [views[k] for k in sorted(views)]

    def peer_view(self, peer_id: str) -> dict[str, Any]:
        """
        One known peer.

        @raise UnknownPeer: if no peer has that id.
        """
        for view in self.peer_list():
            if view["peer_id"] == peer_id:
                return view
        raise UnknownPeer(f"unknown peer {peer_id!r}")

    def _view(self, status: dict, paired: set, dialled: dict) -> dict[str, Any]:
        peer_id = status["peer_id"]
        connected = status["state"] == CONNECTED
        return {
            "peer_id": peer_id,
            "state": status["state"],
            "address": status["address"],
            "direction": status["direction"],
            "connected_since": _time(status["since"]) if connected else None,
            "state_since": _time(status["since"]),
            "last_seen": _time(status["last_seen"]),
            "rtt_ms": self.round_trips.rtt_ms(peer_id),
            "msgs_in": status["msgs_in"],
            "msgs_out": status["msgs_out"],
            "bytes_in": status["bytes_in"],
            "bytes_out": status["bytes_out"],
            "reconnect_attempt": status["reconnect_attempt"],
            "next_retry_at": _time(status["next_retry_at"]),
            "paired": peer_id in paired,
            "dialled": peer_id in dialled,
            "via": status["via"],
            "hops": status["hops"],
        }

    def _unseen(self, peer_id: str, paired: set, dialled: dict) -> dict[str, Any]:
        meta: dict = {}
        if peer_id in paired:
            try:
                meta = self.node.keystore.meta(peer_id)
            except (KeyStoreError, OSError, ValueError):
                meta = {}
        address = meta.get("addr") if isinstance(meta.get("addr"), str) else None
        if peer_id in dialled:
            address = dialled[peer_id].hostport
        last_seen = meta.get("last_seen")
        if isinstance(last_seen, bool) or not isinstance(last_seen, int):
            last_seen = None
        return self._view(
            {
                "peer_id": peer_id,
                "state": "disconnected",
                "address": address,
                "direction": "outbound" if peer_id in dialled else None,
                "since": None,
                "last_seen": None if last_seen is None else last_seen / 1000,
                "msgs_in": 0,
                "msgs_out": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "reconnect_attempt": 0,
                "next_retry_at": None,
                "via": None,
                "hops": None,
            },
            paired,
            dialled,
        )

    def workers(self) -> list[dict[str, Any]]:
        """
        Every peer's latest unexpired session list, with its age in seconds.
        """
        return [
            {
                "peer_id": s.peer_id,
                "worker_id": s.worker_id,
                "sessions": s.sessions,
                "age": round(s.age, 3),
            }
            for _, s in sorted(self.mesh.sessions().items())
        ]

    # -- actions -------------------------------------------------------------

    def connect(self, text: str) -> dict[str, Any]:
        """
        Start dialling a peer address.

        @raise InvalidAddress: if it does not parse.
        @raise ApiError: 400 if no key could authenticate to it.
        """
        address = parse_peer_address(text)
        if not self._has_key_for(address):
            who = address.peer_id or address.hostport
            raise ApiError(
                http.BAD_REQUEST,
                f"field 'addr': no key for {who} and no pending pairing key; pair first "
                "(relaymesh pair / relaymesh accept)",
            )
        known = any(o.target == address for o in self.node.outbound())
        self.node.add_peer(address)
        return {"addr": str(address), "peer_id": address.peer_id, "already_dialled": known}

    def _has_key_for(self, address: PeerAddress) -> bool:
        keystore = self.node.keystore
        try:
            if keystore.pending_key() is not None:
                return True
            if address.peer_id is not None:
                return keystore.key(address.peer_id) is not None
            return bool(keystore.peers())
        except (KeyStoreError, OSError) as e:
            raise ApiError(http.INTERNAL_SERVER_ERROR, f"cannot read the key store: {e}") from None

    def disconnect(self, peer_id: str) -> dict[str, Any]:
        """
        Close a peer's connection and stop dialling it.

        @raise UnknownPeer: if no peer has that id.
        """
        self.peer_view(peer_id)  # raises UnknownPeer
        was_connected = self.mesh.is_connected(peer_id)
        was_dialled = peer_id in self._dialled()
        self.node.remove_peer(peer_id)
        return {"peer_id": peer_id, "was_connected": was_connected, "stopped_dialling": was_dialled}

    def close_streams(self) -> None:
        """
        End every open event stream (the node is stopping).
        """
        for stream in list(self.streams):
            stream.close()


# -- resources ---------------------------------------------------------------


class ApiResource(Resource):
    """
    One API resource: checks the token, dispatches on the method to
    C{do_GET}, C{do_POST}, ... and answers JSON.

    A handler returns the JSON value to answer with 200, a C{(status,
    value)} pair, or C{NOT_DONE_YET}; it raises L{ApiError} or a mesh
    exception (see L{ERROR_STATUS}) to refuse.

    @cvar public: Whether it needs no token.
    @cvar cookie_auth: Whether the token may come in a cookie.
    """

    isLeaf = True
    public = False
    cookie_auth = False
    log = Logger()

    def __init__(self, control: ControlPlane) -> None:
        Resource.__init__(self)
        self.control = control

    def _methods(self) -> list[str]:
        return sorted(name[3:] for name in dir(self) if name.startswith("do_"))

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "do_" + ("GET" if method == "HEAD" else method), None)
        try:
            if not self.public:
                self.control.authorize(request, allow_cookie=self.cookie_auth)
            if request.postpath not in ([], [b""]):
                raise ApiError(http.NOT_FOUND, f"no such resource: {request.path.decode('ascii', 'replace')}")
            if handler is None:
                request.setHeader(b"allow", ", ".join(self._methods()).encode("ascii"))
                raise ApiError(http.NOT_ALLOWED, f"method {method} not allowed here")
            result = handler(request)
        except Exception as e:
            error = as_api_error(e)
            if error is None:
                self.log.failure("{method} {path} failed", method=method, path=request.path)
                error = ApiError(http.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
            return write_error(request, error)
        if result is NOT_DONE_YET:
            return result
        status, value = result if isinstance(result, tuple) else (http.OK, result)
        return write_json(request, value, status)


class NotFound(ApiResource):
    """
    Any path the API does not have: 404 (401 first without the token).
    """

    def render(self, request: Request) -> bytes:
        try:
            self.control.authorize(request)
        except ApiError as e:
            return write_error(request, e)
        path = request.path.decode("ascii", "replace")
        return write_error(request, ApiError(http.NOT_FOUND, f"no such resource: {path}"))


class Status(ApiResource):
    def do_GET(self, request: Request) -> dict:
        return self.control.status()


class Peers(ApiResource):
    """
    The peer list; dial a new peer; C{/api/peers/PEER_ID} is L{Peer}.
    """

    isLeaf = False

    def getChild(self, name: bytes, request: Request) -> Resource:
        if name == b"":
            return self
        return Peer(self.control, name.decode("ascii", "replace"))

    def do_GET(self, request: Request) -> dict:
        return {"peers": self.control.peer_list()}

    def do_POST(self, request: ApiRequest) -> tuple[int, dict]:
        body = read_body(request, [Field("addr", (str,), "a string: peer_id@host:port")])
        return http.ACCEPTED, self.control.connect(body["addr"])


class Peer(ApiResource):
    """
    One peer: look at it, or disconnect it.
    """

    def __init__(self, control: ControlPlane, peer_id: str) -> None:
        ApiResource.__init__(self, control)
        self.peer_id = peer_id

    def _known_id(self) -> str:
        if not is_valid_peer_id(self.peer_id):
            raise UnknownPeer(f"unknown peer {self.peer_id[:130]!r}")
        return self.peer_id

    def do_GET(self, request: Request) -> dict:
        return self.control.peer_view(self._known_id())

    def do_DELETE(self, request: Request) -> dict:
        return self.control.disconnect(self._known_id())


_PAYLOAD = Field("payload", (object,), "a JSON value", required=False, default={})
_MSG_TYPE = Field("msg_type", (str,), "a string: a relay message type")


_RELIABLE = Field("reliable", (bool,), "true or false", required=False, default=False)


class Send(ApiResource):
    """
    Send one message; with C{"reliable": true} (to a peer that announced
    C{ack/1}) the answer comes once the message is in the durable outbox,
    or is a 503 if the outbox cannot take it.
    """

    def do_POST(self, request: ApiRequest) -> dict | int:
        body = read_body(
            request, [Field("to", (str,), "a string: a peer id"), _MSG_TYPE, _PAYLOAD, _RELIABLE]
        )
        to = body["to"]
        if not body["reliable"]:
            message_id = self.control.mesh.send(to, body["msg_type"], body["payload"])
            return {"id": message_id, "to": to}
        delivery = self.control.mesh.send_reliable(to, body["msg_type"], body["payload"])
        finished: list[bool] = []
        request.notifyFinish().addBoth(finished.append)

        def answer(data: bytes) -> None:
            if not finished:
                request.write(data)
                request.finish()

        def accepted(message_id: str) -> None:
            answer(write_json(request, {"id": message_id, "to": to, "reliable": True}))

        def refused(failure: Failure) -> None:
            error = ApiError(
                http.SERVICE_UNAVAILABLE,
                f"the outbox did not take the message: {failure.getErrorMessage()}",
            )
            answer(write_error(request, error))

        delivery.accepted().addCallbacks(accepted, refused)
        return NOT_DONE_YET


class Broadcast(ApiResource):
    def do_POST(self, request: ApiRequest) -> dict:
        body = read_body(request, [_MSG_TYPE, _PAYLOAD])
        sent = self.control.mesh.broadcast(body["msg_type"], body["payload"])
        ids = set(sent.values())
        return {"id": ids.pop() if ids else None, "ids": sent}


class Sessions(ApiResource):
    def do_PUT(self, request: ApiRequest) -> dict:
        body = read_body(
            request,
            [
                Field("sessions", (list, type(None)), "an array of sessions, or null"),
                Field("worker_id", (str, type(None)), "a string", required=False),
            ],
        )
        sessions, worker_id = body["sessions"], body["worker_id"]
        self.control.mesh.set_sessions(sessions, worker_id)
        return {"sessions": None if sessions is None else len(sessions), "worker_id": worker_id}


class Workers(ApiResource):
    def do_GET(self, request: Request) -> dict:
        return {"workers": self.control.workers()}


class Events(ApiResource):
    """
    The event stream; the token may also come in a cookie (see the module).
    """

    cookie_auth = True

    def do_GET(self, request: Request) -> int:
        wanted = parse_event_types(request.args.get(b"types", []))
        stream = EventStream(
            request,
            self.control.mesh,
            self.control.clock,
            wanted,
            self.control.keepalive_interval,
            self.control.max_stream_backlog,
        )
        self.control.streams.add(stream)
        stream.finished.addBoth(lambda _: self.control.streams.discard(stream))
        stream.start()
        return NOT_DONE_YET


def parse_event_types(values: list[bytes]) -> frozenset[str] | None:
    """
    The event types a C{?types=a,b} filter asks for (L{None}: all).

    C{connected} is short for C{peer_connected}, and so on.

    @raise ApiError: 400 naming an unknown type.
    """
    names = [n.strip() for v in values for n in v.decode("utf-8", "replace").split(",") if n.strip()]
    if not names:
        return None
    wanted = set()
    for name in names:
        full = name if name in EVENT_TYPES else "peer_" + name
        if full not in EVENT_TYPES:
            raise ApiError(
                http.BAD_REQUEST,
                f"unknown event type {name[:40]!r} in types: want some of {', '.join(EVENT_TYPES)}",
            )
        wanted.add(full)
    return frozenset(wanted)


def event_object(event: PeerEvent, now: float) -> dict[str, Any]:
    """
    A peer event as the JSON object /api/events sends.
    """
    fields = event.to_dict()
    fields.pop("kind")
    return {"event": "peer_" + event.kind, **fields, "time": round(now, 3)}


def message_object(peer_id: str, message: RelayMessage, now: float) -> dict[str, Any]:
    """
    A received message as the JSON object /api/events sends.
    """
    return {"event": "message", "from": peer_id, "message": message.to_dict(), "time": round(now, 3)}


@implementer(IPushProducer)
class EventStream:
    """
    One client of /api/events: every event as a C{data:} line, a comment
    every L{KEEPALIVE_INTERVAL} seconds, and a hang-up for a client that
    falls L{MAX_STREAM_BACKLOG} bytes behind.

    It registers as the request's streaming producer: the connection pauses
    it when the socket's buffer is full, and what is written while paused
    counts toward the backlog.

    @ivar finished: Fires when the stream ends, whoever ended it.
    @ivar dropped: Why the node hung up, if it did.
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        mesh: Any,
        clock: IReactorTime,
        wanted: frozenset[str] | None = None,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_backlog: int = MAX_STREAM_BACKLOG,
    ) -> None:
        self.request = request
        self.mesh = mesh
        self.clock = clock
        self.wanted = wanted
        self.max_backlog = max_backlog
        self.paused = False
        self.backlog = 0
        self.dropped: str | None = None
        self._done = False
        self._subscriptions: list = []
        self._keepalive = LoopingCall(self._write, b": keepalive\n\n")
        self._keepalive.clock = clock
        self._interval = keepalive_interval
        self.finished = request.notifyFinish()
        self.finished.addBoth(self._ended)

    def start(self) -> None:
        """
        Send the headers and start following the mesh.
        """
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        self._write(b"retry: 2000\n: relaymesh events\n\n")
        if self._wants_messages():
            self._subscriptions.append(self.mesh.subscribe(self._message))
        if self.wanted is None or self.wanted - {"message"}:
            self._subscriptions.append(self.mesh.watch_peers(self._peer))
        self._keepalive.start(self._interval, now=False)

    def _wants_messages(self) -> bool:
        return self.wanted is None or "message" in self.wanted

    def _message(self, peer_id: str, message: RelayMessage) -> None:
        self.send(message_object(peer_id, message, self.clock.seconds()))

    def _peer(self, event: PeerEvent) -> None:
        if self.wanted is None or "peer_" + event.kind in self.wanted:
            self.send(event_object(event, self.clock.seconds()))

    def send(self, value: dict[str, Any]) -> None:
        """
        Send one event.
        """
        self._write(b"data: " + _dumps(value) + b"\n\n")

    def _write(self, data: bytes) -> None:
        if self._done:
            return
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.max_backlog:
                self.drop(f"client more than {self.max_backlog} bytes behind")
                return
        self.request.write(data)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self._stop()

    # -- ending --------------------------------------------------------------

    def drop(self, reason: str) -> None:
        """
        Hang up at once, discarding what is buffered.
        """
        if self._done:
            return
        self.dropped = reason
        self.log.info("dropping an event stream client: {reason}", reason=reason)
        self._stop()
        transport = getattr(self.request, "transport", None) or getattr(
            getattr(self.request, "channel", None), "transport", None
        )
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self.request.loseConnection()

    def close(self) -> None:
        """
        End the stream cleanly.
        """
        if self._done:
            return
        self._stop()
        self.request.unregisterProducer()
        self.request.finish()

    def _stop(self) -> None:
        self._done = True
        for subscription in self._subscriptions:
            subscription.cancel()
        del self._subscriptions[:]
        if self._keepalive.running:
            self._keepalive.stop()

    def _ended(self, result: Any) -> None:
        self._stop()
        return None


class Dashboard(Resource):
    """
    The dashboard page: static, so it needs no token; the data it shows
    does. Its policy lets it load nothing from outside the node.
    """

    isLeaf = True
    POLICY = (
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"
    )

    def __init__(self) -> None:
        Resource.__init__(self)
        self.page = resources.files("relaymesh.control").joinpath("dashboard.html").read_bytes()

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return write_error(request, ApiError(http.NOT_FOUND, "no such resource"))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        return self.page

    render_HEAD = render_GET


class Metrics(Resource):
    """
    C{/metrics}: the node's registry in the Prometheus text format, through
    the C{prometheus_client} Twisted resource; the token is needed unless the
    metrics are public.
    """

    isLeaf = True

    def __init__(self, control: ControlPlane, exposition: Callable[[], Resource] | None = None) -> None:
        Resource.__init__(self)
        self.control = control
        self._make_exposition = exposition or self._prometheus_resource
        self._exposition: Resource | None = None

    def _prometheus_resource(self) -> Resource:
        # Imported late: it reads the global reactor, which twistd installs
        # only after the plugin is loaded.
        from prometheus_client.twisted import MetricsResource

        return MetricsResource(registry=self.control.metrics.registry)

    def render(self, request: Request) -> bytes | int:
        try:
            if not self.control.metrics_public:
                self.control.authorize(request)
            if request.method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                raise ApiError(http.NOT_ALLOWED, "method not allowed here")
        except ApiError as e:
            return write_error(request, e)
        self.control.metrics.refresh()
        if self._exposition is None:
            self._exposition = self._make_exposition()
        return self._exposition.render(request)


class Root(Resource):
    """
    C{/}: the dashboard, C{/api/...} and C{/metrics}.
    """

    def __init__(self, control: ControlPlane) -> None:
        Resource.__init__(self)
        self.control = control
        self.putChild(b"", Dashboard())
        self.putChild(b"metrics", Metrics(control))
        api = _Directory(control)
        for name, endpoint in [
            (b"status", Status),
            (b"peers", Peers),
            (b"send", Send),
            (b"broadcast", Broadcast),
            (b"events", Events),
            (b"sessions", Sessions),
            (b"workers", Workers),
        ]:
            api.putChild(name, endpoint(control))
        self.putChild(b"api", api)

    def getChild(self, name: bytes, request: Request) -> Resource:
        return NotFound(self.control)


class _Directory(Resource):
    """
    C{/api}: its children, and a JSON 404 for itself and anything else.
    """

    def __init__(self, control: ControlPlane) -> None:
        Resource.__init__(self)
        self.control = control

    def getChild(self, name: bytes, request: Request) -> Resource:
        return NotFound(self.control)

    def render(self, request: Request) -> bytes:
        return NotFound(self.control).render(request)


class ApiSite(Site):
    """
    The API's site: L{ApiRequest}s, no tracebacks shown, and no access log
    lines in the node's log.
    """

    requestFactory = ApiRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        pass


def make_site(control: ControlPlane) -> ApiSite:
    """
    The site serving the control plane.
    """
    return ApiSite(Root(control))


# -- the service ---------------------------------------------------------------


def api_url(address: Any) -> str | None:
    """
    The URL a client on this host reaches a listening address at, or
    L{None} for an address that is not TCP.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class ApiService(ListenerService):
    """
    Serves the control plane of a node on an endpoint.

    On start it loads (or makes) the token; once listening it writes the
    API's URL to the data directory's L{URL_FILE}, and removes it on stop.

    @ivar control: The L{ControlPlane}.
    @ivar token_file: Where the token is kept.
    @ivar fallback: Where to listen if the endpoint cannot, if anywhere.
    """

    log = Logger()

    def __init__(
        self,
        node: Any,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
        token_file: str | None = None,
        metrics_public: bool = False,
        fallback: IStreamServerEndpoint | None = None,
    ) -> None:
        """
        @param node: The L{relaymesh.service.RelayService}.
        @param endpoint: Where to listen.
        @param clock: The node's clock.
        @param token_file: The token file; C{DATA_DIR/api-token} if L{None}.
        @param metrics_public: Whether /metrics needs no token.
        @param fallback: Where to listen if C{endpoint} cannot (its port is
            taken, by another node on the host, say), or L{None} to fail.
        """
        self.fallback = fallback
        self.control = ControlPlane(node, clock, metrics_public=metrics_public)
        self.data_dir = node.keystore.path
        self.token_file = token_file or token_path(self.data_dir)
        self.url_file = os.path.join(self.data_dir, URL_FILE)
        self._url: str | None = None
        ListenerService.__init__(self, endpoint, make_site(self.control), node.mesh.identity)

    def startService(self) -> None:
        self.control.token = load_token(self.token_file)
        if not _token_is_private(self.token_file):
            self.log.warn(
                "API token file {path} is readable by other users; run: chmod 600 {path}",
                path=self.token_file,
            )
        try:
            ListenerService.startService(self)
        except CannotListenError as e:
            if self.fallback is None:
                raise
            self.log.warn(
                "cannot serve the control API where asked ({error}); using a free port instead",
                error=e,
            )
            self.endpoint, self.fallback = self.fallback, None
            ListenerService.startService(self)

    def _listening(self, port: Any) -> Any:
        self.port = port
        address = port.getHost()
        self.control.api_address = format_address(address)
        self.log.info(
            "control API, dashboard and metrics on {url}",
            url=api_url(address) or self.control.api_address,
        )
        self._url = api_url(address)
        if self._url is not None:
            try:
                write_atomically(self.url_file, self._url.encode("ascii") + b"\n")
            except OSError as e:
                self.log.warn("could not write {path}: {error}", path=self.url_file, error=e)
        self.listening.callback(port)
        return port

    def stopService(self) -> Any:
        self.control.close_streams()
        if self._url is not None:
            _remove_if_holds(self.url_file, self._url)
            self._url = None
        return ListenerService.stopService(self)


def _remove_if_holds(path: str, text: str) -> None:
    try:
        with open(path, "rb") as f:
            if f.read(4096).decode("ascii", "replace").strip() != text:
                return
        os.unlink(path)
    except OSError:
        pass
