"""
Sphinx configuration of relaymesh's documentation: the pages of docs/ and the
README as one site, with the API reference that pydoctor builds from the
package's Epytext docstrings (as Twisted builds its own documentation).

Build it, failing on any warning of either tool, from the checkout's root::

    sphinx-build -W --keep-going -n -b html docs docs/_build/html

The build needs no network: nothing is fetched from another site's
inventory. The narrative pages link into the API reference through the
inventory that pydoctor writes first (roles such as
``:py:class:`relaymesh.RelayService```), which -n checks too.
"""

import pathlib
import re
import shutil

_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The package's version, read without importing the package.
release = version = re.search(
    r'^__version__ = "([^"]+)"$',
    (_ROOT / "relaymesh" / "_version.py").read_text(encoding="utf-8"),
    re.MULTILINE,
)[1]

# The "include-read" event (the README's image path, below).
needs_sphinx = "7.3"

project = "relaymesh"
author = "the relaymesh authors"
copyright = "the relaymesh authors"

extensions = [
    # Only for the links from these pages into the API reference, whose
    # inventory pydoctor writes locally; no other inventory is configured.
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
]

root_doc = "index"
exclude_patterns = ["_build"]
# Cross-references must resolve (sphinx-build -n): there are none to Python's
# or Twisted's documentation, which would need their inventories.
nitpicky = True
intersphinx_mapping: dict[str, object] = {}

html_theme = "alabaster"
html_title = f"relaymesh {release}"
html_theme_options = {"description": "A peer-to-peer relay mesh for Twisted"}
html_static_path: list[str] = []

# The API reference: pydoctor runs before Sphinx reads the pages; when Sphinx
# is done, pydoctor's HTML replaces the site's api/ directory (whose
# api/index.rst is a placeholder that puts it in the table of contents).
# pydoctor's warnings become Sphinx warnings, so -W fails the build on them;
# --warnings-as-errors says the same to pydoctor itself. The tests
# (relaymesh.test) are left out; names with a leading underscore are private,
# behind the "Toggle Private API" switch of its pages.
pydoctor_args = [
    "--project-name=relaymesh",
    f"--project-version={release}",
    "--project-url=../index.html",
    f"--project-base-dir={_ROOT}",
    "--docformat=epytext",
    "--privacy=HIDDEN:relaymesh.test",
    "--warnings-as-errors",
    "--html-output={outdir}/api",
    str(_ROOT / "relaymesh"),
]
pydoctor_url_path = "api/"


def _readme_from_docs(app, relative_path, parent_docname, content):
    """
    The README names its image by its path from the checkout's root, as a
    repository host shows it; the site includes the README from docs/, so
    the image is named from there.
    """
    if relative_path.name == "README.rst":
        content[0] = content[0].replace(".. image:: docs/", ".. image:: ")


def _drop_placeholder(app, exception):
    """
    Remove what Sphinx made of the API reference's placeholder page, which
    pydoctor's extension moves aside to api.sphinx_files, so that the site
    holds only what it shows.
    """
    if exception is None and app.builder.name == "html":
        shutil.rmtree(pathlib.Path(app.outdir) / "api.sphinx_files", ignore_errors=True)


def setup(app):
    app.connect("include-read", _readme_from_docs)
    # after pydoctor's extension (priority 500) has put its pages in place
    app.connect("build-finished", _drop_placeholder, priority=600)
