"""
The status socket and phoneclaimctl (DESIGN section 5): every command and
the shape of its answer, who may change claims (SO_PEERCRED), the socket's
life (mode 0660, a stale socket replaced, a live daemon never robbed of its
socket), its bounds (line length, 64 connections, clients that do not
read), durability of admin changes, and phoneclaimctl's output, import,
export and exit statuses.  No answer and no log line shows a full number.
"""

import csv
import io
import itertools
import json
import os
import pty
import pwd
import re
import select
import socket
import stat
import subprocess
import sys
import time
import unittest

import harness
from harness import DaemonTestCase, digits, fresh_number, fresh_user, \
    write_file

harness.require_daemon()
if not os.environ.get("PHONECLAIMCTL"):
    print("PHONECLAIMCTL is not set: skipping (run through make check)",
          file=sys.stderr)
    sys.exit(77)

TTL = 600
ELLIPSIS = "\u2026"
CTL_TIMEOUT = 30.0	# seconds for one phoneclaimctl run
SOCK_TIMEOUT = 10.0	# seconds to wait for one answer line
MAX_CLIENTS = 64
LINE_MAX = 4096

STATUS_KEYS = ["backfill", "claims", "conflicts", "conflicts_resolved",
               "events", "last_event", "mode", "store", "uptime_s",
               "version"]
EVENT_KEYS = ["ambiguous", "applied", "duplicates", "ignored", "rejected",
              "stale", "unmatched", "unreadable"]
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
# A number as it may be written: digits joined by the separators people and
# libraries put between them.
PHONE_SPAN = re.compile(r"\+?[0-9](?:[0-9 ().\-/]*[0-9])?")

_log_counter = itertools.count(1)


SENT = []	# every number these tests sent, for the privacy checks


def number():
    """A fresh number, remembered for the privacy checks."""
    phone = fresh_number()
    SENT.append(phone)
    return phone


def masked(phone):
    """What the answers show of a number: an ellipsis and 4 digits."""
    return ELLIPSIS + digits(phone)[-4:]


def new_log_id():
    """A fresh log id that sorts after those of earlier tests."""
    return "90020261128" + "%045d" % next(_log_counter)


class StatusClient:
    """One connection to the status socket: lines out, JSON lines back."""

    def __init__(self, path, timeout=SOCK_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def read_line(self, timeout=SOCK_TIMEOUT):
        """Return the next line (bytes, without newline); None at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no answer within %.0f s (have %r)" %
                                     (timeout, self.buf[:200]))
            readable, _, _ = select.select([self.sock], [], [], left)
            if not readable:
                continue
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ConnectionAbortedError):
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def answer(self, timeout=SOCK_TIMEOUT):
        """Read one answer line and parse it."""
        line = self.read_line(timeout)
        if line is None:
            raise AssertionError("the daemon closed the connection")
        return json.loads(line.decode("utf-8"))

    def ask(self, command):
        """Send one command line; return its answer, parsed."""
        self.send(command + "\n")
        return self.answer()

    def closed_within(self, timeout):
        """Return True if the daemon closes within timeout (reading on)."""
        closed, data = harness.wait_closed(self.sock, timeout)
        self.buf += data
        return closed is not None

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ControlCase(DaemonTestCase):
    """One shared daemon per class (self.d), US default region."""

    conf = {"default_region": "US"}
    exempt = None
    shared = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ctl_path = os.environ["PHONECLAIMCTL"]
        if cls.shared:
            cls.d = cls.new_daemon(start=False, **cls.conf)
            if cls.exempt:
                cls.d.set_exempt(cls.exempt)
            cls.d.start()

    def setUp(self):
        if self.shared:
            self.d.ensure_running()

    # Helpers.

    def sock_path(self, d=None):
        return (d or self.d).conf["status_socket"]

    def client(self, d=None):
        return StatusClient(self.sock_path(d))

    def ask(self, command, d=None):
        with self.client(d) as c:
            return c.ask(command)

    def ctl(self, *args, d=None, env=None, preexec_fn=None, socket_arg=True,
            input=None):
        """Run phoneclaimctl [-s socket] args; return CompletedProcess."""
        cmd = [self.ctl_path]
        if socket_arg:
            cmd += ["-s", self.sock_path(d)]
        full_env = dict(os.environ)
        full_env.pop("PHONECLAIMD_STATUS_SOCKET", None)
        full_env.update(env or {})
        try:
            return subprocess.run(cmd + list(args), capture_output=True,
                                  text=True, errors="replace", env=full_env,
                                  timeout=CTL_TIMEOUT, input=input,
                                  stdin=None if input is not None else
                                  subprocess.DEVNULL,
                                  preexec_fn=preexec_fn)
        except subprocess.TimeoutExpired:
            raise AssertionError("phoneclaimctl %s did not finish within "
                                 "%.0f s" % (" ".join(args), CTL_TIMEOUT))

    def ctl_json(self, *args, rc=0, **kw):
        r = self.ctl(*args, **kw)
        self.assertEqual(r.returncode, rc, "phoneclaimctl %s: %r %r" %
                         (" ".join(args), r.stdout, r.stderr))
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1, r.stdout)
        return json.loads(lines[0])

    def reserve(self, phone=None, user=None):
        phone = phone or number()
        user = user or fresh_user()
        self.assertReserved(self.d.claim(phone, user), TTL)
        return phone, user

    def assertFree(self, phone):
        self.reserve(phone)

    def assertHeld(self, phone):
        self.assertTaken(self.d.claim(phone, fresh_user()))

    def assertIso(self, value):
        self.assertIsInstance(value, str)
        self.assertRegex(value, ISO_RE)

    def assertNoFullNumbers(self, text, numbers=None):
        """No digits of a full number (national part) in text, however it is
        spelt: each run of digits with the separators a number is written
        with (spaces, hyphens, dots, brackets, slashes) is read on its own.
        Digits are not joined across other characters, so a timestamp such
        as 20:15:55 next to a user id's digits is not a number."""
        spans = [digits(m.group(0)) for m in PHONE_SPAN.finditer(text)]
        for phone in numbers if numbers is not None else \
                SENT + self.d.sent_numbers:
            national = digits(phone)[-10:]
            for span in spans:
                self.assertNotIn(national, span,
                                 "a full number in: %r" % text[:300])

    def status(self, d=None):
        return self.ask("status", d)

    def post_log_stream(self, items):
        return self.d.request("POST", "/v1/log-stream",
                              json.dumps(items).encode(),
                              {"Authorization": self.d.log_stream_token})


class CommandTests(ControlCase):
    """Every command and the exact shape of its answer."""

    exempt = ["+12015550199"]

    def test_status_shape(self):
        s = self.status()
        self.assertEqual(sorted(s), STATUS_KEYS, s)
        self.assertEqual(s["version"], harness.VERSION_LINE.split()[1])
        self.assertEqual(s["mode"], "enforce")
        self.assertIsInstance(s["uptime_s"], int)
        self.assertGreaterEqual(s["uptime_s"], 0)
        self.assertEqual(sorted(s["claims"]), ["active", "pending"])
        self.assertIsInstance(s["conflicts"], int)
        self.assertEqual(sorted(s["events"]), EVENT_KEYS)
        self.assertEqual(sorted(s["last_event"]), ["date", "log_id"])
        self.assertEqual(s["store"]["state_dir"], self.d.state_dir)
        self.assertIs(s["store"]["ok"], True)
        self.assertEqual(s["store"]["claims"], s["claims"]["active"] +
                         s["claims"]["pending"])

    def test_status_counts_follow_claims(self):
        before = self.status()["claims"]
        self.reserve()
        self.reserve()
        phone, user = self.reserve()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        self.assertEqual(self.ask("claim %s %s" % (number(),
                                                   fresh_user())),
                         {"result": "active"})
        after = self.status()["claims"]
        self.assertEqual(after["pending"] - before["pending"], 2)
        self.assertEqual(after["active"] - before["active"], 2)

    def test_status_shows_the_log_stream(self):
        lid = new_log_id()
        date = harness.auth0_date()
        item = {"log_id": lid, "data": {"type": "s", "date": date,
                                        "user_id": fresh_user(),
                                        "log_id": lid}}
        before = self.status()["events"]
        reply = self.post_log_stream([item])
        self.assertEqual(reply.status, 200, str(reply))
        s = self.status()
        self.assertEqual(s["events"]["ignored"] - before["ignored"], 1)
        self.assertEqual(s["last_event"]["log_id"], lid)
        self.assertEqual(s["last_event"]["date"], date)
        reply = self.post_log_stream([item])
        self.assertEqual(self.status()["events"]["duplicates"] -
                         before["duplicates"], 1)

    def test_help_lists_every_command(self):
        h = self.ask("help")
        self.assertEqual([c["name"] for c in h["commands"]],
                         ["status", "lookup", "user", "conflicts",
                          "release", "claim", "export", "backfill",
                          "reconcile", "bootstrap", "backup", "help"])
        by_name = {c["name"]: c for c in h["commands"]}
        self.assertEqual(by_name["release"]["args"],
                         "<number> [<user_id>]")
        self.assertEqual(by_name["backup"]["args"], "<directory>")
        self.assertEqual(sorted(n for n, c in by_name.items()
                                if c["admin"]),
                         ["backfill", "backup", "bootstrap", "claim",
                          "reconcile", "release"])
        for c in h["commands"]:
            self.assertTrue(c["summary"], c)

    def test_lookup_of_a_free_number(self):
        phone = number()
        self.assertEqual(self.ask("lookup " + phone),
                         {"number": masked(phone), "claims": []})

    def test_lookup_of_a_reservation(self):
        phone, user = self.reserve()
        a = self.ask("lookup " + phone)
        self.assertEqual(a["number"], masked(phone))
        self.assertEqual(len(a["claims"]), 1, a)
        cl = a["claims"][0]
        self.assertEqual(sorted(cl), ["expires", "since", "source", "state",
                                      "user_id"])
        self.assertEqual((cl["user_id"], cl["state"], cl["source"]),
                         (user, "pending", "enrollment"))
        self.assertIso(cl["since"])
        self.assertIso(cl["expires"])
        self.assertGreater(cl["expires"], cl["since"])

    def test_lookup_normalises_the_number(self):
        phone, user = self.reserve()
        d = digits(phone)
        spaced = "+1 %s %s %s" % (d[1:4], d[4:7], d[7:])
        national = "(%s) %s-%s" % (d[1:4], d[4:7], d[7:])
        for form in (phone, spaced, '"%s"' % spaced, '"%s"' % national,
                     d[1:], "001" + d[1:]):
            a = self.ask("lookup " + form)
            self.assertEqual([c["user_id"] for c in a["claims"]], [user],
                             "lookup %s: %s" % (form, a))

    def test_lookup_errors(self):
        self.assertEqual(self.ask("lookup 12"),
                         {"error": "invalid_phone_number"})
        self.assertEqual(self.ask("lookup not-a-number"),
                         {"error": "invalid_phone_number"})
        self.assertEqual(self.ask("lookup"), {"error": "missing_argument"})

    def test_user(self):
        user = fresh_user()
        p1, p2 = number(), number()
        self.assertEqual(self.ask("user " + user),
                         {"user_id": user, "claims": []})
        self.assertEqual(self.ask("claim %s %s" % (p1, user)),
                         {"result": "active"})
        self.reserve(p2, user)
        a = self.ask("user " + user)
        self.assertEqual(a["user_id"], user)
        got = sorted((c["number"], c["state"], c["source"])
                     for c in a["claims"])
        self.assertEqual(got, sorted([(masked(p1), "active", "admin"),
                                      (masked(p2), "pending",
                                       "enrollment")]))
        for c in a["claims"]:
            self.assertEqual(sorted(c), ["number", "since", "source",
                                         "state"])
            self.assertIso(c["since"])

    def test_user_ids_are_escaped(self):
        user = 'samlp|Corp "x"|j\\doe \u00e9\u4e2d'
        phone = number()
        quoted = '"%s"' % user.replace("\\", "\\\\").replace('"', '\\"')
        self.assertEqual(self.ask("claim %s %s" % (phone, quoted)),
                         {"result": "active"})
        with self.client() as c:
            c.send(("user %s\n" % quoted).encode())
            raw = c.read_line()
        self.assertIn(b'"user_id":"samlp|Corp \\"x\\"|j\\\\doe ', raw)
        a = json.loads(raw.decode("utf-8"))
        self.assertEqual((a["user_id"], len(a["claims"])), (user, 1))
        a = self.ask("lookup " + phone)
        self.assertEqual(a["claims"][0]["user_id"], user)

    def test_user_errors(self):
        self.assertEqual(self.ask("user"), {"error": "missing_argument"})
        self.assertEqual(self.ask('user "a\\"'), {"error":
                                                  "invalid_argument"})
        with self.client() as c:
            c.send(b"user auth0|\xff\xfe\n")
            self.assertEqual(c.answer(), {"error": "invalid_user_id"})
            c.send(b"user \"" + b"u" * 513 + b"\"\n")
            self.assertEqual(c.answer(), {"error": "invalid_user_id"})
            c.send(b"user auth0|\x01x\n")
            self.assertEqual(c.answer(), {"error": "invalid_argument"})

    def test_conflicts(self):
        holder, late = fresh_user(), fresh_user()
        phone = number()
        before = self.status()["conflicts"]
        self.assertEqual(self.ask("claim %s %s" % (phone, holder)),
                         {"result": "active"})
        reply = self.d.claim(phone, late, "second-factor-authentication")
        self.assertResult(reply, "conflict")
        a = self.ask("conflicts")
        self.assertEqual(list(a), ["conflicts"])
        mine = [c for c in a["conflicts"] if late in c["user_ids"]]
        self.assertEqual(len(mine), 1, a)
        cf = mine[0]
        self.assertEqual(sorted(cf), ["log_id", "number", "since",
                                      "user_ids"])
        self.assertEqual(cf["number"], masked(phone))
        self.assertEqual(cf["user_ids"], [late, holder])
        self.assertIsNone(cf["log_id"])
        self.assertIso(cf["since"])
        self.assertEqual(self.status()["conflicts"] - before, 1)

    def test_unknown_and_malformed_commands(self):
        with self.client() as c:
            for line, error in (("bogus", "unknown_command"),
                                ("STATUS", "unknown_command"),
                                ("status now", "invalid_argument"),
                                ("help me", "invalid_argument"),
                                ('lookup "+1 202', "invalid_argument"),
                                ("claim +12025550100", "missing_argument"),
                                ("release", "missing_argument")):
                self.assertEqual(c.ask(line), {"error": error}, line)
            # The connection survives all of them.
            self.assertEqual(sorted(c.ask("status")), STATUS_KEYS)

    def test_pipelined_commands_are_answered_in_order(self):
        phone, user = number(), fresh_user()
        with self.client() as c:
            c.send("\n\r\nlookup %s\nclaim %s %s\nlookup %s\nrelease %s\n"
                   "lookup %s\nstatus\r\n" % (phone, phone, user, phone,
                                              phone, phone))
            answers = [c.answer() for _ in range(6)]
        self.assertEqual(answers[0]["claims"], [])
        self.assertEqual(answers[1], {"result": "active"})
        self.assertEqual([x["user_id"] for x in answers[2]["claims"]],
                         [user])
        self.assertEqual(answers[3], {"released": 1})
        self.assertEqual(answers[4]["claims"], [])
        self.assertEqual(sorted(answers[5]), STATUS_KEYS)

    def test_release_frees_the_number(self):
        phone, _ = self.reserve()
        self.assertHeld(phone)
        self.assertEqual(self.ask("release " + phone), {"released": 1})
        self.assertEqual(self.ask("lookup " + phone)["claims"], [])
        self.assertFree(phone)

    def test_release_of_an_active_claim(self):
        phone, user = number(), fresh_user()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        self.assertEqual(self.ask("release %s" % phone), {"released": 1})
        self.assertEqual(self.ask("user " + user)["claims"], [])
        self.assertFree(phone)

    def test_release_of_one_user(self):
        phone, user = self.reserve()
        self.assertEqual(self.ask("release %s %s" % (phone, fresh_user())),
                         {"released": 0})
        self.assertHeld(phone)
        self.assertEqual(self.ask("release %s %s" % (phone, user)),
                         {"released": 1})
        self.assertFree(phone)

    def test_release_of_a_free_number(self):
        self.assertEqual(self.ask("release " + number()),
                         {"released": 0})

    def test_release_errors(self):
        self.assertEqual(self.ask("release 12"),
                         {"error": "invalid_phone_number"})
        self.assertEqual(self.ask('release +12025550100 ""'),
                         {"error": "invalid_user_id"})

    def test_claim_makes_the_number_taken(self):
        phone, user, other = number(), fresh_user(), fresh_user()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        self.assertHeld(phone)
        self.assertResult(self.d.claim(phone, user), "owned")
        self.assertEqual(self.ask("claim %s %s" % (phone, other)),
                         {"result": "taken"})
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        cl = self.ask("lookup " + phone)["claims"]
        self.assertEqual([(c["user_id"], c["state"], c["source"],
                           c["expires"]) for c in cl],
                         [(user, "active", "admin", None)])

    def test_claim_activates_a_reservation(self):
        phone, user = self.reserve()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        cl = self.ask("lookup " + phone)["claims"]
        self.assertEqual([(c["state"], c["source"], c["expires"])
                          for c in cl], [("active", "enrollment", None)])

    def test_claim_of_an_exempt_number(self):
        phone = self.exempt[0]
        self.assertEqual(self.ask("claim %s %s" % (phone, fresh_user())),
                         {"result": "exempt"})
        self.assertEqual(self.ask("lookup " + phone)["claims"], [])

    def test_claim_errors(self):
        self.assertEqual(self.ask("claim 12 auth0|x"),
                         {"error": "invalid_phone_number"})
        self.assertEqual(self.ask("claim +12025550100 \"\""),
                         {"error": "invalid_user_id"})

    def test_user_id_with_blanks_takes_the_rest_of_the_line(self):
        phone = number()
        self.assertEqual(self.ask("claim %s samlp|Corp|john  doe" % phone),
                         {"result": "active"})
        self.assertEqual([c["user_id"] for c in
                          self.ask("lookup " + phone)["claims"]],
                         ["samlp|Corp|john doe"])

    def test_export_stream(self):
        phone, user = number(), fresh_user()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        with self.client() as c:
            c.send("export\nstatus\n")
            rows = []
            while True:
                a = c.answer()
                if "end" in a:
                    break
                rows.append(a)
            self.assertEqual(a, {"end": len(rows)})
            self.assertEqual(sorted(c.answer()), STATUS_KEYS)
        mine = [r for r in rows if r["user_id"] == user]
        self.assertEqual(len(mine), 1, rows)
        self.assertEqual(sorted(mine[0]), ["number", "since", "source",
                                           "state", "user_id"])
        self.assertEqual((mine[0]["number"], mine[0]["state"]),
                         (masked(phone), "active"))

    def test_mutations_are_logged_without_numbers(self):
        phone, user = number(), harness.log_plain_user()
        since = self.d.log_size()
        self.assertEqual(self.ask("claim %s %s" % (phone, user)),
                         {"result": "active"})
        self.assertEqual(self.ask("release %s %s" % (phone, user)),
                         {"released": 1})
        last4 = digits(phone)[-4:]
        self.assertTrue(self.d.wait_for_log(
            r"uid 0 assigned the number ending %s to user %s" %
            (last4, re.escape(user)), since))
        self.assertTrue(self.d.wait_for_log(
            r"uid 0 released 1 claim\(s\) of user %s on the number ending "
            r"%s" % (re.escape(user), last4), since))

    def test_zz_no_full_number_in_answers_or_log(self):
        with self.client() as c:
            c.send("export\n")
            raw = b""
            while b'"end"' not in raw:
                line = c.read_line()
                self.assertIsNotNone(line)
                raw += line + b"\n"
            for phone in self.d.sent_numbers[-20:]:
                c.send("lookup %s\n" % phone)
                raw += c.read_line() + b"\n"
            c.send("conflicts\n")
            raw += c.read_line() + b"\n"
        self.assertNoFullNumbers(raw.decode("utf-8"))
        self.assertNoFullNumbers(self.d.log_text())

    def test_full_number_check_reads_numbers_not_neighbours(self):
        """The check above finds a number however it is spelt, and does not
        join the digits of a timestamp to the next user id's: an export
        written at 20:15:55 once "held" 2015550004 that way."""
        sent = ["+12015550004"]
        self.assertNoFullNumbers(
            "auth0|a1,0004,active,2026-12-07T20:15:55Z\n"
            "auth0|exp0041,0041,active,2026-12-07T20:15:55Z\n", sent)
        for spelt in ("+12015550004", "+1 (201) 555-0004", "201.555.0004",
                      "ending 2015550004,"):
            with self.assertRaises(AssertionError, msg=spelt):
                self.assertNoFullNumbers("x " + spelt + " y", sent)


class SocketTests(ControlCase):
    """The socket file: mode, stale and live sockets, bad paths."""

    shared = False

    def test_socket_mode_is_0660(self):
        d = self.own_daemon()
        st = os.lstat(self.sock_path(d))
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)

    def test_socket_is_removed_on_stop(self):
        d = self.own_daemon()
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(self.sock_path(d)))

    def test_stale_socket_of_a_killed_daemon_is_replaced(self):
        d = self.own_daemon()
        d.kill()
        self.assertTrue(os.path.exists(self.sock_path(d)))
        since = d.log_size()
        d.start()
        self.assertTrue(d.wait_for_log("removed the stale status socket",
                                       since, 1))
        self.assertEqual(sorted(self.status(d)), STATUS_KEYS)

    def test_stale_socket_file_is_replaced(self):
        d = self.new_daemon(start=False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.sock_path(d))
        s.close()
        self.addCleanup(d.stop)
        d.start()
        self.assertEqual(sorted(self.status(d)), STATUS_KEYS)

    def test_start_refused_while_a_daemon_listens(self):
        first = self.own_daemon()
        second = self.new_daemon(start=False,
                                 status_socket=self.sock_path(first))
        r = second.run("-f", "-c", second.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("status socket %s is in use by a running phoneclaimd"
                      % self.sock_path(first), r.stderr)
        # The first daemon keeps its socket.
        self.assertEqual(sorted(self.status(first)), STATUS_KEYS)
        second.expect_exit()

    def test_start_refused_when_the_directory_is_missing(self):
        d = self.new_daemon(start=False)
        path = d.path("missing/status.sock")
        d.conf["status_socket"] = path
        d.write_conf()
        r = d.run("-f", "-c", d.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("directory %s does not exist" % d.path("missing"),
                      r.stderr)

    def test_start_refused_when_the_path_is_too_long(self):
        d = self.new_daemon(start=False)
        path = d.path("s" * 120)
        d.conf["status_socket"] = path
        d.write_conf()
        r = d.run("-f", "-c", d.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("too long", r.stderr)

    def test_start_refused_when_the_path_is_a_file(self):
        d = self.new_daemon(start=False)
        write_file(self.sock_path(d), "keep me\n")
        r = d.run("-f", "-c", d.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("not a socket", r.stderr)
        with open(self.sock_path(d)) as f:
            self.assertEqual(f.read(), "keep me\n")


class BoundsTests(ControlCase):
    """Long lines, too many clients, clients that do not read."""

    shared = False

    def test_long_line_is_refused_and_closed(self):
        d = self.own_daemon()
        for data in (b"x" * (LINE_MAX + 1), b"lookup " + b"1" * 5000 + b"\n",
                     b"y" * 200000):
            with self.client(d) as c:
                c.send(data)
                self.assertEqual(c.answer(), {"error": "line_too_long"})
                self.assertTrue(c.closed_within(5))
        with self.client(d) as c:
            # Exactly LINE_MAX bytes is a line (an unknown command).
            c.send(b"z" * LINE_MAX + b"\n")
            self.assertEqual(c.answer(), {"error": "unknown_command"})
            self.assertEqual(sorted(c.ask("status")), STATUS_KEYS)

    def test_65th_connection_is_refused(self):
        d = self.own_daemon()
        clients = []
        try:
            for _ in range(MAX_CLIENTS):
                c = self.client(d)
                clients.append(c)
                self.assertEqual(sorted(c.ask("status")), STATUS_KEYS)
            with self.client(d) as extra:
                self.assertEqual(extra.answer(),
                                 {"error": "too_many_connections"})
                self.assertTrue(extra.closed_within(5))
            # Every client still works; one leaves, a new one gets in.
            self.assertEqual(sorted(clients[0].ask("status")), STATUS_KEYS)
            clients.pop().close()
            deadline = time.monotonic() + 5
            while True:
                with self.client(d) as c:
                    try:
                        c.send("status\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass	# refused already: its answer is there
                    a = c.answer()
                if "error" not in a or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(sorted(a), STATUS_KEYS)
        finally:
            for c in clients:
                c.close()
        self.assertEqual(self.reserve_on(d), "reserved")

    def reserve_on(self, d):
        return d.claim(number(), fresh_user()).get("result")

    def test_silent_clients_do_not_block_others(self):
        d = self.own_daemon()
        silent = [self.client(d) for _ in range(5)]
        try:
            silent[1].send(b"stat")		# half a line
            silent[2].send(b"export\n")	# never read
            for _ in range(3):
                start = time.monotonic()
                self.assertEqual(sorted(self.status(d)), STATUS_KEYS)
                self.assertLess(time.monotonic() - start, 2.0)
                self.assertEqual(self.reserve_on(d), "reserved")
        finally:
            for c in silent:
                c.close()

    def test_client_that_does_not_read_is_dropped(self):
        d = self.own_daemon()
        hog = self.client(d)
        hog.sock.setblocking(False)
        chunk = b"status\n" * 1000
        deadline = time.monotonic() + 20
        dropped = False
        try:
            while time.monotonic() < deadline and not dropped:
                # Others are served all along.
                self.assertEqual(sorted(self.status(d)), STATUS_KEYS)
                try:
                    hog.sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    dropped = True
            self.assertTrue(dropped, "a client that never reads was not "
                            "dropped within 20 s")
        finally:
            hog.close()
        self.assertTrue(d.wait_for_log("does not read its answers", 0, 2))
        self.assertEqual(sorted(self.status(d)), STATUS_KEYS)


class PeerTests(ControlCase):
    """Changes only for uid 0 or the daemon's uid: others get forbidden."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root to run phoneclaimctl as nobody")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        # Let nobody reach the socket: its directory and group.
        os.chmod(self.d.dir, 0o711)
        os.chown(self.sock_path(), -1, self.nobody.pw_gid)

    def as_nobody(self):
        uid, gid = self.nobody.pw_uid, self.nobody.pw_gid

        def drop():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        return drop

    def ctl_nobody(self, *args):
        try:
            return self.ctl(*args, preexec_fn=self.as_nobody())
        except (PermissionError, subprocess.SubprocessError) as e:
            self.skipTest("cannot run phoneclaimctl as nobody: %s" % e)

    def test_reads_are_allowed(self):
        r = self.ctl_nobody("status")
        if r.returncode == 2 and "Permission denied" in r.stderr:
            self.skipTest("nobody cannot reach the socket: %s" % r.stderr)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(json.loads(r.stdout)), STATUS_KEYS)
        phone, user = self.reserve()
        r = self.ctl_nobody("lookup", phone)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["claims"][0]["user_id"], user)

    def test_changes_are_forbidden(self):
        phone, user = self.reserve()
        free = number()
        since = self.d.log_size()
        for args in (("claim", free, fresh_user()), ("release", phone),
                     ("release", phone, user)):
            r = self.ctl_nobody(*args)
            if r.returncode == 2:
                self.skipTest("nobody cannot run phoneclaimctl: %s" %
                              r.stderr)
            self.assertEqual((r.returncode, json.loads(r.stdout)),
                             (1, {"error": "forbidden"}), args)
        self.assertHeld(phone)
        self.assertFree(free)
        self.assertTrue(self.d.wait_for_log(
            r"uid %d pid \d+ may not claim" % self.nobody.pw_uid, since))

    def test_import_is_forbidden(self):
        path = self.d.path("nobody.csv")
        numbers = [number() for _ in range(3)]
        write_file(path, "".join("%s,%s\n" % (n, fresh_user())
                                 for n in numbers))
        os.chmod(path, 0o644)
        r = self.ctl_nobody("import", path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("line 1: refused: forbidden", r.stdout)
        self.assertIn("claimed: 0", r.stdout)
        for n in numbers:
            self.assertFree(n)

    HOG = r"""
import json, os, select, socket, sys, time
socks = []
for _ in range(70):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[1])
    except OSError:
        s.close()
        continue
    socks.append(s)
time.sleep(1.0)
readable, _, _ = select.select(socks, [], [], 0)
held = [s for s in socks if s not in readable]
print(json.dumps({"held": len(held)}), flush=True)
sys.stdin.readline()
start = time.monotonic()
while held and time.monotonic() - start < 120:
    r, _, _ = select.select(held, [], [], 1.0)
    held = [s for s in held if s not in r or s.recv(1)]
print(json.dumps({"closed_after": time.monotonic() - start,
                  "left": len(held)}), flush=True)
"""

    def test_other_users_cannot_lock_root_out(self):
        """Issue 18, point 6: seventy idle connections from nobody hold
        at most a few slots (a cap per uid), root still gets in and may
        release, and nobody's idle connections are closed long before the
        300 s allowed to root's."""
        python = "/usr/bin/python3"
        if not os.access(python, os.X_OK):
            self.skipTest("no %s for nobody to run" % python)
        phone, _ = self.reserve()
        hog = subprocess.Popen([python, "-c", self.HOG,
                                self.sock_path()], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=self.as_nobody())
        try:
            held = json.loads(hog.stdout.readline())["held"]
            if held == 0:
                self.skipTest("nobody cannot reach the socket")
            self.assertLessEqual(held, 8)
            # Root, and root again and again: room is kept.
            for _ in range(3):
                r = self.ctl("status")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            r = self.ctl("release", phone)
            self.assertEqual((r.returncode, json.loads(r.stdout)),
                             (0, {"released": 1}), r.stderr)
            self.assertFree(phone)
            hog.stdin.write("go\n")
            hog.stdin.flush()
            end = json.loads(hog.stdout.readline())
            self.assertEqual(end["left"], 0, end)
            self.assertLess(end["closed_after"], 60, end)
        finally:
            hog.kill()
            hog.wait()

    def test_root_may_change(self):
        phone = number()
        self.assertEqual(self.ctl_json("claim", phone, fresh_user()),
                         {"result": "active"})
        self.assertHeld(phone)


class DurabilityTests(ControlCase):
    """An admin change that was answered survives kill -9 (I2)."""

    def test_claim_and_release_survive_kill(self):
        held, freed, user = number(), number(), fresh_user()
        self.assertEqual(self.ask("claim %s %s" % (freed, user)),
                         {"result": "active"})
        with self.client() as c:
            self.assertEqual(c.ask("claim %s %s" % (held, user)),
                             {"result": "active"})
            self.assertEqual(c.ask("release %s" % freed), {"released": 1})
            self.d.kill()
        self.d.start()
        self.assertEqual([x["user_id"] for x in
                          self.ask("lookup " + held)["claims"]], [user])
        self.assertEqual(self.ask("lookup " + freed)["claims"], [])
        s = self.status()
        self.assertEqual((s["claims"]["active"], s["store"]["claims"]),
                         (1, 1))


class NoRegionTests(ControlCase):
    """A daemon without default_region says why a number written without
    + is refused."""

    conf = {}

    def test_missing_plus_is_explained(self):
        self.assertEqual(self.ask("lookup 2015550123"),
                         {"error": "invalid_phone_number",
                          "detail": "the number has no leading + and no "
                                    "default_region is set"})
        # A number that is wrong for another reason gets no such detail.
        self.assertEqual(self.ask("lookup +1"),
                         {"error": "invalid_phone_number"})
        self.assertEqual(self.ask("lookup +12015550123")["claims"], [])


class CtlTests(ControlCase):
    """phoneclaimctl: output, exit statuses, import, export."""

    exempt = ["+12015550198"]

    def test_exit_statuses(self):
        self.assertEqual(self.ctl("status").returncode, 0)
        r = self.ctl("lookup", "12")
        self.assertEqual((r.returncode, json.loads(r.stdout)),
                         (1, {"error": "invalid_phone_number"}))
        r = subprocess.run([self.ctl_path, "-s", self.d.path("nowhere.sock"),
                            "status"], capture_output=True, text=True,
                           timeout=CTL_TIMEOUT)
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot connect", r.stderr)
        for args in ((), ("-Z", "status"), ("--bogus", "status")):
            r = self.ctl(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn("usage", r.stderr)
        r = self.ctl("lookup", "a\nb")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_usage_errors_exit_2_before_connecting(self):
        """An unknown command or a wrong number of arguments is a usage
        error (exit 2, as the man page says), found without a daemon."""
        nowhere = ["-s", self.d.path("nowhere.sock")]
        cases = {("bogus",): "unknown command: bogus",
                 ("import",): "import: missing arguments; usage: import "
                              "<file>",
                 ("export", "x"): "export: too many arguments",
                 ("status", "x"): "status: too many arguments",
                 ("claim", "+12015550100"): "claim: missing arguments",
                 ("backup",): "backup: missing arguments"}
        for args, message in cases.items():
            r = self.ctl(*nowhere, *args, socket_arg=False)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(message, r.stderr)
            self.assertNotIn("cannot connect", r.stderr)
        # Words after a number are joined, as the daemon does.
        r = self.ctl("lookup", "+1", "201", "555", "0100")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_help(self):
        """-h, --help and the help command print the same usage on
        standard output and exit 0, without a daemon; every command of
        the daemon's own help is in it, with the same arguments."""
        nowhere = ["-s", self.d.path("nowhere.sock")]
        outs = []
        for args in (["-h"], ["--help"], nowhere + ["help"]):
            r = self.ctl(*args, socket_arg=False)
            self.assertEqual((r.returncode, r.stderr), (0, ""), args)
            outs.append(r.stdout)
        self.assertEqual(outs[0], outs[1])
        self.assertEqual(outs[0], outs[2])
        text = outs[0]
        self.assertTrue(text.startswith("usage: phoneclaimctl"), text)
        for c in self.ask("help")["commands"]:
            words = (c["name"] + " " + c["args"]).strip()
            self.assertRegex(text, r"\n  %s +%s" % (re.escape(words),
                                                    re.escape(c["summary"])))
        self.assertRegex(text, r"\n  import <file> +")
        for line in text.splitlines():
            self.assertLessEqual(len(line), 79, line)
        self.assertNotIn("quot", text)

    def test_version(self):
        for args in (["-V"], ["--version"]):
            r = self.ctl(*args, socket_arg=False)
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"^phoneclaimctl \d+\.\d+\.\d+\n$")
        for args in (["-V"], ["--version"]):
            r = subprocess.run([harness.require_daemon()] + args,
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"^phoneclaimd \d+\.\d+\.\d+\n$")

    def test_daemon_help(self):
        for args in (["-h"], ["--help"]):
            r = subprocess.run([harness.require_daemon()] + args,
                               capture_output=True, text=True, timeout=10)
            self.assertEqual((r.returncode, r.stderr), (0, ""), args)
            self.assertTrue(r.stdout.startswith("usage: phoneclaimd"))
            for opt in ("--config=FILE", "--foreground", "--check",
                        "--verbose", "--help", "--version"):
                self.assertIn(opt, r.stdout)
        r = subprocess.run([harness.require_daemon(), "--bogus"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: phoneclaimd", r.stderr)

    def test_socket_from_the_environment(self):
        env = {"PHONECLAIMD_STATUS_SOCKET": self.sock_path()}
        r = self.ctl("status", socket_arg=False, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(json.loads(r.stdout)), STATUS_KEYS)
        # -s wins over the environment.
        env = {"PHONECLAIMD_STATUS_SOCKET": self.d.path("nowhere.sock")}
        r = self.ctl("status", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_one_line_when_not_a_terminal(self):
        r = self.ctl("status")
        self.assertEqual(r.stdout.count("\n"), 1, r.stdout)
        self.assertEqual(sorted(json.loads(r.stdout)), STATUS_KEYS)

    def on_tty(self, *args):
        """Run phoneclaimctl -s socket args with a terminal as standard
        output and error; return (exit status, text)."""
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(self.ctl_path, [self.ctl_path, "-s", self.sock_path()] +
                     list(args))
        out = b""
        deadline = time.monotonic() + CTL_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 1)
            if not readable:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return (os.waitstatus_to_exitcode(status),
                out.decode().replace("\r\n", "\n"))

    def test_text_on_a_terminal(self):
        """status, lookup, user and conflicts print aligned text on a
        terminal: names and values in columns, nested objects indented,
        lists of claims as tables with a header."""
        rc, text = self.on_tty("status")
        self.assertEqual(rc, 0, text)
        self.assertRegex(text, r"(?m)^version +\d+\.\d+\.\d+$")
        self.assertRegex(text, r"(?m)^claims\n  active +\d+\n  pending +\d+$")
        self.assertRegex(text, r"(?m)^  ok +yes$")
        self.assertNotIn("{", text)
        phone, user = self.reserve()
        rc, text = self.on_tty("lookup", phone)
        self.assertEqual(rc, 0, text)
        lines = text.splitlines()
        self.assertEqual(lines[0], "number  " + masked(phone))
        self.assertEqual(lines[1], "claims")
        self.assertRegex(lines[2], r"^  USER_ID +STATE +SINCE +EXPIRES +"
                                   r"SOURCE$")
        self.assertRegex(lines[3], r"^  %s +pending +\S+Z +\S+Z +"
                                   r"enrollment$" % re.escape(user))
        # The columns line up (the ellipsis is one column, three bytes).
        self.assertEqual(lines[2].index("STATE"), lines[3].index("pending"))
        rc, text = self.on_tty("user", user)
        self.assertEqual(rc, 0, text)
        lines = text.splitlines()
        self.assertRegex(lines[2], r"^  NUMBER +STATE +SINCE +SOURCE$")
        self.assertEqual(lines[2].index("STATE"), lines[3].index("pending"))
        self.assertTrue(lines[3].startswith("  " + masked(phone) + " "))
        rc, text = self.on_tty("conflicts")
        self.assertEqual(rc, 0, text)
        self.assertRegex(text, r"^conflicts +(\(none\)|\n  NUMBER)")

    def test_json_on_a_terminal_with_j(self):
        for opt in ("-j", "--json"):
            rc, text = self.on_tty(opt, "status")
            self.assertEqual(rc, 0, text)
            self.assertEqual(text.count("\n"), 1, text)
            self.assertEqual(sorted(json.loads(text)), STATUS_KEYS)

    def test_errors_on_a_terminal(self):
        rc, text = self.on_tty("lookup", "12")
        self.assertEqual((rc, text), (1, "phoneclaimctl: "
                                         "invalid_phone_number\n"))

    def test_arguments_with_blanks_and_quotes(self):
        phone, user = number(), 'samlp|Corp|"Jo" \\ Doe'
        d = digits(phone)
        spaced = "+1 %s %s %s" % (d[1:4], d[4:7], d[7:])
        self.assertEqual(self.ctl_json("claim", spaced, user),
                         {"result": "active"})
        a = self.ctl_json("user", user)
        self.assertEqual((a["user_id"], [c["number"] for c in a["claims"]]),
                         (user, [masked(phone)]))
        a = self.ctl_json("lookup", *spaced.split())
        self.assertEqual([c["user_id"] for c in a["claims"]], [user])

    def test_import(self):
        good = [number() for _ in range(3)]
        users = [fresh_user() for _ in range(3)]
        bad_user = number()
        text = ("# accounts to load\n"
                "number,user_id\n"
                "\n"
                "%s,%s\n"			# 4: claimed
                "%s , %s\n"			# 5: claimed (blanks)
                "%s,%s\n"			# 6: the same again: claimed
                "%s,%s\n"			# 7: another user: taken
                "12,auth0|short\n"		# 8: invalid number
                "%s\n"				# 9: no user id
                "%s,\"\"\n"			# 10: empty user id
                "\"%s\",\"a,b \"\"c\"\"\"\n"	# 11: quoted: claimed
                "%s,%s\n"			# 12: exempt
                "   # indented comment\n"
                % (good[0], users[0], good[1], users[1], good[0], users[0],
                   good[1], fresh_user(), bad_user, bad_user,
                   good[2], self.exempt[0], fresh_user()))
        path = self.d.path("import.csv")
        write_file(path, text)
        r = self.ctl("import", path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout.splitlines()
        self.assertEqual(out[:5], ["lines read: 9", "claimed: 4",
                                   "taken: 1", "exempt: 1", "refused: 3"],
                         r.stdout)
        self.assertEqual(out[5:], [
            "line 7: taken: already held by another user",
            "line 8: refused: invalid_phone_number",
            "line 9: refused: expected number,user_id",
            "line 10: refused: expected number,user_id",
            "line 12: exempt number, not stored"], r.stdout)
        self.assertNoFullNumbers(r.stdout + r.stderr, good + [bad_user])
        for phone, user in ((good[0], users[0]), (good[1], users[1]),
                            (good[2], 'a,b "c"')):
            cl = self.ctl_json("lookup", phone)["claims"]
            self.assertEqual([(c["user_id"], c["state"], c["source"])
                              for c in cl], [(user, "active", "admin")])
        self.assertFree(bad_user)

    def test_import_of_good_lines_exits_0(self):
        path = self.d.path("good.csv")
        pairs = [(number(), fresh_user()) for _ in range(200)]
        write_file(path, "".join("%s,%s\r\n" % p for p in pairs))
        r = self.ctl("import", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.splitlines()[:5],
                         ["lines read: 200", "claimed: 200", "taken: 0",
                          "exempt: 0", "refused: 0"])
        for phone, _ in pairs[::37]:
            self.assertHeld(phone)
        r = self.ctl("import", "-", input="%s,%s\n" % (number(),
                                                       fresh_user()))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("claimed: 1", r.stdout)

    def test_import_of_a_missing_file(self):
        r = self.ctl("import", self.d.path("missing.csv"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing.csv", r.stderr)

    def test_export_round_trip(self):
        """Claims of every kind come back exactly, past several pieces of
        the daemon's walk (it reads 256 claims per transaction)."""
        before = self.ctl("export")
        self.assertEqual(before.returncode, 0, before.stderr)
        known = {row["user_id"] for row in
                 csv.DictReader(io.StringIO(before.stdout))}
        want = {}
        lines = []
        for i in range(600):
            phone, user = number(), "auth0|exp%04d" % i
            if i == 7:
                user = 'odd, "user"'
            lines.append('"%s","%s"\n' % (phone, user.replace('"', '""')))
            want[user] = (digits(phone)[-4:], "active")
        path = self.d.path("export.csv")
        write_file(path, "".join(lines))
        self.assertEqual(self.ctl("import", path).returncode, 0)
        phone, user = self.reserve()
        want[user] = (digits(phone)[-4:], "pending")
        r = self.ctl("export")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0],
                         "user_id,last4,state,since")
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        got = {row["user_id"]: (row["last4"], row["state"]) for row in rows
               if row["user_id"] not in known}
        self.assertEqual(got, want)
        for row in rows:
            self.assertRegex(row["since"], ISO_RE)
        s = self.status()
        self.assertEqual(len(rows), s["claims"]["active"] +
                         s["claims"]["pending"])
        self.assertNoFullNumbers(r.stdout)


if __name__ == "__main__":
    unittest.main()
