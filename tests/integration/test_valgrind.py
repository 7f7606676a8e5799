"""
The daemon runs and shuts down clean under valgrind: no invalid reads or
writes, no use of uninitialised memory, and no memory definitely or
indirectly lost at exit.  ("Possibly lost" blocks belong to
libphonenumber's process-wide singleton and are not ours.)  Also a
replication group with its master and a replica under valgrind.
valgrind.supp holds the one report of Berkeley DB's own that is
suppressed, with the reason.

Skipped when valgrind is missing or the daemon was built with
AddressSanitizer or ThreadSanitizer (valgrind does not mix with either).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import unittest

import harness
from harness import (DaemonTestCase, ValgrindDaemon, fresh_number,
                     fresh_user, write_secret)
from fake_auth0 import FakeAuth0
from repl_group import Group, wait_holders
import test_logstream as ls


def valgrind_or_skip():
    vg = shutil.which("valgrind")
    if vg is None:
        print("valgrind not found: skipping", file=sys.stderr)
        sys.exit(77)
    daemon = harness.require_daemon()
    ldd = subprocess.run(["ldd", daemon], capture_output=True, text=True)
    for lib, name in (("libasan", "AddressSanitizer"),
                      ("libtsan", "ThreadSanitizer")):
        if lib in ldd.stdout:
            print("daemon built with %s: skipping valgrind (the two do "
                  "not mix)" % name, file=sys.stderr)
            sys.exit(77)
    return vg


class ValgrindTests(DaemonTestCase):

    def test_requests_and_clean_shutdown(self):
        d = ValgrindDaemon(pending_ttl=600)
        self._daemons.append(d)
        d.start(timeout=60)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), 600)
        self.assertResult(d.claim(n, u), "owned")
        self.assertTaken(d.claim(n, fresh_user()))
        self.assertResult(d.claim(n, fresh_user(),
                                  "second-factor-authentication"),
                          "conflict")
        self.assertError(d.post_claims(b"[[["), 400, "invalid_json")
        self.assertError(d.claim("not a number", u), 400,
                         "invalid_phone_number")
        d.send_signal(signal.SIGHUP)
        self.assertEqual(d.request("GET", "/healthz").status, 200)
        rc = d.stop(timeout=60)
        self.assertValgrindClean(d, rc)

    def test_management_api_and_clean_shutdown(self):
        """libcurl on the loop: token, backfill, a verification, a
        conflict removal and a secret reload, then a clean stop."""
        fake = FakeAuth0()
        self.addCleanup(fake.close)
        d = ValgrindDaemon(on_conflict="remove",
                           backfill_since="2020-01-01")
        self._daemons.append(d)
        write_secret(d.path("auth0.secret"), fake.secret)
        d.conf.update({"auth0_domain": "tenant.example.com",
                       "auth0_client_id": fake.client_id,
                       "auth0_client_secret_file": d.path("auth0.secret"),
                       "auth0_base_url": fake.url})
        d.write_conf()
        user, holder, later = fresh_user(), fresh_user(), fresh_user()
        phone, shared = ls.number(), ls.number()
        dev = ls.new_device()
        fake.add_phone(user, phone)
        fake.add_phone(later, shared, device=dev)
        fake.add(ls.bare(ls.enrolled(holder, shared)))
        # The holder really has it: the first reconciliation pass (at
        # start, under valgrind too) keeps the claim.
        fake.add_phone(holder, shared)
        d.start(timeout=60)
        deadline = time.monotonic() + 60
        while d.ask("status")["backfill"]["runs"] < 1 or \
                d.ask("status")["backfill"]["state"] != "idle":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.5)
        items = [ls.enrolled(user, None),		# unmatched: verified
                 ls.enrolled(later, shared, device=dev)]	# conflict
        r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.status, 200)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = d.ask("status")
            if st["verify"]["done"] == 1 and \
                    st["removals"]["removed"] == 1:
                break
            time.sleep(0.5)
        self.assertEqual((st["verify"]["claimed"],
                          st["removals"]["removed"]), (1, 1), st)
        write_secret(d.path("auth0.secret"), fake.secret + "-new")
        d.send_signal(signal.SIGHUP)
        self.assertEqual(d.request("GET", "/healthz").status, 200)
        rc = d.stop(timeout=60)
        self.assertValgrindClean(d, rc)


class ValgrindReplTests(DaemonTestCase):

    def test_group_members_shut_down_clean(self):
        """A replication group with its master and one replica under
        valgrind: repmgr's threads, commits that wait for
        acknowledgements, a replica forwarding writes (libcurl on the
        loop), and the role changes of the stop."""
        g = Group(3, priorities=[100, 50, 10], pending_ttl=600,
                  repl_heartbeat=1000, repl_election_timeout=3000,
                  repl_ack_timeout=10000)
        self.addCleanup(g.stop)
        watched = g.nodes[:2]
        for d in watched:
            d.command = types.MethodType(ValgrindDaemon.command, d)
        for d in g.nodes:
            d.start(timeout=120)
        m = g.wait_master(timeout=120)
        held = []
        for d in g.nodes:
            n, u = fresh_number(), fresh_user()
            self.assertReserved(d.claim(n, u), 600)
            self.assertTaken(d.claim(n, fresh_user()))
            held.append((n, u))
        for d in g.nodes:
            for n, u in held:
                self.assertEqual(wait_holders(d, n, [u], 60), [u], d.dir)
            self.assertEqual(d.request("GET", "/healthz").status, 200)
        # The watched replica first, then the master.
        for d in sorted(watched, key=lambda d: d is m):
            rc = d.stop(timeout=120)
            self.assertValgrindClean(d, rc)


if __name__ == "__main__":
    valgrind_or_skip()
    unittest.main()
