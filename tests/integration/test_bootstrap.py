"""
Bootstrap (issue 17, point 8): "phoneclaimctl bootstrap" learns every
phone factor of an existing tenant through the Management API, against
the fake tenant of fake_auth0.py on 127.0.0.1.

- A tenant of 10,000 users is listed by a users export job (pending, then
  its gzipped NDJSON file) and each user's authentication methods are
  read: full confirmed numbers are claimed (source "bootstrap"), a number
  another user holds is recorded as a conflict, numbers the store knew
  are counted known, a user gone since the export is counted missing.
- A 429 in the middle is waited out until x-ratelimit-reset; a kill -9 in
  the middle resumes from the cursor in the store: users are not read
  again (but the last few answers that changed nothing), nothing is
  claimed or counted twice, the summary is exact.
- A tenant whose plan has no export job is listed with GET /api/v2/users,
  page by page; one past the 1000 users that reaches is a clear error.
- Progress and the summary in status ("bootstrap"), /metrics
  (phoneclaimd_bootstrap_*) and the log.
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

WAIT = 60.0


class BootstrapCase(VerifyCase):
    """Helpers for the bootstrap tests."""

    def boot(self, d):
        return self.ask(d, "status")["bootstrap"]

    def wait_state(self, d, state, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.boot(d)
            if b["state"] == state:
                return b
            time.sleep(0.1)
        self.fail("bootstrap not %s: %r\n%s" % (state, self.boot(d),
                                                d.tail()))

    def wait_checked(self, d, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.boot(d)
            if b["checked"] >= n:
                return b
            time.sleep(0.05)
        self.fail("bootstrap stuck: %r\n%s" % (self.boot(d), d.tail()))

    def method_gets(self):
        """[(path, time)] of GET authentication-methods."""
        return [(urllib.parse.unquote(s[1]), s[4])
                for s in self.fake.requests("/api/v2/users/")
                if s[0] == "GET" and
                s[1].split("?")[0].endswith("/authentication-methods")]

    def metrics_text(self, d):
        return d.request("GET", "/metrics").raw.decode()


class LargeTenantTests(BootstrapCase):
    """10,000 users through the export job, a 429 and a restart."""

    USERS = 10000

    def tenant(self, d):
        """Fill the fake tenant; return what the bootstrap should find."""
        base = fresh_user()
        users = ["%s-%05d" % (base, i) for i in range(self.USERS)]
        for u in users:
            self.fake.add_user(u)
        want = {"learned": {}, "conflict": [], "known": {}}
        # 150 users with a phone nobody holds: learned.
        for u in users[100:10000:66][:150]:
            phone = ls.number()
            self.fake.add_phone(u, phone)
            want["learned"][phone] = u
        # 5 users the store knows already, with their phone: known; 5
        # others enrolled the same numbers (admin API): conflicts.
        for i in range(5):
            holder, dup = users[7 + 1000 * i], users[3007 + 1000 * i]
            phone = ls.number()
            self.stream(d, ls.enrolled(holder, phone))
            self.held(d, phone, holder)
            self.fake.add_phone(holder, phone)
            self.fake.add_phone(dup, phone)
            want["known"][phone] = holder
            want["conflict"].append((phone, dup))
        # 3 pairs of tenant users on one number the store does not know:
        # the first in the export claims it, the second conflicts.
        for i in range(3):
            a, b = users[20 + 2000 * i], users[9020 - 2000 * i]
            phone = ls.number()
            self.fake.add_phone(a, phone)
            self.fake.add_phone(b, phone)
            want["learned"][phone] = a
            want["conflict"].append((phone, b))
        # Unconfirmed: nothing to learn.
        self.fake.add_phone(users[55], ls.number(), confirmed=False)
        return users, want

    def test_ten_thousand_users_429_and_restart(self):
        d = self.mgmt_daemon()
        users, want = self.tenant(d)
        self.fake.export_polls = 2
        r = self.ask(d, "bootstrap")
        self.assertEqual(r.get("bootstrap"), "started", r)
        self.assertEqual(self.ask(d, "bootstrap").get("bootstrap"),
                         "running")
        self.wait_checked(d, 1500)
        # A 429 with the rate-limit headers, 100 users on.
        reset = int(time.time()) + 4
        self.fake.fail_next("/api/v2/users/", 429,
                            {"x-ratelimit-limit": "100",
                             "x-ratelimit-remaining": "0",
                             "x-ratelimit-reset": str(reset)}, after=100)
        b = self.wait_checked(d, 3000)
        self.assertEqual(b["state"], "running", b)
        self.assertEqual((b["phase"], b["via"], b["users"]),
                         ("users", "export", self.USERS), b)
        self.assertGreaterEqual(b["failures"], 1, b)
        # The 429 was waited out: the same user again, after the reset.
        path, status, t429 = self.fake.answered[0]
        self.assertEqual(status, 429)
        later = [(p, t) for p, t in self.method_gets() if t > t429]
        self.assertEqual(later[0][0], urllib.parse.unquote(path))
        self.assertGreaterEqual(later[0][1], min(reset, t429 + 1) - 0.05)
        # kill -9 in the middle, then a restart.
        progress = self.boot(d)["checked"]
        d.kill()
        seen_before = {p for p, _ in self.method_gets()}
        mark = len(self.method_gets())
        d.start()
        b = self.boot(d)
        self.assertIn(b["state"], ("running", "done"), b)
        self.assertGreaterEqual(b["checked"], progress - 100, b)
        b = self.wait_state(d, "done")
        # Resumed: at most the answers not yet flushed are read again.
        second = [p for p, _ in self.method_gets()[mark:]]
        self.assertLessEqual(len(set(second) & seen_before), 101)
        self.assertEqual(len(seen_before | set(second)), self.USERS)
        self.check_summary(d, b, want)

    def check_summary(self, d, b, want):
        self.assertEqual(b["checked"], self.USERS, b)
        self.assertEqual(b["users"], self.USERS, b)
        self.assertEqual(b["claimed"], len(want["learned"]), b)
        self.assertEqual(b["conflicts"], len(want["conflict"]), b)
        self.assertEqual(b["known"], len(want["known"]), b)
        self.assertEqual((b["missing"], b["masked"], b["refused"]),
                         (0, 0, 0), b)
        self.assertIsNotNone(b["finished"], b)
        for phone, user in want["learned"].items():
            self.assertEqual(self.claims_of(d, user)[phone[-4:]],
                             ("active", "bootstrap"))
            self.held(d, phone, user)
        for phone, user in want["known"].items():
            self.held(d, phone, user)
        cfs = self.ask(d, "conflicts")["conflicts"]
        for phone, user in want["conflict"]:
            mine = [c for c in cfs if c["number"][-4:] == phone[-4:] and
                    user in c["user_ids"]]
            self.assertEqual(len(mine), 1, (user, cfs))
            self.assertEqual(mine[0]["user_ids"].count(user), 1, mine)
        text = self.metrics_text(d)
        self.assertIn('phoneclaimd_bootstrap_phones{result="claimed"} %d'
                      % len(want["learned"]), text)
        self.assertIn('phoneclaimd_bootstrap_phones{result="conflict"} %d'
                      % len(want["conflict"]), text)
        self.assertIn('phoneclaimd_bootstrap_users{result="checked"} %d'
                      % self.USERS, text)
        self.assertIn("phoneclaimd_bootstrap_progress 1", text)
        self.assertIn("phoneclaimd_bootstrap_running 0", text)
        log = self.log_of(d)
        self.assertRegex(log, r"bootstrap: done in \d+s: %d user\(s\) "
                         r"checked, %d phone\(s\) claimed, %d conflict\(s\) "
                         r"found, %d already known" %
                         (self.USERS, len(want["learned"]),
                          len(want["conflict"]), len(want["known"])))
        for phone in list(want["learned"])[:20]:
            self.assertNotIn(phone[1:], log)
        # The export's link got no token; the file is gone.
        for s in self.fake.requests("/exports/"):
            self.assertNotIn("Authorization", s[2])
        self.assertEqual(len(self.fake.requests("/exports/")), 1)
        self.assertFalse(os.path.exists(d.path("bootstrap.export")))


class SmallTenantTests(BootstrapCase):
    """The fallback without an export job, the errors, the command."""

    def test_no_export_job_pages_through_users(self):
        self.fake.export_refused = 403
        d = self.mgmt_daemon()
        users = [fresh_user() for _ in range(250)]
        learned = {}
        for i, u in enumerate(users):
            self.fake.add_user(u)
            if i % 25 == 0:
                learned[u] = ls.number()
                self.fake.add_phone(u, learned[u])
        # Auth0 lists a user it no longer knows when asked: its claim in
        # the store goes.
        gone, p_gone = fresh_user(), ls.number()
        self.stream(d, ls.enrolled(gone, p_gone))
        self.held(d, p_gone, gone)
        self.fake.ghosts.append(gone)
        self.ask(d, "bootstrap")
        b = self.wait_state(d, "done")
        self.assertEqual(b["via"], "users", b)
        self.assertEqual((b["users"], b["checked"]), (251, 251), b)
        self.assertEqual((b["claimed"], b["missing"]), (len(learned), 1), b)
        self.free(d, p_gone)
        for u, phone in learned.items():
            self.held(d, phone, u)
        pages = [urllib.parse.parse_qs(urllib.parse.urlsplit(s[1]).query)
                 for s in self.fake.requests("/api/v2/users?")]
        self.assertEqual([p["page"][0] for p in pages], ["0", "1", "2"])
        self.assertIn("GET /api/v2/users", self.log_of(d))

    def test_past_1000_without_export_job_is_an_error(self):
        self.fake.export_refused = 403
        d = self.mgmt_daemon()
        for _ in range(1001):
            self.fake.add_user(fresh_user())
        self.ask(d, "bootstrap")
        b = self.wait_state(d, "failed")
        self.assertIn("1000", b["last_error"])
        self.assertIn("export job", b["last_error"])
        self.assertEqual(b["checked"], 0, b)
        self.assertEqual(self.method_gets(), [])
        # It can be started again (and fails again, as clearly).
        self.assertEqual(self.ask(d, "bootstrap").get("bootstrap"),
                         "started")

    def test_plain_export_and_phoneclaimctl(self):
        self.fake.export_gzip = False
        d = self.mgmt_daemon()
        user = fresh_user()
        phone = ls.number()
        self.fake.add_phone(user, phone)
        for _ in range(20):
            self.fake.add_user(fresh_user())
        self.assertEqual(self.boot(d)["state"], "never")
        ctl = os.environ.get("PHONECLAIMCTL")
        if not ctl:
            self.skipTest("PHONECLAIMCTL is not set")
        r = subprocess.run([ctl, "-s", d.conf["status_socket"],
                            "bootstrap"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"started"', r.stdout)
        b = self.wait_state(d, "done")
        self.assertEqual((b["checked"], b["claimed"]), (21, 1), b)
        self.held(d, phone, user)
        r = subprocess.run([ctl, "-s", d.conf["status_socket"], "status"],
                           capture_output=True, text=True, timeout=30)
        self.assertIn('"bootstrap"', r.stdout)

    def test_restart_while_the_job_runs_and_an_expired_job(self):
        """A restart polls the same job again; a job Auth0 no longer has
        (404: deleted after 24 hours) is made anew."""
        self.fake.export_polls = 10000
        d = self.mgmt_daemon()
        user, phone = fresh_user(), ls.number()
        self.fake.add_phone(user, phone)
        self.ask(d, "bootstrap")
        deadline = time.monotonic() + WAIT
        while len(self.fake.requests("/api/v2/jobs/job_")) < 2:
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.1)
        self.assertEqual(self.boot(d)["phase"], "export")
        d.kill()
        polls = len(self.fake.requests("/api/v2/jobs/job_"))
        d.start()
        while len(self.fake.requests("/api/v2/jobs/job_")) <= polls:
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.1)
        self.assertEqual(len(self.fake.requests(
            "/api/v2/jobs/users-exports")), 1)
        self.fake.export_polls = 0
        with self.fake.lock:
            self.fake.jobs.clear()
        b = self.wait_state(d, "done")
        self.assertEqual(len(self.fake.requests(
            "/api/v2/jobs/users-exports")), 2)
        self.assertEqual((b["checked"], b["claimed"]), (1, 1), b)
        self.held(d, phone, user)

    def test_not_without_the_management_api(self):
        d = self.own_daemon()
        self.assertNotIn("bootstrap", self.ask(d, "status"))
        self.assertEqual(self.ask(d, "bootstrap").get("error"),
                         "not_configured")
        self.assertNotIn("bootstrap_", self.metrics_text(d))


if __name__ == "__main__":
    unittest.main()
