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

This module names the control plane's public parts; they live in:

  - L{relaymesh.control.service}: L{ApiService}, L{api_url}, L{URL_FILE};
  - L{relaymesh.control.auth}: the token file and the token check;
  - L{relaymesh.control.requests}: L{ApiError}, JSON answers, body checks;
  - L{relaymesh.control.views}: the status, peer and worker views, and the
    dial and disconnect actions;
  - L{relaymesh.control.sse}: the event stream (L{EVENT_TYPES});
  - L{relaymesh.control.resources}: the L{twisted.web} resources and site;
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
