"""
POST /v1/log-stream against DESIGN.md sections 2 and 4: the Authorization
header, the three body formats and the bare Management API events, the
answer's counts, poison items and the dead-letter file (I6), idempotence
(I3), every row of the event table, the ordering watermarks (I4), the full
round trip with the claim API, a 10,000-item batch, kill -9 right after an
answer (I2) and a log that says what each request did without leaking
numbers or tokens (I5).

Claims are observed only through POST /v1/claims:
  * held:     another user's enrolment on N answers 409 taken;
  * free:     another user's enrolment on N answers reserved (this takes N);
  * active:   the user reserves a fresh number, which releases the user's
              *pending* claim (one pending reservation per user) but not an
              active one, and N is still held and owned by the user; one
              test also lets pending claims lapse (pending_ttl = 2);
  * not held by U: U's own enrolment on N answers reserved or taken, never
              owned.

Events are made by the helpers below; a few representative items live in
tests/fixtures/logstream/ (synthetic, written by us in the documented
shapes, with ${...} placeholders filled here).
"""

import base64
import datetime
import http.client
import itertools
import json
import os
import random
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
import unittest
import urllib.parse

import harness
from harness import DaemonTestCase, digits, fresh_number, fresh_user

harness.require_daemon()

PATH = "/v1/log-stream"
SYNTHETIC = "written for phoneclaimd tests, not captured from a tenant"
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        os.pardir, "fixtures", "logstream")
DEADLETTER = "deadletter.jsonl"
COUNTS = ("received", "applied", "duplicates", "ignored", "rejected")
DEFAULT_TTL = 600
BIG_BATCH = 10000
BIG_TIMEOUT = 60.0	# socket timeout for the 10,000-item requests
BIG_LIMIT = 20.0	# seconds a 10,000-item request may take

# Every phone number that went into an event or a claim request, for the
# privacy checks of the log, the state files and the dead-letter file.
SENT_NUMBERS = []

IGNORED_TYPES = ("s", "f", "gd_send_sms", "gd_send_voice", "mgmt_api_read",
                 "gd_start_enroll", "seacft", "fp", "slo", "gd_auth_succeed")
PHONE_KINDS = ("phone", "sms", "voice")
OTHER_KINDS = ("otp", "push", "email", "webauthn-roaming", "passkey")


# Test data -----------------------------------------------------------------

_log_counter = itertools.count(1)


def new_log_id():
    """Return a fresh 56-digit log id like Auth0's (unique in this run)."""
    return "90020261127" + "%045d" % next(_log_counter)


def new_device():
    """Return a fresh Guardian enrolment id (dev_...)."""
    return "dev_" + secrets.token_hex(8)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when):
    """Format an aware datetime like Auth0: 2026-11-27T10:30:00.000Z."""
    when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + \
        "%03dZ" % (when.microsecond // 1000)


def at(seconds=0.0, base=None):
    """Return the ISO date seconds after base (default: now).

    "Now" is one millisecond ahead of the clock, and each "now" a
    millisecond after the one before: the daemon dates a claim to the
    millisecond and a release takes it only if dated after it (issue 21),
    so an event dated now must come after the claim that the daemon made
    before it answered, and after the event built before it, even within
    the same millisecond."""
    global _LAST_NOW
    if base is None:
        base = utc_now() + datetime.timedelta(milliseconds=1)
        base = base.replace(microsecond=base.microsecond // 1000 * 1000)
        if _LAST_NOW is not None and base <= _LAST_NOW:
            base = _LAST_NOW + datetime.timedelta(milliseconds=1)
        _LAST_NOW = base
    return iso(base + datetime.timedelta(seconds=seconds))


_LAST_NOW = None


def sent(phone):
    """Remember phone for the privacy checks; return it."""
    SENT_NUMBERS.append(phone)
    return phone


def number():
    """A fresh number, remembered for the privacy checks."""
    return sent(fresh_number())


def as_int(phone):
    """The JSON-number form of an E.164 number: its digits without '+'."""
    return int(phone[1:])


def masked(phone, style="stars"):
    """Mask a number the ways Auth0 does, keeping the last 4 digits."""
    d = phone[1:]
    if style == "stars":		# +1******0123
        return "+" + d[0] + "*" * (len(d) - 5) + d[-4:]
    if style == "xs":			# XXXXXXX0123
        return "X" * (len(d) - 4) + d[-4:]
    if style == "partial":		# +14*****0123
        return "+" + d[:2] + "*" * (len(d) - 6) + d[-4:]
    raise ValueError(style)


def hashed():
    """A number as a stream with PII hashing shows it: 16 hex digits (an
    xxHash64; Auth0 does not document the form, any non-number will do)."""
    return "%016x" % random.getrandbits(64)


def other_last4(phone):
    """A fresh number whose last 4 digits differ from phone's."""
    while True:
        other = number()
        if other[-4:] != phone[-4:]:
            return other


def user_path(user, suffix=""):
    """/api/v2/users/{percent-encoded user}{suffix}."""
    return "/api/v2/users/" + urllib.parse.quote(user, safe="") + suffix


# Items: {"log_id": ..., "data": {event}} --------------------------------

def event(etype, user="", date=None, details=None, description=None,
          log_id=None, **extra):
    """Return an item {"log_id", "data"} whose data is an Auth0 event."""
    lid = log_id or new_log_id()
    data = {
        "date": date or at(),
        "type": etype,
        "description": description if description is not None else
        "phoneclaimd test event",
        "client_id": "Tst0Client0Id0Written0For0Tests",
        "client_name": "",
        "ip": "192.0.2.10",
        "user_agent": "Chrome 120.0.0 / Mac OS X 10.15.7",
        "user_id": user,
        "details": details if details is not None else {},
        "log_id": lid,
    }
    data.update(extra)
    return {"log_id": lid, "data": data}


def _factor(kind, phone, auth_id):
    """details.authenticator for a factor kind (None: no type member)."""
    auth = {}
    if auth_id is not None:
        auth["id"] = auth_id
    if kind is not None:
        auth["type"] = kind
    if phone is not None:
        auth["phone_number"] = phone
    return auth


def _describe(verb, kind):
    return "Guardian - %s (%s)" % (verb, "sms" if kind in (None, "phone")
                                   else kind)


def enrolled(user, phone=None, kind="phone", device=None, date=None,
             where="authenticator", data_user=None, description=None,
             auth_id=None, **extra):
    """gd_enrollment_complete for user.

    phone: the number as sent (string, int, masked) or None (no number);
    where: "authenticator", "enrollment" (only details.enrollment has it)
    or "both".  data_user: data.user_id when it differs from the
    enrolment's user.  auth_id: details.authenticator.id (default
    phone|<device>).
    """
    device = device or new_device()
    if auth_id is None:
        auth_id = "phone|" + device
    details = {
        "authenticator": _factor(kind, phone if where != "enrollment"
                                 else None, auth_id),
        "enrollment": {"_id": device, "tenant": "phoneclaimd-test",
                       "user_id": user, "name": "Phone"},
    }
    if phone is not None and where != "authenticator":
        details["enrollment"]["phone_number"] = phone
    return event("gd_enrollment_complete",
                 user if data_user is None else data_user, date, details,
                 description if description is not None
                 else _describe("Enrollment complete", kind), **extra)


def unenrolled(user, phone=None, kind="phone", auth_id=None, enrol_id=None,
               date=None, data_user=None, description=None):
    """gd_unenroll for user (ids and number as given; None leaves out)."""
    details = {"authenticator": _factor(kind, phone, auth_id)}
    enrollment = {"user_id": user}
    if enrol_id is not None:
        enrollment["_id"] = enrol_id
    details["enrollment"] = enrollment
    return event("gd_unenroll", user if data_user is None else data_user,
                 date, details,
                 description if description is not None
                 else _describe("Unenroll device account", kind))


def deleted(user, etype="sdu", date=None):
    """sdu / du: the user was deleted."""
    return event(etype, user, date, {}, "Deleted User",
                 connection="Username-Password-Authentication")


def sapi(method, path, admin=None, body=None, status=200, date=None):
    """A Management API call by admin (the top-level user_id).

    status None leaves details.response.statusCode out.
    """
    admin = admin or "auth0|admin" + secrets.token_hex(6)
    response = {"body": {}}
    if status is not None:
        response["statusCode"] = status
    details = {
        "request": {"method": method, "path": path, "query": {},
                    "body": body if body is not None else {},
                    "channel": "https://manage.auth0.com/",
                    "ip": "198.51.100.7",
                    "auth": {"user": {"user_id": admin}, "strategy": "jwt"}},
        "response": response,
    }
    return event("sapi", admin, date, details, "Management API call")


def failed(etype, user, date=None, kind=None):
    """gd_send_sms_failure and friends; kind: details.authenticator.type
    (None leaves it out)."""
    details = {"request": {"method": "POST",
                           "path": "/api/sms/configs/cfg_test/challenge"},
               "response": {}, "enrollment": {},
               "failure_details": {"errorCode": 60204,
                                   "message": "Custom code not allowed"}}
    if kind is not None:
        details["authenticator"] = {"type": kind}
    return event(etype, user, date, details,
                 "Guardian - Error on send-phone-message-hook")


def bare(item):
    """The Management API shape of an item: the event itself, with _id."""
    ev = dict(item["data"])
    ev["_id"] = ev.pop("log_id")
    return ev


def encode(items, fmt="array"):
    """Body bytes: a JSON array, JSON Lines, or one object."""
    if fmt == "array":
        return json.dumps(items).encode()
    if fmt == "lines":
        return "".join(json.dumps(i) + "\n" for i in items).encode()
    if fmt == "object":
        if len(items) != 1:
            raise ValueError("an object body holds one item")
        return json.dumps(items[0]).encode()
    raise ValueError(fmt)


# Fixtures ------------------------------------------------------------------

_PLACEHOLDER = re.compile(r'"\$\{(\w+)\}"|\$\{(\w+)\}')


def fill(text, values):
    """Replace ${NAME} placeholders: a whole quoted placeholder becomes the
    JSON value (so ints become JSON numbers), one inside a string becomes
    the escaped text."""
    def one(m):
        if m.group(1) is not None:
            return json.dumps(values[m.group(1)])
        value = values[m.group(2)]
        return json.dumps(value if isinstance(value, str)
                          else str(value))[1:-1]
    return _PLACEHOLDER.sub(one, text)


def fixture_values(user=None, phone=None, **more):
    """Fresh values for every placeholder the fixtures use."""
    user = user or fresh_user()
    phone = phone or number()
    values = {
        "USER": user, "USER_URL": urllib.parse.quote(user, safe=""),
        "ADMIN": "auth0|admin" + secrets.token_hex(6),
        "PHONE": phone, "PHONE_INT": as_int(phone),
        "PHONE_MASKED": masked(phone), "DEVICE": new_device(),
        "PHONE_STARS": "*" * 12, "PHONE_HASH": hashed(),
    }
    for i in range(1, 5):
        suffix = "" if i == 1 else "_%d" % i
        values["LOG_ID" + suffix] = new_log_id()
        # Just after now, in order: after the claims the test made.
        values["DATE" + suffix] = at(i / 1000.0)
        values["DATE_MS" + suffix] = int(time.time() * 1000) + i + 1
    values.update(more)
    return values


def fixture(name, values):
    """The text of a fixture file with its placeholders filled."""
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return fill(f.read(), values)


def fixture_items(text):
    """Parse a filled fixture: the list of its items (any body format)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines()
                if line.strip()]
    return parsed if isinstance(parsed, list) else [parsed]


# Privacy -------------------------------------------------------------------

def leaked_numbers(text, numbers):
    """The numbers whose last 8 digits occur in a digit run of text (so
    also every number written out whole)."""
    windows = set()
    for run in set(re.findall(r"[0-9]{8,}", text)):
        windows.update(run[i:i + 8] for i in range(len(run) - 7))
    return sorted({phone for phone in numbers
                   if len(digits(phone)) >= 8 and
                   digits(phone)[-8:] in windows})


# Base class ----------------------------------------------------------------

class LogStreamCase(DaemonTestCase):
    """One daemon per class; senders, count checks and claim probes."""

    conf = {}
    ttl = DEFAULT_TTL
    shared = True	# False: each test starts its own daemon

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.shared:
            cls.d = cls.new_daemon(**cls.conf)

    def setUp(self):
        if self.shared:
            self.d.ensure_running()

    # Sending.

    def post(self, body, authorization=None, content_type="application/json",
             method="POST", path=PATH, daemon=None, timeout=None):
        """Send body with the log-stream token (or authorization; False
        sends no Authorization header)."""
        d = daemon or self.d
        headers = {}
        if authorization is None:
            headers["Authorization"] = d.log_stream_token
        elif authorization is not False:
            headers["Authorization"] = authorization
        if content_type is not None:
            headers["Content-Type"] = content_type
        if isinstance(body, str):
            body = body.encode()
        # Not harness.Client: it would add a Content-Type of its own.
        conn = http.client.HTTPConnection(
            d.host, d.port, timeout=timeout or harness.HTTP_TIMEOUT)
        try:
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            return harness.Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def send(self, items, fmt="array", **kw):
        return self.post(encode(items, fmt), **kw)

    def assertCounts(self, reply, received, applied=0, duplicates=0,
                     ignored=0, rejected=0, settled=None):
        """Assert 200 and exactly these counts.  settled: the number of
        items that may be either applied or ignored (the contract leaves
        it open, e.g. a release that found nothing to release); it is
        added to applied + ignored."""
        self.assertEqual(reply.status, 200, "expected 200, got %s" % reply)
        self.assertJsonType(reply)
        got = reply.json
        self.assertIsInstance(got, dict, str(reply))
        self.assertEqual(sorted(got), sorted(COUNTS), str(reply))
        for name in COUNTS:
            v = got[name]
            self.assertTrue(isinstance(v, int) and not isinstance(v, bool),
                            "%s is not an integer: %s" % (name, reply))
        self.assertEqual(got["received"], got["applied"] +
                         got["duplicates"] + got["ignored"] +
                         got["rejected"], "R != A + D + I + J: %s" % reply)
        want = {"received": received, "applied": applied,
                "duplicates": duplicates, "ignored": ignored,
                "rejected": rejected}
        if settled:
            self.assertEqual(got["applied"] + got["ignored"],
                             applied + ignored + settled, str(reply))
            self.assertGreaterEqual(got["applied"], applied, str(reply))
            self.assertGreaterEqual(got["ignored"], ignored, str(reply))
            want["applied"], want["ignored"] = got["applied"], got["ignored"]
        self.assertEqual(got, want, str(reply))
        return got

    def deliver(self, items, fmt="array", applied=0, duplicates=0,
                ignored=0, rejected=0, settled=None, received=None):
        """Send items and assert the counts (received = len(items))."""
        reply = self.send(items, fmt)
        return self.assertCounts(
            reply, len(items) if received is None else received, applied,
            duplicates, ignored, rejected, settled)

    def apply(self, *items):
        """Deliver items one request each; each must be applied."""
        for it in items:
            self.deliver([it], applied=1)

    def ignore(self, *items):
        """Deliver items one request each; each must be ignored."""
        for it in items:
            self.deliver([it], ignored=1)

    # Claims through the claim API.

    def reserve(self, phone=None, user=None):
        """Reserve phone (fresh) for user (fresh); return (phone, user)."""
        phone = phone or number()
        user = user or fresh_user()
        self.assertReserved(self.d.claim(phone, user, "enrollment"),
                            self.ttl)
        return phone, user

    def learn(self, phone=None, user=None):
        """Give user an active claim through a login challenge (no
        enrolment id stored); return (phone, user)."""
        phone = phone or number()
        user = user or fresh_user()
        self.assertResult(self.d.claim(phone, user, "otp_verify"),
                          "learned")
        return phone, user

    def assertHeld(self, phone, holder=None):
        """Another user cannot enrol phone; holder (if given) owns it."""
        self.assertTaken(self.d.claim(phone, fresh_user(), "enrollment"))
        if holder is not None:
            self.assertResult(self.d.claim(phone, holder, "enrollment"),
                              "owned")

    def assertFree(self, phone):
        """Another user can reserve phone (and now holds it)."""
        reply = self.d.claim(phone, fresh_user(), "enrollment")
        self.assertReserved(reply, self.ttl)

    def assertActive(self, phone, user):
        """user's claim on phone survives a new reservation of the user's,
        which would release a pending one."""
        self.assertReserved(self.d.claim(number(), user, "enrollment"),
                            self.ttl)
        self.assertHeld(phone, user)

    def assertNotActive(self, phone, user):
        """user's new reservation releases its claim on phone: phone was
        at most pending (afterwards phone is reserved by someone else)."""
        self.assertReserved(self.d.claim(number(), user, "enrollment"),
                            self.ttl)
        self.assertFree(phone)

    def assertNotHeldBy(self, phone, user):
        """user does not hold phone (someone else may): user's enrolment
        answers 409 taken; if phone is free it is now user's."""
        reply = self.d.claim(phone, user, "enrollment")
        self.assertNotEqual(reply.json, {"result": "owned"}, str(reply))
        self.assertIn(reply.status, (200, 409), str(reply))

    # Dead-letter file.

    def deadletter_path(self, d=None):
        return os.path.join((d or self.d).state_dir, DEADLETTER)

    def deadletter(self, d=None):
        """The dead-letter file's lines (parsed); [] when absent."""
        try:
            with open(self.deadletter_path(d), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        lines = raw.decode("utf-8").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                self.fail("dead-letter line is not JSON: %r" % line[:200])
        return out


# Transport -----------------------------------------------------------------

class AuthorizationTests(LogStreamCase):
    """The Authorization header is compared byte for byte; 401 before the
    body is read."""

    def bad_values(self):
        tok = self.d.log_stream_token			# "Bearer ls-<hex>"
        secret = tok.split(" ", 1)[1]
        return {
            "missing": False,
            "empty": "",
            "wrong token": "Bearer ls-" + "0" * 32,
            "lower-case scheme": "bearer " + secret,
            "upper case": tok.upper(),
            "two spaces": "Bearer  " + secret,
            "without Bearer": secret,
            "scheme only": "Bearer",
            "shorter": tok[:-1],
            "longer": tok + "0",
            "token twice": tok + " " + secret,
            "api token": "Bearer " + self.d.api_token,
            "api token bare": self.d.api_token,
        }

    def test_wrong_authorization_is_401_and_changes_nothing(self):
        for name, value in self.bad_values().items():
            with self.subTest(authorization=name):
                phone, user = number(), fresh_user()
                it = enrolled(user, phone)
                reply = self.send([it], authorization=value)
                self.assertError(reply, 401, "unauthorized")
                self.assertFree(phone)

    def test_unauthorized_items_are_not_remembered(self):
        phone, user = number(), fresh_user()
        it = enrolled(user, phone)
        self.assertError(self.send([it], authorization="Bearer nope"), 401,
                         "unauthorized")
        self.deliver([it], applied=1)
        self.assertActive(phone, user)

    def test_body_is_not_parsed_without_the_token(self):
        before = len(self.deadletter())
        for body in (b"hello", b"", b"[]", b"42", b'{"log_id":',
                     json.dumps([{"data": {"type": "s"}}]).encode()):
            with self.subTest(body=body[:20]):
                self.assertError(self.post(body, authorization="Bearer x"),
                                 401, "unauthorized")
                self.assertError(self.post(body, authorization=False), 401,
                                 "unauthorized")
        self.assertEqual(len(self.deadletter()), before,
                         "an unauthorized body reached the dead-letter file")

    def test_token_is_the_whole_header_value(self):
        # The file holds "Bearer ls-<hex>\n": the newline is not part of it.
        with open(self.d.log_stream_token_file) as f:
            self.assertEqual(f.read(), self.d.log_stream_token + "\n")
        self.assertCounts(self.post(b"[]"), 0)

    def test_other_methods_are_405(self):
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):
                phone = number()
                body = None if method == "GET" else \
                    encode([enrolled(fresh_user(), phone)])
                reply = self.post(body, method=method)
                self.assertError(reply, 405, "method_not_allowed")
                self.assertFree(phone)

    def test_other_paths_are_404(self):
        for path in ("/v1/log-stream/", "/v1/logstream", "/v1/log-streams",
                     "/v1/log-stream/x", "/v2/log-stream", "/log-stream"):
            with self.subTest(path=path):
                phone = number()
                reply = self.post(encode([enrolled(fresh_user(), phone)]),
                                  path=path)
                self.assertError(reply, 404, "not_found")
                self.assertFree(phone)


# Body formats --------------------------------------------------------------

class BodyFormatTests(LogStreamCase):
    """Array, JSON Lines, one object and bare events, whatever the
    Content-Type."""

    def two_events(self):
        """An enrolment (applied) and an ignored event; the number and
        user."""
        phone, user = number(), fresh_user()
        return [enrolled(user, phone), event("s", user)], phone, user

    def test_json_array(self):
        items, phone, user = self.two_events()
        self.deliver(items, "array", applied=1, ignored=1)
        self.assertActive(phone, user)

    def test_json_lines_with_final_newline(self):
        items, phone, user = self.two_events()
        self.deliver(items, "lines", applied=1, ignored=1)
        self.assertActive(phone, user)

    def test_json_lines_without_final_newline(self):
        items, phone, user = self.two_events()
        body = encode(items, "lines").rstrip(b"\n")
        self.assertCounts(self.post(body), 2, applied=1, ignored=1)
        self.assertActive(phone, user)

    def test_json_lines_blank_lines_are_ignored(self):
        items, phone, user = self.two_events()
        extra = event("gd_send_sms", user)
        body = b"\n" + json.dumps(items[0]).encode() + b"\n\n\n" + \
            json.dumps(items[1]).encode() + b"\n   \n" + \
            json.dumps(extra).encode() + b"\n\n"
        self.assertCounts(self.post(body), 3, applied=1, ignored=2)
        self.assertActive(phone, user)

    def test_single_item_object(self):
        phone, user = number(), fresh_user()
        self.deliver([enrolled(user, phone)], "object", applied=1)
        self.assertActive(phone, user)

    def test_single_object_with_final_newline(self):
        phone, user = number(), fresh_user()
        body = encode([enrolled(user, phone)], "object") + b"\n"
        self.assertCounts(self.post(body), 1, applied=1)
        self.assertActive(phone, user)

    def test_bare_event_with_id(self):
        phone, user = number(), fresh_user()
        self.assertCounts(self.post(json.dumps(bare(enrolled(user, phone)))),
                          1, applied=1)
        self.assertActive(phone, user)

    def test_array_and_lines_of_bare_events(self):
        p1, u1, p2, u2 = number(), fresh_user(), number(), fresh_user()
        self.assertCounts(self.post(json.dumps([bare(enrolled(u1, p1)),
                                                bare(event("s", u1))])),
                          2, applied=1, ignored=1)
        self.assertCounts(self.post("\n".join(
            json.dumps(bare(x)) for x in (event("f", u2),
                                          enrolled(u2, p2)))), 2,
            applied=1, ignored=1)
        self.assertActive(p1, u1)
        self.assertActive(p2, u2)

    def test_mixed_item_shapes_in_one_array(self):
        p1, p2, p3 = number(), number(), number()
        u1, u2, u3 = fresh_user(), fresh_user(), fresh_user()
        only_data_id = enrolled(u2, p2)
        del only_data_id["log_id"]
        self.deliver([enrolled(u1, p1), only_data_id, bare(enrolled(u3, p3))],
                     applied=3)
        for phone, user in ((p1, u1), (p2, u2), (p3, u3)):
            self.assertActive(phone, user)

    def test_format_does_not_depend_on_content_type(self):
        for ctype in ("application/json", "application/x-ndjson",
                      "text/plain", "application/octet-stream", None):
            for fmt in ("array", "lines", "object"):
                with self.subTest(content_type=ctype, format=fmt):
                    phone, user = number(), fresh_user()
                    items = [enrolled(user, phone)]
                    if fmt != "object":
                        items.append(event("s", user))
                    self.assertCounts(self.post(encode(items, fmt),
                                                content_type=ctype),
                                      len(items), applied=1,
                                      ignored=len(items) - 1)
                    self.assertHeld(phone, user)

    def test_empty_array_is_all_zeros(self):
        self.assertCounts(self.post(b"[]"), 0)
        self.assertCounts(self.post(b" [ ] \n"), 0)

    def test_log_id_comes_from_log_id_then_data_then_id(self):
        user = fresh_user()
        # Outer log_id wins over data.log_id.
        a = event("s", user)
        other = new_log_id()
        a["data"]["log_id"] = other
        self.deliver([a], ignored=1)
        self.deliver([event("s", user, log_id=a["log_id"])], duplicates=1)
        self.deliver([event("s", user, log_id=other)], ignored=1)
        # data.log_id when there is no outer one; the same id later
        # arriving in the other shapes is a duplicate.
        b = event("f", user)
        del b["log_id"]
        self.deliver([b], ignored=1)
        self.deliver([event("f", user, log_id=b["data"]["log_id"])],
                     duplicates=1)
        c = event("gd_send_sms", user)
        self.deliver([bare(c)], ignored=1)
        self.deliver([c], duplicates=1)
        # A bare event with log_id and no _id.
        e = dict(event("slo", user)["data"])
        self.assertCounts(self.post(json.dumps(e)), 1, ignored=1)
        self.deliver([event("slo", user, log_id=e["log_id"])], duplicates=1)

    def test_unknown_members_are_ignored(self):
        phone, user = number(), fresh_user()
        it = enrolled(user, phone)
        it["_synthetic"] = SYNTHETIC
        it["extra"] = {"nested": [1, 2, {"x": None}]}
        it["data"]["$event_schema"] = {"version": "1.0.0"}
        it["data"]["references"] = {"correlation_id": "c", "trace_id": "t"}
        self.deliver([it], applied=1)
        self.assertActive(phone, user)


class FixtureTests(LogStreamCase):
    """The representative fixture files, filled and sent as written."""

    def post_fixture(self, name, values):
        return self.post(fixture(name, values))

    def test_every_fixture_is_marked_synthetic(self):
        names = sorted(n for n in os.listdir(FIXTURES)
                       if n.endswith((".json", ".jsonl")))
        self.assertGreaterEqual(len(names), 8, names)
        for name in names:
            with self.subTest(fixture=name):
                items = fixture_items(fixture(name, fixture_values()))
                self.assertGreater(len(items), 0)
                for it in items:
                    self.assertEqual(it.get("_synthetic"), SYNTHETIC)

    def test_body_array_fixture(self):
        v = fixture_values()
        self.assertCounts(self.post_fixture("body_array.json", v), 3,
                          applied=1, ignored=2)
        self.assertActive(v["PHONE"], v["USER"])
        self.assertCounts(self.post_fixture("body_array.json", v), 3,
                          duplicates=3)

    def test_body_lines_fixture(self):
        v = fixture_values()
        self.assertCounts(self.post_fixture("body_lines.jsonl", v), 3,
                          applied=1, ignored=2)
        self.assertActive(v["PHONE"], v["USER"])

    def test_body_object_fixture(self):
        v = fixture_values()
        self.assertCounts(self.post_fixture("body_object.json", v), 1,
                          applied=1)
        self.assertActive(v["PHONE"], v["USER"])

    def test_body_mgmt_api_event_fixture(self):
        v = fixture_values()
        text = fixture("body_mgmt_api_event.json", v)
        self.assertIn('"phone_number": %d' % v["PHONE_INT"], text)
        self.assertCounts(self.post(text), 1, applied=1)
        self.assertActive(v["PHONE"], v["USER"])

    def test_enrolment_then_unenrol_fixtures(self):
        phone, user = self.reserve()
        v = fixture_values(user, phone)
        self.assertCounts(self.post_fixture("gd_enrollment_complete.json",
                                            v), 1, applied=1)
        self.assertActive(phone, user)
        # Masked number, sms|<device>: the stored enrolment id matches.
        kept, _ = self.learn(user=user)
        v2 = fixture_values(user, phone, DEVICE=v["DEVICE"])
        self.assertCounts(self.post_fixture("gd_unenroll.json", v2), 1,
                          applied=1)
        self.assertHeld(kept, user)
        self.assertFree(phone)

    def test_user_deletion_fixtures(self):
        for name in ("sdu.json", "du.json"):
            with self.subTest(fixture=name):
                p1, user = self.learn()
                p2, _ = self.reserve(user=user)
                self.assertCounts(self.post_fixture(
                    name, fixture_values(user)), 1, applied=1)
                self.assertFree(p1)
                self.assertFree(p2)

    def test_sapi_fixtures(self):
        # POST authentication-methods: an admin-made active claim.
        v = fixture_values()
        self.assertCounts(self.post_fixture(
            "sapi_post_authentication_methods.json", v), 1, applied=1)
        self.assertActive(v["PHONE"], v["USER"])
        # DELETE authentication-methods: MFA reset.
        self.assertCounts(self.post_fixture(
            "sapi_delete_authentication_methods.json",
            fixture_values(v["USER"])), 1, applied=1)
        self.assertFree(v["PHONE"])
        # DELETE guardian/enrollments/{eid}.
        phone, user = number(), fresh_user()
        device = new_device()
        self.apply(enrolled(user, phone, device=device))
        self.assertCounts(self.post_fixture(
            "sapi_delete_guardian_enrollment.json",
            fixture_values(user, phone, DEVICE=device)), 1, applied=1)
        self.assertFree(phone)

    def test_failure_fixture(self):
        phone, user = self.reserve()
        v = fixture_values(user, phone, DATE=at(60))
        self.assertCounts(self.post_fixture("gd_send_sms_failure.json", v),
                          1, applied=1)
        self.assertFree(phone)

    def test_ignored_fixture(self):
        phone, user = self.reserve()
        v = fixture_values(user, phone)
        self.assertCounts(self.post_fixture("ignored_s.json", v), 1,
                          ignored=1)
        self.assertHeld(phone, user)


class UnreadableNumberTests(LogStreamCase):
    """A number the stream hides (masked with no digit, hashed) or that
    cannot be read (no '+', a JSON number that is no E.164 number) is
    unknown, never invalid: the event is handled as one with no number,
    logged with its reason and counted unreadable (issue 17, point 1)."""

    FORMS = {"masked, no digit": "*" * 12,
             "masked X": "XXXXXXXX****",
             "hashed": None,
             "no plus": "2025550123",
             "JSON number": 12,
             "JSON fraction": 1.5}

    def forms(self):
        for name, value in self.FORMS.items():
            yield name, hashed() if value is None else value

    def status_events(self):
        return self.d.ask("status")["events"]

    def metric(self, name):
        reply = self.d.request("GET", "/metrics")
        for line in reply.raw.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_enrolment_activates_the_pending_reservation(self):
        for name, value in self.forms():
            with self.subTest(number=name):
                phone, user = self.reserve()
                self.deliver([enrolled(user, value)], applied=1)
                self.assertActive(phone, user)

    def test_unenrolment_releases_the_only_claim(self):
        for name, value in self.forms():
            with self.subTest(number=name):
                phone, user = self.learn()
                self.deliver([unenrolled(user, value,
                                         auth_id="phone|" + new_device())],
                             applied=1)
                self.assertFree(phone)

    def test_unenrolment_with_several_claims_is_ambiguous(self):
        p1, user = self.learn()
        p2, _ = self.learn(user=user)
        self.deliver([unenrolled(user, hashed())], ignored=1)
        self.assertHeld(p1, user)
        self.assertHeld(p2, user)

    def test_fixtures_of_both_gd_events(self):
        for kind in ("masked_no_digits", "hashed"):
            with self.subTest(fixture=kind):
                phone, user = self.reserve()
                v = fixture_values(user, phone)
                self.assertCounts(self.post(fixture(
                    "gd_enrollment_complete_%s.json" % kind, v)), 1,
                    applied=1)
                self.assertActive(phone, user)
                v = fixture_values(user, phone, DEVICE=v["DEVICE"])
                self.assertCounts(self.post(fixture(
                    "gd_unenroll_%s.json" % kind, v)), 1, applied=1)
                self.assertFree(phone)

    def test_logged_with_its_reason_never_its_value(self):
        phone, user = self.reserve(user=harness.log_plain_user())
        value = hashed()
        it = enrolled(user, value)
        since = self.d.log_size()
        self.deliver([it], applied=1)
        m = self.d.wait_for_log(r"[^\n]*unreadable[^\n]*", since)
        self.assertIsNotNone(m, self.d.tail(10))
        line = m.group(0)
        self.assertIn(user, line)
        self.assertIn(it["log_id"], line)
        self.assertNotIn(value, self.d.log_text(since))

    def test_counted_in_status_and_metrics(self):
        before_s = self.status_events()["unreadable"]
        before_m = self.metric("phoneclaimd_unreadable_events_total")
        self.assertIsNotNone(before_m)
        phone, user = self.reserve()
        self.deliver([enrolled(user, "*" * 12)], applied=1)
        self.deliver([enrolled(fresh_user(), hashed())], ignored=1)
        self.deliver([enrolled(fresh_user(), number())], applied=1)
        self.assertEqual(self.status_events()["unreadable"] - before_s, 2)
        self.assertEqual(self.metric("phoneclaimd_unreadable_events_total") -
                         before_m, 2)

    def test_status_and_metrics_count_outcomes_alike(self):
        """status's events and /metrics' events_total{outcome} are the
        same partition: "ignored" does not hold unmatched there."""
        def both():
            s = self.status_events()
            m = {o: self.metric('phoneclaimd_events_total{outcome="%s"}' % o)
                 for o in ("ignored", "unmatched")}
            return s, m
        s0, m0 = both()
        self.deliver([enrolled(fresh_user(), None)], ignored=1)  # unmatched
        self.deliver([event("s", fresh_user())], ignored=1)
        s1, m1 = both()
        for o in ("ignored", "unmatched"):
            self.assertEqual(s1[o] - s0[o], 1, (o, s0, s1))
            self.assertEqual(m1[o] - m0[o], 1, (o, m0, m1))


# Bad input (I6) ------------------------------------------------------------

class RejectedTests(LogStreamCase):
    """Poison items are rejected and dead-lettered; the rest is applied."""

    def assertDeadLettered(self, before, expected):
        """The dead-letter file grew by one line per expected (log_id,
        marker) pair, in order; every line is well formed."""
        path = self.deadletter_path()
        self.assertTrue(os.path.exists(path), path + " missing")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        lines = self.deadletter()
        new = lines[before:]
        self.assertEqual(len(new), len(expected),
                         "dead-letter lines: %r" % new)
        for line, (log_id, marker) in zip(new, expected):
            self.assertIsInstance(line, dict)
            self.assertTrue({"time", "reason", "log_id", "item"} <=
                            set(line) <= {"time", "reason", "log_id",
                                          "item", "truncated"},
                            "members: %r" % sorted(line))
            self.assertIsInstance(line["reason"], str)
            self.assertTrue(line["reason"], line)
            self.assertIsNotNone(line["time"], line)
            self.assertIsInstance(line["item"], str, line)
            self.assertEqual(line["log_id"], log_id, line)
            if marker is not None:
                self.assertIn(marker, line["item"], line)
        return new

    def assertNoNumbers(self, text, phones):
        """text holds no more than the last 4 digits of any of phones."""
        self.assertEqual(leaked_numbers(text, phones), [], text[:500])
        runs = re.findall(r"[0-9]{5,}", text)
        for phone in phones:
            five = digits(phone)[-5:]
            self.assertFalse(any(five in run for run in runs),
                             "more than 4 digits of %s in %s" %
                             (phone, text[:500]))

    def test_poison_items_are_rejected_and_the_rest_applied(self):
        p1, u1, p2, u2 = number(), fresh_user(), number(), fresh_user()
        poison_phone = number()
        no_log_id = enrolled(fresh_user(), poison_phone)
        del no_log_id["log_id"]
        del no_log_id["data"]["log_id"]
        no_log_id["data"]["marker"] = "poison-no-log-id"
        no_type = event("s", fresh_user())
        del no_type["data"]["type"]
        no_type["data"]["marker"] = "poison-no-type"
        data_string = {"log_id": new_log_id(), "data": "poison-data-string"}
        data_array = {"log_id": new_log_id(), "data": ["poison-data-array"]}
        data_number = {"log_id": new_log_id(), "data": 42}
        bare_no_type = bare(event("s", fresh_user(), marker="poison-bare"))
        del bare_no_type["type"]
        items = [enrolled(u1, p1), no_log_id, no_type, data_string,
                 data_array, data_number, 7, "poison-string", None,
                 ["poison-array"], bare_no_type, enrolled(u2, p2)]
        before = len(self.deadletter())
        self.deliver(items, applied=2, rejected=10)
        self.assertActive(p1, u1)
        self.assertActive(p2, u2)
        self.assertFree(poison_phone)
        self.assertDeadLettered(before, [
            (None, "poison-no-log-id"), (no_type["log_id"], "poison-no-type"),
            (data_string["log_id"], "poison-data-string"),
            (data_array["log_id"], "poison-data-array"),
            (data_number["log_id"], None), (None, "7"),
            (None, "poison-string"), (None, "null"), (None, "poison-array"),
            (bare_no_type["_id"], "poison-bare")])

    def test_bad_json_lines_line_is_rejected(self):
        phone, user = number(), fresh_user()
        secret_phone = number()
        good = json.dumps(enrolled(user, phone))
        bad = '{"log_id": "x", "data": {"type": "gd_enrollment_complete", ' \
            '"phone_number": "%s", "marker": "poison-line"' % secret_phone
        before = len(self.deadletter())
        body = good + "\n" + bad + "\n" + json.dumps(event("s", user)) + "\n"
        self.assertCounts(self.post(body), 3, applied=1, ignored=1,
                          rejected=1)
        self.assertActive(phone, user)
        new = self.assertDeadLettered(before, [(None, "poison-line")])
        self.assertIn(secret_phone[-4:], new[0]["item"])
        self.assertNoNumbers(json.dumps(new), [secret_phone])
        self.assertFree(secret_phone)

    def test_bad_first_line_of_json_lines_is_rejected(self):
        for name, first in (("truncated item", '{"log_id": "1", "data": {'),
                            ("scalar", "42"), ("text", "garbage")):
            with self.subTest(first_line=name):
                phone, user = number(), fresh_user()
                body = first + "\n" + json.dumps(enrolled(user, phone)) + \
                    "\n" + json.dumps(event("s", user)) + "\n"
                before = len(self.deadletter())
                self.assertCounts(self.post(body), 3, applied=1, ignored=1,
                                  rejected=1)
                self.assertDeadLettered(before, [(None, first[:5])])
                self.assertActive(phone, user)

    def test_large_poison_item_is_dead_lettered_in_one_line(self):
        phone = number()
        it = event("s", fresh_user())
        del it["data"]["type"]
        it["data"]["description"] = ("call %s " % phone) * 20000
        before = len(self.deadletter())
        self.deliver([it, event("s", fresh_user())], ignored=1, rejected=1)
        new = self.assertDeadLettered(before, [(it["log_id"], None)])
        if "truncated" in new[0]:
            self.assertIs(new[0]["truncated"], True, new[0].keys())
        with open(self.deadletter_path()) as f:
            self.assertNoNumbers(f.read(), [phone])

    def test_dead_letter_masks_phone_numbers(self):
        phones = [number() for _ in range(4)]
        it = enrolled(fresh_user(), phones[0])
        del it["data"]["type"]
        it["data"]["details"]["enrollment"]["phone_number"] = as_int(
            phones[1])
        it["data"]["note"] = "call %s or %s" % (phones[2], digits(phones[3]))
        it["data"]["marker"] = "poison-phones"
        before = len(self.deadletter())
        self.deliver([it], rejected=1)
        new = self.assertDeadLettered(before, [(it["log_id"],
                                                "poison-phones")])
        for phone in phones:
            self.assertIn(phone[-4:], new[0]["item"])
        with open(self.deadletter_path()) as f:
            self.assertNoNumbers(f.read(), phones)

    def test_rejected_items_are_not_remembered(self):
        phone, user = number(), fresh_user()
        it = enrolled(user, phone)
        no_type = json.loads(json.dumps(it))
        del no_type["data"]["type"]
        self.deliver([no_type], rejected=1)
        self.deliver([no_type], rejected=1)
        self.deliver([it], applied=1)
        self.assertActive(phone, user)

    def test_bodies_that_are_not_json_are_400_and_dead_lettered(self):
        phone, user = number(), fresh_user()
        whole = json.dumps([enrolled(user, phone)])
        cases = {
            "word": "hello",
            "truncated object": '{"log_id":',
            "truncated array": whole[:-1],
            "array with trailing comma": whole[:-1] + ",]",
            "text with a number": "hello %s {" % phone,
            "form encoded": "log_id=1&type=s",
        }
        for name, body in cases.items():
            with self.subTest(body=name):
                before = len(self.deadletter())
                self.assertError(self.post(body), 400, "invalid_json")
                new = self.deadletter()[before:]
                self.assertEqual(len(new), 1, "dead-letter lines: %r" % new)
                self.assertIsNone(new[0].get("log_id"), new[0])
                self.assertIsInstance(new[0].get("item"), str, new[0])
                self.assertIn(body[:5], new[0]["item"])
        with open(self.deadletter_path()) as f:
            self.assertNoNumbers(f.read(), [phone])
        # The truncated array's enrolment was not applied.
        self.assertFree(phone)

    def test_json_scalars_and_empty_body_are_400(self):
        for body in ("42", '"x"', "null", "true", "false", ""):
            with self.subTest(body=body):
                self.assertError(self.post(body), 400, "invalid_json")

    def test_dead_letter_file_is_private(self):
        self.deliver([{"data": {"type": "s"}}], rejected=1)
        path = self.deadletter_path()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)


class UnicodeTests(LogStreamCase):
    """Issue 18, points 1 and 3: "\\u0000" and lone surrogates are valid
    JSON.  In a string the daemon does not read they change nothing; in
    one it reads (a user id) they reject that item only, dead-lettered,
    and the id is never rewritten (yajl turns a lone "\\ud800" into "?",
    which would make two users one)."""

    def test_nul_in_an_unread_string_does_not_refuse_the_batch(self):
        for fmt in ("array", "lines"):
            with self.subTest(fmt=fmt):
                phone, victim = self.reserve()
                self.assertHeld(phone, victim)
                items = [deleted(victim),
                         event("fu", fresh_user(), user_name="eve\x00x",
                               note="\ud800 and \udfff")]
                self.deliver(items, fmt, applied=1, ignored=1)
                self.assertFree(phone)

    def test_lone_surrogates_in_a_user_id_reject_that_item(self):
        base = "google-oauth2|ev" + secrets.token_hex(4)
        phones = [number() for _ in range(4)]
        items = [enrolled(base + "\ud800", phones[0]),
                 enrolled(base + "\udbff", phones[1]),
                 enrolled(base + "?", phones[2]),
                 enrolled(base + "\x00", phones[3])]
        before = len(self.deadletter())
        self.deliver(items, applied=1, rejected=3)
        new = self.deadletter()[before:]
        self.assertEqual([(l["log_id"], l["reason"]) for l in new],
                         [(items[i]["log_id"], "invalid_user_id")
                          for i in (0, 1, 3)])
        self.assertHeld(phones[2], base + "?")
        for i in (0, 1, 3):
            self.assertFree(phones[i])
        # A deletion of the lone-surrogate user does not release "?"'s.
        self.deliver([deleted(base + "\ud800")], rejected=1)
        self.deliver([deleted(base + "\udc00")], rejected=1)
        self.assertHeld(phones[2], base + "?")

    def test_lone_surrogate_in_a_claim_user_id_is_invalid_user_id(self):
        user = "google-oauth2|ev" + secrets.token_hex(4)
        phone = number()
        for bad in ("\ud800", "\udbff", "\udc00", "\ud800\u0041", "\x00"):
            with self.subTest(user_id=ascii(bad)):
                self.assertError(self.d.claim(phone, user + bad,
                                              "enrollment"),
                                 400, "invalid_user_id")
        # None of them was stored as "...?": the number is still free.
        self.assertReserved(self.d.claim(phone, user + "?", "enrollment"),
                            self.ttl)
        # A surrogate pair is a character like any other.
        self.assertReserved(self.d.claim(number(), user + "\U0001f600",
                                         "enrollment"), self.ttl)


# Idempotence (I3) ----------------------------------------------------------

class IdempotenceTests(LogStreamCase):

    def test_redelivered_batch_is_all_duplicates_and_changes_nothing(self):
        # enrolment without a number: activates U's pending claim;
        # sdu: releases V's claims; failure: releases W's pending claim.
        p1, u = self.reserve()
        m, v = self.learn()
        k, w = self.reserve()
        x = fresh_user()
        batch = [enrolled(u, None), deleted(v), failed("gd_send_sms_failure",
                                                       w, at(60)),
                 event("s", x)]
        self.deliver(batch, applied=3, ignored=1)
        self.assertFree(m)
        self.assertFree(k)
        # New reservations that a second application would change.
        p2, _ = self.reserve(user=u)		# would be activated
        m2, _ = self.reserve(user=v)		# would be released
        k2, _ = self.reserve(user=w)		# would be released
        for fmt in ("array", "lines"):
            self.deliver(batch, fmt, duplicates=4)
        for it in batch:
            self.deliver([it], "object", duplicates=1)
        self.assertHeld(p1, u)
        self.assertHeld(m2, v)
        self.assertHeld(k2, w)
        self.assertNotActive(p2, u)

    def test_duplicate_inside_one_batch(self):
        phone, user = number(), fresh_user()
        a, b = event("s", user), enrolled(user, phone)
        self.deliver([a, a, b, b, a], applied=1, ignored=1, duplicates=3)
        self.assertActive(phone, user)

    def test_ignored_and_unmatched_events_are_remembered(self):
        user = fresh_user()
        ignored = event("gd_send_sms", user)
        self.deliver([ignored], ignored=1)
        self.deliver([ignored], duplicates=1)
        # A masked enrolment with nothing to match; later the matching
        # reservation exists, but the redelivery changes nothing.
        phone = number()
        unmatched = enrolled(user, masked(phone))
        self.deliver([unmatched], ignored=1)
        self.reserve(phone, user)
        self.deliver([unmatched], duplicates=1)
        self.assertNotActive(phone, user)

    def test_seen_ids_survive_a_restart(self):
        d = self.own_daemon()
        phone, user = number(), fresh_user()
        batch = [enrolled(user, phone), event("s", user)]
        self.assertCounts(self.send(batch, daemon=d), 2, applied=1,
                          ignored=1)
        self.assertEqual(d.stop(), 0)
        d.start()
        self.assertCounts(self.send(batch, daemon=d), 2, duplicates=2)


# The event table -----------------------------------------------------------

class EnrolmentTests(LogStreamCase):
    """gd_enrollment_complete."""

    def test_full_number_on_a_free_number_creates_an_active_claim(self):
        phone, user = number(), fresh_user()
        self.deliver([enrolled(user, phone)], applied=1)
        self.assertActive(phone, user)

    def test_full_number_activates_the_users_reservation(self):
        phone, user = self.reserve()
        self.deliver([enrolled(user, phone)], applied=1)
        self.assertActive(phone, user)

    def test_phone_sms_and_voice_authenticators(self):
        for kind in PHONE_KINDS:
            with self.subTest(type=kind):
                phone, user = number(), fresh_user()
                self.deliver([enrolled(user, phone, kind)], applied=1)
                self.assertActive(phone, user)

    def test_type_absent_with_sms_or_voice_description(self):
        for suffix in ("(sms)", "(voice)"):
            with self.subTest(description=suffix):
                phone, user = number(), fresh_user()
                it = enrolled(user, phone, None, description=(
                    "Guardian - Enrollment complete " + suffix))
                self.deliver([it], applied=1)
                self.assertActive(phone, user)

    def test_phone_number_as_json_number(self):
        phone, user = number(), fresh_user()
        self.deliver([enrolled(user, as_int(phone))], applied=1)
        self.assertActive(phone, user)
        phone, user = self.reserve()
        self.deliver([enrolled(user, as_int(phone), "sms")], applied=1)
        self.assertActive(phone, user)

    def test_a_batch_of_numbers_the_cache_never_saw(self):
        """Forty enrolments in one request, their numbers written in
        forms the number cache has not seen (the worker parses them ahead
        of the loop: logstream.c, logstream_warm_work), some as JSON
        numbers, some only in details.enrollment, between masked
        unenrolments that change nothing: each claim is its own user's
        and every number was parsed once."""
        def spaced(p):
            return "%s %s-%s-%s" % (p[:2], p[2:5], p[5:8], p[8:])

        def misses():
            text = self.d.request("GET", "/metrics").raw.decode()
            for line in text.splitlines():
                if line.startswith(
                        'phoneclaimd_phone_cache_total{result="miss"} '):
                    return int(line.split()[1])
            self.fail("no phone cache misses in /metrics")

        claims = [self.reserve() for _ in range(40)]
        before = misses()
        items = []
        for i, (phone, user) in enumerate(claims):
            sent = spaced(phone) if i % 3 else as_int(phone)
            items.append(enrolled(user, sent,
                                  where="both" if i % 4 == 1 else
                                  "enrollment" if i % 4 == 2 else
                                  "authenticator"))
            if i % 5 == 0:
                items.append(unenrolled(fresh_user(), masked(number())))
        self.deliver(items, applied=40, settled=len(items) - 40)
        self.assertEqual(misses() - before,
                         sum(1 for i in range(40) if i % 3))
        for phone, user in claims:
            self.assertActive(phone, user)

    def test_number_only_in_the_enrollment_object(self):
        phone, user = number(), fresh_user()
        self.deliver([enrolled(user, phone, where="enrollment")], applied=1)
        self.assertActive(phone, user)

    def test_user_comes_from_the_enrollment_first(self):
        phone, user, other = number(), fresh_user(), fresh_user()
        self.deliver([enrolled(user, phone, data_user=other)], applied=1)
        self.assertActive(phone, user)
        self.assertTaken(self.d.claim(phone, other, "enrollment"))

    def test_data_user_id_without_enrollment_user(self):
        phone, user = number(), fresh_user()
        it = enrolled(user, phone)
        del it["data"]["details"]["enrollment"]["user_id"]
        self.deliver([it], applied=1)
        self.assertActive(phone, user)

    def test_masked_number_activates_the_matching_reservation(self):
        for style in ("stars", "xs", "partial"):
            with self.subTest(mask=style):
                phone, user = self.reserve()
                self.deliver([enrolled(user, masked(phone, style))],
                             applied=1)
                self.assertActive(phone, user)

    def test_masked_number_that_matches_nothing_is_ignored(self):
        phone, user = self.reserve()
        self.deliver([enrolled(user, masked(other_last4(phone)))], ignored=1)
        self.assertNotActive(phone, user)
        # No reservation at all.
        self.deliver([enrolled(fresh_user(), masked(number()))], ignored=1)

    def test_no_number_activates_the_pending_reservation(self):
        phone, user = self.reserve()
        self.deliver([enrolled(user, None)], applied=1)
        self.assertActive(phone, user)

    def test_no_number_and_no_reservation_is_ignored(self):
        phone, user = self.learn()		# active, not pending
        self.deliver([enrolled(user, None)], ignored=1)
        self.deliver([enrolled(fresh_user(), None)], ignored=1)
        self.assertHeld(phone, user)

    def test_other_factor_types_are_ignored(self):
        for kind in OTHER_KINDS:
            with self.subTest(type=kind):
                phone, user = number(), fresh_user()
                self.deliver([enrolled(user, phone, kind)], ignored=1)
                self.assertFree(phone)
                pending, user = self.reserve()
                self.deliver([enrolled(user, None, kind)], ignored=1)
                self.assertNotActive(pending, user)

    def test_type_absent_without_phone_description_is_ignored(self):
        phone, user = number(), fresh_user()
        it = enrolled(user, phone, None,
                      description="Guardian - Enrollment complete (otp)")
        self.deliver([it], ignored=1)
        self.assertFree(phone)

    def test_number_held_by_another_user_is_a_conflict(self):
        # Active holder.
        phone, holder = self.learn()
        user = fresh_user()
        self.deliver([enrolled(user, phone)], applied=1)
        self.assertHeld(phone, holder)
        self.assertTaken(self.d.claim(phone, user, "enrollment"))
        # Pending holder.
        phone, holder = self.reserve()
        user = fresh_user()
        self.deliver([enrolled(user, phone)], applied=1)
        self.assertHeld(phone, holder)
        self.assertTaken(self.d.claim(phone, user, "enrollment"))


class ActivationOutlivesTtlTests(LogStreamCase):
    """pending_ttl = 2: activated claims outlive it, pending ones lapse."""

    conf = {"pending_ttl": 2}
    ttl = 2

    def test_activated_claims_do_not_lapse(self):
        kept = {}
        phone, user = self.reserve()
        self.deliver([enrolled(user, phone)], applied=1)
        kept["reserved, full number"] = (phone, user)
        phone, user = self.reserve()
        self.deliver([enrolled(user, masked(phone, "stars"), "sms")],
                     applied=1)
        kept["reserved, masked number"] = (phone, user)
        phone, user = self.reserve()
        self.deliver([enrolled(user, None, "voice")], applied=1)
        kept["reserved, no number"] = (phone, user)
        phone, user = number(), fresh_user()
        self.deliver([enrolled(user, as_int(phone))], applied=1)
        kept["unreserved, JSON number"] = (phone, user)
        phone, user = number(), fresh_user()
        self.deliver([sapi("POST", user_path(user, "/authentication-methods"),
                           body={"type": "phone", "phone_number": phone},
                           status=201)], applied=1)
        kept["sapi POST"] = (phone, user)
        lapsing = {}
        lapsing["reserved only"] = self.reserve()
        phone, user = self.reserve()
        self.deliver([enrolled(user, phone, "otp")], ignored=1)
        lapsing["reserved, otp enrolment"] = (phone, user)
        phone, user = self.reserve()
        self.deliver([enrolled(user, masked(other_last4(phone)))], ignored=1)
        lapsing["reserved, other masked number"] = (phone, user)
        time.sleep(3.0)
        for name, (phone, user) in kept.items():
            with self.subTest(activated=name):
                self.assertTaken(self.d.claim(phone, fresh_user()))
                self.assertResult(self.d.claim(phone, user), "owned")
        for name, (phone, user) in lapsing.items():
            with self.subTest(lapsed=name):
                self.assertFree(phone)


class UnenrolTests(LogStreamCase):
    """gd_unenroll."""

    def two_enrolled(self, user=None):
        """Enrol two numbers for user through events; return
        (user, (phone, device), (phone, device))."""
        user = user or fresh_user()
        out = []
        for _ in range(2):
            phone, device = number(), new_device()
            self.apply(enrolled(user, phone, device=device))
            out.append((phone, device))
        return user, out[0], out[1]

    def test_full_number_releases_that_claim(self):
        for kind in PHONE_KINDS + (None,):
            with self.subTest(type=kind):
                phone, user = self.learn()
                kept, _ = self.learn(user=user)
                desc = "Guardian - Unenroll device account" if kind is None \
                    else None
                self.deliver([unenrolled(user, phone, kind,
                                         description=desc)], applied=1)
                self.assertFree(phone)
                self.assertHeld(kept, user)

    def test_full_number_as_json_number(self):
        phone, user = self.learn()
        self.deliver([unenrolled(user, as_int(phone))], applied=1)
        self.assertFree(phone)

    def test_releases_a_pending_claim_too(self):
        phone, user = self.reserve()
        self.deliver([unenrolled(user, phone)], applied=1)
        self.assertFree(phone)

    def test_stored_authenticator_id_picks_the_claim(self):
        # Ids phone|dev_x, sms|dev_x, voice|dev_x and dev_x are one.
        for given in ("phone|%s", "sms|%s", "voice|%s", "%s"):
            with self.subTest(id=given):
                user, (p1, dev1), (p2, dev2) = self.two_enrolled()
                self.deliver([unenrolled(user, masked(p2),
                                         auth_id=given % dev2)], applied=1)
                self.assertFree(p2)
                self.assertHeld(p1, user)

    def test_stored_enrolment_id_picks_the_claim(self):
        user, (p1, dev1), (p2, dev2) = self.two_enrolled()
        self.deliver([unenrolled(user, None, enrol_id=dev1)], applied=1)
        self.assertFree(p1)
        self.assertHeld(p2, user)

    def test_enrolment_id_stored_from_the_authenticator_id_only(self):
        user = fresh_user()
        p1, p2, dev = number(), number(), new_device()
        it = enrolled(user, p1, "sms", auth_id="sms|" + dev)
        del it["data"]["details"]["enrollment"]["_id"]
        self.apply(it, enrolled(user, p2))
        self.deliver([unenrolled(user, None, auth_id="voice|" + dev)],
                     applied=1)
        self.assertFree(p1)
        self.assertHeld(p2, user)

    def test_the_users_only_claim(self):
        for phone_form in ("masked", "absent"):
            with self.subTest(number=phone_form):
                phone, user = self.learn()
                given = masked(phone, "xs") if phone_form == "masked" \
                    else None
                self.deliver([unenrolled(user, given,
                                         auth_id="phone|" + new_device())],
                             applied=1)
                self.assertFree(phone)

    def test_several_candidates_are_ambiguous(self):
        p1, user = self.learn()
        p2, _ = self.learn(user=user)
        self.deliver([unenrolled(user, None,
                                 auth_id="phone|" + new_device())],
                     ignored=1)
        self.deliver([unenrolled(user, None)], ignored=1)
        self.assertHeld(p1, user)
        self.assertHeld(p2, user)

    def test_other_factor_types_release_nothing(self):
        for kind in OTHER_KINDS:
            with self.subTest(type=kind):
                phone, user = self.learn()
                self.deliver([unenrolled(user, None, kind)], ignored=1)
                self.assertHeld(phone, user)

    def test_unknown_factor_leaves_a_claim_without_its_id(self):
        """No type, no telling description, no number: the factor may
        be TOTP or push.  A learned claim (no enrolment id) stays; only
        the claim whose stored enrolment id matches goes (issue 17,
        point 2)."""
        desc = "Guardian - Unenroll device account"
        for auth_id, enrol_id in (("totp|" + new_device(), None),
                                  (None, new_device()), (None, None)):
            with self.subTest(auth_id=auth_id, enrol_id=enrol_id):
                phone, user = self.learn()
                self.deliver([unenrolled(user, None, None, auth_id=auth_id,
                                         enrol_id=enrol_id,
                                         description=desc)], ignored=1)
                self.assertHeld(phone, user)
        user, (p1, dev1), (p2, dev2) = self.two_enrolled()
        self.deliver([unenrolled(user, None, None, auth_id=dev2,
                                 description=desc)], applied=1)
        self.assertFree(p2)
        self.assertHeld(p1, user)
        phone, user = number(), fresh_user()
        dev = new_device()
        self.apply(enrolled(user, phone, device=dev))
        self.deliver([unenrolled(user, None, None, enrol_id=dev,
                                 description=desc)], applied=1)
        self.assertFree(phone)

    def test_user_comes_from_the_enrollment_first(self):
        phone, user = self.learn()
        other_phone, other = self.learn()
        self.deliver([unenrolled(user, None, data_user=other)], applied=1)
        self.assertFree(phone)
        self.assertHeld(other_phone, other)

    def test_another_users_claim_is_not_released(self):
        phone, holder = self.learn()
        self.deliver([unenrolled(fresh_user(), phone)], settled=1)
        self.assertHeld(phone, holder)


class ConflictPromotionTests(LogStreamCase):
    """A recorded conflict's user becomes the holder when the last holder
    leaves: they still have the number enrolled in Auth0 (issue 17,
    point 3)."""

    def conflict(self, later=None):
        """holder learns a number; later enrols it anyway (a conflict):
        return (phone, holder, later)."""
        phone, holder = self.learn()
        later = later or fresh_user()
        self.deliver([enrolled(later, phone)], applied=1)
        self.assertHeld(phone, holder)
        return phone, holder, later

    def conflicts_on(self, phone):
        return [c for c in self.d.ask("conflicts")["conflicts"]
                if c["number"][-4:] == phone[-4:]]

    def metric(self, name):
        for line in self.d.request("GET", "/metrics").raw.decode() \
                .splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_deleted_holder_passes_the_number_on(self):
        before = self.d.ask("status").get("conflicts_resolved", 0)
        before_m = self.metric("phoneclaimd_conflicts_resolved_total")
        phone, holder, later = self.conflict()
        self.deliver([deleted(holder)], applied=1)
        self.assertHeld(phone, later)
        claims = self.d.ask("user " + later)["claims"]
        self.assertEqual([(c["state"], c["source"]) for c in claims],
                         [("active", "conflict")])
        (cf,) = self.conflicts_on(phone)
        self.assertEqual(cf["user_ids"], [later, holder])
        self.assertIsNotNone(cf.get("resolved"), cf)
        self.assertEqual(self.d.ask("status")["conflicts_resolved"] - before,
                         1)
        self.assertEqual(self.metric("phoneclaimd_conflicts_resolved_total") -
                         (before_m or 0), 1)

    def test_earliest_conflict_wins(self):
        phone, holder, first = self.conflict()
        time.sleep(1.1)			# conflicts are dated to the second
        second = fresh_user()
        self.deliver([enrolled(second, phone)], applied=1)
        self.deliver([unenrolled(holder, phone)], applied=1)
        self.assertHeld(phone, first)
        self.assertTaken(self.d.claim(phone, second, "enrollment"))
        # first leaves too: second is next.
        self.deliver([deleted(first)], applied=1)
        self.assertHeld(phone, second)

    def test_released_conflict_user_is_not_promoted(self):
        phone, holder, later = self.conflict()
        self.deliver([deleted(later)], settled=1)	# holds nothing
        self.deliver([deleted(holder)], applied=1)
        self.assertFree(phone)

    def test_admin_release_promotes_too(self):
        phone, holder, later = self.conflict()
        self.assertEqual(self.d.ask("release %s %s" % (phone, holder)),
                         {"released": 1})
        self.assertHeld(phone, later)


class UserDeletionTests(LogStreamCase):
    """sdu and du release all of data.user_id's claims."""

    def test_deletion_releases_every_claim_of_the_user(self):
        for etype in ("sdu", "du"):
            with self.subTest(type=etype):
                p1, user = self.learn()
                p2, _ = self.learn(user=user)
                p3, _ = self.reserve(user=user)
                p4 = number()
                self.apply(enrolled(user, p4))
                bystander, other = self.learn()
                self.deliver([deleted(user, etype)], applied=1)
                for phone in (p1, p2, p3, p4):
                    self.assertFree(phone)
                self.assertHeld(bystander, other)

    def test_deleting_a_user_without_claims(self):
        self.deliver([deleted(fresh_user())], settled=1)


class SapiTests(LogStreamCase):
    """sapi: the target user is in the (URL-encoded) path."""

    def holdings(self, user):
        """Two active claims and a pending one for user."""
        p1, _ = self.learn(user=user)
        p2 = number()
        self.apply(enrolled(user, p2))
        p3, _ = self.reserve(user=user)
        return [p1, p2, p3]

    def test_user_wide_deletes_release_every_claim(self):
        cases = (("DELETE", ""), ("delete", "/authenticators"),
                 ("Delete", "/authentication-methods"),
                 ("DELETE", "/authentication-methods"),
                 ("delete", ""))
        for method, suffix in cases:
            with self.subTest(method=method, path=suffix):
                user = "auth0|" + secrets.token_hex(12)
                phones = self.holdings(user)
                admin_phone, admin = self.learn()
                self.deliver([sapi(method, user_path(user, suffix), admin,
                                   status=204)], applied=1)
                for phone in phones:
                    self.assertFree(phone)
                self.assertHeld(admin_phone, admin)

    def test_path_is_url_decoded(self):
        for user in ("auth0|" + secrets.token_hex(6),
                     "google-oauth2|" + "1" * 21,
                     "auth0|\u00fcber-" + secrets.token_hex(3),
                     "email|a b+c@" + secrets.token_hex(3)):
            with self.subTest(user=user):
                phones = self.holdings(user)
                self.assertIn("%", user_path(user))
                self.deliver([sapi("DELETE", user_path(
                    user, "/authentication-methods"))], applied=1)
                for phone in phones:
                    self.assertFree(phone)

    def test_status_code_absent_or_2xx_applies(self):
        for status in (None, 200, 204):
            with self.subTest(status=status):
                user = fresh_user()
                phones = self.holdings(user)
                self.deliver([sapi("DELETE", user_path(user),
                                   status=status)], applied=1)
                for phone in phones:
                    self.assertFree(phone)

    def test_failed_calls_are_ignored(self):
        for status in (400, 401, 403, 404, 429, 500, 503):
            with self.subTest(status=status):
                user = fresh_user()
                phones = self.holdings(user)
                target = number()
                self.deliver([sapi("DELETE", user_path(user), status=status),
                              sapi("DELETE", user_path(
                                  user, "/authentication-methods"),
                                  status=status),
                              sapi("POST", user_path(
                                  user, "/authentication-methods"),
                                  body={"type": "phone",
                                        "phone_number": target},
                                  status=status)], ignored=3)
                for phone in phones:
                    self.assertHeld(phone, user)
                self.assertFree(target)

    def test_admin_is_not_the_target(self):
        admin_phone, admin = self.learn()
        user = fresh_user()
        phones = self.holdings(user)
        self.deliver([sapi("DELETE", user_path(user, "/authenticators"),
                           admin)], applied=1)
        self.assertHeld(admin_phone, admin)
        for phone in phones:
            self.assertFree(phone)
        # And a created method goes to the path's user, not the admin.
        phone = number()
        self.deliver([sapi("POST", user_path(user, "/authentication-methods"),
                           admin, {"type": "phone", "phone_number": phone},
                           201)], applied=1)
        self.assertActive(phone, user)
        self.assertTaken(self.d.claim(phone, admin))

    def test_delete_one_phone_method(self):
        for mid in ("phone|%s", "sms|%s", "voice|%s", "phone%%7C%s",
                    "sms%%7C%s"):
            with self.subTest(method_id=mid):
                user = fresh_user()
                p1, p2, d1, d2 = number(), number(), new_device(), \
                    new_device()
                self.apply(enrolled(user, p1, device=d1),
                           enrolled(user, p2, device=d2))
                path = user_path(user, "/authentication-methods/" + mid % d2)
                self.deliver([sapi("delete", path, status=204)], applied=1)
                self.assertFree(p2)
                self.assertHeld(p1, user)

    def test_delete_one_phone_method_falls_back_to_the_only_claim(self):
        phone, user = self.learn()
        self.deliver([sapi("DELETE", user_path(
            user, "/authentication-methods/phone|" + new_device()))],
            applied=1)
        self.assertFree(phone)

    def test_delete_one_phone_method_with_two_candidates_is_ambiguous(self):
        p1, user = self.learn()
        p2, _ = self.learn(user=user)
        self.deliver([sapi("DELETE", user_path(
            user, "/authentication-methods/sms|" + new_device()))],
            ignored=1)
        self.assertHeld(p1, user)
        self.assertHeld(p2, user)

    def test_delete_other_method_types_releases_nothing(self):
        for kind in ("totp", "email", "webauthn-roaming", "push", "passkey"):
            with self.subTest(type=kind):
                phone, user = self.learn()
                self.deliver([sapi("DELETE", user_path(
                    user, "/authentication-methods/%s|%s" % (
                        kind, new_device())))], settled=1)
                self.assertHeld(phone, user)

    def test_delete_guardian_enrollment(self):
        for eid in ("%s", "phone|%s"):
            with self.subTest(eid=eid):
                user = fresh_user()
                p1, p2, d1, d2 = number(), number(), new_device(), \
                    new_device()
                self.apply(enrolled(user, p1, device=d1),
                           enrolled(user, p2, device=d2))
                self.deliver([sapi("DELETE", "/api/v2/guardian/enrollments/"
                                   + urllib.parse.quote(eid % d1, safe=""),
                                   status=204)], applied=1)
                self.assertFree(p1)
                self.assertHeld(p2, user)

    def test_delete_unknown_guardian_enrollment_releases_nothing(self):
        phone, user = self.learn()
        self.deliver([sapi("DELETE", "/api/v2/guardian/enrollments/" +
                           new_device())], settled=1)
        self.assertHeld(phone, user)

    def test_post_phone_method_creates_an_active_claim(self):
        for form in ("string", "json number"):
            with self.subTest(form=form):
                phone, user = number(), fresh_user()
                given = phone if form == "string" else as_int(phone)
                body = {"type": "phone", "name": "Phone",
                        "phone_number": given,
                        "preferred_authentication_method": "sms"}
                self.deliver([sapi("post", user_path(
                    user, "/authentication-methods"), body=body,
                    status=201)], applied=1)
                self.assertActive(phone, user)

    def test_post_phone_method_on_a_held_number_is_a_conflict(self):
        phone, holder = self.learn()
        user = fresh_user()
        self.deliver([sapi("POST", user_path(user, "/authentication-methods"),
                           body={"type": "phone", "phone_number": phone},
                           status=201)], applied=1)
        self.assertHeld(phone, holder)
        self.assertTaken(self.d.claim(phone, user))

    def test_post_other_method_types_claim_nothing(self):
        user = fresh_user()
        self.deliver([sapi("POST", user_path(user, "/authentication-methods"),
                           body={"type": "email",
                                 "email": "someone@example.com"},
                           status=201)], settled=1)

    def test_put_replaces_every_method(self):
        user = fresh_user()
        old = self.holdings(user)
        new1, new2 = number(), number()
        body = [{"type": "phone", "phone_number": new1,
                 "preferred_authentication_method": "sms"},
                {"type": "email", "email": "someone@example.com"},
                {"type": "phone", "phone_number": new2,
                 "preferred_authentication_method": "voice"}]
        self.deliver([sapi("PUT", user_path(user, "/authentication-methods"),
                           body=body)], applied=1)
        for phone in old:
            self.assertFree(phone)
        self.assertActive(new1, user)
        self.assertActive(new2, user)

    def test_put_without_phone_methods_releases_everything(self):
        user = fresh_user()
        old = self.holdings(user)
        self.deliver([sapi("put", user_path(user, "/authentication-methods"),
                           body=[{"type": "totp"}])], applied=1)
        for phone in old:
            self.assertFree(phone)

    def test_reads_and_other_paths_are_ignored(self):
        user = fresh_user()
        phones = self.holdings(user)
        self.deliver([
            sapi("GET", user_path(user, "/authentication-methods")),
            sapi("GET", user_path(user)),
            sapi("PATCH", user_path(user), body={"blocked": True}),
            sapi("patch", "/api/v2/log-streams/lst_0000000000001269",
                 body={"name": "x"}),
            sapi("DELETE", "/api/v2/clients/Tst0Client0Id", status=204),
            sapi("DELETE", "/api/v2/roles/rol_x/users", body={
                "users": [user]}, status=204),
        ], ignored=6)
        for phone in phones:
            self.assertHeld(phone, user)


def jwt(claims):
    """An unsigned-looking JWT whose payload holds claims (the daemon only
    reads its sub; Auth0 checked the signature before it logged 2xx)."""
    def b64(obj):
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return "%s.%s.%s" % (b64({"alg": "RS256", "typ": "JWT"}), b64(claims),
                         "c2lnbmF0dXJl")


def linked(primary, body, response=None, status=201, date=None):
    """sapi for POST /api/v2/users/{primary}/identities (account linking,
    Auth0 Management API docs, "Link a User Account"): body is
    {provider, user_id[, connection_id]} or {link_with}; response the
    primary's identities after the link."""
    it = sapi("POST", user_path(primary, "/identities"), body=body,
              status=status, date=date)
    if response is not None:
        it["data"]["details"]["response"]["body"] = response
    return it


class AccountLinkingTests(LogStreamCase):
    """Linking removes the secondary user without an sdu: its claims are
    released with a watermark (issue 17, point 5)."""

    def secondary(self, provider="google-oauth2"):
        """A secondary user of provider with a learned claim: (phone,
        full user id, the id's part after the provider)."""
        part = secrets.token_hex(10)
        full = provider + "|" + part
        phone, _ = self.learn(user=full)
        return phone, full, part

    def test_provider_and_user_id(self):
        for provider in ("google-oauth2", "auth0", "sms"):
            with self.subTest(provider=provider):
                phone, full, part = self.secondary(provider)
                body = {"provider": provider, "user_id": part}
                if provider == "auth0":
                    body["connection_id"] = "con_" + secrets.token_hex(8)
                self.deliver([linked(fresh_user(), body)], applied=1)
                self.assertFree(phone)

    def test_user_id_given_whole(self):
        phone, full, _ = self.secondary("auth0")
        self.deliver([linked(fresh_user(), {"provider": "auth0",
                                            "user_id": full})], applied=1)
        self.assertFree(phone)

    def test_link_with_token(self):
        phone, full, _ = self.secondary()
        token = jwt({"sub": full, "aud": "client", "iss": "https://t/"})
        self.deliver([linked(fresh_user(), {"link_with": token})],
                     applied=1)
        self.assertFree(phone)

    def test_response_identities_when_the_body_is_redacted(self):
        primary = fresh_user()
        phone, full, part = self.secondary("github")
        response = [{"provider": "auth0", "user_id": primary.split("|")[1],
                     "connection": "Username-Password-Authentication",
                     "isSocial": False},
                    {"provider": "github", "user_id": part,
                     "connection": "github", "isSocial": True}]
        kept, _ = self.learn(user=primary)
        self.deliver([linked(primary, {}, response)], applied=1)
        self.assertFree(phone)
        self.assertHeld(kept, primary)

    def test_primary_keeps_its_claims_and_old_enrolments_stay_out(self):
        primary = fresh_user()
        kept, _ = self.learn(user=primary)
        phone, full, part = self.secondary()
        before = at(-30)
        self.deliver([linked(primary, {"provider": "google-oauth2",
                                       "user_id": part})], applied=1)
        self.assertHeld(kept, primary)
        # An enrolment of the secondary older than the link: stale.
        self.deliver([enrolled(full, phone, date=before)], ignored=1)
        self.assertFree(phone)

    def test_failed_link_releases_nothing(self):
        phone, full, part = self.secondary()
        self.deliver([linked(fresh_user(), {"provider": "google-oauth2",
                                            "user_id": part}, status=400)],
                     ignored=1)
        self.assertHeld(phone, full)


class FailureEventTests(LogStreamCase):
    """gd_send_sms_failure, gd_send_voice_failure, gd_start_enroll_failed
    release the user's pending claims reserved before the event's date."""

    TYPES = ("gd_send_sms_failure", "gd_send_voice_failure",
             "gd_start_enroll_failed")

    def failed(self, etype, user, date):
        """gd_start_enroll_failed shows a phone factor, the others need
        not."""
        return failed(etype, user, date, "sms" if etype ==
                      "gd_start_enroll_failed" else None)

    def test_reservation_before_the_date_is_released(self):
        for etype in self.TYPES:
            with self.subTest(type=etype):
                phone, user = self.reserve()
                self.deliver([self.failed(etype, user, at(30))], applied=1)
                self.assertFree(phone)

    def test_start_enroll_failed_of_other_factors_releases_nothing(self):
        """Auth0 documents gd_start_enroll_failed as a push enrolment
        failure: a reservation goes only if the event shows a phone
        (issue 17, point 2)."""
        for kind in (None, "push", "otp"):
            with self.subTest(type=kind):
                phone, user = self.reserve()
                self.deliver([failed("gd_start_enroll_failed", user, at(30),
                                     kind)], ignored=1)
                self.assertHeld(phone, user)
        for kind in PHONE_KINDS:
            with self.subTest(type=kind):
                phone, user = self.reserve()
                self.deliver([failed("gd_start_enroll_failed", user, at(30),
                                     kind)], applied=1)
                self.assertFree(phone)

    def test_reservation_after_the_date_stays(self):
        for etype in self.TYPES:
            with self.subTest(type=etype):
                phone, user = self.reserve()
                self.deliver([self.failed(etype, user, at(-60))],
                             settled=1)
                self.assertHeld(phone, user)

    def test_active_claims_stay(self):
        for etype in self.TYPES:
            with self.subTest(type=etype):
                phone, user = self.learn()
                enrolled_phone = number()
                self.apply(enrolled(user, enrolled_phone))
                self.deliver([self.failed(etype, user, at(30))], settled=1)
                self.assertHeld(phone, user)
                self.assertHeld(enrolled_phone, user)

    def test_other_users_are_untouched(self):
        phone, user = self.reserve()
        self.deliver([failed("gd_send_sms_failure", fresh_user(), at(30))],
                     settled=1)
        self.assertHeld(phone, user)


class IgnoredEventTests(LogStreamCase):

    def test_other_types_are_ignored_and_change_nothing(self):
        pending, user = self.reserve()
        active, _ = self.learn(user=user)
        items = []
        for etype in IGNORED_TYPES + ("gd_unenroll_x", "SDU", "zzz"):
            items.append(event(etype, user, details={
                "authenticator": {"type": "phone", "phone_number": active},
                "enrollment": {"user_id": user, "phone_number": pending}}))
        self.deliver(items, ignored=len(items))
        self.assertHeld(active, user)
        self.assertHeld(pending, user)
        self.assertNotActive(pending, user)


# Ordering (I4) -------------------------------------------------------------

class OrderingTests(LogStreamCase):
    """Releases leave watermarks; older enrolments never bring a claim
    back.  Dates are an hour ago, a minute apart."""

    def times(self, n=6):
        base = utc_now() - datetime.timedelta(hours=1)
        return [at(60 * i, base) for i in range(n)]

    def test_user_wide_release_blocks_older_enrolments(self):
        releases = {
            "sdu": lambda u, t: deleted(u, "sdu", t),
            "du": lambda u, t: deleted(u, "du", t),
            "sapi user": lambda u, t: sapi("DELETE", user_path(u), date=t),
            "sapi authenticators": lambda u, t: sapi(
                "delete", user_path(u, "/authenticators"), date=t),
            "sapi reset": lambda u, t: sapi(
                "DELETE", user_path(u, "/authentication-methods"), date=t),
        }
        for name, release in releases.items():
            with self.subTest(release=name):
                t0, t1, t2, t3 = self.times(4)
                user, phone, other = fresh_user(), number(), number()
                self.deliver([release(user, t2)], settled=1)
                # Older (and same-dated) enrolments: nothing.
                self.deliver([enrolled(user, phone, date=t1)], ignored=1)
                self.deliver([enrolled(user, other, date=t2)], ignored=1)
                self.deliver([enrolled(user, other, "sms", date=t0)],
                             ignored=1)
                self.assertFree(other)
                # U had no claim on phone: its own enrolment reserves it.
                self.assertReserved(self.d.claim(phone, user), self.ttl)
                # An older enrolment does not activate that reservation...
                self.deliver([enrolled(user, None, date=t1)], ignored=1)
                self.assertNotActive(phone, user)
                # ...a newer one does, and creates claims.
                again, fresh = number(), number()
                self.reserve(again, user)
                self.deliver([enrolled(user, again, date=t3),
                              enrolled(user, fresh, date=t3)], applied=2)
                self.assertActive(again, user)
                self.assertActive(fresh, user)

    def test_watermark_does_not_touch_other_users(self):
        t0, t1, t2 = self.times(3)
        user, other, phone = fresh_user(), fresh_user(), number()
        self.deliver([deleted(user, "sdu", t2)], settled=1)
        self.deliver([enrolled(other, phone, date=t1)], applied=1)
        self.assertActive(phone, other)

    def test_unenrol_blocks_older_enrolments_of_that_number_only(self):
        t0, t1, t2, t3 = self.times(4)
        user, n, m = fresh_user(), number(), number()
        self.deliver([enrolled(user, n, date=t0)], applied=1)
        self.deliver([unenrolled(user, n, date=t2)], applied=1)
        self.deliver([enrolled(user, n, date=t1)], ignored=1)
        self.deliver([enrolled(user, n, date=t2)], ignored=1)
        self.deliver([enrolled(user, m, date=t1)], applied=1)
        self.assertActive(m, user)
        # U holds nothing on n: its enrolment reserves it; a newer event
        # activates it.
        self.assertReserved(self.d.claim(n, user), self.ttl)
        self.deliver([enrolled(user, n, date=t3)], applied=1)
        self.assertActive(n, user)

    def test_unenrol_delivered_first_blocks_the_older_enrolment(self):
        t0, t1, t2 = self.times(3)
        user, n = fresh_user(), number()
        self.deliver([unenrolled(user, n, date=t2)], settled=1)
        self.deliver([enrolled(user, n, date=t1)], ignored=1)
        self.assertFree(n)

    def test_reordered_inside_one_batch(self):
        t0, t1, t2, t3 = self.times(4)
        user, n, m = fresh_user(), number(), number()
        self.deliver([deleted(user, "sdu", t2), enrolled(user, n, date=t1),
                      enrolled(user, m, date=t3)], applied=1, ignored=1,
                     settled=1)
        self.assertFree(n)
        self.assertActive(m, user)

    def test_sapi_create_older_than_a_reset_is_blocked(self):
        t0, t1, t2 = self.times(3)
        user, n = fresh_user(), number()
        methods = user_path(user, "/authentication-methods")
        self.deliver([sapi("DELETE", methods, date=t2)], settled=1)
        self.deliver([sapi("POST", methods, body={"type": "phone",
                                                  "phone_number": n},
                           status=201, date=t1)], ignored=1)
        self.assertFree(n)

    def scenario(self):
        """A realistic life: U reserves n1, enrols, unenrols, enrols
        again, unenrols again, then enrols n2; V enrols m1 and m2, gets an
        MFA reset and an older enrolment, and is deleted.  Every number
        whose latest event is a release must end free, n2 held by U."""
        u, v = fresh_user(), fresh_user()
        n1, n2, m1, m2 = number(), number(), number(), number()
        dev = new_device()
        self.reserve(n1, u)
        # Dated after the reservation: an older release would not take it.
        base = utc_now() + datetime.timedelta(milliseconds=1)
        t = [at(60 * i, base) for i in range(12)]
        events = [
            enrolled(u, n1, device=dev, date=t[1]),
            unenrolled(u, n1, date=t[2]),
            enrolled(u, n1, "sms", date=t[3]),
            unenrolled(u, n1, "sms", date=t[4]),
            enrolled(u, n2, date=t[5]),
            event("gd_send_sms", u, t[6]),
            event("s", u, t[7]),
            enrolled(v, m1, date=t[1]),
            enrolled(v, m2, "voice", date=t[2]),
            sapi("DELETE", user_path(v, "/authentication-methods"),
                 date=t[4]),
            enrolled(v, m1, date=t[3]),
            deleted(v, "sdu", t[9]),
            event("mgmt_api_read", "auth0|admin", t[8]),
        ]
        return events, {"free": [n1, m1, m2], "held": [(n2, u)]}

    def test_shuffled_sequences_end_in_the_latest_state(self):
        rng = random.Random(20261127)
        for round_no in range(6):
            with self.subTest(round=round_no):
                events, expect = self.scenario()
                order = events[:]
                rng.shuffle(order)
                i = 0
                while i < len(order):
                    size = rng.randint(1, 4)
                    batch = order[i:i + size]
                    fmt = rng.choice(("array", "lines") if len(batch) > 1
                                     else ("array", "lines", "object"))
                    self.deliver(batch, fmt, settled=len(batch))
                    i += size
                self.deliver(events, duplicates=len(events))
                for phone in expect["free"]:
                    self.assertFree(phone)
                for phone, user in expect["held"]:
                    self.assertActive(phone, user)


# The whole story -----------------------------------------------------------

class RoundTripTests(LogStreamCase):

    def test_reserve_enrol_reset_free(self):
        base = utc_now()
        phone, user = number(), fresh_user()
        other = fresh_user()
        device = new_device()
        # The Action reserves; the number is taken for everyone else.
        self.assertReserved(self.d.claim(phone, user, "enrollment"),
                            self.ttl)
        self.assertTaken(self.d.claim(phone, other, "enrollment"))
        # The log stream reports the SMS and the enrolment.
        self.deliver([event("gd_send_sms", user, at(0, base)),
                      enrolled(user, phone, "sms", device, at(5, base))],
                     applied=1, ignored=1)
        self.assertActive(phone, user)
        self.assertResult(self.d.claim(phone, user,
                                       "second-factor-authentication"),
                          "owned")
        # An admin resets the user's MFA.
        self.deliver([sapi("DELETE", user_path(
            user, "/authentication-methods"), "auth0|admin", status=204,
            date=at(10, base))], applied=1)
        # The number is free: another user reserves it.
        self.assertReserved(self.d.claim(phone, other, "enrollment"),
                            self.ttl)
        self.assertTaken(self.d.claim(phone, user, "enrollment"))
        # A late copy of the enrolment (another log id) changes nothing.
        self.deliver([enrolled(user, phone, "sms", device, at(5, base))],
                     ignored=1)
        self.assertResult(self.d.claim(phone, other), "owned")


# Volume ------------------------------------------------------------------

class HugeBatchTests(LogStreamCase):

    def report(self, text):
        print("\nlogstream: " + text, file=sys.stderr, flush=True)

    def test_ten_thousand_items_in_one_request(self):
        types = ("s", "f", "gd_send_sms", "mgmt_api_read", "seacft", "slo")
        date = at(-60)
        items, enrolments = [], []
        for i in range(BIG_BATCH):
            lid = new_log_id()
            if i % 50 == 7:
                phone, user = number(), "auth0|b%d" % i
                enrolments.append((phone, user))
                data = {"type": "gd_enrollment_complete", "date": date,
                        "user_id": user, "details": {"authenticator": {
                            "type": "sms", "phone_number": phone}}}
            else:
                data = {"type": types[i % len(types)], "date": date,
                        "user_id": "auth0|b%d" % i}
            items.append({"log_id": lid, "data": data})
        body = encode(items)
        self.assertLess(len(body), 8 * 1024 * 1024)
        self.report("%d items, %d enrolments, %.2f MiB" % (
            len(items), len(enrolments), len(body) / 1048576.0))
        timings = []
        for want in ({"applied": len(enrolments),
                      "ignored": BIG_BATCH - len(enrolments)},
                     {"duplicates": BIG_BATCH}):
            start = time.monotonic()
            reply = self.post(body, timeout=BIG_TIMEOUT)
            took = time.monotonic() - start
            timings.append(took)
            self.report("%d-item batch answered %d in %.2f s" % (
                BIG_BATCH, reply.status, took))
            self.assertCounts(reply, BIG_BATCH, **want)
            self.assertLess(took, BIG_LIMIT)
        for phone, user in enrolments[::10]:
            self.assertHeld(phone, user)


class BodyLimitTests(LogStreamCase):
    """max_body_size = 4096: a bigger batch is refused whole."""

    conf = {"max_body_size": 4096}

    def test_batch_over_max_body_size_is_refused_and_not_applied(self):
        phone, user = number(), fresh_user()
        items = [enrolled(user, phone)]
        while len(encode(items)) <= 4096:
            items.append(event("s", user))
        reply = self.send(items)
        self.assertEqual(reply.status, 413, str(reply))
        self.assertFree(phone)
        # Split in two requests, the same items are accepted.
        half = len(items) // 2
        self.deliver(items[:half], applied=1, ignored=half - 1)
        self.deliver(items[half:], ignored=len(items) - half)


class LastLogIdTests(LogStreamCase):
    """The highest log id applied is kept in the store's metadata."""

    shared = False

    def test_highest_log_id_is_stored(self):
        dump = shutil.which("db5.3_dump") or shutil.which("db_dump")
        if dump is None:
            self.skipTest("db5.3_dump not installed (db5.3-util)")
        d = self.own_daemon()
        ids = ["90020261127000000000000000000000000000000000000000000009",
               "90020261127000000000000000000000000000000000000000000010",
               "9002026112700000000000000000000000000000000000000000001"]
        items = [{"log_id": i, "data": {"type": "s"}} for i in ids]
        self.assertCounts(self.post(encode(items), daemon=d), 3, ignored=3)
        self.assertEqual(d.stop(), 0)
        out = subprocess.run([dump, "-p", "-h", d.state_dir, "meta.db"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = [l.strip() for l in out.stdout.splitlines()]
        self.assertIn("last_log_id", lines, out.stdout)
        value = lines[lines.index("last_log_id") + 1]
        # Longer ids are later; at equal length the larger one wins.
        self.assertEqual(value, ids[1])


class UndatedEventTests(LogStreamCase):
    """Issue 18, "Also": an event whose date cannot be read is dated at
    its arrival; each one is counted, and a request is logged once for
    all of them (not once per event), its log id escaped and masked."""

    def metric(self, name):
        for line in self.d.request("GET", "/metrics").raw.decode() \
                .splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_counted_each_and_logged_once_per_request(self):
        phone = number()
        spaced = "%s %s %s" % (phone[:5], phone[5:8], phone[8:])
        forged = spaced + "\nphoneclaimd: warning: FORGED LINE"
        items = []
        for i, date in enumerate(("yesterday", None, "27/11/2026 10:30",
                                  "1764239400")):
            it = enrolled(fresh_user(), number())
            if i == 0:
                it["log_id"] = it["data"]["log_id"] = forged
            if date is None:
                del it["data"]["date"]
            else:
                it["data"]["date"] = date
            items.append(it)
        items.append(enrolled(fresh_user(), number()))	# dated
        before = self.metric("phoneclaimd_undated_events_total")
        since = self.d.log_size()
        self.deliver(items, settled=5)
        self.assertEqual(self.metric("phoneclaimd_undated_events_total"),
                         before + 4)
        self.assertIsNotNone(self.d.wait_for_log("no date that can be read",
                                                 since), self.d.tail(10))
        self.deliver([deleted(fresh_user())], settled=1)	# a later line
        time.sleep(0.2)
        log = self.d.log_text(since)
        lines = [l for l in log.splitlines()
                 if "no date that can be read" in l]
        self.assertEqual(len(lines), 1, log)
        self.assertIn("4 events", lines[0])
        self.assertIn("FORGED LINE", lines[0])
        self.assertNotRegex(log, r"(?m)^phoneclaimd: warning: FORGED")
        self.assertEqual(leaked_numbers(log.replace(" ", ""), [phone]), [],
                         log)


class LastEventTests(LogStreamCase):
    """Issue 18, "Also": status's last_event names one event, the latest
    by its date (the later log id at the same date), with that event's
    own log id and date; /metrics' last event date is the same one.
    Undated events are not candidates."""

    def last_event(self):
        return self.d.ask("status")["last_event"]

    def test_log_id_and_date_are_of_one_event(self):
        late, early = at(), at(-60)
        a = event("s", fresh_user(), date=late)
        b = event("s", fresh_user(), date=early)	# higher log id
        self.assertLess(a["log_id"], b["log_id"])
        self.deliver([a, b], ignored=2)
        want = {"log_id": a["log_id"], "date": late}
        self.assertEqual(self.last_event(), want)
        # An older event, and an undated one, later: last_event stays.
        c = event("s", fresh_user(), date=at(-120))
        u = deleted(fresh_user())
        del u["data"]["date"]
        self.deliver([c], ignored=1)
        self.deliver([u], settled=1)
        self.assertEqual(self.last_event(), want)
        # A newer one takes its place, its own log id with it.
        e = event("s", fresh_user(), date=at(1))
        self.deliver([e], ignored=1)
        self.assertEqual(self.last_event(), {"log_id": e["log_id"],
                                             "date": e["data"]["date"]})
        m = self.d.request("GET", "/metrics").raw.decode()
        ts = re.search(r"(?m)^phoneclaimd_last_event_timestamp_seconds "
                       r"(\S+)", m)
        when = datetime.datetime.strptime(e["data"]["date"],
                                          "%Y-%m-%dT%H:%M:%S.%fZ")
        when = when.replace(tzinfo=datetime.timezone.utc)
        self.assertAlmostEqual(float(ts.group(1)), when.timestamp(),
                               places=3)


class ItemCapTests(LogStreamCase):
    """More than 100,000 items in one request: 413, nothing applied."""

    def test_more_than_100000_items_is_refused(self):
        phone, user = number(), fresh_user()
        first = json.dumps({"log_id": new_log_id(), "data": {
            "type": "gd_enrollment_complete", "user_id": user,
            "details": {"authenticator": {"type": "sms",
                                          "phone_number": phone}}}})
        # Tiny items, so the body stays under the default 8 MiB.
        body = "[" + first + "".join(',{"_id":"%d","type":"s"}' % i
                                     for i in range(100000)) + "]"
        self.assertLess(len(body), 8 * 1024 * 1024)
        reply = self.post(body, timeout=BIG_TIMEOUT)
        self.assertEqual(reply.status, 413, str(reply))
        self.assertEqual(reply.json, {"error": "body_too_large"})
        self.assertFree(phone)


class BatchMemoryTests(LogStreamCase):
    """A batch's memory serves the next one (issue 19, point 4).  glibc
    gave the few MiB of each 1,000-event batch (the body, its contiguous
    copy, the JSON tree) back to the system when the batch was done, and
    took them again page by page for the next: about a thousand page
    faults a batch, and a third of the stream's time.  The daemon's minor
    page faults (/proc/<pid>/stat) are counted over ten batches sent one
    after the other, as Auth0 sends them, after three that warm it up."""

    BATCH = 1000

    def minor_faults(self):
        with open("/proc/%d/stat" % self.d.proc.pid) as f:
            # The fields after the command's closing parenthesis start
            # with the state (field 3); minflt is field 10.
            return int(f.read().rsplit(")", 1)[1].split()[7])

    def batch(self):
        body = encode([enrolled(fresh_user(), number())
                       for _ in range(self.BATCH)])
        reply = self.post(body, timeout=BIG_TIMEOUT)
        self.assertEqual(reply.status, 200, str(reply))

    def test_batches_do_not_fault_their_memory_in_again(self):
        if harness.sanitized():
            self.skipTest("a sanitizer's allocator is not glibc's")
        for _ in range(3):
            self.batch()
        before = self.minor_faults()
        for _ in range(10):
            self.batch()
        per_batch = (self.minor_faults() - before) / 10
        sys.stderr.write("logstream: %.0f minor page faults per batch of "
                         "%d events\n" % (per_batch, self.BATCH))
        self.assertLess(per_batch, 400)


# Durability (I2) -----------------------------------------------------------

class KillNineTests(LogStreamCase):

    shared = False

    def test_nothing_acknowledged_is_lost(self):
        d = self.own_daemon()
        self.d = d
        for round_no in range(3):
            enrolments = [(number(), fresh_user()) for _ in range(30)]
            released, holder = number(), fresh_user()
            self.assertResult(d.claim(released, holder, "otp_verify"),
                              "learned")
            batch = [enrolled(u, p) for p, u in enrolments]
            batch += [event("s", fresh_user()) for _ in range(30)]
            batch.append(deleted(holder))
            rng = random.Random(round_no)
            rng.shuffle(batch)
            self.assertCounts(self.send(batch), len(batch), applied=31,
                              ignored=30)
            d.kill()
            d.start()
            self.assertCounts(self.send(batch), len(batch),
                              duplicates=len(batch))
            for phone, user in enrolments:
                self.assertHeld(phone, user)
            self.assertFree(released)


# Log and privacy (I5) ------------------------------------------------------

class LogTests(LogStreamCase):
    """log_level = debug: one "log stream:" line per request with its
    counts, and no number or token anywhere in the log or state files."""

    conf = {"log_level": "debug"}

    def line_after(self, since):
        m = self.d.wait_for_log(
            r"[^\n]*log stream:(?=[^\n]*applied)(?=[^\n]*duplicate)"
            r"(?=[^\n]*ignored)(?=[^\n]*rejected)[^\n]*", since)
        self.assertIsNotNone(m, "no 'log stream:' line after the request; "
                             "log tail:\n" + self.d.tail(10))
        return m.group(0)

    def assertLineSays(self, line, **counts):
        for word, n in counts.items():
            pat = r"(\b%d\b\W*%s|%s\w*\W*%d\b)" % (n, word, word, n)
            self.assertRegex(line, pat, "%s %d not in: %s" % (word, n, line))

    def test_each_request_logs_its_counts(self):
        user = fresh_user()
        pending, _ = self.reserve(user=user)
        held, _ = self.learn()
        dup = event("s", user)
        self.deliver([dup], ignored=1)
        items = [enrolled(user, None), dup, dup]
        items += [event("f", user) for _ in range(3)]
        items += [{"data": {"type": "s"}}, 1, 2, "x"]
        items += [enrolled(fresh_user(), held)]		# conflict: applied
        since = self.d.log_size()
        self.deliver(items, applied=2, duplicates=2, ignored=3, rejected=4)
        self.assertLineSays(self.line_after(since), applied=2, duplicate=2,
                            ignored=3, rejected=4)
        since = self.d.log_size()
        self.deliver([dup], duplicates=1)
        self.assertLineSays(self.line_after(since), applied=0, duplicate=1,
                            ignored=0, rejected=0)

    def test_request_values_are_escaped_bounded_and_redacted(self):
        """Issue 18, point 5: a log id (or user id) from a request reaches
        the log with control characters escaped, cut to a bound, and
        phone-like digit runs masked as in the dead-letter file: no
        forged line, no number."""
        phone, other = number(), number()
        spaced = "%s %s %s %s" % (phone[:2], phone[2:5], phone[5:8],
                                  phone[8:])
        forged = spaced + "\nphoneclaimd: warning: FORGED LINE\x1b[2J\x85"
        it = event("s", fresh_user(), log_id=forged)
        del it["data"]["type"]
        long_id = event("s", fresh_user(), log_id="L" * 128)
        del long_id["data"]["type"]
        since = self.d.log_size()
        self.deliver([it, long_id], rejected=2)
        # A user id with a number in it, in the claim API's debug line.
        user = "sms|" + other
        self.assertReserved(self.d.claim(number(), user, "enrollment"),
                            self.ttl)
        self.d.wait_for_log(r"claim by [^\n]*", since)
        log = self.d.log_text(since)
        self.assertNotRegex(log, r"(?m)^phoneclaimd: warning: FORGED")
        self.assertNotIn("\x1b", log)
        self.assertNotIn("\x85", log)
        self.assertIn("FORGED LINE", log)
        self.assertEqual(leaked_numbers(log.replace(" ", ""),
                                        [phone, other]), [], log)
        self.assertIn(phone[-4:], log)
        line = [l for l in log.splitlines() if "LLLL" in l][0]
        self.assertNotIn("L" * 128, line)
        self.assertIn("...", line)

    def test_log_and_state_hold_no_numbers_or_tokens(self):
        d = self.d
        # A workload that passes numbers through every path.
        user = fresh_user()
        for kind in PHONE_KINDS:
            p = number()
            self.deliver([enrolled(user, p, kind)], applied=1)
            self.deliver([unenrolled(user, p, kind)], applied=1)
        p, u = self.reserve()
        self.deliver([enrolled(u, masked(p))], applied=1)
        self.deliver([enrolled(fresh_user(), as_int(number()))], applied=1)
        self.deliver([enrolled(fresh_user(), p)], applied=1)   # conflict
        self.deliver([enrolled(fresh_user(), masked(number()))], ignored=1)
        victim = fresh_user()
        self.deliver([sapi("POST", user_path(victim,
                                             "/authentication-methods"),
                           body={"type": "phone", "phone_number": number()},
                           status=201)], applied=1)
        self.deliver([sapi("PUT", user_path(victim,
                                            "/authentication-methods"),
                           body=[{"type": "phone",
                                  "phone_number": number()}])], applied=1)
        self.deliver([sapi("POST", user_path(victim,
                                             "/authentication-methods"),
                           body={"type": "phone", "phone_number": number()},
                           status=500)], ignored=1)
        self.deliver([deleted(victim)], applied=1)
        poison = enrolled(fresh_user(), number())
        del poison["data"]["type"]
        self.deliver([poison, "+%s" % digits(number())], rejected=2)
        self.assertError(self.post("call %s now" % number()), 400,
                         "invalid_json")
        self.assertError(self.post(encode([enrolled(user, number())]),
                                   authorization=d.log_stream_token + "x"),
                         401, "unauthorized")
        self.assertError(self.post(encode([enrolled(user, number())]),
                                   authorization=False), 401, "unauthorized")
        self.assertIn("phoneclaimd: debug:", d.log_text())
        numbers = SENT_NUMBERS + d.sent_numbers
        log = d.log_text()
        self.assertEqual(leaked_numbers(log, numbers), [],
                         "numbers in " + d.log_path)
        secret = d.log_stream_token.split(" ", 1)[1]
        for token in (d.log_stream_token, secret, d.api_token):
            self.assertNotIn(token, log, "a token is in " + d.log_path)
        checked = 0
        for top, _, files in os.walk(d.state_dir):
            for name in files:
                path = os.path.join(top, name)
                with open(path, "rb") as f:
                    text = f.read().decode("latin-1")
                checked += 1
                self.assertEqual(leaked_numbers(text, numbers), [],
                                 "numbers in " + path)
                self.assertNotIn(secret, text, "token in " + path)
        self.assertGreater(checked, 1)


if __name__ == "__main__":
    unittest.main()
