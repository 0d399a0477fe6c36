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
    POST   /api/send            {"to", "msg_type", "payload", "reliable", "wait"}
    POST   /api/broadcast       {"msg_type", "payload"}
    GET    /api/events          Server-Sent Events: messages and peer events
    PUT    /api/sessions        {"sessions": [...], "worker_id": ...}
    GET    /api/workers         every peer's latest session list
    GET    /api/proof?nonce=HEX the node's proof that it holds the token
    POST   /api/cookie          set the event stream's cookie (the dashboard)
    DELETE /api/cookie          remove it
    GET    /metrics             Prometheus text format

Every C{/api} request but C{/api/proof} and C{DELETE /api/cookie} needs
C{Authorization: Bearer TOKEN}; the token is kept in a file
(C{DATA_DIR/api-token}, mode 0600, made on first start). C{/api/events}
also takes the HttpOnly, SameSite=Strict cookie C{POST /api/cookie} sets,
because a browser's C{EventSource} cannot send headers; its value is derived
from the token, and no other resource takes it, so a cookie alone cannot
make a node do anything. The command line sends the token only after the
node has proved, on the same connection, that it holds it
(L{relaymesh.control.proof}). Every answer is JSON, and every error is
C{{"error": "one line"}}.

The site (L{relaymesh.control.site}) serves at most
L{relaymesh.control.requests.MAX_CONNECTIONS} connections at once, gives
each request L{relaymesh.control.requests.REQUEST_DEADLINE} seconds to
arrive whole, refuses bodies over L{relaymesh.control.requests.MAX_BODY}
bytes before reading them, and answers only requests whose C{Host} is the
API's (L{relaymesh.control.hosts}).

This module names the control plane's public parts; they live in:

  - L{relaymesh.control.service}: L{ApiService}, L{api_url}, L{URL_FILE};
  - L{relaymesh.control.auth}: the token file, the token and cookie checks;
  - L{relaymesh.control.proof}: the node's proof that it holds the token;
  - L{relaymesh.control.hosts}: the C{Host} headers answered;
  - L{relaymesh.control.requests}: L{ApiError}, JSON answers, body checks,
    the limits;
  - L{relaymesh.control.views}: the status, peer and worker views, and the
    dial and disconnect actions;
  - L{relaymesh.control.sse}: the event stream (L{EVENT_TYPES});
  - L{relaymesh.control.resources}: the C{twisted.web} resources;
  - L{relaymesh.control.site}: the site, its HTTP channel and its limits;
  - L{relaymesh.control.plane}: what the resources share;
  - L{relaymesh.control.metrics}: the Prometheus metrics.
"""

from relaymesh.control.auth import TOKEN_FILE, load_token, token_path
from relaymesh.control.requests import ApiError
from relaymesh.control.service import URL_FILE, ApiService, api_url
from relaymesh.control.sse import EVENT_TYPES

__all__ = [
    "EVENT_TYPES",
    "TOKEN_FILE",
    "URL_FILE",
    "ApiError",
    "ApiService",
    "api_url",
    "load_token",
    "token_path",
]
