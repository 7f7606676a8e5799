"""
Limits on clients (DESIGN I6): request_timeout against slow and idle
clients, max_connections, max_body_size, header size and JSON depth.
Each limit gets an answer or a closed connection, and changes nothing.
"""

import fcntl
import os
import random
import re
import select
import socket
import struct
import sys
import termios
import time
import unittest

import harness
from harness import DaemonTestCase, claim_body, connect, fresh_number, \
    fresh_user, raw_claim_request, read_response, status_of, body_of, \
    send_quietly, wait_closed

harness.require_daemon()

TTL = 600
REQUEST_TIMEOUT = 2
CLOSE_LIMIT = 5.0	# request_timeout + 2 s, and a little slack
NEVER = 10.0		# a connection still open after this was never cut
MIB = 1024 * 1024


def read_answers(s, n, timeout):
    """Read from s until n HTTP answers are in, it closes, or timeout
    seconds pass; return what came."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"HTTP/1.1 ") < n and time.monotonic() < deadline:
        readable, _, _ = select.select([s], [], [], 0.2)
        if readable:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


class LimitsCase(DaemonTestCase):
    """One daemon per class (self.d), unless shared is False."""

    conf = {}
    shared = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.shared:
            cls.d = cls.new_daemon(**cls.conf)

    def setUp(self):
        if self.shared:
            self.d.ensure_running()

    def assertServes(self):
        """A valid reservation by a new user still works."""
        self.assertReserved(self.d.claim(fresh_number(), fresh_user()), TTL)

    def assertFree(self, phone):
        self.assertReserved(self.d.claim(phone, fresh_user()), TTL)


class RequestTimeoutTests(LimitsCase):
    """request_timeout = 2: a request must be complete within 2 s."""

    conf = {"request_timeout": REQUEST_TIMEOUT}

    def trickle(self, sock, data, start):
        """Send data one byte every 0.5 s until the daemon closes.

        Return the seconds from start until the connection was closed, or
        None if it was still open after NEVER seconds.
        """
        for byte in data:
            if time.monotonic() - start > NEVER:
                return None
            if not send_quietly(sock, bytes([byte])):
                return time.monotonic() - start
            closed, _ = wait_closed(sock, 0.5)
            if closed is not None:
                return time.monotonic() - start
        self.fail("ran out of bytes to trickle")

    def assertCutOff(self, elapsed, what):
        self.assertIsNotNone(elapsed, "%s: connection still open after "
                             "%.0f s" % (what, NEVER))
        self.assertLess(elapsed, CLOSE_LIMIT, "%s: closed only after %.1f s "
                        "(request_timeout = %d)" % (what, elapsed,
                                                    REQUEST_TIMEOUT))

    def test_slow_headers_are_cut_off(self):
        with connect(self.d) as s:
            start = time.monotonic()
            s.sendall(b"POST /v1/claims HTTP/1.1\r\n")
            elapsed = self.trickle(s, b"Host: localhost\r\nX-Slow: " +
                                   b"a" * 100, start)
        self.assertCutOff(elapsed, "slow headers")
        self.assertServes()

    def test_slow_body_is_cut_off(self):
        phone = fresh_number()
        body = claim_body(phone, fresh_user()) + b" " * 100
        head = (b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + self.d.api_token.encode() +
                b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        with connect(self.d) as s:
            start = time.monotonic()
            s.sendall(head)
            elapsed = self.trickle(s, body, start)
        self.assertCutOff(elapsed, "slow body")
        self.assertFree(phone)

    def test_idle_new_connection_is_closed(self):
        with connect(self.d) as s:
            elapsed, _ = wait_closed(s, NEVER)
        self.assertCutOff(elapsed, "idle connection")

    def test_idle_keep_alive_connection_is_closed(self):
        with self.d.client() as c:
            self.assertReserved(c.claim(fresh_number(), fresh_user()), TTL)
            self.assertIsNotNone(c.conn.sock, "HTTP/1.1 connection was not "
                                 "kept alive")
            elapsed, _ = wait_closed(c.conn.sock, NEVER)
        self.assertCutOff(elapsed, "idle keep-alive connection")

    def test_request_in_pieces_within_the_timeout_is_answered(self):
        phone = fresh_number()
        request = raw_claim_request(self.d, phone, fresh_user())
        third = len(request) // 3
        with connect(self.d) as s:
            for piece in (request[:third], request[third:2 * third],
                          request[2 * third:]):
                s.sendall(piece)
                time.sleep(0.4)
            data = read_response(s, 5.0)
        self.assertEqual(status_of(data), 200, data)
        self.assertEqual(body_of(data).get("result"), "reserved", data)

    def test_second_request_after_a_short_pause_is_answered(self):
        with self.d.client() as c:
            self.assertReserved(c.claim(fresh_number(), fresh_user()), TTL)
            time.sleep(1.0)
            self.assertReserved(c.claim(fresh_number(), fresh_user()), TTL)


class RequestTimeoutPhaseTests(LimitsCase):
    """request_timeout = 1: a request sent in 0.7 s is always answered.

    Ten requests start a tenth of a second apart, so that one of them
    starts at each phase of the daemon's clock: a deadline kept in whole
    seconds would cut some of them after less than request_timeout.
    """

    conf = {"request_timeout": 1}
    span = 0.7

    def test_request_sent_in_less_than_the_timeout_is_answered(self):
        start = time.monotonic() + 0.1
        plan = []	# (when, index, bytes); index's first entry connects
        for i in range(10):
            request = raw_claim_request(self.d, fresh_number(), fresh_user())
            pieces = (request[:20], request[20:-10], request[-10:])
            for k, piece in enumerate(pieces):
                plan.append((start + 0.1 * i + k * self.span / 2, i, piece))
        plan.sort(key=lambda step: step[0])
        socks, opened, took = {}, {}, {}
        try:
            for when, i, piece in plan:
                time.sleep(max(0.0, when - time.monotonic()))
                if i not in socks:
                    socks[i] = connect(self.d)
                    opened[i] = time.monotonic()
                send_quietly(socks[i], piece)
                took[i] = time.monotonic() - opened[i]
            answers = [read_response(socks[i], 5.0) for i in range(10)]
        finally:
            for s in socks.values():
                s.close()
        # A request this process was too slow to send in time proves
        # nothing: count only those sent within 0.9 s.
        cut = ["#%d sent in %.2f s: %r" % (i, took[i], a[:30])
               for i, a in enumerate(answers)
               if status_of(a) != 200 and took[i] < 0.9]
        self.assertEqual(cut, [], "requests sent in less than "
                         "request_timeout = 1 s were not answered")


class ConnectionCapTests(LimitsCase):
    """max_connections = 4: a 5th closes the one idle longest."""

    conf = {"max_connections": 4}

    def open_idle(self, count):
        socks = [connect(self.d) for _ in range(count)]
        time.sleep(0.5)		# let the daemon accept them
        return socks

    def test_fifth_connection_closes_the_longest_idle_one(self):
        first = connect(self.d)
        time.sleep(0.3)
        idle = [first] + self.open_idle(3)
        try:
            fifth = connect(self.d)
            fifth.sendall(raw_claim_request(self.d, fresh_number(),
                                            fresh_user()))
            with fifth:
                data = read_response(fifth, 5.0)
            self.assertEqual(status_of(data), 200, data)
            self.assertEqual(body_of(data).get("result"), "reserved", data)
            # The first (idle longest) was closed; the others are open.
            readable, _, _ = select.select([first], [], [], 2.0)
            self.assertEqual(readable, [first], "oldest idle not closed")
            self.assertEqual(first.recv(100), b"")
            readable, _, _ = select.select(idle[1:], [], [], 0.2)
            self.assertEqual(readable, [], "a newer idle one was closed")
        finally:
            for s in idle:
                s.close()
        text = self.d.request("GET", "/metrics").raw.decode()
        self.assertRegex(text, r"phoneclaimd_connections_closed_total [1-9]")

    def test_many_idle_connections_cannot_keep_a_client_out(self):
        idle = self.open_idle(20)
        try:
            for _ in range(5):
                start = time.monotonic()
                reply = self.d.request("GET", "/healthz")
                self.assertEqual(reply.status, 200)
                self.assertLess(time.monotonic() - start, 2.0)
        finally:
            for s in idle:
                s.close()

    def test_four_connections_are_allowed(self):
        idle = self.open_idle(3)
        try:
            with self.d.client(timeout=3.0) as c:
                self.assertReserved(c.claim(fresh_number(), fresh_user()),
                                    TTL)
        finally:
            for s in idle:
                s.close()

    def test_queued_connections_are_all_served(self):
        idle = self.open_idle(4)
        queued = []
        try:
            for _ in range(3):
                s = connect(self.d)
                s.sendall(raw_claim_request(self.d, fresh_number(),
                                            fresh_user()))
                queued.append(s)
        finally:
            for s in idle:
                s.close()
        for s in queued:
            with s:
                data = read_response(s, 5.0)
            self.assertEqual(status_of(data), 200, data)


class UnreadAnswerCase(LimitsCase):
    """Issue 18, point 4: clients that pipeline requests and never read
    their answers.  request_timeout is long here, so that it is not what
    frees a slot or stops them."""

    conf = {"request_timeout": 30}
    # A request that is cheap to send and whose answer (about 9 KiB) is
    # not: the answers fill the socket buffers within a fraction of a
    # second.
    REQUEST = (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Pad: " +
               b"a" * 4000 + b"\r\n\r\n")
    PROBE_LIMIT = 5.0	# generous: the issue saw 8 s stalls

    def rss(self):
        with open("/proc/%d/status" % self.d.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        self.fail("no VmRSS")

    def never_reader(self, data, seconds=0.3):
        """Connect with a small receive buffer, send as much of data as
        the daemon takes within seconds, and never read.  Return the
        socket and the bytes sent."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((self.d.host, self.d.port))
        s.setblocking(False)
        sent, deadline = 0, time.monotonic() + seconds
        while sent < len(data) and time.monotonic() < deadline:
            _, w, _ = select.select([], [s], [], 0.05)
            if not w:
                continue
            try:
                sent += s.send(data[sent:sent + 65536])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                break
        return s, sent

    def probe(self):
        """GET /healthz on a new connection; (seconds, raw answer)."""
        start = time.monotonic()
        try:
            with connect(self.d, timeout=self.PROBE_LIMIT) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                          b"Connection: close\r\n\r\n")
                data = read_response(s, self.PROBE_LIMIT)
        except OSError as e:
            data = repr(e).encode()
        return time.monotonic() - start, data

    def open_files(self):
        """How many descriptors the daemon has open."""
        return len(os.listdir("/proc/%d/fd" % self.d.proc.pid))


class UnreadAnswerTimeoutTests(UnreadAnswerCase):
    """request_timeout = 2 bounds the time an answer may wait unread.  The
    daemon's descriptors tell when it closed the connection: the client
    cannot see it without reading (the FIN waits behind the answers)."""

    conf = {"request_timeout": REQUEST_TIMEOUT}

    def test_a_client_that_never_reads_is_cut_off(self):
        self.assertServes()
        time.sleep(0.2)		# that connection is closed
        before = self.open_files()
        s, _ = self.never_reader(self.REQUEST * 2000)
        with s:
            start = time.monotonic()
            self.assertGreater(self.open_files(), before)
            while self.open_files() > before and \
                    time.monotonic() - start < NEVER:
                time.sleep(0.1)
            elapsed = time.monotonic() - start
        self.assertLess(elapsed, CLOSE_LIMIT, "a connection whose answers "
                        "are not read was open after %.1f s" % elapsed)
        self.assertServes()


class UnreadAnswerCapTests(UnreadAnswerCase):
    """With max_connections = 4 taken by clients that never read, a new
    connection closes one of them, so /healthz is still answered (before,
    the listener stayed off until request_timeout cut one of them)."""

    conf = {"max_connections": 4, "request_timeout": 30}

    def test_healthz_is_answered_past_clients_that_never_read(self):
        socks = []
        try:
            for _ in range(6):
                socks.append(self.never_reader(self.REQUEST * 2000)[0])
            time.sleep(1.5)		# their answers fill the buffers
            times = []
            for _ in range(5):
                elapsed, data = self.probe()
                times.append(elapsed)
                self.assertEqual(status_of(data), 200,
                                 "after %.1f s: %r" % (elapsed, data[:200]))
                socks.append(self.never_reader(self.REQUEST * 2000)[0])
                time.sleep(0.3)
            sys.stderr.write("limits: /healthz past clients that never "
                             "read: worst %.0f ms\n" % (1000 * max(times)))
        finally:
            for s in socks:
                s.close()
        self.assertServes()


class UnreadAnswerInputTests(UnreadAnswerCase):
    """What a client sends while its answer waits unread is not all read
    into the daemon's memory (a daemon of its own, so that memory freed
    by other tests does not hide the growth).  What the daemon read is
    what was sent less what the kernel still holds: in the client's send
    queue and in the daemon's receive queue (/proc/net/tcp)."""

    def receive_queue(self, client):
        """Bytes the daemon's socket of this connection has not read."""
        port = client.getsockname()[1]
        want = ("0100007F:%04X" % self.d.port, "0100007F:%04X" % port)
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if (fields[1], fields[2]) == want:
                    return int(fields[4].split(":")[1], 16)
        self.fail("the daemon's side of the connection is not in "
                  "/proc/net/tcp")

    def test_pipelined_requests_behind_an_unread_answer_are_not_all_read(self):
        self.assertServes()
        before = self.rss()
        s, sent = self.never_reader(self.REQUEST * 20000, seconds=2.0)
        with s:
            time.sleep(0.5)
            unsent = struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ,
                                                    b"\0" * 4))[0]
            read = sent - unsent - self.receive_queue(s)
            grown = self.rss() - before
        sys.stderr.write("limits: a client that never reads sent %.1f MiB, "
                         "the daemon read %.1f MiB; RSS grew %.1f MiB\n" % (
                             sent / MIB, read / MIB, grown / MIB))
        self.assertLess(read, 4 * MIB, "the daemon read all that a client "
                        "that never reads sent")
        # AddressSanitizer's allocator keeps freed memory in quarantine.
        if not harness.sanitized():
            self.assertLess(grown, 8 * MIB)
        self.assertServes()


class ConnectionHandlingTests(LimitsCase):

    def test_clients_that_leave_before_the_answer(self):
        for _ in range(20):
            with connect(self.d) as s:
                s.sendall(raw_claim_request(self.d, fresh_number(),
                                            fresh_user()))
        for _ in range(20):
            with connect(self.d) as s:
                s.sendall(raw_claim_request(self.d, fresh_number(),
                                            fresh_user()))
                s.shutdown(socket.SHUT_WR)
        self.assertServes()

    def test_pipelined_requests_are_answered_in_order(self):
        phones = [fresh_number() for _ in range(3)]
        user = fresh_user()
        requests = b"".join(raw_claim_request(self.d, p, user,
                                              connection=b"keep-alive")
                            for p in phones)
        with connect(self.d) as s:
            s.sendall(requests)
            data = read_answers(s, 3, 5.0)
        self.assertEqual(data.count(b"HTTP/1.1 200"), 3, data)
        # One pending reservation per user: only the last one holds.
        self.assertFree(phones[0])
        self.assertFree(phones[1])
        self.assertTaken(self.d.claim(phones[2], fresh_user()))


class BodyAndHeaderLimitTests(LimitsCase):
    """max_body_size = 1024; headers over 16 KiB are refused."""

    conf = {"max_body_size": 1024}

    def head(self, length, extra=b""):
        return (b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + self.d.api_token.encode() +
                b"\r\nContent-Type: application/json\r\n" + length + extra +
                b"\r\n")

    def padded_body(self, phone, size):
        body = claim_body(phone, fresh_user())
        return body[:-1] + b" " * (size - len(body)) + b"}"

    def test_content_length_over_the_limit_is_413(self):
        for length in (1025, 5000, 10 ** 12):
            with self.subTest(content_length=length), connect(self.d) as s:
                s.sendall(self.head(b"Content-Length: %d\r\n" % length))
                data = read_response(s, 5.0)
                self.assertEqual(status_of(data), 413, data)
        self.assertServes()

    def test_chunked_body_over_the_limit_is_413(self):
        phone = fresh_number()
        body = self.padded_body(phone, 1500)
        with connect(self.d) as s:
            s.sendall(self.head(b"Transfer-Encoding: chunked\r\n"))
            for part in (body[:700], body[700:]):
                time.sleep(0.1)
                if not send_quietly(s, b"%x\r\n%s\r\n" % (len(part),
                                                               part)):
                    break
            data = read_response(s, 5.0)
        self.assertEqual(status_of(data), 413, data)
        self.assertFree(phone)

    def test_body_of_exactly_max_body_size_is_accepted(self):
        phone = fresh_number()
        body = self.padded_body(phone, 1024)
        self.assertEqual(len(body), 1024)
        self.assertReserved(self.d.post_claims(body), TTL)

    def test_many_small_headers_are_accepted(self):
        headers = {"X-Pad-%03d" % i: "v" * 40 for i in range(100)}
        headers["Authorization"] = "Bearer " + self.d.api_token
        reply = self.d.request("POST", "/v1/claims",
                               claim_body(fresh_number(), fresh_user()),
                               headers)
        self.assertReserved(reply, TTL)

    def assertRefusedHeaders(self, extra):
        phone = fresh_number()
        request = raw_claim_request(self.d, phone, fresh_user(), extra)
        with connect(self.d) as s:
            send_quietly(s, request)
            data = read_response(s, 5.0)
            closed, _ = wait_closed(s, 5.0)
        status = status_of(data)
        self.assertTrue((status is None and closed is not None) or
                        (status is not None and status >= 400),
                        "headers over 16 KiB answered: %r" % data[:200])
        self.assertFree(phone)

    def test_headers_over_16k_are_refused(self):
        self.assertRefusedHeaders(b"".join(b"X-Pad-%03d: %s\r\n" %
                                           (i, b"v" * 500)
                                           for i in range(40)))

    def test_one_header_over_16k_is_refused(self):
        self.assertRefusedHeaders(b"X-Big: " + b"v" * 20000 + b"\r\n")

    def test_zz_still_serving_after_the_other_tests(self):
        self.assertServes()


class RefusedRequestAftermathTests(LimitsCase):
    """A request refused by evhttp does not disturb the next connection.

    Each test has its own daemon (default limits, 8 MiB body): a large
    request is sent right after a refused one, on a new connection.
    """

    shared = False

    def big_request(self, d, phone, size=100000):
        body = claim_body(phone, fresh_user())
        body = body[:-1] + b" " * size + b"}"
        return (b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + d.api_token.encode() +
                b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" %
                len(body) + body)

    def assertBigRequestAnswered(self, d):
        phone = fresh_number()
        with connect(d) as s:
            s.sendall(self.big_request(d, phone))
            data = read_response(s, 4.0)
        self.assertEqual(status_of(data), 200, "100 kB request: %r" %
                         data[:200])
        self.assertEqual(body_of(data).get("result"), "reserved", data)

    def refuse_content_length(self, d, length):
        with connect(d) as s:
            s.sendall(b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                      b"Authorization: Bearer " + d.api_token.encode() +
                      b"\r\nContent-Length: %d\r\n\r\n" % length)
            return read_response(s, 5.0)

    def test_one_mib_body_is_accepted(self):
        d = self.own_daemon()
        body = claim_body(fresh_number(), fresh_user())
        body = body[:-1] + b" " * (1 << 20) + b"}"
        self.assertReserved(d.post_claims(body), TTL)

    def test_content_length_over_8_mib_is_413(self):
        d = self.own_daemon()
        data = self.refuse_content_length(d, 8388609)
        self.assertEqual(status_of(data), 413, data)

    def test_large_request_right_after_a_413(self):
        d = self.own_daemon()
        data = self.refuse_content_length(d, 8388609)
        self.assertEqual(status_of(data), 413, data)
        self.assertBigRequestAnswered(d)

    def test_large_request_right_after_oversized_headers(self):
        d = self.own_daemon()
        request = raw_claim_request(d, fresh_number(), fresh_user(),
                                    b"X-Big: " + b"v" * 20000 + b"\r\n")
        with connect(d) as s:
            send_quietly(s, request)
            read_response(s, 5.0)
        self.assertBigRequestAnswered(d)


class JsonDepthTests(LimitsCase):
    """Nesting deeper than 32 levels is invalid_json; deep input is safe."""

    def nested(self, phone, levels):
        """A claim body with an extra member nested levels arrays deep."""
        body = claim_body(phone, fresh_user())
        return (body[:-1] + b', "x": ' + b"[" * levels + b"]" * levels +
                b"}")

    def test_33_levels_is_invalid_json(self):
        phone = fresh_number()
        self.assertError(self.d.post_claims(self.nested(phone, 32)), 400,
                         "invalid_json")
        self.assertFree(phone)

    def test_32_levels_is_accepted(self):
        self.assertReserved(self.d.post_claims(self.nested(fresh_number(),
                                                           31)), TTL)

    def test_very_deep_arrays_are_invalid_json(self):
        phone = fresh_number()
        self.assertError(self.d.post_claims(self.nested(phone, 200000)), 400,
                         "invalid_json")
        self.assertFree(phone)

    def test_very_deep_objects_are_invalid_json(self):
        body = b'{"a":' * 100000 + b"1" + b"}" * 100000
        self.assertError(self.d.post_claims(body), 400, "invalid_json")

    def test_unclosed_deep_nesting_is_invalid_json(self):
        self.assertError(self.d.post_claims(b"[" * 100000), 400,
                         "invalid_json")

    def test_zz_still_serving_after_the_other_tests(self):
        self.assertServes()


class FramingTests(LimitsCase):
    """Issue 18, point 8: libevent takes "Content-Length: +53" and chunk
    sizes like " 35" or "0x35"; a proxy in front may frame them otherwise
    (request smuggling).  Only plain decimal lengths and plain hex chunk
    sizes pass; the rest is 400 invalid_request, the connection closed,
    and nothing of the request is acted on."""

    def head(self, framing, expect=b""):
        return (b"POST /v1/claims HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + self.d.api_token.encode() +
                b"\r\nContent-Type: application/json\r\n" + framing +
                expect + b"\r\n")

    def assertRefused(self, request, what):
        with connect(self.d) as s:
            send_quietly(s, request)
            data = read_response(s, 5.0)
            closed, _ = wait_closed(s, 5.0)
        self.assertEqual((status_of(data), body_of(data)),
                         (400, {"error": "invalid_request"}),
                         "%s: %r" % (what, data[:300]))
        self.assertIsNotNone(closed, "%r: connection left open" % (what,))

    def test_content_length_must_be_plain_decimal(self):
        for value in (b"+%d", b"-0", b"0x%x", b"%d.0", b"%d,%d", b"1 %d",
                      b"0%d\x00"):
            phone = fresh_number()
            body = claim_body(phone, fresh_user())
            n = len(body)
            text = value.replace(b"%d,%d", b"%d,%d" % (n, n)) \
                if b"," in value else (value % n if b"%" in value else value)
            with self.subTest(content_length=text):
                self.assertRefused(self.head(b"Content-Length: " + text +
                                             b"\r\n") + body, text)
                self.assertFree(phone)

    def test_transfer_encoding_must_be_plain_chunked(self):
        for te in (b"gzip, chunked", b"chunked, chunked", b"xchunked",
                   b"chunked\r\nContent-Length: 5",
                   b"chunked\r\nTransfer-Encoding: chunked",
                   b"chunked\r\n folded"):
            phone = fresh_number()
            body = claim_body(phone, fresh_user())
            with self.subTest(transfer_encoding=te):
                self.assertRefused(
                    self.head(b"Transfer-Encoding: " + te + b"\r\n") +
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), te)
                self.assertFree(phone)

    def test_chunk_sizes_must_be_plain_hex(self):
        for size in (b" %x", b"0x%x", b"+%x", b"%x junk", b"%x;ext=1",
                     b"%x ", b"0000000000000000%x", b"\t%x"):
            phone = fresh_number()
            body = claim_body(phone, fresh_user())
            line = size % len(body)
            with self.subTest(chunk_size=line):
                self.assertRefused(
                    self.head(b"Transfer-Encoding: chunked\r\n") +
                    line + b"\r\n" + body + b"\r\n0\r\n\r\n", line)
                self.assertFree(phone)
        # A bad size after a good chunk, and a chunk not ended by CRLF.
        phone = fresh_number()
        body = claim_body(phone, fresh_user())
        self.assertRefused(self.head(b"Transfer-Encoding: chunked\r\n") +
                           b"%x\r\n%s\r\n 1\r\n \r\n0\r\n\r\n" %
                           (len(body), body), "second size")
        self.assertRefused(self.head(b"Transfer-Encoding: chunked\r\n") +
                           b"%x\r\n%sXX0\r\n\r\n" % (len(body), body),
                           "no CRLF after the data")
        self.assertFree(phone)

    def test_requests_in_pieces_are_followed(self):
        """Pipelined requests (by length, chunked, without a body) sent in
        pieces of 1 to 40 bytes, so that heads and chunk-size lines are
        split everywhere: every one answered, in order."""
        rnd = random.Random(18)
        data, want, phones = b"", [], []
        for i in range(12):
            phone = fresh_number()
            phones.append(phone)
            body = claim_body(phone, fresh_user())
            if i % 3 == 0:
                data += self.head(b"Content-Length: %d\r\n" % len(body)) + \
                    body
            elif i % 3 == 1:
                data += self.head(b"Transfer-Encoding: chunked\r\n") + \
                    b"".join(b"%x\r\n%s\r\n" % (len(body[o:o + 7]),
                                                 body[o:o + 7])
                             for o in range(0, len(body), 7)) + \
                    b"0\r\nX-Trailer: 1\r\n\r\n"
            else:
                data += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            want.append(200)
        with connect(self.d, timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            off = 0
            while off < len(data):
                n = rnd.randint(1, 40)
                s.sendall(data[off:off + n])
                off += n
                time.sleep(0.002)
            got = b""
            deadline = time.monotonic() + 10
            while len(re.findall(rb"HTTP/1\.1 \d{3} ", got)) < len(want) \
                    and time.monotonic() < deadline:
                r, _, _ = select.select([s], [], [], 0.5)
                if r:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
        codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)]
        self.assertEqual(codes, want, got[-500:])

    def test_plain_framing_still_works(self):
        phone = fresh_number()
        body = claim_body(phone, fresh_user())
        for framing, data in (
                (b"Content-Length: %d\r\n" % len(body), body),
                (b"Content-Length:   %d  \r\n" % len(body), body),
                (b"Transfer-Encoding: Chunked\r\n",
                 b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body))):
            with self.subTest(framing=framing), connect(self.d) as s:
                s.sendall(self.head(framing) + data)
                got = read_response(s, 5.0)
                self.assertEqual(status_of(got), 200, got)
                body = claim_body(phone, fresh_user())
        self.assertServes()


class EarlyRefusalTests(LimitsCase):
    """Issue 18, point 2: the token is checked when the headers are in,
    and a wrong one is answered 401 (and closed) without reading the body
    and without "100 Continue"."""

    def head(self, token, length, expect=False):
        return (b"POST /v1/log-stream HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: " + token + b"\r\n"
                b"Content-Length: %d\r\n" % length +
                (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")

    def test_wrong_token_is_401_before_the_body(self):
        good = self.d.log_stream_token.encode()
        for token in (good + b"x", b"", b"x" * 2000, good[:-1]):
            for expect in (True, False):
                with self.subTest(token=token[:20], expect=expect), \
                        connect(self.d) as s:
                    s.sendall(self.head(token, 8 * 1024 * 1024, expect))
                    data = read_response(s, 3.0)
                    self.assertEqual(status_of(data), 401, data)
                    self.assertNotIn(b"100 Continue", data)
                    closed, _ = wait_closed(s, 3.0)
                    self.assertIsNotNone(closed)
        # The right token gets "100 Continue" and its body is read.
        with connect(self.d) as s:
            s.sendall(self.head(good, 2, True))
            data = s.recv(4096)
            self.assertIn(b"100 Continue", data)
            s.sendall(b"[]")
            data = read_response(s, 5.0)
            self.assertIn(b"HTTP/1.1 200", data)

    def test_wrong_token_after_pipelined_requests_keeps_the_order(self):
        good = self.d.log_stream_token.encode()
        with connect(self.d) as s:
            s.sendall(self.head(good, 2) + b"[]" +
                      b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" +
                      self.head(b"wrong", 1000) + b"x" * 500)
            data = read_answers(s, 3, 5.0)
        codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
        self.assertEqual(codes, [200, 200, 401], data)



class BodyMemoryTests(LimitsCase):
    """Issue 18, point 2: all request bodies together are bounded
    (max_body_memory): past it a request is answered 503 before its body
    is read; bodies refused for a wrong token are not read at all; and
    the memory goes back to the system after the burst.  The daemon's
    RSS is measured before, during and after."""

    conf = {"max_body_memory": 32 * MIB, "request_timeout": 30}
    SIZE = 8 * MIB		# max_body_size, the default

    def rss(self):
        with open("/proc/%d/status" % self.d.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        self.fail("no VmRSS")

    def head(self, token, length):
        return (b"POST /v1/log-stream HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: " + token + b"\r\n"
                b"Content-Length: %d\r\n\r\n" % length)

    def test_bodies_together_are_bounded_and_memory_comes_back(self):
        good = self.d.log_stream_token.encode()
        self.assertServes()
        before = self.rss()
        body = b"[" + b" " * (self.SIZE - 2) + b"]"
        socks, refused = [], 0
        try:
            for _ in range(12):
                s = connect(self.d, timeout=30)
                socks.append(s)
                s.sendall(self.head(good, len(body)))
                r, _, _ = select.select([s], [], [], 0.3)
                if r:
                    data = read_response(s, 5.0)
                    self.assertEqual((status_of(data), body_of(data)),
                                     (503, {"error": "unavailable"}), data)
                    refused += 1
                    s.close()
                    socks.pop()
            self.assertEqual((len(socks), refused), (4, 8))
            # Unauthenticated bodies are refused before they are read.
            for _ in range(16):
                with connect(self.d) as s:
                    send_quietly(s, self.head(good + b"x", len(body)) +
                                 body[:MIB])
                    self.assertEqual(status_of(read_response(s, 5.0)), 401)
            for s in socks:
                s.sendall(body[:-MIB])
            time.sleep(0.5)
            during = self.rss()
            for s in socks:
                s.sendall(body[-MIB:])
                data = read_response(s, 30.0)
                self.assertEqual(status_of(data), 200, data[:200])
        finally:
            for s in socks:
                s.close()
        # The room is back: one more whole body is taken.
        with connect(self.d, timeout=30) as s:
            s.sendall(self.head(good, len(body)) + body)
            self.assertEqual(status_of(read_response(s, 30.0)), 200)
        # The once-a-second tick gives it back: wait for it (10 s at most).
        # Not under AddressSanitizer: its allocator keeps freed memory in
        # quarantine, and malloc_trim is glibc's.
        deadline = time.monotonic() + (0 if harness.sanitized() else 10)
        after = self.rss()
        while after - before >= 16 * MIB and time.monotonic() < deadline:
            time.sleep(0.2)
            after = self.rss()
        sys.stderr.write("limits: RSS before %.1f MiB, during %.1f MiB, "
                         "after %.1f MiB\n" % (before / MIB, during / MIB,
                                               after / MIB))
        # Not under ThreadSanitizer either: its shadow memory, several
        # times the bodies' size, counts in the RSS.
        if not harness.thread_sanitized():
            self.assertLess(during - before, 32 * MIB + 24 * MIB)
        if not harness.sanitized():
            self.assertLess(after - before, 16 * MIB)
        self.assertServes()


if __name__ == "__main__":
    unittest.main()
