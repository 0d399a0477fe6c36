"""
The dashboard's Sessions view, read as a file (the browser test,
L{relaymesh.test.test_dashboard_browser}, drives it live): its elements are
there, it follows the session lists, and it puts no data in as markup.
"""

from __future__ import annotations

import re
from importlib import resources

from twisted.trial.unittest import SynchronousTestCase

#: The statuses a session object has (L{relaymesh.sessions.status.Status}).
STATUSES = ["Processing", "Needs Input", "Waiting", "Idle", "Finished", "Unknown"]


def page() -> str:
    return resources.files("relaymesh.control").joinpath("dashboard.html").read_text("utf-8")


def script(text: str) -> str:
    scripts: list[str] = re.findall(r"<script>(.*?)</script>", text, re.S)
    [body] = scripts
    return body


class SessionsViewTests(SynchronousTestCase):
    def setUp(self):
        self.page = page()
        self.script = script(self.page)

    def test_elements(self):
        """
        The view, its totals, its note about this node's source and its
        machine groups are on the page, as is the Workers panel.
        """
        for element_id in ["sessions-view", "session-totals", "session-source", "session-groups", "workers"]:
            self.assertIn(f'id="{element_id}"', self.page)

    def test_follows_the_lists(self):
        """
        The view loads C{GET /api/sessions} (at sign-in and whenever the event
        stream opens) and applies each C{sessions} event.
        """
        self.assertIn('api("/api/sessions")', self.script)
        self.assertIn('e.event === "sessions"', self.script)
        self.assertRegex(self.script, r"source\.onopen = function \(\) \{[^}]*loadSessions\(\)")
        self.assertRegex(self.script, r"(?s)function openBoard\(\) \{.*?loadSessions\(\)")

    def test_statuses(self):
        """
        Each status has a colour of its own; Finished and stale rows are
        styled apart.
        """
        colours = {}
        for status in STATUSES:
            name = status.lower().replace(" ", "-")
            self.assertIn(f'"{status}"', self.script)
            [rule] = re.findall(r"(?m)^\s*\.status\." + name + r" \{([^}]*)\}", self.page)
            colours[status] = rule
        self.assertEqual(len(set(colours.values())), len(STATUSES))
        self.assertIn("line-through", colours["Finished"])
        self.assertIn("tr.stale td", self.page)

    def test_empty_state_and_source_note(self):
        """
        Without sessions the view says how to get some; a node whose own
        sessions do not come from Claude Code says so.
        """
        self.assertIn("Start Claude Code on a machine running a relaymesh node", self.script)
        self.assertIn('fleetSource !== "claude-code"', self.script)

    def test_no_markup_from_data(self):
        """
        Nothing goes in as markup: the page builds its nodes and sets their
        text (a peer's session rows are its claims).
        """
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"]:
            self.assertNotIn(sink, self.script)
        self.assertIn("node.textContent = String(text)", self.script)

    def test_no_plain_objects_for_ids(self):
        """
        Machines are kept in a C{Map}: a peer id such as C{__proto__} is a
        key like any other.
        """
        self.assertIn("var machines = new Map()", self.script)
