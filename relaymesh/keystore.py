"""
The identity and key store: this node's peer id and the keys of its peers.

The layout is claudectl's, under a data directory::

    identity                the node's peer id
    peers/<peer_id>.key     the peer's 32-byte pre-shared key, 64 hex digits
    peers/<peer_id>.meta    JSON: {"addr": "host:port", "last_seen": epoch ms}
    peers/_pending.key      the pending pairing key, claimed by the first
                            peer that proves it holds it

Every write is atomic (a private temporary file in the same directory,
flushed to disk, then renamed over the target), key files are mode 0600
and the directories 0700. Peer ids are validated before they are used in a
path. This module does not depend on Twisted.
"""

import errno
import json
import os
import re
import secrets
import shlex
import socket
import stat

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


def write_atomically(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data}, all at once, mode 0600.

    The data goes to a new file in the same directory (created exclusively,
    mode 0600), is flushed to disk and then renamed over C{path}, so a
    reader sees the old content or the new one, never a part.

    @param path: the file to write.
    @param data: its new content.
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

    def update_meta(self, peer_id: str, /, **fields) -> dict:
        """
        Set some metadata fields of a peer, keeping the others.

        The file is written as indented JSON, like claudectl writes it.

        @param peer_id: the peer's id.
        @param fields: the fields to set, e.g. C{addr="10.0.0.7:9847"},
            C{last_seen=1764180000000} (epoch milliseconds).
        @return: the metadata now stored.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        path = self._meta_path(peer_id)
        merged = self.meta(peer_id)
        merged.update(fields)
        self._ensure_peers_directory()
        write_atomically(
            path, json.dumps(merged, indent=2, ensure_ascii=False).encode()
        )
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
        Remove a peer's key and metadata.

        @param peer_id: the peer's id.
        @return: whether anything was removed.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        removed_key = self._remove(self._key_path(peer_id))
        removed_meta = self._remove(self._meta_path(peer_id))
        return removed_key or removed_meta

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
