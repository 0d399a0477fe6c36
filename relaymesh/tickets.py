"""
The one use of an invite: a ticket that whoever uses the invite takes with
one rename, and a note of who used the last one.

An invite (L{relaymesh.invite}) arms several secrets, one per form; they are
one invite, used once. L{relaymesh.armed} takes the invite's ticket before
it hands out any of them: of two claims at once, in one process or in
several sharing the data directory, only one gets the ticket, and the
other is told who used the invite (L{InviteUsed}). The files, in the data
directory beside C{strong-code}::

    invite-<invite>.ticket  there while the invite can be used
    invite-<invite>.taken   the ticket, while a claim that took it is under way
    invite-used             JSON: who used the last invite, with which
                            form, when, and until when it would have worked

claudectl reads none of them. This module does not depend on Twisted.
"""

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relaymesh.files import remove_file, write_atomically
from relaymesh.keyfiles import KeyStoreError
from relaymesh.printable import printable

#: An invite's ticket is C{invite-<invite>.ticket} in the data directory,
#: and C{invite-<invite>.taken} while a claim that took it is under way.
TICKET_PREFIX = "invite-"
TICKET_SUFFIX = ".ticket"
TAKEN_SUFFIX = ".taken"

#: Who used the last invite (JSON), in the data directory.
USED_NOTE_FILE = "invite-used"

#: How a strong code attempt is recorded as the use of its invite (the
#: handshake's C{paired_via} of a strong pairing).
STRONG_CODE_FORM = "strong_code"

#: The form of a use under way, not yet noted.
IN_USE_FORM = "in_use"

#: Random bytes naming an invite (twice as many hex digits).
INVITE_ID_BYTES = 8

_INVITE_ID = re.compile(rf"[0-9a-f]{{{2 * INVITE_ID_BYTES}}}\Z")

#: How a used invite's form reads in L{UsedInvite.describe}.
_USED_WITH = {
    "invite": "its link or pair code",
    "invite_legacy": "its relay code or word phrase",
    "pair_code": "its pair code",
    STRONG_CODE_FORM: "its strong code",
}


def new_invite_id() -> str:
    """
    A fresh random invite id.
    """
    return os.urandom(INVITE_ID_BYTES).hex()


def invite_named(note: Mapping[str, object]) -> str | None:
    """
    The invite a note names (its C{"invite"} field), if it names a valid one.
    """
    invite = note.get("invite")
    return invite if isinstance(invite, str) and _INVITE_ID.match(invite) else None


def number(value: object) -> float | None:
    """
    C{value} as a float if it is a JSON number (not a boolean), else C{None}.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def expired(note: Mapping[str, object], now: float) -> bool:
    """
    Whether the C{"expires_at"} of a note has passed.
    """
    expires_at = number(note.get("expires_at"))
    return expires_at is not None and now >= expires_at


def read_json(path: str) -> dict[str, Any]:
    """
    A JSON object from a file; an empty dict if it is missing or damaged.
    """
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


@dataclass(frozen=True)
class UsedInvite:
    """
    An invite that was used, as its used note tells.

    @ivar invite: the invite's id.
    @ivar form: the form it was used with: an armed key's, or
        L{STRONG_CODE_FORM} for a strong code attempt.
    @ivar peer_id: the peer that paired with it; C{None} for a strong code
        attempt (taken before the peer proves anything) or a claim made
        without saying who.
    @ivar at: when (epoch seconds), if known.
    @ivar expires_at: when the invite would have expired, if ever.
    @ivar had_strong_code: whether the invite had a strong code (so that a
        strong code attempt after the use is told it came too late).
    """

    invite: str
    form: str
    peer_id: str | None
    at: float | None
    expires_at: float | None
    had_strong_code: bool

    def describe(self) -> str:
        """
        Say in one line that the invite was used, how and when.
        """
        if self.form == IN_USE_FORM:
            return (
                "this invite was already used: another pairing took it a moment ago; "
                "make a new invite"
            )
        when = "" if self.at is None else " at " + _utc(self.at)
        how = _USED_WITH.get(self.form, self.form)
        if self.peer_id is None:
            verb = "tried" if self.form == STRONG_CODE_FORM else "used"
            what = f"{how} was {verb}{when}"
        else:
            what = f"{printable(self.peer_id)} paired with {how}{when}"
        return f"this invite was already used: {what}; make a new invite"


class InviteUsed(KeyStoreError):
    """
    The invite a key or strong code belongs to was already used.

    @ivar used: what its used note tells.
    """

    def __init__(self, used: UsedInvite) -> None:
        super().__init__(used.describe())
        self.used = used


class InviteTickets:
    """
    The one use of each invite: its ticket, taken with one rename, and the
    note of who used the last one.

    A taken ticket keeps its own name (C{invite-<invite>.taken}) until the
    use is noted, so that a claim that finds the ticket gone can always
    tell a used invite (taken, or noted as used) from one that is simply
    no longer armed.

    @ivar directory: the data directory.
    """

    def __init__(self, directory: str) -> None:
        """
        @param directory: the data directory.
        """
        self.directory = directory

    def _path(self, invite: str, suffix: str) -> str:
        if _INVITE_ID.match(invite) is None:
            raise ValueError(f"invalid invite id {invite!r}")
        return os.path.join(self.directory, TICKET_PREFIX + invite + suffix)

    def _used_path(self) -> str:
        return os.path.join(self.directory, USED_NOTE_FILE)

    def issue(self, invite: str) -> None:
        """
        Make an invite's ticket: from now on it can be used once.
        """
        write_atomically(self._path(invite, TICKET_SUFFIX), b"")

    def valid(self, invite: str) -> bool:
        """
        Whether the invite's ticket is there: nobody used it or is using it.
        """
        return os.path.exists(self._path(invite, TICKET_SUFFIX))

    def take(self, invite: str) -> bool:
        """
        Take the invite's ticket, for one use: then L{give_back} it if the
        use fails before anything is recorded, else L{discard} it.

        @return: whether this call took it (C{False}: someone else did, or
            there is none).
        """
        try:
            os.rename(self._path(invite, TICKET_SUFFIX), self._path(invite, TAKEN_SUFFIX))
        except FileNotFoundError:
            return False
        return True

    def give_back(self, invite: str) -> None:
        """
        Put back a ticket whose use failed before anything was recorded.
        """
        os.rename(self._path(invite, TAKEN_SUFFIX), self._path(invite, TICKET_SUFFIX))

    def discard(self, invite: str) -> None:
        """
        Throw away a taken ticket, once its use is noted (or the invite is
        gone).
        """
        remove_file(self._path(invite, TAKEN_SUFFIX))

    def record_use(self, used: UsedInvite) -> None:
        """
        Note who used an invite, for whoever tries it next.
        """
        note = {
            "invite": used.invite,
            "form": used.form,
            "peer_id": used.peer_id,
            "at": used.at,
            "expires_at": used.expires_at,
            "strong_code": used.had_strong_code,
        }
        write_atomically(self._used_path(), json.dumps(note).encode())

    def used(self, now: float, invite: str | None = None) -> UsedInvite | None:
        """
        The last invite used, as long as it would not have expired yet.

        @param now: the time (epoch seconds).
        @param invite: only this invite, if given.
        @return: what its used note tells, or C{None}; a note past the
            invite's expiry is removed.
        """
        note = read_json(self._used_path())
        used_invite = invite_named(note)
        form = note.get("form")
        if used_invite is None or not isinstance(form, str):
            return None
        if expired(note, now):
            remove_file(self._used_path())
            return None
        if invite is not None and used_invite != invite:
            return None
        peer_id = note.get("peer_id")
        return UsedInvite(
            used_invite,
            form,
            peer_id if isinstance(peer_id, str) else None,
            number(note.get("at")),
            number(note.get("expires_at")),
            note.get("strong_code") is True,
        )

    def refused(self, invite: str, now: float | None) -> InviteUsed | None:
        """
        The error for a claim that found the invite's ticket gone: the
        invite was used (as its used note says) or is being used (its
        ticket is taken); C{None} if it is simply no longer armed.

        @param now: the time, for the used note's expiry; C{None} if unknown.
        """
        used = self.used(now if now is not None else float("-inf"), invite)
        if used is None and os.path.exists(self._path(invite, TAKEN_SUFFIX)):
            used = UsedInvite(invite, IN_USE_FORM, None, None, None, False)
        return InviteUsed(used) if used is not None else None

    def clear(self) -> bool:
        """
        Remove every ticket, taken or not, and the used note.

        @return: whether there was a ticket.
        """
        removed = False
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(TICKET_PREFIX) and name.endswith((TICKET_SUFFIX, TAKEN_SUFFIX)):
                removed = remove_file(entry.path) or removed
        remove_file(self._used_path())
        return removed
