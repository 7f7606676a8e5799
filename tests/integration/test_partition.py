"""
High availability under a network partition (issue 9): a three-node group
on loopback ports whose members run under the netcut shim
(tests/tools/netcut.c, LD_PRELOAD), which cuts their TCP connections by
port, so a test can split the group without root or namespaces.

- The master cut off alone: the two others elect a new master and go on
  serving; the old master never answers a write 2xx while cut off (its
  commits are not acknowledged: 503); healed, it steps down, rejoins as a
  replica and its unacknowledged change is gone.
- A replica cut off alone answers writes 503 once it knows no master, and
  /healthz 503; healed, it catches up with what the majority wrote.
"""

import os
import sys
import time
import unittest

import harness
from harness import fresh_number, fresh_user
from repl_group import Group, GroupTestCase, claim_settled

harness.require_daemon()

SHIM = os.environ.get("NETCUT")


@unittest.skipUnless(SHIM and os.path.exists(SHIM),
                     "NETCUT is not set (run through make check)")
class PartitionTests(GroupTestCase):

    def make_group(self):
        return Group(3, pending_ttl=3600, netcut=SHIM)

    def wait(self, what, fn, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = fn()
            if v:
                return v
            time.sleep(0.1)
        self.fail("no %s within %d s" % (what, timeout))

    def holders(self, d, phone):
        """The holders of phone on d; None while d cannot tell (a replica
        synchronising with its master answers unavailable)."""
        ans = d.ask("lookup " + phone)
        if "claims" not in ans:
            return None
        return [c["user_id"] for c in ans["claims"]]

    def test_master_cut_off(self):
        g, old = self.group, self.master
        a, b = g.replicas(old)
        g.partition([old])
        # The majority elects a new master and serves writes.
        new = self.wait("new master", lambda: next(
            (d for d in (a, b) if (g.status(d) or {}).get(
                "replication", {}).get("role") == "master"), None))
        phone, winner = fresh_number(), fresh_user()
        r = self.wait("write on the majority", lambda: (lambda r: r if
                      r.status == 200 else None)(a.claim(phone, winner)))
        # (A 503 while the majority elects may have committed: then owned.)
        self.assertIn(r.get("result"), ("reserved", "owned"))
        # The old master, cut off, never answers 2xx.
        loser = fresh_user()
        for _ in range(5):
            r = old.claim(phone, loser)
            self.assertEqual((r.status, r.json),
                             (503, {"error": "unavailable"}), str(r))
        self.assertGreater(old.ask("status")["replication"]["perm_failed"],
                           0)
        # Healed: one master again; everywhere the majority's claim holds
        # and the old master's unacknowledged change is gone.
        g.heal()
        m = g.wait_master()
        print("partition: new master %s, after the heal %s" % (
            g.nodes.index(new), g.nodes.index(m)), file=sys.stderr)
        for d in g.nodes:
            self.wait("node %d to agree" % g.nodes.index(d), lambda:
                      self.holders(d, phone) == [winner])
            r = claim_settled(d, phone, loser)
            self.assertEqual((r.status, r.json), (409, {"result": "taken"}))

    def test_replica_cut_off(self):
        g, m = self.group, self.master
        cut = g.replicas(m)[0]
        g.partition([cut])
        self.wait("the cut-off replica to lose its master", lambda:
                  (g.status(cut) or {}).get("replication", {}).get(
                      "master", "x") is None)
        r = cut.claim(fresh_number(), fresh_user())
        self.assertEqual((r.status, r.json),
                         (503, {"error": "unavailable"}), str(r))
        self.assertEqual(cut.request("GET", "/healthz").status, 503)
        # The majority still has a quorum.
        phone, user = fresh_number(), fresh_user()
        r = m.claim(phone, user)
        self.assertEqual((r.status, r.get("result")), (200, "reserved"))
        g.heal()
        self.assertIs(g.wait_master(), m)
        self.wait("the replica to catch up", lambda:
                  self.holders(cut, phone) == [user])
        r = claim_settled(cut, fresh_number(), fresh_user())
        self.assertEqual((r.status, r.get("result")), (200, "reserved"))


if __name__ == "__main__":
    unittest.main()
