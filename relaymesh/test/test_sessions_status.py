"""
Tests for L{relaymesh.sessions.status}: claudectl's status rules, first
that holds.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.status import Observation, Status, infer_status


def status(**seen) -> str:
    seen.setdefault("alive", True)
    seen.setdefault("transcript", True)
    return infer_status(Observation(**seen)).value


class RuleTests(SynchronousTestCase):
    """
    Each of the seven rules, and Finished.
    """

    def test_busy_cpu_is_processing(self) -> None:
        """
        Rule 1: over 5 % CPU the session is processing, whatever its
        transcript says.
        """
        self.assertEqual(status(cpu=5.1, waiting_for_task=True, last_role="assistant", stop_reason="end_turn"), "Processing")
        self.assertEqual(status(cpu=5.0, waiting_for_task=True), "Needs Input")

    def test_waiting_for_task(self) -> None:
        """
        Rule 2: a waiting_for_task progress line needs input.
        """
        self.assertEqual(status(waiting_for_task=True, last_role="assistant", stop_reason="end_turn"), "Needs Input")

    def test_no_transcript(self) -> None:
        """
        Rule 3: no usable transcript and no last message is Unknown; a last
        message remembered from an earlier read still counts.
        """
        self.assertEqual(status(transcript=False), "Unknown")
        self.assertEqual(status(transcript=False, last_role="user"), "Processing")

    def test_end_turn(self) -> None:
        """
        Rule 4: a finished turn waits, and is idle once the transcript has
        been untouched for over 10 minutes.
        """
        seen = {"last_role": "assistant", "stop_reason": "end_turn"}
        self.assertEqual(status(untouched=600.0, **seen), "Waiting")
        self.assertEqual(status(untouched=600.5, **seen), "Idle")

    def test_tool_use(self) -> None:
        """
        Rule 5: stopped for a tool, with CPU under 2 % and the tool pending
        or the transcript untouched over 5 s, needs input; else it is
        processing.
        """
        seen = {"last_role": "assistant", "stop_reason": "tool_use"}
        self.assertEqual(status(tool_pending=True, **seen), "Needs Input")
        self.assertEqual(status(untouched=5.5, **seen), "Needs Input")
        self.assertEqual(status(untouched=4.0, **seen), "Processing")
        self.assertEqual(status(cpu=2.0, tool_pending=True, **seen), "Processing")

    def test_user_last(self) -> None:
        """
        Rule 6: a message from the user last means Claude is working.
        """
        self.assertEqual(status(last_role="user", untouched=9999.0), "Processing")

    def test_otherwise_idle(self) -> None:
        """
        Rule 7: anything else is idle (an assistant message with no stop
        reason, or a transcript with no message).
        """
        self.assertEqual(status(last_role="assistant"), "Idle")
        self.assertEqual(status(last_role="assistant", stop_reason="max_tokens"), "Idle")
        self.assertEqual(status(), "Idle")

    def test_gone_is_finished(self) -> None:
        """
        A gone process is Finished, even if the other rules say otherwise
        (claudectl overwrites it; relaymesh does not).
        """
        self.assertEqual(status(alive=False, cpu=50.0, waiting_for_task=True), "Finished")

    def test_names(self) -> None:
        """
        The statuses are spelled as claudectl's receivers read them.
        """
        self.assertEqual(
            sorted(s.value for s in Status),
            sorted(["Processing", "Needs Input", "Waiting", "Idle", "Finished", "Unknown"]),
        )
