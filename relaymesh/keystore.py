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

The peers' files are L{relaymesh.keyfiles}'s, the armed secrets
L{relaymesh.armed}'s (with the strong code and, from L{relaymesh.tickets},
each invite's one use) and the atomic writes L{relaymesh.files}'s; this
module names the data directory, makes the identity and lists and forgets
peers. It does not depend on Twisted.
"""

import os
import re
import socket
from collections.abc import Callable, Sequence

from relaymesh.addresses import AddressBook
from relaymesh.armed import PAIR_CODE_FORM, ArmedKey, InviteUsed, PairingSlots, UsedInvite
from relaymesh.files import (
    FILE_MODE,
    fsync_directory,
    link_or_replace,
    make_private_directory,
    remove_file,
    temporary_path,
    write_atomically,
)
from relaymesh.keyfiles import (
    KEY_SUFFIX,
    CorruptKeyFile,
    InsecureKeyFile,
    KeyFiles,
    KeyStoreError,
)
from relaymesh.peerid import MAX_PEER_ID_LENGTH, is_valid_peer_id, validate_peer_id

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "PAIR_CODE_FORM",
    "ArmedKey",
    "CorruptKeyFile",
    "InsecureKeyFile",
    "InviteUsed",
    "KeyStore",
    "KeyStoreError",
    "UsedInvite",
    "default_data_dir",
    "generate_identity",
    "write_atomically",
]

#: The environment variable that overrides the data directory.
DATA_DIR_ENV = "RELAYMESH_HOME"

#: The data directory when L{DATA_DIR_ENV} is unset.
DEFAULT_DATA_DIR = "~/.relaymesh"  # claudectl: ~/.claudectl/relay

#: Random bytes at the end of a generated identity (shown as twice as many
#: hex characters).
IDENTITY_RANDOM_BYTES = 4  # claudectl: 4 bytes, 8 hex characters

#: The host part of a generated identity when the host name is empty.
FALLBACK_HOSTNAME = "relaymesh"

_NOT_ID_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")


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


def generate_identity(
    hostname: str | None = None, randbytes: Callable[[int], bytes] = os.urandom
) -> str:
    """
    Make a new peer id the way claudectl does: C{<host>-<8 hex digits>}.

    The host part is the short host name (up to the first C{.}), lowercased,
    with every character other than an ASCII letter, digit, C{-} or C{_}
    replaced by C{-}; C{relaymesh} if it is empty. It is cut short so that
    the whole id stays within the peer id length limit.

    @param hostname: the host name to use; C{socket.gethostname()} if
        C{None}.
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



class KeyStore(KeyFiles):
    """
    The identity and peer keys kept in one data directory, and the secrets
    armed there for pairing.

    @ivar path: the data directory.
    @ivar pairing: the keys and strong code armed for pairing; the methods
        of the same names below are its.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """
        @param path: the data directory; created when first written to.
        """
        super().__init__(path)
        self.pairing = PairingSlots(self)

    def __repr__(self) -> str:
        return f"KeyStore({self.path!r})"

    # Identity

    def identity(self) -> str:
        """
        Return this node's peer id, creating and storing one on first use.

        @return: the id from the C{identity} file, or a new one from
            L{generate_identity}.
        @raise KeyStoreError: if the C{identity} file holds no valid id.
        @raise OSError: if the file cannot be read or written.
        """
        path = self.identity_path()
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
        make_private_directory(self.path)
        peer_id = generate_identity()
        temporary = temporary_path(path)
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        try:
            try:
                os.write(fd, peer_id.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            link_or_replace(temporary, path)
        except FileExistsError:
            return self.identity()
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        fsync_directory(self.path)
        return peer_id

    def set_identity(self, peer_id: str) -> None:
        """
        Store C{peer_id} as this node's peer id.

        @param peer_id: the new id.
        @raise relaymesh.peerid.InvalidPeerId: if it is not a valid id.
        """
        peer_id = validate_peer_id(peer_id)
        make_private_directory(self.path)
        write_atomically(self.identity_path(), peer_id.encode("ascii"))

    # Pairing: see PairingSlots

    def pending_key(self) -> bytes | None:
        """
        Return the pending pairing key (L{PairingSlots.pending_key}).
        """
        return self.pairing.pending_key()

    def set_pending_key(self, key: bytes) -> None:
        """
        Arm C{key} as the pending pairing key (L{PairingSlots.set_pending_key}).
        """
        self.pairing.set_pending_key(key)

    def clear_pending_key(self) -> bool:
        """
        Remove the pending pairing key (L{PairingSlots.clear_pending_key}).
        """
        return self.pairing.clear_pending_key()

    def claim_pending_key(self, peer_id: str, now: float | None = None) -> bytes | None:
        """
        Make the pending pairing key the key of C{peer_id}
        (L{PairingSlots.claim_pending_key}).
        """
        return self.pairing.claim_pending_key(peer_id, now)

    def arm(
        self,
        keys: Sequence[tuple[str, bytes]],
        expires_at: float | None = None,
        strong_code: str | None = None,
    ) -> None:
        """
        Arm the keys of one invite for pairing, replacing whatever was armed
        (L{PairingSlots.arm}).
        """
        self.pairing.arm(keys, expires_at, strong_code)

    def armed_keys(self, now: float) -> list[ArmedKey]:
        """
        Return the keys armed for pairing (L{PairingSlots.armed_keys}).
        """
        return self.pairing.armed_keys(now)

    def armed_until(self) -> float | None:
        """
        Return when the armed keys expire (L{PairingSlots.armed_until}).
        """
        return self.pairing.armed_until()

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        """
        Make an armed key the key of C{peer_id}
        (L{PairingSlots.claim_armed_key}).
        """
        return self.pairing.claim_armed_key(peer_id, armed, now)

    def used_invite(self, now: float) -> UsedInvite | None:
        """
        Who used the last invite (L{PairingSlots.used_invite}).
        """
        return self.pairing.used_invite(now)

    def disarm(self) -> bool:
        """
        Remove every armed key (L{PairingSlots.disarm}).
        """
        return self.pairing.disarm()

    def arm_strong_code(self, code: str, expires_at: float | None) -> None:
        """
        Arm a one-time strong pairing code (L{PairingSlots.arm_strong_code}).
        """
        self.pairing.arm_strong_code(code, expires_at)

    def strong_code_armed(self, now: float) -> bool:
        """
        Whether an unexpired strong pairing code is armed
        (L{PairingSlots.strong_code_armed}).
        """
        return self.pairing.strong_code_armed(now)

    def take_strong_code(self, now: float) -> str | None:
        """
        Take the armed strong pairing code for one attempt
        (L{PairingSlots.take_strong_code}).
        """
        return self.pairing.take_strong_code(now)

    def note_strong_pairing(self, peer_id: str, now: float) -> bool:
        """
        Name the peer a strong code attempt of this node's invite paired
        (L{PairingSlots.note_strong_pairing}).
        """
        return self.pairing.note_strong_pairing(peer_id, now)

    # Listing and removal

    def peers(self) -> list[str]:
        """
        List the peers that have a key.

        @return: the sorted ids of the valid C{peers/<peer_id>.key} files;
            the pending key and other files are left out.
        """
        try:
            entries = list(os.scandir(self.peers_path()))
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
        Remove a peer's key and metadata (with what is pinned in it), any
        other C{peers/<peer_id>.*} file, and its remembered address
        (L{relaymesh.addresses}).

        A peer id has no C{.}, so C{<peer_id>.} starts only that peer's files.

        @param peer_id: the peer's id.
        @return: whether anything was removed.
        @raise relaymesh.peerid.InvalidPeerId: if C{peer_id} is not valid.
        """
        removed_key = remove_file(self.key_path(peer_id))
        removed_meta = remove_file(self.meta_path(peer_id))
        removed_other = False
        prefix = validate_peer_id(peer_id) + "."
        try:
            entries = list(os.scandir(self.peers_path()))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.is_dir():
                removed_other = remove_file(entry.path) or removed_other
        removed_address = AddressBook(self.path).forget(peer_id)
        return removed_key or removed_meta or removed_other or removed_address
