"""
tools/phoneclaimd-auth0-setup (issue 20, point 5) against the fake tenant
of fake_auth0_admin.py on 127.0.0.1, which answers in the shapes Auth0
documents and checks scopes and request bodies:

- a fresh tenant, Classic (send-phone-message) or Unified
  (custom-phone-provider), is fully set up: the Action with the file's
  code and its secrets, built, deployed and bound (Classic) or made the
  tenant's custom phone provider (Unified); the MFA phone factor; the
  Custom Webhook log stream with its URL, token, format and categories;
  the daemon's machine-to-machine client, its secret file and exactly its
  scopes (delete:authentication_methods only with on_conflict = remove);
- a second run changes nothing and says so;
- --dry-run changes nothing and lists the changes;
- --check reports each kind of drift (the fake tenant's state edited) and
  exits 1, and 0 when the tenant is clean; a run after it fixes the drift;
- the flavour is detected where the API tells, refused where it cannot;
- a 429 is waited out (x-ratelimit-reset) and the request made again;
- admin credentials without a needed scope are refused before any change;
- no secret (admin client secret, tokens, Action secrets, the new client's
  secret, bearer tokens) is ever printed.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import harness
from harness import write_file, write_secret
from fake_auth0_admin import ALL_SCOPES, FakeAuth0Admin

URL = "https://claims.example.test"
CATEGORIES = ["user.notification", "user.success", "user.fail",
              "management.success", "other"]
DAEMON_SCOPES = ["read:authentication_methods", "read:logs"]
DELETE = "delete:authentication_methods"


def tool():
    path = os.environ.get("AUTH0_SETUP")
    if not path or not os.path.exists(path):
        print("AUTH0_SETUP is not set: skipping (run through make check)",
              file=sys.stderr)
        sys.exit(77)
    return path


def srcdir():
    return os.environ.get("TOP_SRCDIR") or \
        os.path.join(os.path.dirname(__file__), "..", "..")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class SetupCase(unittest.TestCase):
    """A fake tenant, the machine's files, and runs of the tool."""

    flavour = "classic"

    def setUp(self):
        self.tool = tool()
        self.dir = tempfile.mkdtemp(prefix="pcd-setup-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.fake = self.make_fake()
        self.outputs = []
        self.write_files()

    def make_fake(self, **kw):
        fake = FakeAuth0Admin(**kw)
        self.addCleanup(fake.close)
        return fake

    def path(self, name):
        return os.path.join(self.dir, name)

    def write_files(self, on_conflict=None):
        self.api_token = secrets.token_hex(32)
        self.stream_token = "Bearer " + secrets.token_hex(32)
        self.twilio_token = "tw-" + secrets.token_hex(16)
        write_secret(self.path("api.token"), self.api_token + "\n")
        write_secret(self.path("log-stream.token"), self.stream_token + "\n")
        write_secret(self.path("secrets.env"),
                     "# Twilio\nTWILIO_ACCOUNT_SID = AC0123\n"
                     "TWILIO_AUTH_TOKEN=%s\nTWILIO_FROM=+15550001111\n" %
                     self.twilio_token)
        self.write_admin(self.fake)
        self.write_conf(on_conflict)

    def write_admin(self, fake):
        write_secret(self.path("admin.cred"),
                     "domain=%s\nclient_id=%s\nclient_secret=%s\n" %
                     (fake.domain, fake.client_id, fake.secret))

    def write_conf(self, on_conflict=None):
        lines = ["api_token_file = " + self.path("api.token"),
                 "log_stream_token_file = " + self.path("log-stream.token"),
                 "auth0_client_secret_file = " + self.path("auth0.secret")]
        if on_conflict:
            lines.append("on_conflict = " + on_conflict)
        write_file(self.path("phoneclaimd.conf"), "\n".join(lines) + "\n")

    def run_tool(self, *extra, fake=None, flavour=True):
        fake = fake or self.fake
        args = [sys.executable, self.tool,
                "-c", self.path("phoneclaimd.conf"),
                "-a", self.path("admin.cred"), "-u", URL,
                "--secrets-file", self.path("secrets.env"),
                "--actions-dir", os.path.join(srcdir(), "conf", "actions"),
                "--base-url", fake.url]
        if flavour:
            args += ["-f", self.flavour]
        r = subprocess.run(args + list(extra), capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.outputs.append(r.stdout + r.stderr)
        return r

    def setup_ok(self, *extra):
        r = self.run_tool(*extra)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def check(self, code):
        r = self.run_tool("--check")
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        return r

    def action_file(self):
        name = {"classic": "send-phone-message.js",
                "unified": "custom-phone-provider.js"}[self.flavour]
        return read(os.path.join(srcdir(), "conf", "actions", name))

    def assert_action(self, trigger):
        a = self.fake.action_named("phoneclaimd")
        self.assertIsNotNone(a)
        self.assertEqual([t["id"] for t in a["supported_triggers"]],
                         [trigger])
        self.assertEqual(a["code"], self.action_file())
        self.assertEqual(a["deployed_version"]["code"], self.action_file())
        self.assertTrue(a["all_changes_deployed"])
        self.assertEqual(self.fake.secret_values(a), {
            "PHONECLAIMD_URL": URL, "PHONECLAIMD_TOKEN": self.api_token,
            "TWILIO_ACCOUNT_SID": "AC0123",
            "TWILIO_AUTH_TOKEN": self.twilio_token,
            "TWILIO_FROM": "+15550001111"})
        return a

    def assert_stream(self):
        s = self.fake.stream_named("phoneclaimd")
        self.assertEqual(s["status"], "active")
        self.assertEqual(s["sink"], {
            "httpEndpoint": URL + "/v1/log-stream",
            "httpAuthorization": self.stream_token,
            "httpContentType": "application/json",
            "httpContentFormat": "JSONARRAY"})
        self.assertEqual(sorted(f["name"] for f in s["filters"]),
                         sorted(CATEGORIES))

    def assert_client(self, scopes):
        c = self.fake.client_named("phoneclaimd")
        self.assertEqual(c["app_type"], "non_interactive")
        self.assertEqual(c["grant_types"], ["client_credentials"])
        st = os.stat(self.path("auth0.secret"))
        self.assertEqual(st.st_mode & 0o777, 0o600)
        self.assertEqual(read(self.path("auth0.secret")),
                         c["client_secret"] + "\n")
        self.assertEqual(sorted(self.fake.grant_of(c["client_id"])["scope"]),
                         sorted(scopes))
        # The daemon's credentials get a token with those scopes.
        status, body = self.fake.issue({
            "grant_type": ["client_credentials"],
            "client_id": [c["client_id"]],
            "client_secret": [c["client_secret"]],
            "audience": ["https://%s/api/v2/" % self.fake.domain]})
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body["scope"].split()), sorted(scopes))
        return c

    def known_secrets(self):
        out = [self.fake.secret, self.api_token, self.stream_token,
               self.stream_token[7:], self.twilio_token]
        out += [c["client_secret"] for c in self.fake.clients.values()]
        out += list(self.fake.tokens)
        return out

    def tearDown(self):
        text = "\n".join(self.outputs)
        for value in self.known_secrets():
            self.assertNotIn(value, text, "a secret was printed")


class ClassicTests(SetupCase):

    def test_fresh_tenant_is_set_up(self):
        r = self.setup_ok()
        a = self.assert_action("send-phone-message")
        bound = [b["_action"] for b in
                 self.fake.bindings["send-phone-message"]]
        self.assertEqual(bound, [a["id"]])
        self.assertEqual(self.fake.selected_provider, "phone-message-hook")
        self.assertTrue(self.fake.factors["sms"])
        self.assertEqual(self.fake.message_types, ["sms"])
        self.assert_stream()
        self.assert_client(DAEMON_SCOPES)
        self.assertIn("9 changes made", r.stdout)
        # The config already names the secret file; it asks for the rest.
        self.assertRegex(r.stdout, r"auth0_client_id = [0-9a-f]{32}")
        self.assertNotIn("auth0_client_secret_file =", r.stdout)

    def test_second_run_changes_nothing_and_says_so(self):
        self.setup_ok()
        writes = self.fake.writes()
        r = self.setup_ok()
        self.assertEqual(self.fake.writes(), writes)
        self.assertIn("nothing to change", r.stdout)
        # Detected from the Action this time.
        r = self.run_tool(flavour=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("flavour classic", r.stdout)
        self.assertEqual(self.fake.writes(), writes)

    def test_dry_run_lists_and_changes_nothing(self):
        r = self.setup_ok("--dry-run")
        self.assertEqual(self.fake.writes(), [])
        self.assertEqual(self.fake.clients, {})
        for line in (r"action phoneclaimd: would create it for the "
                     r"send-phone-message trigger",
                     r"action phoneclaimd: would bind it",
                     r"mfa phone provider: would choose Custom",
                     r"mfa phone factor: would enable it",
                     r"log stream phoneclaimd: would create it: "
                     r"https://claims.example.test/v1/log-stream",
                     r"client phoneclaimd: would create",
                     r"grant: would grant read:authentication_methods "
                     r"read:logs",
                     r"dry run: 8 changes would be made"):
            self.assertRegex(r.stdout, line)
        self.assertFalse(os.path.exists(self.path("auth0.secret")))
        # On a set-up tenant with one drift, it lists that one fix.
        self.setup_ok()
        self.fake.stream_named("phoneclaimd")["status"] = "paused"
        writes = self.fake.writes()
        r = self.setup_ok("-n")
        self.assertRegex(r.stdout, r"log stream phoneclaimd: would update "
                         r"it: status paused")
        self.assertIn("1 change would be made", r.stdout)
        self.assertEqual(self.fake.writes(), writes)

    def drifts(self):
        """(name, how to make it, what --check says)."""
        f = self.fake
        act = lambda: f.action_named("phoneclaimd")
        stream = lambda: f.stream_named("phoneclaimd")
        grant = lambda: f.grant_of(f.client_named("phoneclaimd")
                                   ["client_id"])

        def drop_secret():
            a = act()
            del a["_secrets"]["TWILIO_FROM"]
            del a["_secret_dates"]["TWILIO_FROM"]

        return [
            ("code", lambda: act().update(code="// edited\n"),
             r"its code differs from .*send-phone-message\.js"),
            ("undeployed", lambda: act().update(all_changes_deployed=False),
             r"changes that are not deployed"),
            ("old version", lambda: act()["deployed_version"].update(
                code="// old\n"), r"deployed version's code differs"),
            ("never deployed", lambda: act().pop("deployed_version"),
             r"action phoneclaimd: drift: never deployed"),
            ("unbound", lambda: f.bindings.update(
                {"send-phone-message": []}), r"not bound to the "
             r"send-phone-message flow"),
            ("secret", drop_secret, r"secrets missing: TWILIO_FROM"),
            ("provider", lambda: setattr(f, "selected_provider", "auth0"),
             r"mfa phone provider: drift: auth0, want Custom"),
            ("factor", lambda: f.factors.update(sms=False),
             r"mfa phone factor: drift: disabled"),
            ("paused", lambda: stream().update(status="paused"),
             r"log stream phoneclaimd: drift: status paused"),
            ("suspended", lambda: stream().update(status="suspended"),
             r"status suspended"),
            ("url", lambda: stream()["sink"].update(
                httpEndpoint="https://old.example.test/v1/log-stream"),
             r"URL https://old\.example\.test/v1/log-stream, want "
             r"https://claims\.example\.test/v1/log-stream"),
            ("format", lambda: stream()["sink"].update(
                httpContentFormat="JSONLINES"),
             r"content format JSONLINES, want JSONARRAY"),
            ("type", lambda: stream()["sink"].update(
                httpContentType="text/plain"), r"content type text/plain"),
            ("category", lambda: stream().update(filters=[
                {"type": "category", "name": c} for c in CATEGORIES
                if c != "other"]), r"categories missing: other"),
            ("token", lambda: stream()["sink"].update(
                httpAuthorization="Bearer stale"),
             r"Authorization token differs"),
            ("scope", lambda: grant().update(scope=["read:logs"]),
             r"scopes missing: read:authentication_methods"),
            ("extra scope", lambda: grant().update(
                scope=DAEMON_SCOPES + [DELETE]),
             r"scopes not needed: delete:authentication_methods"),
            ("secret file", lambda: os.unlink(self.path("auth0.secret")),
             r"secret file .*auth0\.secret missing"),
            ("wrong secret", lambda: write_secret(
                self.path("auth0.secret"), "not-the-secret\n"),
             r"Auth0 refuses the secret in .*auth0\.secret"),
        ]

    def test_check_reports_each_drift_and_a_run_fixes_it(self):
        self.setup_ok()
        r = self.check(0)
        self.assertIn("no drift", r.stdout)
        for name, make, says in self.drifts():
            with self.subTest(drift=name):
                make()
                writes = self.fake.writes()
                r = self.check(1)
                self.assertRegex(r.stdout, says)
                self.assertRegex(r.stdout, r"1 drift found")
                self.assertEqual(self.fake.writes(), writes)
                r = self.setup_ok()
                self.assertNotIn("nothing to change", r.stdout)
                self.check(0)
        self.assert_action("send-phone-message")
        self.assert_stream()
        self.assert_client(DAEMON_SCOPES)

    def test_on_conflict_remove_grants_delete(self):
        self.write_conf("remove")
        self.setup_ok()
        self.assert_client(DAEMON_SCOPES + [DELETE])
        self.write_conf("report")
        r = self.check(1)
        self.assertIn("scopes not needed: " + DELETE, r.stdout)
        self.setup_ok()
        self.assert_client(DAEMON_SCOPES)

    def test_bootstrap_grants_its_scopes_for_a_time(self):
        self.setup_ok("--bootstrap")
        self.assert_client(DAEMON_SCOPES + ["create:users", "read:users"])
        r = self.check(1)
        self.assertIn("scopes not needed: create:users read:users",
                      r.stdout)
        self.setup_ok()
        self.assert_client(DAEMON_SCOPES)

    def test_update_secrets_sends_them_again(self):
        self.setup_ok()
        # A new api token cannot be seen (secret values are never
        # returned); --update-secrets sends every secret and the token.
        self.write_files()
        self.write_admin(self.fake)
        r = self.setup_ok()
        self.assertIn("Authorization token differs", r.stdout)
        self.assertNotEqual(self.fake.secret_values(
            self.fake.action_named("phoneclaimd"))["PHONECLAIMD_TOKEN"],
            self.api_token)
        self.setup_ok("--update-secrets")
        self.assert_action("send-phone-message")
        self.assert_stream()

    def test_unknown_action_secret_is_never_dropped(self):
        self.setup_ok()
        a = self.fake.action_named("phoneclaimd")
        a["_secrets"]["BLOCKED_MESSAGE"] = "taken"
        a["_secret_dates"]["BLOCKED_MESSAGE"] = "2026-01-01T00:00:00.000Z"
        writes = self.fake.writes()
        r = self.run_tool("--update-secrets")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("BLOCKED_MESSAGE", r.stderr)
        self.assertEqual(self.fake.writes(), writes)
        with open(self.path("secrets.env"), "a") as f:
            f.write("BLOCKED_MESSAGE=Please use another number\n")
        self.setup_ok("--update-secrets")
        self.assertEqual(self.fake.secret_values(a)["BLOCKED_MESSAGE"],
                         "Please use another number")

    def test_unreadable_stream_token_is_not_checked(self):
        self.fake.stream_auth_visible = False
        self.setup_ok()
        writes = self.fake.writes()
        r = self.setup_ok()
        self.assertIn("cannot be read back", r.stdout)
        self.assertIn("nothing to change", r.stdout)
        self.assertEqual(self.fake.writes(), writes)
        self.check(0)

    def test_rate_limit_is_waited_out(self):
        reset = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0",
                 "x-ratelimit-reset": str(int(time.time()) + 1)}
        self.fake.fail_next("/api/v2/log-streams", 429, reset)
        self.fake.fail_next("/api/v2/actions/actions", 429, {}, times=2)
        r = self.setup_ok()
        self.assertRegex(r.stderr, r"GET /log-streams: rate limited \(429\)")
        self.assertEqual(len([s for s in self.fake.requests("/api/v2/log-"
                                                            "streams")
                              if s[0] == "GET"]), 2)
        self.assert_stream()
        self.assert_action("send-phone-message")

    def test_missing_admin_scope_refused_before_any_change(self):
        fake = self.make_fake(admin_scopes=[
            s for s in ALL_SCOPES if s != "create:log_streams"])
        self.write_admin(fake)
        r = self.run_tool(fake=fake)
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("lack the scopes create:log_streams", r.stderr)
        self.assertEqual(fake.writes(), [])
        # A check needs only the read scopes.
        r = self.run_tool("--check", fake=fake)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_lost_secret_needs_read_client_keys(self):
        self.setup_ok()
        os.unlink(self.path("auth0.secret"))
        self.fake.admin_scopes.discard("read:client_keys")
        r = self.run_tool()
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("need read:client_keys", r.stderr)

    def test_no_client_and_credentials_from_the_environment(self):
        fake = self.make_fake(admin_scopes=[
            s for s in ALL_SCOPES if "client" not in s])
        os.unlink(self.path("admin.cred"))
        env = dict(os.environ, AUTH0_DOMAIN=fake.domain,
                   AUTH0_CLIENT_ID=fake.client_id,
                   AUTH0_CLIENT_SECRET=fake.secret)
        args = [sys.executable, self.tool, "-c", self.path("phoneclaimd.conf"),
                "-u", URL, "-f", "classic", "--no-client",
                "--secrets-file", self.path("secrets.env"),
                "--actions-dir", os.path.join(srcdir(), "conf", "actions"),
                "--base-url", fake.url]
        for run in (1, 2):
            r = subprocess.run(args, capture_output=True, text=True, env=env,
                               timeout=120, stdin=subprocess.DEVNULL)
            self.outputs.append(r.stdout + r.stderr)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("nothing to change", r.stdout)
        self.assertNotIn("client", r.stdout)
        self.assertEqual(fake.clients, {})
        self.assertIsNotNone(fake.stream_named("phoneclaimd"))
        self.assertNotIn(fake.secret, "\n".join(self.outputs))

    def test_usage_errors(self):
        cases = [
            (["-u", "http://claims.example.test"], r"--url: expected"),
            (["--delivery", "fax"], r"--delivery"),
            (["--dry-run", "--check"], r"exclude each other"),
            (["--bogus"], r"unrecognized arguments"),
        ]
        for extra, says in cases:
            with self.subTest(args=extra):
                r = self.run_tool(*extra)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertRegex(r.stderr, says)
        os.chmod(self.path("admin.cred"), 0o644)
        r = self.run_tool()
        self.assertEqual(r.returncode, 2)
        self.assertIn("chmod 600", r.stderr)
        self.assertEqual(self.fake.writes(), [])


class UnifiedTests(SetupCase):

    flavour = "unified"

    def test_fresh_tenant_is_set_up(self):
        r = self.setup_ok("--delivery", "sms,voice")
        self.assert_action("custom-phone-provider")
        self.assertEqual(self.fake.bindings["send-phone-message"], [])
        self.assertEqual(self.fake.selected_provider, "auth0")
        [p] = self.fake.phone_providers
        self.assertEqual((p["name"], p["disabled"], p["configuration"]),
                         ("custom", False,
                          {"delivery_methods": ["text", "voice"]}))
        self.assertEqual(self.fake.message_types, ["sms", "voice"])
        self.assert_stream()
        self.assert_client(DAEMON_SCOPES)
        self.assertIn("changes made", r.stdout)
        writes = self.fake.writes()
        r = self.setup_ok("--delivery", "sms,voice")
        self.assertIn("nothing to change", r.stdout)
        self.assertEqual(self.fake.writes(), writes)

    def test_provider_drift(self):
        self.setup_ok()
        p = self.fake.phone_providers[0]
        for change, says in (({"disabled": True}, r"disabled"),
                             ({"name": "twilio"}, r"twilio, want custom")):
            with self.subTest(change=change):
                p.update(change)
                r = self.check(1)
                self.assertRegex(r.stdout, r"phone provider: drift: .*" +
                                 says)
                self.setup_ok()
                self.check(0)
        self.assertEqual((p["name"], p["disabled"]), ("custom", False))

    def test_existing_twilio_provider_becomes_custom(self):
        self.fake.phone_providers.append({
            "id": "pro_1", "tenant": "t", "name": "twilio",
            "channel": "phone", "disabled": False,
            "configuration": {"delivery_methods": ["text"],
                              "sid": "AC1", "default_from": "+1555"}})
        # A configured phone provider tells the flavour: unified.
        r = self.run_tool(flavour=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("flavour unified", r.stdout)
        self.assertEqual(self.fake.phone_providers[0]["name"], "custom")
        self.assert_action("custom-phone-provider")


class DetectTests(SetupCase):

    def test_classic_when_the_tenant_has_no_custom_phone_provider(self):
        fake = self.make_fake(triggers={"send-phone-message": "v2",
                                        "post-login": "v3"})
        self.write_admin(fake)
        r = self.run_tool(fake=fake, flavour=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("flavour classic: the tenant offers no "
                      "custom-phone-provider trigger", r.stdout)

    def test_refused_when_the_api_cannot_tell(self):
        r = self.run_tool(flavour=False)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("pass --flavour classic or --flavour unified",
                      r.stderr)
        self.assertEqual(self.fake.writes(), [])

    def test_wrong_flavour_for_the_tenant(self):
        fake = self.make_fake(triggers={"send-phone-message": "v2"})
        self.write_admin(fake)
        self.flavour = "unified"
        r = self.run_tool(fake=fake)
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("no custom-phone-provider trigger", r.stderr)
        self.assertEqual(fake.writes(), [])


if __name__ == "__main__":
    unittest.main()
