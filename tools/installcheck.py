#!/usr/bin/env python3
"""
Check that relaymesh works however it is installed.

    python tools/installcheck.py wheel      # build sdist and wheel, install the wheel
    python tools/installcheck.py editable   # pip install -e the checkout
    python tools/installcheck.py all        # both

Each mode makes a fresh virtual environment in a temporary directory,
installs relaymesh there (with its test extras), and then, from a directory
outside the checkout:

- checks that relaymesh is imported from where that install puts it (the
  venv's site-packages for the wheel, the checkout when editable);
- checks that C{twistd --help} lists the relaymesh plugin;
- runs a short trial run (by default the plugin tests and the integration tests, which
  start real C{twistd relaymesh} processes on 127.0.0.1 and pair them).

The wheel mode builds with C{python -m build} (the sdist, then the wheel
from the sdist), and checks that the sdist carries the tests, docs, news and
plugin file, and that the wheel ships the plugin but no
C{twisted/__init__.py} or C{twisted/plugins/__init__.py} (either would hide
Twisted's own plugins). Everything is removed afterwards.

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ("relaymesh.test.test_service.PluginTests", "relaymesh.test.test_integration")

# Paths (inside the sdist's top directory) that must be there.
SDIST_MUST_HAVE = (
    "setup.cfg",
    "pyproject.toml",
    "README.rst",
    "NEWS.rst",
    "LICENSE",
    "tox.ini",
    "twisted/plugins/relaymesh_plugin.py",
    "relaymesh/py.typed",
    "relaymesh/test/test_service.py",
    "relaymesh/test/fixtures/claudectl-0.49.2-handshake.ndjson",
    "docs/index.rst",
    "docs/conf.py",
    "docs/architecture.rst",
    "newsfragments/README.rst",
    "bench/run.py",
    "tools/newscheck.py",
)
WHEEL_MUST_HAVE = (
    "twisted/plugins/relaymesh_plugin.py",
    "relaymesh/py.typed",
    "relaymesh/wordlist.txt",
    "relaymesh/control/dashboard.html",
)
WHEEL_MUST_NOT_HAVE = ("twisted/__init__.py", "twisted/plugins/__init__.py")


class CheckFailed(Exception):
    """A check failed; the message says which and why."""


def run(args: Sequence[str | Path], cwd: Path, what: str, timeout: float = 900) -> str:
    """
    Run a command to completion and return its output; a non-zero exit
    fails the check, with the output's last lines.
    """
    started = time.monotonic()
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise CheckFailed(f"{what} failed (exit {done.returncode}):\n{tail}")
    print(f"  {what}: ok ({time.monotonic() - started:.0f} s)")
    return output


def make_venv(where: Path) -> Path:
    """A fresh virtual environment; its C{bin} directory."""
    run([sys.executable, "-m", "venv", where], where.parent, "make a virtual environment")
    return where / "bin"


def check_installed(bin_dir: Path, expected_root: Path, work: Path, tests: Sequence[str]) -> None:
    """The checks every install must pass, run from outside the checkout."""
    imported = run(
        [bin_dir / "python", "-c", "import relaymesh, os; print(os.path.realpath(relaymesh.__file__))"],
        work, "import relaymesh",
    ).strip()
    if not Path(imported).is_relative_to(expected_root.resolve()):
        raise CheckFailed(f"relaymesh was imported from {imported}, not from {expected_root}")
    listing = run([bin_dir / "twistd", "--help"], work, "twistd --help")
    if not any(line.split()[:1] == ["relaymesh"] for line in listing.splitlines()):
        raise CheckFailed("twistd --help does not list the relaymesh plugin")
    run([bin_dir / "relaymesh", "--version"], work, "relaymesh --version")
    if tests:
        output = run([bin_dir / "trial", "--temp-directory", work / "_trial_temp", *tests], work, "trial " + " ".join(tests))
        # trial's last line: PASSED (skips=N, successes=M)
        print("    " + output.strip().splitlines()[-1])


def check_wheel(tmp: Path, tests: Sequence[str]) -> None:
    print("wheel: build the sdist, then the wheel from it, and install the wheel")
    dist = tmp / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, CHECKOUT], tmp, "python -m build")
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = [path for path in SDIST_MUST_HAVE if path not in names]
    if missing:
        raise CheckFailed(f"the sdist lacks {', '.join(missing)}")
    stray = sorted(name for name in names if "__pycache__" in name or name.endswith("dropin.cache"))
    if stray:
        raise CheckFailed(f"the sdist carries build leftovers: {', '.join(stray[:5])}")
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    missing = [path for path in WHEEL_MUST_HAVE if path not in members]
    if missing:
        raise CheckFailed(f"the wheel lacks {', '.join(missing)}")
    hiding = [path for path in WHEEL_MUST_NOT_HAVE if path in members]
    if hiding:
        raise CheckFailed(f"the wheel ships {', '.join(hiding)}, which would hide Twisted's own modules")
    print(f"  sdist and wheel contents: ok ({len(names)} and {len(members)} files)")
    bin_dir = make_venv(tmp / "venv")
    run([bin_dir / "pip", "install", "--quiet", f"relaymesh[test] @ {wheel.as_uri()}"], tmp, "pip install the wheel")
    check_installed(bin_dir, tmp / "venv", tmp, tests)


def check_editable(tmp: Path, tests: Sequence[str]) -> None:
    print("editable: pip install -e the checkout")
    bin_dir = make_venv(tmp / "venv")
    run([bin_dir / "pip", "install", "--quiet", "-e", f"{CHECKOUT}[test]"], tmp, "pip install -e")
    check_installed(bin_dir, CHECKOUT, tmp, tests)


MODES = {"wheel": check_wheel, "editable": check_editable}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("mode", choices=[*MODES, "all"])
    parser.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS),
                        help="the trial test names to run from each install (none: only the import and plugin checks)")
    options = parser.parse_args(argv)
    modes = list(MODES) if options.mode == "all" else [options.mode]
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"relaymesh-{mode}-") as tmp:
            try:
                MODES[mode](Path(tmp), options.tests)
            except (CheckFailed, subprocess.TimeoutExpired, ValueError) as e:
                print(f"installcheck: {mode}: {e}", file=sys.stderr)
                return 1
    print(f"installcheck: ok ({', '.join(modes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
