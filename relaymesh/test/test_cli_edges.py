"""
Tests for the last rough edges of the C{relaymesh} command: usage errors
are one line and a pointer to C{--help}.
"""

from __future__ import annotations

from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.cli.main import main


def run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = StringIO(), StringIO()
    status = main(argv, stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


class UsageErrorTests(SynchronousTestCase):
    """
    Usage errors are one line, C{relaymesh CMD: error: ...}, and a pointer
    to C{relaymesh CMD --help}; exit status 2. C{--help} is unchanged.
    """

    def usage(self, *argv: str) -> str:
        status, out, err = run(list(argv))
        self.assertEqual((argv, status, out), (argv, 2, ""))
        self.assertNotIn("usage:", err)
        return err

    def test_top(self):
        self.assertEqual(
            self.usage(),
            "relaymesh: error: the following arguments are required: COMMAND\n"
            "Run 'relaymesh --help' for its options.\n",
        )
        err = self.usage("bogus")
        self.assertTrue(err.startswith("relaymesh: error: argument COMMAND: invalid choice: 'bogus'"), err)
        self.assertEqual(err.count("\n"), 2)
        self.assertEqual(
            self.usage("--nope", "status"),
            "relaymesh: error: unrecognized arguments: --nope\nRun 'relaymesh --help' for its options.\n",
        )

    def test_subcommands(self):
        self.assertEqual(
            self.usage("invite", "--expires", "x"),
            "relaymesh invite: error: argument --expires: 'x' is not a number of minutes\n"
            "Run 'relaymesh invite --help' for its options.\n",
        )
        self.assertEqual(
            self.usage("send", "beta"),
            "relaymesh send: error: the following arguments are required: MSG_TYPE, JSON\n"
            "Run 'relaymesh send --help' for its options.\n",
        )
        self.assertEqual(
            self.usage("peer", "set-address", "beta"),
            "relaymesh peer set-address: error: the following arguments are required: ADDRESS\n"
            "Run 'relaymesh peer set-address --help' for its options.\n",
        )

    def test_help_unchanged(self):
        for argv in (["--help"], ["invite", "--help"]):
            status, out, err = run(argv)
            self.assertEqual((status, err), (0, ""))
            self.assertTrue(out.startswith(f"usage: relaymesh {argv[0] + ' ' if len(argv) > 1 else ''}"), out)
            self.assertIn("--data-dir DIR", out)
