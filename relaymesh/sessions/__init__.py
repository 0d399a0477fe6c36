"""
Claude Code sessions: this machine's sessions, found and described as
claudectl 0.49.2 describes them, for the node's heartbeats.

L{ClaudeCodeScanner} is the entry point; L{default_process_table} picks how
processes are looked up.
"""

from relaymesh.sessions.claude import DEFAULT_CLAUDE_HOME, FINISHED_LINGER, ClaudeCodeScanner
from relaymesh.sessions.procs import ProcessFacts, ProcessTable, default_process_table
from relaymesh.sessions.status import Status

__all__ = [
    "DEFAULT_CLAUDE_HOME",
    "FINISHED_LINGER",
    "ClaudeCodeScanner",
    "ProcessFacts",
    "ProcessTable",
    "Status",
    "default_process_table",
]
