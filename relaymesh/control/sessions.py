"""
The fleet's sessions as the API shows them: one flat object per session,
this node's and each peer's, with where it came from and how old it is.

A peer's session objects are its claims, passed on as they came except for
the keys added here, which always win: C{peer_id} (the authenticated peer
it came from; C{None} for this node's own), C{worker_id}, C{age} and
C{stale}. Items that are not JSON objects are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relaymesh.events import PeerSessions

#: Heartbeat intervals after which a session list counts as stale: at the
#: default 30 s interval, 60 s, as claudectl's API says "stale" after.
STALE_AFTER_INTERVALS = 2


def worker_of(held: PeerSessions) -> str:
    """
    The worker id a list names, or its peer id when it names none (or a
    worker id that is not a string).
    """
    return held.worker_id if isinstance(held.worker_id, str) else held.peer_id


def session_rows(lists: Iterable[PeerSessions], stale_after: float) -> list[dict[str, Any]]:
    """
    One object per session of C{lists}, in their order.

    @param stale_after: Seconds after which a list's sessions are stale.
    """
    rows: list[dict[str, Any]] = []
    for held in lists:
        age = round(held.age, 3)
        added = {
            "worker_id": worker_of(held),
            "peer_id": None if held.local else held.peer_id,
            "age": age,
            "stale": held.age >= stale_after,
        }
        rows.extend({**item, **added} for item in held.sessions if isinstance(item, dict))
    return rows
