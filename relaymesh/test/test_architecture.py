"""
The layout of the package, as docs/architecture.rst describes it: no import
cycle (counting imports inside functions and under C{TYPE_CHECKING}), the
layering rules, and the size limits of modules and classes.

These read the source with L{ast}; nothing is imported.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import relaymesh

#: The package's directory.
PACKAGE = os.path.dirname(os.path.abspath(relaymesh.__file__))

#: Lines a module may have at most.
MAX_MODULE_LINES = 700

#: Lines a class may have at most.
MAX_CLASS_LINES = 450

#: Modules that production code never imports: test support.
TEST_ONLY = ("twisted.internet.testing", "twisted.test", "relaymesh.test", "relaymesh.testing")

#: (importer prefix, imported prefix): imports the layering forbids.
FORBIDDEN = [
    # the mesh knows its extensions only through narrow interfaces
    ("relaymesh.mesh", "relaymesh.routing"),
    ("relaymesh.mesh", "relaymesh.reliable"),
    # a connection talks to one owner, and knows no factory or service
    ("relaymesh.connection", "relaymesh.mesh"),
    ("relaymesh.connection", "relaymesh.acceptor"),
    ("relaymesh.connection", "relaymesh.dialer"),
    ("relaymesh.connection", "relaymesh.service"),
    # the handshake roles are plain objects: no connection, no mesh
    ("relaymesh.handshake", "relaymesh.connection"),
    ("relaymesh.handshake", "relaymesh.mesh"),
    ("relaymesh.handshake", "relaymesh.pairing"),
    # the control plane sees the node through INode, never the service
    ("relaymesh.control", "relaymesh.service"),
    # nothing below the command line imports it
    ("relaymesh.service", "relaymesh.cli"),
    ("relaymesh.control", "relaymesh.cli"),
    # routing and reliable delivery do not know each other's modules,
    # except the wire fields of a reliable message
    ("relaymesh.routing", "relaymesh.reliable.outbox"),
    ("relaymesh.routing", "relaymesh.reliable.store"),
    ("relaymesh.reliable", "relaymesh.routing"),
    # the session sources publish through the mesh's interface only
    ("relaymesh.sessions", "relaymesh.mesh"),
    ("relaymesh.sessions", "relaymesh.service"),
    ("relaymesh.sessions", "relaymesh.control"),
]


def _modules() -> dict[str, str]:
    """
    Every module of the package but its tests: dotted name -> path.
    """
    found = {}
    root = os.path.dirname(PACKAGE)
    for directory, subdirectories, files in os.walk(PACKAGE):
        subdirectories[:] = [d for d in subdirectories if d not in ("test", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _is_package(path: str) -> bool:
    return os.path.basename(path) == "__init__.py"


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """
    What C{module} imports anywhere in its source: other modules of the
    package (resolved to the modules, not the names in them) and outside
    modules, by dotted name.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # "from relaymesh import pairing" imports a module, not a name
            # of the package
            submodules = {f"{origin}.{alias.name}" for alias in node.names} & known
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(origin)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        module: {name for name in _imports(module, path, known) if name in known and name != module}
        for module, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected components of more than one module (Tarjan).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class CycleFinderTests(SynchronousTestCase):
    """
    The cycle finder finds cycles (so that finding none means something).
    """

    def test_finds_a_cycle(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(_cycles(graph), [["a", "b", "c"]])

    def test_none_in_a_tree(self) -> None:
        self.assertEqual(_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}), [])


class LayoutTests(SynchronousTestCase):
    """
    The package as its architecture says.
    """

    def test_modules_found(self) -> None:
        """
        The walk sees the package's modules and their imports, including
        those made inside functions.
        """
        graph = _graph()
        self.assertIn("relaymesh.mesh", graph)
        self.assertIn("relaymesh.control.api", graph)
        self.assertIn("relaymesh.connection", graph["relaymesh.mesh"])
        self.assertIn("relaymesh.control.api", graph["relaymesh.service"])

    def test_no_import_cycle(self) -> None:
        """
        No module of the package imports, even indirectly, a module that
        imports it.
        """
        self.assertEqual(_cycles(_graph()), [])

    def test_layering(self) -> None:
        """
        No module imports across the layering's forbidden lines.
        """
        graph = _graph()
        crossings = [
            f"{module} imports {target}"
            for module, targets in sorted(graph.items())
            for target in sorted(targets)
            for importer, imported in FORBIDDEN
            if _under(module, importer) and _under(target, imported)
        ]
        self.assertEqual(crossings, [])

    def test_no_test_support_in_production(self) -> None:
        """
        Only relaymesh.testing imports test support.
        """
        modules = _modules()
        known = set(modules)
        found = [
            f"{module} imports {name}"
            for module, path in sorted(modules.items())
            if not _under(module, "relaymesh.testing")
            for name in sorted(_imports(module, path, known))
            if any(_under(name, forbidden) for forbidden in TEST_ONLY)
        ]
        self.assertEqual(found, [])

    def test_sizes(self) -> None:
        """
        No module over L{MAX_MODULE_LINES} lines, no class over
        L{MAX_CLASS_LINES}.
        """
        too_big = []
        for module, path in sorted(_modules().items()):
            with open(path, encoding="utf-8") as f:
                source = f.read()
            lines = source.count("\n")
            if lines > MAX_MODULE_LINES:
                too_big.append(f"module {module}: {lines} lines")
            for node in ast.walk(ast.parse(source, path)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > MAX_CLASS_LINES:
                        too_big.append(f"class {module}.{node.name}: {size} lines")
        self.assertEqual(too_big, [])


class TestModulesTests(SynchronousTestCase):
    """
    Test modules share helpers only through relaymesh.testing and the test
    package's support modules, never by importing each other.
    """

    def test_no_test_imports_another(self) -> None:
        tests = os.path.join(PACKAGE, "test")
        found = []
        for name in sorted(os.listdir(tests)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(tests, name), encoding="utf-8") as f:
                tree = ast.parse(f.read(), name)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "relaymesh.test.test_"
                ):
                    found.append(f"{name} imports {node.module}")
                elif isinstance(node, ast.ImportFrom) and node.module == "relaymesh.test":
                    found.extend(
                        f"{name} imports relaymesh.test.{a.name}"
                        for a in node.names
                        if a.name.startswith("test_")
                    )
        self.assertEqual(found, [])


class PackagingTests(SynchronousTestCase):
    """
    What C{pip install .} installs: every package of the source tree.
    """

    def test_every_package_listed(self):
        """
        C{setup.cfg} lists each directory of the package that has an
        C{__init__.py}; one left out would be missing from an installed
        node (and its import would fail only there).
        """
        import configparser

        from twisted.trial.unittest import SkipTest

        setup = os.path.join(os.path.dirname(PACKAGE), "setup.cfg")
        if not os.path.isfile(setup):
            raise SkipTest("relaymesh is installed, not run from its checkout")
        config = configparser.ConfigParser()
        config.read(setup)
        listed = set(config["options"]["packages"].split())
        root = os.path.dirname(PACKAGE)
        found = {
            os.path.relpath(directory, root).replace(os.sep, ".")
            for directory, _, files in os.walk(PACKAGE)
            if "__init__.py" in files and "__pycache__" not in directory
        }
        self.assertEqual(sorted(found - listed), [])

