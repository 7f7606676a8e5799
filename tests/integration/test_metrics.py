"""
GET /metrics against DESIGN.md section 4 and issue 4 point 3: the answer is
Prometheus text exposition format 0.0.4, read here by a small strict parser
(HELP and TYPE before the samples, valid names, label syntax and escapes,
float values, one group per family, no duplicate series, histogram buckets
cumulative and ending in +Inf equal to _count), with the exact counts that
the test caused: answers by endpoint and status (every answer once, the
errors sent at once and those sent after the log flush alike, /metrics
itself included), log-stream events by outcome, claims by state, conflicts,
the latency histogram, the latest event.  It never shows a number, a user id
or a token (I5).
"""

import datetime
import http.client
import json
import math
import os
import re
import secrets
import subprocess
import threading
import time
import unittest

import harness
from harness import DaemonTestCase, digits, fresh_number, fresh_user

harness.require_daemon()

PREFIX = "phoneclaimd_"
ENDPOINTS = ("claims", "log-stream", "healthz", "metrics", "other")
OUTCOMES = ("applied", "duplicate", "ignored", "rejected", "unmatched",
            "ambiguous", "stale")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

# The families the daemon must expose, with their type.
FAMILIES = {
    "build_info": "gauge",
    "start_time_seconds": "gauge",
    "store_ok": "gauge",
    "backfill_state": "gauge",
    "phone_cache_total": "counter",
    "connections_closed_total": "counter",
    "claims": "gauge",
    "conflicts": "gauge",
    "conflicts_resolved_total": "counter",
    "events_total": "counter",
    "ignored_events_total": "counter",
    "undated_events_total": "counter",
    "unreadable_events_total": "counter",
    "last_event_timestamp_seconds": "gauge",
    "last_event_age_seconds": "gauge",
    "requests_total": "counter",
    "request_duration_seconds": "histogram",
}


# A strict parser of the text format ----------------------------------------

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                   r"(?:[eE][+-]?[0-9]+)?\Z")
TIMESTAMP = re.compile(r"-?[0-9]+\Z")


class FormatError(Exception):
    """The text is not valid exposition format 0.0.4."""


def parse_value(text):
    """A sample value: a decimal float, +Inf, -Inf or NaN."""
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not FLOAT.match(text):
        raise FormatError("bad value %r" % text)
    return float(text)


def unescape(text, allowed):
    """Undo the format's backslash escapes; allowed: the escaped chars."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise FormatError("bad escape in %r" % text)
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_labels(text, i):
    """Parse {name="value",...} from text[i] == '{'; return (dict, end)."""
    labels = {}
    i += 1
    while True:
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        m = LABEL_NAME.match(text, i)
        if not m:
            raise FormatError("bad label name at %r" % text[i:])
        name = m.group(0)
        if name.startswith("__"):
            raise FormatError("reserved label name %r" % name)
        if name in labels:
            raise FormatError("label %r twice" % name)
        i = m.end()
        if text[i:i + 2] != "=\"":
            raise FormatError("expected =\" after %r" % name)
        i += 2
        start = i
        while i < len(text) and text[i] != "\"":
            i += 2 if text[i] == "\\" else 1
        if i >= len(text):
            raise FormatError("unterminated label value in %r" % text)
        labels[name] = unescape(text[start:i], "\\\"n")
        i += 1
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "}":
            raise FormatError("expected , or } in %r" % text)


def family_of(sample, families):
    """The family a sample name belongs to (histogram suffixes)."""
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[:-len(suffix)]
        if sample.endswith(suffix) and \
                families.get(base, {}).get("type") == "histogram":
            return base
    raise FormatError("sample %r has no TYPE line before it" % sample)


def check_histogram(name, fam):
    """Each series' buckets: increasing le, cumulative, +Inf == _count."""
    series = {}
    for sample, labels, value in fam["samples"]:
        other = tuple(sorted((k, v) for k, v in labels.items()
                             if k != "le"))
        s = series.setdefault(other, {"buckets": [], "sum": None,
                                      "count": None})
        if sample == name + "_bucket":
            if "le" not in labels:
                raise FormatError("%s_bucket without le" % name)
            s["buckets"].append((parse_value(labels["le"]), value))
        elif sample == name + "_sum":
            s["sum"] = value
        elif sample == name + "_count":
            s["count"] = value
        else:
            raise FormatError("%r in histogram %s" % (sample, name))
    for other, s in series.items():
        b = s["buckets"]
        if s["sum"] is None or s["count"] is None or not b:
            raise FormatError("histogram %s %r incomplete" % (name, other))
        if b[-1][0] != math.inf:
            raise FormatError("histogram %s %r: last le is not +Inf" %
                              (name, other))
        for (le0, n0), (le1, n1) in zip(b, b[1:]):
            if not le0 < le1 or n1 < n0:
                raise FormatError("histogram %s %r: buckets not "
                                  "cumulative" % (name, other))
        if b[-1][1] != s["count"]:
            raise FormatError("histogram %s %r: +Inf %r != count %r" %
                              (name, other, b[-1][1], s["count"]))
        if s["count"] < 0 or s["sum"] < 0:
            raise FormatError("histogram %s %r negative" % (name, other))


def parse_exposition(text):
    """Parse the whole text; return {family: {"type", "help", "samples":
    [(sample name, labels, value)]}}.  Raise FormatError on anything the
    format does not allow.  Stricter than Prometheus in one point: blank
    lines (which it ignores) are refused, since the daemon writes none."""
    if not text.endswith("\n"):
        raise FormatError("the text does not end with a newline")
    if "\r" in text:
        raise FormatError("carriage return in the text")
    families, seen, done, current = {}, set(), set(), None
    for line in text[:-1].split("\n"):
        if line == "":
            raise FormatError("blank line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[0] != "#" or \
                    parts[1] not in ("HELP", "TYPE"):
                continue		# a plain comment
            kind, name = parts[1], parts[2]
            if not METRIC_NAME.match(name):
                raise FormatError("bad metric name %r" % name)
            if len(parts) < 4:
                raise FormatError("%s line without text: %r" % (kind, line))
            fam = families.setdefault(name, {"type": None, "help": None,
                                             "samples": []})
            if fam["samples"] or name in done:
                raise FormatError("%s for %s after its samples" %
                                  (kind, name))
            if kind == "HELP":
                if fam["help"] is not None:
                    raise FormatError("second HELP for %s" % name)
                fam["help"] = unescape(parts[3], "\\n")
            else:
                if fam["type"] is not None:
                    raise FormatError("second TYPE for %s" % name)
                if parts[3] not in TYPES:
                    raise FormatError("bad TYPE %r" % parts[3])
                fam["type"] = parts[3]
            continue
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if not m:
            raise FormatError("bad sample line %r" % line)
        sample, i = m.group(0), m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = parse_labels(line, i)
        rest = line[i:]
        if not rest.startswith(" "):
            raise FormatError("no space before the value: %r" % line)
        fields = rest[1:].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and
                                         not TIMESTAMP.match(fields[1])):
            raise FormatError("bad value or timestamp: %r" % line)
        value = parse_value(fields[0])
        name = family_of(sample, families)
        if families[name]["type"] is None:
            raise FormatError("sample of %s before its TYPE" % name)
        if name != current:
            if name in done:
                raise FormatError("samples of %s not in one group" % name)
            if current is not None:
                done.add(current)
            current = name
        key = (sample, tuple(sorted(labels.items())))
        if key in seen:
            raise FormatError("duplicate series %r" % (key,))
        seen.add(key)
        if families[name]["type"] == "counter" and not value >= 0:
            raise FormatError("counter %s is %r" % (sample, value))
        families[name]["samples"].append((sample, labels, value))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            check_histogram(name, fam)
    return families


class Metrics:
    """A parsed scrape with lookups by family and labels."""

    def __init__(self, reply):
        self.reply = reply
        self.text = reply.raw.decode("utf-8")
        self.families = parse_exposition(self.text)

    def samples(self, family, sample=None):
        fam = self.families.get(PREFIX + family)
        if fam is None:
            raise AssertionError("no family %s%s" % (PREFIX, family))
        want = PREFIX + (sample or family)
        return [(labels, v) for s, labels, v in fam["samples"] if s == want]

    def value(self, family, sample=None, **labels):
        """The value of one series, or None when it is absent."""
        for got, v in self.samples(family, sample):
            if got == labels:
                return v
        return None

    def by(self, family, label, sample=None, **fixed):
        """{label value: value} for the series matching fixed labels."""
        out = {}
        for got, v in self.samples(family, sample):
            if all(got.get(k) == x for k, x in fixed.items()):
                out[got[label]] = v
        return out

    def requests(self):
        """{(endpoint, code): count} of requests_total."""
        return {(l["endpoint"], int(l["code"])): int(v)
                for l, v in self.samples("requests_total")}


# Test data -------------------------------------------------------------------

def iso(when):
    """Format an aware datetime like Auth0: 2026-11-27T10:30:00.000Z."""
    when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + \
        "%03dZ" % (when.microsecond // 1000)


_log_ids = iter(range(1, 10 ** 9))


def new_log_id():
    return "90020261127" + "%045d" % next(_log_ids)


def event(etype, user, date, details=None):
    """An item {"log_id", "data"} whose data is an Auth0 event."""
    lid = new_log_id()
    return {"log_id": lid, "data": {
        "date": iso(date), "type": etype, "description": "metrics test",
        "user_id": user, "details": details or {}, "log_id": lid}}


def enrolled(user, phone, date):
    """gd_enrollment_complete of a phone factor (phone None: no number)."""
    auth = {"type": "phone", "id": "phone|dev_" + secrets.token_hex(6)}
    if phone is not None:
        auth["phone_number"] = phone
    return event("gd_enrollment_complete", user, date,
                 {"authenticator": auth,
                  "enrollment": {"user_id": user, "name": "Phone"}})


# Tests -----------------------------------------------------------------------

class ParserTests(unittest.TestCase):
    """The parser refuses what the format does not allow (so that passing
    it means something)."""

    GOOD = ("# HELP x_total Things.\n# TYPE x_total counter\n"
            "x_total{a=\"q\\\"\\\\\\n\"} 1\n"
            "# TYPE h histogram\n"
            "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
            "h_sum 0.5\nh_count 2\n")

    def test_good_text_parses(self):
        fams = parse_exposition(self.GOOD)
        self.assertEqual(fams["x_total"]["samples"],
                         [("x_total", {"a": "q\"\\\n"}, 1.0)])
        self.assertEqual(fams["x_total"]["help"], "Things.")

    def test_bad_texts_are_refused(self):
        bad = {
            "no final newline": self.GOOD[:-1],
            "sample before TYPE": "x 1\n# TYPE x gauge\n",
            "TYPE after samples": "# TYPE x gauge\nx 1\n# TYPE x gauge\n",
            "bad name": "# TYPE 1x gauge\n1x 1\n",
            "bad label name": "# TYPE x gauge\nx{1a=\"b\"} 1\n",
            "unquoted label": "# TYPE x gauge\nx{a=b} 1\n",
            "bad escape": "# TYPE x gauge\nx{a=\"\\t\"} 1\n",
            "unterminated": "# TYPE x gauge\nx{a=\"b} 1\n",
            "bad value": "# TYPE x gauge\nx one\n",
            "duplicate series": "# TYPE x gauge\nx{a=\"b\"} 1\nx{a=\"b\"} 2\n",
            "split group": "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\n"
                           "x{a=\"\"} 1\n",
            "not cumulative": "# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
                              "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "no +Inf": "# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
                       "h_sum 1\nh_count 1\n",
            "+Inf != count": "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\n"
                             "h_sum 1\nh_count 2\n",
            "negative counter": "# TYPE x counter\nx -1\n",
            "blank line": "# TYPE x gauge\n\nx 1\n",
        }
        for what, text in bad.items():
            with self.subTest(what):
                self.assertRaises(FormatError, parse_exposition, text)


class MetricsTests(DaemonTestCase):
    """Each test runs its own daemon, so that the counts are exact."""

    def scrape(self, d, method="GET"):
        reply = d.request(method, "/metrics")
        self.assertEqual(reply.status, 200, str(reply))
        ctype = [p.strip() for p in reply.content_type.split(";")]
        self.assertEqual(ctype[0], "text/plain", reply.content_type)
        self.assertIn("version=0.0.4", ctype[1:], reply.content_type)
        return reply

    def post_stream(self, d, items, token=None):
        body = items if isinstance(items, bytes) else \
            json.dumps(items).encode()
        return d.request("POST", "/v1/log-stream", body, {
            "Authorization": d.log_stream_token if token is None else token})

    def assertNoSecrets(self, text, d, numbers, users):
        """No number (its last 7 digits in any run of digits), user id or
        token appears in text."""
        runs = re.findall(r"[0-9]+", text)
        for n in numbers:
            tail = digits(n)[-7:]
            self.assertEqual([r for r in runs if tail in r], [],
                             "a phone number leaked")
        for u in users:
            self.assertNotIn(u, text, "a user id leaked")
            self.assertNotIn(u.split("|")[-1], text, "a user id leaked")
        for tok in (d.api_token, d.log_stream_token,
                    d.log_stream_token.split(" ")[-1]):
            self.assertNotIn(tok, text, "a token leaked")

    def test_counts_after_claims_log_stream_and_errors(self):
        start = time.time()
        d = self.own_daemon(pending_ttl=3600)
        a, b, c = fresh_number(), fresh_number(), fresh_number()
        u1, u2, u3, u4, u5 = (fresh_user() for _ in range(5))
        now = datetime.datetime.now(datetime.timezone.utc)
        sec = datetime.timedelta(seconds=1)

        # The claim API: 200 x3, 409, 401, 400, 405.
        self.assertReserved(d.claim(a, u1, "enrollment"), 3600)
        self.assertTaken(d.claim(a, u2, "enrollment"))
        self.assertReserved(d.claim(b, u3, "enrollment"), 3600)
        self.assertError(d.claim(c, u2, "enrollment", token="wrong"), 401,
                         "unauthorized")
        self.assertError(d.post_claims(b"{\"phone_number\": "), 400,
                         "invalid_json")
        self.assertError(d.request("GET", "/v1/claims"), 405,
                         "method_not_allowed")
        # /healthz 200, a 404.
        self.assertJsonReply(d.request("GET", "/healthz"), 200,
                             {"status": "ok"})
        self.assertError(d.request("GET", "/no/such/path"), 404, "not_found")

        # The log stream: applied (u1's enrolment on a), ignored (s and a
        # strange type), unmatched (u4 has nothing pending), rejected (no
        # type), then duplicate (the enrolment again); 401 and 400.
        enrol = enrolled(u1, a, now - 60 * sec)
        latest = now - 30 * sec
        strange = 'we"ird\\type'
        items = [enrol,
                 event("s", u5, latest),
                 event(strange, u5, now - 100 * sec),
                 event("f+" + digits(c), u5, now - 200 * sec),
                 enrolled(u4, None, now - 90 * sec),
                 {"log_id": new_log_id(), "data": {"user_id": u5}}]
        r = self.post_stream(d, items)
        self.assertJsonReply(r, 200, {"received": 6, "applied": 1,
                                      "duplicates": 0, "ignored": 4,
                                      "rejected": 1})
        arrived = time.time()
        self.assertJsonReply(self.post_stream(d, [enrol]), 200,
                             {"received": 1, "applied": 0, "duplicates": 1,
                              "ignored": 0, "rejected": 0})
        self.assertError(self.post_stream(d, [enrol], token="Bearer x"),
                         401, "unauthorized")
        self.assertError(self.post_stream(d, b"not json at all"), 400,
                         "invalid_json")
        # A login challenge on a (held by u1): a conflict, answered 200.
        self.assertResult(d.claim(a, u5, "second-factor-authentication"),
                          "conflict")

        first = Metrics(self.scrape(d))
        m = Metrics(self.scrape(d))

        # Every answer once, under its endpoint and final status.
        want = {("claims", 200): 3, ("claims", 409): 1, ("claims", 401): 1,
                ("claims", 400): 1, ("claims", 405): 1,
                ("healthz", 200): 1, ("other", 404): 1,
                ("log-stream", 200): 2, ("log-stream", 401): 1,
                ("log-stream", 400): 1}
        self.assertEqual(first.requests(), want)
        want[("metrics", 200)] = 1	# the first scrape, not this one
        self.assertEqual(m.requests(), want)
        counts = m.by("request_duration_seconds", "endpoint",
                      "request_duration_seconds_count")
        self.assertEqual(set(counts), set(ENDPOINTS))
        for ep in ENDPOINTS:
            self.assertEqual(counts[ep], sum(n for (e, _), n in want.items()
                                             if e == ep), ep)
        sums = m.by("request_duration_seconds", "endpoint",
                    "request_duration_seconds_sum")
        elapsed = time.time() - start
        for ep in ENDPOINTS:
            self.assertTrue(0 <= sums[ep] < elapsed, (ep, sums[ep]))
        self.assertGreater(sums["claims"], 0)

        # Events by outcome; the outcomes add up to the items received.
        ev = m.by("events_total", "outcome")
        self.assertEqual(ev, {"applied": 1, "duplicate": 1, "ignored": 3,
                              "rejected": 1, "unmatched": 1,
                              "ambiguous": 0, "stale": 0})
        types = m.by("ignored_events_total", "type")
        self.assertEqual(types, {"s": 1, strange: 1, "(other)": 1})
        self.assertIn('type="we\\"ird\\\\type"', m.text)

        # Claims: u1 active on a, u3 pending on b; the challenge conflict.
        self.assertEqual(m.by("claims", "state"),
                         {"active": 1, "pending": 1})
        self.assertEqual(m.value("conflicts"), 1)

        # The latest new event's date (to the millisecond) and its age.
        ts = m.value("last_event_timestamp_seconds")
        self.assertAlmostEqual(ts, latest.timestamp(), delta=0.0015)
        age = m.value("last_event_age_seconds")
        self.assertTrue(0 <= age <= time.time() - arrived + 2, age)

        # The process.
        self.assertEqual(m.value("store_ok"), 1)
        self.assertEqual(m.value("backfill_state"), 0)
        version = d.run("-V").stdout.split()[-1]
        self.assertEqual(m.value("build_info", version=version), 1)
        st = m.value("start_time_seconds")
        self.assertTrue(start - 2 <= st <= time.time() + 2, st)

        # The number cache: every normalisation is a hit or a miss, and a
        # number seen before is a hit.
        cache = m.by("phone_cache_total", "result")
        self.assertEqual(sorted(cache), ["hit", "miss"])
        self.assertGreater(cache["miss"], 0)
        before = cache["hit"]
        d.claim(a, u1)
        self.assertEqual(Metrics(self.scrape(d)).by(
            "phone_cache_total", "result")["hit"], before + 1)

        # Every family, with its TYPE and HELP, and nothing but ours.
        for name, fam in m.families.items():
            self.assertTrue(name.startswith(PREFIX), name)
            self.assertTrue(fam["help"], name)
        self.assertEqual({n[len(PREFIX):]: f["type"]
                          for n, f in m.families.items()}, FAMILIES)

        # Privacy.
        self.assertNoSecrets(m.text, d, [a, b, c], [u1, u2, u3, u4, u5])

    def test_before_any_event(self):
        d = self.own_daemon()
        m = Metrics(self.scrape(d))
        self.assertEqual(m.requests(), {})
        self.assertEqual(m.samples("last_event_timestamp_seconds"), [])
        self.assertEqual(m.samples("last_event_age_seconds"), [])
        self.assertEqual(m.samples("ignored_events_total"), [])
        self.assertEqual(set(m.by("events_total", "outcome").values()), {0})
        self.assertEqual(m.by("claims", "state"),
                         {"active": 0, "pending": 0})
        self.assertEqual(m.value("conflicts"), 0)
        for ep in ENDPOINTS:
            self.assertEqual(m.value("request_duration_seconds",
                                     "request_duration_seconds_count",
                                     endpoint=ep), 0)

    def test_no_token_head_and_other_methods(self):
        d = self.own_daemon()
        reply = self.scrape(d, "HEAD")
        self.assertEqual(reply.raw, b"")
        reply = d.request("POST", "/metrics", b"{}")
        self.assertError(reply, 405, "method_not_allowed")
        self.assertEqual(reply.headers.get("Allow"), "GET, HEAD")
        m = Metrics(self.scrape(d))
        self.assertEqual(m.requests(), {("metrics", 200): 1,
                                        ("metrics", 405): 1})

    def test_store_failure_503_is_counted(self):
        # PANIC_ENV marks the daemon's environment panicked (see
        # test_store_failure.py).  The daemon then exits after a grace of
        # 250 ms, during which a connection already open is still served.
        tool = os.environ.get("PANIC_ENV")
        if not tool or not os.access(tool, os.X_OK):
            self.skipTest("PANIC_ENV is not set")
        d = self.own_daemon(pending_ttl=3600)
        with d.client() as cl:
            self.assertReserved(cl.claim(fresh_number(), fresh_user()), 3600)
            self.assertEqual(self.scrape_on(cl).value("store_ok"), 1)
            r = subprocess.run([tool, d.state_dir], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertError(cl.claim(fresh_number(), fresh_user()), 503,
                             "unavailable")
            m = self.scrape_on(cl)
        self.assertEqual(m.value("store_ok"), 0)
        self.assertEqual(m.samples("claims"), [])
        self.assertEqual(m.samples("conflicts"), [])
        self.assertEqual(m.requests(), {("claims", 200): 1,
                                        ("claims", 503): 1,
                                        ("metrics", 200): 1})
        d.expect_exit()
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 1, d.tail())

    def scrape_on(self, client):
        """GET /metrics on an open connection; return it parsed."""
        reply = client.request("GET", "/metrics")
        self.assertEqual(reply.status, 200, str(reply))
        return Metrics(reply)

    def test_concurrent_answers_each_counted_once(self):
        # Answers that share one log flush are each counted once.
        d = self.own_daemon(pending_ttl=3600)
        threads, per_thread, errors = 8, 15, []

        def worker():
            try:
                with d.client() as cl:
                    for i in range(per_thread):
                        if i % 3 == 2:
                            r = cl.claim(fresh_number(), fresh_user(),
                                         token="wrong")
                            ok = r.status == 401
                        else:
                            r = cl.claim(fresh_number(), fresh_user())
                            ok = r.status == 200
                        if not ok:
                            errors.append(str(r))
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertEqual(errors, [])
        m = Metrics(self.scrape(d))
        n = threads * per_thread
        self.assertEqual(m.requests(), {("claims", 200): n * 2 // 3,
                                        ("claims", 401): n // 3})
        self.assertEqual(m.value("request_duration_seconds",
                                 "request_duration_seconds_count",
                                 endpoint="claims"), n)
        self.assertEqual(m.by("claims", "state"),
                         {"active": 0, "pending": n * 2 // 3})


if __name__ == "__main__":
    unittest.main()
