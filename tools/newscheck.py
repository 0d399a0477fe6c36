#!/usr/bin/env python3
"""
Check that a change users can see comes with a news fragment.

A change is the commits from a base to HEAD. The base is, by default, the
last commit that changed NEWS.rst (the last release: ``towncrier build``
writes NEWS.rst); ``--base REV`` names another (a branch point, say). When
the change touches the package (``relaymesh/`` outside its tests, or the
twistd plugin) it must add a fragment to ``newsfragments/``, or one of its
commits must say why not on a line of its message::

    No-news: only type annotations; nothing users see changes.

Every fragment present must also be well named (``<issue>.<type>`` or
``<issue>.<type>.<n>``, with a type of pyproject.toml's towncrier
configuration) and, unless its type is ``misc``, not empty.

Exit status 0 when the change passes, 1 when it does not (with one line
per problem), 2 when the check cannot run (not a git checkout, unknown
base). In a shallow clone whose history does not reach the base, only the
commits it has are compared, and the check says so.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: towncrier brings tomli
    import tomli as tomllib

FRAGMENTS = "newsfragments"
NEWS = "NEWS.rst"
# What users run: the package and its plugin; tests are not.
WATCHED = ("relaymesh/", "twisted/plugins/")
UNWATCHED = ("relaymesh/test/",)
# Files towncrier itself ignores in the fragments directory.
NOT_FRAGMENTS = {"README.rst", ".gitignore"}
NO_NEWS = re.compile(r"^No-news:\s*\S", re.MULTILINE)


class CheckError(Exception):
    """The check cannot run; the message says why."""


def git(root: Path, *args: str) -> str:
    """Run git in C{root} and return its standard output."""
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise CheckError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def fragment_types(root: Path) -> set[str]:
    """The fragment types of pyproject.toml's towncrier configuration."""
    with open(root / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    return {t["directory"] for t in config["tool"]["towncrier"]["type"]}


def fragment_problems(root: Path, types: set[str]) -> list[str]:
    """One line for each fragment that is badly named or empty."""
    problems = []
    directory = root / FRAGMENTS
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.name in NOT_FRAGMENTS:
            continue
        parts = path.name.split(".")
        if not (2 <= len(parts) <= 3 and parts[0].isdigit() and parts[1] in types
                and (len(parts) == 2 or parts[2].isdigit())):
            problems.append(
                f"{FRAGMENTS}/{path.name}: not a fragment name; use <issue>.<type>,"
                f" a type among {', '.join(sorted(types))}"
            )
        elif parts[1] != "misc" and not path.read_text(encoding="utf-8").strip():
            problems.append(f"{FRAGMENTS}/{path.name}: empty; say what users will notice")
    return problems


def default_base(root: Path) -> str | None:
    """
    The last commit that changed NEWS.rst, or L{None} if the history we have
    has none. In a shallow clone, the oldest commit it has seems to add
    every file: it is not taken for a change to NEWS.rst.
    """
    found = git(root, "log", "-1", "--format=%H", "--", NEWS).strip()
    shallow_file = Path(root, git(root, "rev-parse", "--git-path", "shallow").strip())
    if found and shallow_file.exists() and found in shallow_file.read_text().split():
        return None
    return found or None


def change_problems(root: Path, base: str | None) -> tuple[list[str], str]:
    """
    Compare C{base} with HEAD.

    @return: the problems, and a line describing what was compared.
    """
    shallow = git(root, "rev-parse", "--is-shallow-repository").strip() == "true"
    if base is None:
        if not shallow:
            raise CheckError(f"no commit changed {NEWS}; give --base")
        # The history we have does not reach the release: compare all of it,
        # its oldest commit with the empty tree.
        revisions = "HEAD"
        since = git(root, "hash-object", "-t", "tree", "/dev/null").strip()
    else:
        try:
            git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
        except CheckError:
            raise CheckError(f"unknown base {base!r}") from None
        revisions, since = f"{base}..HEAD", base
    commits = git(root, "rev-list", revisions).split()
    if base is None:
        described = f"the {len(commits)} commit(s) of this shallow clone"
    else:
        described = f"{len(commits)} commit(s) since {base[:12]}"
    if not commits:
        return [], described
    changed = git(root, "diff", "--name-only", since, "HEAD").split()
    added = git(root, "diff", "--name-only", "--diff-filter=AM", since, "HEAD", "--", FRAGMENTS).split()
    watched = [p for p in changed if p.startswith(WATCHED) and not p.startswith(UNWATCHED)]
    if not watched:
        return [], described
    added = [p for p in added if Path(p).name not in NOT_FRAGMENTS]
    if added:
        return [], described
    messages = git(root, "log", "--format=%B", revisions)
    if NO_NEWS.search(messages):
        return [], described
    first = ", ".join(watched[:3]) + (" ..." if len(watched) > 3 else "")
    return [
        f"{len(watched)} file(s) users run changed ({first}) but no fragment was added"
        f" to {FRAGMENTS}/; add one (see {FRAGMENTS}/README.rst) or say why not"
        " with a 'No-news: <reason>' line in a commit message"
    ], described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--base", help="compare from this revision (default: the last change to NEWS.rst)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout (default: the one this script is in)")
    options = parser.parse_args(argv)
    root = options.root
    try:
        base = options.base or default_base(root)
        problems = fragment_problems(root, fragment_types(root))
        more, described = change_problems(root, base)
    except (CheckError, OSError, KeyError) as e:
        print(f"newscheck: cannot check: {e}", file=sys.stderr)
        return 2
    problems += more
    for problem in problems:
        print(f"newscheck: {problem}", file=sys.stderr)
    if not problems:
        print(f"newscheck: ok ({described})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
