"""
The files of a key store's data directory, and the keys and metadata of
peers kept in them.

The layout is claudectl's::

    identity                the node's peer id
    peers/<peer_id>.key     the peer's 32-byte pre-shared key, 64 hex digits
    peers/<peer_id>.meta    JSON: {"addr": "host:port", "last_seen": epoch ms}

Key files are mode 0600 and the directories 0700; every write is atomic
(L{relaymesh.files.write_atomically}). Peer ids are validated before they
are used in a path. This module does not depend on Twisted.
"""

import json
import os
import re
import shlex
import stat
from collections.abc import Mapping
from typing import Any

from relaymesh.files import make_private_directory, write_atomically
from relaymesh.peerid import validate_peer_id

IDENTITY_FILE = "identity"  # claudectl: identity
PEERS_DIR = "peers"  # claudectl: peers
KEY_SUFFIX = ".key"  # claudectl: <peer_id>.key
META_SUFFIX = ".meta"  # claudectl: <peer_id>.meta

KEY_LENGTH = 32  # claudectl: 32-byte PSK, stored as 64 hex characters

#: Permission bits that must not be set on a key file.
_GROUP_OTHER_BITS = 0o077

#: The most a key file may hold: its 64 hex digits and as much white space
#: around them. A longer file is corrupt, whatever it starts with.
MAX_KEY_FILE = 4 * KEY_LENGTH

_HEX_KEY = re.compile(rf"[0-9A-Fa-f]{{{2 * KEY_LENGTH}}}\Z")


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


def check_key(key: bytes) -> bytes:
    """
    Check that C{key} is a key: 32 bytes.

    @param key: bytes or a bytes-like object.
    @return: C{key} as C{bytes}.
    @raise ValueError: if it is not 32 bytes.
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ValueError(f"a key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_LENGTH:
        raise ValueError(f"a key must be {KEY_LENGTH} bytes, not {len(key)}")
    return key


def read_key_file(path: str, shown_as: str | None = None) -> bytes | None:
    """
    Read a key file, checking its permissions and content.

    @param path: the file.
    @param shown_as: the path to name in errors, if not C{path}.
    @return: the 32-byte key, or C{None} if there is no such file.
    @raise InsecureKeyFile: if group or others have any access to it.
    @raise CorruptKeyFile: if it does not hold exactly 64 hex digits, with
        nothing but white space around them, in at most L{MAX_KEY_FILE}
        bytes.
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
        raw = f.read(MAX_KEY_FILE + 1)
    text = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_KEY_FILE or _HEX_KEY.match(text) is None:
        raise CorruptKeyFile(
            f"key file {shown} is corrupt: it must hold exactly "
            f"{2 * KEY_LENGTH} hex characters"
        )
    return bytes.fromhex(text)


class KeyFiles:
    """
    The data directory's layout, and the key and metadata files of peers.

    @ivar path: the data directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """
        @param path: the data directory; created when first written to.
        """
        self.path = os.fspath(path)

    # Paths

    def identity_path(self) -> str:
        """
        @return: the path of the C{identity} file.
        """
        return os.path.join(self.path, IDENTITY_FILE)

    def peers_path(self) -> str:
        """
        @return: the path of the C{peers} directory.
        """
        return os.path.join(self.path, PEERS_DIR)

    def key_path(self, peer_id: str) -> str:
        """
        @return: the path of a peer's key file.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        return os.path.join(self.peers_path(), validate_peer_id(peer_id) + KEY_SUFFIX)

    def meta_path(self, peer_id: str) -> str:
        """
        @return: the path of a peer's metadata file.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        return os.path.join(self.peers_path(), validate_peer_id(peer_id) + META_SUFFIX)

    def ensure_peers_directory(self) -> None:
        """
        Create the data directory and its C{peers} directory if missing.
        """
        make_private_directory(self.path)
        make_private_directory(self.peers_path())

    def write_key_file(self, path: str, key: bytes) -> None:
        """
        Write a key file in the C{peers} directory.

        @param path: the file.
        @param key: the 32-byte key, already checked.
        """
        self.ensure_peers_directory()
        write_atomically(path, key.hex().encode("ascii"))

    # Keys

    def key(self, peer_id: str) -> bytes | None:
        """
        Return the key stored for a peer.

        @param peer_id: the peer's id.
        @return: the 32-byte key, or C{None} if none is stored.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise InsecureKeyFile: if the key file is open to other users.
        @raise CorruptKeyFile: if the key file is damaged.
        """
        return read_key_file(self.key_path(peer_id))

    def set_key(self, peer_id: str, key: bytes) -> None:
        """
        Store the key of a peer, replacing any it had.

        @param peer_id: the peer's id.
        @param key: the 32-byte key.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        @raise ValueError: if C{key} is not 32 bytes.
        """
        path = self.key_path(peer_id)
        self.write_key_file(path, check_key(key))

    # Metadata

    def meta(self, peer_id: str) -> dict[str, Any]:
        """
        Return what is known about a peer besides its key.

        @param peer_id: the peer's id.
        @return: the JSON object from the peer's C{.meta} file (fields
            C{"addr"}, C{"last_seen"} and any others); an empty dict if there
            is no such file or it does not hold a JSON object.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        try:
            with open(self.meta_path(peer_id), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def replace_meta(self, peer_id: str, meta: Mapping[str, Any], sync: bool = True) -> None:
        """
        Write a peer's metadata as given, dropping fields not in C{meta}.

        @param peer_id: the peer's id.
        @param meta: the whole metadata object.
        @param sync: whether to flush it to disk (see L{write_atomically}).
        """
        path = self.meta_path(peer_id)
        self.ensure_peers_directory()
        write_atomically(path, json.dumps(meta, indent=2, ensure_ascii=False).encode(), sync)

    def update_meta(self, peer_id: str, /, *, sync: bool = True, **fields: Any) -> dict[str, Any]:
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
