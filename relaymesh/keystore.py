"""
The identity and key store: this node's peer id and the keys of its peers.

The layout is claudectl's, under a data directory::

    identity                the node's peer id
    peers/<peer_id>.key     the peer's 32-byte pre-shared key, 64 hex digits
    peers/<peer_id>.meta    JSON: {"addr": "host:port", "last_seen": epoch ms}
    peers/_pending.key      the pending pairing key, claimed by the first
                            peer that proves it holds it
    peers/_pending.<form>.key   more armed keys of an invite (relaymesh only)
    peers/_pending.meta     JSON note on the armed keys: their forms and
                            when they expire (relaymesh only)

Every write is atomic (a private temporary file in the same directory,
flushed to disk, then renamed over the target), key files are mode 0600
and the directories 0700. Peer ids are validated before they are used in a
path. This module does not depend on Twisted.
"""

import errno
import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import stat
from dataclasses import dataclass
from typing import Sequence

from relaymesh.peerid import (
    MAX_PEER_ID_LENGTH,
    PENDING,
    is_valid_peer_id,
    validate_peer_id,
)

#: The environment variable that overrides the data directory.
DATA_DIR_ENV = "RELAYMESH_HOME"

#: The data directory when L{DATA_DIR_ENV} is unset.
DEFAULT_DATA_DIR = "~/.relaymesh"  # claudectl: ~/.claudectl/relay

IDENTITY_FILE = "identity"  # claudectl: identity
PEERS_DIR = "peers"  # claudectl: peers
KEY_SUFFIX = ".key"  # claudectl: <peer_id>.key
META_SUFFIX = ".meta"  # claudectl: <peer_id>.meta

KEY_LENGTH = 32  # claudectl: 32-byte PSK, stored as 64 hex characters
KEY_FILE_MODE = 0o600  # claudectl: 0600
DIR_MODE = 0o700

#: Random bytes at the end of a generated identity (shown as twice as many
#: hex characters).
IDENTITY_RANDOM_BYTES = 4  # claudectl: 4 bytes, 8 hex characters

#: The host part of a generated identity when the host name is empty.
FALLBACK_HOSTNAME = "relaymesh"

#: Permission bits that must not be set on a key file.
_GROUP_OTHER_BITS = 0o077

_NOT_ID_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{%d}\Z" % (2 * KEY_LENGTH,))

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


class KeyStoreError(Exception):
    """
    The key store cannot be used as it is on disk; the message is one line.
    """


class InsecureKeyFile(KeyStoreError):
    """
    A key file can be read or written by users other than its owner.
    """


class CorruptKeyFile(KeyStoreError):
    """
    A key file does not hold exactly 64 hex characters.
    """


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


def default_data_dir() -> str:
    """
    Return the data directory to use when none is given.

    @return: C{$RELAYMESH_HOME} if it is set and not empty, otherwise
        C{~/.relaymesh} with the home directory expanded.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return configured
    return os.path.expanduser(DEFAULT_DATA_DIR)


def generate_identity(hostname: str | None = None, randbytes=os.urandom) -> str:
    """
    Make a new peer id the way claudectl does: C{<host>-<8 hex digits>}.

    The host part is the short host name (up to the first C{.}), lowercased,
    with every character other than an ASCII letter, digit, C{-} or C{_}
    replaced by C{-}; C{relaymesh} if it is empty. It is cut short so that
    the whole id stays within the peer id length limit.

    @param hostname: the host name to use; C{socket.gethostname()} if
        L{None}.
    @param randbytes: a function returning that many random bytes.
    @return: a valid peer id.
    """
    if hostname is None:
        hostname = socket.gethostname()
    short = hostname.split(".", 1)[0] or FALLBACK_HOSTNAME
    host = _NOT_ID_CHARACTER.sub("-", short.lower())
    suffix = randbytes(IDENTITY_RANDOM_BYTES).hex()
    host = host[: MAX_PEER_ID_LENGTH - len(suffix) - 1]
    return validate_peer_id(f"{host}-{suffix}")


def _fsync_directory(path: str) -> None:
    """
    Flush a directory's entries to disk, where the platform allows it.

    @param path: the directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_path(path: str, purpose: str = "tmp") -> str:
    """
    Name a fresh temporary file next to C{path}.

    The name starts with C{.}, so it is never taken for a peer's file.

    @param path: the file the temporary file stands in for.
    @param purpose: a word put into the name.
    @return: the temporary file's path.
    """
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.{purpose}")


def write_atomically(path: str, data: bytes, sync: bool = True) -> None:
    """
    Replace the file at C{path} with C{data}, all at once, mode 0600.

    The data goes to a new file in the same directory (created exclusively,
    mode 0600), is flushed to disk and then renamed over C{path}, so a
    reader sees the old content or the new one, never a part.

    @param path: the file to write.
    @param data: its new content.
    @param sync: whether to flush the file and its directory to disk; a
        reader still never sees a part without it, but a crash may lose
        the change.
    @raise OSError: if the file cannot be written; C{path} is unchanged.
    """
    temporary = _temporary_path(path)
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, KEY_FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if sync:
        _fsync_directory(os.path.dirname(path) or ".")


def _link_or_replace(source: str, target: str) -> None:
    """
    Give C{source}'s file the name C{target} too, unless C{target} exists.

    A hard link fails if the target exists, so of two processes creating
    the same file the first one wins. Where the file system has no hard
    links, the target is replaced instead.

    @raise FileExistsError: if C{target} exists.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.exists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
        os.replace(source, target)


class KeyStore:
    """
    The identity and peer keys kept in one data directory.

    @ivar path: the data directory.
    """

    def __init__(self, path) -> None:
        """
        @param path: the data directory; created when first written to.
        """
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"KeyStore({self.path!r})"

    # Paths

    def _identity_path(self) -> str:
        return os.path.join(self.path, IDENTITY_FILE)

    def _peers_path(self) -> str:
        return os.path.join(self.path, PEERS_DIR)

    def _key_path(self, peer_id: str) -> str:
        return os.path.join(self._peers_path(), validate_peer_id(peer_id) + KEY_SUFFIX)

    def _meta_path(self, peer_id: str) -> str:
        return os.path.join(self._peers_path(), validate_peer_id(peer_id) + META_SUFFIX)

    def _pending_path(self) -> str:
        return os.path.join(self._peers_path(), PENDING + KEY_SUFFIX)

    @staticmethod
    def _make_private_directory(path: str) -> None:
        """
        Create C{path} (and its parents) if missing, the last one mode 0700.
        """
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), path
                ) from None
            return
        os.chmod(path, DIR_MODE)

    def _ensure_peers_directory(self) -> None:
        self._make_private_directory(self.path)
        self._make_private_directory(self._peers_path())

    # Identity

    def identity(self) -> str:
        """
        Return this node's peer id, creating and storing one on first use.

        @return: the id from the C{identity} file, or a new one from
            L{generate_identity}.
        @raise KeyStoreError: if the C{identity} file holds no valid id.
        @raise OSError: if the file cannot be read or written.
        """
        path = self._identity_path()
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return self._create_identity(path)
        try:
            return validate_peer_id(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as e:
            raise KeyStoreError(
                f"{path} does not hold a valid peer id ({e}); "
                f"fix it or delete it to make a new identity"
            ) from None

    def _create_identity(self, path: str) -> str:
        """
        Store a new identity at C{path} unless another process just did.

        @return: the identity now stored.
        """
        self._make_private_directory(self.path)
        peer_id = generate_identity()
        temporary = _temporary_path(path)
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, KEY_FILE_MODE)
        try:
            try:
                os.write(fd, peer_id.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            _link_or_replace(temporary, path)
        except FileExistsError:
            return self.identity()
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        _fsync_directory(self.path)
        return peer_id

    def set_identity(self, peer_id: str) -> None:
        """
        Store C{peer_id} as this node's peer id.

        @param peer_id: the new id.
        @raise relaymesh.peerid.InvalidPeerId: if it is not a valid id.
        """
        peer_id = validate_peer_id(peer_id)
        self._make_private_directory(self.path)
        write_atomically(self._identity_path(), peer_id.encode("ascii"))

    # Keys

    @staticmethod
    def _read_key_file(path: str, shown_as: str | None = None) -> bytes | None:
        """
        Read a key file, checking its permissions and content.

        @param path: the file.
        @param shown_as: the path to name in errors, if not C{path}.
        @return: the 32-byte key, or L{None} if there is no such file.
        @raise InsecureKeyFile: if group or others have any access to it.
        @raise CorruptKeyFile: if it does not hold exactly 64 hex digits.
        """
        shown = shown_as or path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & _GROUP_OTHER_BITS:
                raise InsecureKeyFile(
                    f"key file {shown} is accessible by other users "
                    f"(mode {mode:04o}); run: chmod 600 {shlex.quote(shown)}"
                )
            raw = f.read(4 * KEY_LENGTH + 1)
        text = raw.decode("ascii", "replace").strip()
        if _HEX_KEY.match(text) is None:
            raise CorruptKeyFile(
                f"key file {shown} is corrupt: it must hold exactly "
                f"{2 * KEY_LENGTH} hex characters"
            )
        return bytes.fromhex(text)

    @staticmethod
    def _check_key(key: bytes) -> bytes:
        """
        @return: C{key} if it is 32 bytes.
        @raise ValueError: otherwise.
        """
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise ValueError(f"a key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        if len(key) != KEY_LENGTH:
            raise ValueError(f"a key must be {KEY_LENGTH} bytes, not {len(key)}")
        return key

    def _write_key_file(self, path: str, key: bytes) -> None:
        self._ensure_peers_directory()
        write_atomically(path, key.hex().encode("ascii"))

    def key(self, peer_id: str) -> bytes | None:
        """
        Return the key stored for a peer.

        @param peer_id: the peer's id.
        @return: the 32-byte key, or L{None} if none is stored.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise InsecureKeyFile: if the key file is open to other users.
        @raise CorruptKeyFile: if the key file is damaged.
        """
        return self._read_key_file(self._key_path(peer_id))

    def set_key(self, peer_id: str, key: bytes) -> None:
        """
        Store the key of a peer, replacing any it had.

        @param peer_id: the peer's id.
        @param key: the 32-byte key.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise ValueError: if C{key} is not 32 bytes.
        """
        path = self._key_path(peer_id)
        self._write_key_file(path, self._check_key(key))

    def pending_key(self) -> bytes | None:
        """
        Return the pending pairing key.

        @return: the 32-byte key, or L{None} if none is armed.
        @raise InsecureKeyFile: if the key file is open to other users.
        @raise CorruptKeyFile: if the key file is damaged.
        """
        return self._read_key_file(self._pending_path())

    def set_pending_key(self, key: bytes) -> None:
        """
        Arm C{key} as the pending pairing key, replacing any other.

        @param key: the 32-byte key.
        @raise ValueError: if C{key} is not 32 bytes.
        """
        self._write_key_file(self._pending_path(), self._check_key(key))

    def clear_pending_key(self) -> bool:
        """
        Remove the pending pairing key, if there is one.

        @return: whether a pending key was removed.
        """
        return self._remove(self._pending_path())

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        """
        Make the pending pairing key the key of C{peer_id}.

        The pending key is taken with one rename, so of two claims at once
        only one gets it.

        @param peer_id: the peer that proved it holds the pending key.
        @return: the key, now stored for C{peer_id}; L{None} if no key was
            pending.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise InsecureKeyFile: if the pending key file is open to others.
        @raise CorruptKeyFile: if the pending key file is damaged.
        """
        key_path = self._key_path(peer_id)
        pending = self._pending_path()
        claimed = _temporary_path(pending, "claim")
        try:
            os.rename(pending, claimed)
        except FileNotFoundError:
            return None
        try:
            key = self._read_key_file(claimed, shown_as=pending)
            if key is None:
                return None
            self._write_key_file(key_path, key)
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
        return os.path.join(self._peers_path(), ARMED_KEY_PREFIX + slot + KEY_SUFFIX)

    def _note_path(self) -> str:
        return os.path.join(self._peers_path(), ARMED_NOTE_FILE)

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
        keys = [(form, self._check_key(key)) for form, key in keys]
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
            self._write_key_file(self._armed_path(slot), key)
        self._write_key_file(self._pending_path(), pending)
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
        @raise InsecureKeyFile: if an armed key file is open to other users.
        @raise CorruptKeyFile: if an armed key file is damaged.
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
                key = self._read_key_file(self._armed_path(slot))
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
        key_path = self._key_path(peer_id)
        path = self._armed_path(armed.slot)
        claimed = _temporary_path(path, "claim")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None
        try:
            key = self._read_key_file(claimed, shown_as=path)
            if key != armed.key:
                os.replace(claimed, path)
                return None
            self._write_key_file(key_path, key)
        except BaseException:
            if os.path.exists(claimed):
                os.replace(claimed, path)
            raise
        os.unlink(claimed)
        self.disarm()
        self.update_meta(peer_id, paired_at=int(now * 1000), paired_via=armed.form)
        return key

    def disarm(self) -> bool:
        """
        Remove every armed key (the pending key included) and their note.

        @return: whether anything was armed.
        """
        removed = self._disarm_extra(self._armed_note())
        try:
            entries = list(os.scandir(self._peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(ARMED_KEY_PREFIX) and name.endswith(KEY_SUFFIX):
                if _FORM.match(name[len(ARMED_KEY_PREFIX) : -len(KEY_SUFFIX)]):
                    removed = self._remove(entry.path) or removed
        return self.clear_pending_key() or removed

    def _disarm_extra(self, note: dict) -> bool:
        """
        Remove the extra keys named in C{note}, and the note.
        """
        removed = False
        for slot in _slots(note):
            removed = self._remove(self._armed_path(slot)) or removed
        return self._remove(self._note_path()) or removed

    # The strong pairing code: a one-time password for SPAKE2

    def _strong_code_path(self) -> str:
        return os.path.join(self.path, STRONG_CODE_FILE)

    def arm_strong_code(self, code: str, expires_at: float | None) -> None:
        """
        Arm a one-time strong pairing code, replacing any other.

        @param code: the code, in its canonical form.
        @param expires_at: when it stops working (epoch seconds), or L{None}.
        """
        self._make_private_directory(self.path)
        note = {"code": code, "expires_at": expires_at}
        write_atomically(self._strong_code_path(), json.dumps(note).encode())

    def strong_code_armed(self, now: float) -> bool:
        """
        Whether an unexpired strong pairing code is armed.
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

        @return: the code, or L{None} if none is armed or it expired.
        """
        note = self._strong_code_note()
        if note is None:
            return None
        path = self._strong_code_path()
        claimed = _temporary_path(path, "claim")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None  # another attempt took it first
        os.unlink(claimed)
        return None if _expired(note, now) else note["code"]

    # Metadata

    def meta(self, peer_id: str) -> dict:
        """
        Return what is known about a peer besides its key.

        @param peer_id: the peer's id.
        @return: the JSON object from the peer's C{.meta} file (fields
            C{"addr"}, C{"last_seen"} and any others); an empty dict if there
            is no such file or it does not hold a JSON object.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        try:
            with open(self._meta_path(peer_id), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def replace_meta(self, peer_id: str, meta: dict, sync: bool = True) -> None:
        """
        Write a peer's metadata as given, dropping fields not in C{meta}.

        @param peer_id: the peer's id.
        @param meta: the whole metadata object.
        @param sync: whether to flush it to disk (see L{write_atomically}).
        """
        path = self._meta_path(peer_id)
        self._ensure_peers_directory()
        write_atomically(path, json.dumps(meta, indent=2, ensure_ascii=False).encode(), sync)

    def update_meta(self, peer_id: str, /, *, sync: bool = True, **fields) -> dict:
        """
        Set some metadata fields of a peer, keeping the others.

        The file is written as indented JSON, like claudectl writes it.

        @param peer_id: the peer's id.
        @param sync: whether to flush the file to disk (L{write_atomically});
            bookkeeping such as C{last_seen} can do without.
        @param fields: the fields to set, e.g. C{addr="10.0.0.7:9847"},
            C{last_seen=1764180000000} (epoch milliseconds).
        @return: the metadata now stored.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        merged = self.meta(peer_id)
        merged.update(fields)
        self.replace_meta(peer_id, merged, sync)
        return merged

    # Listing and removal

    def peers(self) -> list[str]:
        """
        List the peers that have a key.

        @return: the sorted ids of the valid C{peers/<peer_id>.key} files;
            the pending key and other files are left out.
        """
        try:
            entries = list(os.scandir(self._peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            name = entry.name
            if not name.endswith(KEY_SUFFIX):
                continue
            peer_id = name[: -len(KEY_SUFFIX)]
            if is_valid_peer_id(peer_id) and entry.is_file():
                found.append(peer_id)
        return sorted(found)

    def forget(self, peer_id: str) -> bool:
        """
        Remove a peer's key and metadata (with what is pinned in it), and
        any other C{peers/<peer_id>.*} file.

        A peer id has no C{.}, so C{<peer_id>.} starts only that peer's files.

        @param peer_id: the peer's id.
        @return: whether anything was removed.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        removed_key = self._remove(self._key_path(peer_id))
        removed_meta = self._remove(self._meta_path(peer_id))
        removed_other = False
        prefix = validate_peer_id(peer_id) + "."
        try:
            entries = list(os.scandir(self._peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.is_dir():
                removed_other = self._remove(entry.path) or removed_other
        return removed_key or removed_meta or removed_other

    @staticmethod
    def _remove(path: str) -> bool:
        """
        @return: whether C{path} existed and was removed.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True


def _slots(note: dict) -> list[str]:
    """
    The valid extra key slots named in an armed keys' note.
    """
    slots = note.get("slots")
    if not isinstance(slots, list):
        return []
    return [slot for slot in slots if isinstance(slot, str) and _FORM.match(slot)]
