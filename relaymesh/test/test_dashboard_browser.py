"""
The mesh dashboard in a real headless browser.

Two C{relaymesh} nodes run as processes on loopback ports; headless Chromium,
driven through chromedriver's W3C WebDriver protocol (plain HTTP, spoken
here with the standard library), opens the dashboard of the first, signs in
with its token, and watches the second connect, go away when it is stopped,
and come back when it is started again; the events from before the page
was opened are in its feed at once (the node's recent history). It
disconnects the second from the dashboard, after a confirmation, and shows
the error line the node answers when the peer is gone meanwhile. A third
machine joins with an invite: the feed says so, the table lists it as
a paired peer, and Forget removes it (its key too). The second publishes the Claude
Code sessions of a fixture Claude home, whose processes are live dummies:
the first's dashboard shows them, and shows one finished once its process
is killed. It takes the screenshot the documentation shows (to the path in
C{$RELAYMESH_DASHBOARD_SCREENSHOT}, if set).

Without Chromium and chromedriver the test is skipped, unless
C{$RELAYMESH_REQUIRE_BROWSER} is C{1} (as in CI), where that is a failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import relaymesh
from relaymesh.control.client import ApiRequestError, NodeClient, NodeNotRunning
from relaymesh.invite import arm_invite, make_invite
from relaymesh.keystore import KeyStore
from relaymesh.test.claudehome import ClaudeHome, assistant_text, spawn_claude, user_text
from relaymesh.test.realtime import free_port as realtime_free_port
from relaymesh.test.realtime import paired_homes

#: Seconds the whole test may take.
BUDGET = 60.0

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--window-size=1280,740",
]


def free_port() -> int:
    """
    A free loopback port below the ephemeral range, for a process this test
    starts: a port a bind to port 0 gave and released may be handed to
    another test's listener (under C{trial -j}) before the process binds it.
    """
    return realtime_free_port(low=20000, high=32000)


def find_browser() -> tuple[str, str]:
    """
    The Chromium binary and chromedriver.

    @raise SkipTest: if either is missing (a failure under
        C{RELAYMESH_REQUIRE_BROWSER=1}).
    """
    browser = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    missing = "chromium" if not browser else "chromedriver"
    reason = f"no {missing} on PATH (Debian: apt-get install chromium chromium-driver)"
    if os.environ.get("RELAYMESH_REQUIRE_BROWSER") == "1":
        raise AssertionError(f"RELAYMESH_REQUIRE_BROWSER=1 but {reason}")
    raise SkipTest(reason)


class WebDriverError(Exception):
    pass


class WebDriver:
    """
    A minimal W3C WebDriver client: the few commands this test needs.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body=None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None

    def ready(self) -> bool:
        try:
            return bool(self.call("GET", "/status", timeout=2).get("ready"))
        except (OSError, WebDriverError, ValueError):
            return False

    def start(self, binary: str, args: list[str]) -> None:
        options = {"binary": binary, "args": args}
        value = self.call(
            "POST",
            "/session",
            {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}},
        )
        self.session = value["sessionId"]

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self.call("POST", self._s("/url"), {"url": url})

    def find(self, css: str) -> str:
        value = self.call("POST", self._s("/element"), {"using": "css selector", "value": css})
        found: str = next(iter(value.values()))
        return found

    def type(self, element: str, text: str) -> None:
        self.call("POST", self._s(f"/element/{element}/value"), {"text": text})

    def click(self, element: str) -> None:
        self.call("POST", self._s(f"/element/{element}/click"), {})

    def script(self, source: str, *args):
        return self.call("POST", self._s("/execute/sync"), {"script": source, "args": list(args)})

    def cookies(self) -> list[dict]:
        """
        Every cookie the browser holds, with its attributes (through the
        DevTools protocol: WebDriver's own list leaves out cookies whose
        path is not the page's).
        """
        value = self.call("POST", self._s("/goog/cdp/execute"), {"cmd": "Network.getAllCookies", "params": {}})
        cookies: list[dict] = value["cookies"]
        return cookies

    def window_size(self, width: int, height: int) -> None:
        self.call("POST", self._s("/window/rect"), {"width": width, "height": height})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", self._s("/screenshot")))

    def quit(self) -> None:
        if self.session is not None:
            try:
                self.call("DELETE", self._s(""), timeout=10)
            except (OSError, WebDriverError):
                pass
            self.session = None


STATE_OF = """
var row = document.querySelector('tr[data-peer="' + arguments[0] + '"] .state');
return row ? row.textContent : null;
"""

#: The Sessions view's row of a machine's session: [project, status] or null.
SESSION_OF = """
var row = document.querySelector('#session-groups [data-machine="' + arguments[0] + '"] tr[data-pid="' + arguments[1] + '"]');
return row ? [row.querySelector('td.project').textContent, row.querySelector('.status').textContent] : null;
"""


#: The feed's lines of one event type, replayed from the history or live.
FEED_OF = """
var wanted = arguments[1] ? '[data-history]' : ':not([data-history])';
return Array.prototype.map.call(
  document.querySelectorAll('#feed li[data-event="' + arguments[0] + '"]' + wanted),
  function (li) { return li.querySelector('.text').textContent; });
"""

#: The feed's lines about joins, newest first.
JOINS = """
return Array.prototype.map.call(document.querySelectorAll('#feed li[data-join]'),
  function (li) { return li.querySelector('.text').textContent; });
"""

#: Click a peer row's action button (in one step: the table is redrawn
#: every second).
CLICK_ACTION = """
var button = document.querySelector('tr[data-peer="' + arguments[0] + '"] button[data-action="' + arguments[1] + '"]');
if (!button) throw new Error('no ' + arguments[1] + ' button for ' + arguments[0]);
button.click();
"""

#: The action buttons of the peer table that a person cannot see and click
#: where they are: outside the window, or clipped by the table's scrolling
#: box ([data-peer, label] each). The page is scrolled to its top first.
HIDDEN_ACTIONS = """
window.scrollTo(0, 0);
var box = document.querySelector('#peers').parentNode.getBoundingClientRect();
var width = document.documentElement.clientWidth, height = document.documentElement.clientHeight;
var hidden = [];
document.querySelectorAll('#peers button[data-action]').forEach(function (button) {
  var r = button.getBoundingClientRect();
  var x = r.left + r.width / 2, y = r.top + r.height / 2;
  var inside = r.width > 0 && r.left >= Math.max(0, box.left) && r.right <= Math.min(width, box.right)
    && r.top >= 0 && r.bottom <= height;
  if (!inside || document.elementFromPoint(x, y) !== button) {
    hidden.push([button.getAttribute('data-key'), button.textContent]);
  }
});
return hidden;
"""

#: The row of an address dialled without a peer id: [state, has an error]
#: or null.
DIAL_ROW = """
var row = document.querySelector('tr[data-peer$="' + arguments[0] + '"]');
return row ? [row.querySelector('.state').textContent, !!row.querySelector('td.has-error')] : null;
"""

#: The answer shown under the peer table: [class, text].
RESULT = """
var result = document.getElementById('peer-result');
return [result.className, result.textContent];
"""


class DashboardBrowserTests(SynchronousTestCase):
    """
    Two nodes as processes, and the first one's dashboard in Chromium.
    """

    def setUp(self):
        self.browser, self.driver_path = find_browser()
        self.deadline = time.monotonic() + BUDGET
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        root = os.path.dirname(os.path.dirname(os.path.abspath(relaymesh.__file__)))
        self.env = {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self.processes: list[subprocess.Popen] = []
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self, what: str, predicate, limit: float = 20.0, interval: float = 0.1):
        """
        Return C{predicate()} once it is true; fail after C{limit} seconds
        or when the test's budget is spent.
        """
        end = min(time.monotonic() + limit, self.deadline)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                self.fail(f"timed out waiting for {what}")
            time.sleep(interval)

    def node(self, name: str, data_dir: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.base, f"{name}.log"), "ab")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format", "text", "relaymesh", "--data-dir", data_dir, *args],
            env=self.env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def client(self, data_dir: str, api_port: int) -> NodeClient:
        path = os.path.join(data_dir, "api-token")
        self.wait(f"{path}", lambda: os.path.exists(path) and open(path).read().strip())
        with open(path) as f:
            return NodeClient(f"http://127.0.0.1:{api_port}", f.read().strip(), timeout=5)

    @staticmethod
    def state_on(client: NodeClient, peer_id: str) -> str | None:
        try:
            state: str | None = client.call("GET", f"/api/peers/{peer_id}")["state"]
            return state
        except (NodeNotRunning, ApiRequestError):
            return None

    @staticmethod
    def answers(client: NodeClient) -> bool:
        try:
            client.call("GET", "/api/status")
            return True
        except (NodeNotRunning, ApiRequestError):
            return False

    def test_dashboard(self):
        started = time.monotonic()
        home_a, home_b = paired_homes(self.base, "laptop-a3f2", "buildbox-7c1e")
        relay_a, api_a, api_b, driver_port = free_port(), free_port(), free_port(), free_port()
        # No Claude Code sessions on a; on b, those of a fixture Claude home
        # whose processes are live dummies (killed at cleanup).
        common = ["--heartbeat", "1"]
        no_claude = ["--claude-home", os.path.join(self.base, "no-claude")]
        self.node("a", home_a, "--listen", f"tcp:{relay_a}:interface=127.0.0.1", "--api", f"tcp:{api_a}:interface=127.0.0.1", *common, *no_claude)
        claude = ClaudeHome(os.path.join(self.base, "claude-b"))
        working, done = spawn_claude(self, name="relaymesh"), spawn_claude(self, name="website")
        for process, cwd, session_id, minutes in [
            (working, "/home/dev/src/relaymesh", "5a1f0c2e-8d3b-4e6a-9f70-1b2c3d4e5f60", 42),
            (done, "/home/dev/src/website", "6b2e1d3f-9e4c-4f7b-8a81-2c3d4e5f6071", 7),
        ]:
            claude.add_session(
                process.pid,
                session_id=session_id,
                cwd=cwd,
                started_at=time.time() - minutes * 60,
                transcript_lines=[user_text("Run the tests."), assistant_text("All tests pass.")],
            )
        beta_args = [
            "--listen", "none",
            "--api", f"tcp:{api_b}:interface=127.0.0.1",
            "--peers", f"laptop-a3f2@127.0.0.1:{relay_a}",
            "--claude-home", claude.path,
            *common,
        ]  # fmt: skip
        beta_process = self.node("b", home_b, *beta_args)
        node_a = self.client(home_a, api_a)
        node_b = self.client(home_b, api_b)
        self.wait("node a's API", lambda: self.answers(node_a))
        self.wait("node b's API", lambda: self.answers(node_b))
        # b connects before the page is opened: the page learns it from the
        # node's recent events.
        self.wait("b connected to a", lambda: self.state_on(node_a, "buildbox-7c1e") == "connected")

        driver_log = os.path.join(self.base, "chromedriver.log")
        self.processes.append(
            subprocess.Popen(
                [self.driver_path, f"--port={driver_port}", f"--log-path={driver_log}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        driver = WebDriver(f"http://127.0.0.1:{driver_port}")
        self.wait("chromedriver", driver.ready)
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.base)
        driver.start(self.browser, CHROMIUM_FLAGS + [f"--user-data-dir={profile}"])
        self.addCleanup(driver.quit)

        # Sign in once with the token, as a person does.
        origin = f"http://127.0.0.1:{api_a}"
        driver.get(origin + "/")
        with open(os.path.join(home_a, "api-token")) as f:
            token = f.read().strip()
        driver.type(driver.find("#token"), token)
        driver.click(driver.find("#connect"))
        self.wait("the live pill", lambda: driver.script("return document.getElementById('live').textContent") == "live")
        self.wait("buildbox connected", lambda: driver.script(STATE_OF, "buildbox-7c1e") == "connected")
        past = self.wait("the connection in the feed, from before the page", lambda: driver.script(FEED_OF, "peer_connected", True))
        self.assertIn("buildbox-7c1e connected (inbound", past[0])
        self.assertEqual(driver.script(FEED_OF, "peer_connected", False), [])
        self.wait(
            "buildbox's sessions",
            lambda: driver.script("return !!document.querySelector('#workers [data-peer=\"buildbox-7c1e\"]')"),
        )
        # The Sessions view: b's sessions under b, waiting for their user.
        self.assertEqual(
            self.wait("b's session", lambda: driver.script(SESSION_OF, "buildbox-7c1e", working.pid), limit=10),
            ["relaymesh", "Waiting"],
        )
        self.assertEqual(driver.script(SESSION_OF, "buildbox-7c1e", done.pid), ["website", "Waiting"])
        self.assertEqual(driver.script("return document.querySelectorAll('#session-groups [data-machine]').length"), 1)
        self.assertEqual(driver.script("return document.getElementById('session-source').hidden"), True)
        self.assertEqual(driver.script("return sessionStorage.length"), 1)
        # The event stream's cookie: set by the node, out of the page's reach.
        [cookie] = [c for c in driver.cookies() if c["name"].startswith("relaymesh_token")]
        self.assertEqual(
            (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]),
            (f"relaymesh_token_{api_a}", "/api/events", True, "Strict"),
        )
        self.assertNotIn(token, cookie["value"])
        self.assertEqual(driver.script("return document.cookie"), "")

        # Stop the other node: it goes disconnected, without a reload.
        self.stop(beta_process)
        self.wait("buildbox disconnected", lambda: driver.script(STATE_OF, "buildbox-7c1e") == "disconnected")
        self.wait(
            "the disconnection in the feed",
            lambda: driver.script("return document.querySelectorAll('#feed li[data-event=\"peer_disconnected\"]').length"),
        )
        # Start it again: it comes back.
        beta_again = self.node("b2", home_b, *beta_args)
        self.wait("buildbox connected again", lambda: driver.script(STATE_OF, "buildbox-7c1e") == "connected")
        self.assertGreaterEqual(
            driver.script("return document.querySelectorAll('#feed li[data-event=\"peer_connected\"]').length"), 1
        )
        # It works on: a message, and the restarted node's sessions.
        self.wait("node b's API again", lambda: self.answers(node_b))
        node_b.call(
            "POST",
            "/api/send",
            {"to": "laptop-a3f2", "msg_type": "task_status", "payload": {"task_id": "t-17", "status": "done"}},
        )
        self.wait(
            "the message in the feed",
            lambda: driver.script("return document.querySelectorAll('#feed li[data-event=\"message\"]').length"),
        )
        self.wait(
            "buildbox's sessions",
            lambda: driver.script("return !!document.querySelector('#workers [data-peer=\"buildbox-7c1e\"]')"),
        )
        # One session's process ends: it shows as finished, the other waits on.
        done.kill()
        done.wait()
        self.wait(
            "the session finished",
            lambda: driver.script(SESSION_OF, "buildbox-7c1e", done.pid) == ["website", "Finished"],
            limit=10,
        )
        self.assertEqual(driver.script(SESSION_OF, "buildbox-7c1e", working.pid), ["relaymesh", "Waiting"])
        totals = driver.script(
            "return Array.prototype.map.call(document.querySelectorAll('#session-totals .status'),"
            " function (e) { return e.textContent; })"
        )
        self.assertEqual(totals, ["1 Waiting", "1 Finished"])
        time.sleep(0.6)  # let the traffic counters catch up with the message
        screenshot = driver.screenshot()
        self.assertEqual(screenshot[:8], b"\x89PNG\r\n\x1a\n")
        target = os.environ.get("RELAYMESH_DASHBOARD_SCREENSHOT") or os.path.join(self.base, "dashboard.png")
        with open(target, "wb") as f:
            f.write(screenshot)
        self.assertEqual(driver.script("return performance.getEntriesByType('navigation').length"), 1)
        outside = driver.script(
            "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
            ".filter(function (n) { return n.indexOf(location.origin + '/') !== 0; })"
        )
        self.assertEqual(outside, [])
        # A third machine joins a with an invite (relaymesh join, which
        # closes its connection once paired): the feed says it joined and
        # that its join connection closed; the table lists it as a paired
        # peer, as /api/peers does.
        store_a = KeyStore(home_a)
        invite = make_invite("laptop-a3f2", "127.0.0.1", relay_a, time.time())
        arm_invite(store_a, invite)
        home_c = os.path.join(self.base, "c")
        KeyStore(home_c).set_identity("phone-9d0e")
        joined = subprocess.run(
            [sys.executable, "-m", "relaymesh", "--data-dir", home_c, "join", invite.relaymesh_link],
            env=self.env, cwd=self.base, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )  # fmt: skip
        self.assertEqual(joined.returncode, 0, joined.stderr)
        self.wait("the join in the feed", lambda: len(driver.script(JOINS)) == 2)
        self.assertEqual(
            [text.split(":")[0] for text in driver.script(JOINS)],
            ["phone-9d0e's join connection closed", "phone-9d0e joined from 127.0.0.1"],
        )
        self.wait("the joined peer listed", lambda: driver.script(STATE_OF, "phone-9d0e") == "disconnected")
        self.assertEqual(
            [p["peer_id"] for p in node_a.call("GET", "/api/peers")["peers"]], ["buildbox-7c1e", "phone-9d0e"]
        )
        self.assertEqual(driver.script("return document.querySelectorAll('#peers tbody tr').length"), 2)
        # In a 1400x900 window, every row's action buttons are in sight,
        # even with a wide row: an address dialled in vain, with its error
        # and its next attempt.
        driver.window_size(1400, 900)
        self.wait("the window resized", lambda: driver.script("return window.innerWidth") == 1400, limit=5)
        nothing = f"127.0.0.1:{free_port()}"
        node_a.call("POST", "/api/peers", {"addr": nothing})
        self.wait(
            "the failed dial's row",
            lambda: driver.script(DIAL_ROW, nothing) == ["dialling", True],
            limit=10,
        )
        self.assertEqual(driver.script("return document.querySelectorAll('#peers button[data-action]').length"), 5)
        self.assertEqual(driver.script(HIDDEN_ACTIONS), [])
        node_a.call("DELETE", f"/api/peers/{nothing}")
        self.wait("the dial's row gone", lambda: driver.script(DIAL_ROW, nothing) is None, limit=10)
        # Forget the joined peer from the dashboard: after a confirmation the
        # node drops its key, and the row goes.
        driver.script(CLICK_ACTION, "phone-9d0e", "forget")
        self.wait("the confirmation", lambda: driver.script("return !document.getElementById('peer-confirm').hidden"))
        self.assertIn("Forget phone-9d0e?", driver.script("return document.getElementById('peer-confirm-text').textContent"))
        driver.click(driver.find("#peer-confirm-yes"))
        self.wait("the answer", lambda: driver.script(RESULT) == ["done", "Forgot phone-9d0e."])
        self.wait("phone gone from the table", lambda: driver.script(STATE_OF, "phone-9d0e") is None)
        self.assertFalse(os.path.exists(os.path.join(home_a, "peers", "phone-9d0e.key")))
        self.assertEqual([p["peer_id"] for p in node_a.call("GET", "/api/peers")["peers"]], ["buildbox-7c1e"])
        # Disconnect b from the dashboard: it asks first; Cancel does nothing.
        driver.script(CLICK_ACTION, "buildbox-7c1e", "disconnect")
        self.wait("the confirmation", lambda: driver.script("return !document.getElementById('peer-confirm').hidden"))
        self.assertIn("Disconnect buildbox-7c1e?", driver.script("return document.getElementById('peer-confirm-text').textContent"))
        driver.click(driver.find("#peer-confirm-no"))
        self.assertEqual(driver.script("return document.getElementById('peer-confirm').hidden"), True)
        self.assertEqual(self.state_on(node_a, "buildbox-7c1e"), "connected")
        live_disconnections = len(driver.script(FEED_OF, "peer_disconnected", False))
        driver.script(CLICK_ACTION, "buildbox-7c1e", "disconnect")
        self.wait("the confirmation", lambda: driver.script("return !document.getElementById('peer-confirm').hidden"))
        driver.click(driver.find("#peer-confirm-yes"))
        self.wait("the answer", lambda: driver.script(RESULT) == ["done", "Disconnected buildbox-7c1e."])
        self.wait(
            "the disconnection by request in the feed",
            lambda: len(driver.script(FEED_OF, "peer_disconnected", False)) > live_disconnections,
        )
        # b is stopped and its key forgotten (by relaymesh forget on a's
        # data directory) while the page still lists it: the node's error
        # line is shown, and the row goes once the node no longer lists it.
        self.stop(beta_again)
        self.wait("buildbox disconnected", lambda: driver.script(STATE_OF, "buildbox-7c1e") == "disconnected")
        driver.script(CLICK_ACTION, "buildbox-7c1e", "disconnect")
        self.wait("the confirmation", lambda: driver.script("return !document.getElementById('peer-confirm').hidden"))
        os.unlink(os.path.join(home_a, "peers", "buildbox-7c1e.key"))
        driver.click(driver.find("#peer-confirm-yes"))
        self.assertEqual(
            self.wait("the error line", lambda: driver.script(RESULT) if driver.script(RESULT)[1] else None),
            ["error", "Could not disconnect buildbox-7c1e: unknown peer 'buildbox-7c1e'"],
        )
        self.wait("buildbox gone from the table", lambda: driver.script(STATE_OF, "buildbox-7c1e") is None, limit=10)
        # Forget token: the page signs out and the node removes the cookie.
        driver.click(driver.find("#signout"))
        self.wait("the sign-in form", lambda: driver.script("return !document.getElementById('login').hidden"))
        self.wait(
            "the cookie removed",
            lambda: not [c for c in driver.cookies() if c["name"].startswith("relaymesh_token")],
        )
        self.assertEqual(driver.script("return sessionStorage.length"), 0)
        self.assertLess(time.monotonic() - started, BUDGET)
