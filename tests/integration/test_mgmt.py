"""
The Auth0 Management API client (issue 6) against a fake tenant on
127.0.0.1 (fake_auth0.py): the configuration keys, the client-credentials
token (cached, renewed on expiry, on 401 and when SIGHUP brings a new
secret), the backfill with from/take and Link rel="next" until an empty
page, 429 with the rate-limit headers, 5xx and slow answers (the loop
keeps serving), each failure logged once, status and /metrics, the
backfill command, verification through GET authentication-methods with
numbers in full and obfuscated (lapsing reservations, unmatched
enrolments, ambiguous unenrolments, deleted users), on_conflict = remove
recorded in the conflict, and a full scenario: events while the daemon
is down, restart, backfill, claims correct and nothing applied twice (I3).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest
import urllib.parse

import harness
from harness import DaemonTestCase, fresh_user, write_secret
from fake_auth0 import FakeAuth0
import test_logstream as ls

harness.require_daemon()

WAIT = 20.0


class MgmtCase(DaemonTestCase):
    """A fake tenant per test and a daemon pointed at it."""

    def setUp(self):
        self.fake = FakeAuth0()
        self.addCleanup(self.fake.close)

    def mgmt_daemon(self, start=True, **conf):
        # The fake tenant knows only the users a test gives it:
        # reconciliation (test_reconcile.py) would release the others.
        conf.setdefault("reconcile_interval", "0")
        d = self.own_daemon(start=False, **conf)
        secret = d.path("auth0.secret")
        write_secret(secret, self.fake.secret + "\n")
        d.conf.update({"auth0_domain": "tenant.example.com",
                       "auth0_client_id": self.fake.client_id,
                       "auth0_client_secret_file": secret,
                       "auth0_base_url": self.fake.url})
        d.conf.update(conf)
        d.write_conf()
        if start:
            d.start()
        return d

    def ask(self, d, command):
        return d.ask(command, timeout=5)

    def backfill(self, d):
        return self.ask(d, "status")["backfill"]

    def wait_idle(self, d, runs=1, timeout=WAIT):
        """Wait until runs backfills ended and none is going on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.backfill(d)
            if b["state"] == "idle" and b["runs"] >= runs and \
                    b["last_run"] is not None:
                return b
            time.sleep(0.1)
        self.fail("backfill not done: %r\n%s" % (self.backfill(d), d.tail()))

    def metric(self, d, name):
        text = d.request("GET", "/metrics").raw.decode()
        m = re.search(r"(?m)^phoneclaimd_%s (\S+)$" % name, text)
        return None if m is None else float(m.group(1))

    def log_of(self, d):
        with open(d.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def held(self, d, phone, holder):
        self.assertEqual(d.claim(phone, fresh_user(), "enrollment").status,
                         409)
        self.assertEqual(
            d.claim(phone, holder, "enrollment").get("result"), "owned")

    def free(self, d, phone):
        r = d.claim(phone, fresh_user(), "enrollment")
        self.assertEqual(r.get("result"), "reserved", str(r))

    def enrolments(self, n):
        """n enrolment log objects: [(event, phone, user)]."""
        out = []
        for _ in range(n):
            phone, user = ls.number(), fresh_user()
            out.append((ls.bare(ls.enrolled(user, phone)), phone, user))
        return out


class ConfigTests(MgmtCase):
    """The keys: loopback-only http, all three or none, dates; off by
    default."""

    def check(self, d):
        return d.run("-n", "-c", d.conf_path)

    def test_plain_http_only_to_loopback(self):
        d = self.mgmt_daemon(start=False)
        for url in ("http://example.com", "http://10.0.0.1:80",
                    "ftp://127.0.0.1", "http://127.0.0.10"):
            d.conf["auth0_base_url"] = url
            d.write_conf()
            r = self.check(d)
            self.assertEqual(r.returncode, 2, url)
            self.assertRegex(r.stderr, r"phoneclaimd\.conf:\d+: "
                             r"auth0_base_url", url)
        for url in ("https://tenant.example.com", "http://127.0.0.1:9",
                    "http://[::1]:9", "http://localhost"):
            d.conf["auth0_base_url"] = url
            d.write_conf()
            self.assertEqual(self.check(d).returncode, 0, url)

    def test_all_three_or_none(self):
        d = self.mgmt_daemon(start=False)
        d.conf["auth0_client_id"] = None
        d.write_conf()
        r = self.check(d)
        self.assertEqual(r.returncode, 2)
        self.assertIn("auth0_client_id", r.stderr)

    def test_secret_file_must_be_private(self):
        d = self.mgmt_daemon(start=False)
        os.chmod(d.conf["auth0_client_secret_file"], 0o644)
        r = self.check(d)
        self.assertEqual(r.returncode, 2)
        self.assertIn("auth0_client_secret_file", r.stderr)

    def test_backfill_since_is_a_date(self):
        d = self.mgmt_daemon(start=False, backfill_since="yesterday")
        r = self.check(d)
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, r":\d+: backfill_since")
        d.conf["backfill_since"] = "2026-01-31T12:00:00Z"
        d.write_conf()
        self.assertEqual(self.check(d).returncode, 0, self.check(d).stderr)

    def test_disabled_without_keys(self):
        d = self.own_daemon()
        b = self.backfill(d)
        self.assertEqual(b["state"], "disabled")
        self.assertEqual(self.ask(d, "backfill"),
                         {"error": "backfill_disabled"})
        self.assertEqual(self.metric(d, "backfill_state"), 0)
        self.assertEqual(self.fake.seen, [])


class BackfillTests(MgmtCase):
    """Pages, the token, the triggers and the counts."""

    def test_pages_from_since_follow_link_until_empty(self):
        evs = self.enrolments(230)
        self.fake.add(*(e for e, _, _ in evs))
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 230)
        self.assertIsNone(b["last_error"])
        self.assertRegex(b["last_run"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(sorted(b), ["events", "failures", "last_error",
                                     "last_run", "pages", "runs", "state"])
        # One token, then the search, Link pages and the empty page.
        self.assertEqual(len(self.fake.tokens), 1)
        gets = [s[1] for s in self.fake.requests("/api/v2/logs")]
        self.assertIn("q=date", gets[0])
        ids = [e["_id"] for e, _, _ in evs]
        self.assertIn("from=%s&take=100" % ids[99], gets[1])
        self.assertIn("from=%s&take=100" % ids[199], gets[2])
        self.assertIn("from=%s&take=100" % ids[229], gets[3])
        self.assertEqual(len(gets), 4)
        for s in self.fake.requests("/api/v2/logs"):
            self.assertEqual(s[2]["Authorization"],
                             "Bearer " + self.fake.tokens[0])
        for _, phone, user in evs[:5] + evs[-5:]:
            self.held(d, phone, user)
        self.assertEqual(self.metric(d, "backfill_state"), 1)
        self.assertEqual(self.metric(d, "backfill_events_total"), 230)
        self.assertEqual(self.metric(d, "backfill_pages_total"), 4)
        text = self.log_of(d)
        self.assertNotIn(self.fake.secret, text)
        self.assertNotIn(self.fake.tokens[0], text)

    def test_nothing_without_log_id_or_since(self):
        self.fake.add(*(e for e, _, _ in self.enrolments(3)))
        d = self.mgmt_daemon()
        d.wait_for_log("nothing to do", 0)
        self.assertEqual(self.fake.seen, [])
        self.assertEqual(self.backfill(d)["runs"], 0)

    def test_command_resumes_from_the_stream_and_dedups(self):
        d = self.mgmt_daemon()
        evs = self.enrolments(4)
        first = ls.enrolled(evs[0][2], evs[0][1])
        first["log_id"] = first["data"]["log_id"] = evs[0][0]["_id"]
        r = d.request("POST", "/v1/log-stream", json.dumps([first]).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.get("applied"), 1)
        # The tenant has the stream's event and three more.
        self.fake.add(*(e for e, _, _ in evs))
        self.assertEqual(self.ask(d, "backfill"), {"backfill": "started"})
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 3)
        gets = [s[1] for s in self.fake.requests("/api/v2/logs")]
        self.assertIn("from=%s&take=100" % evs[0][0]["_id"], gets[0])
        for _, phone, user in evs:
            self.held(d, phone, user)
        # Again: an empty page, nothing applied twice.
        self.fake.seen.clear()
        self.assertEqual(self.ask(d, "backfill"), {"backfill": "started"})
        b = self.wait_idle(d, runs=2)
        self.assertEqual(b["events"], 0)
        # The overlap with the stream: the same events posted again are
        # all duplicates.
        items = [{"log_id": e["_id"], "data": dict(e, log_id=e["_id"])}
                 for e, _, _ in evs]
        r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.get("duplicates"), 4, str(r))

    def test_idle_trigger(self):
        d = self.mgmt_daemon(backfill_idle=10, backfill_since="2020-01-01")
        self.wait_idle(d)
        evs = self.enrolments(2)
        self.fake.add(*(e for e, _, _ in evs))
        b = self.wait_idle(d, runs=2, timeout=20)
        self.assertEqual(b["events"], 2)
        self.held(d, evs[1][1], evs[1][2])


class FailureTests(MgmtCase):
    """Token expiry and 401, 429, 5xx and slow answers."""

    def test_token_renewed_before_expiry_and_on_401(self):
        self.fake.expires_in = 61	# within the daemon's 60 s margin
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        self.wait_idle(d)
        n = len(self.fake.tokens)
        self.assertGreaterEqual(n, 1)
        time.sleep(1.2)
        self.ask(d, "backfill")
        self.wait_idle(d, runs=2)
        self.assertGreater(len(self.fake.tokens), n)
        # A revoked token: one 401, a new token, and the page.
        self.fake.expires_in = 86400
        self.ask(d, "backfill")
        self.wait_idle(d, runs=3)
        self.fake.revoked.update(self.fake.tokens)
        n = len(self.fake.tokens)
        self.fake.add(*(e for e, _, _ in self.enrolments(1)))
        self.ask(d, "backfill")
        b = self.wait_idle(d, runs=4)
        self.assertEqual(b["events"], 1)
        self.assertEqual(len(self.fake.tokens), n + 1)
        self.assertEqual(b["failures"], 0)

    def test_429_and_5xx_back_off_and_log_once(self):
        reset = int(time.time()) + 2
        self.fake.fail_next("/api/v2/logs", 429,
                            {"x-ratelimit-limit": "10",
                             "x-ratelimit-remaining": "0",
                             "x-ratelimit-reset": str(reset)})
        self.fake.fail_next("/api/v2/logs", 503)
        self.fake.fail_next("/oauth/token", 500)
        evs = self.enrolments(3)
        self.fake.add(*(e for e, _, _ in evs))
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        deadline = time.monotonic() + WAIT
        states, gauges = set(), set()
        while time.monotonic() < deadline:
            b = self.backfill(d)
            states.add(b["state"])
            gauges.add(self.metric(d, "backfill_state"))
            if b["state"] == "failed":
                self.assertIsNotNone(b["last_error"])
            if b["state"] == "idle" and b["runs"] == 1 and b["last_run"]:
                break
            time.sleep(0.05)
        self.assertIn("failed", states)
        self.assertIn(3, gauges)
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 3)
        self.assertEqual(b["failures"], 3)
        self.assertEqual(self.metric(d, "backfill_failures_total"), 3)
        # The 429 waited for the reset.
        gets = [s for s in self.fake.requests("/api/v2/logs")]
        self.assertGreaterEqual(len(gets), 3)
        text = self.log_of(d)
        self.assertEqual(text.count("retrying with back-off"), 1, text)
        self.assertIn("recovered", text)
        for _, phone, user in evs:
            self.held(d, phone, user)

    def test_remaining_zero_waits_for_the_reset(self):
        reset = int(time.time()) + 3
        self.fake.rate_headers = {"x-ratelimit-limit": "10",
                                  "x-ratelimit-remaining": "0",
                                  "x-ratelimit-reset": str(reset)}
        self.fake.add(*(e for e, _, _ in self.enrolments(2)))
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 2)
        self.assertEqual(b["failures"], 0)
        gets = self.fake.requests("/api/v2/logs")
        self.assertEqual(len(gets), 2)
        self.assertLess(gets[0][4], reset)
        self.assertGreaterEqual(gets[1][4], reset)

    def test_a_page_that_is_no_array_is_retried_not_kept(self):
        self.fake.fail_next("/api/v2/logs", 200)	# {"statusCode": ...}
        self.fake.add(*(e for e, _, _ in self.enrolments(1)))
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 1)
        self.assertEqual(b["failures"], 1)
        self.assertIn("not a JSON array", b["last_error"])
        self.assertFalse(os.path.exists(os.path.join(d.state_dir,
                                                     "deadletter.jsonl")) and
                         os.path.getsize(os.path.join(
                             d.state_dir, "deadletter.jsonl")) > 0)

    def test_a_page_with_bad_strings_advances_the_cursor(self):
        """Issue 18, point 1: "\\u0000" in a string the daemon does not
        read changes nothing; a lone surrogate in a user id rejects that
        event only, dead-lettered once.  The page is not retried for
        ever: the backfill ends, and the cursor is past the bad event
        even when it is the page's newest."""
        evs = self.enrolments(2)
        fu = ls.bare(ls.event("fu", fresh_user(), user_name="eve\x00x"))
        bad_user = fresh_user() + "\ud800"
        bad = ls.bare(ls.enrolled(bad_user, ls.number()))
        self.fake.add(evs[0][0], fu, evs[1][0], bad)
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        b = self.wait_idle(d)
        self.assertEqual((b["events"], b["failures"], b["last_error"]),
                         (4, 0, None), b)
        for _, phone, user in evs:
            self.held(d, phone, user)
        self.free(d, bad["details"]["authenticator"]["phone_number"])
        path = os.path.join(d.state_dir, "deadletter.jsonl")
        with open(path) as f:
            lines = [json.loads(l) for l in f]
        self.assertEqual([(l["log_id"], l["reason"]) for l in lines],
                         [(bad["_id"], "invalid_user_id")])
        # Again: from the bad event on, an empty page; nothing kept twice.
        self.fake.seen.clear()
        self.assertEqual(self.ask(d, "backfill"), {"backfill": "started"})
        b = self.wait_idle(d, runs=2)
        self.assertEqual(b["events"], 0, b)
        gets = [s[1] for s in self.fake.requests("/api/v2/logs")]
        self.assertIn("from=%s&take=100" % bad["_id"], gets[0])
        with open(path) as f:
            self.assertEqual(len(f.readlines()), 1)

    def test_slow_answer_does_not_block_the_loop(self):
        self.fake.fail_next("/api/v2/logs", None, delay=3.0)
        self.fake.add(*(e for e, _, _ in self.enrolments(1)))
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        time.sleep(0.5)
        self.assertEqual(self.backfill(d)["state"], "running")
        t = time.monotonic()
        self.free(d, ls.number())
        self.assertLess(time.monotonic() - t, 1.0)
        b = self.wait_idle(d)
        self.assertEqual(b["events"], 1)


class TlsTests(MgmtCase):
    """https:// is verified: a self-signed tenant is refused."""

    def test_untrusted_certificate_is_refused(self):
        openssl = shutil.which("openssl")
        if openssl is None:
            self.skipTest("no openssl command")
        d = self.own_daemon(start=False)
        cert, key = d.path("fake.crt"), d.path("fake.key")
        r = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048",
                            "-nodes", "-keyout", key, "-out", cert, "-days",
                            "2", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1"],
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            self.skipTest("openssl req failed")
        self.fake = FakeAuth0(cert=(cert, key))
        self.addCleanup(self.fake.close)
        secret = d.path("auth0.secret")
        write_secret(secret, self.fake.secret + "\n")
        d.conf.update({"auth0_domain": "tenant.example.com",
                       "auth0_client_id": self.fake.client_id,
                       "auth0_client_secret_file": secret,
                       "auth0_base_url": self.fake.url,
                       "backfill_since": "2020-01-01"})
        d.write_conf()
        d.start()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            b = self.backfill(d)
            if b["state"] == "failed":
                break
            time.sleep(0.1)
        self.assertEqual(b["state"], "failed", b)
        self.assertIn("token request", b["last_error"])
        self.assertRegex(b["last_error"], r"(?i)certificate|SSL")
        self.assertEqual(self.fake.seen, [])
        self.assertEqual(self.fake.tokens, [])


class ConflictTests(MgmtCase):
    """on_conflict = remove deletes the later enrolment's phone method;
    report (the default) only records."""

    def conflict(self, d):
        phone, first, later = ls.number(), fresh_user(), fresh_user()
        device = ls.new_device()
        items = [ls.enrolled(first, phone),
                 ls.enrolled(later, phone, device=device)]
        r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.get("applied"), 2, str(r))
        self.held(d, phone, first)
        return later, device, items[1]["log_id"]

    def test_remove_deletes_the_later_method(self):
        d = self.mgmt_daemon(on_conflict="remove")
        later, device, log_id = self.conflict(d)
        deadline = time.monotonic() + WAIT
        while not self.fake.deleted and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.fake.deleted, [
            "/api/v2/users/%s/authentication-methods/phone|%s" %
            (later, device)])
        d.wait_for_log("deleted phone method phone\\|%s of user" % device,
                       0)
        self.assertIn(log_id, self.log_of(d))
        (cf,) = self.ask(d, "conflicts")["conflicts"]
        self.assertEqual(cf["log_id"], log_id)
        self.assertEqual((cf["removal"]["state"], cf["removal"]["method"],
                          cf["removal"]["http_status"]),
                         ("removed", device, 204))
        self.assertIsNotNone(cf["removal"]["at"])
        self.assertEqual(self.ask(d, "status")["removals"]["removed"], 1)
        self.assertIn('phoneclaimd_conflict_removals_total{result="removed"}'
                      ' 1', d.request("GET", "/metrics").raw.decode())
        # Audited once: a restart does not delete it again.
        d.stop()
        d.start()
        time.sleep(1.0)
        self.assertEqual(len(self.fake.deleted), 1)

    def wait_removal(self, d, state):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            cfs = self.ask(d, "conflicts")["conflicts"]
            if cfs and cfs[0].get("removal", {}).get("state") == state:
                return cfs[0]["removal"]
            time.sleep(0.1)
        self.fail("removal not %s: %r" % (state, cfs))

    def test_refused_removal_is_recorded_not_retried(self):
        self.fake.fail_next("/api/v2/users/", 403)
        d = self.mgmt_daemon(on_conflict="remove")
        self.conflict(d)
        rm = self.wait_removal(d, "failed")
        self.assertEqual(rm["http_status"], 403)
        time.sleep(1.5)
        self.assertEqual(len(self.fake.requests("/api/v2/users/")), 1)
        self.assertIn("could not delete phone method", self.log_of(d))

    def test_removal_waits_across_a_restart(self):
        self.fake.fail_next("/api/v2/users/", 503, times=1000)
        d = self.mgmt_daemon(on_conflict="remove")
        later, device, _ = self.conflict(d)
        self.assertEqual(self.wait_removal(d, "pending")["method"], device)
        deadline = time.monotonic() + WAIT
        while self.ask(d, "status")["removals"]["failures"] == 0:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        d.kill()
        with self.fake.lock:
            self.fake.script.clear()
        d.start()
        self.assertEqual(self.wait_removal(d, "removed")["http_status"], 204)
        self.assertEqual(self.fake.deleted, [
            "/api/v2/users/%s/authentication-methods/phone|%s" %
            (later, device)])

    def test_already_gone_is_absent(self):
        d = self.mgmt_daemon(on_conflict="remove")
        self.fake.add_user(fresh_user())	# the fake now checks methods
        self.conflict(d)
        self.assertEqual(self.wait_removal(d, "absent")["http_status"], 404)

    def test_report_only_records(self):
        d = self.mgmt_daemon()
        self.conflict(d)
        time.sleep(1.0)
        self.assertEqual(self.fake.deleted, [])
        self.assertEqual(self.fake.requests("/api/v2/users"), [])

    def test_remove_needs_the_management_api(self):
        d = self.own_daemon(start=False, on_conflict="remove")
        r = d.run("-n", "-c", d.conf_path)
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, r":\d+: on_conflict")
        d.conf["on_conflict"] = "delete"
        d.write_conf()
        self.assertEqual(d.run("-n", "-c", d.conf_path).returncode, 2)


class VerifyCase(MgmtCase):
    """Helpers for the verification tests."""

    def claims_of(self, d, user):
        """{last4: (state, source)} of the user's live claims."""
        return {c["number"][-4:]: (c["state"], c["source"])
                for c in self.ask(d, "user " + user)["claims"]}

    def verify(self, d):
        return self.ask(d, "status")["verify"]

    def wait_verified(self, d, done=1, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.verify(d)
            if v["done"] >= done and v["waiting"] == 0:
                return v
            time.sleep(0.1)
        self.fail("no verification: %r\n%s" % (self.verify(d), d.tail()))

    def stream(self, d, *items):
        r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.status, 200, str(r))
        return r

    def method_requests(self, user):
        return [s for s in self.fake.requests("/api/v2/users/")
                if s[0] == "GET" and user in
                urllib.parse.unquote(s[1])]

    def two_active(self, d, user):
        """Two active claims of user with enrolment ids: [(phone, dev)]."""
        out = []
        for _ in range(2):
            phone, dev = ls.number(), ls.new_device()
            self.stream(d, ls.enrolled(user, phone, device=dev))
            out.append((phone, dev))
        for phone, _ in out:
            self.held(d, phone, user)
        return out


class ExpiringTests(VerifyCase):
    """A reservation about to lapse is verified before it does."""

    def reserve(self, d, user, phone):
        r = d.claim(phone, user, "enrollment")
        self.assertEqual(r.get("result"), "reserved", str(r))

    def test_confirmed_full_number_becomes_active(self):
        d = self.mgmt_daemon(pending_ttl="8")
        user, phone = fresh_user(), ls.number()
        mid = self.fake.add_phone(user, phone)
        self.reserve(d, user, phone)
        v = self.wait_verified(d)
        self.assertEqual(v["activated"], 1, v)
        self.assertEqual(self.claims_of(d, user),
                         {phone[-4:]: ("active", "enrollment")})
        time.sleep(9)		# past the TTL: an active claim stays
        self.held(d, phone, user)
        # The claim carries the method id: unenrolling it by id frees it.
        self.stream(d, ls.unenrolled(user, auth_id=mid))
        self.free(d, phone)

    def test_no_method_lets_it_lapse(self):
        d = self.mgmt_daemon(pending_ttl="8")
        user, phone = fresh_user(), ls.number()
        self.fake.add_user(user)
        self.fake.add_phone(user, ls.number())		# another number
        self.fake.add_phone(user, phone, confirmed=False)  # unconfirmed
        self.reserve(d, user, phone)
        v = self.wait_verified(d)
        self.assertEqual((v["activated"], v["claimed"]), (0, 1), v)
        self.assertEqual(len(self.method_requests(user)), 1)
        deadline = time.monotonic() + WAIT
        while phone[-4:] in self.claims_of(d, user):
            self.assertLess(time.monotonic(), deadline, "never lapsed")
            time.sleep(0.5)
        self.free(d, phone)

    def test_obfuscated_digits_match(self):
        self.fake.obfuscate = "digits"
        d = self.mgmt_daemon(pending_ttl="8")
        user, phone = fresh_user(), ls.number()
        self.fake.add_phone(user, phone)
        self.reserve(d, user, phone)
        v = self.wait_verified(d)
        self.assertEqual(v["activated"], 1, v)
        self.assertEqual(self.claims_of(d, user)[phone[-4:]][0], "active")

    def test_obfuscated_no_digits_uses_the_creation_time(self):
        self.fake.obfuscate = "all"
        d = self.mgmt_daemon(pending_ttl="8")
        old_user, new_user = fresh_user(), fresh_user()
        old_phone, new_phone = ls.number(), ls.number()
        # A method older than the reservation is another enrolment.
        self.fake.add_phone(old_user, old_phone,
                            created="2020-01-01T00:00:00.000Z")
        self.fake.add_phone(new_user, new_phone)
        self.reserve(d, old_user, old_phone)
        self.reserve(d, new_user, new_phone)
        v = self.wait_verified(d, done=2)
        self.assertEqual(v["activated"], 1, v)
        self.assertEqual(self.claims_of(d, new_user)[new_phone[-4:]][0],
                         "active")
        self.assertEqual(self.claims_of(d, old_user)[old_phone[-4:]][0],
                         "pending")


class DoubtTests(VerifyCase):
    """Unmatched enrolments and ambiguous unenrolments are verified."""

    def test_unmatched_enrolment_full_number_is_claimed(self):
        d = self.mgmt_daemon()
        user, phone = fresh_user(), ls.number()
        dev = ls.new_device()
        self.fake.add_phone(user, phone, device=dev)
        r = self.stream(d, ls.enrolled(user, None, device=dev))
        self.assertEqual(r.get("ignored"), 1, str(r))
        v = self.wait_verified(d)
        self.assertEqual(v["claimed"], 1, v)
        self.held(d, phone, user)
        self.assertEqual(self.claims_of(d, user),
                         {phone[-4:]: ("active", "verify")})
        # The id came with it.
        self.stream(d, ls.unenrolled(user, auth_id="phone|" + dev))
        self.free(d, phone)

    def test_unmatched_enrolment_obfuscated_is_unsettled(self):
        self.fake.obfuscate = "all"
        d = self.mgmt_daemon()
        user, phone = fresh_user(), ls.number()
        self.fake.add_phone(user, phone)
        self.stream(d, ls.enrolled(user, ls.masked(phone)))
        v = self.wait_verified(d)
        self.assertEqual((v["claimed"], v["unsettled"]), (0, 1), v)
        self.assertEqual(self.claims_of(d, user), {})
        self.assertIn("1 unsettled", self.log_of(d))

    def test_unmatched_enrolment_conflict_is_recorded(self):
        d = self.mgmt_daemon()
        holder, user, phone = fresh_user(), fresh_user(), ls.number()
        self.stream(d, ls.enrolled(holder, phone))
        self.fake.add_phone(user, phone)
        self.stream(d, ls.enrolled(user, None))
        self.wait_verified(d)
        self.held(d, phone, holder)
        (cf,) = self.ask(d, "conflicts")["conflicts"]
        self.assertEqual(cf["user_ids"], [user, holder])

    def test_ambiguous_unenrol_full_numbers(self):
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, d2) = self.two_active(d, user)
        self.fake.add_phone(user, p2, device=d2)
        r = self.stream(d, ls.unenrolled(user))
        self.assertEqual(r.get("ignored"), 1, str(r))
        v = self.wait_verified(d)
        self.assertEqual(v["released"], 1, v)
        self.free(d, p1)
        self.held(d, p2, user)

    def test_ambiguous_unenrol_obfuscated_by_method_id(self):
        self.fake.obfuscate = "all"
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, d2) = self.two_active(d, user)
        self.fake.add_phone(user, p2, device=d2)
        self.stream(d, ls.unenrolled(user))
        v = self.wait_verified(d)
        self.assertEqual((v["released"], v["unsettled"]), (1, 0), v)
        self.free(d, p1)
        self.held(d, p2, user)

    def test_ambiguous_unenrol_unknown_method_stays(self):
        """A method with no digits and an unknown id might be either."""
        self.fake.obfuscate = "all"
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, _) = self.two_active(d, user)
        self.fake.add_phone(user, p2)		# a new id
        self.stream(d, ls.unenrolled(user))
        v = self.wait_verified(d)
        self.assertEqual((v["released"], v["unsettled"]), (0, 2), v)
        self.held(d, p1, user)
        self.held(d, p2, user)

    def test_unknown_factor_unenrol_is_verified(self):
        """A gd_unenroll that shows no factor and names no stored id
        releases nothing: the user is verified (issue 17, point 2)."""
        d = self.mgmt_daemon()
        user, phone = fresh_user(), ls.number()
        self.fake.add_phone(user, phone)
        r = d.claim(phone, user, "otp_verify")
        self.assertEqual(r.get("result"), "learned", str(r))
        r = self.stream(d, ls.unenrolled(
            user, None, None, description="Guardian - Unenroll device "
            "account"))
        self.assertEqual(r.get("ignored"), 1, str(r))
        self.wait_verified(d)
        self.assertEqual(len(self.method_requests(user)), 1)
        self.held(d, phone, user)

    def test_promoted_conflict_user_is_verified(self):
        """The user promoted from a conflict is verified: one who no
        longer has the number loses it again (issue 17, point 3)."""
        d = self.mgmt_daemon()
        holder, kept, gone = fresh_user(), fresh_user(), fresh_user()
        p1, p2 = ls.number(), ls.number()
        self.fake.add_phone(kept, p1)
        self.fake.add_user(gone)		# no phone any more
        for phone, later in ((p1, kept), (p2, gone)):
            self.stream(d, ls.enrolled(holder, phone))
            self.stream(d, ls.enrolled(later, phone))
        self.stream(d, ls.deleted(holder))
        v = self.wait_verified(d, done=2)
        self.assertEqual(v["released"], 1, v)
        self.assertEqual(len(self.method_requests(kept)), 1)
        self.held(d, p1, kept)
        self.free(d, p2)

    def test_account_linking_verifies_the_primary(self):
        """Linking releases the secondary's claims and verifies the
        primary, who may now hold its factors (issue 17, point 5)."""
        d = self.mgmt_daemon()
        primary, phone = fresh_user(), ls.number()
        secondary = "google-oauth2|" + ls.secrets.token_hex(8)
        self.fake.add_phone(primary, phone)
        r = d.claim(phone, secondary, "otp_verify")
        self.assertEqual(r.get("result"), "learned", str(r))
        r = self.stream(d, ls.linked(primary, {
            "provider": "google-oauth2",
            "user_id": secondary.split("|", 1)[1]}))
        self.assertEqual(r.get("applied"), 1, str(r))
        v = self.wait_verified(d)
        self.assertEqual(v["claimed"], 1, v)
        self.assertEqual(len(self.method_requests(primary)), 1)
        self.held(d, phone, primary)

    def test_user_gone_releases_everything(self):
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, _) = self.two_active(d, user)
        self.stream(d, ls.unenrolled(user))		# the fake has no user
        v = self.wait_verified(d)
        self.assertEqual(v["released"], 2, v)
        self.free(d, p1)
        self.free(d, p2)
        self.assertIn("does not exist", self.log_of(d))

    def test_other_404_is_retried_not_trusted(self):
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, d2) = self.two_active(d, user)
        self.fake.add_phone(user, p2, device=d2)
        self.fake.fail_next("/api/v2/users/", 404)
        self.fake.fail_next("/api/v2/users/", 503, times=2)
        self.stream(d, ls.unenrolled(user))
        v = self.wait_verified(d)
        self.assertEqual((v["failures"], v["released"]), (3, 1), v)
        self.assertEqual(len(self.method_requests(user)), 4)
        self.assertEqual(self.log_of(d).count("verify: GET authentication "
                                              "methods: HTTP 404"), 1)
        self.free(d, p1)
        self.held(d, p2, user)

    def test_waiting_verification_survives_a_restart(self):
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, d2) = self.two_active(d, user)
        self.fake.add_phone(user, p2, device=d2)
        self.fake.fail_next("/api/v2/users/", 503, times=1000)
        self.stream(d, ls.unenrolled(user))
        deadline = time.monotonic() + WAIT
        while self.verify(d)["failures"] == 0:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        self.assertEqual(self.verify(d)["waiting"], 1)
        self.assertEqual(self.metric(d, "verify_waiting"), 1)
        d.kill()
        with self.fake.lock:
            self.fake.script.clear()
        d.start()
        v = self.wait_verified(d)
        self.assertEqual(v["released"], 1, v)
        self.free(d, p1)
        self.held(d, p2, user)

    def test_metrics(self):
        d = self.mgmt_daemon()
        user = fresh_user()
        self.two_active(d, user)
        self.stream(d, ls.unenrolled(user))
        self.wait_verified(d)
        text = d.request("GET", "/metrics").raw.decode()
        self.assertIn('phoneclaimd_verify_total{result="done"} 1', text)
        self.assertIn('phoneclaimd_verify_total{result="released"} 2', text)
        self.assertIn("phoneclaimd_verify_waiting 0", text)

    def test_disabled_without_the_management_api(self):
        d = self.own_daemon()
        user = fresh_user()
        self.two_active(d, user)
        self.stream(d, ls.unenrolled(user))
        self.assertNotIn("verify", self.ask(d, "status"))
        self.assertNotIn("verify_total", d.request("GET", "/metrics")
                         .raw.decode())


class StallTests(VerifyCase):
    """A user whose lookup keeps failing (403, an unexplained 404) is
    retried with back-off behind the others and given up after a bounded
    number of tries; it never blocks the queue (issue 17, point 7)."""

    TRIES = 10		# VERIFY_TRIES_MAX

    def test_failing_user_does_not_block_the_queue(self):
        if harness.fakeclock_shim() is None:
            self.skipTest("fakeclock.so not built")
        d = self.mgmt_daemon(start=False)
        clock = d.path("clock")
        harness.use_fakeclock(d, clock)
        d.start()
        stuck = "auth0|0000a" + harness.log_plain_user()[7:]	# first in order
        other = "auth0|ffff" + ls.secrets.token_hex(8)
        self.fake.fail_next("/api/v2/users/" +
                            urllib.parse.quote(stuck, safe=""), 403,
                            times=1000)
        self.stream(d, ls.enrolled(stuck, None))	# unmatched: verify
        (p1, _), (p2, d2) = self.two_active(d, other)
        self.fake.add_phone(other, p2, device=d2)
        self.stream(d, ls.unenrolled(other))		# ambiguous: verify
        deadline = time.monotonic() + WAIT
        while self.verify(d)["released"] < 1:
            self.assertLess(time.monotonic(), deadline,
                            "the failing user blocks the queue: %r\n%s" %
                            (self.verify(d), d.tail()))
            time.sleep(0.1)
        self.free(d, p1)
        self.held(d, p2, other)
        # Each retry waits longer; move the clock on until it gives up.
        offset, deadline = 0, time.monotonic() + 120
        while self.verify(d)["gave_up"] < 1:
            self.assertLess(time.monotonic(), deadline, d.tail())
            offset += 4 * 3600
            harness.set_fakeclock(clock, offset)
            self.stream(d, ls.enrolled(fresh_user(), None))	# a wake-up
            time.sleep(0.3)
        self.assertEqual(len(self.method_requests(stuck)), self.TRIES)
        log = self.log_of(d)
        self.assertRegex(log, r"verify: giving up on user %s after %d "
                         r"tries" % (re.escape(stuck), self.TRIES))
        text = d.request("GET", "/metrics").raw.decode()
        self.assertIn('phoneclaimd_verify_total{result="gave_up"} 1', text)
        time.sleep(1.0)
        self.assertEqual(len(self.method_requests(stuck)), self.TRIES)


    def test_a_request_of_the_old_format_is_still_read(self):
        """verify.db records written before tries were kept (format 1:
        format, reasons, queued) are read and settled as before."""
        if shutil.which("db5.3_load") is None:
            self.skipTest("db5.3_load is not installed")
        d = self.mgmt_daemon()
        user = fresh_user()
        (p1, _), (p2, d2) = self.two_active(d, user)
        self.fake.add_phone(user, p2, device=d2)
        d.stop()
        rec = bytes([1, 0x04]) + int(time.time()).to_bytes(8, "big")
        dump = d.path("verify.dump")
        with open(dump, "w") as f:
            f.write("VERSION=3\nformat=bytevalue\ntype=btree\n"
                    "HEADER=END\n %s\n %s\nDATA=END\n" %
                    (user.encode().hex(), rec.hex()))
        subprocess.run(["db5.3_load", "-h", d.state_dir, "-f", dump,
                        "verify.db"], check=True)
        d.start()
        # Loaded behind the store's back, it is not in the stored counts
        # ("waiting"): wait for it to be done instead.
        deadline = time.monotonic() + WAIT
        while self.verify(d)["done"] < 1:
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.1)
        self.assertEqual(self.verify(d)["released"], 1)
        self.free(d, p1)
        self.held(d, p2, user)


class SecretReloadTests(MgmtCase):
    def test_sighup_brings_a_new_secret(self):
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        self.wait_idle(d)
        self.fake.secret = "secret-" + "b" * 24
        with self.fake.lock:
            self.fake.revoked.update(self.fake.tokens)
        write_secret(d.path("auth0.secret"), self.fake.secret + "\n")
        at = d.log_size()
        d.send_signal(signal.SIGHUP)
        d.wait_for_log("client secret changed", at)
        self.assertEqual(self.ask(d, "backfill"), {"backfill": "started"})
        self.wait_idle(d, runs=2)
        posts = self.fake.requests("/oauth/token")
        self.assertIn(b"client_secret=secret-" + b"b" * 24, posts[-1][3])
        self.assertNotIn(self.fake.secret, self.log_of(d))

    def test_unreadable_secret_keeps_the_old_one(self):
        d = self.mgmt_daemon(backfill_since="2020-01-01")
        self.wait_idle(d)
        os.chmod(d.path("auth0.secret"), 0o644)
        at = d.log_size()
        d.send_signal(signal.SIGHUP)
        d.wait_for_log("keeping the old client secret", at)
        self.assertEqual(self.ask(d, "backfill"), {"backfill": "started"})
        self.wait_idle(d, runs=2)


class ScenarioTests(MgmtCase):
    """Events while the daemon is down, then a restart and a backfill."""

    def test_outage_then_backfill(self):
        d = self.mgmt_daemon()
        a = self.enrolments(1)[0]
        item = {"log_id": a[0]["_id"], "data": dict(a[0], log_id=a[0]["_id"])}
        r = d.request("POST", "/v1/log-stream", json.dumps([item]).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual(r.get("applied"), 1)
        self.fake.add(a[0])
        d.stop()
        # While it is down: B enrols, A's user is deleted, C enrols.
        b, c = self.enrolments(2)
        gone = ls.bare(ls.deleted(a[2]))
        self.fake.add(b[0], gone, c[0])
        d.start()
        st = self.wait_idle(d)
        self.assertEqual(st["events"], 3)
        self.free(d, a[1])
        self.held(d, b[1], b[2])
        self.held(d, c[1], c[2])
        # The stream delivers the same events late: all duplicates.
        late = [{"log_id": e["_id"], "data": dict(e, log_id=e["_id"])}
                for e in (b[0], gone, c[0])]
        r = d.request("POST", "/v1/log-stream", json.dumps(late).encode(),
                      {"Authorization": d.log_stream_token})
        self.assertEqual((r.get("applied"), r.get("duplicates")), (0, 3))


if __name__ == "__main__":
    unittest.main()
