"""
The secrets a key store arms for pairing: the pending key, the other keys
of an invite, and the one-time strong code.

They are kept beside the peers' keys::

    peers/_pending.key      the pending pairing key, claimed by the first
                            peer that proves it holds it
    peers/_pending.<form>.key   more armed keys of an invite (relaymesh only)
    peers/_pending.meta     JSON note on the armed keys: their forms, when
                            they expire and which invite they are (relaymesh
                            only)
    strong-code             the armed strong pairing code, its expiry and
                            the invite it belongs to

An invite is used once, whichever of its forms is used: claiming any of its
keys, or taking its strong code for an attempt, first takes the invite's
ticket (L{relaymesh.tickets}) with one rename, so of two claims at once, in
one process or several, only one gets it; every other form of the invite
is then disarmed, and a later claim is told the invite was used
(L{InviteUsed}). A pending key armed without an invite (by C{relaymesh
pair}, or by claudectl sharing the data directory) and a strong code armed
alone (C{pair --strong}) are each taken with one rename of their own file.
This module does not depend on Twisted.
"""

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relaymesh.files import make_private_directory, remove_file, temporary_path, write_atomically
from relaymesh.keyfiles import (
    KEY_SUFFIX,
    META_SUFFIX,
    KeyFiles,
    KeyStoreError,
    check_key,
    read_key_file,
)
from relaymesh.peerid import PENDING
from relaymesh.tickets import (
    STRONG_CODE_FORM,
    InviteTickets,
    InviteUsed,
    UsedInvite,
    expired,
    invite_named,
    new_invite_id,
    number,
    read_json,
)

__all__ = [
    "ARMED_KEY_PREFIX",
    "ARMED_NOTE_FILE",
    "PAIR_CODE_FORM",
    "STRONG_CODE_FILE",
    "STRONG_CODE_FORM",
    "ArmedKey",
    "InviteUsed",
    "PairingSlots",
    "UsedInvite",
]

#: The note on the armed keys: the form each was handed out in, when they
#: expire and which invite they are (JSON). claudectl never reads it:
#: C{_pending} is no peer id.
ARMED_NOTE_FILE = PENDING + META_SUFFIX

#: The armed strong pairing code, its expiry and its invite (JSON, mode 0600).
STRONG_CODE_FILE = "strong-code"

#: Armed keys besides the pending key are kept as C{peers/_pending.<form>.key}.
#: That is never a peer's key file, since a peer id has no C{.}, and
#: claudectl reads only C{_pending.key}.
ARMED_KEY_PREFIX = PENDING + "."

#: The form of a pending key armed without a note: by C{relaymesh pair}, or
#: by claudectl sharing the data directory.
PAIR_CODE_FORM = "pair_code"

_FORM = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


@dataclass(frozen=True)
class ArmedKey:
    """
    A key armed for pairing: the first peer without a key that proves it
    gets it.

    @ivar form: how the key was handed out, e.g. L{PAIR_CODE_FORM}; recorded
        as the peer's C{paired_via}.
    @ivar key: the 32-byte key.
    @ivar slot: C{None} for the pending key (C{peers/_pending.key}), else
        the name of its C{peers/_pending.<slot>.key} file.
    @ivar invite: the invite the key is a form of, or C{None} for a pending
        key armed on its own.
    """

    form: str
    key: bytes
    slot: str | None = None
    # Bookkeeping, not part of which key it is: an armed key is the same
    # key whichever invite id it was armed under.
    invite: str | None = field(default=None, compare=False)


def _fingerprint(key: bytes) -> str:
    """
    Name a key in the armed keys' note without writing the key itself.
    """
    return hashlib.sha256(b"relaymesh armed key\0" + key).hexdigest()[:32]


def _pending_form(note: Mapping[str, object]) -> str:
    """
    The form an armed keys' note gives its pending key; L{PAIR_CODE_FORM}
    if it names none that is valid.
    """
    form = note.get("pending_form")
    return form if isinstance(form, str) and _FORM.match(form) else PAIR_CODE_FORM


def _slots(note: Mapping[str, object]) -> list[str]:
    """
    The valid extra key slots named in an armed keys' note.
    """
    slots = note.get("slots")
    if not isinstance(slots, list):
        return []
    return [slot for slot in slots if isinstance(slot, str) and _FORM.match(slot)]


def _take_key_file(
    files: KeyFiles, path: str, peer_id: str, expected: bytes | None
) -> bytes | None:
    """
    Take an armed key file with one rename and store its key as C{peer_id}'s.

    @param files: the data directory's files.
    @param path: the armed key file.
    @param expected: the key the file must hold, or C{None} for any.
    @return: the key, or C{None} if the file is gone or holds another.
    """
    key_path = files.key_path(peer_id)
    claimed = temporary_path(path, "claim")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    try:
        key = read_key_file(claimed, shown_as=path)
        if key is None or (expected is not None and key != expected):
            os.replace(claimed, path)
            return None
        files.write_key_file(key_path, key)
    except BaseException:
        try:
            os.replace(claimed, path)
        except FileNotFoundError:
            pass
        raise
    os.unlink(claimed)
    return key


class PairingSlots:
    """
    The keys and the strong code armed for pairing in one data directory.

    @ivar files: the data directory's files, where a claimed key is stored
        as the peer's.
    @ivar tickets: the invites' tickets and the note of who used the last.
    @ivar strong_code: the strong code's file.
    """

    def __init__(self, files: KeyFiles) -> None:
        """
        @param files: the data directory's files.
        """
        self.files = files
        self.tickets = InviteTickets(files.path)
        self.strong_code = StrongCodeFile(files.path)

    # The pending key

    def _pending_path(self) -> str:
        return os.path.join(self.files.peers_path(), PENDING + KEY_SUFFIX)

    def pending_key(self) -> bytes | None:
        """
        Return the pending pairing key.

        @return: the 32-byte key, or C{None} if none is armed.
        @raise relaymesh.keyfiles.InsecureKeyFile: if the key file is open to
            other users.
        @raise relaymesh.keyfiles.CorruptKeyFile: if the key file is damaged.
        """
        return read_key_file(self._pending_path())

    def set_pending_key(self, key: bytes) -> None:
        """
        Arm C{key} as the pending pairing key, replacing any other (and so
        the invite it was the pending key of).

        @param key: the 32-byte key.
        @raise ValueError: if C{key} is not 32 bytes.
        """
        self.files.write_key_file(self._pending_path(), check_key(key))

    def clear_pending_key(self) -> bool:
        """
        Remove the pending pairing key, if there is one.

        @return: whether a pending key was removed.
        """
        return remove_file(self._pending_path())

    def claim_pending_key(self, peer_id: str, now: float | None = None) -> bytes | None:
        """
        Make the pending pairing key the key of C{peer_id}.

        The pending key is taken with one rename, so of two claims at once
        only one gets it. If it is an invite's, the invite's ticket is taken
        first and every other form of the invite disarmed, as
        L{claim_armed_key} does.

        @param peer_id: the peer that proved it holds the pending key.
        @param now: the time (epoch seconds), noted as when an invite was
            used, if known.
        @return: the key, now stored for C{peer_id}; C{None} if no key was
            pending.
        @raise InviteUsed: if the pending key's invite was used meanwhile.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise relaymesh.keyfiles.InsecureKeyFile: if the pending key file is
            open to others.
        @raise relaymesh.keyfiles.CorruptKeyFile: if the pending key file is
            damaged.
        """
        note = self._armed_note()
        pending = self.pending_key()
        if pending is not None and self._invite_of(note, pending) is not None:
            armed = ArmedKey(_pending_form(note), pending, None, note["invite"])
            return self._claim_invite_key(peer_id, armed, now)
        key = _take_key_file(self.files, self._pending_path(), peer_id, None)
        if key is not None:
            self._disarm_invite(note)
        return key

    # Armed keys: the pending key, and the extra keys of an invite

    def _armed_path(self, slot: str | None) -> str:
        if slot is None:
            return self._pending_path()
        if _FORM.match(slot) is None:
            raise ValueError(f"invalid armed key slot {slot!r}")
        return os.path.join(self.files.peers_path(), ARMED_KEY_PREFIX + slot + KEY_SUFFIX)

    def _note_path(self) -> str:
        return os.path.join(self.files.peers_path(), ARMED_NOTE_FILE)

    def _armed_note(self) -> dict[str, Any]:
        """
        The armed keys' note, or an empty dict if there is none or it is
        damaged.
        """
        return read_json(self._note_path())

    def _still_armed(self, note: Mapping[str, object], invite: str) -> bool:
        """
        Whether C{note} arms C{invite} and its pending key is still there:
        claudectl sharing the data directory may have taken it (or
        C{relaymesh pair} replaced it), which ends the invite too.
        """
        return invite_named(note) == invite and self._invite_of(note, self.pending_key()) == invite

    def _invite_of(self, note: Mapping[str, object], pending: bytes | None) -> str | None:
        """
        The invite C{note} arms, if C{pending} is still its pending key.
        """
        if pending is None or note.get("pending_fingerprint") != _fingerprint(pending):
            return None
        return invite_named(note)

    def arm(
        self,
        keys: Sequence[tuple[str, bytes]],
        expires_at: float | None = None,
        strong_code: str | None = None,
    ) -> None:
        """
        Arm the keys of one invite for pairing, replacing whatever was armed.

        The first key becomes the pending key (C{peers/_pending.key}, the one
        claudectl and C{relaymesh pair} use); the others are kept beside it.
        All of them expire together, and the invite is used once: claiming
        one key, or taking its strong code for an attempt, disarms them all.

        @param keys: C{(form, key)} pairs: how each key is handed out
            (lowercase letters, digits and C{_}; each form once) and the
            32-byte key.
        @param expires_at: when they stop working (epoch seconds), or
            C{None} for never.
        @param strong_code: the invite's one-time strong code, in its
            canonical form, armed as part of it; C{None} leaves a strong
            code armed on its own (C{pair --strong}) as it is.
        @raise ValueError: for no keys, a bad form or a key not 32 bytes.
        """
        keys = [(form, check_key(key)) for form, key in keys]
        forms = [form for form, _ in keys]
        if not keys:
            raise ValueError("nothing to arm")
        if len(set(forms)) != len(forms) or not all(
            isinstance(form, str) and _FORM.match(form) for form in forms
        ):
            raise ValueError(f"invalid armed key forms {forms!r}")
        self.disarm()
        invite = new_invite_id()
        (form, pending), extra = keys[0], keys[1:]
        for slot, key in extra:
            self.files.write_key_file(self._armed_path(slot), key)
        self.files.write_key_file(self._pending_path(), pending)
        if strong_code is not None:
            self.strong_code.write(strong_code, expires_at, invite)
        note = {
            "expires_at": expires_at,
            "pending_form": form,
            "pending_fingerprint": _fingerprint(pending),
            "slots": [slot for slot, _ in extra],
            "invite": invite,
            "strong_code": strong_code is not None,
        }
        write_atomically(self._note_path(), json.dumps(note, indent=2).encode())
        self.tickets.issue(invite)  # last: from now on it can be used

    def armed_keys(self, now: float) -> list[ArmedKey]:
        """
        Return the keys armed for pairing, the pending key first.

        Keys whose time is up are disarmed first. So are an invite's other
        forms once its pending key has gone or been replaced (claimed or
        re-armed, by claudectl too): they live only as long as it does. An
        invite whose ticket is gone (it is used, or being used) arms
        nothing.

        @param now: the time (epoch seconds).
        @return: the armed keys; a pending key armed without a note (by
            C{relaymesh pair} or claudectl) has the form L{PAIR_CODE_FORM}
            and never expires.
        @raise relaymesh.keyfiles.InsecureKeyFile: if an armed key file is
            open to other users.
        @raise relaymesh.keyfiles.CorruptKeyFile: if an armed key file is
            damaged.
        """
        note = self._armed_note()
        pending = self.pending_key()
        noted = bool(note) and pending is not None and (
            note.get("pending_fingerprint") == _fingerprint(pending)
        )
        invite = invite_named(note) if noted else None
        if invite is not None and not self.tickets.valid(invite) and not expired(note, now):
            return []  # used, or being used: whoever took the ticket disarms it
        if note and (expired(note, now) or not noted):
            # The noted pending key goes with its invite; a pending key
            # armed since (even by another process meanwhile) stays.
            self._disarm_invite(note)
            if noted:
                pending = None
            note, invite = {}, None
        armed = []
        if pending is not None:
            armed.append(ArmedKey(_pending_form(note), pending, None, invite))
        for slot in _slots(note):
            key = read_key_file(self._armed_path(slot))
            if key is not None:
                armed.append(ArmedKey(slot, key, slot, invite))
        return armed

    def armed_until(self) -> float | None:
        """
        Return when the armed keys expire, as noted by L{arm}.

        @return: epoch seconds; C{None} if they never expire or none are
            armed with a note.
        """
        return number(self._armed_note().get("expires_at"))

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        """
        Make an armed key the key of C{peer_id} and disarm all the others.

        The key of an invite is claimed by taking the invite's ticket first,
        with one rename: of two claims of the same invite at once, with the
        same form or two, in this process or another, only one gets it. Then
        every form of the invite is disarmed, its strong code included, and
        who used it is noted. A pending key armed on its own is taken with
        one rename of its file. The peer's meta records C{paired_at} (epoch
        milliseconds) and C{paired_via} (the key's form).

        @param peer_id: the peer that proved it holds the key.
        @param armed: the key it proved, from L{armed_keys}.
        @param now: the time (epoch seconds).
        @return: the key, now stored for C{peer_id}; C{None} if that key is
            no longer armed (expired, replaced).
        @raise InviteUsed: if the key's invite was used meanwhile.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        if armed.invite is not None:
            key = self._claim_invite_key(peer_id, armed, now)
        else:
            key = _take_key_file(self.files, self._armed_path(armed.slot), peer_id, armed.key)
            if key is not None:
                self.disarm()
        if key is not None:
            self.files.update_meta(peer_id, paired_at=int(now * 1000), paired_via=armed.form)
        return key

    def _claim_invite_key(self, peer_id: str, armed: ArmedKey, now: float | None) -> bytes | None:
        """
        Use an invite by one of its keys: take its ticket, then the key.

        @param now: the time, to check the invite's expiry against and to
            note as when it was used; C{None} if unknown (no check).
        @return: the key, now stored for C{peer_id}; C{None} if the invite
            expired or was replaced, or the key is no longer its.
        @raise InviteUsed: if the ticket is gone and the invite is noted as
            used.
        """
        assert armed.invite is not None
        self.files.key_path(peer_id)  # an invalid id uses nothing up
        if not self.tickets.take(armed.invite):
            refused = self.tickets.refused(armed.invite, now)
            if refused is not None:
                raise refused
            return None
        note = self._armed_note()
        try:
            current = self._still_armed(note, armed.invite)
            if not current or (now is not None and expired(note, now)):
                key = None
            else:
                key = _take_key_file(self.files, self._armed_path(armed.slot), peer_id, armed.key)
        except BaseException:
            self.tickets.give_back(armed.invite)
            raise
        if key is not None:
            self.tickets.record_use(
                UsedInvite(
                    armed.invite,
                    armed.form,
                    peer_id,
                    now,
                    number(note.get("expires_at")),
                    note.get("strong_code") is True,
                )
            )
        self.tickets.discard(armed.invite)
        if invite_named(note) == armed.invite:
            self._disarm_invite(note)
        return key

    def used_invite(self, now: float) -> UsedInvite | None:
        """
        Who used the last invite, while it would still have worked: for a
        refusal to say why nothing is armed.

        @param now: the time (epoch seconds).
        """
        return self.tickets.used(now)

    def disarm(self) -> bool:
        """
        Remove every armed key (the pending key included), their note, the
        invites' tickets and the strong code of an invite (a strong code
        armed on its own stays).

        @return: whether anything was armed.
        """
        removed = self._disarm_invite(self._armed_note())
        try:
            entries = list(os.scandir(self.files.peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(ARMED_KEY_PREFIX) and name.endswith(KEY_SUFFIX):
                if _FORM.match(name[len(ARMED_KEY_PREFIX) : -len(KEY_SUFFIX)]):
                    removed = remove_file(entry.path) or removed
        removed = self.tickets.clear() or removed
        return self.clear_pending_key() or removed

    def _disarm_invite(self, note: Mapping[str, object]) -> bool:
        """
        Remove the forms of the invite C{note} arms: its extra keys, its
        note, its ticket, its strong code and, if it is still the one the
        note names, its pending key (a pending key armed since, by
        C{relaymesh pair} or claudectl, stays).

        @return: whether the note was there; everything else removed here
            is named by it.
        """
        for slot in _slots(note):
            remove_file(self._armed_path(slot))
        invite = invite_named(note)
        if invite is not None:
            if self.strong_code.invite() == invite:
                remove_file(self.strong_code.path)
            self.tickets.take(invite)
            self.tickets.discard(invite)
        try:
            pending = self.pending_key()
        except KeyStoreError:
            pending = None
        if note and pending is not None and note.get("pending_fingerprint") == _fingerprint(pending):
            self.clear_pending_key()
        return remove_file(self._note_path())

    # The strong pairing code: a one-time password for SPAKE2

    def arm_strong_code(self, code: str, expires_at: float | None) -> None:
        """
        Arm a one-time strong pairing code on its own, replacing any other.

        @param code: the code, in its canonical form.
        @param expires_at: when it stops working (epoch seconds), or C{None}.
        """
        self.strong_code.write(code, expires_at, None)

    def strong_code_armed(self, now: float) -> bool:
        """
        Whether an unexpired strong pairing code is armed that an attempt
        could still use.

        The code of an invite lives as long as the invite: once the
        invite's ticket is gone or its pending key is (claudectl sharing
        the data directory took it, or C{relaymesh pair} replaced it), the
        code is no longer armed, whether or not its file is still there.

        @param now: the time (epoch seconds).
        @raise relaymesh.keyfiles.KeyStoreError: if the code's file (or the
            pending key's) is damaged.
        """
        note = self.strong_code.read()
        if note is None or expired(note, now):
            return False
        invite = invite_named(note)
        armed = self._armed_note()
        return invite is None or (self.tickets.valid(invite) and self._still_armed(armed, invite))

    def take_strong_code(self, now: float) -> str | None:
        """
        Take the armed strong pairing code for one attempt: it is disarmed
        whether the attempt succeeds or not.

        The code of an invite is that invite's use: taking it takes the
        invite's ticket and disarms its other forms, since nothing here
        learns whether the attempt succeeds, and a failed attempt is someone
        guessing.

        @param now: the time (epoch seconds).
        @return: the code, or C{None} if none is armed or it expired.
        @raise InviteUsed: if the code's invite was used already (the code
            is then disarmed too).
        @raise relaymesh.keyfiles.KeyStoreError: if the code's file is damaged.
        """
        note = self.strong_code.read()
        if note is None:
            # Gone: never armed, taken for an attempt, or its invite used.
            used = self.tickets.used(now)
            if used is not None and used.had_strong_code:
                raise InviteUsed(used)
            armed = self._armed_note()
            invite = invite_named(armed)
            if invite is not None and armed.get("strong_code") is True:
                refused = self.tickets.refused(invite, now)
                if refused is not None:
                    raise refused
            return None
        if expired(note, now):
            self.strong_code.take(note)
            return None
        invite = invite_named(note)
        if invite is None:
            return note["code"] if self.strong_code.take(note) else None
        # The code of an invite: its ticket first, so that whoever finds
        # the code or the ticket gone can tell the invite was used.
        if not self.tickets.take(invite):
            # whoever took the ticket disarms the code with the invite
            refused = self.tickets.refused(invite, now)
            if refused is not None:
                raise refused
            return None
        armed = self._armed_note()
        current = self._still_armed(armed, invite)
        if current:
            expires_at = number(note.get("expires_at"))
            self.tickets.record_use(UsedInvite(invite, STRONG_CODE_FORM, None, now, expires_at, True))
        self.strong_code.take(note)
        self.tickets.discard(invite)
        if invite_named(armed) == invite:
            self._disarm_invite(armed)
        return note["code"] if current else None

    def note_strong_pairing(self, peer_id: str, now: float) -> bool:
        """
        A strong code attempt this node accepted paired C{peer_id}: name it
        in the invite's used note (L{_name_strong_pairing}).
        """
        return _name_strong_pairing(self.tickets, peer_id, now)


def _name_strong_pairing(tickets: InviteTickets, peer_id: str, now: float) -> bool:
    """
    Name C{peer_id} in the used note a strong code attempt wrote (naming
    nobody, as nothing was proved then) if that was at most a minute ago,
    so that a later join is told who used the invite.

    @return: whether the note was changed.
    """
    used = tickets.used(now)
    if used is None or used.form != STRONG_CODE_FORM or used.peer_id is not None:
        return False
    if used.at is None or not 0 <= now - used.at <= 60:
        return False
    tickets.record_use(dataclasses.replace(used, peer_id=peer_id))
    return True


class StrongCodeFile:
    """
    The file of the armed strong pairing code: C{{"code": ..., "expires_at":
    ..., "invite": ...}}, the invite only for the code of an invite.

    @ivar path: the file.
    """

    def __init__(self, data_dir: str) -> None:
        """
        @param data_dir: the data directory it is in.
        """
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, STRONG_CODE_FILE)

    def write(self, code: str, expires_at: float | None, invite: str | None) -> None:
        """
        Arm C{code}, replacing any other.
        """
        make_private_directory(self.data_dir)
        note = {"code": code, "expires_at": expires_at, "invite": invite}
        write_atomically(self.path, json.dumps(note).encode())

    def read(self) -> dict[str, Any] | None:
        """
        The file's content, or C{None} if there is none.

        @raise KeyStoreError: if it is damaged.
        """
        try:
            with open(self.path, "rb") as f:
                note = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            raise KeyStoreError(f"{self.path} is damaged; delete it") from None
        if not isinstance(note, dict) or not isinstance(note.get("code"), str):
            raise KeyStoreError(f"{self.path} is damaged; delete it")
        return note

    def invite(self) -> str | None:
        """
        The invite the armed code belongs to, if any (and if the file is
        readable).
        """
        return invite_named(read_json(self.path))

    def take(self, expected: Mapping[str, object]) -> bool:
        """
        Remove the code with one rename, so that one attempt gets it.

        @param expected: the file's content as L{read} gave it: a code armed
            since (by another process) is not this attempt's, and is put
            back.
        @return: whether this call took it.
        """
        claimed = temporary_path(self.path, "claim")
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return False
        if read_json(claimed) != expected:
            os.replace(claimed, self.path)
            return False
        os.unlink(claimed)
        return True
