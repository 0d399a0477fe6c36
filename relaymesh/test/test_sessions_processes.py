"""
The fleet view end to end: two C{twistd relaymesh} processes on loopback,
one on a machine with a Claude Code session (a fixture home and a live
dummy process whose command line holds C{claude}), the other listing that
session through its API and the C{relaymesh sessions} command, and seeing
it finish when the process ends.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from relaymesh.control.client import NodeClient
from relaymesh.test.claudehome import (
    ClaudeHome,
    assistant_text,
    spawn_claude,
    tool_result,
    tool_use,
    user_text,
)
from relaymesh.test.realtime import ProcessesMixin, free_port, paired_homes, wait_for

#: Text of the transcript that must never leave the machine.
SECRETS = ("prompt-4f1c", "reply-9d2e", "input-77aa", "result-1b3c")


class FleetProcessTests(ProcessesMixin, TestCase):
    timeout = 60

    def setUp(self):
        self.setUpProcesses()

    def sessions(self, client: NodeClient) -> list[dict]:
        sessions: list[dict] = client.call("GET", "/api/sessions")["sessions"]
        return sessions

    @defer.inlineCallbacks
    def test_peer_sees_session_and_its_end(self):
        home_a, home_b = paired_homes(self.base, "laptop-a3f2c1d0", "desk-7c1e0b2a")

        claude = ClaudeHome(os.path.join(self.base, "claude-a"))
        process = spawn_claude(self, name="fleet-demo")
        claude.add_session(
            process.pid,
            cwd="/home/u/fleet-demo",
            started_at=time.time() - 90,
            transcript_lines=[
                user_text(f"the {SECRETS[0]}"),
                tool_use("Bash", {"command": f"echo {SECRETS[2]}"}, stop_reason="tool_use"),
                tool_result(f"out {SECRETS[3]}"),
                assistant_text(f"the {SECRETS[1]}"),
            ],
        )
        relay_a, api_b = free_port(), free_port()
        self.twistd("a", home_a, "--no-announce", "--api", "none", "--claude-home", claude.path,
                     "--listen", f"tcp:{relay_a}:interface=127.0.0.1")  # fmt: skip
        _, log_b = self.twistd("b", home_b, "--no-announce", "--listen", "none",
                               "--api", f"tcp:{api_b}:interface=127.0.0.1",
                               "--peers", f"laptop-a3f2c1d0@127.0.0.1:{relay_a}")  # fmt: skip
        token = os.path.join(home_b, "api-token")
        yield wait_for(lambda: os.path.exists(token) and open(token).read().strip(), 15)
        client = NodeClient(f"http://127.0.0.1:{api_b}", open(token).read().strip(), timeout=5)
        started = time.monotonic()
        yield wait_for(lambda: self.sessions(client), 20)
        [row] = self.sessions(client)
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(
            (row["peer_id"], row["worker_id"], row["project"], row["pid"], row["status"]),
            ("laptop-a3f2c1d0", "laptop-a3f2c1d0", "fleet-demo", process.pid, "Waiting"),
        )
        self.assertEqual(row["model"], "claude-opus-4-6")
        text = json.dumps(client.call("GET", "/api/sessions"))
        for secret in SECRETS:
            self.assertNotIn(secret, text)

        table = self.cli(home_b, "sessions", "--api", f"http://127.0.0.1:{api_b}").stdout
        [header, line, totals] = table.splitlines()
        self.assertEqual(line.split()[:4], ["laptop-a3f2c1d0", "fleet-demo", str(process.pid), "Waiting"])
        self.assertGreater(row["cost_usd"], 0)
        self.assertEqual(totals, f"1 session on 1 machine: 1 Waiting; ${row['cost_usd']:.2f} in all")

        process.kill()
        process.wait()
        ended = time.monotonic()
        yield wait_for(lambda: self.sessions(client)[0]["status"] == "Finished", 15)
        # a refresh (2 s) and an early heartbeat (1 s) away, with slack
        self.assertLess(time.monotonic() - ended, 8)
