"""
Tests for C{tools/mutate.py} of a checkout: which mutants it makes of a
module, the code it compiles for one, the tests it picks for one, the
equivalents file it reads, and the score it reports. Skipped where there
is no checkout.
"""

from __future__ import annotations

import io
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.test.checkout import load_tools

_tools = load_tools("mutate")
SKIP = None if _tools is not None else "no checkout with tools/mutate.py: relaymesh is installed alone"
if _tools is not None:
    (mutate,) = _tools

SAMPLE = textwrap.dedent(
    '''\
    """The module's docstring."""
    LIMIT = 3


    def check(value, log):
        """A docstring is never mutated."""
        if value > LIMIT and value != 7:
            log.info("too big: {value}", value=value)
            raise ValueError("too big")
        return value + 1


    class Box:
        size = "small"
    '''
)


def _changes(source: str) -> set[tuple[int, str, bool]]:
    return {(m.line, m.change, m.in_function) for m in mutate.mutants_in(source, "sample.py")}


class MutantsTests(SynchronousTestCase):
    """
    The one-token changes made of a module.
    """

    skip = SKIP

    def test_operators(self) -> None:
        """
        Comparisons are flipped and moved across their boundary, boolean
        and arithmetic operators swapped, conditions forced, integers moved
        both ways, C{raise} and calls dropped, C{return} made to return
        L{None}; module constants and class bodies are marked as not in a
        function.
        """
        changes = _changes(SAMPLE)
        expected = {
            (2, "3 -> 4", False),
            (2, "3 -> 2", False),
            (7, "value > LIMIT -> value >= LIMIT", True),
            (7, "value > LIMIT -> value < LIMIT", True),
            (7, "value != 7 -> value == 7", True),
            (7, "value > LIMIT and value != 7 -> value > LIMIT or value != 7", True),
            (7, "value > LIMIT and value != 7 -> True", True),
            (7, "value > LIMIT and value != 7 -> False", True),
            (8, "log.info('too big: {value}', value=value) -> pass", True),
            (9, "raise ValueError('too big') -> pass", True),
            (10, "return value + 1 -> return None", True),
            (10, "value + 1 -> value - 1", True),
            (14, "'small' -> 'XXsmallXX'", False),
        }
        self.assertEqual(expected - changes, set())

    def test_words_for_people_are_left(self) -> None:
        """
        Docstrings, log messages and the messages of errors are not
        mutated: no program reads them.
        """
        changes = {change for _line, change, _f in _changes(SAMPLE)}
        for text in ("docstring", "too big"):
            self.assertEqual([c for c in changes if text in c and "XX" in c], [])

    def test_every_mutant_compiles_and_differs(self) -> None:
        """
        Each mutant's code compiles, and differs from the module's.
        """
        import ast

        original = ast.dump(ast.parse(SAMPLE))
        mutants = mutate.mutants_in(SAMPLE, "sample.py")
        self.assertGreater(len(mutants), 15)
        for mutant in mutants:
            tree, _before, _after = mutate._apply(SAMPLE, "sample.py", mutant.index, mutant.variant)
            compile(tree, "sample.py", "exec")
            self.assertNotEqual(ast.dump(tree), original, mutant.change)

    def test_loops(self) -> None:
        """
        A C{while} condition is only forced false (true would loop for
        ever), and C{break} and C{continue} swap.
        """
        source = "def f(xs):\n    while xs:\n        if xs.pop():\n            break\n        continue\n"
        changes = {change for _line, change, _f in _changes(source)}
        self.assertIn("xs -> False", changes)
        self.assertNotIn("xs -> True", changes)
        self.assertIn("break -> continue", changes)
        self.assertIn("continue -> break", changes)


class SelectTestsTests(SynchronousTestCase):
    """
    The tests a mutant runs against.
    """

    skip = SKIP

    def setUp(self) -> None:
        self.data = {
            "at_import": {("m.py", 1)},
            "tests": {
                "slow": (frozenset({("m.py", 5), ("m.py", 6)}), 2.0),
                "fast": (frozenset({("m.py", 5)}), 0.1),
                "other": (frozenset({("m.py", 9)}), 0.5),
            },
        }

    def _mutant(self, lines: tuple[int, int], in_function: bool = True):
        return mutate.Mutant("m.py", 0, 0, lines[0], lines, in_function, "x", "a", "b")

    def test_covering_tests_fastest_first(self) -> None:
        """
        A mutant in a function runs the tests that ran one of its lines,
        the fastest first.
        """
        self.assertEqual(mutate.select_tests(self._mutant((5, 5)), self.data), ["fast", "slow"])
        self.assertEqual(mutate.select_tests(self._mutant((6, 9)), self.data), ["other", "slow"])

    def test_uncovered(self) -> None:
        """
        A mutant of a line no test runs gets no tests.
        """
        self.assertIsNone(mutate.select_tests(self._mutant((7, 7)), self.data))

    def test_import_time(self) -> None:
        """
        A mutant outside functions, or of a line run at import, runs every
        test.
        """
        everything = ["fast", "other", "slow"]
        self.assertEqual(mutate.select_tests(self._mutant((7, 7), in_function=False), self.data), everything)
        self.assertEqual(mutate.select_tests(self._mutant((1, 1)), self.data), everything)


class EquivalentsTests(SynchronousTestCase):
    """
    The file of mutants that change nothing observable.
    """

    skip = SKIP

    def _write(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def test_read(self) -> None:
        """
        Each block names a module, a line, a change and why it is
        equivalent; a reason may go on over several lines, and comments
        are skipped.
        """
        path = self._write(
            """\
            # comment
            relaymesh/wire.py
              line: if seen > 16:
              change: seen > 16 -> seen >= 16
              why: a speed shortcut:
                the full count follows

            relaymesh/codes.py
              line: x = 1
              change: 1 -> 2
              why: unused
            """
        )
        entries = mutate.read_equivalents(path)
        self.assertEqual(
            [(e.path, e.source_line, e.change, e.why) for e in entries],
            [
                ("relaymesh/wire.py", "if seen > 16:", "seen > 16 -> seen >= 16", "a speed shortcut: the full count follows"),
                ("relaymesh/codes.py", "x = 1", "1 -> 2", "unused"),
            ],
        )

    def test_reason_required(self) -> None:
        """
        An entry without a reason is refused, naming its line.
        """
        path = self._write("relaymesh/wire.py\n  line: x\n  change: a -> b\n")
        error = self.assertRaises(SystemExit, mutate.read_equivalents, path)
        self.assertIn(":1: entry lacks why", str(error))

    def test_keys_match(self) -> None:
        """
        An entry matches a mutant by module, line text and change, so that
        it survives edits that move the line.
        """
        mutant = [m for m in mutate.mutants_in(SAMPLE, "sample.py") if m.change == "3 -> 4"][0]
        self.assertEqual(mutant.key, ("sample.py", "LIMIT = 3", "3 -> 4"))


class ReportTests(SynchronousTestCase):
    """
    The report: counts and score per module, and the survivors.
    """

    skip = SKIP

    def test_score(self) -> None:
        """
        The score counts killed and timed-out mutants out of those not
        equivalent; survivors are listed with where and what.
        """
        mutants = [m for m in mutate.mutants_in(SAMPLE, "sample.py")][:6]
        statuses = ["killed", "killed", "timeout", "survived", "uncovered", "equivalent"]
        outcomes = [mutate.Outcome(m, s) for m, s in zip(mutants, statuses)]
        table = mutate.summarise(outcomes, ["sample.py"])
        self.assertEqual(
            table["sample.py"],
            {"tried": 6, "killed": 2, "timeout": 1, "survived": 1, "uncovered": 1, "equivalent": 1},
        )
        self.assertEqual(mutate._score(table["sample.py"]), 60.0)
        stream = io.StringIO()
        mutate.report(table, outcomes, stream)
        text = stream.getvalue()
        self.assertIn("60.0%", text)
        self.assertIn("2 surviving mutants:", text)
        self.assertIn(f"sample.py:{mutants[4].line}: {mutants[4].change}  [no test runs this line]", text)
