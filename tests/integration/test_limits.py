"""
Limits on clients (DESIGN I6): request_timeout against slow and idle
clients, max_connections, max_body_size, header size and JSON depth.
Each limit gets an answer or a closed connection, and changes nothing.
"""

import select
import socket
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
            data = b""
            deadline = time.monotonic() + 5.0
            while data.count(b"HTTP/1.1 ") < 3 and \
                    time.monotonic() < deadline:
                readable, _, _ = select.select([s], [], [], 0.2)
                if readable:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
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


if __name__ == "__main__":
    unittest.main()
