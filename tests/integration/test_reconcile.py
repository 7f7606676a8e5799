"""
Reconciliation (issue 17, point 8): with the Management API configured,
every active claim is checked against GET /api/v2/users/{id}/
authentication-methods once per reconcile_interval, against the fake
tenant of fake_auth0.py on 127.0.0.1.

- A claim whose user no longer has that phone (or no longer exists) is
  released; a phone method the store does not know is claimed, or
  recorded as a conflict when someone else holds the number; a claim the
  tenant backs stays.
- "reconcile" on the status socket (phoneclaimctl reconcile) starts a
  pass now; "reconcile USER" checks one user now.
- A pass survives a kill -9: after the restart it goes on from the cursor
  kept in the store, it does not start again.
- reconcile_interval = 0 turns it off; a due pass starts on its own.
- reconcile_share: a request waits for the rate-limit reset when less
  than that share of the bucket is left.
- Progress in status and /metrics.
"""

import os
import subprocess
import time
import unittest
import urllib.parse

import harness
from harness import fresh_user
import test_logstream as ls
from test_mgmt import VerifyCase

harness.require_daemon()

WAIT = 30.0


class ReconcileCase(VerifyCase):
    """Helpers: active claims made through the log stream."""

    def mgmt_daemon(self, start=True, **conf):
        conf.setdefault("reconcile_interval", "604800")
        return super().mgmt_daemon(start, **conf)

    def active(self, d, user, phone=None, device=None):
        """Give user an active claim (a gd_enrollment_complete); phone."""
        phone = phone or ls.number()
        self.stream(d, ls.enrolled(user, phone, device=device))
        self.held(d, phone, user)
        return phone

    def rec(self, d):
        return self.ask(d, "status")["reconcile"]

    def wait_passes(self, d, passes=1, timeout=WAIT):
        """Wait until passes complete passes since start, none running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.rec(d)
            if r["passes"] >= passes and r["state"] != "running":
                return r
            time.sleep(0.1)
        self.fail("no reconciliation pass: %r\n%s" % (self.rec(d),
                                                      d.tail()))

    def gets(self, user=None):
        """GET authentication-methods requests (of user, if given)."""
        out = []
        for s in self.fake.requests("/api/v2/users/"):
            path = urllib.parse.unquote(s[1])
            if s[0] == "GET" and path.endswith("/authentication-methods") \
                    and (user is None or "/users/%s/" % user in path):
                out.append(s)
        return out

    def metrics_text(self, d):
        return d.request("GET", "/metrics").raw.decode()


class PassTests(ReconcileCase):
    """One pass over the store against the tenant."""

    def test_stale_released_unknown_learned_conflict_recorded(self):
        d = self.mgmt_daemon()
        self.wait_passes(d)		# the first pass, over an empty store
        gone, backed, learner, holder, deleted = \
            (fresh_user() for _ in range(5))
        p_gone = self.active(d, gone)
        p_backed = self.active(d, backed)
        p_learner = self.active(d, learner)
        p_holder = self.active(d, holder)
        p_deleted = self.active(d, deleted)
        p_new, p_taken = ls.number(), ls.number()
        # The tenant: gone removed the phone (the event was lost), deleted
        # was deleted with its connection (no sdu), learner enrolled a
        # second phone the daemon never heard of, backed enrolled the
        # number holder holds.
        self.fake.add_user(gone)
        self.fake.add_phone(backed, p_backed)
        self.fake.add_phone(backed, p_taken)
        self.fake.add_phone(learner, p_learner)
        self.fake.add_phone(learner, p_new)
        self.fake.add_phone(holder, p_holder)
        self.stream(d, ls.enrolled(holder, p_taken))
        self.held(d, p_taken, holder)
        self.fake.add_phone(holder, p_taken)
        before = len(self.gets())
        r = self.ask(d, "reconcile")
        self.assertEqual(r.get("reconcile"), "started", r)
        r = self.wait_passes(d, 2)
        self.free(d, p_gone)
        self.free(d, p_deleted)
        self.held(d, p_backed, backed)
        self.held(d, p_learner, learner)
        self.held(d, p_new, learner)
        self.held(d, p_holder, holder)
        self.held(d, p_taken, holder)
        self.assertEqual(self.claims_of(d, learner)[p_new[-4:]],
                         ("active", "verify"))
        cfs = [c for c in self.ask(d, "conflicts")["conflicts"]
               if c["number"][-4:] == p_taken[-4:]]
        self.assertEqual(len(cfs), 1, cfs)
        self.assertIn(backed, cfs[0]["user_ids"])
        # Six active claims, five users: each user read once or more.
        self.assertGreaterEqual(len(self.gets()) - before, 5)
        self.assertEqual((r["released"], r["learned"], r["conflicts"]),
                         (2, 1, 1), r)
        self.assertEqual(r["pass_checked"], r["pass_total"], r)
        self.assertGreaterEqual(r["checked"], 6, r)
        self.assertIsNotNone(r["last_pass"], r)
        text = self.metrics_text(d)
        self.assertIn('phoneclaimd_reconcile_total{result="released"} 2',
                      text)
        self.assertIn('phoneclaimd_reconcile_total{result="learned"} 1',
                      text)
        self.assertIn('phoneclaimd_reconcile_total{result="conflict"} 1',
                      text)
        self.assertRegex(text, r"(?m)^phoneclaimd_reconcile_passes_total "
                         r"[2-9]")
        self.assertIn("phoneclaimd_reconcile_pass_progress 1", text)
        log = self.log_of(d)
        self.assertIn("reconcile: pass done", log)
        for p in (p_gone, p_new, p_taken):
            self.assertNotIn(p, log)
            self.assertNotIn(p[1:], log)

    def test_masked_numbers_release_by_digits_only(self):
        """Obfuscated answers: the visible digits back a claim; no digit
        at all releases nothing (counted unsettled)."""
        self.fake.obfuscate = "digits"
        d = self.mgmt_daemon()
        self.wait_passes(d)
        kept, gone = fresh_user(), fresh_user()
        p_kept, p_gone = self.active(d, kept), self.active(d, gone)
        self.fake.add_phone(kept, p_kept)
        self.fake.add_phone(gone, ls.number())	# other digits
        self.ask(d, "reconcile")
        r = self.wait_passes(d, 2)
        self.held(d, p_kept, kept)
        self.free(d, p_gone)
        self.assertEqual((r["released"], r["learned"]), (1, 0), r)
        self.fake.obfuscate = "all"
        unsure = fresh_user()
        p_unsure = self.active(d, unsure)
        self.fake.add_phone(unsure, ls.number())
        self.ask(d, "reconcile")
        r = self.wait_passes(d, 3)
        self.held(d, p_unsure, unsure)
        self.assertGreaterEqual(r["unsettled"], 1, r)

    def test_one_user_now(self):
        d = self.mgmt_daemon()
        self.wait_passes(d)
        user, other = fresh_user(), fresh_user()
        p1, p2 = self.active(d, user), self.active(d, other)
        self.fake.add_user(user)
        self.fake.add_user(other)
        r = self.ask(d, "reconcile " + user)
        self.assertEqual(r.get("reconcile"), "queued", r)
        deadline = time.monotonic() + WAIT
        while not self.gets(user):
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.1)
        deadline = time.monotonic() + WAIT
        while self.claims_of(d, user):
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.1)
        self.free(d, p1)
        # Only that user: no pass, other's stale claim is still there.
        self.assertEqual(self.gets(other), [])
        self.held(d, p2, other)
        self.assertEqual(self.ask(d, "reconcile " + "u" * 600).get("error"),
                         "invalid_user_id")

    def test_phoneclaimctl_reconcile(self):
        d = self.mgmt_daemon()
        self.wait_passes(d)
        user = fresh_user()
        phone = self.active(d, user)
        self.fake.add_user(user)
        ctl = os.environ.get("PHONECLAIMCTL")
        if not ctl:
            self.skipTest("PHONECLAIMCTL is not set")
        r = subprocess.run([ctl, "-s", d.conf["status_socket"],
                            "reconcile"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"started"', r.stdout)
        self.wait_passes(d, 2)
        self.free(d, phone)


class RestartTests(ReconcileCase):
    """A pass goes on from its cursor after kill -9."""

    def test_kill_in_the_middle_resumes(self):
        d = self.mgmt_daemon()
        self.wait_passes(d)
        users = [fresh_user() for _ in range(24)]
        phones = {}
        for u in users:
            phones[u] = self.active(d, u)
            self.fake.add_phone(u, phones[u])
        stale = users[::6]		# four users lost their phone
        for u in stale:
            with self.fake.lock:
                self.fake.users[u] = []
        self.fake.fail_next("/api/v2/users/", None, delay=0.25, times=1000)
        before = len(self.gets())
        self.ask(d, "reconcile")
        deadline = time.monotonic() + WAIT
        while len(self.gets()) - before < 8:
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.05)
        progress = self.rec(d)["pass_checked"]
        d.kill()
        first = {urllib.parse.unquote(s[1]) for s in self.gets()[before:]}
        with self.fake.lock:
            self.fake.script.clear()
        mark = len(self.gets())
        d.start()
        r = self.rec(d)
        self.assertEqual(r["state"] in ("running", "idle"), True, r)
        self.assertGreaterEqual(r["pass_checked"], progress - 1, r)
        r = self.wait_passes(d, 1)
        second = [urllib.parse.unquote(s[1]) for s in self.gets()[mark:]]
        # Not started again: at most the one in flight is read twice.
        self.assertLessEqual(len(set(second) & first), 1,
                             (len(first), len(second)))
        self.assertEqual(len(first | set(second)), len(users))
        for u in users:
            if u in stale:
                self.free(d, phones[u])
            else:
                self.held(d, phones[u], u)
        self.assertEqual(r["pass_checked"], r["pass_total"], r)


class ScheduleTests(ReconcileCase):
    """The interval, off, and the share of the rate limit."""

    def test_due_pass_starts_on_its_own(self):
        d = self.mgmt_daemon(reconcile_interval="3")
        user = fresh_user()
        phone = self.active(d, user)
        self.fake.add_user(user)
        deadline = time.monotonic() + WAIT
        while self.claims_of(d, user):
            self.assertLess(time.monotonic(), deadline,
                            "%r\n%s" % (self.rec(d), d.tail()))
            time.sleep(0.2)
        self.free(d, phone)
        self.assertEqual(self.rec(d)["interval"], 3)

    def test_zero_turns_it_off(self):
        d = self.mgmt_daemon(reconcile_interval="0")
        user = fresh_user()
        phone = self.active(d, user)
        self.fake.add_user(user)
        r = self.rec(d)
        self.assertEqual(r["state"], "off", r)
        self.assertEqual(self.ask(d, "reconcile").get("error"),
                         "reconcile_off")
        self.held(d, phone, user)
        self.assertEqual(self.gets(), [])

    def test_not_without_the_management_api(self):
        d = self.own_daemon()
        self.assertNotIn("reconcile", self.ask(d, "status"))
        self.assertEqual(self.ask(d, "reconcile").get("error"),
                         "not_configured")
        self.assertNotIn("reconcile_total", self.metrics_text(d))

    def test_share_waits_for_the_reset(self):
        d = self.mgmt_daemon(reconcile_share="20")
        self.wait_passes(d)
        users = [fresh_user() for _ in range(3)]
        for u in users:
            self.fake.add_phone(u, self.active(d, u))
        reset = int(time.time()) + 3
        # 5 of 10 left: below the 80 % the other jobs keep.
        self.fake.rate_headers = {"x-ratelimit-limit": "10",
                                  "x-ratelimit-remaining": "5",
                                  "x-ratelimit-reset": str(reset)}
        before = len(self.gets())
        self.ask(d, "reconcile")
        self.wait_passes(d, 2)
        got = self.gets()[before:]
        self.assertEqual(len(got), 3)
        # The first answer said 5 of 10: the next waited for the reset.
        self.assertGreaterEqual(got[1][4], reset - 0.05)


if __name__ == "__main__":
    unittest.main()
