"""
Abuse (issue 8): attacks on the HTTP server while a probe asks GET
/healthz on a new connection every 25 ms.  Every probe must be answered
200 within PROBE_LIMIT (100 ms, connect to last byte; 300 ms for a daemon
built with AddressSanitizer, several times slower); the worst probe of
each attack is printed.  The probe runs in a process of its own, so that
the attack's threads do not delay it on the GIL.  The answer to each
attack is asserted too, and that it changed nothing.

A real attacker does not share the daemon's CPU; here it does, on a small
machine where make -j2 runs another test beside this one.  So the attack
threads run at a lower priority (nice 10), and an attack whose worst
probe is over the limit is run again, up to TRIES times: a stall that the
daemon causes comes back every time, a moment when the scheduler gave the
machine to someone else does not.  Every try is printed.

test_limits.py checks most limits one request at a time; this file adds
the attacks at scale and at the same time as the probes: slowloris, 2,000
idle connections, header floods, bodies over the limit, chunked bodies,
Content-Length that does not match the body (shorter, longer, twice),
pipelining, invalid UTF-8 and deep JSON nesting.

BigBatchTests (issue 18, point 9) sends the largest batch that the
log-stream token may send (max_body_size, 8 MiB: some 36,000 small
events) while /healthz and POST /v1/claims are probed, each from a
process of its own; the worst probe of each is printed, and must stay
within BATCH_PROBE_LIMIT (TRIES runs, as above).
"""

import http.client
import itertools
import json
import os
import re
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
import unittest

import harness
from harness import DaemonTestCase, HealthProbe, body_of, claim_body, \
    connect, fresh_number, fresh_user, read_response, send_quietly, \
    status_of, wait_closed

harness.require_daemon()

PROBE_LIMIT = 0.100	# seconds for a /healthz answer during an attack
# An AddressSanitizer build (the CI's first pass) is several times slower:
# it checks memory, the plain build (the README's test command) the bound.
if harness.sanitized():
    PROBE_LIMIT = 0.300
TRIES = 3		# runs of an attack before a slow probe fails it
ATTACK_NICE = 10	# the attack threads' priority, below the daemon's
REQUEST_TIMEOUT = 3
CLOSE_LIMIT = REQUEST_TIMEOUT + 3.0	# the tick is once a second; slack
MAX_BODY = 65536
IDLE = 2000		# idle connections
TTL = 600
BATCH_BYTES = 8 * 1024 * 1024	# max_body_size, the default
BATCH_TIMEOUT = 60.0	# seconds the largest batch may take to answer
# The worst probe while the largest batch is applied.  The aim is 100 ms;
# on this 2-core machine, shared, the worst probes were 24-82 ms (38-62 ms
# with AddressSanitizer), and 510-700 ms (5 s and more) when the batch
# held the loop: a bound between them that a busy machine does not reach.
BATCH_PROBE_LIMIT = 1.0 if harness.sanitized() else 0.250
WORST = {}		# attack -> summary of its probes


def report(text):
    print("abuse: " + text, file=sys.stderr, flush=True)


def _niced(target):
    """target, run at ATTACK_NICE in its own thread (Linux sets a nice
    value per thread), so that it yields the CPU to the daemon."""
    def run(*args):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           ATTACK_NICE)
        except OSError:
            pass
        target(*args)
    return run


def run_threads(target, count, *args):
    threads = [threading.Thread(target=_niced(target), args=(i,) + args,
                                daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if any(t.is_alive() for t in threads):
        raise AssertionError("attack threads still running after 60 s")


def split_responses(data):
    """Split raw bytes into (status, body bytes) by Content-Length."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        status = status_of(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


class AbuseTests(DaemonTestCase):
    """One daemon: request_timeout 3 s, max_body_size 64 KiB, room for
    IDLE connections, so that test_idle_connections sees them all held
    open; test_idle_connections_over_the_default_cap starts its own daemon
    with the default max_connections, 1024."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The test and the daemon (which inherits it) need IDLE+ files.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 2 * IDLE + 512
        if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        cls.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cls.d = cls.new_daemon(request_timeout=REQUEST_TIMEOUT,
                               max_body_size=MAX_BODY,
                               max_connections=IDLE + 500,
                               pending_ttl=TTL)

    @classmethod
    def tearDownClass(cls):
        for attack in sorted(WORST):
            report("%-28s %s" % (attack, WORST[attack]))
        super().tearDownClass()

    def setUp(self):
        self.d.ensure_running()

    # Helpers.

    def attack(self, name, fn, tries=TRIES):
        """Run fn() under the health probe; assert every probe was fast.
        fn runs again (up to tries times in all) while the worst probe is
        over the limit; the caller's checks see every run's results."""
        for attempt in range(1, tries + 1):
            with HealthProbe(self.d) as probe:
                result = fn()
                # The probe's first connection may come late on a busy
                # machine.
                deadline = time.monotonic() + 2.0
                while len(probe.times) < 5 and time.monotonic() < deadline:
                    time.sleep(0.01)
            label = name if attempt == 1 else "%s (try %d)" % (name, attempt)
            WORST[label] = probe.summary()
            report("%s: %s" % (label, probe.summary()))
            self.assertEqual(probe.failures[:3], [], "health probes failed")
            self.assertGreaterEqual(len(probe.times), 5, "too few probes")
            if probe.worst <= PROBE_LIMIT:
                return result
        self.fail("a /healthz probe took %.0f ms during %s in each of %d "
                  "tries (last: %s; load average %.1f)" %
                  (1000 * probe.worst, name, tries, probe.summary(),
                   os.getloadavg()[0]))

    def head(self, extra=b"", path=b"/v1/claims", auth=None):
        """Request line and headers up to (not including) the blank line."""
        if auth is None:
            auth = b"Bearer " + self.d.api_token.encode()
        return (b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: " + auth + b"\r\n"
                b"Content-Type: application/json\r\n" + extra)

    def request(self, body, extra=b"", path=b"/v1/claims", auth=None):
        return self.head(extra + b"Content-Length: %d\r\n" % len(body),
                         path, auth) + b"\r\n" + body

    def exchange(self, data, timeout=5.0):
        """Send data on a new connection; the first response's bytes."""
        with connect(self.d) as s:
            send_quietly(s, data)
            return read_response(s, timeout)

    def holders(self, phone):
        return [c["user_id"] for c in self.d.ask("lookup " + phone)["claims"]]

    def assertFree(self, phones):
        held = [p for p in phones if self.holders(p)]
        self.assertEqual(held, [], "%d of %d numbers were claimed" %
                         (len(held), len(phones)))

    def assertServes(self):
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(self.d.claim(phone, user, "enrollment"), TTL)
        self.assertEqual(self.holders(phone), [user])

    # Slow and idle clients.

    def test_slowloris(self):
        """Eight connections send a claim a byte a second (four in the
        headers, four in the body): each is cut off within request_timeout
        (plus the once-a-second tick) without an answer, nothing is
        claimed."""
        phones = [fresh_number() for _ in range(8)]
        cuts = []		# (connection, seconds or None), every run
        answers = []		# whatever a slow connection got back
        lock = threading.Lock()

        def slow(i):
            body = claim_body(phones[i], fresh_user(), "enrollment")
            req = self.request(body)
            # Four start in the headers, four after them.
            sent = 20 if i < 4 else len(req) - len(body)
            with connect(self.d, timeout=30) as s:
                start = time.monotonic()
                if not send_quietly(s, req[:sent]):
                    return
                while sent < len(req):
                    readable, _, _ = select.select([s], [], [], 1.0)
                    if readable:
                        break
                    if not send_quietly(s, req[sent:sent + 1]):
                        break
                    sent += 1
                closed, data = wait_closed(s, CLOSE_LIMIT + 2)
                with lock:
                    if data:
                        answers.append(data)
                    cuts.append((i, None if closed is None else
                                 time.monotonic() - start))

        self.attack("slowloris", lambda: run_threads(slow, 8))
        self.assertEqual(answers, [], "slow requests were answered")
        self.assertGreaterEqual(len(cuts), 8)
        for i, seconds in cuts:
            self.assertIsNotNone(seconds, "slow connection %d never cut" % i)
            self.assertLessEqual(seconds, CLOSE_LIMIT,
                                 "slow connection %d cut after %.1f s" %
                                 (i, seconds))
        self.assertFree(phones)
        self.assertServes()

    def hold_idle(self, socks, burst=IDLE):
        """Open IDLE connections that send nothing (into socks), burst at
        a time with 20 ms between bursts, let the probes run a second with
        all of them open; return when."""
        try:
            for i in range(IDLE):
                if i > 0 and i % burst == 0:
                    time.sleep(0.02)
                socks.append(connect(self.d))
            time.sleep(1.0)
        except OSError:
            pass
        return time.monotonic()

    def test_idle_connections_over_the_default_cap(self):
        """IDLE idle connections against the default max_connections
        (1024): each one over it closes the one idle longest, so the
        probes still get in.  They come 100 at a time, 20 ms apart (all
        2,000 in well under a second): a probe queued behind one burst
        waits for its accepts and closes, ~15 us each here, and on two
        shared cores a burst of 1,000 put that near 100 ms."""
        if self.nofile < 2 * IDLE + 256:
            self.skipTest("RLIMIT_NOFILE %d is too low for %d connections" %
                          (self.nofile, IDLE))
        self.d = self.own_daemon(request_timeout=REQUEST_TIMEOUT,
                                 pending_ttl=TTL)
        socks = []
        try:
            self.attack("%d idle, max_connections 1024" % IDLE,
                        lambda: self.hold_idle(socks, 100), tries=1)
            self.assertEqual(len(socks), IDLE, "could not open them all")
            sel = selectors.DefaultSelector()
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            closed = sum(1 for key, _ in sel.select(1.0)
                         if key.fileobj.recv(1) == b"")
            sel.close()
            # The probes' own connections made room too.
            self.assertGreaterEqual(closed, IDLE - 1024)
            text = self.d.request("GET", "/metrics").raw.decode()
            m = re.search(r"phoneclaimd_connections_closed_total (\d+)",
                          text)
            self.assertGreaterEqual(int(m.group(1)), IDLE - 1024, text)
        finally:
            for s in socks:
                s.close()
            del self.d

    def test_idle_connections(self):
        """IDLE connections that send nothing are all held open without
        slowing the probes, then closed after request_timeout."""
        if self.nofile < 2 * IDLE + 256:
            self.skipTest("RLIMIT_NOFILE %d is too low for %d connections" %
                          (self.nofile, IDLE))
        socks = []
        try:
            opened = self.attack("%d idle connections" % IDLE,
                                 lambda: self.hold_idle(socks), tries=1)
            self.assertEqual(len(socks), IDLE, "could not open them all")
            status = self.d.ask("status")
            self.assertTrue(status["store"]["ok"], status)
            # select() cannot wait on descriptors over FD_SETSIZE.
            sel = selectors.DefaultSelector()
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            left = len(socks)
            deadline = opened + CLOSE_LIMIT + 2
            while left and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    try:
                        closed = key.fileobj.recv(1) == b""
                    except OSError:
                        closed = True
                    if closed:
                        sel.unregister(key.fileobj)
                        left -= 1
            sel.close()
            self.assertEqual(left, 0, "%d idle connections still open "
                             "after request_timeout" % left)
        finally:
            for s in socks:
                s.close()
        self.assertServes()

    # Headers.

    def test_header_flood(self):
        """Four clients send, again and again for 2 s: 2,000 small headers,
        one 64 KiB header line, and (allowed) 300 headers under 16 KiB.
        The first two get 400 and a closed connection; the last is
        served."""
        many = b"".join(b"X-Flood-%04d: v\r\n" % i for i in range(2000))
        huge = b"X-Huge: " + b"v" * 65536 + b"\r\n"
        fine = b"".join(b"X-Fine-%03d: %s\r\n" % (i, b"v" * 30)
                        for i in range(300))
        bad, served, phones = [], [], []
        lock = threading.Lock()

        def flood(i):
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                for kind, extra in (("many", many), ("huge", huge)):
                    phone = fresh_number()
                    data = self.exchange(self.request(
                        claim_body(phone, fresh_user()), extra))
                    with lock:
                        phones.append(phone)
                        if status_of(data) != 400:
                            bad.append((kind, data[:100]))
                phone, user = fresh_number(), fresh_user()
                data = self.exchange(self.request(claim_body(phone, user),
                                                  fine))
                with lock:
                    served.append((phone, user, status_of(data),
                                   body_of(data)))

        self.attack("header flood", lambda: run_threads(flood, 4))
        self.assertEqual(bad[:3], [], "header floods not refused with 400")
        self.assertFree(phones)
        self.assertTrue(served)
        for phone, user, status, body in served:
            self.assertEqual((status, body and body.get("result")),
                             (200, "reserved"))
            self.assertEqual(self.holders(phone), [user])

    # Bodies.

    def test_bodies_over_the_limit(self):
        """Four clients announce 1 MiB bodies and stream 1 MiB chunked
        bodies for 2 s: 413 each time (or a reset after the 413 was sent
        on a chunked stream), and nothing is claimed."""
        statuses = {"length": [], "chunked": []}
        lock = threading.Lock()
        big = b" " * (1 << 20)

        def upload(i):
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                data = self.exchange(self.head(b"Content-Length: %d\r\n\r\n"
                                               % len(big)))
                with connect(self.d) as s:
                    send_quietly(s, self.head(
                        b"Transfer-Encoding: chunked\r\n\r\n"))
                    for off in range(0, len(big), 16384):
                        if not send_quietly(s, b"4000\r\n" +
                                            big[off:off + 16384] + b"\r\n"):
                            break
                    chunked = read_response(s, 5.0)
                with lock:
                    statuses["length"].append(status_of(data))
                    statuses["chunked"].append(status_of(chunked))

        self.attack("bodies over the limit", lambda: run_threads(upload, 4))
        self.assertTrue(statuses["length"])
        self.assertEqual(set(statuses["length"]), {413}, statuses["length"])
        self.assertIn(413, statuses["chunked"])
        self.assertLessEqual(set(statuses["chunked"]), {413, None},
                             statuses["chunked"])
        self.assertServes()

    def test_chunked_bodies(self):
        """Claims sent chunked, in chunks of 1 to 9 bytes, are served like
        any other; a chunk size that is not plain hex is refused, 400
        (issue 18: checked before libevent reads it)."""
        done, refused = [], []
        lock = threading.Lock()

        def chunked(i):
            end = time.monotonic() + 1.5
            for n in itertools.count():
                if time.monotonic() > end:
                    break
                phone, user = fresh_number(), fresh_user()
                body = claim_body(phone, user, "enrollment")
                size = 1 + (i + n) % 9
                data = b"".join(b"%x\r\n%s\r\n" % (len(body[o:o + size]),
                                                   body[o:o + size])
                                for o in range(0, len(body), size))
                reply = self.exchange(self.head(
                    b"Transfer-Encoding: chunked\r\n\r\n") + data +
                    b"0\r\n\r\n")
                with lock:
                    done.append((phone, user, status_of(reply),
                                 body_of(reply)))
                phone = fresh_number()
                body = claim_body(phone, fresh_user())
                reply = self.exchange(self.head(
                    b"Transfer-Encoding: chunked\r\n\r\n") +
                    b"zz\r\n" + body + b"\r\n0\r\n\r\n")
                with lock:
                    refused.append((phone, status_of(reply)))

        self.attack("chunked bodies", lambda: run_threads(chunked, 4))
        for phone, user, status, body in done:
            self.assertEqual((status, body and body.get("result")),
                             (200, "reserved"))
            self.assertEqual(self.holders(phone), [user])
        self.assertEqual({s for _, s in refused}, {400})
        self.assertFree([p for p, _ in refused])

    def test_content_length_mismatch(self):
        """Content-Length shorter than the body: the first bytes are the
        request (400 invalid_json), the rest starts a request that never
        ends (cut off).  Longer than the body: no answer, cut off after
        request_timeout.  Two different Content-Lengths (request smuggling
        behind a proxy that takes the other one): 400 invalid_request and
        closed.
        Nothing is claimed."""
        results = []
        lock = threading.Lock()
        phones = []

        def mismatch(i):
            phone = fresh_number()
            body = claim_body(phone, fresh_user(), "enrollment")
            kind = ("shorter", "longer", "twice, short first",
                    "twice, right first")[i % 4]
            if kind == "shorter":
                req = self.head(b"Content-Length: %d\r\n\r\n" %
                                (len(body) - 5)) + body
            elif kind == "longer":
                req = self.head(b"Content-Length: %d\r\n\r\n" %
                                (len(body) + 50)) + body
            elif kind == "twice, short first":
                req = self.head(b"Content-Length: 20\r\nContent-Length: %d"
                                b"\r\n\r\n" % len(body)) + body
            else:
                req = self.head(b"Content-Length: %d\r\nContent-Length: 20"
                                b"\r\n\r\n" % len(body)) + body
            start = time.monotonic()
            with connect(self.d, timeout=30) as s:
                send_quietly(s, req)
                data = read_response(s, CLOSE_LIMIT + 2)
                closed, more = wait_closed(s, CLOSE_LIMIT + 2)
            with lock:
                phones.append(phone)
                results.append((kind, status_of(data), body_of(data),
                                more, None if closed is None else
                                time.monotonic() - start))

        self.attack("content-length mismatch",
                    lambda: run_threads(mismatch, 12))
        for kind, status, body, more, closed in results:
            with self.subTest(kind=kind):
                self.assertIsNotNone(closed, "never closed")
                self.assertLessEqual(closed, CLOSE_LIMIT + 1)
                self.assertEqual(more, b"")
                if kind == "longer":
                    self.assertIsNone(status)
                else:
                    self.assertEqual(status, 400)
                    if kind == "shorter":
                        self.assertEqual(body, {"error": "invalid_json"})
                    else:
                        self.assertEqual(body, {"error": "invalid_request"})
        self.assertFree(phones)

    # Pipelining.

    def test_pipelined_requests(self):
        """Four connections each send 100 claims and 100 health checks in
        one write: 200 answers each, in order, every claim reserved."""
        got = []
        lock = threading.Lock()

        def pipeline(i):
            pairs = [(fresh_number(), fresh_user()) for _ in range(100)]
            data = b"".join(
                self.request(claim_body(p, u, "enrollment"),
                             b"Connection: keep-alive\r\n") +
                b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
                for p, u in pairs)
            answers = b""
            with connect(self.d, timeout=30) as s:
                s.sendall(data)
                deadline = time.monotonic() + 20
                while len(split_responses(answers)) < 200 and \
                        time.monotonic() < deadline:
                    readable, _, _ = select.select([s], [], [], 0.5)
                    if readable:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        answers += chunk
            with lock:
                got.append((pairs, split_responses(answers)))

        self.attack("pipelined requests", lambda: run_threads(pipeline, 4))
        for pairs, answers in got:
            self.assertEqual(len(answers), 200)
            for n, (phone, user) in enumerate(pairs):
                status, body = answers[2 * n]
                self.assertEqual((status, json.loads(body)["result"]),
                                 (200, "reserved"))
                status, body = answers[2 * n + 1]
                self.assertEqual((status, json.loads(body)),
                                 (200, {"status": "ok"}))
            for phone, user in pairs[::10]:
                self.assertEqual(self.holders(phone), [user])

    # JSON.

    BAD_UTF8 = {
        "invalid byte": b"\xff\xfe",
        "overlong slash": b"\xc0\xaf",
        "overlong NUL": b"\xc0\x80",
        "overlong 3 bytes": b"\xe0\x80\xaf",
        "surrogate": b"\xed\xa0\x80",
        "over U+10FFFF": b"\xf4\x90\x80\x80",
        "5-byte form": b"\xf8\x88\x80\x80\x80",
        "truncated": b"\xe2\x82",
        "lone continuation": b"\x80",
        "escaped lone surrogate": b"\\udc00",
    }

    def test_invalid_utf8(self):
        """Invalid UTF-8 in user_id, in the other strings of a claim, in a
        key: 400 invalid_json (RFC 8259: JSON text is UTF-8).  An escaped
        lone surrogate is valid JSON that is not Unicode: the member's own
        error (invalid_user_id, ...).  In the user id of a log-stream
        event: that event is rejected (or the body refused, for bytes yajl
        refuses itself).  Nothing is stored."""
        results = []
        lock = threading.Lock()
        cases = list(self.BAD_UTF8.items())

        def bodies(phone, bad):
            user = fresh_user().encode()
            num = phone.encode()
            yield "user_id", (b'{"phone_number":"' + num +
                              b'","user_id":"' + user + bad + b'"}')
            yield "phone_number", (b'{"phone_number":"' + num + bad +
                                   b'","user_id":"' + user + b'"}')
            yield "action", (b'{"phone_number":"' + num + b'","user_id":"' +
                             user + b'","action":"enrollment' + bad + b'"}')
            if bad.startswith(b"\\"):	# valid JSON: the members count
                return
            yield "other member", (b'{"phone_number":"' + num +
                                   b'","user_id":"' + user +
                                   b'","note":"' + bad + b'"}')
            yield "key", (b'{"phone_number":"' + num + b'","user_id":"' +
                          user + b'","n' + bad + b'":1}')

        def send(i):
            end = time.monotonic() + 1.5
            for name, bad in itertools.chain(cases[i::3], itertools.cycle(
                    cases[i::3])):
                if time.monotonic() > end:
                    break
                phone = fresh_number()
                for where, body in bodies(phone, bad):
                    data = self.exchange(self.request(body))
                    with lock:
                        results.append(("%s in %s" % (name, where), phone,
                                        status_of(data), body_of(data)))
                item = {"log_id": "9004%040d" % len(results),
                        "data": {"type": "gd_enrollment_complete",
                                 "date": harness.auth0_date(),
                                 "user_id": "@USER@",
                                 "details": {"authenticator": {
                                     "type": "phone",
                                     "phone_number": phone}}}}
                body = json.dumps([item]).encode().replace(
                    b"@USER@", b"auth0|x" + bad)
                data = self.exchange(self.request(
                    body, path=b"/v1/log-stream",
                    auth=self.d.log_stream_token.encode()))
                with lock:
                    results.append(("%s in a log-stream event" % name,
                                    phone, status_of(data), body_of(data)))

        self.attack("invalid UTF-8", lambda: run_threads(send, 3))
        self.assertGreaterEqual(len(results), 6 * len(cases))
        def refused(what, status, body):
            if (status, body) == (400, {"error": "invalid_json"}):
                return not what.startswith("escaped")
            if what.startswith("escaped") and status == 400:
                member = what.rsplit(" ", 1)[1]
                return body == {"error": "invalid_" + member}
            # An event whose user id is not Unicode is rejected.
            return "log-stream" in what and status == 200 and \
                body.get("rejected") == 1 and body.get("applied") == 0

        wrong = [(what, status, body) for what, _, status, body in results
                 if not refused(what, status, body)]
        self.assertEqual(wrong, [], "invalid UTF-8 not refused as "
                         "invalid_json")
        self.assertFree(sorted({phone for _, phone, _, _ in results}))
        self.assertServes()

    def test_one_bad_string_does_not_refuse_a_batch(self):
        """A lone surrogate, as JavaScript escapes one, in a user id makes
        that event rejected (it names no valid user); in a field the daemon
        does not use, it changes nothing.  The rest of the batch is
        applied (I6)."""
        phones = [fresh_number() for _ in range(3)]
        users = [fresh_user() for _ in range(3)]

        def item(i, user, extra):
            data = {"type": "gd_enrollment_complete",
                    "date": harness.auth0_date(), "user_id": user,
                    "details": {"authenticator": {
                        "type": "phone", "phone_number": phones[i]}}}
            data.update(extra)
            return {"log_id": "9005%040d%d" % (os.getpid(), i),
                    "data": data}

        body = json.dumps([
            item(0, users[0], {}),
            item(1, users[1] + "@BAD@", {}),
            item(2, users[2], {"user_agent": "x@BAD@"}),
        ]).encode().replace(b"@BAD@", b"\\udc00")
        data = self.exchange(self.request(
            body, path=b"/v1/log-stream",
            auth=self.d.log_stream_token.encode()))
        self.assertEqual(status_of(data), 200, data)
        got = body_of(data)
        self.assertEqual((got["received"], got["applied"], got["ignored"],
                          got["rejected"]), (3, 2, 0, 1), got)
        self.assertEqual(self.holders(phones[0]), [users[0]])
        self.assertEqual(self.holders(phones[1]), [])
        self.assertEqual(self.holders(phones[2]), [users[2]])

    def test_deep_nesting(self):
        """Four clients post 60 KiB of nesting (arrays, objects, unclosed)
        to both endpoints for 2 s: 400 invalid_json each time."""
        shapes = [b"[" * 60000 + b"]" * 60000,
                  b'{"a":' * 12000 + b"1" + b"}" * 12000,
                  b"[" * 65000]
        bad = []
        count = [0]
        lock = threading.Lock()

        def deep(i):
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                for body in shapes:
                    for path, auth in ((b"/v1/claims", None),
                                       (b"/v1/log-stream",
                                        self.d.log_stream_token.encode())):
                        data = self.exchange(self.request(body[:MAX_BODY],
                                                          path=path,
                                                          auth=auth))
                        with lock:
                            count[0] += 1
                            if (status_of(data), body_of(data)) != \
                                    (400, {"error": "invalid_json"}):
                                bad.append((path, data[:120]))

        self.attack("deep JSON nesting", lambda: run_threads(deep, 4))
        self.assertGreater(count[0], 0)
        self.assertEqual(bad[:3], [], "deep nesting not refused")
        self.assertServes()


# POST /v1/claims on a new connection every interval seconds, one fresh
# number each (numbers from argv, comma-separated), like harness.HealthProbe.
_CLAIM_PROBE_CODE = r"""
import json, select, socket, sys, time
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
interval, timeout = float(sys.argv[4]), float(sys.argv[5])
for i, phone in enumerate(sys.argv[6].split(",")):
    body = json.dumps({"phone_number": phone, "user_id": "auth0|probe%d" % i,
                       "action": "enrollment"}).encode()
    start = time.monotonic()
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                      b"Authorization: Bearer " + token.encode() +
                      b"\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                      % len(body) + body)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        data += repr(e).encode()
    elapsed = time.monotonic() - start
    if data.startswith(b"HTTP/1.1 200 ") and b'"result":"reserved"' in data:
        print("%.6f ok" % elapsed, flush=True)
    else:
        print("%.6f FAIL %r" % (elapsed, data[:200]), flush=True)
    readable, _, _ = select.select([sys.stdin], [], [], interval)
    if readable:
        break
"""


class ClaimProbe(HealthProbe):
    """POST /v1/claims (enrollment, a fresh number and user each time) on a
    new connection every interval seconds, from a process of its own;
    each answer is timed from connect() to the last byte and must be 200
    reserved.  The numbers are given, so that the test can check them."""

    def __init__(self, daemon, numbers, interval=0.025, timeout=5.0):
        super().__init__(daemon, interval, timeout)
        self.numbers = numbers

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CLAIM_PROBE_CODE, self.daemon.host,
             str(self.daemon.port), self.daemon.api_token,
             str(self.interval), str(self.timeout), ",".join(self.numbers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=harness._die_with_parent)
        self.reader.start()
        return self


_batch_counter = itertools.count(1)


def big_batch(limit):
    """A log-stream body of at most limit bytes: a JSON array of small
    events shaped like Auth0's (log id, date, type, client, ip, user), one
    in forty a phone enrolment (a fresh number) and one in forty the
    deletion of an earlier event's user; the rest change nothing.
    Returns (body, items, [(number, user) enrolled and not deleted])."""
    run = next(_batch_counter)
    now = time.time()
    types = ("s", "f", "gd_send_sms", "seacft", "slo", "fp")
    items, kept, size, i = [], {}, 2, 0
    while True:
        when = now - 60 + (i % 40) * 0.01
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
            ".%03dZ" % (int(when * 1000) % 1000)
        user = "auth0|big%d-%d" % (run, i)
        data = {"date": date, "type": types[i % len(types)],
                "client_id": "Tst0Client0Id0Written0For0Tests",
                "ip": "192.0.2.10", "user_id": user}
        if i % 40 == 7:
            phone = fresh_number()
            data = {"date": date, "type": "gd_enrollment_complete",
                    "user_id": user, "details": {"authenticator": {
                        "type": "sms", "phone_number": phone}}}
            kept[user] = phone
        elif i % 80 == 23:
            data = {"date": date, "type": "sdu",
                    "user_id": "auth0|big%d-%d" % (run, i - 16)}
        text = json.dumps({"log_id": "90020261127%03d%042d" % (run, i),
                           "data": data})
        if size + len(text) + 2 > limit:
            break
        if data["type"] == "sdu":
            kept.pop(data["user_id"], None)
        items.append(text)
        size += len(text) + 2
        i += 1
    body = ("[" + ", ".join(items) + "]").encode()
    return body, len(items), [(p, u) for u, p in kept.items()]


class BigBatchCase(DaemonTestCase):
    """Helpers for the largest batch (max_body_size, 8 MiB by default)."""

    def post_batch(self, body, d=None):
        d = d or self.d
        conn = http.client.HTTPConnection(d.host, d.port,
                                          timeout=BATCH_TIMEOUT)
        try:
            conn.request("POST", "/v1/log-stream", body,
                         {"Authorization": d.log_stream_token,
                          "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def holders(self, phone, d=None):
        return [c["user_id"] for c in
                (d or self.d).ask("lookup " + phone)["claims"]]

    def assertHeld(self, enrolled, d=None):
        for phone, user in enrolled:
            self.assertEqual(self.holders(phone, d), [user], phone)

    def assertServesClaims(self):
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(self.d.claim(phone, user, "enrollment"), TTL)

    def send_in_background(self, d, body):
        """Post body from a thread.  Returns the thread and the list that
        gets its answer: (status, body), or the error."""
        result = []

        def send():
            try:
                result.append(self.post_batch(body, d))
            except (OSError, http.client.HTTPException) as e:
                result.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        return t, result

    def wait_applying(self, d, enrolled, thread):
        """Wait until the batch's first enrolment (in its first slice) is
        committed."""
        deadline = time.monotonic() + BATCH_TIMEOUT
        while not self.holders(enrolled[0][0], d):
            self.assertTrue(thread.is_alive() and time.monotonic() <
                            deadline, "the batch did not start")
            time.sleep(0.002)

    def assertEachOnce(self, d, body, count, enrolled):
        """Sent again, the batch applies what was not committed, and then
        nothing; every enrolment is held by its user alone."""
        status, again = self.post_batch(body, d)
        self.assertEqual(status, 200, again)
        self.assertEqual(again["received"], count)
        self.assertEqual(again["applied"] + again["ignored"] +
                         again["duplicates"], count, again)
        status, third = self.post_batch(body, d)
        self.assertEqual((status, third["duplicates"]), (200, count))
        self.assertHeld(enrolled, d)
        return again["duplicates"]


class BigBatchTests(BigBatchCase):
    """One daemon with the default max_body_size (8 MiB).  The largest
    batch is applied while the claim API and /healthz are probed: the
    daemon parses it beside the event loop and applies it in slices,
    going back to the loop between them, so every probe is answered
    within BATCH_PROBE_LIMIT (issue 18, point 9); the batch is answered
    after its last slice is on disk, with every event applied once."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.d = cls.new_daemon(pending_ttl=TTL)

    def test_largest_batch_leaves_the_loop_free(self):
        for attempt in range(1, TRIES + 1):
            body, count, enrolled = big_batch(BATCH_BYTES)
            numbers = [fresh_number() for _ in range(2000)]
            with HealthProbe(self.d) as health, \
                    ClaimProbe(self.d, numbers) as claims:
                time.sleep(0.2)
                start = time.monotonic()
                status, answer = self.post_batch(body)
                took = time.monotonic() - start
                time.sleep(0.2)
            worst = max(health.worst or 0, claims.worst or 0)
            label = "largest batch (try %d)" % attempt
            WORST[label] = "%.0f ms" % (1000 * worst)
            report("%s: %d items, %.2f MiB, answered %d in %.2f s; /healthz"
                   " %s; POST /v1/claims %s" % (
                       label, count, len(body) / 1048576.0, status, took,
                       health.summary(), claims.summary()))
            self.assertEqual(status, 200, answer)
            self.assertEqual(answer["received"], count)
            self.assertEqual(answer["duplicates"] + answer["rejected"], 0)
            self.assertEqual(health.failures[:3], [], "health probes failed")
            self.assertEqual(claims.failures[:3], [], "claim probes failed")
            self.assertGreaterEqual(len(health.times), 5, "too few probes")
            self.assertGreaterEqual(len(claims.times), 5, "too few probes")
            for phone, user in enrolled[::25]:
                self.assertEqual(self.holders(phone), [user])
            for phone in numbers[:len(claims.times)][::10]:
                self.assertEqual(len(self.holders(phone)), 1, phone)
            if worst <= BATCH_PROBE_LIMIT:
                break
        else:
            self.fail("a probe took %.0f ms while the largest batch was "
                      "applied, in each of %d tries (load average %.1f)" %
                      (1000 * worst, TRIES, os.getloadavg()[0]))
        # Delivered again, it changes nothing.
        status, answer = self.post_batch(body)
        self.assertEqual((status, answer["duplicates"]), (200, count))

    def test_client_that_leaves_during_the_batch(self):
        """A client that closes its connection (or resets it) while its
        batch is applied: the batch is applied all the same, the daemon
        goes on, and the request queued behind it is answered."""
        body, count, enrolled = big_batch(BATCH_BYTES)
        for linger in (False, True):
            with connect(self.d) as s:
                if linger:	# close() sends a reset
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\1\0\0\0\0\0\0\0")
                s.sendall(b"POST /v1/log-stream HTTP/1.1\r\n"
                          b"Host: localhost\r\nAuthorization: " +
                          self.d.log_stream_token.encode() +
                          b"\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) +
                          body)
            self.assertServesClaims()
        status, answer = self.post_batch(body)
        self.assertEqual((status, answer["duplicates"]), (200, count))
        self.assertHeld(enrolled[::25])
        self.assertTrue(self.d.running())

    def test_batches_at_once_are_applied_in_turn(self):
        """Three large batches sent at once, overlapping by half: each
        event is applied once (the overlap counts as duplicates) and every
        enrolment is held by its user alone."""
        body, count, enrolled = big_batch(BATCH_BYTES // 2)
        items = json.loads(body)
        third = len(items) // 3
        parts = [items[:2 * third], items[third:], items[:third] +
                 items[2 * third:]]
        answers = [None] * len(parts)

        def send(i):
            answers[i] = self.post_batch(json.dumps(parts[i]).encode())

        threads = [threading.Thread(target=send, args=(i,))
                   for i in range(len(parts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BATCH_TIMEOUT)
        self.assertEqual([a[0] for a in answers], [200] * 3, answers)
        new = sum(a[1]["applied"] + a[1]["ignored"] for a in answers)
        dups = sum(a[1]["duplicates"] for a in answers)
        self.assertEqual((new, dups), (count, count), answers)
        self.assertHeld(enrolled)


class BigBatchFailureTests(BigBatchCase):
    """The largest batch and a daemon that must stop half way through it:
    its store fails, or it is told to stop.  Each test starts its own
    daemon.  Nothing is answered 200 that is not on disk, and the batch
    sent again applies what the slices committed before did not: each
    event once."""

    def test_store_failure_during_the_batch_is_503(self):
        tool = os.environ.get("PANIC_ENV")
        if not tool or not os.access(tool, os.X_OK):
            self.skipTest("PANIC_ENV is not set")
        d = self.own_daemon(pending_ttl=TTL)
        body, count, enrolled = big_batch(BATCH_BYTES)
        thread, result = self.send_in_background(d, body)
        self.wait_applying(d, enrolled, thread)
        # An answer waits for a log flush: the slices so far are on disk.
        self.assertEqual(d.request("GET", "/healthz").status, 200)
        r = subprocess.run([tool, d.state_dir], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        thread.join(BATCH_TIMEOUT)
        answer = result[0]
        report("largest batch, store failed half way: %s" % (answer,))
        if not isinstance(answer, Exception):
            self.assertEqual(answer, (503, {"error": "unavailable"}))
        d.expect_exit()
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 1, d.tail())
        d.start()
        kept = self.assertEachOnce(d, body, count, enrolled)
        report("largest batch, store failed half way: %d of %d events "
               "were on disk" % (kept, count))
        self.assertGreater(kept, 0)
        self.assertLess(kept, count)

    def test_stop_during_the_batch(self):
        """SIGTERM while the batch is applied: the daemon finishes it
        within its grace time or drops it (the client sees the connection
        close, and Auth0 sends it again), and exits 0."""
        d = self.own_daemon(pending_ttl=TTL)
        body, count, enrolled = big_batch(BATCH_BYTES)
        thread, result = self.send_in_background(d, body)
        self.wait_applying(d, enrolled, thread)
        self.assertEqual(d.stop(), 0, d.tail())
        thread.join(BATCH_TIMEOUT)
        report("largest batch, stopped half way: %s" % (result[0],))
        if not isinstance(result[0], Exception):
            self.assertEqual(result[0][0], 200, result)
        d.start()
        self.assertEachOnce(d, body, count, enrolled)


class FileLimitTests(DaemonTestCase):
    """A daemon started with the usual soft limit of 1024 open files and
    max_connections = 1200 raises the limit itself: 1,100 idle connections
    are all accepted (no EMFILE, which would pause the listener and leave
    the probes in the backlog for seconds) and /healthz stays fast."""

    CONNECTIONS = 1100

    def test_soft_file_limit_is_raised_for_max_connections(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2 * self.CONNECTIONS + \
                512:
            self.skipTest("hard RLIMIT_NOFILE %d is too low" % hard)
        d = self.own_daemon(start=False, max_connections=1200,
                            request_timeout=REQUEST_TIMEOUT)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        try:
            d.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (max(soft, 2 * self.CONNECTIONS + 512), hard))
        socks = []

        def hold():
            for _ in range(self.CONNECTIONS):
                socks.append(connect(d))
            time.sleep(1.0)

        for attempt in range(1, TRIES + 1):
            try:
                with HealthProbe(d) as probe:
                    hold()
            finally:
                for s in socks:
                    s.close()
                socks.clear()
            report("%d idle connections, soft limit 1024 (try %d): %s" %
                   (self.CONNECTIONS, attempt, probe.summary()))
            self.assertNotIn("Too many open files", d.log_text())
            self.assertNotIn("not accepting more", d.log_text())
            self.assertEqual(probe.failures[:3], [])
            if probe.worst <= PROBE_LIMIT:
                return
        self.fail("a /healthz probe took %.0f ms in each of %d tries (last: "
                  "%s; load average %.1f)" % (1000 * probe.worst, TRIES,
                                              probe.summary(),
                                              os.getloadavg()[0]))

if __name__ == "__main__":
    unittest.main()
