"""
The API's C{twisted.web} resources (L{relaymesh.control.site} serves them).

Every C{/api} resource but C{/api/proof} and C{DELETE /api/cookie} checks the
token, and every one answers JSON (see L{relaymesh.control.api} for the
endpoints); C{/} is the dashboard page and C{/metrics} the Prometheus
exposition.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from relaymesh.addresses import CONNECT
from relaymesh.control.auth import COOKIE_PATH, cookie_name, cookie_value
from relaymesh.control.history import parse_history
from relaymesh.control.plane import ControlPlane
from relaymesh.control.proof import NONCE_BYTES, canonical_address, make_proof, parse_nonce
from relaymesh.control.requests import (
    ApiError,
    Field,
    as_api_error,
    read_body,
    write_error,
    write_json,
)
from relaymesh.control.sse import parse_event_types
from relaymesh.control.views import POST_SOURCES
from relaymesh.errors import UnknownPeer
from relaymesh.fleet import API_SOURCE
from relaymesh.peerid import is_valid_peer_id
from relaymesh.printable import printable


class ApiResource(Resource):
    """
    One API resource: checks the token, dispatches on the method to
    C{do_GET}, C{do_POST}, ... and answers JSON.

    A handler returns the JSON value to answer with 200, a C{(status,
    value)} pair, or C{NOT_DONE_YET}; it raises L{ApiError} or a mesh
    exception (see L{relaymesh.control.requests.ERROR_STATUS}) to refuse.

    @cvar public: Whether it needs no token.
    @cvar cookie_auth: Whether the token may come in a cookie.
    @ivar control: The L{ControlPlane} it serves.
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
        handler: Callable[[Request], object] | None = getattr(
            self, "do_" + ("GET" if method == "HEAD" else method), None
        )
        try:
            if not self.public:
                self.control.authorize(request, allow_cookie=self.cookie_auth)
            if request.postpath not in ([], [b""]):
                path = request.path.decode("ascii", "replace")
                raise ApiError(http.NOT_FOUND, f"no such resource: {path}")
            if handler is None:
                request.setHeader(b"allow", ", ".join(self._methods()).encode("ascii"))
                raise ApiError(http.NOT_ALLOWED, f"method {method} not allowed here")
            result = handler(request)
        except Exception as e:
            error = as_api_error(e)
            if error is None:
                self.log.failure(
                    "{method} {path} failed",
                    method=printable(method, 16),
                    path=printable(request.path.decode("latin-1")),
                )
                error = ApiError(http.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
            return write_error(request, error)
        if result is NOT_DONE_YET:
            return NOT_DONE_YET
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
    """
    C{/api/status}: the node at a glance.
    """

    def do_GET(self, request: Request) -> dict[str, Any]:
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

    def do_GET(self, request: Request) -> dict[str, Any]:
        return {"peers": self.control.views.peer_list()}

    def do_POST(self, request: Request) -> tuple[int, dict[str, Any]]:
        body = read_body(
            request,
            [
                Field("addr", (str,), "a string: peer_id@host:port"),
                Field("source", (str,), "'connect', 'join' or 'set-address'", required=False, default=CONNECT),
            ],
        )
        if body["source"] not in POST_SOURCES:
            raise ApiError(http.BAD_REQUEST, "field 'source': want 'connect', 'join' or 'set-address'")
        answer = self.control.views.connect(body["addr"], body["source"])
        return (http.OK if answer["already_connected"] else http.ACCEPTED), answer


class Peer(ApiResource):
    """
    One peer: look at it, or disconnect it (C{?forget=address} also
    forgets its remembered address, C{?forget=all} the whole peer; an
    address dialled without a peer id, C{host:port}, stops its dialler).

    @ivar peer_id: The peer id the path names (not checked yet).
    """

    def __init__(self, control: ControlPlane, peer_id: str) -> None:
        ApiResource.__init__(self, control)
        self.peer_id = peer_id

    def _known_id(self) -> str:
        if not is_valid_peer_id(self.peer_id):
            raise UnknownPeer(f"unknown peer {self.peer_id[:130]!r}")
        return self.peer_id

    def do_GET(self, request: Request) -> dict[str, Any]:
        return self.control.views.peer_view(self._known_id())

    def do_DELETE(self, request: Request) -> dict[str, Any]:
        forget = request.args.get(b"forget", [None])[-1]
        if forget is not None:
            forget = forget.decode("ascii", "replace")
        if is_valid_peer_id(self.peer_id):
            return self.control.views.disconnect(self.peer_id, forget)
        if forget is not None or len(self.peer_id) > 300:
            self._known_id()  # raises UnknownPeer
        return self.control.views.disconnect(self.peer_id)


_PAYLOAD = Field("payload", (object,), "a JSON value", required=False, default={})
_MSG_TYPE = Field("msg_type", (str,), "a string: a relay message type")
_RELIABLE = Field("reliable", (bool,), "true or false", required=False, default=False)


#: Seconds C{POST /api/send} may wait for a reliable message's ack at most.
MAX_SEND_WAIT = 30.0

_WAIT = Field("wait", (int, float), f"a number of seconds from 0 to {MAX_SEND_WAIT:g}", required=False, default=0)


class Send(ApiResource):
    """
    Send one message; with C{"reliable": true} (to a peer that announced
    C{ack/1}) the answer comes once the message is in the durable outbox,
    or is a 503 if the outbox cannot take it. With C{"wait": SECONDS} as
    well, it comes once the peer acknowledged the message or those seconds
    passed; C{"delivered"} says which (the message stays queued otherwise).
    """

    def do_POST(self, request: Request) -> dict[str, Any] | int:
        body = read_body(
            request, [Field("to", (str,), "a string: a peer id"), _MSG_TYPE, _PAYLOAD, _RELIABLE, _WAIT]
        )
        to, wait = body["to"], body["wait"]
        if not 0 <= wait <= MAX_SEND_WAIT:
            raise ApiError(http.BAD_REQUEST, f"field 'wait' must be {_WAIT.what}")
        if wait and not body["reliable"]:
            raise ApiError(http.BAD_REQUEST, "field 'wait' goes only with \"reliable\": true")
        if not body["reliable"]:
            message_id = self.control.mesh.send(to, body["msg_type"], body["payload"])
            return {"id": message_id, "to": to}
        delivery = self.control.mesh.send_reliable(to, body["msg_type"], body["payload"])
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)

        def answer(data: bytes) -> None:
            if not finished:
                request.write(data)
                request.finish()

        def settle(message_id: str, delivered: bool) -> None:
            answer(write_json(request, {"id": message_id, "to": to, "reliable": True, "delivered": delivered}))

        def accepted(message_id: str) -> None:
            if not wait:
                settle(message_id, False)
                return
            timer = self.control.clock.callLater(wait, settle, message_id, False)

            def acknowledged(outcome: object) -> None:
                if timer.active():
                    timer.cancel()
                    settle(message_id, not isinstance(outcome, Failure))

            delivery.delivered().addBoth(acknowledged)

        def refused(failure: Failure) -> None:
            error = ApiError(
                http.SERVICE_UNAVAILABLE,
                f"the outbox did not take the message: {failure.getErrorMessage()}",
            )
            answer(write_error(request, error))

        delivery.accepted().addCallbacks(accepted, refused)
        return NOT_DONE_YET


class Broadcast(ApiResource):
    """
    C{/api/broadcast}: send one message to every connected peer.
    """

    def do_POST(self, request: Request) -> dict[str, Any]:
        body = read_body(request, [_MSG_TYPE, _PAYLOAD])
        sent = self.control.mesh.broadcast(body["msg_type"], body["payload"])
        ids = set(sent.values())
        return {"id": ids.pop() if ids else None, "ids": sent}


class Sessions(ApiResource):
    """
    C{/api/sessions}: every session the node knows (C{GET}); the session
    list this node's heartbeats carry, on a node started with
    C{--sessions api} (C{PUT}).
    """

    def do_GET(self, request: Request) -> dict[str, Any]:
        return self.control.views.fleet()

    def do_PUT(self, request: Request) -> dict[str, Any]:
        source = self.control.mesh.fleet.source
        if source != API_SOURCE:
            raise ApiError(
                http.CONFLICT,
                f"this node's sessions come from --sessions {source}; "
                "start it with --sessions api to set them here",
            )
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
    """
    C{/api/workers}: every peer's latest session list.
    """

    def do_GET(self, request: Request) -> dict[str, Any]:
        return {"workers": self.control.views.workers()}


class Events(ApiResource):
    """
    The event stream (L{relaymesh.control.sse}), with C{?history=N} the last
    N recent events first (L{relaymesh.control.history}); the token may also
    come in a cookie, because a browser's C{EventSource} cannot send
    headers.
    """

    cookie_auth = True

    def do_GET(self, request: Request) -> int:
        wanted = parse_event_types(request.args.get(b"types", []))
        history = parse_history(request.args.get(b"history", []))
        self.control.open_stream(request, wanted, history)
        return NOT_DONE_YET


class Proof(ApiResource):
    """
    C{/api/proof?nonce=HEX}: the node's proof that it holds the token, for
    the address the request came in at (L{relaymesh.control.proof}). It
    needs no token: the command line asks for it before it sends one.
    """

    public = True

    def do_GET(self, request: Request) -> dict[str, Any]:
        values = request.args.get(b"nonce", [])
        nonce = parse_nonce(values[0].decode("ascii", "replace")) if len(values) == 1 else None
        if nonce is None:
            raise ApiError(http.BAD_REQUEST, f"query 'nonce' must be {2 * NONCE_BYTES} hex digits")
        token = self.control.token
        if token is None:
            raise ApiError(http.SERVICE_UNAVAILABLE, "the API token is not loaded yet")
        local = request.getHost()
        host, port = getattr(local, "host", None), getattr(local, "port", None)
        address = str(local) if host is None or port is None else canonical_address(host, port)
        return {"proof": make_proof(token, nonce, address), "address": address}


class Cookie(ApiResource):
    """
    C{/api/cookie}: the cookie that lets a browser's C{EventSource}, which
    cannot send headers, follow C{/api/events}. C{POST} (with the token)
    sets it: HttpOnly, so the page's scripts cannot read it; SameSite=Strict,
    so no other site's page sends it; sent to C{/api/events} only; and its
    value is derived from the token (L{cookie_value}), so it opens an event
    stream and nothing else. C{DELETE} (no token needed) removes it.
    """

    public = True

    def _name(self, request: Request) -> bytes:
        return cookie_name(getattr(request.getHost(), "port", None))

    def do_POST(self, request: Request) -> dict[str, Any]:
        self.control.authorize(request)
        token = self.control.token
        if token is None:  # authorize() refuses every request then
            raise ApiError(http.SERVICE_UNAVAILABLE, "the API token is not loaded yet")
        name = self._name(request)
        request.addCookie(
            name,
            cookie_value(token),
            path=COOKIE_PATH,
            httpOnly=True,
            sameSite="strict",
            secure=request.isSecure(),
        )
        return {"cookie": name.decode("ascii"), "path": COOKIE_PATH.decode("ascii")}

    def do_DELETE(self, request: Request) -> dict[str, Any]:
        name = self._name(request)
        request.addCookie(
            name,
            b"",
            path=COOKIE_PATH,
            max_age=b"0",
            expires=b"Thu, 01 Jan 1970 00:00:00 GMT",
            httpOnly=True,
            sameSite="strict",
            secure=request.isSecure(),
        )
        return {"cookie": name.decode("ascii"), "removed": True}


class Dashboard(Resource):
    """
    The dashboard page: static, so it needs no token; the data it shows
    does. Its policy lets it load nothing from outside the node.

    @ivar page: The page's bytes.
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

    def __init__(
        self, control: ControlPlane, exposition: Callable[[], IResource] | None = None
    ) -> None:
        """
        @param control: The control plane whose metrics to expose.
        @param exposition: Makes the resource that renders the registry;
            C{prometheus_client}'s if C{None}.
        """
        Resource.__init__(self)
        self.control = control
        self._make_exposition = exposition or self._prometheus_resource
        self._exposition: IResource | None = None

    def _prometheus_resource(self) -> IResource:
        # Imported late: it reads the global reactor, which twistd installs
        # only after the plugin is loaded.
        from prometheus_client.twisted import MetricsResource

        # prometheus_client defines it as an unannotated lambda: typed here
        make: Callable[..., IResource] = MetricsResource
        return make(registry=self.control.metrics.registry)

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
        body: bytes | int = self._exposition.render(request)
        return body


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
        endpoints: list[tuple[bytes, type[ApiResource]]] = [
            (b"status", Status),
            (b"peers", Peers),
            (b"send", Send),
            (b"broadcast", Broadcast),
            (b"events", Events),
            (b"sessions", Sessions),
            (b"workers", Workers),
            (b"proof", Proof),
            (b"cookie", Cookie),
        ]
        for name, endpoint in endpoints:
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
