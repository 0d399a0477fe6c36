"""
C{relaymesh join} and a peer it is already paired with.

The attack replayed here: a node already paired with alpha joined a new
invite from alpha (or from whoever answers at alpha's address) and its key
for alpha was silently replaced; the accepting side refuses the same case.
Now the join is refused, with one line naming the peer and what to do,
unless C{--replace} is given; with it, the key is replaced and the output
says so, and a running node is made to drop the old key's connection.
"""

from __future__ import annotations

import json
import os
from io import StringIO

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.control import client as apiclient
from relaymesh.join import AlreadyPaired, JoinResult, ask_node_to_dial
from relaymesh.joinforms import parse_join_input
from relaymesh.test.apisupport import TOKEN, ApiHarness
from relaymesh.test.joinsupport import ANONYMOUS, FORMS, InvitingNode
from relaymesh.test.support import EPOCH

#: beta's key for alpha from an earlier pairing.
OLD_KEY = bytes(range(32))

#: The forms that name the inviting node, and the --peer a bare code needs.
NAMING_FORMS = [form for form in FORMS if form[0] not in ANONYMOUS]

#: The forms that do not: the node is known only once it answers.
ANONYMOUS_FORMS = [(name, pick) for name, pick, _peer in FORMS if name in ANONYMOUS]


class DirectJoinTests(SynchronousTestCase):
    """
    L{join_directly} with a key already stored for the inviting node.
    """

    def setUp(self):
        self.alpha = InvitingNode(self)
        self.beta = self.alpha.joiner("beta")
        self.beta.set_key("alpha", OLD_KEY)
        self.beta.update_meta("alpha", addr="10.0.0.2:9847", paired_via="pair_code")

    def test_refusedBeforeConnecting(self):
        """
        An invite that names a peer already paired with is refused before
        any connection: the key stays, and the invite is not used up.
        """
        for name, pick, peer in NAMING_FORMS:
            printed = self.alpha.invite()
            d = self.alpha.join(self.beta, parse_join_input(pick(printed), peer))
            error = self.failureResultOf(d, AlreadyPaired).value
            self.assertEqual(
                str(error),
                "already paired with alpha: joining would replace its key; "
                "run relaymesh forget alpha first, or join again with --replace",
                name,
            )
            self.assertEqual(error.peer_id, "alpha")
            self.assertEqual(self.beta.key("alpha"), OLD_KEY, name)
            self.assertEqual(self.alpha.reactor.tcpClients, [], name)
            self.assertEqual(len(self.alpha.store.armed_keys(EPOCH)), 2, name)
            self.assertTrue(self.alpha.store.strong_code_armed(EPOCH), name)
            self.assertEqual(self.alpha.store.peers(), [], name)

    def test_replace(self):
        """
        With C{replace}, each form pairs again: both sides hold the new key
        and the result says the old one was replaced.
        """
        for name, pick, peer in NAMING_FORMS:
            self.setUp()
            printed = self.alpha.invite()
            result = self.successResultOf(
                self.alpha.join(self.beta, parse_join_input(pick(printed), peer), replace=True)
            )
            self.assertEqual((result.peer_id, result.replaced), ("alpha", True), name)
            new_key = self.beta.key("alpha")
            self.assertNotEqual(new_key, OLD_KEY, name)
            self.assertEqual(new_key, self.alpha.store.key("beta"), name)
            self.assertEqual(self.beta.meta("alpha")["paired_via"], result.form, name)

    def test_replaceNothing(self):
        """
        C{replace} with no key stored pairs as usual, and says nothing was
        replaced.
        """
        self.beta.forget("alpha")
        printed = self.alpha.invite()
        result = self.successResultOf(self.alpha.join(self.beta, parse_join_input(printed.link), replace=True))
        self.assertFalse(result.replaced)
        self.assertEqual(self.beta.key("alpha"), self.alpha.store.key("beta"))

    def test_anonymousForms(self):
        """
        A relay code or word phrase names no node: the join learns it is
        alpha from the handshake, then keeps the old key, stores no new one
        and says that the invite is used up.
        """
        for name, pick in ANONYMOUS_FORMS:
            self.setUp()
            printed = self.alpha.invite()
            d = self.alpha.join(self.beta, parse_join_input(pick(printed)))
            error = self.failureResultOf(d, AlreadyPaired).value
            message = str(error)
            self.assertTrue(message.startswith("10.0.0.2:9847 is alpha, already paired with this node"), message)
            self.assertIn("the invite is used up", message)
            self.assertIn("--replace", message)
            self.assertNotIn("\n", message)
            self.assertEqual(self.beta.key("alpha"), OLD_KEY, name)
            self.assertEqual(self.beta.meta("alpha")["paired_via"], "pair_code", name)
            # alpha, which had no key for beta, took the invite's key for it
            self.assertEqual(self.alpha.store.armed_keys(EPOCH), [], name)
            self.assertIsNotNone(self.alpha.store.key("beta"), name)

    def test_anonymousFormsReplace(self):
        for name, pick in ANONYMOUS_FORMS:
            self.setUp()
            printed = self.alpha.invite()
            result = self.successResultOf(self.alpha.join(self.beta, parse_join_input(pick(printed)), replace=True))
            self.assertTrue(result.replaced, name)
            self.assertEqual(self.beta.key("alpha"), self.alpha.store.key("beta"), name)
            self.assertNotEqual(self.beta.key("alpha"), OLD_KEY, name)

    def test_otherPeersUntouched(self):
        """
        A key for another peer does not stop a join with alpha.
        """
        self.beta.forget("alpha")
        self.beta.set_key("gamma", OLD_KEY)
        printed = self.alpha.invite()
        result = self.successResultOf(self.alpha.join(self.beta, parse_join_input(printed.relaymesh_link)))
        self.assertFalse(result.replaced)
        self.assertEqual(self.beta.key("gamma"), OLD_KEY)


class CommandTests(SynchronousTestCase):
    """
    C{relaymesh join} and C{--replace}, with the join carried in memory to a
    real inviting node, and the running node's API replaced.
    """

    def setUp(self):
        self.alpha = InvitingNode(self)
        self.beta = self.alpha.joiner("beta")
        self.beta.set_key("alpha", OLD_KEY)
        self.calls: list[tuple] = []
        self.patch(cli_pairing, "run_reactor", self.runReactor)
        self.patch(cli_pairing, "local_node", lambda data_dir, identity, *node_options: None)

    def runReactor(self, work):
        d = work(self.alpha.reactor)
        self.alpha.carry()
        outcome = []
        d.addBoth(outcome.append)
        [result] = outcome
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def command(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = StringIO(), StringIO()
        status = main([*argv, "--data-dir", self.beta.path], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_refused(self):
        printed = self.alpha.invite()
        status, out, err = self.command("join", printed.strong_link)
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(
            err,
            "relaymesh: error: already paired with alpha: joining would replace its key; "
            "run relaymesh forget alpha first, or join again with --replace\n",
        )
        self.assertEqual(self.beta.key("alpha"), OLD_KEY)
        self.assertTrue(self.alpha.store.strong_code_armed(EPOCH))

    def test_replace(self):
        printed = self.alpha.invite()
        status, out, err = self.command("join", printed.strong_link, "--replace")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            "Replaced the key of alpha: paired again with alpha (10.0.0.2:9847)\n"
            "A node started on this key store dials alpha@10.0.0.2:9847 (its address is remembered).\n",
        )
        self.assertEqual(self.beta.key("alpha"), self.alpha.store.key("beta"))

    def test_replaceJson(self):
        printed = self.alpha.invite()
        status, out, err = self.command("join", "--json", printed.link, "--replace")
        self.assertEqual(status, 0, err)
        data = json.loads(out)
        self.assertEqual((data["peer_id"], data["replaced"], data["node_dialling"]), ("alpha", True, False))

    def test_runningNode(self):
        """
        With a node running on the key store, a replaced key makes it close
        the old key's connection and stop dialling (C{DELETE}), then dial
        again (C{POST}); a refused join asks it nothing.
        """
        node = RecordingNode()
        self.patch(cli_pairing, "local_node", lambda data_dir, identity, *node_options: node)
        printed = self.alpha.invite()
        status, _, err = self.command("join", printed.relaymesh_link)
        self.assertEqual(status, 2, err)
        self.assertEqual(node.calls, [])
        status, out, err = self.command("join", printed.relaymesh_link, "--replace")
        self.assertEqual(status, 0, err)
        self.assertEqual(
            node.calls,
            [("DELETE", "/api/peers/alpha", None), ("POST", "/api/peers", {"addr": "alpha@10.0.0.2:9847", "source": "join"})],
        )
        self.assertEqual(out.splitlines()[1], "The running node is connecting to alpha with the new key.")


class RecordingNode:
    """
    A running node's API client that records the requests it is asked to
    make, and answers each as a node would.
    """

    def __init__(self, missing: bool = False) -> None:
        self.calls: list[tuple] = []
        self.missing = missing

    def call(self, method: str, path: str, body=None):
        self.calls.append((method, path, body))
        if method == "DELETE" and self.missing:
            raise apiclient.ApiRequestError(404, "no such peer")
        return {}


class AskNodeTests(SynchronousTestCase):
    """
    L{ask_node_to_dial} with a replaced key.
    """

    def test_unknownToTheNode(self):
        """
        A node that never knew the peer answers 404 to the C{DELETE}: it is
        still asked to dial.
        """
        node = RecordingNode(missing=True)
        self.assertTrue(ask_node_to_dial(node, JoinResult("alpha", "10.0.0.2:9847", "link", replaced=True)))
        self.assertEqual([c[0] for c in node.calls], ["DELETE", "POST"])

    def test_notReplaced(self):
        node = RecordingNode()
        self.assertTrue(ask_node_to_dial(node, JoinResult("alpha", "10.0.0.2:9847", "link")))
        self.assertEqual([c[0] for c in node.calls], ["POST"])


class RunningNodeApiTests(TestCase):
    """
    The replaced key through a real node's control API (HTTP on 127.0.0.1):
    the dialler with the old address goes, one with the new one comes.
    """

    @defer.inlineCallbacks
    def test_redial(self):
        h = ApiHarness(self)
        h.keystore.set_key("gamma", os.urandom(32))
        code, _, _ = yield h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        self.assertEqual(code, 202)
        client = apiclient.NodeClient(h.url, TOKEN)
        result = JoinResult("gamma", "127.0.0.1:9901", "link", replaced=True)
        took = yield threads.deferToThread(ask_node_to_dial, client, result)
        self.assertTrue(took)
        self.assertEqual([str(o.target) for o in h.node.outbound()], ["gamma@127.0.0.1:9901"])
        took = yield threads.deferToThread(
            ask_node_to_dial, client, JoinResult("delta", "127.0.0.1:9902", "link", replaced=True)
        )
        self.assertFalse(took)  # the node has no key for delta: its POST is refused
