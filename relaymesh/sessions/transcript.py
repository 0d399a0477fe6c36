"""
Transcripts: a Claude Code session's JSONL transcript, read incrementally.

L{TranscriptReader} reads only what was appended since its last read, only
complete lines, at most L{MAX_READ_PER_SCAN} bytes at a time, and starts
over when the file shrank or was replaced. L{TranscriptState} is what the
lines add up to. It keeps no transcript text but what the C{details} output
may carry: the paths of modified files and tool error text (cut short).
"""

from __future__ import annotations

import json
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from relaymesh.sessions.models import Usage, cost, profile

#: Bytes read from one transcript in one scan at most; the rest waits for
#: the next scan. A line longer than this is skipped.
MAX_READ_PER_SCAN = 8 * 1024 * 1024

#: Bytes before the offset checked at each read: a file rewritten in place
#: (truncated, then written longer) is noticed and read again.
TAIL_CHECK_BYTES = 64

#: Bytes of a tool error's text that are kept.
MAX_ERROR_BYTES = 256  # claudectl 0.49: 256

#: Tool errors kept.
MAX_RECENT_ERRORS = 5  # claudectl 0.49: 5

#: Bounds on what one transcript can make the state hold.
MAX_TOOL_NAMES = 256
MAX_TOOL_NAME_BYTES = 128
MAX_FILES = 512
MAX_PATH_BYTES = 4096
MAX_PENDING_TOOLS = 1024

#: Tools whose C{file_path} (or C{notebook_path}) input is a file they modify.
EDITING_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})


def cut_utf8(text: str, limit: int) -> str:
    """
    C{text} cut to at most C{limit} bytes of UTF-8, on a character boundary.
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


#: Token counts above this in one message are taken as garbage (and 0).
MAX_TOKENS_PER_MESSAGE = 2**40


def _count(value: Any) -> int:
    """
    A token count from a usage field: a non-negative int, else 0.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if 0 <= value <= MAX_TOKENS_PER_MESSAGE else 0


def _short(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return cut_utf8(value, limit)


@dataclass
class TranscriptState:
    """
    What a transcript's lines add up to.

    @ivar messages: User and assistant messages seen.
    @ivar last_role: C{"user"} or C{"assistant"}: the last message's role.
    @ivar last_stop_reason: The last message's stop reason (C{""} for none).
    @ivar waiting_for_task: Whether a C{waiting_for_task} progress line came
        after the last message.
    @ivar pending_tools: Tool use id -> tool name, for tool uses without a
        result yet.
    @ivar usage_seen: Whether any message carried a usage.
    @ivar tokens_in: Input tokens, cache reads and writes included.
    @ivar tokens_out: Output tokens.
    @ivar context_tokens: The latest non-zero prompt size.
    @ivar cost_usd: What the usage cost, each message at its model's prices.
    @ivar verified: Whether every model priced was a known one.
    @ivar model: The latest model id seen.
    @ivar tool_usage: Tool name -> calls.
    @ivar files_modified: Path -> edits.
    @ivar recent_errors: The last L{MAX_RECENT_ERRORS} tool errors, as
        C{(tool, message)}.
    @ivar last_error: The last tool result's error text, or C{None} when the
        last tool result was not an error.
    """

    messages: int = 0
    last_role: str | None = None
    last_stop_reason: str = ""
    waiting_for_task: bool = False
    pending_tools: dict[str, str] = field(default_factory=dict)
    usage_seen: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    context_tokens: int = 0
    cost_usd: float = 0.0
    verified: bool = True
    model: str | None = None
    tool_usage: dict[str, int] = field(default_factory=dict)
    files_modified: dict[str, int] = field(default_factory=dict)
    recent_errors: deque[tuple[str, str]] = field(
        default_factory=lambda: deque(maxlen=MAX_RECENT_ERRORS)
    )
    last_error: str | None = None
    _last_tool: str | None = None

    def line_received(self, line: bytes) -> bool:
        """
        Add one line of the transcript; return whether it was recognised.
        Anything that is not a progress line or a message is ignored.
        """
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            return False
        if not isinstance(entry, dict):
            return False
        if entry.get("type") == "progress":
            if "waiting_for_task" in json.dumps(entry.get("data")):
                self.waiting_for_task = True
                return True
            return False
        message = entry.get("message")
        if not isinstance(message, dict):
            return False
        role = message.get("role")
        if not isinstance(role, str):
            role = entry.get("type")
        if role not in ("user", "assistant"):
            return False
        self._message(role, message)
        return True

    def _message(self, role: str, message: dict[str, Any]) -> None:
        self.messages += 1
        self.waiting_for_task = False
        self.last_role = role
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        stop_reason = message.get("stop_reason")
        if isinstance(stop_reason, str):
            self.last_stop_reason = stop_reason
        elif any(b.get("type") == "tool_use" for b in blocks):
            self.last_stop_reason = "tool_use"
        else:
            self.last_stop_reason = ""
        model = message.get("model")
        if isinstance(model, str) and model:
            self.model = cut_utf8(model, MAX_TOOL_NAME_BYTES)
        usage = message.get("usage")
        if isinstance(usage, dict) and "input_tokens" in usage:
            self._usage(usage)
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_use":
                self._tool_use(block)
            elif kind == "tool_result":
                self._tool_result(block)

    def _usage(self, usage: dict[str, Any]) -> None:
        counted = Usage(
            input=_count(usage.get("input_tokens")),
            cache_read=_count(usage.get("cache_read_input_tokens")),
            cache_write=_count(usage.get("cache_creation_input_tokens")),
            output=_count(usage.get("output_tokens")),
        )
        known = profile(self.model)
        self.usage_seen = True
        self.tokens_in += counted.prompt
        self.tokens_out += counted.output
        if counted.prompt > 0:
            self.context_tokens = counted.prompt
        self.cost_usd += cost(known.prices, counted)
        self.verified = self.verified and known.verified

    def _tool_use(self, block: dict[str, Any]) -> None:
        name = _short(block.get("name"), MAX_TOOL_NAME_BYTES)
        if name is None:
            return
        if name in self.tool_usage or len(self.tool_usage) < MAX_TOOL_NAMES:
            self.tool_usage[name] = self.tool_usage.get(name, 0) + 1
        self._last_tool = name
        tool_id = _short(block.get("id"), MAX_TOOL_NAME_BYTES)
        if tool_id is not None and len(self.pending_tools) < MAX_PENDING_TOOLS:
            self.pending_tools[tool_id] = name
        tool_input = block.get("input")
        if name in EDITING_TOOLS and isinstance(tool_input, dict):
            path = tool_input.get("file_path", tool_input.get("notebook_path"))
            path = _short(path, MAX_PATH_BYTES)
            if path is not None and (path in self.files_modified or len(self.files_modified) < MAX_FILES):
                self.files_modified[path] = self.files_modified.get(path, 0) + 1

    def _tool_result(self, block: dict[str, Any]) -> None:
        tool_id = block.get("tool_use_id")
        name = self.pending_tools.pop(tool_id, None) if isinstance(tool_id, str) else None
        if name is None:
            name = self._last_tool or "?"
        if block.get("is_error") is not True:
            self.last_error = None
            return
        message = _error_text(block.get("content"))
        self.last_error = message
        self.recent_errors.append((name, message))


def _error_text(content: Any) -> str:
    """
    A tool result's text, cut to L{MAX_ERROR_BYTES}.
    """
    if isinstance(content, str):
        return cut_utf8(content, MAX_ERROR_BYTES)
    parts: list[str] = []
    size = 0
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"][: MAX_ERROR_BYTES + 1])
                size += len(parts[-1])
                if size > MAX_ERROR_BYTES:
                    break
    return cut_utf8("\n".join(parts), MAX_ERROR_BYTES)


class TranscriptReader:
    """
    One transcript file, read incrementally into a L{TranscriptState}.

    @ivar path: The file.
    @ivar state: What its lines add up to so far.
    @ivar offset: Bytes of the file consumed (always after a new line).
    @ivar mtime: The file's modification time at the last read, or C{None}
        if it could not be read.
    @ivar readable: Whether the last read could open the file.
    @ivar max_read: Bytes read at most per call of L{read}.
    """

    def __init__(self, path: str, max_read: int = MAX_READ_PER_SCAN) -> None:
        self.path = path
        self.max_read = max_read
        self.state = TranscriptState()
        self.offset = 0
        self.mtime: float | None = None
        self.readable = False
        self._identity: tuple[int, int] | None = None
        self._skipping = False
        self._tail = b""

    def _restart(self) -> None:
        self.state = TranscriptState()
        self.offset = 0
        self._skipping = False
        self._tail = b""

    def read(self) -> None:
        """
        Read what was appended since the last call, up to L{max_read} bytes
        of complete lines.

        @raise OSError: The file cannot be read (L{readable} is then
            C{False}); the state read so far is kept.
        """
        self.readable = False
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.path, flags)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"not a regular file: {self.path}")
            identity = (info.st_dev, info.st_ino)
            if identity != self._identity or info.st_size < self.offset:
                self._restart()
                self._identity = identity
            self.mtime = info.st_mtime
            self.readable = True
            if self._tail:
                f.seek(self.offset - len(self._tail))
                if f.read(len(self._tail)) != self._tail:
                    self._restart()
            if info.st_size == self.offset:
                return
            f.seek(self.offset)
            chunk = f.read(self.max_read)
        before = self.offset
        self._consume(chunk)
        self._tail = (self._tail + chunk[: self.offset - before])[-TAIL_CHECK_BYTES:]

    def _consume(self, chunk: bytes) -> None:
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) >= self.max_read:
                # a line longer than a whole read: skip it to its end
                self.offset += len(chunk)
                self._skipping = True
            return
        lines = chunk[: end + 1].split(b"\n")[:-1]
        self.offset += end + 1
        if self._skipping:
            lines = lines[1:]
            self._skipping = False
        for line in lines:
            if line.strip():
                try:
                    self.state.line_received(line)
                except (TypeError, ValueError, OverflowError, RecursionError):
                    # a line of a shape nobody foresaw is garbage too
                    continue
