"""
The secrets a key store arms for pairing: the pending key, the other keys
of an invite, and the one-time strong code.

They are kept beside the peers' keys::

    peers/_pending.key      the pending pairing key, claimed by the first
                            peer that proves it holds it
    peers/_pending.<form>.key   more armed keys of an invite (relaymesh only)
    peers/_pending.meta     JSON note on the armed keys: their forms and
                            when they expire (relaymesh only)
    strong-code             the armed strong pairing code and its expiry

Each is taken with one rename, so of two claims at once only one gets it.
This module does not depend on Twisted.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Sequence

from relaymesh.files import (
    make_private_directory,
    remove_file,
    temporary_path,
    write_atomically,
)
from relaymesh.keyfiles import (
    KEY_SUFFIX,
    META_SUFFIX,
    KeyFiles,
    KeyStoreError,
    check_key,
    read_key_file,
)
from relaymesh.peerid import PENDING

#: The note on the armed keys: the form each was handed out in and when they
#: expire (JSON). claudectl never reads it: C{_pending} is no peer id.
ARMED_NOTE_FILE = PENDING + META_SUFFIX

#: The armed strong pairing code and its expiry (JSON, mode 0600).
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
    @ivar slot: L{None} for the pending key (C{peers/_pending.key}), else
        the name of its C{peers/_pending.<slot>.key} file.
    """

    form: str
    key: bytes
    slot: str | None = None


def _expired(note: dict, now: float) -> bool:
    expires_at = note.get("expires_at")
    return isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool) and now >= expires_at


def _fingerprint(key: bytes) -> str:
    """
    Name a key in the armed keys' note without writing the key itself.
    """
    return hashlib.sha256(b"relaymesh armed key\0" + key).hexdigest()[:32]


def _slots(note: dict) -> list[str]:
    """
    The valid extra key slots named in an armed keys' note.
    """
    slots = note.get("slots")
    if not isinstance(slots, list):
        return []
    return [slot for slot in slots if isinstance(slot, str) and _FORM.match(slot)]


class PairingSlots:
    """
    The keys and the strong code armed for pairing in one data directory.

    @ivar files: the data directory's files, where a claimed key is stored
        as the peer's.
    """

    def __init__(self, files: KeyFiles) -> None:
        """
        @param files: the data directory's files.
        """
        self.files = files

    # The pending key

    def _pending_path(self) -> str:
        return os.path.join(self.files.peers_path(), PENDING + KEY_SUFFIX)

    def pending_key(self) -> bytes | None:
        """
        Return the pending pairing key.

        @return: the 32-byte key, or L{None} if none is armed.
        @raise relaymesh.keyfiles.InsecureKeyFile: if the key file is open to
            other users.
        @raise relaymesh.keyfiles.CorruptKeyFile: if the key file is damaged.
        """
        return read_key_file(self._pending_path())

    def set_pending_key(self, key: bytes) -> None:
        """
        Arm C{key} as the pending pairing key, replacing any other.

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

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        """
        Make the pending pairing key the key of C{peer_id}.

        The pending key is taken with one rename, so of two claims at once
        only one gets it.

        @param peer_id: the peer that proved it holds the pending key.
        @return: the key, now stored for C{peer_id}; L{None} if no key was
            pending.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise relaymesh.keyfiles.InsecureKeyFile: if the pending key file is
            open to others.
        @raise relaymesh.keyfiles.CorruptKeyFile: if the pending key file is
            damaged.
        """
        key_path = self.files.key_path(peer_id)
        pending = self._pending_path()
        claimed = temporary_path(pending, "claim")
        try:
            os.rename(pending, claimed)
        except FileNotFoundError:
            return None
        try:
            key = read_key_file(claimed, shown_as=pending)
            if key is None:
                return None
            self.files.write_key_file(key_path, key)
        except BaseException:
            os.replace(claimed, pending)
            raise
        os.unlink(claimed)
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

    def _armed_note(self) -> dict:
        """
        The armed keys' note, or an empty dict if there is none or it is
        damaged.
        """
        try:
            with open(self._note_path(), "rb") as f:
                note = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return {}
        return note if isinstance(note, dict) else {}

    def arm(self, keys: Sequence[tuple[str, bytes]], expires_at: float | None = None) -> None:
        """
        Arm keys for pairing, replacing whatever was armed.

        The first key becomes the pending key (C{peers/_pending.key}, the one
        claudectl and C{relaymesh pair} use); the others are kept beside it.
        All of them expire together; claiming one disarms them all.

        @param keys: C{(form, key)} pairs: how each key is handed out
            (lowercase letters, digits and C{_}; each form once) and the
            32-byte key.
        @param expires_at: when they stop working (epoch seconds), or
            L{None} for never.
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
        (form, pending), extra = keys[0], keys[1:]
        for slot, key in extra:
            self.files.write_key_file(self._armed_path(slot), key)
        self.files.write_key_file(self._pending_path(), pending)
        note = {
            "expires_at": expires_at,
            "pending_form": form,
            "pending_fingerprint": _fingerprint(pending),
            "slots": [slot for slot, _ in extra],
        }
        write_atomically(self._note_path(), json.dumps(note, indent=2).encode())

    def armed_keys(self, now: float) -> list[ArmedKey]:
        """
        Return the keys armed for pairing, the pending key first.

        Keys whose time is up are disarmed first. So are an invite's extra
        keys once its pending key has gone or been replaced (claimed or
        re-armed, by claudectl too): they live only as long as it does.

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
        expires_at = note.get("expires_at")
        expired = isinstance(expires_at, (int, float)) and now >= expires_at
        if note and (expired or not noted):
            self._disarm_extra(note)
            if noted:
                self.clear_pending_key()
                pending = None
            noted = False
        armed = []
        if pending is not None:
            form = note.get("pending_form") if noted else None
            if not isinstance(form, str) or _FORM.match(form) is None:
                form = PAIR_CODE_FORM
            armed.append(ArmedKey(form, pending))
        if noted:
            for slot in _slots(note):
                key = read_key_file(self._armed_path(slot))
                if key is not None:
                    armed.append(ArmedKey(slot, key, slot))
        return armed

    def armed_until(self) -> float | None:
        """
        Return when the armed keys expire, as noted by L{arm}.

        @return: epoch seconds; L{None} if they never expire or none are
            armed with a note.
        """
        expires_at = self._armed_note().get("expires_at")
        if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool):
            return float(expires_at)
        return None

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        """
        Make an armed key the key of C{peer_id} and disarm all the others.

        The key is taken with one rename, so of two claims at once only one
        gets it. The peer's meta records C{paired_at} (epoch milliseconds)
        and C{paired_via} (the key's form).

        @param peer_id: the peer that proved it holds the key.
        @param armed: the key it proved, from L{armed_keys}.
        @param now: the time (epoch seconds).
        @return: the key, now stored for C{peer_id}; L{None} if that key is
            no longer armed.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        key_path = self.files.key_path(peer_id)
        path = self._armed_path(armed.slot)
        claimed = temporary_path(path, "claim")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None
        try:
            key = read_key_file(claimed, shown_as=path)
            if key != armed.key:
                os.replace(claimed, path)
                return None
            self.files.write_key_file(key_path, key)
        except BaseException:
            if os.path.exists(claimed):
                os.replace(claimed, path)
            raise
        os.unlink(claimed)
        self.disarm()
        self.files.update_meta(peer_id, paired_at=int(now * 1000), paired_via=armed.form)
        return key

    def disarm(self) -> bool:
        """
        Remove every armed key (the pending key included) and their note.

        @return: whether anything was armed.
        """
        removed = self._disarm_extra(self._armed_note())
        try:
            entries = list(os.scandir(self.files.peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(ARMED_KEY_PREFIX) and name.endswith(KEY_SUFFIX):
                if _FORM.match(name[len(ARMED_KEY_PREFIX) : -len(KEY_SUFFIX)]):
                    removed = remove_file(entry.path) or removed
        return self.clear_pending_key() or removed

    def _disarm_extra(self, note: dict) -> bool:
        """
        Remove the extra keys named in C{note}, and the note.
        """
        removed = False
        for slot in _slots(note):
            removed = remove_file(self._armed_path(slot)) or removed
        return remove_file(self._note_path()) or removed

    # The strong pairing code: a one-time password for SPAKE2

    def _strong_code_path(self) -> str:
        return os.path.join(self.files.path, STRONG_CODE_FILE)

    def arm_strong_code(self, code: str, expires_at: float | None) -> None:
        """
        Arm a one-time strong pairing code, replacing any other.

        @param code: the code, in its canonical form.
        @param expires_at: when it stops working (epoch seconds), or L{None}.
        """
        make_private_directory(self.files.path)
        note = {"code": code, "expires_at": expires_at}
        write_atomically(self._strong_code_path(), json.dumps(note).encode())

    def strong_code_armed(self, now: float) -> bool:
        """
        Whether an unexpired strong pairing code is armed.

        @param now: the time (epoch seconds).
        @raise relaymesh.keyfiles.KeyStoreError: if the code's file is damaged.
        """
        note = self._strong_code_note()
        return note is not None and not _expired(note, now)

    def _strong_code_note(self) -> dict | None:
        try:
            with open(self._strong_code_path(), "rb") as f:
                note = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            raise KeyStoreError(f"{self._strong_code_path()} is damaged; delete it") from None
        if not isinstance(note, dict) or not isinstance(note.get("code"), str):
            raise KeyStoreError(f"{self._strong_code_path()} is damaged; delete it")
        return note

    def take_strong_code(self, now: float) -> str | None:
        """
        Take the armed strong pairing code for one attempt: it is disarmed
        whether the attempt succeeds or not.

        @param now: the time (epoch seconds).
        @return: the code, or L{None} if none is armed or it expired.
        @raise relaymesh.keyfiles.KeyStoreError: if the code's file is damaged.
        """
        note = self._strong_code_note()
        if note is None:
            return None
        path = self._strong_code_path()
        claimed = temporary_path(path, "claim")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None  # another attempt took it first
        os.unlink(claimed)
        return None if _expired(note, now) else note["code"]
