"""
Tests for L{relaymesh.sessions.transcript}: what lines add up to, and the
incremental reader (complete lines only, bounded reads, shrunk or replaced
files, garbage).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.models import OPUS, SONNET, Usage, cost
from relaymesh.sessions.transcript import (
    MAX_RECENT_ERRORS,
    TranscriptReader,
    TranscriptState,
    cut_utf8,
)
from relaymesh.test.claudehome import (
    assistant_text,
    dumps,
    tool_result,
    tool_use,
    usage,
    user_text,
    waiting_for_task,
)

#: The lines of claudectl's documented example, in order.
EXAMPLE = [
    waiting_for_task(),
    user_text("fix the failing test"),
    tool_use(stop_reason=None),
    tool_result("error: 2 failed", is_error=True),
    assistant_text("Done."),
]


def state_of(*lines: str) -> TranscriptState:
    state = TranscriptState()
    for line in lines:
        state.line_received(line.encode("utf-8"))
    return state


class LineTests(SynchronousTestCase):
    """
    What lines add up to.
    """

    def test_example(self) -> None:
        """
        The documented example: tokens, context, model, tools, errors.
        """
        state = state_of(*EXAMPLE)
        self.assertEqual(state.last_role, "assistant")
        self.assertEqual(state.last_stop_reason, "end_turn")
        self.assertFalse(state.waiting_for_task)
        self.assertEqual(state.tokens_in, 12 + 80000 + 500 + 5)
        self.assertEqual(state.tokens_out, 130)
        self.assertEqual(state.context_tokens, 5)
        self.assertEqual(state.model, "claude-opus-4-6")
        self.assertEqual(state.tool_usage, {"Bash": 1})
        self.assertEqual(list(state.recent_errors), [("Bash", "error: 2 failed")])
        self.assertEqual(state.last_error, "error: 2 failed")
        self.assertEqual(state.pending_tools, {})
        expected = cost(SONNET, Usage(12, 80000, 500, 90)) + cost(OPUS, Usage(5, 0, 0, 40))
        self.assertAlmostEqual(state.cost_usd, expected)
        self.assertTrue(state.verified)

    def test_waiting_then_message(self) -> None:
        """
        waiting_for_task holds until the next message.
        """
        self.assertTrue(state_of(user_text("x"), waiting_for_task()).waiting_for_task)
        self.assertFalse(state_of(waiting_for_task(), user_text("x")).waiting_for_task)

    def test_null_stop_reason_with_tool_use(self) -> None:
        """
        stop_reason null with a tool_use block counts as tool_use; without
        one, as no stop reason.
        """
        self.assertEqual(state_of(tool_use(stop_reason=None)).last_stop_reason, "tool_use")
        self.assertEqual(state_of(assistant_text("hi", stop_reason=None)).last_stop_reason, "")

    def test_pending_tools(self) -> None:
        """
        A tool use is pending until its result arrives.
        """
        state = state_of(tool_use(tool_id="a"), tool_use(tool_id="b"), tool_result(tool_id="a"))
        self.assertEqual(state.pending_tools, {"b": "Bash"})

    def test_role_from_type(self) -> None:
        """
        Without message.role the top-level type gives the role; other roles
        do not count.
        """
        state = state_of(dumps({"type": "user", "message": {"content": "x"}}))
        self.assertEqual(state.last_role, "user")
        state = state_of(dumps({"type": "system", "message": {"role": "system", "content": "x"}}))
        self.assertEqual(state.messages, 0)

    def test_usage_needs_input_tokens(self) -> None:
        """
        A usage without input_tokens is ignored; missing fields count 0;
        context is the latest non-zero prompt.
        """
        line = dumps({"type": "assistant", "message": {"role": "assistant", "usage": {"output_tokens": 9}}})
        self.assertFalse(state_of(line).usage_seen)
        state = state_of(
            assistant_text("a", used=usage(100, 0, 0, 1)),
            assistant_text("b", used={"input_tokens": 0, "output_tokens": 3}),
        )
        self.assertTrue(state.usage_seen)
        self.assertEqual(state.context_tokens, 100)
        self.assertEqual((state.tokens_in, state.tokens_out), (100, 4))

    def test_unknown_model_unverified(self) -> None:
        state = state_of(assistant_text("a", model="gpt-5"))
        self.assertFalse(state.verified)
        self.assertAlmostEqual(state.cost_usd, cost(OPUS, Usage(5, 0, 0, 40)))

    def test_files_modified(self) -> None:
        """
        Edit, Write, MultiEdit and NotebookEdit count their file; other
        tools do not.
        """
        state = state_of(
            tool_use("Edit", {"file_path": "/p/a.py", "old_string": "x"}, tool_id="1"),
            tool_use("Edit", {"file_path": "/p/a.py"}, tool_id="2"),
            tool_use("Write", {"file_path": "/p/b.py", "content": "y"}, tool_id="3"),
            tool_use("Read", {"file_path": "/p/c.py"}, tool_id="4"),
        )
        self.assertEqual(state.files_modified, {"/p/a.py": 2, "/p/b.py": 1})
        self.assertEqual(state.tool_usage, {"Edit": 2, "Write": 1, "Read": 1})

    def test_errors(self) -> None:
        """
        Error text is cut to 256 bytes of UTF-8 (on a character boundary),
        arrays of text blocks are joined, the last 5 are kept, and a
        successful result clears the last error.
        """
        long = "é" * 200
        state = state_of(tool_use(), tool_result(long, is_error=True))
        message = state.last_error
        assert message is not None
        self.assertLessEqual(len(message.encode("utf-8")), 256)
        self.assertEqual(message, "é" * 128)
        state = state_of(tool_use(), tool_result([{"type": "text", "text": "a"}, {"text": "b"}], is_error=True))
        self.assertEqual(state.last_error, "a\nb")
        lines = []
        for i in range(MAX_RECENT_ERRORS + 2):
            lines += [tool_use(tool_id=str(i)), tool_result(f"e{i}", is_error=True, tool_id=str(i))]
        state = state_of(*lines, tool_use(tool_id="z"), tool_result("fine", tool_id="z"))
        self.assertEqual([m for _, m in state.recent_errors], [f"e{i}" for i in range(2, 7)])
        self.assertIsNone(state.last_error)

    def test_garbage(self) -> None:
        """
        Lines that are not JSON, not objects, of the wrong shapes or badly
        encoded are ignored.
        """
        state = state_of(
            "not json",
            "[1, 2]",
            '{"type": "user", "message": "x"}',
            '{"type": "assistant", "message": {"role": 3, "content": {"a": 1}}}',
            '{"message": {"role": "assistant", "usage": {"input_tokens": "many", "output_tokens": -4}}}',
            '{"message": {"role": "assistant", "content": [1, null, {"type": "tool_use", "name": 7}]}}',
            '{"type": "progress", "data": {"nested": ["waiting_for_task"]}}',
            "[" * 100000,
        )
        self.assertTrue(state.waiting_for_task)
        self.assertEqual(state.tokens_in, 0)
        self.assertEqual(state.tool_usage, {})
        self.assertFalse(TranscriptState().line_received(b"\xff\xfe{bad"))

    def test_cut_utf8(self) -> None:
        self.assertEqual(cut_utf8("abc", 2), "ab")
        self.assertEqual(cut_utf8("aé", 2), "a")
        self.assertEqual(cut_utf8("aé", 3), "aé")


class ReaderTests(SynchronousTestCase):
    """
    The incremental reader.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(user_text("go") + "\n")

    def append(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(text)

    def test_incremental(self) -> None:
        """
        Each read adds only the appended lines.
        """
        reader = TranscriptReader(self.path)
        reader.read()
        self.assertEqual(reader.state.messages, 1)
        reader.read()
        self.assertEqual(reader.state.messages, 1)
        self.append(assistant_text("Done.") + "\n")
        reader.read()
        self.assertEqual(reader.state.messages, 2)
        self.assertEqual(reader.offset, os.path.getsize(self.path))

    def test_partial_line_waits(self) -> None:
        """
        A last line without its new line waits for it.
        """
        reader = TranscriptReader(self.path)
        reader.read()
        line = assistant_text("Done.")
        self.append(line[:20])
        reader.read()
        self.assertEqual(reader.state.last_role, "user")
        self.append(line[20:] + "\n")
        reader.read()
        self.assertEqual(reader.state.last_role, "assistant")

    def test_bounded_read(self) -> None:
        """
        At most max_read bytes are read per call; the rest comes next time.
        """
        lines = [assistant_text(f"reply {i}") for i in range(10)]
        self.append("".join(line + "\n" for line in lines))
        reader = TranscriptReader(self.path, max_read=len(lines[0]) * 3)
        reads = 0
        while reader.offset < os.path.getsize(self.path):
            reader.read()
            reads += 1
            self.assertLess(reads, 20)
        self.assertGreater(reads, 3)
        self.assertEqual(reader.state.messages, 11)

    def test_huge_line_skipped(self) -> None:
        """
        A line longer than a whole read is skipped; the lines after it are
        read.
        """
        reader = TranscriptReader(self.path, max_read=1000)
        reader.read()
        self.append(assistant_text("x" * 5000) + "\n" + assistant_text("after") + "\n")
        for _ in range(10):
            reader.read()
        self.assertEqual(reader.state.messages, 2)
        self.assertEqual(reader.offset, os.path.getsize(self.path))

    def test_shrunk(self) -> None:
        """
        A file that shrank is read again from its start.
        """
        self.append(assistant_text("Done.") + "\n")
        reader = TranscriptReader(self.path)
        reader.read()
        self.assertEqual(reader.state.messages, 2)
        with open(self.path, "w") as f:
            f.write(user_text("again") + "\n")
        reader.read()
        self.assertEqual(reader.state.messages, 1)
        self.assertEqual(reader.state.last_role, "user")

    def test_replaced(self) -> None:
        """
        A file replaced by another (a new inode), even a longer one, is
        read from its start.
        """
        reader = TranscriptReader(self.path)
        reader.read()
        other = self.path + ".new"
        with open(other, "w") as f:
            f.write(assistant_text("a") + "\n" + assistant_text("b") + "\n")
        os.replace(other, self.path)
        reader.read()
        self.assertEqual(reader.state.messages, 2)
        self.assertEqual(reader.state.last_role, "assistant")

    def test_unreadable(self) -> None:
        """
        A missing file or a directory raises OSError and keeps the state.
        """
        reader = TranscriptReader(self.path)
        reader.read()
        os.remove(self.path)
        self.assertRaises(OSError, reader.read)
        self.assertFalse(reader.readable)
        self.assertEqual(reader.state.messages, 1)
        os.mkdir(self.path)
        self.assertRaises(OSError, reader.read)

    def test_bad_bytes(self) -> None:
        """
        Bad UTF-8 and NUL bytes in lines are skipped like garbage.
        """
        with open(self.path, "ab") as f:
            f.write(b"\xff\xfe\x00garbage\n\x00\x00\n" + assistant_text("ok").encode() + b"\n")
        reader = TranscriptReader(self.path)
        reader.read()
        self.assertEqual(reader.state.messages, 2)

    def test_rewritten_in_place(self) -> None:
        """
        A file truncated and written again longer, in place, is read again
        from its start.
        """
        reader = TranscriptReader(self.path)
        reader.read()
        with open(self.path, "w") as f:
            f.write(assistant_text("a") + "\n" + assistant_text("b") + "\n")
        reader.read()
        self.assertEqual(reader.state.messages, 2)
        self.assertEqual(reader.state.last_role, "assistant")

    def test_absurd_numbers(self) -> None:
        """
        Token counts too large to price are ignored, not raised.
        """
        self.append(assistant_text("x", used={"input_tokens": 10**400, "output_tokens": 2**41}) + "\n")
        self.append(assistant_text("y", used={"input_tokens": 1e308, "output_tokens": 3}) + "\n")
        reader = TranscriptReader(self.path)
        reader.read()
        self.assertEqual(reader.state.messages, 3)
        self.assertEqual((reader.state.tokens_in, reader.state.tokens_out), (0, 3))
