"""
Tests for L{relaymesh.cli}, the C{relaymesh} command.
"""

import json
import os
import re
import subprocess
import sys
from io import StringIO
from typing import TYPE_CHECKING

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import relaymesh
from relaymesh.cli import dashboard, dialling, fleet, keys, live, pairing, security
from relaymesh.cli import main as cli_main
from relaymesh.cli.base import Command, CommandError, format_last_seen
from relaymesh.cli.main import COMMANDS, main
from relaymesh.codes import parse_pair_code
from relaymesh.keystore import KeyStore

PAIR_CODE = "0123-4567-89ab-cdef"
PAIR_KEY = bytes.fromhex(
    "0123456789abcdef0cefa825d0c8e8e9532ee8a118abe7d8570762cd38be9818"
)
CODE_PATTERN = r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}"

#: The directory holding the relaymesh package.
PROJECT_ROOT = FilePath(relaymesh.__file__).parent().parent().path


if TYPE_CHECKING:
    # what the mixin expects of the test case it is mixed into
    _CaseBase = SynchronousTestCase
else:
    _CaseBase = object


class CommandTestsMixin(_CaseBase):
    """
    Run C{relaymesh} in-process against a fresh data directory.
    """

    def setUp(self):
        self.dataDir = os.path.join(self.mktemp(), "data")
        self.store = KeyStore(self.dataDir)

    def runCommand(self, *argv: str, dataDir: bool = True) -> tuple[int, str, str]:
        """
        Run the command with C{argv}, adding C{--data-dir} unless told not to.

        @return: the exit status, standard output and standard error.
        """
        stdout, stderr = StringIO(), StringIO()
        args = list(argv) + (["--data-dir", self.dataDir] if dataDir else [])
        status = main(args, stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def assertSucceeds(self, *argv: str) -> str:
        """
        Assert that the command succeeds silently on standard error.

        @return: its standard output.
        """
        status, out, err = self.runCommand(*argv)
        self.assertEqual((status, err), (0, ""))
        return out

    def assertFailsWith(self, message: str, *argv: str) -> None:
        """
        Assert that the command exits with status 2 and one error line
        containing C{message}, and prints nothing on standard output.
        """
        status, out, err = self.runCommand(*argv)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("relaymesh: error: "), err)
        self.assertTrue(err.endswith("\n"))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn("Traceback", err)
        self.assertIn(message, err)


class IdentityCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh identity}.
    """

    def test_text(self):
        """
        The identity is created on first use and printed alone.
        """
        out = self.assertSucceeds("identity")
        self.assertEqual(out, self.store.identity() + "\n")
        self.assertRegex(out, r"\A[a-z0-9_-]+-[0-9a-f]{8}\n\Z")
        self.assertEqual(self.assertSucceeds("identity"), out)

    def test_json(self):
        """
        With C{--json} it prints C{{"identity": ID}}.
        """
        self.store.set_identity("laptop-a3f2")
        out = self.assertSucceeds("identity", "--json")
        self.assertEqual(json.loads(out), {"identity": "laptop-a3f2"})
        self.assertEqual(out.count("\n"), 1)

    def test_globalOptionsBeforeCommand(self):
        """
        C{--data-dir} and C{--json} may come before the subcommand.
        """
        self.store.set_identity("laptop-a3f2")
        stdout, stderr = StringIO(), StringIO()
        status = main(
            ["--json", "--data-dir", self.dataDir, "identity"],
            stdout=stdout,
            stderr=stderr,
        )
        self.assertEqual((status, stderr.getvalue()), (0, ""))
        self.assertEqual(json.loads(stdout.getvalue()), {"identity": "laptop-a3f2"})

    def test_mixedOptions(self):
        """
        One option may come before the subcommand and another after it.
        """
        self.store.set_identity("laptop-a3f2")
        stdout = StringIO()
        status = main(
            ["--data-dir", self.dataDir, "identity", "--json"],
            stdout=stdout,
            stderr=StringIO(),
        )
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(stdout.getvalue()), {"identity": "laptop-a3f2"})

    def test_defaultDataDir(self):
        """
        Without C{--data-dir}, C{$RELAYMESH_HOME} is used.
        """
        old = os.environ.get("RELAYMESH_HOME")
        os.environ["RELAYMESH_HOME"] = self.dataDir
        if old is None:
            self.addCleanup(os.environ.pop, "RELAYMESH_HOME", None)
        else:
            self.addCleanup(os.environ.__setitem__, "RELAYMESH_HOME", old)
        self.store.set_identity("from-env")
        status, out, err = self.runCommand("identity", dataDir=False)
        self.assertEqual((status, out, err), (0, "from-env\n", ""))

    def test_emptyDataDir(self):
        """
        An empty C{--data-dir} is an error.
        """
        status, out, err = self.runCommand("identity", "--data-dir", "", dataDir=False)
        self.assertEqual(status, 2)
        self.assertEqual(err, "relaymesh: error: --data-dir must not be empty\n")

    def test_invalidIdentityFile(self):
        """
        A damaged identity file is reported on one line, naming the file.
        """
        os.makedirs(self.dataDir)
        with open(os.path.join(self.dataDir, "identity"), "w") as f:
            f.write("not valid!")
        self.assertFailsWith(os.path.join(self.dataDir, "identity"), "identity")

    def test_dataDirIsAFile(self):
        """
        A file system error is reported on one line.
        """
        os.makedirs(os.path.dirname(self.dataDir))
        with open(self.dataDir, "w"):
            pass
        self.assertFailsWith(self.dataDir, "identity")


class PairCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh pair}.
    """

    def test_text(self):
        """
        C{pair} arms the key of a new pair code as pending and prints the
        code and how the other node accepts it.
        """
        self.store.set_identity("laptop-a3f2")
        out = self.assertSucceeds("pair")
        match = re.fullmatch(
            rf"Pair code: ({CODE_PATTERN})\n"
            rf"On the other node, run: relaymesh accept ({CODE_PATTERN}) laptop-a3f2\n",
            out,
        )
        self.assertIsNotNone(match, out)
        self.assertEqual(match.group(1), match.group(2))
        self.assertEqual(self.store.pending_key(), parse_pair_code(match.group(1)))
        self.assertEqual(self.store.peers(), [])

    def test_json(self):
        """
        With C{--json} it prints the code and this node's identity.
        """
        out = self.assertSucceeds("pair", "--json")
        result = json.loads(out)
        self.assertEqual(sorted(result), ["code", "identity"])
        self.assertRegex(result["code"], rf"\A{CODE_PATTERN}\Z")
        self.assertEqual(result["identity"], self.store.identity())
        self.assertEqual(self.store.pending_key(), parse_pair_code(result["code"]))

    def test_newCodeEachTime(self):
        """
        Each C{pair} replaces the pending key with a new one.
        """
        first = json.loads(self.assertSucceeds("pair", "--json"))["code"]
        second = json.loads(self.assertSucceeds("pair", "--json"))["code"]
        self.assertNotEqual(first, second)
        self.assertEqual(self.store.pending_key(), parse_pair_code(second))


class AcceptCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh accept}.
    """

    def test_text(self):
        """
        C{accept CODE PEER_ID} stores the code's key for the peer.
        """
        out = self.assertSucceeds("accept", PAIR_CODE, "laptop-a3f2")
        self.assertEqual(out, "Stored the key for laptop-a3f2.\n")
        self.assertEqual(self.store.key("laptop-a3f2"), PAIR_KEY)
        self.assertIsNone(self.store.pending_key())

    def test_replace(self):
        """
        Accepting again replaces the peer's key, and says so.
        """
        self.assertSucceeds("accept", PAIR_CODE, "laptop-a3f2")
        out = self.assertSucceeds(
            "accept", "ffee-ddcc-bbaa-9988", "laptop-a3f2", "--json"
        )
        self.assertEqual(json.loads(out), {"peer_id": "laptop-a3f2", "replaced": True})
        self.assertEqual(
            self.store.key("laptop-a3f2"), parse_pair_code("ffee-ddcc-bbaa-9988")
        )
        out = self.assertSucceeds("accept", PAIR_CODE, "laptop-a3f2")
        self.assertEqual(
            out, "Stored the key for laptop-a3f2, replacing its previous key.\n"
        )

    def test_json(self):
        """
        With C{--json} it prints the peer id and whether a key was replaced.
        """
        out = self.assertSucceeds("--json", "accept", PAIR_CODE, "laptop-a3f2")
        self.assertEqual(json.loads(out), {"peer_id": "laptop-a3f2", "replaced": False})

    def test_badCode(self):
        """
        A code without 16 hex digits is refused and nothing is stored.
        """
        self.assertFailsWith(
            "a pair code has 16 hex digits, found 7",
            "accept",
            "0123-456",
            "laptop-a3f2",
        )
        self.assertEqual(self.store.peers(), [])

    def test_badPeerId(self):
        """
        An invalid peer id, or the pending key's name, is refused.
        """
        self.assertFailsWith("invalid peer id", "accept", PAIR_CODE, "../evil")
        self.assertFailsWith("reserved", "accept", PAIR_CODE, "_pending")
        self.assertIsNone(self.store.pending_key())
        self.assertEqual(self.store.peers(), [])

    def test_missingArguments(self):
        """
        C{accept} needs a code and a peer id: a usage error, status 2.
        """
        status, out, err = self.runCommand("accept", PAIR_CODE)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            "relaymesh accept: error: the following arguments are required: PEER_ID\n"
            "Run 'relaymesh accept --help' for its options.\n",
        )
        self.assertNotIn("Traceback", err)


class PeersCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh peers}.
    """

    def test_empty(self):
        """
        Without peers, it says so and that no key is pending.
        """
        out = self.assertSucceeds("peers")
        self.assertEqual(out, "No paired peers.\nPending pairing key: none\n")
        self.assertEqual(
            json.loads(self.assertSucceeds("peers", "--json")),
            {"peers": [], "pending": False, "pending_expires_at": None},
        )

    def populate(self) -> None:
        """
        Pair two peers, one with metadata, and arm a pending key.
        """
        self.store.set_key("ci-runner-9d1e", PAIR_KEY)
        self.store.update_meta(
            "ci-runner-9d1e", addr="10.0.0.7:9847", last_seen=1764180000000
        )
        self.store.set_key("b", PAIR_KEY)
        self.store.set_pending_key(PAIR_KEY)

    def test_table(self):
        """
        Each peer is listed with its address and when it was last seen, in
        ISO 8601 UTC or C{never}.
        """
        self.populate()
        out = self.assertSucceeds("peers")
        self.assertEqual(
            out,
            "PEER ID         ADDRESS        SOURCE  LAST SEEN             PAIRED  VIA\n"
            "b               -              -       never                 -       -\n"
            "ci-runner-9d1e  10.0.0.7:9847  -       2025-11-26T18:00:00Z  -       -\n"
            "Pending pairing key: armed\n",
        )

    def test_json(self):
        """
        With C{--json} it prints the peers and whether a key is pending.
        """
        self.populate()
        out = self.assertSucceeds("--json", "peers")
        self.assertEqual(
            json.loads(out),
            {
                "peers": [
                    {
                        "peer_id": "b",
                        "addr": None,
                        "stored_address": None,
                        "address_source": None,
                        "last_seen": None,
                        "paired_at": None,
                        "paired_via": None,
                    },
                    {
                        "peer_id": "ci-runner-9d1e",
                        "addr": "10.0.0.7:9847",
                        "stored_address": None,
                        "address_source": None,
                        "last_seen": "2025-11-26T18:00:00Z",
                        "paired_at": None,
                        "paired_via": None,
                    },
                ],
                "pending": True,
                "pending_expires_at": None,
            },
        )

    def test_oddMetadata(self):
        """
        Metadata of the wrong types shows as unknown.
        """
        self.store.set_key("peer-a", PAIR_KEY)
        self.store.update_meta(
            "peer-a", addr=5, last_seen="yesterday", paired_at=-1, paired_via=7
        )
        out = self.assertSucceeds("peers", "--json")
        self.assertEqual(
            json.loads(out)["peers"],
            [
                {
                    "peer_id": "peer-a",
                    "addr": None,
                    "stored_address": None,
                    "address_source": None,
                    "last_seen": None,
                    "paired_at": None,
                    "paired_via": None,
                }
            ],
        )

    def test_insecurePendingKey(self):
        """
        A pending key file others can read is reported with the fix.
        """
        self.store.set_pending_key(PAIR_KEY)
        path = os.path.join(self.dataDir, "peers", "_pending.key")
        os.chmod(path, 0o644)
        self.assertFailsWith(f"run: chmod 600 {path}", "peers")


class ForgetCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh forget}.
    """

    def test_forget(self):
        """
        C{forget PEER_ID} removes the peer's key and metadata.
        """
        self.store.set_key("peer-a", PAIR_KEY)
        self.store.update_meta("peer-a", addr="h:1")
        self.store.set_key("peer-b", PAIR_KEY)
        self.assertEqual(self.assertSucceeds("forget", "peer-a"), "Forgot peer-a.\n")
        self.assertEqual(self.store.peers(), ["peer-b"])
        self.assertEqual(self.store.meta("peer-a"), {})
        out = self.assertSucceeds("forget", "peer-b", "--json")
        self.assertEqual(json.loads(out), {"forgotten": "peer-b"})
        self.assertEqual(self.store.peers(), [])

    def test_unknown(self):
        """
        Forgetting an unknown peer is an error.
        """
        self.assertFailsWith("no such peer: peer-a", "forget", "peer-a")

    def test_invalid(self):
        """
        Forgetting an invalid id is an error.
        """
        self.assertFailsWith("invalid peer id", "forget", "a/b")
        self.assertFailsWith("reserved", "forget", "_pending")


class ParserTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for usage errors, help and the table of subcommands.
    """

    def test_noCommand(self):
        """
        A subcommand is required.
        """
        status, out, err = self.runCommand()
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("relaymesh: error: "), err)
        self.assertNotIn("usage:", err)

    def test_unknownCommand(self):
        """
        An unknown subcommand is a usage error.
        """
        status, out, err = self.runCommand("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("invalid choice: 'frobnicate'", err)

    def test_unknownOption(self):
        """
        An unknown option is a usage error.
        """
        status, out, err = self.runCommand("peers", "--frob")
        self.assertEqual(status, 2)
        self.assertIn("unrecognized arguments: --frob", err)

    def test_help(self):
        """
        C{--help} lists every subcommand on standard output, status 0.
        """
        status, out, err = self.runCommand("--help", dataDir=False)
        self.assertEqual((status, err), (0, ""))
        for name in [
            "identity",
            "pair",
            "accept",
            "peers",
            "forget",
            "--data-dir",
            "--json",
        ]:
            self.assertIn(name, out)

    def test_version(self):
        """
        C{--version} prints the version.
        """
        from relaymesh._version import __version__

        status, out, err = self.runCommand("--version", dataDir=False)
        self.assertEqual((status, out), (0, f"relaymesh {__version__}\n"))

    def test_commandTable(self):
        """
        L{COMMANDS} lists every command module's commands once, in the
        order of the modules, and C{--help} lists them all in that order
        with their help.
        """
        names = [command.name for command in COMMANDS]
        self.assertEqual(
            names,
            [
                "identity",
                "pair",
                "accept",
                "peers",
                "forget",
                "peer",
                "status",
                "send",
                "broadcast",
                "watch",
                "connect",
                "disconnect",
                "dashboard",
                "sessions",
                "invite",
                "join",
                "discover",
                "tls-init",
                "tls-unpin",
                "mark-legacy",
            ],
        )
        self.assertEqual(len(set(names)), len(names))
        self.assertEqual(
            COMMANDS,
            keys.COMMANDS
            + live.COMMANDS
            + dialling.COMMANDS
            + dashboard.COMMANDS
            + fleet.COMMANDS
            + pairing.COMMANDS
            + security.COMMANDS,
        )
        status, out, err = self.runCommand("--help", dataDir=False)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(re.findall(r"^    (\S+)  ", out, re.MULTILINE), names)
        words = " ".join(out.split())
        for command in COMMANDS:
            self.assertIn(f" {command.name} {command.help} ", words + " ")

    def test_tableCommand(self):
        """
        A command in the table runs with its own arguments, its exit status
        is the command's, and its L{CommandError}s are reported like the
        built-in ones.
        """
        calls = []

        def addArguments(parser):
            parser.add_argument("word")

        def run(context, args):
            calls.append((context.data_dir, context.json_output, args.word))
            if args.word == "fail":
                raise CommandError("it failed")
            context.emit({"word": args.word}, args.word.upper())
            return 3

        self.patch(
            cli_main, "COMMANDS", COMMANDS + (Command("echo", "echo a word", addArguments, run),)
        )
        self.assertEqual(self.runCommand("echo", "hi"), (3, "HI\n", ""))
        self.assertEqual(
            self.runCommand("echo", "hi", "--json"), (3, '{"word": "hi"}\n', "")
        )
        self.assertEqual(
            self.runCommand("echo", "fail"), (2, "", "relaymesh: error: it failed\n")
        )
        self.assertEqual(calls[0], (self.dataDir, False, "hi"))


class FormatLastSeenTests(SynchronousTestCase):
    """
    Tests for L{format_last_seen}.
    """

    def test_epochMilliseconds(self):
        """
        Epoch milliseconds are shown in ISO 8601 UTC to the second.
        """
        self.assertEqual(format_last_seen(0), "1970-01-01T00:00:00Z")
        self.assertEqual(format_last_seen(1764180000999), "2025-11-26T18:00:00Z")

    def test_unusable(self):
        """
        Values that are not usable times give L{None}.
        """
        for value in [None, True, -1, 1.5, "1764180000000", 10**30]:
            self.assertIsNone(format_last_seen(value), value)


class ModuleEntryTests(SynchronousTestCase):
    """
    Tests for C{python -m relaymesh}.
    """

    def test_identity(self):
        """
        C{python -m relaymesh identity --data-dir DIR} runs the command.
        """
        dataDir = self.mktemp()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [PROJECT_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        result = subprocess.run(
            [sys.executable, "-m", "relaymesh", "identity", "--data-dir", dataDir],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, KeyStore(dataDir).identity() + "\n")

    def test_error(self):
        """
        An error ends C{python -m relaymesh} with status 2 and one line.
        """
        dataDir = self.mktemp()
        env = dict(os.environ)
        env["PYTHONPATH"] = PROJECT_ROOT
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "relaymesh",
                "forget",
                "nobody",
                "--data-dir",
                dataDir,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr, "relaymesh: error: no such peer: nobody\n")
