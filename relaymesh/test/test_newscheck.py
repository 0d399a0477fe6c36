"""
Tests for C{tools/newscheck.py}, the check that a change users can see adds
a news fragment: each case is a small git repository made in a temporary
directory.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from relaymesh.test.checkout import load_tools

TOOLS = load_tools("newscheck")

PYPROJECT = """\
[tool.towncrier]
directory = "newsfragments"
[[tool.towncrier.type]]
directory = "feature"
[[tool.towncrier.type]]
directory = "misc"
"""


class NewsCheckTests(unittest.TestCase):
    """
    A change since the last release that touches the package passes only
    with a fragment or a C{No-news:} reason; fragments must be well named.
    """

    def setUp(self) -> None:
        if TOOLS is None:
            raise unittest.SkipTest("no checkout with tools/newscheck.py here")
        if shutil.which("git") is None:
            raise unittest.SkipTest("git is not installed")
        self.newscheck = TOOLS[0]
        self.root = self.mktemp()
        os.makedirs(os.path.join(self.root, "newsfragments"))
        self.git("init", "-q")
        self.write("pyproject.toml", PYPROJECT)
        self.write("relaymesh/node.py", "x = 1\n")
        self.write("NEWS.rst", "news\n")
        self.commit("release")

    def git(self, *args: str) -> str:
        """Run git in the repository; its standard output."""
        return subprocess.run(
            ["git", "-C", self.root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
            check=True, capture_output=True, text=True,
        ).stdout

    def write(self, path: str, text: str) -> None:
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def check(self, *args: str, root: str | None = None) -> tuple[int, str]:
        """Run the check on a repository: its status and what it printed."""
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            status = self.newscheck.main(["--root", root or self.root, *args])
        return status, out.getvalue()

    def test_release_alone_passes(self) -> None:
        status, out = self.check()
        self.assertEqual(status, 0, out)
        self.assertIn("0 commit(s) since", out)

    def test_package_change_without_fragment_fails(self) -> None:
        self.write("relaymesh/node.py", "x = 2\n")
        self.commit("change the node")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertIn("relaymesh/node.py", out)
        self.assertIn("no fragment was added", out)

    def test_plugin_change_without_fragment_fails(self) -> None:
        self.write("twisted/plugins/relaymesh_plugin.py", "x = 1\n")
        self.commit("plugin")
        self.assertEqual(self.check()[0], 1)

    def test_fragment_added_later_passes(self) -> None:
        self.write("relaymesh/node.py", "x = 2\n")
        self.commit("change the node")
        self.write("newsfragments/15.feature", "Nodes say hello.\n")
        self.commit("news")
        self.assertEqual(self.check(), (0, f"newscheck: ok (2 commit(s) since {self.base()})\n"))

    def base(self) -> str:
        """The abbreviated hash of the release commit, made in setUp."""
        return self.git("log", "-1", "--format=%H", "--", "NEWS.rst").strip()[:12]

    def test_no_news_reason_passes(self) -> None:
        self.write("relaymesh/node.py", "x: int = 1\n")
        self.commit("Annotate the node\n\nNo-news: annotations only.")
        self.assertEqual(self.check()[0], 0)

    def test_no_news_without_reason_fails(self) -> None:
        self.write("relaymesh/node.py", "x: int = 1\n")
        self.commit("Annotate the node\n\nNo-news:")
        self.assertEqual(self.check()[0], 1)

    def test_test_change_needs_no_fragment(self) -> None:
        self.write("relaymesh/test/test_node.py", "pass\n")
        self.write("docs/x.rst", "x\n")
        self.commit("tests and docs")
        self.assertEqual(self.check()[0], 0)

    def test_fragment_before_release_does_not_count(self) -> None:
        """
        A fragment from before the last release does not cover a later
        change: the change is compared from the release.
        """
        self.write("newsfragments/1.feature", "Old news.\n")
        self.write("NEWS.rst", "news, released\n")
        self.commit("release 2")
        self.write("relaymesh/node.py", "x = 3\n")
        self.commit("change")
        self.assertEqual(self.check()[0], 1)

    def test_base_option(self) -> None:
        self.write("relaymesh/node.py", "x = 2\n")
        self.commit("change")
        self.assertEqual(self.check("--base", "HEAD")[0], 0)
        self.assertEqual(self.check("--base", "HEAD~1")[0], 1)

    def test_unknown_base(self) -> None:
        status, out = self.check("--base", "no-such-revision")
        self.assertEqual(status, 2)
        self.assertIn("unknown base 'no-such-revision'", out)

    def test_bad_fragment_names(self) -> None:
        for name in ["15.feat", "feature.15", "15", "x.feature", "15.feature.x"]:
            self.write("newsfragments/" + name, "news\n")
        self.commit("bad names")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertEqual(out.count("not a fragment name"), 5, out)

    def test_empty_fragment(self) -> None:
        self.write("newsfragments/15.feature", "\n")
        self.write("newsfragments/15.misc", "")
        self.write("newsfragments/15.feature.2", "More news.\n")
        self.write("newsfragments/README.rst", "How to write news.\n")
        self.commit("fragments")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertEqual(out, "newscheck: newsfragments/15.feature: empty; say what users will notice\n")

    def test_no_release_in_full_history(self) -> None:
        self.git("rm", "-q", "NEWS.rst")
        self.commit("no news file")
        self.git("checkout", "-q", "--orphan", "fresh")
        self.commit("a history without NEWS.rst")
        status, out = self.check()
        self.assertEqual(status, 2)
        self.assertIn("no commit changed NEWS.rst", out)

    def test_shallow_clone_compares_what_it_has(self) -> None:
        """
        A clone whose history stops after the release is compared in full,
        and the check says it was shallow.
        """
        self.write("relaymesh/node.py", "x = 2\n")
        self.commit("change")
        clone = self.mktemp()
        subprocess.run(
            ["git", "clone", "-q", "--depth", "1", "file://" + os.path.abspath(self.root), clone],
            check=True, capture_output=True,
        )
        status, out = self.check(root=clone)
        self.assertEqual(status, 1, out)
        self.assertIn("no fragment was added", out)
