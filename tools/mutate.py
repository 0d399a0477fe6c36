"""
Mutation testing of relaymesh's security-critical modules.

Coverage says that a line ran; a mutant says whether a test would notice
it changing. This tool makes every one-token change of the modules it is
given (a comparison flipped, a condition forced, a constant moved, a
C{raise} or C{return} dropped, a call deleted...), runs each changed
module against the tests that execute the changed line, and reports which
changes no test noticed.

Run it from a checkout, in an environment with the test extras::

    python tools/mutate.py                      # every group (minutes)
    python tools/mutate.py wire                 # one group
    python tools/mutate.py relaymesh/wire.py    # one module (under a minute)
    python tools/mutate.py --list               # the groups and their tests

How it works:

  1. A baseline run, in a child process, runs the group's tests once each
     under a line tracer limited to the mutated modules, and records which
     lines every test runs and how long it takes. The baseline must pass.
  2. Each mutant runs in a forked child, which imports relaymesh afresh with
     the one module replaced by its mutated code, then runs the tests that
     ran the changed lines (fastest first) and stops at the first failure.
     A mutant of code that runs at import time (module constants, class
     bodies, defaults) runs against all of the group's tests. A mutant of a
     line that no test runs is reported as a survivor without being run.
  3. A child that outlives its time (five times its tests' baseline, plus
     three seconds) is killed, by its process group, and counted as timed
     out: a mutant that makes the code loop is caught.

Mutants that change nothing a test could observe (a speed shortcut, an
equivalent rewrite) are listed, each with the reason, in the files of
C{tools/mutation-equivalents/} (one per group); they are not run, and the score leaves
them out::

    score = (killed + timed out) / (tried - equivalent)

C{--check-equivalents} runs them anyway and names any a test now kills;
entries that match no mutant any more are reported as stale, and entries
whose line is written in several places are named (the reason must hold
at each).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.abc
import importlib.util
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EQUIVALENTS = os.path.join(HERE, "mutation-equivalents")


@dataclasses.dataclass(frozen=True)
class Group:
    """
    Modules mutated together, and the unit tests they are measured against.
    """

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


def _tests(*names: str) -> tuple[str, ...]:
    return tuple("relaymesh.test." + name for name in names)


_HANDSHAKE_TESTS = _tests(
    "test_handshake",
    "test_handshake_v2",
    "test_pake",
    "test_attacks",
    "test_protocol",
    "test_tls",
    "test_factory",
    "test_mesh",
    "test_keystore",
    "test_invite",
)

#: The security-critical modules, by group. Only unit tests are listed: they
#: run on the in-memory network and a fake clock, so thousands of runs take
#: minutes.
GROUPS: tuple[Group, ...] = (
    Group(
        "handshake",
        (
            "relaymesh/handshake/acceptor.py",
            "relaymesh/handshake/base.py",
            "relaymesh/handshake/connector.py",
            "relaymesh/handshake/pake.py",
            "relaymesh/handshake/proofs.py",
            "relaymesh/pairing.py",
        ),
        _HANDSHAKE_TESTS,
    ),
    Group(
        "link",
        ("relaymesh/tls.py", "relaymesh/connection.py"),
        _HANDSHAKE_TESTS + _tests("test_fuzz", "test_flood", "test_delivery"),
    ),
    Group(
        "wire",
        ("relaymesh/wire.py",),
        _tests("test_wire", "test_fuzz", "test_protocol", "test_routing", "test_delivery"),
    ),
    Group(
        "routing",
        (
            "relaymesh/routing/table.py",
            "relaymesh/routing/router.py",
            "relaymesh/routing/seal.py",
        ),
        _tests(
            "test_routing",
            "test_router",
            "test_seal",
            "test_routed_attacks",
            "test_delivery",
            "test_simulation",
        ),
    ),
    Group(
        "codes",
        ("relaymesh/codes.py", "relaymesh/joinforms.py", "relaymesh/peerid.py"),
        _tests("test_codes", "test_peerid", "test_invite", "test_pake", "test_keystore", "test_join_errors"),
    ),
    Group(
        "keystore",
        (
            "relaymesh/keystore.py",
            "relaymesh/keyfiles.py",
            "relaymesh/armed.py",
            "relaymesh/files.py",
            "relaymesh/tickets.py",
        ),
        _tests(
            "test_keystore",
            "test_invite",
            "test_invite_once",
            "test_join_replace",
            "test_cli_security",
            "test_pake",
        ),
    ),
)


# --- the mutants ------------------------------------------------------------

_CMP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}

_BIN_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitAnd,
}

#: Calls whose string arguments are messages for people (logs): changing
#: them changes nothing a program reads.
_LOG_METHODS = frozenset({"msg", "err", "info", "warn", "debug", "error", "failure", "critical"})


@dataclasses.dataclass(frozen=True)
class Mutant:
    """
    One change of one module: the C{index}th node of the module in
    L{_walk}'s order, changed in the C{variant}th way L{_changes} lists.
    """

    path: str
    index: int
    variant: int
    line: int
    lines: tuple[int, int]
    in_function: bool
    source_line: str
    before: str
    after: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def change(self) -> str:
        return f"{self.before} -> {self.after}"

    @property
    def key(self) -> tuple[str, str, str]:
        """
        What an equivalents entry names: the module, the text of the line,
        the change. Line numbers move with edits; these do not.
        """
        return (self.path, self.source_line, self.change)


@dataclasses.dataclass
class _Context:
    in_function: bool = False
    quiet_strings: bool = False


def _short(node: ast.AST) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 70 else text[:67] + "..."


def _docstring_ids(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                found.add(id(body[0]))
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _is_message_call(node: ast.AST) -> bool:
    """
    A log call, or an error built: its strings are words for people.
    """
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if isinstance(func, ast.Attribute) and name in _LOG_METHODS:
        return True
    return name.endswith(("Error", "Failure", "Exception", "Refused"))


def _walk(tree: ast.Module) -> Iterator[tuple[ast.AST, _Context, Callable[[ast.AST], None]]]:
    """
    Every node that may be mutated, in a fixed order, with its context and a
    function that puts a replacement node in its place.
    """
    docstrings = _docstring_ids(tree)

    def visit(node: ast.AST, context: _Context) -> Iterator:
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment"):
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and field == "decorator_list":
                continue
            is_list = isinstance(value, list)
            children = value if is_list else [value]
            for position, child in enumerate(children):
                if not isinstance(child, ast.AST) or id(child) in docstrings:
                    continue
                if isinstance(child, ast.JoinedStr) or _is_type_checking(child):
                    continue
                if isinstance(child, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in child.targets
                ):
                    continue

                def replace(new: ast.AST, node=node, field=field, position=position, is_list=is_list) -> None:
                    if is_list:
                        getattr(node, field)[position] = new
                    else:
                        setattr(node, field, new)

                inner = dataclasses.replace(context)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and field == "body":
                    inner.in_function = True
                if isinstance(child, ast.ClassDef):
                    inner.in_function = False
                if isinstance(child, ast.Raise) or _is_message_call(child):
                    inner.quiet_strings = True
                yield child, inner, replace
                yield from visit(child, inner)

    yield from visit(tree, _Context())


def _changes(node: ast.AST, context: _Context) -> list[tuple[str, Callable[[ast.AST, Callable], None]]]:
    """
    The ways L{node} may be changed: (description of the new node, function
    that makes the change given the node and its replacer).
    """
    out: list[tuple[str, Callable]] = []

    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            for new in _CMP_SWAPS.get(type(op), ()):
                def change(n, _replace, k=k, new=new):
                    n.ops[k] = new()
                out.append(("cmp", change))
    elif isinstance(node, ast.BoolOp):
        new_op = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append(("boolop", lambda n, _r, new_op=new_op: setattr(n, "op", new_op())))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAPS:
        new_op = _BIN_SWAPS[type(node.op)]
        out.append(("binop", lambda n, _r, new_op=new_op: setattr(n, "op", new_op())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("not", lambda n, replace: replace(n.operand)))
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            out.append(("const", lambda n, _r: setattr(n, "value", not n.value)))
        elif isinstance(value, int):
            out.append(("const", lambda n, _r: setattr(n, "value", n.value + 1)))
            out.append(("const", lambda n, _r: setattr(n, "value", n.value - 1 if n.value else 2)))
        elif isinstance(value, float):
            out.append(("const", lambda n, _r: setattr(n, "value", n.value * 2 if n.value else 1.0)))
        elif isinstance(value, (str, bytes)) and not context.quiet_strings:
            mark = "XX" if isinstance(value, str) else b"XX"
            out.append(("const", lambda n, _r, mark=mark: setattr(n, "value", mark + n.value + mark)))

    if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
        forced = (False,) if isinstance(node, ast.While) else (True, False)
        for value in forced:
            out.append(("test", lambda n, _r, value=value: setattr(n, "test", ast.Constant(value))))
    elif isinstance(node, ast.Return) and node.value is not None and not isinstance(node.value, ast.Constant):
        # (A constant returned is changed as a constant.)
        out.append(("return", lambda n, _r: setattr(n, "value", ast.Constant(None))))
    elif isinstance(node, ast.Raise):
        out.append(("drop", lambda n, replace: replace(ast.Pass())))
    elif isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)):
        out.append(("drop", lambda n, replace: replace(ast.Pass())))
    elif isinstance(node, ast.AugAssign):
        out.append(("drop", lambda n, replace: replace(ast.Pass())))
    elif isinstance(node, ast.Break):
        out.append(("swap", lambda n, replace: replace(ast.Continue())))
    elif isinstance(node, ast.Continue):
        out.append(("swap", lambda n, replace: replace(ast.Break())))
    return out


def _apply(source: str, path: str, index: int, variant: int) -> tuple[ast.Module, str, str]:
    """
    Parse C{source} and make one change; return the new tree, and the text
    of what changed, before and after.
    """
    tree = ast.parse(source, path)
    for position, (node, context, replace) in enumerate(_walk(tree)):
        if position != index:
            continue
        kind, change = _changes(node, context)[variant]
        # A forced condition reads as the condition, not its whole statement.
        shown = node.test if kind == "test" else node
        before = _short(shown)
        holder: list[ast.AST] = [node]

        # change() calls it at once, within this iteration
        def replacer(new: ast.AST) -> None:
            ast.copy_location(new, node)  # noqa: B023
            replace(new)  # noqa: B023
            holder[0] = new  # noqa: B023

        change(node, replacer)
        ast.fix_missing_locations(tree)
        after = node.test if kind == "test" else holder[0]
        return tree, before, _short(after)
    raise LookupError(f"{path}: no node {index}")


def mutants_of(path: str) -> list[Mutant]:
    """
    Every mutant of the module at C{path} (relative to the checkout).
    """
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return mutants_in(f.read(), path)


def mutants_in(source: str, path: str) -> list[Mutant]:
    """
    Every mutant of C{source}, the text of the module at C{path}.
    """
    source_lines = source.splitlines()
    tree = ast.parse(source, path)
    found = []
    for index, (node, context, _replace) in enumerate(_walk(tree)):
        changes = _changes(node, context)
        if not changes:
            continue
        span = node
        if isinstance(node, (ast.If, ast.While)):
            span = node.test
        first, last = span.lineno, span.end_lineno or span.lineno
        for variant in range(len(changes)):
            _tree, before, after = _apply(source, path, index, variant)
            found.append(
                Mutant(
                    path=path,
                    index=index,
                    variant=variant,
                    line=node.lineno,
                    lines=(first, last),
                    in_function=context.in_function,
                    source_line=source_lines[node.lineno - 1].strip(),
                    before=before,
                    after=after,
                )
            )
    return found


def _compile_mutant(mutant: Mutant):
    with open(os.path.join(ROOT, mutant.path), encoding="utf-8") as f:
        source = f.read()
    tree, _before, _after = _apply(source, mutant.path, mutant.index, mutant.variant)
    return compile(tree, os.path.join(ROOT, mutant.path), "exec")


# --- the equivalents file ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Equivalent:
    filename: str
    path: str
    source_line: str
    change: str
    why: str
    at: int


def read_all_equivalents(directory: str = EQUIVALENTS) -> list[Equivalent]:
    """
    Read every C{.txt} file of C{directory} with L{read_equivalents}.
    """
    if not os.path.isdir(directory):
        return []
    entries = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".txt"):
            entries.extend(read_equivalents(os.path.join(directory, name)))
    return entries


def read_equivalents(filename: str) -> list[Equivalent]:
    """
    Read the equivalents file: blocks separated by blank lines, each of the
    form::

        relaymesh/wire.py
          line: <the source line, stripped>
          change: <before> -> <after>
          why: <the reason no test can tell, which may go on
            over more lines, indented further>

    Lines starting with C{#} are comments.
    """
    entries = []
    block: dict[str, str] = {}
    start = 0

    def finish() -> None:
        if not block:
            return
        missing = {"path", "line", "change", "why"} - set(block)
        if missing:
            raise SystemExit(f"{filename}:{start}: entry lacks {', '.join(sorted(missing))}")
        entries.append(Equivalent(filename, block["path"], block["line"], block["change"], block["why"], start))
        block.clear()

    with open(filename, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if line.startswith("#"):
                continue
            if not line.strip():
                finish()
                continue
            if not line.startswith(" "):
                finish()
                block["path"] = line.strip()
                start = number
                continue
            if line.startswith("    ") and "why" in block:
                block["why"] += " " + line.strip()
                continue
            field, _, value = line.strip().partition(":")
            if field not in ("line", "change", "why") or "path" not in block:
                raise SystemExit(f"{filename}:{number}: expected 'line:', 'change:' or 'why:'")
            block[field] = value.strip()
    finish()
    return entries


# --- running ----------------------------------------------------------------


def _purge_relaymesh() -> None:
    for name in [n for n in sys.modules if n == "relaymesh" or n.startswith("relaymesh.")]:
        del sys.modules[name]


def _forget_reactor() -> None:
    """
    Forget the reactor a test module installed as it was imported: each
    child installs its own, instead of sharing this process's poller.
    """
    reactor = sys.modules.pop("twisted.internet.reactor", None)
    if reactor is not None:
        import twisted.internet

        del twisted.internet.reactor
        for reader in list(reactor.getReaders()):
            reactor.removeReader(reader)


def _load_tests(names: Sequence[str]) -> list:
    from twisted.trial import runner
    from twisted.trial._asyncrunner import _iterateTests

    loader = runner.TestLoader()
    tests = []
    for name in names:
        tests.extend(_iterateTests(loader.loadByName(name)))
    return tests


def _quiet_child(workdir: str) -> None:
    """
    Set a forked child up: its own process group (so that the parent can
    kill it and anything it started), its own directory, no output.
    """
    os.setpgrp()
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _run_one(test) -> bool:
    from twisted.trial import reporter

    result = reporter.TestResult()
    test.run(result)
    return result.wasSuccessful()


def _baseline_child(group: Group, modules: Sequence[str], out: str) -> None:
    """
    In a child: run every test of C{group} once, traced, and pickle what
    each runs of C{modules} and its time to C{out}.
    """
    targets = {os.path.join(ROOT, m): m for m in modules}
    current: set[tuple[str, int]] = set()

    def local(frame, event, arg):
        if event == "line":
            current.add((targets[frame.f_code.co_filename], frame.f_lineno))
        return local

    def tracer(frame, event, arg):
        if frame.f_code.co_filename in targets:
            return local
        return None

    sys.settrace(tracer)
    tests = _load_tests(group.tests)
    sys.settrace(None)
    at_import = set(current)
    coverage: dict[str, tuple[frozenset, float]] = {}
    failed = []
    for test in tests:
        current.clear()
        started = time.perf_counter()
        sys.settrace(tracer)
        ok = _run_one(test)
        sys.settrace(None)
        coverage[test.id()] = (frozenset(current), time.perf_counter() - started)
        if not ok:
            failed.append(test.id())
    with open(out, "wb") as f:
        pickle.dump({"at_import": at_import, "tests": coverage, "failed": failed}, f)


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """
    Import one module from a code object instead of its file.
    """

    def __init__(self, name: str, filename: str, code) -> None:
        self.name = name
        self.filename = filename
        self.code = code

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.filename, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(self.code, module.__dict__)


def _mutant_child(mutant: Mutant, tests: Sequence[str]) -> int:
    """
    In a child: import relaymesh with the mutant in place and run C{tests}
    until one fails. Exit status 1 if one did (killed), 0 if none did.
    """
    try:
        code = _compile_mutant(mutant)
    except Exception:
        return 1
    name = mutant.path[: -len(".py")].replace("/", ".")
    sys.meta_path.insert(0, _MutantFinder(name, os.path.join(ROOT, mutant.path), code))
    try:
        loaded = _load_tests(tests)
    except BaseException:
        return 1
    for test in loaded:
        if not _run_one(test):
            return 1
    return 0


@dataclasses.dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, uncovered, equivalent
    seconds: float = 0.0


def _fork(body: Callable[[], int], workdir: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            _quiet_child(workdir)
            status = body()
        finally:
            os._exit(status)
    return pid


def baseline(group: Group, modules: Sequence[str], workroot: str) -> dict:
    out = os.path.join(workroot, f"baseline-{group.name}.pickle")
    workdir = tempfile.mkdtemp(dir=workroot)
    pid = _fork(lambda: _baseline_child(group, modules, out) or 0, workdir)
    _pid, status = os.waitpid(pid, 0)
    if status != 0 or not os.path.exists(out):
        raise SystemExit(f"baseline run of group {group.name} crashed (status {status})")
    with open(out, "rb") as f:
        data = pickle.load(f)
    if data["failed"]:
        raise SystemExit(
            f"baseline of group {group.name}: {len(data['failed'])} tests fail unmutated, "
            f"first {data['failed'][0]}; fix them before mutating"
        )
    return data


def select_tests(mutant: Mutant, data: dict) -> list[str] | None:
    """
    The tests to run against C{mutant}, fastest first; C{None} if no test
    runs its lines.
    """
    lines = {(mutant.path, n) for n in range(mutant.lines[0], mutant.lines[1] + 1)}
    tests = data["tests"]
    if not mutant.in_function or lines & data["at_import"]:
        chosen = list(tests)
    else:
        chosen = [name for name, (covered, _t) in tests.items() if covered & lines]
        if not chosen:
            return None
    return sorted(chosen, key=lambda name: tests[name][1])


def run_mutants(
    work: list[tuple[Mutant, list[str], float]],
    jobs: int,
    workroot: str,
    progress: Callable[[Outcome], None],
) -> list[Outcome]:
    """
    Run each (mutant, tests, time limit) in a forked child, C{jobs} at once.
    """
    pending = list(reversed(work))
    running: dict[int, tuple[Mutant, float, float, str]] = {}
    outcomes = []

    def finish(pid: int, status: str) -> None:
        mutant, started, _deadline, workdir = running.pop(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        outcome = Outcome(mutant, status, time.monotonic() - started)
        outcomes.append(outcome)
        progress(outcome)

    killed_for_time: set[int] = set()
    while pending or running:
        while pending and len(running) < jobs:
            mutant, tests, limit = pending.pop()
            workdir = tempfile.mkdtemp(dir=workroot)
            pid = _fork(lambda m=mutant, t=tests: _mutant_child(m, t), workdir)
            now = time.monotonic()
            running[pid] = (mutant, now, now + limit, workdir)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            if pid in killed_for_time:
                killed_for_time.discard(pid)
                finish(pid, "timeout")
            else:
                code = os.waitstatus_to_exitcode(status)
                finish(pid, "survived" if code == 0 else "killed")
            continue
        now = time.monotonic()
        for child, (_m, _s, deadline, _w) in running.items():
            if now > deadline and child not in killed_for_time:
                killed_for_time.add(child)
                try:
                    os.killpg(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.005)
    return outcomes


# --- the report -------------------------------------------------------------


def _score(counts: dict[str, int]) -> float | None:
    scored = counts["tried"] - counts["equivalent"]
    if not scored:
        return None
    return 100.0 * (counts["killed"] + counts["timeout"]) / scored


def summarise(outcomes: list[Outcome], modules: Sequence[str]) -> dict[str, dict[str, int]]:
    table = {}
    for module in modules:
        counts = dict.fromkeys(("tried", "killed", "timeout", "survived", "uncovered", "equivalent"), 0)
        for outcome in outcomes:
            if outcome.mutant.path == module:
                counts["tried"] += 1
                counts[outcome.status] += 1
        table[module] = counts
    return table


def report(table: dict[str, dict[str, int]], outcomes: list[Outcome], stream=sys.stdout) -> None:
    header = f"{'module':<34} {'tried':>6} {'killed':>6} {'timeout':>7} {'survived':>8} {'equiv':>6} {'score':>7}"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    totals = dict.fromkeys(("tried", "killed", "timeout", "survived", "uncovered", "equivalent"), 0)
    for module, counts in table.items():
        for k in totals:
            totals[k] += counts[k]
        _row(module, counts, stream)
    if len(table) > 1:
        print("-" * len(header), file=stream)
        _row("all", totals, stream)
    survivors = [o for o in outcomes if o.status in ("survived", "uncovered")]
    if survivors:
        print(f"\n{len(survivors)} surviving mutants:", file=stream)
        for outcome in sorted(survivors, key=lambda o: (o.mutant.path, o.mutant.line)):
            m = outcome.mutant
            note = "  [no test runs this line]" if outcome.status == "uncovered" else ""
            print(f"{m.where}: {m.change}{note}", file=stream)


def _row(name: str, counts: dict[str, int], stream) -> None:
    score = _score(counts)
    shown = "-" if score is None else f"{score:.1f}%"
    survived = counts["survived"] + counts["uncovered"]
    print(
        f"{name:<34} {counts['tried']:>6} {counts['killed']:>6} {counts['timeout']:>7} "
        f"{survived:>8} {counts['equivalent']:>6} {shown:>7}",
        file=stream,
    )


# --- the command ------------------------------------------------------------


def _resolve(selection: Sequence[str]) -> list[tuple[Group, list[str]]]:
    if not selection:
        return [(g, list(g.modules)) for g in GROUPS]
    chosen: list[tuple[Group, list[str]]] = []
    for item in selection:
        by_name = [g for g in GROUPS if g.name == item]
        if by_name:
            chosen.append((by_name[0], list(by_name[0].modules)))
            continue
        path = os.path.relpath(os.path.abspath(item), ROOT) if os.path.exists(item) else item
        owners = [g for g in GROUPS if path in g.modules]
        if not owners:
            names = ", ".join(g.name for g in GROUPS)
            raise SystemExit(f"{item!r} is neither a group ({names}) nor a module of one")
        chosen.append((owners[0], [path]))
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/mutate.py",
        description="Mutation testing of relaymesh's security-critical modules.",
    )
    parser.add_argument("selection", nargs="*", help="groups or module paths (default: every group)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument("--list", action="store_true", help="list the groups, their modules and tests")
    parser.add_argument("--json", metavar="FILE", help="also write every outcome to FILE as JSON")
    parser.add_argument(
        "--check-equivalents",
        action="store_true",
        help="run the mutants listed as equivalent too, and name any a test kills",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    if args.list:
        for group in GROUPS:
            print(f"{group.name}:")
            for module in group.modules:
                print(f"  {module}")
            print(f"  tests: {', '.join(t.rsplit('.', 1)[1] for t in group.tests)}")
        return 0

    sys.path.insert(0, ROOT)
    chosen = _resolve(args.selection)
    equivalents = read_all_equivalents()
    matched: dict[tuple[str, str, str], list[Mutant]] = {}
    known = {(e.path, e.source_line, e.change): e for e in equivalents}
    workroot = tempfile.mkdtemp(prefix="relaymesh-mutants-")
    started = time.monotonic()
    outcomes: list[Outcome] = []
    wrongly_equivalent: list[Mutant] = []
    try:
        # Import what the tests use (Twisted, cryptography, hypothesis) once,
        # so that each forked child only imports relaymesh afresh.
        for group, _modules in chosen:
            _load_tests(group.tests)
        _purge_relaymesh()
        _forget_reactor()

        for group, modules in chosen:
            data = baseline(group, modules, workroot)
            work = []
            for module in modules:
                for mutant in mutants_of(module):
                    if mutant.key in known:
                        matched.setdefault(mutant.key, []).append(mutant)
                        outcomes.append(Outcome(mutant, "equivalent"))
                        if not args.check_equivalents:
                            continue
                    tests = select_tests(mutant, data)
                    if tests is None:
                        if mutant.key not in known:
                            outcomes.append(Outcome(mutant, "uncovered"))
                        continue
                    limit = 3.0 + 5 * sum(data["tests"][t][1] for t in tests)
                    work.append((mutant, tests, limit))
            total = len(work)
            done = [0]

            def progress(outcome: Outcome, group=group, total=total, done=done) -> None:
                done[0] += 1
                if not args.quiet:
                    sys.stderr.write(f"\r{group.name}: {done[0]}/{total} mutants run")
                    sys.stderr.flush()

            ran = run_mutants(work, args.jobs, workroot, progress)
            if not args.quiet and total:
                sys.stderr.write("\n")
            for outcome in ran:
                if outcome.mutant.key in known:
                    if outcome.status in ("killed", "timeout"):
                        wrongly_equivalent.append(outcome.mutant)
                    continue
                outcomes.append(outcome)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)

    modules = [m for _g, ms in chosen for m in ms]
    table = summarise(outcomes, modules)
    report(table, outcomes)
    stale = [
        e for e in equivalents
        if e.path in modules and (e.path, e.source_line, e.change) not in matched
    ]
    if stale:
        print(f"\n{len(stale)} equivalents entries match no mutant (stale):")
        for entry in stale:
            print(f"{os.path.relpath(entry.filename, ROOT)}:{entry.at}: {entry.path}: {entry.change}")
    several = {key: mutants for key, mutants in matched.items() if len(mutants) > 1}
    if several:
        # One entry names a line's text: where the same line is written in
        # several places, its reason must hold at each of them.
        print(f"\n{len(several)} equivalents entries match several mutants (the reason must hold for each):")
        for mutants in several.values():
            places = ", ".join(str(m.line) for m in mutants)
            print(f"{mutants[0].path}:{places}: {mutants[0].change}")
    if wrongly_equivalent:
        print(f"\n{len(wrongly_equivalent)} mutants listed as equivalent are killed by a test:")
        for mutant in wrongly_equivalent:
            print(f"{mutant.where}: {mutant.change}")
    print(f"\n{len(outcomes)} mutants in {time.monotonic() - started:.0f} s with {args.jobs} jobs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "modules": table,
                    "outcomes": [
                        {
                            "where": o.mutant.where,
                            "change": o.mutant.change,
                            "status": o.status,
                        }
                        for o in outcomes
                    ],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
