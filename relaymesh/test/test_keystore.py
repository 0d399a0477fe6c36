"""
Tests for L{relaymesh.keystore}, the files it keeps (L{relaymesh.keyfiles},
L{relaymesh.armed}) and how it writes them (L{relaymesh.files}).
"""

import dataclasses
import errno
import json
import os
import re
import stat

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from relaymesh import files, keystore
from relaymesh.files import link_or_replace, make_private_directory, write_atomically
from relaymesh.keyfiles import CorruptKeyFile, InsecureKeyFile, KeyStoreError
from relaymesh.keystore import ArmedKey, KeyStore, UsedInvite, default_data_dir, generate_identity
from relaymesh.peerid import InvalidPeerId

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))

#: What a generated identity looks like.
GENERATED_ID = re.compile(r"[a-z0-9_-]+-[0-9a-f]{8}\Z")


def fixedBytes(n: int) -> bytes:
    """
    Stand in for C{os.urandom}: C{n} bytes 1, 2, 3, ...
    """
    return bytes(range(1, n + 1))


def setEnvironment(testCase, name: str, value: str | None) -> None:
    """
    Set (or with L{None}, unset) an environment variable for one test.
    """
    old = os.environ.get(name)

    def restore():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

    testCase.addCleanup(restore)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def mode(path: str) -> int:
    """
    The permission bits of C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


def contents(path: str) -> list[str]:
    """
    Every file and directory under C{path}, as sorted relative paths.
    """
    found = []
    for directory, names, fileNames in os.walk(path):
        for name in names + fileNames:
            found.append(os.path.relpath(os.path.join(directory, name), path))
    return sorted(found)


def fileIdentity(path: str) -> tuple[int, int]:
    """
    The device and inode of C{path}: which file it is, whatever its name.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def recordSyncs(testCase) -> list[tuple[int, int]]:
    """
    Record, in order, which files and directories C{os.fsync} flushes to
    disk (see L{fileIdentity}), for one test.
    """
    synced = []
    realFsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        return realFsync(fd)

    testCase.patch(os, "fsync", fsync)
    return synced


def openDescriptors(testCase) -> set[str]:
    """
    The file descriptors this process has open.
    """
    for directory in ["/proc/self/fd", "/dev/fd"]:
        if os.path.isdir(directory):
            return set(os.listdir(directory))
    raise SkipTest("no way to list open file descriptors here")


class DefaultDataDirTests(SynchronousTestCase):
    """
    Tests for L{default_data_dir}.
    """

    def test_environment(self):
        """
        C{$RELAYMESH_HOME} is the data directory when it is set.
        """
        setEnvironment(self, "RELAYMESH_HOME", "/srv/relay")
        self.assertEqual(default_data_dir(), "/srv/relay")

    def test_unset(self):
        """
        Without C{$RELAYMESH_HOME}, the data directory is C{~/.relaymesh}.
        """
        setEnvironment(self, "RELAYMESH_HOME", None)
        setEnvironment(self, "HOME", "/home/someone")
        self.assertEqual(default_data_dir(), "/home/someone/.relaymesh")

    def test_empty(self):
        """
        An empty C{$RELAYMESH_HOME} counts as unset.
        """
        setEnvironment(self, "RELAYMESH_HOME", "")
        setEnvironment(self, "HOME", "/home/someone")
        self.assertEqual(default_data_dir(), "/home/someone/.relaymesh")


class GenerateIdentityTests(SynchronousTestCase):
    """
    Tests for L{generate_identity}.
    """

    def test_shortHostname(self):
        """
        The id is the host name up to its first dot, lowercased, then a
        dash and 8 hex digits of 4 random bytes.
        """
        self.assertEqual(
            generate_identity("Build-Box.example.com", fixedBytes), "build-box-01020304"
        )

    def test_replacesOtherCharacters(self):
        """
        Characters other than ASCII letters, digits, C{-} and C{_} become
        C{-}.
        """
        self.assertEqual(
            generate_identity("B\u00fcro PC_1+x", fixedBytes), "b-ro-pc_1-x-01020304"
        )

    def test_emptyHostname(self):
        """
        An empty short host name is replaced by C{relaymesh}.
        """
        self.assertEqual(generate_identity("", fixedBytes), "relaymesh-01020304")
        self.assertEqual(generate_identity(".lan", fixedBytes), "relaymesh-01020304")

    def test_longHostname(self):
        """
        The host part is cut so that the id is at most 128 characters.
        """
        peer_id = generate_identity("h" * 300, fixedBytes)
        self.assertEqual(len(peer_id), 128)
        self.assertEqual(peer_id, "h" * 119 + "-01020304")

    def test_systemHostname(self):
        """
        Without a host name, the system's is used.
        """
        self.patch(keystore.socket, "gethostname", lambda: "Laptop.local")
        self.assertEqual(generate_identity(randbytes=fixedBytes), "laptop-01020304")

    def test_random(self):
        """
        By default the suffix is random.
        """
        ids = {generate_identity("host") for _ in range(5)}
        for peer_id in ids:
            self.assertRegex(peer_id, r"\Ahost-[0-9a-f]{8}\Z")
        self.assertGreater(len(ids), 1)


class IdentityTests(SynchronousTestCase):
    """
    Tests for L{KeyStore.identity} and L{KeyStore.set_identity}.
    """

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "data")
        self.store = KeyStore(self.path)
        self.identityPath = os.path.join(self.path, "identity")

    def test_created(self):
        """
        On first use an identity is generated from the host name and stored
        in the C{identity} file, in a data directory of mode 0700.
        """
        self.patch(keystore.socket, "gethostname", lambda: "Work.Station.lan")
        peer_id = self.store.identity()
        self.assertRegex(peer_id, r"\Awork-[0-9a-f]{8}\Z")
        with open(self.identityPath) as f:
            self.assertEqual(f.read(), peer_id)
        self.assertEqual(mode(self.path), 0o700)

    def test_persistent(self):
        """
        The identity stays the same, for this store and any other on the
        same directory.
        """
        peer_id = self.store.identity()
        self.assertRegex(peer_id, GENERATED_ID)
        self.assertEqual(self.store.identity(), peer_id)
        self.assertEqual(KeyStore(self.path).identity(), peer_id)

    def test_stripped(self):
        """
        White space around the id in the file is ignored.
        """
        os.makedirs(self.path)
        with open(self.identityPath, "w") as f:
            f.write("  laptop-a3f2\n")
        self.assertEqual(self.store.identity(), "laptop-a3f2")

    def test_invalid(self):
        """
        An C{identity} file without a valid id is an error naming the file.
        """
        os.makedirs(self.path)
        for content in [
            b"not valid!",
            b"",
            b"\n",
            b"_pending",
            b"x" * 129,
            b"\xff\xfe",
        ]:
            with open(self.identityPath, "wb") as f:
                f.write(content)
            error = self.assertRaises(KeyStoreError, self.store.identity)
            self.assertIn(self.identityPath, str(error))
            self.assertNotIn("\n", str(error))
            with open(self.identityPath, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_setIdentity(self):
        """
        L{KeyStore.set_identity} stores the id that L{KeyStore.identity}
        then returns.
        """
        self.store.set_identity("laptop-a3f2")
        self.assertEqual(self.store.identity(), "laptop-a3f2")
        self.store.set_identity("ci_runner-9d1e")
        self.assertEqual(KeyStore(self.path).identity(), "ci_runner-9d1e")
        self.assertEqual(mode(self.identityPath), 0o600)

    def test_setInvalidIdentity(self):
        """
        L{KeyStore.set_identity} refuses an invalid id and keeps the old one.
        """
        self.store.set_identity("laptop-a3f2")
        for bad in ["has space", "", "_pending", "../x", "y" * 129]:
            self.assertRaises(InvalidPeerId, self.store.set_identity, bad)
        self.assertEqual(self.store.identity(), "laptop-a3f2")

    def test_dataDirectoryIsAFile(self):
        """
        A data directory that is a file is an L{OSError}.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        self.assertRaises(OSError, KeyStore(path).identity)


class KeyTests(SynchronousTestCase):
    """
    Tests for peer keys: L{KeyStore.key} and L{KeyStore.set_key}.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = KeyStore(self.path)
        self.peers = os.path.join(self.path, "peers")
        self.keyPath = os.path.join(self.peers, "ci-runner-9d1e.key")

    def writeKeyFile(self, content: bytes, fileMode: int = 0o600) -> None:
        """
        Put a key file for C{ci-runner-9d1e} in place by hand.
        """
        os.makedirs(self.peers, exist_ok=True)
        with open(self.keyPath, "wb") as f:
            f.write(content)
        os.chmod(self.keyPath, fileMode)

    def test_absent(self):
        """
        A peer without a key file has no key.
        """
        self.assertIsNone(self.store.key("ci-runner-9d1e"))

    def test_roundTrip(self):
        """
        A stored key is read back.
        """
        self.store.set_key("ci-runner-9d1e", KEY)
        self.assertEqual(self.store.key("ci-runner-9d1e"), KEY)
        self.assertEqual(KeyStore(self.path).key("ci-runner-9d1e"), KEY)

    def test_layout(self):
        """
        The key is stored as 64 lowercase hex digits in
        C{peers/<peer_id>.key}, mode 0600, in a C{peers} directory of mode
        0700.
        """
        self.store.set_key("ci-runner-9d1e", OTHER_KEY)
        with open(self.keyPath, "rb") as f:
            self.assertEqual(f.read(), OTHER_KEY.hex().encode("ascii"))
        self.assertEqual(mode(self.keyPath), 0o600)
        self.assertEqual(mode(self.peers), 0o700)
        self.assertEqual(mode(self.path), 0o700)

    def test_readsClaudectlFile(self):
        """
        Surrounding white space and uppercase hex digits are accepted.
        """
        self.writeKeyFile(b"  " + KEY.hex().upper().encode() + b"\n")
        self.assertEqual(self.store.key("ci-runner-9d1e"), KEY)

    def test_replace(self):
        """
        Storing a key again replaces the file, and a too open old file is
        replaced by one of mode 0600.
        """
        self.writeKeyFile(KEY.hex().encode(), 0o644)
        self.store.set_key("ci-runner-9d1e", OTHER_KEY)
        self.assertEqual(self.store.key("ci-runner-9d1e"), OTHER_KEY)
        self.assertEqual(mode(self.keyPath), 0o600)

    def test_wrongKeyLength(self):
        """
        Only 32-byte keys are stored.
        """
        for bad in [b"", KEY[:31], KEY + b"\0", KEY.hex(), None]:
            self.assertRaises(ValueError, self.store.set_key, "ci-runner-9d1e", bad)
        self.assertFalse(os.path.exists(self.keyPath))

    def test_bytesLike(self):
        """
        A key may be any bytes-like object of 32 bytes.
        """
        self.store.set_key("ci-runner-9d1e", bytearray(KEY))
        self.assertEqual(self.store.key("ci-runner-9d1e"), KEY)

    def test_invalidPeerId(self):
        """
        Ids are validated before they are used in a path.
        """
        for bad in ["../../etc/passwd", "a/b", "", "_pending", "a.b", "z" * 129]:
            self.assertRaises(InvalidPeerId, self.store.key, bad)
            self.assertRaises(InvalidPeerId, self.store.set_key, bad, KEY)
            self.assertRaises(InvalidPeerId, self.store.meta, bad)
            self.assertRaises(InvalidPeerId, self.store.update_meta, bad, addr="x:1")
            self.assertRaises(InvalidPeerId, self.store.forget, bad)
            self.assertRaises(InvalidPeerId, self.store.claim_pending_key, bad)
        self.assertFalse(os.path.exists(self.path))

    def test_insecure(self):
        """
        A key file that group or others may read or write is refused, with
        a message naming the file and the C{chmod} that fixes it.
        """
        for fileMode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o610, 0o601, 0o700 | 0o001]:
            self.writeKeyFile(KEY.hex().encode(), fileMode)
            error = self.assertRaises(InsecureKeyFile, self.store.key, "ci-runner-9d1e")
            self.assertIsInstance(error, KeyStoreError)
            self.assertIn(f"chmod 600 {self.keyPath}", str(error))
            self.assertNotIn("\n", str(error))

    def test_ownerOnlyModes(self):
        """
        Modes that give access only to the owner are fine.
        """
        for fileMode in [0o600, 0o400]:
            self.writeKeyFile(KEY.hex().encode(), fileMode)
            self.assertEqual(self.store.key("ci-runner-9d1e"), KEY)

    def test_corrupt(self):
        """
        A key file without exactly 64 hex digits is refused, with a message
        naming the file and not showing its content.
        """
        good = KEY.hex()
        for content in [
            b"",
            b"abc",
            good[:63].encode(),
            good.encode() + b"0",
            b"zz" + good[2:].encode(),
            good[:32].encode() + b" " + good[32:].encode(),
            b"\xff" * 64,
        ]:
            self.writeKeyFile(content)
            error = self.assertRaises(CorruptKeyFile, self.store.key, "ci-runner-9d1e")
            self.assertIsInstance(error, KeyStoreError)
            self.assertIn(self.keyPath, str(error))
            self.assertNotIn(good[:16], str(error))
            self.assertNotIn("\n", str(error))


class AtomicWriteTests(SynchronousTestCase):
    """
    Tests for L{write_atomically}, which every write of the store uses.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "target")

    def test_writes(self):
        """
        The file gets the data, mode 0600, and no other file is left.
        """
        write_atomically(self.path, b"new")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(mode(self.path), 0o600)
        self.assertEqual(os.listdir(self.directory), ["target"])

    def test_exclusiveTemporaryFile(self):
        """
        The data goes first to a new file in the same directory, created
        exclusively with mode 0600, which is then renamed over the target.
        """
        opened = []
        replaced = []
        realOpen, realReplace = os.open, os.replace

        def recordOpen(path, flags, mode=0o777, *args, **kwargs):
            opened.append((path, flags, mode))
            return realOpen(path, flags, mode, *args, **kwargs)

        def recordReplace(source, target):
            replaced.append((source, target))
            return realReplace(source, target)

        self.patch(files.os, "open", recordOpen)
        self.patch(files.os, "replace", recordReplace)
        write_atomically(self.path, b"data")
        [(temporary, flags, fileMode)] = [
            call for call in opened if call[1] & os.O_CREAT
        ]
        self.assertEqual(os.path.dirname(temporary), self.directory)
        self.assertNotEqual(temporary, self.path)
        self.assertEqual(flags & os.O_EXCL, os.O_EXCL)
        self.assertEqual(flags & os.O_WRONLY, os.O_WRONLY)
        self.assertEqual(fileMode, 0o600)
        self.assertEqual(replaced, [(temporary, self.path)])

    def test_failureKeepsOldContent(self):
        """
        If the data cannot be flushed to disk, the old file is untouched and
        the temporary file is removed.
        """
        write_atomically(self.path, b"old")

        def failingFsync(fd):
            raise OSError(5, "Input/output error")

        self.patch(files.os, "fsync", failingFsync)
        self.assertRaises(OSError, write_atomically, self.path, b"new")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.directory), ["target"])

    def test_storeWritesLeaveNoTemporaryFiles(self):
        """
        After the store's writes, only its own files are in its directories.
        """
        store = KeyStore(self.directory)
        store.set_identity("laptop-a3f2")
        store.set_key("peer-a", KEY)
        store.update_meta("peer-a", addr="10.0.0.7:9847")
        store.set_pending_key(OTHER_KEY)
        store.claim_pending_key("peer-b")
        self.assertEqual(sorted(os.listdir(self.directory)), ["identity", "peers"])
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.directory, "peers"))),
            ["peer-a.key", "peer-a.meta", "peer-b.key"],
        )
        for name in ["peer-a.key", "peer-a.meta", "peer-b.key"]:
            self.assertEqual(mode(os.path.join(self.directory, "peers", name)), 0o600)


class PendingKeyTests(SynchronousTestCase):
    """
    Tests for the pending pairing key.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = KeyStore(self.path)
        self.pendingPath = os.path.join(self.path, "peers", "_pending.key")

    def test_none(self):
        """
        At first no key is pending, and there is nothing to clear or claim.
        """
        self.assertIsNone(self.store.pending_key())
        self.assertFalse(self.store.clear_pending_key())
        self.assertIsNone(self.store.claim_pending_key("peer-a"))
        self.assertIsNone(self.store.key("peer-a"))

    def test_setAndClear(self):
        """
        A pending key is stored in C{peers/_pending.key}, mode 0600, until
        cleared.
        """
        self.store.set_pending_key(KEY)
        self.assertEqual(self.store.pending_key(), KEY)
        with open(self.pendingPath, "rb") as f:
            self.assertEqual(f.read(), KEY.hex().encode())
        self.assertEqual(mode(self.pendingPath), 0o600)
        self.assertTrue(self.store.clear_pending_key())
        self.assertIsNone(self.store.pending_key())
        self.assertFalse(os.path.exists(self.pendingPath))

    def test_setWrongLength(self):
        """
        Only a 32-byte key can be pending.
        """
        self.assertRaises(ValueError, self.store.set_pending_key, KEY[:8])
        self.assertIsNone(self.store.pending_key())

    def test_notAPeer(self):
        """
        The pending key is not listed as a peer.
        """
        self.store.set_pending_key(KEY)
        self.assertEqual(self.store.peers(), [])

    def test_claim(self):
        """
        Claiming moves the pending key to the peer's key file.
        """
        self.store.set_pending_key(KEY)
        self.assertEqual(self.store.claim_pending_key("ci-runner-9d1e"), KEY)
        self.assertEqual(self.store.key("ci-runner-9d1e"), KEY)
        self.assertIsNone(self.store.pending_key())
        self.assertEqual(self.store.peers(), ["ci-runner-9d1e"])
        self.assertIsNone(self.store.claim_pending_key("someone-else"))
        self.assertIsNone(self.store.key("someone-else"))

    def test_claimReplacesOldKey(self):
        """
        Claiming replaces a key the peer had.
        """
        self.store.set_key("peer-a", OTHER_KEY)
        self.store.set_pending_key(KEY)
        self.store.claim_pending_key("peer-a")
        self.assertEqual(self.store.key("peer-a"), KEY)

    def test_claimCorrupt(self):
        """
        A damaged pending key is not claimed: the error names the pending
        key file, which stays where it was.
        """
        os.makedirs(os.path.dirname(self.pendingPath))
        with open(self.pendingPath, "wb") as f:
            f.write(b"not a key")
        os.chmod(self.pendingPath, 0o600)
        error = self.assertRaises(
            CorruptKeyFile, self.store.claim_pending_key, "peer-a"
        )
        self.assertIn(self.pendingPath, str(error))
        with open(self.pendingPath, "rb") as f:
            self.assertEqual(f.read(), b"not a key")
        self.assertIsNone(self.store.key("peer-a"))
        self.assertEqual(
            os.listdir(os.path.dirname(self.pendingPath)), ["_pending.key"]
        )

    def test_claimInsecure(self):
        """
        A pending key others can read is not claimed.
        """
        self.store.set_pending_key(KEY)
        os.chmod(self.pendingPath, 0o644)
        self.assertRaises(InsecureKeyFile, self.store.pending_key)
        error = self.assertRaises(
            InsecureKeyFile, self.store.claim_pending_key, "peer-a"
        )
        self.assertIn(f"chmod 600 {self.pendingPath}", str(error))
        self.assertTrue(os.path.exists(self.pendingPath))
        self.assertIsNone(self.store.key("peer-a"))

    def test_claimInvalidId(self):
        """
        A claim for an invalid id leaves the pending key alone.
        """
        self.store.set_pending_key(KEY)
        self.assertRaises(InvalidPeerId, self.store.claim_pending_key, "_pending")
        self.assertEqual(self.store.pending_key(), KEY)


class MetaTests(SynchronousTestCase):
    """
    Tests for peer metadata.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = KeyStore(self.path)
        self.metaPath = os.path.join(self.path, "peers", "peer-a.meta")

    def writeMeta(self, content: bytes) -> None:
        """
        Put C{peer-a}'s metadata file in place by hand.
        """
        os.makedirs(os.path.dirname(self.metaPath), exist_ok=True)
        with open(self.metaPath, "wb") as f:
            f.write(content)

    def test_absent(self):
        """
        A peer without metadata has an empty dict.
        """
        self.assertEqual(self.store.meta("peer-a"), {})

    def test_update(self):
        """
        Fields are written as indented JSON and read back.
        """
        result = self.store.update_meta(
            "peer-a", addr="10.0.0.7:9847", last_seen=1764180000000
        )
        expected = {"addr": "10.0.0.7:9847", "last_seen": 1764180000000}
        self.assertEqual(result, expected)
        self.assertEqual(self.store.meta("peer-a"), expected)
        with open(self.metaPath) as f:
            self.assertEqual(f.read(), json.dumps(expected, indent=2))
        self.assertEqual(
            json.dumps(expected, indent=2),
            '{\n  "addr": "10.0.0.7:9847",\n  "last_seen": 1764180000000\n}',
        )

    def test_merge(self):
        """
        An update keeps the fields it does not set, including unknown ones.
        """
        self.writeMeta(b'{"addr": "1.2.3.4:9847", "last_seen": 1, "note": [1, 2]}')
        self.store.update_meta("peer-a", last_seen=2)
        self.assertEqual(
            self.store.meta("peer-a"),
            {"addr": "1.2.3.4:9847", "last_seen": 2, "note": [1, 2]},
        )

    def test_unreadable(self):
        """
        Metadata that is not a JSON object reads as an empty dict, and an
        update replaces it.
        """
        for content in [b"{not json", b"[1, 2]", b"\xff\xfe", b""]:
            self.writeMeta(content)
            self.assertEqual(self.store.meta("peer-a"), {})
        self.store.update_meta("peer-a", addr="h:1")
        self.assertEqual(self.store.meta("peer-a"), {"addr": "h:1"})

    def test_fieldNamedPeerId(self):
        """
        A field may be called C{peer_id}: the id is positional only.
        """
        self.store.update_meta("peer-a", peer_id="peer-a")
        self.assertEqual(self.store.meta("peer-a"), {"peer_id": "peer-a"})

    def test_metaOnlyIsNotAPeer(self):
        """
        Metadata without a key does not make a peer.
        """
        self.store.update_meta("peer-a", addr="h:1")
        self.assertEqual(self.store.peers(), [])


class PeersAndForgetTests(SynchronousTestCase):
    """
    Tests for L{KeyStore.peers} and L{KeyStore.forget}.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = KeyStore(self.path)
        self.peers = os.path.join(self.path, "peers")

    def test_noDirectory(self):
        """
        A store that does not exist yet has no peers.
        """
        self.assertEqual(self.store.peers(), [])

    def test_sortedIgnoringJunk(self):
        """
        Peers are the valid ids with a C{.key} file, sorted; the pending key
        and other names are ignored.
        """
        for peer_id in ["zeta", "Alpha", "beta_2", "m-1"]:
            self.store.set_key(peer_id, KEY)
        self.store.set_pending_key(KEY)
        for name in [
            "bad name.key",
            ".hidden.key",
            "a.b.key",
            ".key",
            "notes.txt",
            "x" * 129 + ".key",
            "keyless.meta",
        ]:
            with open(os.path.join(self.peers, name), "w") as f:
                f.write(KEY.hex())
        os.mkdir(os.path.join(self.peers, "directory.key"))
        self.assertEqual(self.store.peers(), ["Alpha", "beta_2", "m-1", "zeta"])

    def test_forget(self):
        """
        Forgetting removes the key and the metadata.
        """
        self.store.set_key("peer-a", KEY)
        self.store.update_meta("peer-a", addr="h:1")
        self.store.set_key("peer-b", OTHER_KEY)
        self.assertTrue(self.store.forget("peer-a"))
        self.assertIsNone(self.store.key("peer-a"))
        self.assertEqual(self.store.meta("peer-a"), {})
        self.assertEqual(self.store.peers(), ["peer-b"])
        self.assertEqual(sorted(os.listdir(self.peers)), ["peer-b.key"])

    def test_forgetMetaOnly(self):
        """
        Forgetting a peer with only metadata removes it too.
        """
        self.store.update_meta("peer-a", addr="h:1")
        self.assertTrue(self.store.forget("peer-a"))
        self.assertEqual(os.listdir(self.peers), [])

    def test_forgetUnknown(self):
        """
        Forgetting an unknown peer removes nothing.
        """
        self.assertFalse(self.store.forget("peer-a"))
        self.store.set_pending_key(KEY)
        self.assertFalse(self.store.forget("peer-a"))
        self.assertEqual(self.store.pending_key(), KEY)


class StrongCodeTests(SynchronousTestCase):
    """
    The armed strong pairing code: one try, then gone; expiry honoured.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())

    def test_one_try(self):
        self.assertIsNone(self.store.take_strong_code(100.0))
        self.store.arm_strong_code("7-ace-act", expires_at=200.0)
        self.assertTrue(self.store.strong_code_armed(100.0))
        path = os.path.join(self.store.path, "strong-code")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.store.take_strong_code(100.0), "7-ace-act")
        self.assertIsNone(self.store.take_strong_code(100.0))
        self.assertFalse(self.store.strong_code_armed(100.0))

    def test_expired(self):
        self.store.arm_strong_code("7-ace-act", expires_at=200.0)
        self.assertFalse(self.store.strong_code_armed(200.0))
        self.assertIsNone(self.store.take_strong_code(200.0))
        self.assertFalse(os.path.exists(os.path.join(self.store.path, "strong-code")))

    def test_no_expiry(self):
        self.store.arm_strong_code("7-ace-act", expires_at=None)
        self.assertEqual(self.store.take_strong_code(1e12), "7-ace-act")

    def test_damaged(self):
        self.store.arm_strong_code("7-ace-act", expires_at=None)
        with open(os.path.join(self.store.path, "strong-code"), "w") as f:
            f.write("{")
        with self.assertRaises(KeyStoreError):
            self.store.take_strong_code(0)


class ReexportTests(SynchronousTestCase):
    """
    L{relaymesh.keystore} still offers the names that moved out of it.
    """

    def test_moved(self):
        """
        The atomic write, the key file errors and the armed keys' names are
        the same objects from L{relaymesh.keystore} as from their modules.
        """
        from relaymesh import armed, keyfiles

        self.assertIs(keystore.write_atomically, files.write_atomically)
        self.assertIs(keystore.KeyStoreError, keyfiles.KeyStoreError)
        self.assertIs(keystore.InsecureKeyFile, keyfiles.InsecureKeyFile)
        self.assertIs(keystore.CorruptKeyFile, keyfiles.CorruptKeyFile)
        self.assertIs(keystore.ArmedKey, armed.ArmedKey)
        self.assertEqual(keystore.PAIR_CODE_FORM, armed.PAIR_CODE_FORM)


class DurableWriteTests(SynchronousTestCase):
    """
    What the store writes reaches the disk before it is relied on, and no
    write leaves a file descriptor open.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "target")

    def test_flushed(self):
        """
        L{write_atomically} flushes the new file before renaming it, then the
        directory holding the new name; with C{sync=False} it flushes
        nothing.
        """
        synced = recordSyncs(self)
        write_atomically(self.path, b"new")
        self.assertEqual(synced, [fileIdentity(self.path), fileIdentity(self.directory)])
        del synced[:]
        write_atomically(self.path, b"newer", sync=False)
        self.assertEqual(synced, [])
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"newer")

    def test_flushedRelative(self):
        """
        A file named without a directory is in the current one, which is
        the directory flushed.
        """
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(self.directory)
        synced = recordSyncs(self)
        write_atomically("target", b"new")
        self.assertEqual(synced, [fileIdentity(self.path), fileIdentity(self.directory)])

    def test_identityFlushed(self):
        """
        A new identity is flushed to disk, then the data directory holding
        its name; only the C{identity} file is left.
        """
        store = KeyStore(os.path.join(self.directory, "data"))
        synced = recordSyncs(self)
        store.identity()
        self.assertEqual(synced, [fileIdentity(store.identity_path()), fileIdentity(store.path)])
        self.assertEqual(contents(store.path), ["identity"])

    def test_metaFlushedByDefault(self):
        """
        Metadata is flushed to disk unless C{sync=False} says it can do
        without (as C{last_seen} bookkeeping can).
        """
        store = KeyStore(self.directory)
        metaPath = store.meta_path("peer-a")
        synced = recordSyncs(self)
        store.update_meta("peer-a", addr="h:1")
        self.assertIn(fileIdentity(metaPath), synced)
        del synced[:]
        store.replace_meta("peer-a", {"addr": "h:2"})
        self.assertIn(fileIdentity(metaPath), synced)
        del synced[:]
        store.update_meta("peer-a", sync=False, last_seen=1)
        store.replace_meta("peer-a", {"addr": "h:3"}, sync=False)
        self.assertEqual(synced, [])
        self.assertEqual(store.meta("peer-a"), {"addr": "h:3"})

    def test_noDescriptorLeft(self):
        """
        Writing files, making an identity and flushing directories leave no
        file descriptor open: a long-running node writes metadata for ever.
        """
        store = KeyStore(os.path.join(self.directory, "data"))
        store.identity()
        before = openDescriptors(self)
        for _ in range(3):
            KeyStore(os.path.join(self.mktemp())).identity()
            write_atomically(self.path, b"data")
            store.update_meta("peer-a", last_seen=1)
            files.fsync_directory(self.directory)
        self.assertEqual(openDescriptors(self), before)


class PrivateDirectoryTests(SynchronousTestCase):
    """
    Tests for L{make_private_directory}.
    """

    def test_umask(self):
        """
        Under a umask that takes even the owner's write bit, the store's
        directories are still 0700, and keys can be stored in them.
        """
        old = os.umask(0o277)
        self.addCleanup(os.umask, old)
        store = KeyStore(self.mktemp())
        store.set_key("peer-a", KEY)
        os.umask(old)
        self.assertEqual(mode(store.path), 0o700)
        self.assertEqual(mode(store.peers_path()), 0o700)
        self.assertEqual(store.key("peer-a"), KEY)

    def test_notADirectory(self):
        """
        A file where the directory should be is refused with
        L{NotADirectoryError} naming it, and left alone.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"mine")
        error = self.assertRaises(NotADirectoryError, make_private_directory, path)
        self.assertEqual(error.filename, path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"mine")

    def test_existing(self):
        """
        An existing directory is kept as it is, with what it holds.
        """
        path = self.mktemp()
        os.makedirs(path)
        open(os.path.join(path, "kept"), "w").close()
        make_private_directory(path)
        self.assertEqual(os.listdir(path), ["kept"])


class LinkOrReplaceTests(SynchronousTestCase):
    """
    Tests for L{link_or_replace}: of two processes creating the same file,
    the first wins, with or without hard links.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.source = os.path.join(self.directory, "source")
        self.target = os.path.join(self.directory, "target")
        with open(self.source, "wb") as f:
            f.write(b"second")

    def existingTarget(self) -> None:
        with open(self.target, "wb") as f:
            f.write(b"first")

    def assertTarget(self, content: bytes) -> None:
        with open(self.target, "rb") as f:
            self.assertEqual(f.read(), content)

    def withoutHardLinks(self, code: int) -> None:
        """
        Make C{os.link} fail with C{code}, as on a file system without hard
        links.
        """

        def link(source, target):
            raise OSError(code, os.strerror(code))

        self.patch(os, "link", link)

    def test_linked(self):
        """
        A missing target is created with the source's content.
        """
        link_or_replace(self.source, self.target)
        self.assertTarget(b"second")

    def test_existing(self):
        """
        An existing target is not replaced: L{FileExistsError}.
        """
        self.existingTarget()
        self.assertRaises(FileExistsError, link_or_replace, self.source, self.target)
        self.assertTarget(b"first")

    def test_noHardLinks(self):
        """
        Where the file system has no hard links, a missing target is
        created by a rename, and an existing one is still not replaced.
        """
        for code in [errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV]:
            self.withoutHardLinks(code)
            with open(self.source, "wb") as f:
                f.write(b"second")
            link_or_replace(self.source, self.target)
            self.assertTarget(b"second")
            with open(self.source, "wb") as f:
                f.write(b"third")
            error = self.assertRaises(FileExistsError, link_or_replace, self.source, self.target)
            self.assertEqual(error.filename, self.target)
            self.assertTarget(b"second")
            os.unlink(self.target)

    def test_otherErrors(self):
        """
        Any other failure of the link is raised as it is, and creates
        nothing.
        """
        for code in [errno.EIO, errno.ENOSPC, errno.EACCES]:
            self.withoutHardLinks(code)
            error = self.assertRaises(OSError, link_or_replace, self.source, self.target)
            self.assertEqual(error.errno, code)
            self.assertFalse(os.path.exists(self.target))
            self.assertTrue(os.path.exists(self.source))


class IdentityRaceTests(SynchronousTestCase):
    """
    Two processes making the first identity of one data directory at once:
    both end up with the one stored first.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())

    def otherProcessFirst(self) -> None:
        """
        Make another process store its identity just while this one makes
        its own.
        """
        store = self.store

        def generate():
            with open(store.identity_path(), "w") as f:
                f.write("other-0a0b0c0d")
            return "mine-01020304"

        self.patch(keystore, "generate_identity", generate)

    def test_otherWins(self):
        """
        The identity stored first is the one returned and kept; nothing
        else is left in the data directory.
        """
        self.otherProcessFirst()
        self.assertEqual(self.store.identity(), "other-0a0b0c0d")
        self.assertEqual(KeyStore(self.store.path).identity(), "other-0a0b0c0d")
        self.assertEqual(contents(self.store.path), ["identity"])

    def test_otherWinsWithoutHardLinks(self):
        """
        Without hard links too.
        """

        def link(source, target):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        self.patch(os, "link", link)
        self.assertRegex(KeyStore(self.mktemp()).identity(), GENERATED_ID)
        self.otherProcessFirst()
        self.assertEqual(self.store.identity(), "other-0a0b0c0d")
        self.assertEqual(contents(self.store.path), ["identity"])

    def test_repr(self):
        """
        A store shows its data directory.
        """
        self.assertEqual(repr(KeyStore("/srv/relay")), "KeyStore('/srv/relay')")


class KeyFileLimitTests(SynchronousTestCase):
    """
    A key file holds 64 hex digits and at most L{keyfiles.MAX_KEY_FILE}
    bytes in all.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.store.set_key("peer-a", KEY)
        self.keyPath = self.store.key_path("peer-a")

    def write(self, content: bytes) -> None:
        with open(self.keyPath, "wb") as f:
            f.write(content)

    def test_limit(self):
        """
        White space around the digits is accepted up to 128 bytes in all;
        one byte more is corrupt, and so is anything after white space, however
        much of it there is.
        """
        from relaymesh.keyfiles import MAX_KEY_FILE

        self.assertEqual(MAX_KEY_FILE, 128)
        digits = KEY.hex().encode()
        for content in [digits + b"\n" * 64, b" " * 32 + digits + b"\n" * 32]:
            self.write(content)
            self.assertEqual(len(content), 128)
            self.assertEqual(self.store.key("peer-a"), KEY)
        for content in [
            digits + b"\n" * 65,
            b" " * 65 + digits,
            digits + b"\n" * 65 + b"junk",
            digits + b" " * 100 + OTHER_KEY.hex().encode(),
            digits + b"\n" * 4096,
        ]:
            self.write(content)
            error = self.assertRaises(CorruptKeyFile, self.store.key, "peer-a")
            self.assertIn(self.keyPath, str(error))
            with open(self.keyPath, "rb") as f:
                self.assertEqual(f.read(), content)


class MetaFormatTests(SynchronousTestCase):
    """
    Metadata is written as claudectl writes it.
    """

    def test_utf8(self):
        """
        Text beyond ASCII is written as UTF-8, not as C{\\u} escapes.
        """
        store = KeyStore(self.mktemp())
        store.update_meta("peer-a", note="B\u00fcro")
        with open(store.meta_path("peer-a"), "rb") as f:
            self.assertEqual(f.read(), '{\n  "note": "B\u00fcro"\n}'.encode("utf-8"))
        self.assertEqual(store.meta("peer-a"), {"note": "B\u00fcro"})


class ForgetOtherFilesTests(SynchronousTestCase):
    """
    Forgetting a peer removes every file of its own.
    """

    def test_otherFileOnly(self):
        """
        A peer with only another C{peers/<peer_id>.*} file is forgotten too,
        and forgetting says so; other peers' files stay.
        """
        store = KeyStore(self.mktemp())
        store.set_key("peer-ab", KEY)
        for name in ["peer-a.pin", "peer-ab.pin"]:
            with open(os.path.join(store.peers_path(), name), "w") as f:
                f.write("x")
        self.assertTrue(store.forget("peer-a"))
        self.assertEqual(sorted(os.listdir(store.peers_path())), ["peer-ab.key", "peer-ab.pin"])
        self.assertFalse(store.forget("peer-a"))


#: When the invites armed in these tests are made, and when they expire.
ARMED_AT = 1000.0
EXPIRES_AT = 1600.0

#: A third key, and the strong code of the invites armed here.
LEGACY_KEY = bytes(range(200, 232))
STRONG_CODE = "7-ace-act"


def armInvite(store: KeyStore, strongCode: str | None = STRONG_CODE) -> list[ArmedKey]:
    """
    Arm an invite of two keys (forms C{invite} and C{invite_legacy}) and a
    strong code, as C{relaymesh invite} does.

    @return: its armed keys.
    """
    store.arm([("invite", KEY), ("invite_legacy", LEGACY_KEY)], EXPIRES_AT, strongCode)
    return store.armed_keys(ARMED_AT)


def writeJSON(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


class ArmedValueTests(SynchronousTestCase):
    """
    Armed keys and used invites are values.
    """

    def test_immutable(self):
        """
        They cannot be changed, and equal ones hash alike: an armed key is
        the same key whatever invite it was armed under.
        """
        armed = ArmedKey("invite", KEY, None, "0123456789abcdef")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, armed, "key", OTHER_KEY)
        self.assertEqual({armed, ArmedKey("invite", KEY, None, None)}, {armed})
        used = UsedInvite("0123456789abcdef", "invite", "beta", 1.0, 2.0, True)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, used, "peer_id", "gamma")
        self.assertEqual(len({used, UsedInvite("0123456789abcdef", "invite", "beta", 1.0, 2.0, True)}), 1)


class FailedClaimTests(SynchronousTestCase):
    """
    A claim that fails changes nothing stored, and says why with its own
    error.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.pendingPath = os.path.join(self.store.peers_path(), "_pending.key")

    def test_peerKeyNotWritable(self):
        """
        When the peer's key cannot be written, the claim fails with that
        error, and the pending key is back in its place, alone.
        """
        self.store.set_pending_key(KEY)
        os.makedirs(self.store.key_path("beta"))
        self.assertRaises(IsADirectoryError, self.store.claim_pending_key, "beta")
        [armed] = self.store.armed_keys(ARMED_AT)
        self.assertRaises(IsADirectoryError, self.store.claim_armed_key, "beta", armed, ARMED_AT)
        self.assertEqual(self.store.pending_key(), KEY)
        self.assertEqual(sorted(os.listdir(self.store.peers_path())), ["_pending.key", "beta.key"])
        self.assertEqual(self.store.meta("beta"), {})

    def test_madeInsecure(self):
        """
        A pending key opened to other users after it was listed is not
        claimed: the error names it, and it stays where it was.
        """
        self.store.set_pending_key(KEY)
        [armed] = self.store.armed_keys(ARMED_AT)
        os.chmod(self.pendingPath, 0o644)
        error = self.assertRaises(InsecureKeyFile, self.store.claim_armed_key, "beta", armed, ARMED_AT)
        self.assertIn(f"chmod 600 {self.pendingPath}", str(error))
        self.assertEqual(os.listdir(self.store.peers_path()), ["_pending.key"])
        self.assertEqual(mode(self.pendingPath), 0o644)

    def test_forgedSlot(self):
        """
        An armed key whose slot or invite is not a name the store made is
        refused before it becomes a path.
        """
        armInvite(self.store)
        before = contents(self.store.path)
        victim = os.path.join(self.store.path, "victim.key")
        for forged in [
            ArmedKey("invite", KEY, "../../victim"),
            ArmedKey("invite", KEY, "Bad"),
            ArmedKey("invite", KEY, None, "../../victim"),
            ArmedKey("invite", KEY, None, "0123456789ABCDEF"),
        ]:
            self.assertRaises(ValueError, self.store.claim_armed_key, "beta", forged, ARMED_AT)
        self.assertEqual(contents(self.store.path), before)
        self.assertFalse(os.path.exists(victim))

    def test_expiredWithTicket(self):
        """
        A key claimed at its expiry is not stored, the peer gets no
        metadata, nobody is noted as having used the invite, and the invite
        is disarmed.
        """
        [pending, legacy] = armInvite(self.store)
        self.assertIsNone(self.store.claim_armed_key("beta", legacy, EXPIRES_AT))
        self.assertEqual(self.store.meta("beta"), {})
        self.assertIsNone(self.store.used_invite(ARMED_AT))
        self.assertIsNone(self.store.claim_armed_key("beta", pending, ARMED_AT))
        self.assertEqual(contents(self.store.path), ["peers"])

    def test_pendingKeyGone(self):
        """
        Once claudectl took the pending key, the invite's other keys are not
        claimed: no key, no metadata, nobody noted.
        """
        [_, legacy] = armInvite(self.store)
        os.unlink(self.pendingPath)
        self.assertIsNone(self.store.claim_armed_key("gamma", legacy, ARMED_AT))
        self.assertEqual(self.store.peers(), [])
        self.assertEqual(self.store.meta("gamma"), {})
        self.assertIsNone(self.store.used_invite(ARMED_AT))
        self.assertEqual(contents(self.store.path), ["peers"])

    def test_invalidIdAfterUse(self):
        """
        An invalid peer id is refused as such before the invite is looked
        at, even once the invite is used or expired.
        """
        [pending, legacy] = armInvite(self.store)
        self.store.claim_armed_key("beta", pending, ARMED_AT)
        for when in [ARMED_AT, EXPIRES_AT]:
            self.assertRaises(InvalidPeerId, self.store.claim_armed_key, "../x", legacy, when)
        self.assertEqual(self.store.used_invite(ARMED_AT).peer_id, "beta")


class ArmedNoteTests(SynchronousTestCase):
    """
    The armed keys' note and the files it names.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.peers = self.store.peers_path()
        self.notePath = os.path.join(self.peers, "_pending.meta")

    def editNote(self, **fields) -> None:
        with open(self.notePath) as f:
            note = json.load(f)
        note.update(fields)
        writeJSON(self.notePath, note)

    def test_pendingFormRecorded(self):
        """
        The pending key of an invite claimed by a connector is noted as used
        with its form, which the next claim is told.
        """
        [_, legacy] = armInvite(self.store)
        self.assertEqual(self.store.claim_pending_key("beta", ARMED_AT + 1), KEY)
        used = self.store.used_invite(ARMED_AT)
        self.assertEqual(
            (used.form, used.peer_id, used.at, used.expires_at), ("invite", "beta", ARMED_AT + 1, EXPIRES_AT)
        )
        error = self.assertRaises(
            keystore.InviteUsed, self.store.claim_armed_key, "gamma", legacy, ARMED_AT + 2
        )
        self.assertEqual(
            str(error),
            "this invite was already used: beta paired with its link or pair code "
            "at 1970-01-01 00:16:41 UTC; make a new invite",
        )

    def test_pairKeyClaimedEndsInvite(self):
        """
        A pending key armed by C{relaymesh pair} over an invite's, claimed
        by a connector, ends what was left of the invite: its other key,
        strong code, ticket and note are removed.
        """
        [_, legacy] = armInvite(self.store)
        self.store.set_pending_key(OTHER_KEY)
        self.assertEqual(self.store.claim_pending_key("beta", ARMED_AT), OTHER_KEY)
        self.assertEqual(contents(self.store.path), ["peers", "peers/beta.key"])
        self.assertIsNone(self.store.claim_armed_key("gamma", legacy, ARMED_AT))
        self.assertIsNone(self.store.take_strong_code(ARMED_AT))

    def test_nothingPendingChangesNothing(self):
        """
        A connector's claim that finds no pending key (claudectl took it)
        gets nothing and changes nothing stored.
        """
        armInvite(self.store)
        os.unlink(os.path.join(self.peers, "_pending.key"))
        before = contents(self.store.path)
        self.assertIsNone(self.store.claim_pending_key("beta", ARMED_AT))
        self.assertEqual(contents(self.store.path), before)

    def test_damagedForm(self):
        """
        A pending form in the note that is not a form name counts as the
        pair code's, when listed and when claimed.
        """
        for form in [5, "Not A Form", None]:
            store = KeyStore(self.mktemp())
            armInvite(store)
            with open(os.path.join(store.peers_path(), "_pending.meta")) as f:
                note = json.load(f)
            note["pending_form"] = form
            writeJSON(os.path.join(store.peers_path(), "_pending.meta"), note)
            [pending, legacy] = store.armed_keys(ARMED_AT)
            self.assertEqual((pending.form, legacy.form), ("pair_code", "invite_legacy"))
            self.assertEqual(store.claim_pending_key("beta", ARMED_AT), KEY)
            self.assertEqual(store.used_invite(ARMED_AT).form, "pair_code")

    def test_damagedSlots(self):
        """
        Slots in the note that are not form names are ignored: listing and
        disarming go on with the valid ones.
        """
        armInvite(self.store)
        self.editNote(slots=[7, "../../victim", "Bad", None, "invite_legacy"])
        [pending, legacy] = self.store.armed_keys(ARMED_AT)
        self.assertEqual((pending.key, legacy.key, legacy.slot), (KEY, LEGACY_KEY, "invite_legacy"))
        self.assertTrue(self.store.disarm())
        self.assertEqual(contents(self.store.path), ["peers"])

    def test_slotFileGone(self):
        """
        A slot whose key file is gone is left out of the armed keys.
        """
        armInvite(self.store)
        os.unlink(os.path.join(self.peers, "_pending.invite_legacy.key"))
        [pending] = self.store.armed_keys(ARMED_AT)
        self.assertEqual(pending.key, KEY)

    def test_expiredLeavesNothing(self):
        """
        Listing the armed keys at the invite's expiry disarms every form of
        it: no key, ticket, note or strong code is left.
        """
        armInvite(self.store)
        self.assertEqual(self.store.armed_keys(EXPIRES_AT), [])
        self.assertEqual(contents(self.store.path), ["peers"])

    def test_strayArmedKeys(self):
        """
        Disarming removes armed keys no note names (left by an arm that
        crashed before writing its note), and says something was armed; it
        leaves every other file, peers' keys whose names look alike
        included.
        """
        self.store.set_key("workstation_2", KEY)
        make_private_directory(self.store.path)
        kept = ["_pending.Old.key", "_pending.notes", "workstation_2.key"]
        for name in ["_pending.invite_legacy.key", "_pending.Old.key", "_pending.notes"]:
            with open(os.path.join(self.peers, name), "w") as f:
                f.write(KEY.hex())
            os.chmod(os.path.join(self.peers, name), 0o600)
        self.assertIs(self.store.disarm(), True)
        self.assertEqual(sorted(os.listdir(self.peers)), kept)
        self.assertIs(self.store.disarm(), False)

    def test_orphanTicket(self):
        """
        Disarming removes an invite's ticket no note names, taken or not,
        and says something was armed; other files stay.
        """
        make_private_directory(self.store.path)
        for name in [
            "invite-0123456789abcdef.ticket",
            "invite-fedcba9876543210.taken",
            "invite-link.txt",
            "notes.ticket",
        ]:
            open(os.path.join(self.store.path, name), "w").close()
        self.assertIs(self.store.disarm(), True)
        self.assertEqual(sorted(os.listdir(self.store.path)), ["invite-link.txt", "notes.ticket"])

    def test_armKeepsStrongCodeAlone(self):
        """
        Arming an invite without a strong code leaves a strong code armed
        on its own (C{pair --strong}) as it is.
        """
        self.store.arm_strong_code("7-gem-oak", EXPIRES_AT)
        armInvite(self.store, strongCode=None)
        self.assertEqual(self.store.take_strong_code(ARMED_AT), "7-gem-oak")


class StrongCodeFileTests(SynchronousTestCase):
    """
    The strong code's file: damaged files refused, one attempt per code.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.path = os.path.join(self.store.path, "strong-code")

    def test_damaged(self):
        """
        A file that is not a JSON object with a code is refused with one
        line naming it, and left for the user to delete.
        """
        self.store.arm_strong_code(STRONG_CODE, None)
        for content in [b"{", b"[1, 2]", b'"7-ace-act"', b'{"code": 7}', b'{"expires_at": 1}', b"\xff"]:
            with open(self.path, "wb") as f:
                f.write(content)
            for call in [self.store.take_strong_code, self.store.strong_code_armed]:
                error = self.assertRaises(KeyStoreError, call, ARMED_AT)
                self.assertEqual(str(error), f"{self.path} is damaged; delete it")
            with open(self.path, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_takenLeavesNothing(self):
        """
        A code taken for an attempt leaves no file behind.
        """
        self.store.arm_strong_code(STRONG_CODE, None)
        self.assertEqual(self.store.take_strong_code(ARMED_AT), STRONG_CODE)
        self.assertEqual(os.listdir(self.store.path), [])

    def test_attemptDisarmsInvite(self):
        """
        A strong code attempt uses its invite up on disk too: the pending
        key is gone (claudectl sharing the directory cannot pair with it),
        and so is every other form; the use is told until the invite would
        have expired.
        """
        armInvite(self.store)
        self.assertEqual(self.store.take_strong_code(ARMED_AT + 1), STRONG_CODE)
        self.assertIsNone(self.store.pending_key())
        self.assertEqual(contents(self.store.path), ["invite-used", "peers"])
        used = self.store.used_invite(EXPIRES_AT - 1)
        self.assertEqual(
            (used.form, used.peer_id, used.at, used.expires_at, used.had_strong_code),
            ("strong_code", None, ARMED_AT + 1, EXPIRES_AT, True),
        )
        self.assertIsNone(self.store.used_invite(EXPIRES_AT))
